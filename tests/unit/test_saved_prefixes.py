"""What hives keep on disk, as the queen routes by it: chains stable across processes (the worker writes
them, the queen compares), sidecars read by the hive (bad ones skipped), the queen's per-hive report,
and routing and placement that prefer the hive that keeps a conversation."""

from __future__ import annotations

import json

from queen.placement import HiveFit, rank
from queen.prefix_index import RouteGuard, SavedPrefixes
from queen.worker_registry import WorkerRegistry
from shared.heartbeat import EngineState, Heartbeat
from shared.prefix_chain import CHUNK_CHARS, chain, saved_chains, serialize, with_answer

HISTORY = (("system", "You are terse. " * 30), ("user", "Name three colours."))


def test_a_chain_is_the_same_in_every_process():
    # a fixed value: Python's own str hash changes with each process (PYTHONHASHSEED), this must not
    assert chain("a" * 64 + "b" * 64 + "c") == (3892954433773001586, 5576547387947375690)
    text = with_answer(None, HISTORY, "Red, green, blue.")
    assert len(chain(text)) == len(text) // CHUNK_CHARS and all(0 <= h < 2 ** 63 for h in chain(text))


def test_the_hive_reads_the_chains_of_its_sidecars_and_skips_the_bad(tmp_path):
    good = chain(serialize(None, HISTORY))
    (tmp_path / "a.json").write_text(json.dumps({"format": 2, "tokens": list(range(300)), "chain": list(good)}))
    (tmp_path / "old.json").write_text(json.dumps({"format": 1, "tokens": [1, 2]}))  # before chains: skipped
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "odd.json").write_text(json.dumps({"chain": ["x"]}))
    (tmp_path / "a.kv").write_bytes(b"state")
    assert saved_chains(tmp_path) == [(good, 300)]
    assert saved_chains(tmp_path / "missing") == []


def test_the_queen_keeps_each_hive_s_report_until_it_is_old():
    saved = SavedPrefixes(max_age_s=5)
    turn2 = chain(serialize(None, (*HISTORY, ("assistant", "Red."), ("user", "And animals?"))))
    assert saved.stale("b", now=100.0) and saved.held("b", "m", turn2) == 0
    saved.update("b", {"m": [{"chain": list(chain(with_answer(None, HISTORY, "Red."))), "tokens": 300}]}, now=100.0)
    assert not saved.stale("b", now=104.0) and saved.stale("b", now=106.0)
    assert saved.stale("b", now=101.0, worker_gone_at=100.5)  # a worker stopped since: its caches may be new
    assert not saved.stale("b", now=101.0, worker_gone_at=99.0)
    assert saved.held("b", "m", turn2) >= len(chain(serialize(None, HISTORY)))
    assert saved.held("b", "other-model", turn2) == 0 and saved.held("a", "m", turn2) == 0
    saved.update("b", None, now=110.0)  # no answer this time: the last report stands
    assert saved.held("b", "m", turn2) > 0


def test_routing_counts_what_a_hive_keeps_on_disk():
    registry = WorkerRegistry(heartbeat_timeout_s=15)
    for worker_id, hive in (("w-a", "a"), ("w-b", "b")):
        registry.heartbeat(Heartbeat(worker_id=worker_id, hive_id=hive, model="m", url=f"http://{hive}",
                                     state=EngineState.READY, slots=4))
    prefix = chain(serialize(None, HISTORY))
    blind = registry.with_free_slot("m", None, prefix=prefix, guard=RouteGuard())
    kept = registry.with_free_slot("m", None, prefix=prefix, guard=RouteGuard(),
                                   on_disk=lambda hive: len(prefix) if hive != blind.hive_id else 0)
    assert kept.hive_id != blind.hive_id


def test_placement_prefers_the_hive_that_keeps_the_prompt_among_equal_plans():
    a, b = HiveFit("a", has_model=True, free_mb=9000.0), HiveFit("b", has_model=True, free_mb=1000.0)
    assert [f.alias for f in rank([a, b])] == ["a", "b"]
    b.saved_chunks = 20
    assert [f.alias for f in rank([a, b])] == ["b", "a"]
    gpu = HiveFit("gpu", plan_kind="gpu")
    assert rank([b, gpu])[0] is gpu  # a GPU still comes first
