"""OpenAI's embeddings endpoint on the queen:

    POST /v1/embeddings   {"model", "input": str | [str, ...], "encoding_format": "float" | "base64",
                           "dimensions"?: the model's own, "user"?} -> {"object": "list", "data", "model", "usage"}

Each request runs as an ordinary `embed` job (it shows in `rbee jobs`) on an embedding worker of the
model, started for it when none runs. Errors come in OpenAI's shape. Token-id input (lists of integers)
is not supported; `dimensions` is accepted only when it is the model's own (rbee does not shorten vectors);
at most 2048 inputs a request.
"""

from __future__ import annotations

import array
import base64
import sys
from typing import Any

from aiohttp import web

from queen.access.middleware import submit_job
from queen.api.common import ApiError, api_route, check_model, read_body, wait_for_answer
from queen.api.openai import error_response
from shared.embeddings import EMBEDDINGS_PATH
from shared.errors import InvalidRequest
from shared.operations import MAX_EMBED_INPUTS, Embed
from shared.wire import parse_message


def setup_openai_embeddings(app: web.Application) -> None:
    app.router.add_post(EMBEDDINGS_PATH, api_route(error_response, embeddings))


def to_embed(body: Any) -> tuple[Embed, str, int | None]:
    """The `embed` operation, the encoding and the asked dimensions, or an ApiError naming the param."""
    if not isinstance(body, dict):
        raise ApiError("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError("'model' is required (a model id from GET /v1/models).", field="model")
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not inputs:
        raise ApiError("'input' must be a non-empty string or a non-empty list of strings.", field="input")
    if len(inputs) > MAX_EMBED_INPUTS:
        raise ApiError(f"'input' holds {len(inputs)} items; at most {MAX_EMBED_INPUTS} per request.", field="input")
    if any(isinstance(i, (int, list)) and not isinstance(i, bool) for i in inputs):
        raise ApiError("'input' as token ids is not supported here; send the text.", field="input")
    if not all(isinstance(i, str) for i in inputs):
        raise ApiError("'input' must be a string or a list of strings.", field="input")
    if any(not i.strip() for i in inputs):
        raise ApiError("'input' must not contain empty strings.", field="input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(f"'encoding_format' must be 'float' or 'base64', not {encoding!r}.", field="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise ApiError("'dimensions' must be a positive integer.", field="dimensions")
    try:
        operation = parse_message(Embed, {"model": model, "input": inputs})
    except InvalidRequest as exc:
        message = f"'{exc.field}' {exc.problem}." if exc.field and exc.problem else exc.message
        raise ApiError(message, field=exc.field) from None
    return operation, encoding, dimensions


async def embeddings(request: web.Request) -> web.Response:
    operation, encoding, dimensions = to_embed(await read_body(request))
    await check_model(request.app, operation.model)
    job = submit_job(request, operation)
    failure, _ = await wait_for_answer(request, job)
    if failure is not None:  # a worker's refusal names the input it could not take
        return error_response(failure.status, failure.code, failure.message,
                              "input" if failure.status < 500 and "input" in failure.message else None)
    result = job.result or {}
    vectors: list[list[float]] = result.get("embeddings") or []
    have = int(result.get("dimensions") or 0)
    if dimensions is not None and dimensions != have:
        raise ApiError(f"The embeddings of {result.get('model', operation.model)} have {have} dimensions; "
                       f"'dimensions' must be {have} or left out (rbee does not shorten them).", field="dimensions")
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, encoding)} for i, v in enumerate(vectors)]
    tokens = int(result.get("prompt_tokens") or 0)
    return web.json_response({"object": "list", "data": data, "model": operation.model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    """base64: the little-endian float32 bytes, as OpenAI sends them (its client decodes them so)."""
    if encoding == "float":
        return vector
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
