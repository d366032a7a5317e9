"""Mounting the queen's APIs, and the one place that says which API's error shape a path takes.

Errors a handler raises are rendered by its route (queen/api/common.py `api_route`); errors the
middlewares answer before any handler (no token, no such route, a body too large) are shaped here, by
the one API whose paths they are on.
"""

from __future__ import annotations

from aiohttp import web

from queen.api import anthropic, ollama, openai, responses
from queen.api.anthropic import setup_anthropic_api
from queen.api.ollama import setup_ollama_api
from queen.api.openai import setup_openai_api
from queen.api.openai_embeddings import setup_openai_embeddings
from queen.api.responses import setup_responses_api
from shared import appkeys
from shared.embeddings import EMBEDDINGS_PATH

__all__ = ["setup_apis"]


def _is_openai(path: str) -> bool:
    return path in openai.PATHS or path == EMBEDDINGS_PATH or responses.matches(path)


# Which API's shape an error on a path takes; the paths of the three never overlap.
ERROR_SHAPES = ((_is_openai, openai.error_response), (ollama.matches, ollama.error_response),
                (anthropic.matches, anthropic.error_response))


def shape_error(request: web.Request, status: int, code: str, message: str) -> web.Response | None:
    """A middleware's error on an API's path in that API's shape (None: rbee's own shape)."""
    for on_path, error_response in ERROR_SHAPES:
        if on_path(request.path):
            return error_response(status, code, message, None)
    return None


def setup_apis(app: web.Application) -> None:
    setup_openai_api(app)
    setup_openai_embeddings(app)
    setup_responses_api(app)
    setup_ollama_api(app)
    setup_anthropic_api(app)
    app[appkeys.ERROR_SHAPER] = shape_error
