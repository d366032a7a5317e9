"""The job registry's bookkeeping: ids found whole or by a unique beginning, and finished jobs forgotten
oldest first by count, bytes and age, with the running totals always equal to a recount."""

from __future__ import annotations

import asyncio

import pytest

from shared.errors import AmbiguousId, JobNotFound
from shared.job_registry import JobLimits, JobRegistry, JobState
from shared.operations import Infer, Status


async def _quiet(operation, job):
    return None


async def _finished(registry: JobRegistry, *operations) -> list:
    jobs = [registry.submit(op) for op in operations]
    await asyncio.gather(*(job.wait() for job in jobs))
    await asyncio.sleep(0)  # let each job's task run its epilogue (finish accounting)
    return jobs


def _assert_totals_match_a_recount(registry: JobRegistry) -> None:
    finished = [j for j in registry.jobs() if j.state.finished]
    assert list(registry._finished) == [j.id for j in sorted(finished, key=lambda j: j.finished_at)]
    assert registry._finished_bytes == sum(j.size_bytes for j in finished)
    assert registry._sorted_ids == sorted(j.id for j in registry.jobs())


async def test_a_job_is_found_by_its_id_or_a_unique_beginning_with_or_without_job_prefix():
    registry = JobRegistry(_quiet)
    job, = await _finished(registry, Status())
    assert registry.get(job.id) is job
    assert registry.get(job.id[:12]) is job  # "job-" and a few characters
    assert registry.get(job.id[4:12]) is job  # without "job-"
    with pytest.raises(JobNotFound, match="No job with id 'job-nope'"):
        registry.get("job-nope")
    with pytest.raises(JobNotFound):
        registry.get("")


async def test_a_beginning_shared_by_several_jobs_is_ambiguous_and_names_some_of_them():
    registry = JobRegistry(_quiet)
    await _finished(registry, *(Status() for _ in range(40)))
    with pytest.raises(AmbiguousId, match="more than 5 job ids") as info:
        registry.get("job-")
    assert "type more of it" in str(info.value)
    first = sorted(j.id for j in registry.jobs())[0]
    two = [i for i in registry._sorted_ids if i.startswith(first[:5])]
    if len(two) > 1:
        with pytest.raises(AmbiguousId):
            registry.get(first[:5])


async def test_beyond_max_finished_the_oldest_finished_jobs_go_first():
    registry = JobRegistry(_quiet, limits=JobLimits(max_finished=3))
    jobs = await _finished(registry, *(Status() for _ in range(5)))
    kept = {j.id for j in registry.jobs()}
    assert len(kept) == 3
    oldest_first = sorted(jobs, key=lambda j: j.finished_at)
    assert kept == {j.id for j in oldest_first[-3:]}
    for gone in oldest_first[:2]:
        with pytest.raises(JobNotFound):
            registry.get(gone.id)
    _assert_totals_match_a_recount(registry)


async def test_beyond_max_finished_bytes_big_jobs_are_forgotten_and_totals_stay_exact():
    registry = JobRegistry(_quiet, limits=JobLimits(max_finished_bytes=50_000))
    await _finished(registry, *(Infer(prompt="x" * 20_000) for _ in range(6)))
    assert registry._finished_bytes <= 50_000
    assert 1 <= len(list(registry.jobs())) <= 2
    _assert_totals_match_a_recount(registry)


async def test_finished_jobs_past_retention_are_evicted_and_running_ones_never():
    release = asyncio.Event()

    async def waits_for_release(operation, job):
        await release.wait()

    registry = JobRegistry(waits_for_release, limits=JobLimits(retention_s=60))
    running = registry.submit(Status())
    release.set()
    done, = await _finished(registry, Status())
    await running.wait()
    await asyncio.sleep(0)
    release.clear()
    still_running = registry.submit(Status())
    await asyncio.sleep(0)
    assert registry.evict(now=done.finished_at + 59) == 0
    assert registry.evict(now=done.finished_at + 61) == 2
    assert list(registry.jobs()) == [still_running]
    assert registry.get(still_running.id[:10]) is still_running
    _assert_totals_match_a_recount(registry)
    release.set()
    await still_running.wait()


async def test_ten_thousand_jobs_keep_the_totals_exact():
    registry = JobRegistry(_quiet, limits=JobLimits(max_finished=1000))
    for _ in range(10):
        await _finished(registry, *(Status() for _ in range(1000)))
    assert len(list(registry.jobs())) == 1000
    _assert_totals_match_a_recount(registry)


async def test_a_job_cancelled_before_it_ever_ran_ends_cancelled_and_is_counted():
    registry = JobRegistry(_quiet, limits=JobLimits(max_finished=2))
    job = registry.submit(Status())
    registry.cancel(job.id)  # before the task's first step: _run never starts
    assert await asyncio.wait_for(job.wait(), 5) is JobState.CANCELLED
    await asyncio.sleep(0)
    _assert_totals_match_a_recount(registry)
    await _finished(registry, Status(), Status())
    with pytest.raises(JobNotFound):  # evicted like any finished job
        registry.get(job.id)
