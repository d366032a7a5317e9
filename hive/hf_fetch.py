"""Download one file from a Hugging Face hub, as a child process of the hive.

A child process, not a thread, so that cancelling the job can really stop the transfer (kill it).
huggingface_hub resumes a transfer that breaks within one run (Range requests); a run that fails leaves
no partial file, so the next try starts clean. Progress and the outcome are
printed to stdout as JSON lines for the hive to narrate:

    {"event": "retry", "message": "…"}     (the hub did not answer; asking again)
    {"event": "progress", "done": 1048576, "total": 98000000}
    {"event": "done", "path": "/…/file.gguf"}
    {"event": "error", "code": "HUB_UNREACHABLE", "message": "…"}

Before the transfer it asks the hub for the file's headers itself, with short timeouts and a few visible
tries within REACH_BUDGET_S, so an unreachable hub, a missing repository or file and a gated or private
one are told apart (huggingface_hub would retry for half a minute and then call all of them "not found").

    python -m hive.hf_fetch --repo org/repo --file model.gguf --dest DIR   (HF_ENDPOINT picks the hub)
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path

PROGRESS_EVERY_S = 0.25
REACH_BUDGET_S = 12.0  # an unreachable hub is reported within this (plus one try's timeout)
TRY_TIMEOUT_S = 4.0


class HubProblem(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def emit(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _why(exc: Exception) -> str:
    """A network failure in words: the name does not resolve, the connection is refused, it timed out."""
    import httpx

    text = str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    if "Name or service not known" in text or "nodename nor servname" in text or "Temporary failure in name" in text:
        return "its name does not resolve"
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[0] if text else type(exc).__name__


def check_reach(endpoint: str, repo: str, file: str, revision: str, token: str | None) -> None:
    """HEAD of the file on the hub, asked by us: raises HubProblem saying what is wrong and what to do."""
    import httpx

    url = f"{endpoint.rstrip('/')}/{repo}/resolve/{revision}/{file}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            resp = httpx.head(url, headers=headers, follow_redirects=False,
                              timeout=httpx.Timeout(TRY_TIMEOUT_S, connect=TRY_TIMEOUT_S))
            break
        except httpx.ProxyError as exc:
            raise HubProblem("HUB_UNREACHABLE", f"the proxy between this machine and the hub refused ({exc}); "
                                                "check HTTPS_PROXY / HTTP_PROXY in the hive's environment") from None
        except (httpx.TransportError, OSError) as exc:
            why, elapsed = _why(exc), time.monotonic() - started
            wait = min(2.0 ** attempt, REACH_BUDGET_S - elapsed)
            if wait < 1.0:
                raise HubProblem("HUB_UNREACHABLE", f"could not reach the hub at {endpoint} ({why}; {attempt} tries "
                                                    f"in {elapsed:.0f} s). Check this machine's network, or set "
                                                    "HF_ENDPOINT in the hive's environment to a mirror") from None
            emit(event="retry", message=f"the hub at {endpoint} did not answer ({why}); trying again in {wait:.0f} s "
                                        f"(try {attempt + 1})")
            time.sleep(wait)
    code = resp.headers.get("X-Error-Code", "")
    said = resp.headers.get("X-Error-Message", "")
    missing = code in ("RepoNotFound", "EntryNotFound", "RevisionNotFound")  # the hub says 401 for these too
    if code == "GatedRepo" or resp.status_code in (401, 403) and not missing:
        what = "gated (its license must be accepted on the hub first)" if code == "GatedRepo" else "private or gated"
        hint = "the token given was refused" if token else "no token was given"
        raise HubProblem("HUB_AUTH", f"repository '{repo}' is {what}, and {hint}: accept its terms on the hub with "
                                     "your account, then set HF_TOKEN (a read token) in the hive's environment")
    if resp.status_code == 404 or missing:
        if code == "EntryNotFound":
            raise HubProblem("HUB_NO_FILE", f"repository '{repo}' has no file '{file}' at revision '{revision}' "
                                            "(the hub lists its files on the repository's page)")
        if code == "RevisionNotFound":
            raise HubProblem("HUB_NO_FILE", f"repository '{repo}' has no revision '{revision}'")
        raise HubProblem("HUB_NO_REPO", f"the hub has no repository '{repo}' (a typo, or a private one: then "
                                        "set HF_TOKEN in the hive's environment)")
    if resp.status_code >= 400:
        raise HubProblem("HUB_ERROR", f"the hub answered {resp.status_code}{f': {said}' if said else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m hive.hf_fetch")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--revision", default="main")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    from huggingface_hub import constants, get_token, hf_hub_download

    try:
        check_reach(constants.ENDPOINT, args.repo, args.file, args.revision, get_token())
    except HubProblem as problem:
        emit(event="error", code=problem.code, message=str(problem))
        return 1
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from tqdm import tqdm

    class JsonProgress(tqdm):
        """tqdm that reports to the hive instead of drawing a bar."""

        def __init__(self, *a, **kw):
            kw["file"] = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the bar
            kw.pop("name", None)
            super().__init__(*a, **kw)
            self._last_emit = 0.0

        def update(self, n=1):
            result = super().update(n)
            now = time.monotonic()
            if now - self._last_emit >= PROGRESS_EVERY_S or (self.total and self.n >= self.total):
                self._last_emit = now
                emit(event="progress", done=int(self.n), total=int(self.total or 0))
            return result

    try:
        path = hf_hub_download(repo_id=args.repo, filename=args.file, revision=args.revision,
                               local_dir=args.dest, tqdm_class=JsonProgress)
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError) the hub went out of reach meanwhile
        emit(event="error", code="HUB_UNREACHABLE", message=f"the hub at {constants.ENDPOINT} stopped answering; "
                                                            "check the network and download again")
        return 1
    except GatedRepoError:
        emit(event="error", code="HUB_AUTH", message=f"repository '{args.repo}' is gated: accept its terms on the "
                                                     "hub, then set HF_TOKEN in the hive's environment")
        return 1
    except RepositoryNotFoundError:
        emit(event="error", code="HUB_NO_REPO", message=f"the hub has no repository '{args.repo}' (or it is private)")
        return 1
    except RevisionNotFoundError:
        emit(event="error", message=f"repository '{args.repo}' has no revision '{args.revision}'")
        return 1
    except EntryNotFoundError:
        emit(event="error", message=f"repository '{args.repo}' has no file '{args.file}'")
        return 1
    except HfHubHTTPError as exc:
        emit(event="error", message=f"the hub answered an error: {str(exc).splitlines()[0]}")
        return 1
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            # huggingface_hub keeps an .incomplete file to resume: on a full disk it only keeps the disk full
            for partial in Path(args.dest, ".cache", "huggingface", "download").rglob("*.incomplete"):
                partial.unlink(missing_ok=True)
            free = shutil.disk_usage(args.dest).free
            emit(event="error", code="DISK_FULL", message=f"the disk holding {args.dest} is full ({free / 1e6:.0f} MB "
                                                          "free); free some space, or delete models with `rbee model "
                                                          "delete`")
            return 1
        first = (str(exc).splitlines() or [""])[0]
        emit(event="error", message=f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
        return 1
    except Exception as exc:  # network errors (httpx) mid-transfer, …: one line for the user
        first = (str(exc).splitlines() or [""])[0]
        emit(event="error", message=f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
        return 1
    emit(event="done", path=str(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
