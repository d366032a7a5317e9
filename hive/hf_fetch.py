"""Download one file from a Hugging Face hub, as a child process of the hive.

A child process, not a thread, so that cancelling the job can really stop the transfer (kill it).
huggingface_hub resumes a transfer that breaks within one run (Range requests); a run that fails leaves
no partial file, so the next try starts clean. Progress and the outcome are
printed to stdout as JSON lines for the hive to narrate:

    {"event": "progress", "done": 1048576, "total": 98000000}
    {"event": "done", "path": "/…/file.gguf"}
    {"event": "error", "message": "…"}

    python -m hive.hf_fetch --repo org/repo --file model.gguf --dest DIR   (HF_ENDPOINT picks the hub)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

PROGRESS_EVERY_S = 0.25


def emit(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m hive.hf_fetch")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--revision", default="main")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
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
    except RepositoryNotFoundError:
        emit(event="error", message=f"the hub has no repository '{args.repo}' (or it is private)")
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
    except Exception as exc:  # network errors (httpx), disk full, …: one line for the user
        first = (str(exc).splitlines() or [""])[0]
        emit(event="error", message=f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
        return 1
    emit(event="done", path=str(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
