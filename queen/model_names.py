"""Models named by their short alias ("smollm2-135m-instruct.q4_1", as `rbee model list` and the TUI show
it): the model whose id the alias abbreviates, found among the running workers and the hives' catalogs."""

from __future__ import annotations

import asyncio
from typing import Any

from queen.forwarding import run_remote_job
from queen.hives import HiveRegistry
from queen.worker_registry import WorkerRegistry
from shared.errors import RbeeError
from shared.events import Data, Event
from shared.models import ModelReferenceError, alias_of, is_reference, parse_reference
from shared.operations import ModelList


async def hive_models(hives: HiveRegistry, alias: str, timeout: float = 10) -> list[dict[str, Any]]:
    """A hive's catalog (model_list), asked now; RbeeError when it cannot be had."""
    url = await hives.ensure_running(alias)
    listed: list[dict[str, Any]] = []

    def collect(event: Event) -> None:
        if isinstance(event, Data) and event.action == "model_list":
            listed.extend(event.payload.get("models") or [])

    await run_remote_job(hives.clients_for(alias).jobs(url, request_timeout=timeout), ModelList(hive_id=alias),
                         on_event=collect)
    return listed


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
    parse_reference(name)  # not an alias either: the usual error, with what a reference looks like
    raise AssertionError("unreachable: parse_reference refused it")
