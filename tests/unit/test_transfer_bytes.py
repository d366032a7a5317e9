"""The queen's byte mover (queen/model_transfer.py) between real files: blocks in flight both ways land at
their offsets, a resumed transfer sends only the rest and still hashes the whole file, a source that is
shorter than said stops it, a rate limit holds, and the incoming file's name follows what is sent. The same
code runs over SFTP in tests/integration/test_model_transfer.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from queen.machines import LocalMachine
from queen.model_transfer import (
    Progress,
    Side,
    TransferError,
    in_flight,
    local_sha256,
    part_name,
    resume_offset,
    send_bytes,
)

SIZE = 20 * (1 << 20) + 12345  # not a whole number of blocks; more than what is in flight at once


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "source.gguf"
    path.write_bytes(os.urandom(SIZE))
    return path


class SmallBlocks(LocalMachine):
    block = 64 * 1024  # many blocks in flight, as over SFTP


async def send(source, dest, *, start=0, limit=None):
    machine = SmallBlocks(source.parent)
    progress = Progress("m", "h", SIZE, start, "Pushing")
    await send_bytes(Side(machine, str(source)), Side(machine, str(dest)), SIZE, start=start, progress=progress,
                     limit_bytes_s=limit)
    return progress


async def test_every_block_lands_at_its_offset(source, tmp_path):
    dest = tmp_path / "dest.part"
    progress = await send(source, dest)
    assert dest.read_bytes() == source.read_bytes() and progress.done == SIZE
    assert local_sha256(source, SIZE).hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()


async def test_a_resumed_transfer_sends_only_the_rest(source, tmp_path):
    dest = tmp_path / "dest.part"
    start = SIZE // 2 + 7
    dest.write_bytes(source.read_bytes()[:start])  # what a cut transfer left
    progress = await send(source, dest, start=start)
    assert dest.read_bytes() == source.read_bytes()
    assert progress.start == start and progress.done == SIZE  # sent SIZE - start


async def test_a_source_shorter_than_said_stops_the_transfer(source, tmp_path):
    with open(source, "r+b") as f:
        f.truncate(SIZE // 3)
    with pytest.raises(TransferError) as stopped:
        await send(source, tmp_path / "dest.part")
    assert stopped.value.code == "SOURCE_CHANGED"


async def test_a_rate_limit_is_held(source, tmp_path):
    started = time.monotonic()
    await send(source, tmp_path / "dest.part", limit=100e6)
    assert time.monotonic() - started >= SIZE / 100e6 * 0.9  # never ahead of the rate asked for


def test_the_incoming_name_follows_what_is_sent():
    a = part_name("file:/m/Model One.Q4.gguf", 100, "1")
    assert a == part_name("file:/m/Model One.Q4.gguf", 100, "1")  # the same bytes: resumed
    assert a != part_name("file:/m/Model One.Q4.gguf", 100, "2")  # the file changed: a new transfer
    assert a != part_name("file:/m/Model One.Q4.gguf", 101, "1")
    assert a.startswith("mmodel_one.q4-") and a.endswith(".part") and " " not in a


async def test_a_cut_transfer_with_holes_below_its_end_resumes_whole(source, tmp_path):
    """Writes land out of order: a cut can leave the file's end written and a block below it not."""
    dest = tmp_path / "dest.part"
    block = SmallBlocks.block
    data = bytearray(source.read_bytes()[:SIZE - 10 * block])
    hole = len(data) - in_flight(block) * block  # the earliest a block can still be missing
    data[hole:hole + block] = bytes(block)
    dest.write_bytes(bytes(data))
    start = resume_offset(dest.stat().st_size, block)
    assert start <= hole
    await send(source, dest, start=start)
    assert dest.read_bytes() == source.read_bytes()
    assert resume_offset(block, block) == 0


async def test_the_rate_said_is_the_transfers_not_what_follows_it(source, tmp_path):
    progress = await send(source, tmp_path / "dest.part")
    rate = progress.rate
    await asyncio.sleep(0.05)  # the checks after the last byte (hashes, adopt) take time of their own
    assert progress.rate == rate > 0
