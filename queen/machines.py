"""Files on a hive's machine as the queen reaches them: the queen's own disk for the local hive, SFTP over
the SSH link for a remote one. Model transfers (model_transfer.py) read and write through this and never
ask which of the two they hold."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Protocol

import asyncssh

# The most one SFTP write may carry with OpenSSH's sftp-server (its limits@openssh.com extension says
# 261120); a block of that size per request keeps the per-request cost low.
SFTP_BLOCK = 255 * 1024


class OpenFile(Protocol):
    async def read(self, size: int, offset: int) -> bytes: ...

    async def write(self, data: bytes, offset: int) -> None: ...

    async def close(self) -> None: ...


class Machine(Protocol):
    name: str  # for people: "this machine", or the hive's alias
    models_dir: str  # the hive's model directory there (the hive's RBEE_HOME/data/models)
    block: int  # the size of one read or write

    async def size(self, path: str) -> int | None:
        """The file's size, None when there is no such file."""

    async def free(self, path: str) -> int:
        """Bytes free for an unprivileged writer on the file system holding `path` (a directory)."""

    async def makedirs(self, path: str) -> None: ...

    async def open_read(self, path: str) -> OpenFile: ...

    async def open_write(self, path: str) -> OpenFile:
        """For writing at any offset, keeping what the file holds (a resumed transfer)."""

    async def remove(self, path: str) -> None: ...


class LocalFile:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def read(self, size: int, offset: int) -> bytes:
        return await asyncio.to_thread(os.pread, self.fd, size, offset)

    async def write(self, data: bytes, offset: int) -> None:
        await asyncio.to_thread(_pwrite_all, self.fd, data, offset)

    async def close(self) -> None:
        os.close(self.fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class LocalMachine:
    """The queen's own machine (the local hive shares the queen's RBEE_HOME)."""

    block = 4 << 20  # few thread hops per GB

    def __init__(self, models_dir: Path, name: str = "this machine") -> None:
        self.models_dir = str(models_dir)
        self.name = name

    async def size(self, path: str) -> int | None:
        try:
            return (await asyncio.to_thread(os.stat, path)).st_size
        except FileNotFoundError:
            return None

    async def free(self, path: str) -> int:
        return (await asyncio.to_thread(shutil.disk_usage, path)).free

    async def makedirs(self, path: str) -> None:
        await asyncio.to_thread(os.makedirs, path, 0o700, True)

    async def open_read(self, path: str) -> OpenFile:
        return LocalFile(await asyncio.to_thread(os.open, path, os.O_RDONLY))

    async def open_write(self, path: str) -> OpenFile:
        return LocalFile(await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT, 0o600))

    async def remove(self, path: str) -> None:
        await asyncio.to_thread(lambda: Path(path).unlink(missing_ok=True))


class SftpFile:
    def __init__(self, handle: asyncssh.SFTPClientFile) -> None:
        self.handle = handle

    async def read(self, size: int, offset: int) -> bytes:
        return await self.handle.read(size, offset)  # opened in binary mode: bytes

    async def write(self, data: bytes, offset: int) -> None:
        await self.handle.write(data, offset)

    async def close(self) -> None:
        await self.handle.close()


class SftpMachine:
    """A remote hive's machine through SFTP on the queen's SSH link to it."""

    block = SFTP_BLOCK

    def __init__(self, sftp: asyncssh.SFTPClient, models_dir: str, name: str) -> None:
        self.sftp = sftp
        self.models_dir = models_dir
        self.name = name

    async def size(self, path: str) -> int | None:
        try:
            return (await self.sftp.stat(path)).size
        except asyncssh.SFTPNoSuchFile:
            return None

    async def free(self, path: str) -> int:
        vfs = await self.sftp.statvfs(path)
        return vfs.bavail * vfs.frsize

    async def makedirs(self, path: str) -> None:
        await self.sftp.makedirs(path, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True)

    async def open_read(self, path: str) -> OpenFile:
        return SftpFile(await self.sftp.open(path, "rb", block_size=0))

    async def open_write(self, path: str) -> OpenFile:
        # "r+b" keeps what is there (a resumed transfer); the file is made first when it is not
        if await self.size(path) is None:
            await (await self.sftp.open(path, "wb", asyncssh.SFTPAttrs(permissions=0o600))).close()
        return SftpFile(await self.sftp.open(path, "r+b", block_size=0))

    async def remove(self, path: str) -> None:
        try:
            await self.sftp.remove(path)
        except asyncssh.SFTPNoSuchFile:
            pass
