"""Models travelling inside the cluster: a GGUF from the queen's machine to a hive (`rbee model push`), or
from one hive to another (`rbee model copy`), over the queen's SSH links. No internet, no scp by hand.

The bytes go to NAME.part in the receiving hive's incoming directory, named after what is sent, so a
transfer cut short (a link lost, Ctrl+C) resumes where it stopped when it is run again. Once the bytes are
there, the sender's sha256 (the queen's hash of its file, or the source hive's catalog entry) goes with
model_adopt, and the receiving hive catalogues the file only when what arrived hashes the same: a file that
differs is removed, never served. Free space is checked before the first byte is sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hashlib
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from queen.errors import QueenError
from queen.forwarding import RemoteJobFailed, run_remote_job, weave
from queen.hives import HiveRegistry
from queen.machines import LocalMachine, Machine
from shared.builtin_model import gguf_problem
from shared.errors import RbeeError
from shared.events import Data, Event, emit, narrate
from shared.models import alias_of, parse_reference
from shared.operations import (
    HiveOperation,
    ModelAdopt,
    ModelCopy,
    ModelDigest,
    ModelDownload,
    ModelGet,
    ModelPush,
)

PEER_ASK_TIMEOUT_S = 5.0  # a hive that does not say within this whether it has a model is not asked to give it
IN_FLIGHT_BYTES = 8 << 20  # written but not yet confirmed: fills a link whose round trip is a few ms
FREE_MARGIN = 16 << 20  # left free on the receiving disk beyond the file, for the catalog and logs
PROGRESS_EVERY_S = 0.5
NARRATE_EVERY_S = 2.0
INCOMING = "incoming"  # hive/models.py reads the same directory name


class TransferError(QueenError):
    title = "Model transfer failed"
    code = "TRANSFER_FAILED"
    status = 502


@dataclass
class Side:
    """One end of a transfer: a machine and a path on it."""

    machine: Machine
    path: str


class Progress:
    """download_progress-like events (bar, rate, ETA) and a narrated line every few seconds."""

    def __init__(self, model: str, hive: str, total: int, start: int, verb: str) -> None:
        self.model, self.hive, self.total, self.start, self.verb = model, hive, total, start, verb
        self.done = start
        self.started = time.monotonic()
        self.ended: float | None = None  # when the last byte landed: the rate is the transfer's, not the checks'
        self._emitted = self._narrated = 0.0

    @property
    def rate(self) -> float:
        elapsed = (self.ended or time.monotonic()) - self.started
        return (self.done - self.start) / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        finished = self.done >= self.total
        if finished:
            self.ended = now
        if now - self._emitted >= PROGRESS_EVERY_S or finished:
            self._emitted = now
            emit(Data(action="transfer_progress", payload={
                "model": self.model, "hive": self.hive, "done": self.done, "total": self.total,
                "bytes_per_s": round(self.rate), "resumed_at": self.start}))
        if now - self._narrated >= NARRATE_EVERY_S or finished:
            self._narrated = now
            narrate("model_transfer", f"{self.verb} {100 * self.done / self.total:.0f}% ({_mb(self.done)} of "
                                      f"{_mb(self.total)}) at {_mb(self.rate)}/s", target=self.model)


async def send_bytes(src: Side, dst: Side, size: int, *, start: int, progress: Progress,
                     limit_bytes_s: float | None = None) -> None:
    """Copy [start, size) of src to dst at the same offsets: reads of the source's block size ahead, writes of
    the destination's, IN_FLIGHT_BYTES of them at once. Nothing else runs beside it (no hashing): on two
    cores the encryption of the link and the remote's sshd want them both."""
    read_block, write_block = src.machine.block, dst.machine.block
    reads_ahead = max(2, IN_FLIGHT_BYTES // read_block)
    reader = await src.machine.open_read(src.path)
    writer = await dst.machine.open_write(dst.path)
    reads: collections.deque[tuple[int, int, asyncio.Future[bytes]]] = collections.deque()
    writes: set[asyncio.Future[None]] = set()
    room = asyncio.Semaphore(in_flight(write_block))
    next_offset = start
    began = time.monotonic()

    def read_ahead() -> None:
        nonlocal next_offset
        while len(reads) < reads_ahead and next_offset < size:
            n = min(read_block, size - next_offset)
            reads.append((next_offset, n, asyncio.ensure_future(reader.read(n, next_offset))))
            next_offset += n

    async def write(data: bytes, offset: int) -> None:
        try:
            await writer.write(data, offset)
        finally:
            room.release()
        progress.advance(len(data))

    try:
        read_ahead()
        while reads:
            offset, wanted, pending = reads.popleft()
            data = await pending
            if len(data) != wanted:
                raise TransferError(f"{src.path} on {src.machine.name} ended at byte {offset + len(data)}, before its "
                                    f"{size} bytes: did it change while it was sent?", code="SOURCE_CHANGED")
            read_ahead()
            view = memoryview(data)
            for at in range(0, len(data), write_block):
                await room.acquire()
                for done in [w for w in writes if w.done()]:
                    writes.discard(done)
                    done.result()  # a failed write stops the transfer now
                writes.add(asyncio.ensure_future(write(bytes(view[at:at + write_block]) if len(data) > write_block
                                                       else data, offset + at)))
            if limit_bytes_s:  # like rsync's --bwlimit: never ahead of the rate asked for
                ahead = (offset + len(data) - start) / limit_bytes_s - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        if writes:
            await asyncio.gather(*writes)
    finally:
        for _, _, pending in reads:
            pending.cancel()
        for pending_write in writes:
            pending_write.cancel()
        await asyncio.gather(*(p for _, _, p in reads), *writes, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.close(), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.close(), 5)


def resume_offset(part_size: int, block: int) -> int:
    """Where a transfer that left `part_size` bytes resumes. Writes go out `in_flight(block)` at a time and
    may land out of order, so the last blocks below the file's end can be holes; everything before the last
    in_flight + 1 blocks landed (a block is only sent once the one in_flight before it was written)."""
    return max(0, part_size - (in_flight(block) + 1) * block)


def in_flight(block: int) -> int:
    """Writes of `block` bytes on their way at once: 32 SFTP blocks, 2 of the local disk's."""
    return max(2, IN_FLIGHT_BYTES // block)


def part_name(model_id: str, size: int, identity: str) -> str:
    """The incoming file's name: the same for the same bytes (so a second run resumes), another for another
    version of the file (so a changed source never continues an old transfer)."""
    key = hashlib.sha256(f"{model_id}\0{size}\0{identity}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^a-z0-9._-]", "_", alias_of(model_id))[:80]
    return f"m{stem}-{key}.part"


def local_sha256(path: Path, upto: int) -> Any:
    """A sha256 object fed with the first `upto` bytes of `path` (what a resumed transfer already sent)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        left = upto
        while left > 0:
            chunk = f.read(min(1 << 20, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest


class ModelTransfers:
    """The queen's model_push and model_copy operations."""

    def __init__(self, hives: HiveRegistry) -> None:
        self.hives = hives

    # --- asking hives -------------------------------------------------------------------------------

    async def catalog_entry(self, alias: str, model: str) -> dict[str, Any] | None:
        """The hive's catalog entry for `model` (an id, a reference or an alias), None when it has none."""
        url = await self.hives.ensure_running(alias)
        found: dict[str, Any] = {}

        def collect(event: Event) -> None:
            if isinstance(event, Data) and event.action == "model_get":
                found.update(event.payload)

        try:
            await run_remote_job(self.hives.clients_for(alias).jobs(url, request_timeout=30),
                                 ModelGet(hive_id=alias, id=model), on_event=collect)
        except RemoteJobFailed as exc:
            if exc.code == "MODEL_NOT_FOUND":
                return None
            raise
        return found or None

    async def _tell(self, op: HiveOperation) -> None:
        """Run `op` on its hive, its narration and errors woven into this job (its data is this job's to say)."""
        url = await self.hives.ensure_running(op.hive_id)
        await run_remote_job(self.hives.clients_for(op.hive_id).jobs(url), op,
                             on_event=lambda event: None if isinstance(event, Data) else weave(event))

    # --- push ---------------------------------------------------------------------------------------

    async def push(self, op: ModelPush) -> dict[str, Any]:
        path = Path(op.path)
        if not path.is_absolute():
            raise TransferError(f"The path {op.path} must be absolute (the keeper makes it so).", code="BAD_PATH",
                                status=400)
        problem = await asyncio.to_thread(gguf_problem, path)
        if problem is not None and not path.exists():
            raise TransferError(f"{path} does not exist on the queen's machine ({socket.gethostname()}), which is where "
                                "rbee model push reads it from.", code="FILE_NOT_FOUND", status=404)
        if problem is not None:
            raise TransferError(f"{path} {problem}: only GGUF model files can be pushed. Nothing was sent.",
                                code="NOT_GGUF", status=422)
        targets = self.hives.schedulable() if op.all else [op.hive_id]
        pushed, failed = [], []
        for k, alias in enumerate(targets, 1):
            if len(targets) > 1:
                narrate("model_push", f"Pushing {path.name} to {alias} ({k} of {len(targets)})", target=alias)
            try:
                pushed.append(await self._push_to(alias, path, op))
            except RbeeError as exc:
                if not op.all:
                    raise
                narrate("model_push", f"{alias}: {exc.message}", target=alias, level="error")
                failed.append(f"{alias} ({exc.code})")
        emit(Data(action="model_push", payload={"model": parse_reference(f"file:{path}").id, "hives": pushed}))
        if failed:
            raise TransferError(f"{path.name} went to {', '.join(p['hive'] for p in pushed) or 'no hive'}, but not to "
                                f"{', '.join(failed)}: see above; the same command sends it where it is missing.")
        return {"hives": [p["hive"] for p in pushed]}

    async def _push_to(self, alias: str, path: Path, op: ModelPush) -> dict[str, Any]:
        model_id = parse_reference(f"file:{path}").id
        stat = await asyncio.to_thread(path.stat)
        local = self.hives.get(alias).backend.local
        if local and not op.copy:
            # the local hive reads the file where it lies: nothing to send
            await self._tell(ModelDownload(hive_id=alias, model=model_id, alias=op.alias))
            return {"hive": alias, "sent_bytes": 0, "in_place": True}
        have = await self.catalog_entry(alias, model_id)
        if (have is not None and have.get("size") == stat.st_size and have.get("state", "ok") == "ok"
                and have.get("path") != str(path)):  # (--copy of a file the local hive uses in place: copy it)
            narrate("model_push", f"{alias} has {model_id} already; checking that it is the same file", target=alias)
            digest = await asyncio.to_thread(lambda: local_sha256(path, stat.st_size).hexdigest())
            if digest == have.get("sha256"):
                narrate("model_push", f"{alias} holds the same {path.name} (sha256 {digest[:12]}…): nothing to send",
                        target=alias)
                if op.alias and op.alias != have.get("alias"):
                    await self._tell(ModelDownload(hive_id=alias, model=model_id, alias=op.alias))
                return {"hive": alias, "sent_bytes": 0, "already_there": True}
        machine = await self.hives.machine(alias)
        name = part_name(model_id, stat.st_size, f"{stat.st_mtime_ns}")
        incoming = f"{machine.models_dir}/{INCOMING}"
        dst = Side(machine, f"{incoming}/{name}")
        start = await self._resume_point(dst, incoming, stat.st_size, alias, model_id)
        if start:
            narrate("model_push", f"Resuming at {100 * start / stat.st_size:.0f}%: {_mb(start)} of {path.name} are on "
                                  f"{alias} already", target=model_id)
        progress = Progress(model_id, alias, stat.st_size, start, f"Pushing {path.name} to {alias}:")
        await self._send(Side(LocalMachine(Path("/")), str(path)), dst, stat.st_size, start, progress, op.bwlimit_mb_s,
                         to=alias)
        narrate("model_push", f"Sent {_mb(stat.st_size - start)} to {alias} in {time.monotonic() - progress.started:.1f} s "
                              f"({_mb(progress.rate)}/s); both sides hash it", target=model_id)
        # hashed after the transfer, not during it (where it shares the cores with the encryption), and on
        # both machines at once: the hive keeps its digest for the adopt that compares them
        sent, _ = await asyncio.gather(asyncio.to_thread(lambda: local_sha256(path, stat.st_size).hexdigest()),
                                       self._tell(ModelDigest(hive_id=alias, file=name)))
        await self._tell(ModelAdopt(
            hive_id=alias, file=name, model=model_id, size=stat.st_size, sha256=sent, alias=op.alias,
            origin=f"pushed from {socket.gethostname()}:{path}"))
        return {"hive": alias, "sent_bytes": stat.st_size - start, "resumed_at": start,
                "bytes_per_s": round(progress.rate)}

    # --- copy between hives -------------------------------------------------------------------------

    async def copy(self, op: ModelCopy) -> dict[str, Any]:
        entry = await self.catalog_entry(op.from_hive, op.model)
        if entry is None:
            raise TransferError(f"{op.from_hive} has no model '{op.model}' (see `rbee model list --hive "
                                f"{op.from_hive}`).", code="MODEL_NOT_FOUND", status=404)
        if entry.get("state", "ok") != "ok":
            raise TransferError(f"{entry['id']} on {op.from_hive} is marked {entry['state']} ({entry.get('problem')}): "
                                "it is not copied.", code="MODEL_CORRUPT", status=409)
        model_id, size, sha256 = entry["id"], int(entry["size"]), entry["sha256"]
        have = await self.catalog_entry(op.to_hive, model_id)
        if have is not None and have.get("sha256") == sha256 and have.get("state", "ok") == "ok":
            narrate("model_copy", f"{op.to_hive} holds {model_id} already (same sha256): nothing to copy",
                    target=model_id)
            result = {"model": model_id, "from": op.from_hive, "to": op.to_hive, "sent_bytes": 0, "already_there": True}
            emit(Data(action="model_copy", payload=result))
            return result
        source, target = await self.hives.machine(op.from_hive), await self.hives.machine(op.to_hive)
        name = part_name(model_id, size, sha256)
        incoming = f"{target.models_dir}/{INCOMING}"
        dst = Side(target, f"{incoming}/{name}")
        start = await self._resume_point(dst, incoming, size, op.to_hive, model_id)
        narrate("model_copy", f"Copying {model_id} ({_mb(size)}) from {op.from_hive} to {op.to_hive}"
                              + (f", resuming at {100 * start / size:.0f}%" if start else ""), target=model_id)
        progress = Progress(model_id, op.to_hive, size, start, f"Copying from {op.from_hive} to {op.to_hive}:")
        await self._send(Side(source, entry["path"]), dst, size, start, progress, op.bwlimit_mb_s, to=op.to_hive)
        narrate("model_copy", f"Copied {_mb(size - start)} from {op.from_hive} to {op.to_hive} at "
                              f"{_mb(progress.rate)}/s", target=model_id)
        alias = entry.get("alias")  # a name it was given, not the one every model has
        await self._tell(ModelAdopt(
            hive_id=op.to_hive, file=name, model=model_id, size=size, sha256=sha256,
            alias=alias if alias and alias != alias_of(model_id) else None, origin=f"copied from hive {op.from_hive}"))
        result = {"model": model_id, "from": op.from_hive, "to": op.to_hive, "sent_bytes": size - start,
                  "resumed_at": start, "bytes_per_s": round(progress.rate)}
        emit(Data(action="model_copy", payload=result))
        return result

    async def from_another_hive(self, model: str, to_hive: str) -> bool:
        """Before `to_hive` fetches a hub model from the internet: copy it from a hive that has it, when one
        does. A copy that fails is said, and the hive downloads it after all. True when copied."""
        try:
            if await self.catalog_entry(to_hive, model) is not None:
                return False
        except RbeeError:
            return False  # the spawn that follows says what is wrong with the hive

        async def has(alias: str) -> str | None:
            try:
                entry = await asyncio.wait_for(self.catalog_entry(alias, model), PEER_ASK_TIMEOUT_S)
            except (RbeeError, asyncio.TimeoutError):
                return None
            return alias if entry is not None and entry.get("state", "ok") == "ok" else None

        others = [alias for alias, _ in self.hives.with_address() if alias != to_hive]
        holders = [alias for alias in await asyncio.gather(*(has(a) for a in others)) if alias]
        for alias in holders:
            narrate("model_copy", f"{alias} has {model}: copying it to {to_hive} over the cluster's links instead of "
                                  "downloading it from the hub", target=model)
            try:
                await self.copy(ModelCopy(model=model, from_hive=alias, to_hive=to_hive))
                return True
            except RbeeError as exc:
                narrate("model_copy", f"Copying {model} from {alias} failed ({exc.message}); {to_hive} downloads it "
                                      "instead", target=model, level="warn")
        return False

    # --- shared -------------------------------------------------------------------------------------

    async def _resume_point(self, dst: Side, incoming: str, size: int, alias: str, model_id: str) -> int:
        """Where to start: what a previous run left in the part file; refused when the disk cannot hold the rest."""
        try:
            await dst.machine.makedirs(incoming)
            have = await dst.machine.size(dst.path) or 0
            if have > size:  # not ours to continue
                await dst.machine.remove(dst.path)
                have = 0
            free = await dst.machine.free(incoming)
        except (asyncssh.Error, OSError) as exc:
            raise TransferError(f"Cannot prepare {incoming} on {alias}: {_why(exc)}.") from None
        have = resume_offset(have, dst.machine.block)
        need = size - have
        if need + FREE_MARGIN > free:
            raise TransferError(
                f"{alias} has {_mb(free)} free in {incoming}, and {model_id} needs {_mb(need)} more there (and "
                f"{_mb(FREE_MARGIN)} to spare): free some space on {alias} (`rbee model delete` removes a model), "
                "or install the hive on a larger disk. Nothing was sent.", code="DISK_FULL", status=507)
        return have

    async def _send(self, src: Side, dst: Side, size: int, start: int, progress: Progress,
                    bwlimit_mb_s: float | None, *, to: str) -> None:
        try:
            await send_bytes(src, dst, size, start=start, progress=progress,
                             limit_bytes_s=bwlimit_mb_s * 1e6 if bwlimit_mb_s else None)
        except asyncio.CancelledError:
            narrate("model_transfer", f"Stopped at {100 * progress.done / size:.0f}%: the {_mb(progress.done)} sent stay "
                                      f"on {to}, and the same command resumes from there", target=progress.model,
                    level="warn")
            raise
        except (asyncssh.Error, OSError, ConnectionError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in str(exc):
                with contextlib.suppress(Exception):
                    await dst.machine.remove(dst.path)
                raise TransferError(f"{to} ran out of disk space at {_mb(progress.done)} of {_mb(size)}: the partial "
                                    "file was removed. Free some space there and run it again.", code="DISK_FULL",
                                    status=507) from None
            raise TransferError(
                f"The transfer to {to} broke at {100 * progress.done / size:.0f}% ({_mb(progress.done)} of {_mb(size)}): "
                f"{_why(exc)}. What arrived is kept: run the same command again (once {to} is reachable) and it "
                "resumes from there.", code="TRANSFER_INTERRUPTED") from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _mb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


