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
import json
import sys
from typing import Any

from aiohttp import web

from queen.appkeys import HIVES, KNOWN_MODELS
from queen.openai_api import OpenAIError, canonical, openai_error
from shared import appkeys
from shared.embeddings import EMBEDDINGS_PATH
from shared.errors import InvalidRequest
from shared.events import JobState
from shared.job_registry import Job
from shared.job_routes import until_finished
from shared.operations import MAX_EMBED_INPUTS, Embed
from shared.wire import parse_message

MODELS_CACHE_S = 10.0
# Codes that mean the request was wrong, whichever daemon noticed: a 400, never a 5xx.
CLIENT_MISTAKES = frozenset({"INVALID_REQUEST", "INPUT_TOO_LONG", "BAD_MODEL_REFERENCE", "MODEL_NOT_FOUND"})


def setup_openai_embeddings(app: web.Application) -> None:
    """Mount the route; call it after setup_openai_api, whose error shaper this one wraps."""
    app.router.add_post(EMBEDDINGS_PATH, embeddings)
    _shape_errors(app)


def _shape_errors(app: web.Application) -> None:
    """Errors the middlewares answer on this path (no token, bad method) in OpenAI's shape, other paths as
    the shaper already there says."""
    previous = app.get(appkeys.ERROR_SHAPER)

    def shaper(request: web.Request, status: int, code: str, message: str) -> web.Response | None:
        if request.path != EMBEDDINGS_PATH:
            return previous(request, status, code, message) if previous else None
        kind = {401: "authentication_error"}.get(status, "invalid_request_error" if status < 500 else "server_error")
        return openai_error(status, message, kind, code="invalid_api_key" if status == 401 else code.lower())

    app[appkeys.ERROR_SHAPER] = shaper


def to_embed(body: Any) -> tuple[Embed, str, int | None]:
    """The `embed` operation, the encoding and the asked dimensions, or an OpenAIError naming the param."""
    if not isinstance(body, dict):
        raise OpenAIError("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise OpenAIError("'model' is required (a model id from GET /v1/models).", param="model")
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not inputs:
        raise OpenAIError("'input' must be a non-empty string or a non-empty list of strings.", param="input")
    if len(inputs) > MAX_EMBED_INPUTS:
        raise OpenAIError(f"'input' holds {len(inputs)} items; at most {MAX_EMBED_INPUTS} per request.", param="input")
    if any(isinstance(i, (int, list)) and not isinstance(i, bool) for i in inputs):
        raise OpenAIError("'input' as token ids is not supported here; send the text.", param="input")
    if not all(isinstance(i, str) for i in inputs):
        raise OpenAIError("'input' must be a string or a list of strings.", param="input")
    if any(not i.strip() for i in inputs):
        raise OpenAIError("'input' must not contain empty strings.", param="input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise OpenAIError(f"'encoding_format' must be 'float' or 'base64', not {encoding!r}.", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise OpenAIError("'dimensions' must be a positive integer.", param="dimensions")
    try:
        operation = parse_message(Embed, {"model": model, "input": inputs})
    except InvalidRequest as exc:
        message = f"'{exc.field}' {exc.problem}." if exc.field and exc.problem else exc.message
        raise OpenAIError(message, param=exc.field) from None
    return operation, encoding, dimensions


async def embeddings(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return openai_error(400, f"The body is not valid JSON: {exc}.", "invalid_request_error")
    try:
        operation, encoding, dimensions = to_embed(body)
    except OpenAIError as exc:
        return openai_error(exc.status, exc.message, exc.kind, exc.param, exc.code)
    app = request.app
    model = canonical(operation.model)
    if not await app[KNOWN_MODELS].has(app[HIVES], model, MODELS_CACHE_S):
        return openai_error(404, f"The model '{operation.model}' does not exist on any running hive "
                                 "(GET /v1/models lists them).", "invalid_request_error", "model", "model_not_found")
    job = app[appkeys.JOB_REGISTRY].submit(operation)
    if (failed := await _finished(request, job)) is not None:
        return failed
    result = job.result or {}
    vectors: list[list[float]] = result.get("embeddings") or []
    have = int(result.get("dimensions") or 0)
    if dimensions is not None and dimensions != have:
        return openai_error(400, f"The embeddings of {result.get('model', model)} have {have} dimensions; "
                                 f"'dimensions' must be {have} or left out (rbee does not shorten them).",
                            "invalid_request_error", "dimensions")
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, encoding)} for i, v in enumerate(vectors)]
    tokens = int(result.get("prompt_tokens") or 0)
    return web.json_response({"object": "list", "data": data, "model": operation.model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def _finished(request: web.Request, job: Job) -> web.Response | None:
    """Wait for the job (cancelling it if the client goes away); None when it completed, else the error."""
    await until_finished(request, job)
    if job.state is JobState.COMPLETED:
        return None
    error = job.error or {"code": "CANCELLED", "message": f"The request ended {job.state.value}."}
    if error["code"] in CLIENT_MISTAKES:
        return openai_error(400, error["message"], "invalid_request_error", "input" if "input" in error["message"]
                            else None, error["code"].lower())
    return openai_error(502 if job.state is JobState.FAILED else 499, error["message"], "server_error",
                        code=error["code"].lower())


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    """base64: the little-endian float32 bytes, as OpenAI sends them (its client decodes them so)."""
    if encoding == "float":
        return vector
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
