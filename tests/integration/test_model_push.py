"""`rbee model push` to the local hive through a real queen, hive and keeper: in place by default, copied
with --copy, a copy stopped half way (the job cancelled, as Ctrl+C does) resumed by the same command, and the
keeper's progress as a person without a terminal sees it. Pushes over SSH, cut links and full disks are in
test_model_transfer.py (network namespaces)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from shared.builtin_model import builtin_model_path
from shared.events import Data, End, Narration
from shared.job_client import JobClient
from shared.operations import ModelPush
from tests.integration.test_remote_hive import payload, run
from tests.support.processes import BIN, start_queen

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)


@pytest.fixture
async def queen(tmp_path):
    home = tmp_path / "home"
    daemon = await asyncio.to_thread(start_queen, home)
    daemon.home = home
    yield daemon
    await asyncio.to_thread(daemon.stop, 60)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "Local-Model.Q4_1.gguf"
    shutil.copyfile(builtin_model_path(), path)
    return path


async def test_a_copy_stopped_half_way_resumes_and_in_place_needs_no_copy(queen, model):
    incoming = queen.home / "data" / "models" / "incoming"
    size = model.stat().st_size
    async with JobClient(queen.url, queen.token, request_timeout=60) as client:
        job = await client.submit(ModelPush(path=str(model), copy=True, bwlimit_mb_s=25))
        events = []
        async for event in client.stream(job.job_id):
            events.append(event)
            if isinstance(event, Data) and event.action == "transfer_progress" and event.payload["done"] >= size // 2:
                await client.cancel(job.job_id)
        assert events[-1] == End(state="cancelled")
        assert any(isinstance(e, Narration) and e.human.startswith("Stopped at") and "resumes" in e.human
                   for e in events)
        parts = list(incoming.glob("*.part"))
        assert len(parts) == 1 and parts[0].stat().st_size >= size // 2  # kept for the next run

        events = await run(client, ModelPush(path=str(model), copy=True))
        assert events[-1] == End(state="completed", stats=events[-1].stats)
        pushed = payload(events, "model_push")["hives"][0]
        assert 0 < pushed["resumed_at"] and pushed["sent_bytes"] == size - pushed["resumed_at"], pushed
        landed = queen.home / "data" / "models" / "pushed" / "local-model.q4_1.gguf"
        assert landed.read_bytes() == model.read_bytes() and not list(incoming.iterdir())

        # in place (the default for the local hive): the catalog points at the file itself, nothing copied
        other = model.with_name("Other.gguf")
        shutil.copyfile(model, other)
        events = await run(client, ModelPush(path=str(other), alias="other-one"))
        assert payload(events, "model_push")["hives"][0]["in_place"]
        entry = payload(await run(client, {"operation": "model_get", "id": "other-one"}), "model_get")
        assert entry["path"] == str(other) and entry["alias"] == "other-one" and not entry["downloaded"]


def test_the_keeper_shows_a_push_as_progress_lines_and_says_where_it_went(queen, model):
    env = {"RBEE_HOME": str(queen.home), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(BIN / "rbee"), "--queen-url", queen.url, "--no-autostart", "model", "push",
                           str(model), "--copy"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "100% (" in done.stderr and "MB/s" in done.stderr  # a line per quarter without a terminal
    assert f"file:{model} on localhost: sent 98.4 MB" in done.stdout
    refused = subprocess.run([str(BIN / "rbee"), "--queen-url", queen.url, "--no-autostart", "model", "push",
                              str(model.with_name("none.gguf"))], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1 and "does not exist on the queen's machine" in refused.stderr
    assert "Traceback" not in refused.stderr
