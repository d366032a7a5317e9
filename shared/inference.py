"""The worker's inference request: what the queen (or anyone) POSTs to a worker's /v1/inference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.operations import Messages, Operation, check_prompt_or_messages, parse_fields

DEFAULT_MAX_TOKENS = 128
STOP_REASONS = ("stop", "length", "cancelled")


@dataclass(frozen=True, kw_only=True)
class InferenceRequest(Operation, register=False):
    """Sampling defaults follow llama.cpp's own (temperature 0.8, top_p 0.95, top_k 40)."""

    name: ClassVar[str] = "inference"
    prompt: str | None = field(default=None, metadata={"nonempty": True})
    messages: Messages | None = None  # chat mode: formatted with the model's own chat template
    max_tokens: int = field(default=DEFAULT_MAX_TOKENS, metadata={"min": 1, "max": None})
    temperature: float = field(default=0.8, metadata={"min": 0, "max": None})
    top_p: float = field(default=0.95, metadata={"min": 0, "max": 1})
    top_k: int = field(default=40, metadata={"min": 0, "max": None})
    seed: int | None = None
    stop: tuple[str, ...] | None = None

    def validate(self) -> None:
        check_prompt_or_messages(self)

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        del body["operation"]  # a worker request is not a tagged job-API operation
        return body


def parse_inference_request(data: Any) -> InferenceRequest:
    return parse_fields(InferenceRequest, data)  # type: ignore[return-value]
