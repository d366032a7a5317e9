"""queen/placement.py's ranking of hives with room: the most of the worker on GPUs first, then free VRAM,
then the model's file already there, then free RAM (pure: HiveFits as the survey of each hive makes them)."""

from __future__ import annotations

from queen.placement import HiveFit, rank


def fit(alias: str, kind: str | None = "cpu", vram: float = 0.0, ram: float = 8000.0, has_model: bool = True) -> HiveFit:
    return HiveFit(alias, has_model=has_model, needs_mb=800.0, free_mb=ram, cores_free=4, answered=True,
                   plan_kind=kind, vram_free_mb=vram)


def order(*fits: HiveFit, known_need: float | None = 800.0) -> list[str]:
    return [f.alias for f in rank(list(fits), known_need)]


def test_a_whole_gpu_beats_part_of_one_which_beats_the_cpu_whatever_the_ram():
    assert order(fit("cpu-box", "cpu", ram=120_000), fit("partial", "partial", vram=3000),
                 fit("gpu", "gpu", vram=9000, ram=1000)) == ["gpu", "partial", "cpu-box"]


def test_a_split_counts_as_much_as_one_gpu_then_the_more_free_vram_wins():
    assert order(fit("split", "split", vram=30000), fit("one", "gpu", vram=20000)) == ["split", "one"]
    assert order(fit("small", "gpu", vram=10000), fit("big", "gpu", vram=22000)) == ["big", "small"]


def test_between_equal_plans_the_file_already_there_then_free_ram():
    assert order(fit("fetch", "gpu", vram=20000, has_model=False), fit("has", "gpu", vram=20000)) == ["has", "fetch"]
    assert order(fit("less", ram=4000), fit("more", ram=16000)) == ["more", "less"]


def test_a_cpu_only_cluster_ranks_as_before_file_first_then_ram():
    assert order(fit("fetch", ram=64000, has_model=False), fit("has", ram=4000)) == ["has", "fetch"]


def test_a_hive_without_the_file_is_judged_by_its_free_vram_against_the_known_estimate():
    # no plan yet (nothing to read the GGUF from): 20 GB free holds an 800 MB model whole
    assert order(fit("cpu", "cpu", ram=64000), fit("new-gpu", None, vram=20000, has_model=False)) == ["new-gpu", "cpu"]
    # 500 MB free: part of it at best, still ahead of the CPU, behind a whole GPU
    assert order(fit("cpu", "cpu"), fit("tiny", None, vram=500, has_model=False),
                 fit("gpu", "gpu", vram=2000)) == ["gpu", "tiny", "cpu"]
    # no GPU at all: as a CPU hive
    assert order(fit("a", None, ram=9000, has_model=False), fit("b", "cpu", ram=1000)) == ["b", "a"]


def test_the_gpu_victim_is_the_least_recently_used_idle_gpu_worker_of_another_model_where_freeing_helps():
    from queen.placement import gpu_victim
    from queen.worker_registry import WorkerRegistry

    workers = WorkerRegistry(heartbeat_timeout_s=15)
    for worker_id, hive, model, device, used in [("w-old-gpu", "a", "m1", "cuda:0", 10.0),
                                                 ("w-new-gpu", "a", "m2", "cuda:1", 20.0),
                                                 ("w-cpu", "a", "m3", "cpu", 1.0),  # older, but frees no VRAM
                                                 ("w-same", "a", "wanted", "cuda:2", 0.0),  # the model itself
                                                 ("w-other-hive", "b", "m1", "cuda:0", 0.0)]:
        workers.add(worker_id, hive, "http://x", model, device=device).last_used = used
    fits = [fit("a", "cpu"), fit("b", "cpu")]
    assert gpu_victim(workers, "wanted", fits) is None  # no hive says freeing its GPUs would help
    fits[0].gpu_if_freed = True
    victim, where = gpu_victim(workers, "wanted", fits)
    assert (victim.worker_id, where.alias) == ("w-old-gpu", "a")
    workers.lease(victim, "job-1")  # busy: never stopped
    assert gpu_victim(workers, "wanted", fits)[0].worker_id == "w-new-gpu"
