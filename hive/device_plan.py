"""Where one worker runs: which GPUs, how many of llama.cpp's layers on them, how much RAM the rest takes.

The hive asks before it starts a worker, from the GGUF's tensor table and what it sees of its GPUs now
(hive/memory_estimate.py places the bytes as llama.cpp does). For `device="auto"` the order is:

    1. every layer on ONE GPU: the one with the most room that holds it all;
    2. else split over several GPUs of the hive: the fewest (those with the most room) that hold it, the
       one with the most room last (llama.cpp puts the output layer on the last), layers shared in
       proportion to each GPU's room for them, counted in whole layers of their real sizes, and a
       `tensor_split` that makes llama.cpp give each GPU exactly those layers;
    3. else partial offload: as many layers as fit on the GPU with the most room, the rest in RAM;
    4. else the CPU.

A GPU's room is its free memory less a safety margin, max(5 % of its total, 256 MiB) (llama-server's
`--fit` leaves 1 GiB; our estimate counts CUDA's own overhead and the whole compute buffer, so less
slack is needed), and at most `vram_budget_bytes` when the hive caps what it plans per GPU. RAM is
compared with what the machine has available, without a margin, as CPU workers always were.

When nothing fits, `NoFit` (code NO_FIT, HTTP 409 like THREAD_BUDGET: the hive's resources are taken or
too small now; a 5xx would make OpenAI clients retry in vain) says what each device needs and has, and
what to do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from hive.errors import DeviceNotFound, HiveError
from hive.gguf import GGUFFile
from hive.memory_estimate import MIB, WORKER_UBATCH, DeviceEstimate, MemoryEstimate, Placement, estimate_devices

GIB = 1 << 30
MARGIN_FRACTION = 0.05
MARGIN_MIN_BYTES = 256 * MIB
KINDS = ("gpu", "split", "partial", "cpu")


class NoFit(HiveError):
    """No device of this hive has room for the worker; the message says what each needs and has."""

    title = "Model does not fit"
    code = "NO_FIT"
    status = 409


class NoGpuOffload(HiveError):
    """A GPU was asked for, but this hive's llama.cpp was built for the CPU only."""

    title = "No GPU support"
    code = "NO_GPU_OFFLOAD"
    status = 409


@dataclass(frozen=True)
class GpuState:
    """A GPU as the hive sees it now (nvidia-smi): its physical index, name and memory."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: str = ""

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"


@dataclass(frozen=True)
class WorkerPlan:
    """How to start one worker: `device` and `gpu_layers`/`tensor_split` for the worker itself (inside it
    its GPUs are numbered from 0), `gpus` for CUDA_VISIBLE_DEVICES (physical indices, in that order), and
    what each device must hold (`per_device`, keyed "cpu" and "cuda:N" with N physical)."""

    kind: str  # gpu | split | partial | cpu
    device: str  # the worker's --device: "cpu" or "cuda:0"
    gpus: tuple[int, ...]  # physical indices, in the worker's order
    gpu_layers: int  # llama.cpp's n_gpu_layers: 0 … n_layer + 1 (the output layer counts as one)
    n_layer: int  # repeating layers
    tensor_split: tuple[float, ...]  # a share per GPU in `gpus` when several, else ()
    per_device: dict[str, int]  # bytes each device needs
    estimate: MemoryEstimate  # the model's parts (all of it on the CPU)
    room: dict[str, int | None]  # what each device of per_device had for it (free less margin; None: unknown)
    gpu_totals: dict[str, int]  # each used GPU's total memory, for people
    reason: str = ""  # why not more of the GPU, when it says something
    layers_per_gpu: tuple[int, ...] = ()  # repeating layers on each GPU of `gpus`

    @property
    def cuda_visible_devices(self) -> str:
        """The worker's CUDA_VISIBLE_DEVICES: its GPUs, or "" (none: a CPU worker of a CUDA build stays off
        the GPUs, which llama.cpp would otherwise use for large batches)."""
        return ",".join(str(i) for i in self.gpus)

    def describe(self) -> str:
        """One line for people: 'All 33 layers on cuda:0: 5.2 of 24.0 GiB'."""
        gpu_words = [f"{_gib(self.per_device[d])} of {_gib(self.gpu_totals[d])} GiB" for d in self._gpu_devices]
        ram = self.per_device["cpu"]
        if self.kind == "gpu":
            line = f"All {self.gpu_layers} layers on {self._gpu_devices[0]}: {gpu_words[0]}"
        elif self.kind == "split":
            layers = _and([str(n) for n in self.layers_per_gpu])
            line = (f"Split over {_and(self._gpu_devices)} ({layers} layers, the output layer on the last): "
                    f"{_and(gpu_words)}")
        elif self.kind == "partial":
            on_gpu = self.gpu_layers - 1  # the first layer offloaded is the output layer
            line = (f"Offloading {on_gpu} of {self.n_layer} layers and the output layer to "
                    f"{self._gpu_devices[0]}: {gpu_words[0]}; the other {self.n_layer - on_gpu} in RAM: "
                    f"{_gib(ram)} GiB")
        else:
            line = f"On the CPU: {ram / MIB:,.0f} MB of RAM"
        return f"{line} ({self.reason})" if self.reason else line

    def to_dict(self) -> dict[str, Any]:
        """For the wire: MB are MiB, as in the memory estimate."""
        mb = lambda n: None if n is None else round(n / MIB, 1)  # noqa: E731
        return {
            "kind": self.kind, "device": self.device, "gpus": list(self.gpus), "gpu_layers": self.gpu_layers,
            "n_layer": self.n_layer, "tensor_split": list(self.tensor_split),
            "layers_per_gpu": list(self.layers_per_gpu),
            "needs_mb": {d: mb(n) for d, n in self.per_device.items()},
            "room_mb": {d: mb(n) for d, n in self.room.items()},
            "reason": self.reason, "describe": self.describe(), "estimate": self.estimate.to_dict(),
        }

    @property
    def _gpu_devices(self) -> list[str]:
        return [f"cuda:{i}" for i in self.gpus]


def no_gpu_offload(device: str) -> NoGpuOffload:
    return NoGpuOffload(f"{device} was asked for, but this hive's llama.cpp was built for the CPU only. "
                        "Reinstall the hive on a machine where nvidia-smi lists the GPU "
                        "(`rbee hive install`, or RBEE_LLAMA_BACKEND=cuda ./bootstrap.sh), or use --device cpu.")


def gpu_margin(gpu: GpuState) -> int:
    """What the plan leaves free on a GPU: max(5 % of its memory, 256 MiB)."""
    return max(int(gpu.total_bytes * MARGIN_FRACTION), MARGIN_MIN_BYTES)


def plan_worker(gguf: str | os.PathLike[str] | GGUFFile, *, gpus: Sequence[GpuState], ram_free_bytes: int | None,
                ctx_size: int, slots: int, cache_type: str = "f16", flash_attn: str = "auto",
                device: str = "auto", can_offload: bool = True, vram_budget_bytes: int | None = None,
                margin_bytes: int | None = None, n_ubatch: int = WORKER_UBATCH) -> WorkerPlan:
    """The plan for a worker of this GGUF on this hive now (module docstring: the order and the margin).

    `device`: "auto", "cpu" or "cuda:N" (N physical: that GPU only, whole or partial, never the CPU).
    `can_offload` False: this hive's llama.cpp has no GPU support, so auto plans the CPU. `margin_bytes`
    replaces the per-GPU margin. Raises NoFit, NoGpuOffload, DeviceNotFound, GGUFError, or HiveError for
    options llama.cpp refuses (a quantized KV cache without flash attention).
    """
    try:
        est = estimate_devices(gguf, ctx_size=ctx_size, slots=slots, n_ubatch=n_ubatch, cache_type=cache_type,
                               flash_attn=flash_attn)
    except ValueError as exc:  # GGUFError is a HiveError already
        if isinstance(exc, HiveError):
            raise
        raise HiveError(str(exc), code="BAD_WORKER_OPTIONS") from None
    planner = _Planner(est, gpus, ram_free_bytes, vram_budget_bytes, margin_bytes)
    if device == "cpu":
        return planner.cpu("asked for") or planner.refuse([])
    if device.startswith("cuda:"):
        if not can_offload:
            raise no_gpu_offload(device)
        chosen = [g for g in gpus if g.device == device]
        if not chosen:
            have = ", ".join(g.device for g in gpus) or "none"
            raise DeviceNotFound(f"There is no {device} on this hive (GPUs here: {have}).")
        return planner.whole(chosen) or planner.partial(chosen[0]) or planner.refuse(chosen)
    if device != "auto":
        raise HiveError(f"device must be auto, cpu or cuda:N, not {device!r}.", code="BAD_WORKER_OPTIONS")
    if not can_offload or not gpus:
        why = "this hive's llama.cpp cannot offload to a GPU" if gpus and not can_offload else "no GPU"
        return planner.cpu(why) or planner.refuse([])
    ranked = sorted(gpus, key=planner.room, reverse=True)
    return (planner.whole(ranked) or planner.split(ranked) or planner.partial(ranked[0])
            or planner.cpu(planner.no_gpu_room(ranked[0])) or planner.refuse(ranked))


class _Planner:
    def __init__(self, est: DeviceEstimate, gpus: Sequence[GpuState], ram_free: int | None,
                 budget: int | None, margin: int | None) -> None:
        self.est, self.gpus, self.ram_free, self.budget, self.margin = est, gpus, ram_free, budget, margin
        self.full = est.n_layer + 1

    def room(self, gpu: GpuState) -> int:
        room = gpu.free_bytes - (self.margin if self.margin is not None else gpu_margin(gpu))
        if self.budget is not None:
            room = min(room, self.budget)
        return max(room, 0)

    def ram_fits(self, need: int) -> bool:
        return self.ram_free is None or need <= self.ram_free

    def plan(self, kind: str, chosen: Sequence[GpuState], placement: Placement, split: tuple[float, ...] = (),
             reason: str = "") -> WorkerPlan:
        per_device: dict[str, int] = {"cpu": placement.host}
        room: dict[str, int | None] = {"cpu": self.ram_free}
        for gpu, need in zip(chosen, placement.gpus):
            per_device[gpu.device] = need
            room[gpu.device] = self.room(gpu)
        return WorkerPlan(kind=kind, device="cuda:0" if chosen else "cpu", gpus=tuple(g.index for g in chosen),
                          gpu_layers=placement.gpu_layers, n_layer=self.est.n_layer, tensor_split=split,
                          per_device=per_device, estimate=self.est.cpu, room=room,
                          gpu_totals={g.device: g.total_bytes for g in chosen}, reason=reason,
                          layers_per_gpu=placement.layers_on if chosen else ())

    def whole(self, ranked: Sequence[GpuState]) -> WorkerPlan | None:
        placement = self.est.place(self.full)
        if not self.ram_fits(placement.host):
            return None
        for gpu in ranked:
            if placement.gpus[0] <= self.room(gpu):
                return self.plan("gpu", [gpu], placement)
        return None

    def split(self, ranked: Sequence[GpuState]) -> WorkerPlan | None:
        """The fewest GPUs (those with the most room) that hold every layer, shares by room for layers."""
        for count in range(2, len(ranked) + 1):
            # the most room last (it gets the output layer); equal rooms in index order
            chosen = sorted(ranked[:count], key=lambda g: (self.room(g), g.index))
            plan = self._split_over(chosen)
            if plan is not None:
                return plan
        return None

    def _split_over(self, chosen: list[GpuState]) -> WorkerPlan | None:
        """Layers in proportion to each GPU's room for them (its room less CUDA's overhead and its compute
        buffer, and on the last GPU the output layer), counted in whole layers of their real sizes (a
        Q4_K_M's first and last layers are larger); else filled in order, the slack left on the last."""
        est = self.est
        rooms = [self.room(g) for g in chosen]
        fixed = [est.cuda_overhead + est.gpu_layer_compute for _ in chosen]
        fixed[-1] += est.weights.output + max(est.gpu_output_compute - est.gpu_layer_compute, 0)
        for_layers = [r - f for r, f in zip(rooms, fixed)]
        if min(for_layers) <= 0:
            return None
        sizes = [w + kv for w, kv in zip(est.weights.layers, est.kv_layers)]
        for counts in (_proportional(sizes, for_layers), _filled(sizes, for_layers)):
            if counts is None or min(counts) < 1:
                continue
            split = _shares(counts, self.full)
            placement = est.place(self.full, split)
            if placement.layers_on == tuple(counts) and all(n <= r for n, r in zip(placement.gpus, rooms)):
                return self.plan("split", chosen, placement, split) if self.ram_fits(placement.host) else None
        return None

    def partial(self, gpu: GpuState) -> WorkerPlan | None:
        """The most layers that fit on this GPU (1: the output layer alone), when RAM holds the rest."""
        room = self.room(gpu)
        for layers in range(self.full - 1, 0, -1):
            placement = self.est.place(layers)
            if placement.gpus[0] <= room:
                if not self.ram_fits(placement.host):
                    return None  # fewer layers on the GPU only need more RAM
                whole = self.est.place(self.full).gpus[0]
                return self.plan("partial", [gpu], placement, reason=f"all {self.full} layers would need "
                                 f"{_gib(whole)} GiB, {_gib(room)} GiB is free after the margin")
        return None

    def cpu(self, reason: str) -> WorkerPlan | None:
        placement = self.est.place(0)
        return self.plan("cpu", [], placement, reason=reason) if self.ram_fits(placement.host) else None

    def no_gpu_room(self, best: GpuState) -> str:
        need = self.est.place(1).gpus[0]
        return (f"no GPU has room: {best.device} has {_gib(self.room(best))} GiB after its margin, "
                f"the output layer alone needs {_gib(need)} GiB")

    def refuse(self, gpus: Sequence[GpuState]) -> NoReturn:
        est, cpu = self.est, self.est.cpu
        whole = est.place(self.full).gpus[0]
        least = est.place(1).gpus[0]
        parts = []
        for gpu in gpus:
            parts.append(f"{gpu.device} ({gpu.name}) has {_gib(gpu.free_bytes)} of {_gib(gpu.total_bytes)} GiB "
                         f"free, {_gib(self.room(gpu))} after its margin; all {self.full} layers need "
                         f"{_gib(whole)} GiB there, the output layer alone {_gib(least)} GiB")
        ram = "unknown" if self.ram_free is None else f"{_gib(self.ram_free)} GiB"
        best = max(gpus, key=self.room, default=None)
        most = next((g for g in range(self.full - 1, 0, -1)
                     if best is not None and est.place(g).gpus[0] <= self.room(best)), 0)
        if best is not None and most:
            parts.append(f"RAM: {ram} available; with {most - 1} layers and the output layer on {best.device} "
                         f"it needs {_gib(est.place(most).host)} GiB, on the CPU alone {_gib(cpu.total)} GiB")
        else:
            parts.append(f"RAM: {ram} available, the CPU needs {_gib(cpu.total)} GiB")
        raise NoFit(f"{cpu.model or 'The model'} does not fit this hive at {cpu.ctx_size} tokens × {cpu.slots} "
                    f"slot{'s' if cpu.slots != 1 else ''} ({cpu.cache_type} KV cache): {'; '.join(parts)}. "
                    "Try a smaller --ctx-size or fewer slots, --kv-cache-type q8_0 (half the KV cache), "
                    "stopping idle workers, or another hive.")


def _proportional(sizes: list[int], rooms: list[int]) -> list[int]:
    """Layer counts per GPU whose bytes follow the GPUs' rooms: a GPU's last layer is the one that brings
    the running total nearest its cumulative share."""
    total, room_total = sum(sizes), sum(rooms)
    counts, running, layer = [], 0, 0
    target = 0.0
    for room in rooms[:-1]:
        target += total * room / room_total
        start = layer
        while layer < len(sizes) and abs(running + sizes[layer] - target) <= abs(running - target):
            running += sizes[layer]
            layer += 1
        counts.append(layer - start)
    counts.append(len(sizes) - layer)
    return counts


def _filled(sizes: list[int], rooms: list[int]) -> list[int] | None:
    """Layer counts filling each GPU but the last in turn; the last takes the rest (None: it cannot)."""
    counts, layer = [], 0
    for room in rooms[:-1]:
        start, used = layer, 0
        while layer < len(sizes) and used + sizes[layer] <= room:
            used += sizes[layer]
            layer += 1
        counts.append(layer - start)
    counts.append(len(sizes) - layer)
    return counts if sum(sizes[len(sizes) - counts[-1]:]) <= rooms[-1] else None


def _shares(counts: list[int], gpu_layers: int) -> tuple[float, ...]:
    """A tensor split that makes llama.cpp give GPU i exactly counts[i] layers (the output layer to the
    last): it sends layer il to the first GPU whose cumulative share exceeds il / gpu_layers, so each
    boundary sits half a layer before the next GPU's first layer (safe from float rounding)."""
    bounds, running = [], 0
    for count in counts[:-1]:
        running += count
        bounds.append(round((running - 0.5) / gpu_layers, 4))
    bounds.append(1.0)
    return tuple(round(b - a, 4) for a, b in zip([0.0] + bounds[:-1], bounds))


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
