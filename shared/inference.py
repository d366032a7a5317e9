"""What a generation is asked for, defined once: the text (a prompt or chat messages) and the sampling
parameters with their defaults. `Infer` (the queen's operation) and `InferenceRequest` (what the queen
POSTs to a worker's /v1/inference) both inherit it; the CLI, the TUI and the OpenAI layer read the field
list, defaults and help from here too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.errors import InvalidRequest
from shared.wire import Messages, WireMessage, bounds, parse_message

MAX_SCHEMA_CHARS = 16 << 10  # a schema's grammar is built in pure Python, in time that grows fast with size
MAX_GRAMMAR_CHARS = 64 << 10
MAX_TOKENS_LIMIT = 1 << 20  # a worker also refuses more than its slot's context, with the sizes


@dataclass(frozen=True, kw_only=True)
class Generation(WireMessage):
    """Sampling defaults follow llama.cpp's own (temperature 0.8, top_p 0.95, top_k 40)."""

    prompt: str | None = field(default=None, metadata={"nonempty": True})
    messages: Messages | None = None  # chat: formatted with the model's own chat template
    max_tokens: int = field(default=128, metadata=bounds(1, MAX_TOKENS_LIMIT, help="most tokens to generate"))
    temperature: float = field(default=0.8, metadata=bounds(0, 100, help="sampling temperature, 0 for greedy"))
    top_p: float = field(default=0.95, metadata=bounds(0, 1, help="nucleus sampling threshold"))
    top_k: int = field(default=40, metadata=bounds(0, 1 << 20, help="sample from the k most likely tokens"))
    seed: int | None = field(default=None, metadata=bounds(0, 2**64 - 1, help="the same seed and options give the "
                                                                            "same text"))
    stop: tuple[str, ...] | None = field(default=None, metadata={"help": "stop at this string; it is not returned"})
    # Constrained output: the worker turns a JSON schema into a llama.cpp grammar ({} or {"type": "object"}:
    # any JSON object); `grammar` is raw GBNF. At most one of the two.
    json_schema: dict | None = field(default=None, hash=False)  # a dict: left out of hash()
    grammar: str | None = field(default=None, metadata={"nonempty": True})
    # OpenAI's penalties: subtracted from a token's logit once it appeared (presence) and per appearance
    # (frequency) in the generated text.
    presence_penalty: float = field(default=0.0, metadata=bounds(-2, 2))
    frequency_penalty: float = field(default=0.0, metadata=bounds(-2, 2))
    # None: off; N: every Token event carries each token's log-probability and the N most likely ones.
    logprobs: int | None = field(default=None, metadata=bounds(0, 20))
    # Until the slot's context is full (Ollama's num_predict -1 and -2): a max_tokens past the worker's
    # context is then the most, not an error.
    fill_context: bool | None = None  # (None, not False: left out of the wire, so older workers take it)
    # Only count the prompt's tokens, in the model's own tokenizer and chat template: nothing is generated
    # (Anthropic's count_tokens). The result has prompt_tokens, and tokens_out 0.
    count_only: bool | None = None

    def validate(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequest(f"{self.describe().capitalize()} needs exactly one of 'prompt' (plain text) and "
                                 "'messages' (a chat: a list of {role, content}).", field="prompt",
                                 problem="or 'messages' is needed (exactly one of the two)")
        if self.json_schema is not None and len(json.dumps(self.json_schema)) > MAX_SCHEMA_CHARS:
            raise InvalidRequest(f"Field 'json_schema' is over {MAX_SCHEMA_CHARS} characters as JSON; its grammar "
                                 "would take long to build.", field="json_schema",
                                 problem=f"must be at most {MAX_SCHEMA_CHARS} characters as JSON")
        if self.grammar is not None and len(self.grammar) > MAX_GRAMMAR_CHARS:
            raise InvalidRequest(f"Field 'grammar' is over {MAX_GRAMMAR_CHARS} characters.", field="grammar",
                                 problem=f"must be at most {MAX_GRAMMAR_CHARS} characters")
        if self.json_schema is not None and self.grammar is not None:
            raise InvalidRequest(f"{self.describe().capitalize()} takes at most one of 'json_schema' and 'grammar'.",
                                 field="grammar", problem="cannot be given with 'json_schema'")

    def to_request(self) -> "InferenceRequest":
        """The worker request for this generation (the queen's side of the hop)."""
        return InferenceRequest(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Generation)})


ENUM_RANGE_LIMIT = 256  # integers a bounded range is spelled out as, at most (a grammar alternative each)
_VALUES = ("enum", "const", "default", "examples")  # JSON values in a schema, not schemas


def schema_for_grammar(schema: Any) -> Any:
    """The schema as llama-cpp-python's grammar converter can enforce it: that converter ignores
    minimum/maximum, so an integer range of at most ENUM_RANGE_LIMIT values becomes the enum of them
    (wider ranges, and number bounds, are not enforced)."""
    if isinstance(schema, list):
        return [schema_for_grammar(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _VALUES else schema_for_grammar(v) for k, v in schema.items()}
    if out.get("type") == "integer" and "enum" not in out and "const" not in out:
        lo, hi = _bound(out, "minimum", "exclusiveMinimum", 1), _bound(out, "maximum", "exclusiveMaximum", -1)
        if lo is not None and hi is not None and 0 <= hi - lo < ENUM_RANGE_LIMIT:
            return {"enum": list(range(lo, hi + 1))}
    return out


def _bound(schema: dict, inclusive: str, exclusive: str, step: int) -> int | None:
    values = []
    if isinstance(schema.get(inclusive), (int, float)) and not isinstance(schema[inclusive], bool):
        values.append(math.ceil(schema[inclusive]) if step > 0 else math.floor(schema[inclusive]))
    ex = schema.get(exclusive)
    if isinstance(ex, (int, float)) and not isinstance(ex, bool):
        values.append(math.floor(ex) + 1 if step > 0 else math.ceil(ex) - 1)
    if not values:
        return None
    return max(values) if step > 0 else min(values)


SAMPLING_FIELDS = tuple(f for f in dataclasses.fields(Generation) if "help" in f.metadata)
SAMPLING_DEFAULTS = {f.name: f.default for f in SAMPLING_FIELDS}


@dataclass(frozen=True, kw_only=True)
class InferenceRequest(Generation):
    name: ClassVar[str] = "inference"
    # Token ids another worker generated for this same request: they follow the prompt, and the answer
    # goes on from there (the queen moves a generation whose worker died; token events carry `ids`).
    continue_ids: tuple[int, ...] | None = None

    @classmethod
    def describe(cls) -> str:
        return "the inference request"


def parse_inference_request(data: Any) -> InferenceRequest:
    return parse_message(InferenceRequest, data)
