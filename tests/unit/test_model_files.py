"""A hive's side of models that travel (#28): what arrives from the queen is checked (size, sha256, GGUF)
before it enters the catalog, a catalogued file that went missing, changed or is cut short is found and
marked (never served, never silently deleted), and `verify` hashes everything again. Real SQLite catalog,
real files, the built-in model."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from hive import models
from hive.catalog import ModelCatalog
from hive.errors import ModelNotFound, ModelUnusable, TransferRefused
from hive.gguf import GGUFError, read_gguf
from hive.models import ModelStore
from shared.builtin_model import builtin_model_path
from shared.operations import ModelAdopt

MODEL_ID = "file:/home/someone/models/My-Model.Q4.gguf"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
async def store(tmp_path):
    catalog = ModelCatalog(tmp_path / "catalog.sqlite")
    await catalog.open()
    yield ModelStore(catalog, tmp_path / "models")
    await catalog.close()


def arrived(store: ModelStore, name: str = "mmodel-0123456789abcdef.part", source=None):
    """A file as the queen leaves it in the incoming directory."""
    store.incoming_dir.mkdir(parents=True, exist_ok=True)
    part = store.incoming_dir / name
    shutil.copyfile(source or builtin_model_path(), part)
    return part


def adopt_op(part, **overrides) -> ModelAdopt:
    fields = dict(hive_id="localhost", file=part.name, model=MODEL_ID, size=part.stat().st_size,
                  sha256=sha256(part), alias="mine", origin="pushed from laptop:/home/someone/models/My-Model.Q4.gguf")
    return ModelAdopt(**{**fields, **overrides})


async def test_what_arrived_whole_is_moved_into_place_and_catalogued(store):
    part = arrived(store)
    digest = sha256(part)
    entry = await store.adopt(adopt_op(part))
    assert entry.id == MODEL_ID and entry.sha256 == digest and entry.downloaded and entry.alias == "mine"
    assert entry.origin.startswith("pushed from laptop:") and entry.architecture == "llama" and entry.state == "ok"
    assert entry.path == str(store.model_dir / "pushed" / "mine.gguf") and not part.exists()
    assert await store.lookup("mine") == entry  # found by its short name too
    assert (await store.provision(MODEL_ID)).path == entry.path  # served from where it landed, nothing fetched


async def test_a_file_that_hashes_otherwise_is_removed_and_nothing_is_catalogued(store):
    part = arrived(store)
    with pytest.raises(TransferRefused) as refused:
        await store.adopt(adopt_op(part, sha256="0" * 64))
    assert refused.value.code == "CHECKSUM_MISMATCH" and "removed" in refused.value.message
    assert not part.exists() and await store.catalog.list() == []


async def test_the_digest_asked_first_is_reused_by_the_adopt_that_follows(store, monkeypatch):
    part = arrived(store)
    digest = sha256(part)
    hashed = []
    real = models.sha256_of
    monkeypatch.setattr(models, "sha256_of", lambda path, stop=None: hashed.append(path) or real(path, stop))
    assert await store.incoming_digest(part.name) == digest  # what ModelDigest says
    entry = await store.adopt(adopt_op(part, sha256=digest))
    assert entry.sha256 == digest and hashed == [part]  # read once for both


async def test_a_part_that_changed_after_its_digest_is_hashed_again(store):
    part = arrived(store)
    before = await store.incoming_digest(part.name)
    with open(part, "r+b") as f:  # a byte flipped by whatever wrote it after (a resumed transfer, a disk)
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 1_000_000))
    with pytest.raises(TransferRefused) as refused:
        await store.adopt(adopt_op(part, sha256=before))
    assert refused.value.code == "CHECKSUM_MISMATCH" and not part.exists()


async def test_a_digest_of_nothing_that_arrived_says_so(store):
    with pytest.raises(ModelNotFound):
        await store.incoming_digest("mnothing-0000000000000000.part")


async def test_an_unfinished_transfer_is_kept_to_be_resumed(store):
    part = arrived(store)
    size = part.stat().st_size
    with open(part, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(TransferRefused) as refused:
        await store.adopt(adopt_op(part, size=size, sha256="1" * 64))
    assert refused.value.code == "TRANSFER_INCOMPLETE" and part.stat().st_size == size // 2
    assert await store.catalog.list() == []


async def test_a_whole_file_that_is_no_usable_gguf_is_refused_and_removed(store, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 4096)  # the magic, then nonsense
    part = arrived(store, source=junk)
    with pytest.raises(GGUFError) as refused:
        await store.adopt(adopt_op(part))
    assert refused.value.code == "BAD_GGUF" and not part.exists() and await store.catalog.list() == []


async def test_nothing_there_to_adopt_is_said(store):
    store.incoming_dir.mkdir(parents=True)
    with pytest.raises(ModelNotFound):
        await store.adopt(ModelAdopt(hive_id="localhost", file="mnothing-0000000000000000.part", model=MODEL_ID,
                                     size=10, sha256="2" * 64))


async def test_a_second_model_with_the_same_name_does_not_replace_the_first(store, tmp_path):
    first = await store.adopt(adopt_op(arrived(store)))
    other = tmp_path / "other.gguf"
    other.write_bytes(builtin_model_path().read_bytes() + b"\0" * 32)  # another file (trailing bytes)
    second = await store.adopt(adopt_op(arrived(store, "mother-0123456789abcdef.part", other),
                                        model="file:/elsewhere/My-Model.Q4.gguf"))
    assert first.path != second.path and (store.model_dir / "pushed" / "mine.gguf").exists()
    assert len(await store.catalog.list()) == 2


def truncated_copy(tmp_path, keep: int):
    path = tmp_path / "cut.gguf"
    shutil.copyfile(builtin_model_path(), path)
    with open(path, "r+b") as f:
        f.truncate(keep)
    return path


def test_a_gguf_cut_short_in_its_tensor_data_is_refused(tmp_path):
    size = builtin_model_path().stat().st_size
    cut = read_gguf(truncated_copy(tmp_path, size - 1000))  # its header is whole: enough to plan memory with
    with pytest.raises(GGUFError, match="truncated") as refused:
        cut.check_complete()
    assert refused.value.code == "BAD_GGUF"
    read_gguf(builtin_model_path()).check_complete()  # the whole file is complete


async def test_verify_finds_missing_changed_and_truncated_files_and_marks_them(store, tmp_path):
    ok = await store.adopt(adopt_op(arrived(store)))
    changed = tmp_path / "changed.gguf"
    shutil.copyfile(builtin_model_path(), changed)
    gone = tmp_path / "gone.gguf"
    shutil.copyfile(builtin_model_path(), gone)
    full = builtin_model_path().stat().st_size
    cut = truncated_copy(tmp_path, full - 4096)
    for path in (changed, gone, cut):
        await store.catalog.add(f"file:{path}", f"file:{path}", path, path.stat().st_size, sha256(path), False)
    with open(changed, "r+b") as f:  # same size, other bytes: only the hash can tell
        f.seek(full // 2)
        f.write(b"\xff" * 16)
    gone.unlink()

    report = {r["id"]: r for r in await store.verify()}
    assert report[ok.id]["state"] == "ok"
    assert report[f"file:{changed}"]["state"] == "corrupt" and "hashes to" in report[f"file:{changed}"]["problem"]
    assert report[f"file:{gone}"]["state"] == "missing"
    assert report[f"file:{cut}"]["state"] == "bad_gguf" and "truncated" in report[f"file:{cut}"]["problem"]
    # marked, kept, and refused when asked for, each with its own code
    assert len(await store.catalog.list()) == 4
    for path, code in ((changed, "MODEL_CORRUPT"), (cut, "BAD_GGUF")):
        with pytest.raises(ModelUnusable) as refused:
            await store.provision(f"file:{path}")
        assert refused.value.code == code and "rbee model delete" in refused.value.message
    with pytest.raises(ModelNotFound, match="does not exist"):  # a file used in place: sought where it was
        await store.provision(f"file:{gone}")
    shutil.copyfile(builtin_model_path(), gone)  # and found again once it is back
    assert (await store.provision(f"file:{gone}")).usable
    # a file put right again passes the next check
    shutil.copyfile(builtin_model_path(), changed)
    assert (await store.verify(f"file:{changed}"))[0]["state"] == "ok"
    assert (await store.provision(f"file:{changed}")).usable


async def test_a_catalogued_file_that_changed_size_is_refused_without_a_verify(store):
    entry = await store.adopt(adopt_op(arrived(store)))
    with open(entry.path, "r+b") as f:
        f.truncate(entry.size - 1)
    with pytest.raises(ModelUnusable) as refused:
        await store.provision(MODEL_ID)
    assert refused.value.code == "MODEL_CORRUPT"
    marked = await store.catalog.get(MODEL_ID)
    assert marked.state == "corrupt" and "not the" in marked.problem


async def test_a_pushed_model_whose_file_is_gone_is_said_missing_not_sought_elsewhere(store):
    entry = await store.adopt(adopt_op(arrived(store)))
    (store.model_dir / "pushed" / "mine.gguf").unlink()
    with pytest.raises(ModelUnusable) as refused:
        await store.provision(entry.id)
    assert refused.value.code == "MODEL_MISSING"
