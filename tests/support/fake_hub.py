"""A local stand-in for the Hugging Face hub (the one thing tests cannot reach): just enough of its
file protocol for huggingface_hub's hf_hub_download, pointed at with HF_ENDPOINT.

    HEAD/GET /{org}/{repo}/resolve/{revision}/{file}   (Range supported; X-Repo-Commit, ETag, sizes)

It can throttle the transfer (so progress is visible) and die partway through a download.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from aiohttp import web

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    files: dict[str, Path]  # "org/repo/file.gguf" -> local file
    bytes_per_s: float = 200e6
    die_after_bytes: int | None = None  # abort the next GET once this many bytes went out
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    died: asyncio.Event = field(default_factory=asyncio.Event)
    gated: dict[str, str] = field(default_factory=dict)  # repo -> the token it takes (401 GatedRepo without it)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{org}/{repo}/resolve/{revision}/{file:.+}", self.resolve)  # and HEAD
        return app

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        repo = f"{m['org']}/{m['repo']}"
        self.requests.append((request.method, request.path, request.headers.get("Range")))
        if repo in self.gated and request.headers.get("Authorization") != f"Bearer {self.gated[repo]}":
            return web.Response(status=401, headers={"X-Error-Code": "GatedRepo",
                                                     "X-Error-Message": "Access to this model is restricted"})
        if not any(key.startswith(repo + "/") for key in self.files):
            return web.Response(status=404, headers={"X-Error-Code": "RepoNotFound",
                                                     "X-Error-Message": "Repository not found"})
        path = self.files.get(f"{repo}/{m['file']}")
        if path is None:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound",
                                                     "X-Error-Message": "Entry not found"})
        size = path.stat().st_size
        etag = hashlib.sha256(str(path).encode()).hexdigest()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(size)})
        start = 0
        if rng := request.headers.get("Range"):
            start = int(rng.removeprefix("bytes=").split("-")[0])
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        resp = web.StreamResponse(status=status, headers={**headers, "Content-Length": str(size - start)})
        await resp.prepare(request)
        sent = 0
        chunk = 256 * 1024
        with open(path, "rb") as f:
            f.seek(start)
            while data := f.read(chunk):
                if self.die_after_bytes is not None and sent + len(data) > self.die_after_bytes:
                    self.die_after_bytes = None
                    self.died.set()
                    request.transport.abort()  # the hub dies mid-transfer
                    return resp
                await resp.write(data)
                sent += len(data)
                await asyncio.sleep(len(data) / self.bytes_per_s)
        await resp.write_eof()
        return resp


@contextlib.contextmanager
def hub_in_thread(hub: FakeHub) -> Iterator[str]:
    """The hub on its own event loop in a thread (its URL), for tests whose client blocks meanwhile."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(hub.app())

    async def serve() -> int:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner.addresses[0][1]

    port = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
