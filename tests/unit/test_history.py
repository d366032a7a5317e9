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
