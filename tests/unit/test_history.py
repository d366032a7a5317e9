"""The queen's job history: a real SQLite file, written off the event loop, bounded by an indexed trim."""

from __future__ import annotations

import sqlite3

from queen import history
from queen.history import JobHistoryStore
from shared.job_registry import Job, JobLimits, JobState
from shared.operations import Infer


def finished_job(k: int) -> Job:
    job = Job(Infer(prompt=f"prompt {k}"), JobLimits(), "queen")
    job.created_at = 1000.0 + k
    job.state = JobState.COMPLETED
    job.result = {"text": f"answer {k}", "tokens_out": k}
    return job


async def test_history_keeps_the_newest_and_survives_reopening(tmp_path, monkeypatch):
    monkeypatch.setattr(history, "KEEP", 5)
    path = tmp_path / "queen.db"
    store = JobHistoryStore(path)
    await store.open()
    jobs = [finished_job(k) for k in range(8)]
    for job in jobs:
        store.record(job)
    listed = await store.list()  # queued behind the writes: sees all of them
    assert [r["job_id"] for r in listed] == [j.id for j in reversed(jobs[3:])]
    assert await store.get(jobs[0].id) is None
    record = await store.get(jobs[7].id)
    assert record["result"] == {"text": "answer 7", "tokens_out": 7} and record["request"]["prompt"] == "prompt 7"
    await store.close()
    reopened = JobHistoryStore(path)
    await reopened.open()
    assert len(await reopened.list()) == 5
    await reopened.close()


async def test_jobs_running_when_the_queen_stopped_are_marked_failed(tmp_path):
    path = tmp_path / "queen.db"
    store = JobHistoryStore(path)
    await store.open()
    job = finished_job(1)
    job.state = JobState.RUNNING
    store.record(job)
    await store.close()
    reopened = JobHistoryStore(path)
    await reopened.open()
    record = await reopened.get(job.id)
    await reopened.close()
    assert record["state"] == "failed" and record["error"]["code"] == "QUEEN_STOPPED"


def test_the_trim_walks_the_created_at_index(tmp_path):
    db = sqlite3.connect(tmp_path / "plan.db")
    history._setup(db)
    plan = " ".join(str(row) for row in db.execute(
        "EXPLAIN QUERY PLAN DELETE FROM jobs WHERE created_at < "
        "(SELECT created_at FROM jobs ORDER BY created_at DESC LIMIT 1 OFFSET 999)"))
    assert "jobs_created_at" in plan


async def test_pages_of_the_history_lose_and_repeat_nothing_even_for_jobs_made_in_one_instant(tmp_path):
    store = JobHistoryStore(tmp_path / "queen.db")
    await store.open()
    jobs = [finished_job(k // 3) for k in range(9)]  # three jobs share each creation time
    for job in jobs:
        store.record(job)
    seen, cursor = [], None
    while True:
        page = await store.list(limit=2, before=cursor)
        if not page:
            break
        seen += [r["job_id"] for r in page]
        cursor = (page[-1]["created_at"], page[-1]["job_id"])
    await store.close()
    assert sorted(seen) == sorted(j.id for j in jobs) and len(seen) == len(set(seen))


async def test_an_embed_job_is_kept_without_its_vectors_and_with_its_texts_capped(tmp_path):
    from shared.operations import Embed

    job = Job(Embed(input=("x" * history.TEXT_CAP, "dropped")), JobLimits(), "queen")
    job.state = JobState.COMPLETED
    job.result = {"embeddings": [[0.5] * 576, [0.25] * 576], "model": "smollm2-135m", "prompt_tokens": 9,
                  "dimensions": 576}
    assert job.size_bytes > 32 * 2 * 576  # the vectors count against the in-memory bound
    store = JobHistoryStore(tmp_path / "queen.db")
    await store.open()
    store.record(job)
    record = await store.get(job.id)
    assert record["result"] == {"model": "smollm2-135m", "prompt_tokens": 9, "dimensions": 576}
    assert record["request"]["input"] == ["x" * history.TEXT_CAP] and record["request"]["truncated"] is True
    await store.close()


async def test_history_commits_without_a_sync_each_time(tmp_path):
    """WAL with synchronous=NORMAL: a record costs no fsync (the burst of a busy queen), and is still there
    after the store closes (a crash of the queen loses nothing; only a power cut could)."""
    store = JobHistoryStore(tmp_path / "queen.db")
    await store.open()
    assert await store._db.run(lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == 1  # NORMAL
    assert await store._db.run(lambda db: db.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    await store.close()
