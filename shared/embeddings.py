"""What the queen asks an embedding worker (`llm-worker-rbee --embedding`) and what it answers.

    POST /v1/embeddings {"input": ["text", ...]}
      -> 200 {"embeddings": [[float, ...], ...], "prompt_tokens": int, "dimensions": int}

One vector per input, in order, of unit length (L2), pooled over the input's tokens as the model says
(mean when it does not say).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from shared.wire import WireMessage, field_error, parse_message

EMBEDDINGS_PATH = "/v1/embeddings"


@dataclass(frozen=True, kw_only=True)
class EmbeddingRequest(WireMessage):
    name: ClassVar[str] = "embedding request"
    input: tuple[str, ...]

    def validate(self) -> None:
        if not self.input:
            raise field_error(type(self), "input", "must hold at least one string")


def parse_embedding_request(data: Any) -> EmbeddingRequest:
    return parse_message(EmbeddingRequest, data)
