"""Models named by their short alias ("smollm2-135m-instruct.q4_1", as `rbee model list` and the TUI show
it): the model whose id the alias abbreviates, found among the running workers and the hives' catalogs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from queen.forwarding import run_remote_job
from queen.hives import HiveRegistry
from queen.worker_registry import WorkerRegistry
from shared.errors import RbeeError
from shared.events import Data, Event
from shared.models import BUILTIN_MODEL, ModelReferenceError, alias_of, is_reference, parse_reference
from shared.operations import ModelList


async def hive_models(hives: HiveRegistry, alias: str, timeout: float = 10, url: str | None = None
                      ) -> list[dict[str, Any]]:
    """A hive's catalog (model_list), asked now (at `url` as it is, else started first if need be);
    RbeeError when it cannot be had."""
    url = url or await hives.ensure_running(alias)
    listed: list[dict[str, Any]] = []

    def collect(event: Event) -> None:
        if isinstance(event, Data) and event.action == "model_list":
            listed.extend(event.payload.get("models") or [])

    await run_remote_job(hives.clients_for(alias).jobs(url, request_timeout=timeout), ModelList(hive_id=alias),
                         on_event=collect)
    return listed


class KnownModels:
    """The model ids of every hive with an address, for the API layers that check a request's model before
    it becomes a job. Asking takes a job on each hive, so callers that ask while a question is out share it
    (a burst of requests must not send a burst of jobs), and a request whose model the last answer names,
    however old, is not held up to ask again. Hives are asked at their address, not started: one that is not
    running has nothing to offer, quickly."""

    def __init__(self) -> None:
        self._models = [BUILTIN_MODEL]
        self._at = float("-inf")
        self._asking: asyncio.Future[list[str]] | None = None
        self._asked_at = float("-inf")  # when the question out now was sent

    async def ids(self, hives: HiveRegistry | None, max_age_s: float = 0.0) -> list[str]:
        """The ids, asked of the hives unless the last answer is at most `max_age_s` old; an answer to a
        question sent before this call is not taken (a model pulled meanwhile would be missing): one more
        question follows, shared by all who came too late for the first."""
        called = time.monotonic()
        if hives is None or called - self._at <= max_age_s:  # None: an app with no hives to ask
            return self._models
        while True:
            if self._asking is None:
                self._asking, self._asked_at = asyncio.ensure_future(self._ask(hives)), time.monotonic()
                self._asking.add_done_callback(self._answered)
            asked_at, asking = self._asked_at, self._asking
            models = await asyncio.shield(asking)  # one caller leaving does not cancel it for the others
            if asked_at >= called:
                return models

    def _answered(self, asking: asyncio.Future[list[str]]) -> None:
        if self._asking is asking:
            self._asking = None

    async def _ask(self, hives: HiveRegistry) -> list[str]:
        async def catalog(alias: str, url: str) -> list[str]:
            try:
                return [str(m["id"]) for m in await hive_models(hives, alias, timeout=5, url=url)
                        if isinstance(m, dict) and "id" in m]
            except RbeeError:
                return []  # a hive that does not answer has no models to offer right now

        per_hive = await asyncio.gather(*(catalog(alias, url) for alias, url in hives.with_address()))
        models = [BUILTIN_MODEL]
        for ids in per_hive:
            models += [m for m in ids if m not in models]
        self._models, self._at = models, time.monotonic()
        return models

    async def has(self, hives: HiveRegistry | None, model: str) -> bool:
        """Whether `model` (an id or an alias) is known: at once when the last answer, however old, names it
        (one deleted since fails where the request is placed, saying so), else from asking again."""
        return among(model, self._models) or among(model, await self.ids(hives))


def among(model: str, known: list[str]) -> bool:
    """Whether `model` (a catalog id, or the short alias of one) is one of `known` ids."""
    return model in known or model.strip().lower() in {alias_of(m) for m in known}


async def resolve_model(name: str, hives: HiveRegistry, workers: WorkerRegistry) -> str:
    """The model id `name` stands for: a reference's canonical id, or the one model with that alias."""
    if is_reference(name):
        return parse_reference(name).id
    wanted = name.strip().lower()
    known = {w.model for w in workers.all() if w.alive and alias_of(w.model) == wanted}
    if not known:

        async def catalog(alias: str) -> list[dict[str, Any]]:
            try:
                return await hive_models(hives, alias)
            except RbeeError:  # a hive out of reach has nothing to offer now
                return []

        listed = await asyncio.gather(*(catalog(alias) for alias in hives.schedulable()))
        known = {m["id"] for models in listed for m in models if m.get("alias") == wanted}
    if len(known) > 1:
        raise ModelReferenceError(f"'{name}' is the short name of {len(known)} models ({', '.join(sorted(known))}); "
                                  "name one by its full reference.")
    if known:
        return known.pop()
    try:
        parse_reference(name)
    except ModelReferenceError as exc:  # not an alias either: the usual words, with what a reference looks like
        raise ModelReferenceError(exc.message, field=exc.field, problem=exc.problem, status=404) from None
    raise AssertionError("unreachable: parse_reference refused it")
