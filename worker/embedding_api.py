"""The worker's embedding endpoint, served only in --embedding mode (and refused clearly otherwise, as
generation is refused in that mode): plain request and answer, no job, since a vector has no stream.

    POST /v1/embeddings {"input": [...]} -> 200 {"embeddings", "prompt_tokens", "dimensions"}
                                            (503 when max_queue requests already wait)
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from shared.embeddings import EMBEDDINGS_PATH, parse_embedding_request
from shared.http import read_json
from worker.appkeys import CONFIG, ENGINE
from worker.embedder import EmbeddingEngine
from worker.errors import NotReady, QueueFull, WorkerError

_IN_FLIGHT: web.AppKey[list[int]] = web.AppKey("worker_embeddings_in_flight", list)


class WrongMode(WorkerError):
    title = "Wrong kind of worker"
    code = "WRONG_WORKER_MODE"
    status = 400


def setup_embedding_api(app: web.Application) -> None:
    app[_IN_FLIGHT] = [0]
    app.router.add_post(EMBEDDINGS_PATH, embed)
    app.router.add_route("*", "/v1/inference", refuse_generation)
    app.router.add_route("*", "/v1/inference/{tail:.*}", refuse_generation)


def refuse_embeddings(app: web.Application) -> None:
    """On a generating worker: say where embeddings come from rather than a bare 404."""
    app.router.add_post(EMBEDDINGS_PATH, no_embeddings)


async def embed(request: web.Request) -> web.Response:
    app = request.app
    engine = app[ENGINE]
    assert isinstance(engine, EmbeddingEngine)
    body = parse_embedding_request(await read_json(request))
    in_flight = app[_IN_FLIGHT]
    if in_flight[0] >= 1 + app[CONFIG].max_queue:
        raise QueueFull(f"The worker's queue is full ({app[CONFIG].max_queue} requests waiting). Retry later.")
    in_flight[0] += 1
    try:
        inputs = await asyncio.to_thread(engine.tokenize_inputs, body.input)  # a long input takes a while
        task = engine.submit_embedding(inputs)
        try:
            # aiohttp does not cancel a handler whose client left: look, so its remaining inputs are skipped.
            while not task.done.done():
                await asyncio.wait([task.done], timeout=0.5)
                if request.transport is None or request.transport.is_closing():
                    task.cancel.set()
                    return web.Response(status=499, text="the client closed the request")  # read by nobody
            result = task.done.result()
        except asyncio.CancelledError:
            task.cancel.set()
            raise
    finally:
        in_flight[0] -= 1
    if result is None:
        raise NotReady("The worker is stopping; ask again: another worker will answer.")
    vectors, prompt_tokens = result
    return web.json_response({"embeddings": vectors, "prompt_tokens": prompt_tokens,
                              "dimensions": engine.dimensions})


async def refuse_generation(request: web.Request) -> web.Response:
    raise WrongMode("This worker computes embeddings (it was started with --embedding) and does not generate "
                    "text; send generations to a worker started without --embedding.")


async def no_embeddings(request: web.Request) -> web.Response:
    raise WrongMode("This worker generates text; embeddings come from a worker started with --embedding.")
