"""Models travel inside the cluster (#28) on the multi-machine harness (tests/support/netns.py): the queen in
the root namespace, two remotes behind a bridge, each with its own sshd. A 200 MB GGUF (the built-in model
padded with a metadata entry, so it still answers) is pushed to one remote with its cable pulled half way,
resumed, hashed and served; copied from that remote to the other; refused when it is no GGUF or when the
remote's disk cannot hold it (a small tmpfs), leaving nothing half made; and found damaged by `verify`.

The tests share one cluster with both hives installed and started, and run in file order.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from shared.events import Data, End, Error, Narration, Token
from shared.operations import Infer, ModelCopy, ModelPush
from tests.integration.test_multi_host import completed, two_remotes
from tests.integration.test_remote_hive import payload, run
from tests.support.padded_gguf import padded_model

pytestmark = pytest.mark.usefixtures("slow")  # starts processes: the slow tier (tests/conftest.py)

SIZE = 200_000_000
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    with two_remotes(root) as s:
        s.model = padded_model(root / "Padded-200M.Q4_1.gguf", SIZE)
        yield s


def models_dir(setup, alias: str) -> Path:
    return setup.remote / alias / "home" / "data" / "models"


def model_id(path: Path) -> str:
    return f"file:{path}"


def error_of(events) -> Error:
    assert events[-1] == End(state="failed"), [e for e in events if isinstance(e, (Error, End))]
    return next(e for e in events if isinstance(e, Error))


async def answer(client, model: str, alias: str) -> str:
    events = completed(await run(client, Infer(prompt=PROMPT, max_tokens=8, temperature=0, model=model, hive_id=alias)))
    return "".join(e.t for e in events if isinstance(e, Token))


async def stop_workers(client, alias: str) -> None:
    for worker in payload(await run(client, {"operation": "worker_list", "hive_id": alias}), "worker_list")["workers"]:
        completed(await run(client, {"operation": "worker_delete", "hive_id": alias, "id": worker["id"]}))


async def wait_running(client, alias: str, within: float = 40) -> None:
    started = time.monotonic()
    while True:
        status = payload(await run(client, {"operation": "hive_status", "alias": alias}), "hive_status")
        if status["state"] == "running":
            return
        assert time.monotonic() - started < within, status
        await asyncio.sleep(0.5)


async def test_a_push_cut_half_way_resumes_where_it_stopped_and_the_model_answers(setup):
    host = setup.cluster.host("hosta")
    async with setup.client(stream_idle_timeout=60) as client:
        job = await client.submit(ModelPush(path=str(setup.model), hive_id="hosta", bwlimit_mb_s=40))
        events: list = []
        cut_at_bytes = None
        try:
            async for event in client.stream(job.job_id):
                events.append(event)
                if (cut_at_bytes is None and isinstance(event, Data) and event.action == "transfer_progress"
                        and event.payload["done"] >= SIZE // 2):
                    cut_at_bytes = event.payload["done"]
                    host.cut()
        finally:
            host.restore()
        assert cut_at_bytes is not None, "the push never got half way"
        error = error_of(events)
        assert error.code == "TRANSFER_INTERRUPTED", error.message
        assert "run the same command again" in error.message and "resumes" in error.message
        parts = list((models_dir(setup, "hosta") / "incoming").glob("*.part"))
        assert len(parts) == 1 and SIZE // 3 < parts[0].stat().st_size < SIZE, parts  # what arrived is kept

        await wait_running(client, "hosta")  # the link heals by itself
        events = completed(await run(client, ModelPush(path=str(setup.model), hive_id="hosta")))
        pushed = payload(events, "model_push")["hives"][0]
        assert pushed["resumed_at"] >= SIZE // 3 and pushed["sent_bytes"] == SIZE - pushed["resumed_at"], pushed
        assert any(isinstance(e, Narration) and e.human.startswith("Resuming at") for e in events)
        assert any(isinstance(e, Narration) and "Checking the sha256" in e.human for e in events)  # the hive hashed it

        landed = models_dir(setup, "hosta") / "pushed" / "padded-200m.q4_1.gguf"
        assert landed.stat().st_size == SIZE and not list((models_dir(setup, "hosta") / "incoming").iterdir())
        assert hashlib.sha256(landed.read_bytes()).hexdigest() == hashlib.sha256(setup.model.read_bytes()).hexdigest()
        # it answers as the model it was made from: the same text at temperature 0
        assert await answer(client, model_id(setup.model), "hosta") == await answer(client, "smollm2-135m", "hosta")

        again = completed(await run(client, ModelPush(path=str(setup.model), hive_id="hosta")))
        assert payload(again, "model_push")["hives"][0].get("already_there")  # nothing sent twice


async def test_a_model_is_copied_from_one_hive_to_another(setup):
    async with setup.client() as client:
        events = completed(await run(client, ModelCopy(model="padded-200m.q4_1", from_hive="hosta", to_hive="hostb")))
        copied = payload(events, "model_copy")
        assert copied["sent_bytes"] == SIZE and copied["model"] == model_id(setup.model)
        said = [e.human for e in events if isinstance(e, Narration)]
        assert any("from hosta to hostb" in h and "/s" in h for h in said), said
        entry = payload(await run(client, {"operation": "model_get", "hive_id": "hostb", "id": "padded-200m.q4_1"}),
                        "model_get")
        assert entry["sha256"] == hashlib.sha256(setup.model.read_bytes()).hexdigest()
        assert entry["origin"] == "copied from hive hosta" and entry["state"] == "ok"
        assert await answer(client, model_id(setup.model), "hostb")


async def test_what_cannot_go_is_refused_and_leaves_nothing_half_made(setup, tmp_path):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("a text file with the wrong name\n")
    async with setup.client() as client:
        error = error_of(await run(client, ModelPush(path=str(not_gguf), hive_id="hosta")))
        assert error.code == "NOT_GGUF" and "Nothing was sent" in error.message

        other = padded_model(tmp_path / "Other-200M.gguf", SIZE, seed=1)
        incoming = models_dir(setup, "hostb") / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        # a small disk under hostb's incoming directory, mounted where hostb's sshd (and so its SFTP) sees it:
        # `ip netns exec` gave it a mount namespace of its own
        in_hostb = ["nsenter", "--mount", f"--target={setup.cluster.host('hostb').proc.pid}"]
        subprocess.run([*in_hostb, "mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(incoming)], check=True)
        try:
            error = error_of(await run(client, ModelPush(path=str(other), hive_id="hostb")))
            assert error.code == "DISK_FULL" and "hostb has" in error.message and "Nothing was sent" in error.message
            assert subprocess.run([*in_hostb, "ls", "-A", str(incoming)], capture_output=True, text=True,
                                  check=True).stdout == ""
        finally:
            subprocess.run([*in_hostb, "umount", str(incoming)], check=True)
        listed = payload(await run(client, {"operation": "model_list", "hive_id": "hostb"}), "model_list")["models"]
        assert model_id(other) not in [m["id"] for m in listed]


async def test_a_worker_placed_on_a_hive_without_the_model_gets_it_from_the_hive_that_has_it(setup):
    async with setup.client() as client:
        await stop_workers(client, "hostb")  # (the copy of the last test answered there)
        completed(await run(client, {"operation": "model_delete", "hive_id": "hostb", "id": model_id(setup.model)}))
        events = completed(await run(client, Infer(prompt=PROMPT, max_tokens=8, temperature=0,
                                                   model=model_id(setup.model), hive_id="hostb")))
        said = [e.human for e in events if isinstance(e, Narration)]
        assert any("hosta has" in h and "copying it to hostb" in h for h in said), said
        assert "".join(e.t for e in events if isinstance(e, Token))
        assert (models_dir(setup, "hostb") / "pushed" / "padded-200m.q4_1.gguf").stat().st_size == SIZE


async def test_verify_finds_a_damaged_copy_which_is_then_never_served(setup):
    landed = Path(models_dir(setup, "hostb") / "pushed" / "padded-200m.q4_1.gguf")
    async with setup.client() as client:
        await stop_workers(client, "hostb")
        with open(landed, "r+b") as f:  # a byte flipped in the tensor data: same size, another hash
            f.seek(SIZE - 1000)
            byte = f.read(1)
            f.seek(SIZE - 1000)
            f.write(bytes([byte[0] ^ 0xFF]))
        events = completed(await run(client, {"operation": "model_verify", "hive_id": "hostb"}))
        report = {m["id"]: m for m in payload(events, "model_verify")["models"]}
        assert report[model_id(setup.model)]["state"] == "corrupt", report
        assert report["smollm2-135m"]["state"] == "ok"
        error = error_of(await run(client, Infer(prompt=PROMPT, max_tokens=4, model=model_id(setup.model),
                                                 hive_id="hostb")))
        assert error.code == "MODEL_CORRUPT" and "rbee model delete" in error.message, error.message
        # deleted, then copied again: whole and served
        completed(await run(client, {"operation": "model_delete", "hive_id": "hostb", "id": model_id(setup.model)}))
        completed(await run(client, ModelCopy(model=model_id(setup.model), from_hive="hosta", to_hive="hostb")))
        assert await answer(client, model_id(setup.model), "hostb")
