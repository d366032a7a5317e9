"""The queen's API routes (queen/api/) on a real aiohttp app over the shared job API, with a scripted
generator in place of the inference runner: the APIs' mapping and rendering, tested without llama.cpp."""

from __future__ import annotations

import json
from typing import Any, Iterable

from aiohttp import web

from queen.access.middleware import access_middleware, submit_job
from queen.access.routes import setup_access
from queen.api.routes import setup_apis
from queen.appkeys import CONVERSATIONS, KNOWN_MODELS, RESPONSES
from queen.conversation_routes import setup_conversation_api
from queen.conversations import ConversationStore
from queen.metrics import queen_gauges
from queen.model_names import KnownModels
from queen.responses import ResponseStore
from shared import appkeys
from shared.app import create_base_app
from shared.job_registry import Job
from shared.job_routes import setup_job_api
from shared.metrics import setup_metrics
from shared.models import BUILTIN_MODEL
from shared.paths import RbeePaths
from tests.support.scripted_executor import ScriptedGenerator

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "hf:org/repo:model-q4.gguf"


class FixedModels(KnownModels):
    """The models running hives would list, fixed by the test (there is no hive to ask)."""

    def __init__(self, ids: Iterable[str]) -> None:
        super().__init__()
        self._fixed = [BUILTIN_MODEL, *ids]

    async def ids(self, hives: Any, max_age_s: float = 0.0) -> list[str]:
        return self._fixed


def api_app(executor: ScriptedGenerator, models: Iterable[str] = (MODEL, "missing", "too-long", "busy", "crash",
                                                                   "bug")) -> web.Application:
    app = create_base_app(TOKEN, auth=access_middleware(TOKEN))
    setup_job_api(app, executor, actor="queen", submit=submit_job)
    data_dir = RbeePaths.from_env().data_dir
    setup_access(app, data_dir / "keys.db")
    setup_conversation_api(app)
    setup_metrics(app, queen_gauges)

    async def conversations_ctx(app: web.Application):
        store = app[CONVERSATIONS] = ConversationStore(data_dir / "conversations.db")
        responses = app[RESPONSES] = ResponseStore(data_dir / "responses.db")
        await store.open()
        await responses.open()
        yield
        await responses.close()
        await store.close()

    app.cleanup_ctx.append(conversations_ctx)
    app[KNOWN_MODELS] = FixedModels(models)
    setup_apis(app)
    return app


def jobs(app: web.Application) -> list[Job]:
    return list(app[appkeys.JOB_REGISTRY].jobs())


async def named_sse_events(resp: Any) -> list[tuple[str, dict]]:
    """An SSE answer whose events name themselves (`event:` then `data:`, as Anthropic's and the Responses
    API's): (name, decoded data) each."""
    out = []
    for frame in (await resp.text()).split("\n\n"):
        if frame:
            event, data = frame.split("\n")
            out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out
