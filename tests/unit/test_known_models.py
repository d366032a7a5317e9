"""The API layers' check of a request's model (queen/model_names.py KnownModels): a model the hives listed
is known at once, however old that answer, and a burst of requests that must ask sends one question per
hive, not one each (a burst of 16 clients after a quiet spell waited ~30 ms on 16 catalogs per hive)."""

from __future__ import annotations

import asyncio

import pytest

from queen import model_names
from queen.model_names import KnownModels
from shared.models import BUILTIN_MODEL


class Hives:
    """Two hives with an address; what hive_models asks them is counted (the catalog job itself is
    tested with real hives in the integration tests)."""

    def __init__(self, catalogs: dict[str, list[str]]) -> None:
        self.catalogs = catalogs
        self.asked: list[str] = []
        self.answer = asyncio.Event()
        self.answer.set()

    def with_address(self) -> list[tuple[str, str]]:
        return [(alias, f"http://{alias}") for alias in self.catalogs]


@pytest.fixture
def hives(monkeypatch: pytest.MonkeyPatch) -> Hives:
    hives = Hives({"localhost": ["hf:a/b:one.gguf"], "second": ["hf:c/d:two.gguf"]})

    async def hive_models(_hives, alias: str, timeout: float = 10, url: str | None = None):
        hives.asked.append(alias)
        await hives.answer.wait()
        return [{"id": m} for m in hives.catalogs[alias]]

    monkeypatch.setattr(model_names, "hive_models", hive_models)
    return hives


async def test_a_burst_that_must_ask_shares_its_questions(hives: Hives) -> None:
    known = KnownModels()
    hives.answer.clear()
    checks = [asyncio.ensure_future(known.has(hives, "hf:c/d:two.gguf")) for _ in range(16)]
    await asyncio.sleep(0.01)
    hives.answer.set()
    assert await asyncio.gather(*checks) == [True] * 16
    # the first check's question, then one for all that came after it was sent: 2 per hive, not 16
    assert sorted(hives.asked) == ["localhost", "localhost", "second", "second"]


async def test_a_listed_model_is_known_without_asking_again(hives: Hives) -> None:
    known = KnownModels()
    assert await known.has(hives, BUILTIN_MODEL)  # always listed: nothing asked
    assert hives.asked == []
    assert await known.has(hives, "hf:a/b:one.gguf")  # not listed yet: asked
    asked = len(hives.asked)
    known._at -= 3600  # an hour-old answer still lists it
    assert await known.has(hives, "hf:a/b:one.gguf")
    assert len(hives.asked) == asked


async def test_an_unlisted_model_asks_again_and_is_unknown(hives: Hives) -> None:
    known = KnownModels()
    assert not await known.has(hives, "hf:x/y:none.gguf")
    assert not await known.has(hives, "hf:x/y:none.gguf")
    assert len(hives.asked) == 4  # each miss asks both hives: a model pulled meanwhile is found


async def test_a_caller_that_leaves_does_not_cancel_the_question_for_the_others(hives: Hives) -> None:
    known = KnownModels()
    hives.answer.clear()
    leaving = asyncio.ensure_future(known.ids(hives))
    staying = asyncio.ensure_future(known.ids(hives))
    await asyncio.sleep(0.01)
    leaving.cancel()
    hives.answer.set()
    assert "hf:c/d:two.gguf" in await staying  # a cancelled question would raise CancelledError here
    assert hives.asked.count("localhost") == hives.asked.count("second") <= 2


async def test_listing_asks_for_a_fresh_answer(hives: Hives) -> None:
    known = KnownModels()
    await known.ids(hives)
    hives.catalogs["second"].append("hf:e/f:three.gguf")
    assert "hf:e/f:three.gguf" in await known.ids(hives)  # max_age 0: /v1/models lists what is there now


async def test_a_check_that_comes_while_a_question_is_out_waits_for_one_sent_after_it(hives: Hives) -> None:
    known = KnownModels()
    hives.answer.clear()
    first = asyncio.ensure_future(known.has(hives, "hf:x/y:none.gguf"))  # a miss: asks
    await asyncio.sleep(0.01)
    hives.catalogs["second"].append("hf:e/f:pulled.gguf")  # pulled after that question went out
    late = [asyncio.ensure_future(known.has(hives, "hf:e/f:pulled.gguf")) for _ in range(3)]
    await asyncio.sleep(0.01)
    hives.answer.set()
    assert not await first
    assert await asyncio.gather(*late) == [True] * 3
    assert len(hives.asked) == 4  # two questions (one each hive), the latecomers sharing the second


async def test_a_question_that_fails_is_asked_again_next_time(hives: Hives, monkeypatch: pytest.MonkeyPatch) -> None:
    known = KnownModels()

    async def broken(*_args, **_kwargs):
        raise RuntimeError("the hive registry broke")

    with monkeypatch.context() as patched:
        patched.setattr(known, "_ask", broken)
        with pytest.raises(RuntimeError):
            await known.ids(hives)
    assert "hf:a/b:one.gguf" in await known.ids(hives)
