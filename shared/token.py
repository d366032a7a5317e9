"""The shared secret every request but `GET /health` carries. Created on first use, mode 0600."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from shared.errors import RbeeError
from shared.paths import RbeePaths


class TokenFileError(RbeeError):
    title = "Token file problem"
    code = "TOKEN_FILE"


def load_or_create_token(paths: RbeePaths | None = None) -> str:
    """Read the token, creating it atomically (O_EXCL, 0600) if it does not exist yet.

    Two processes starting at once both end up with the same token: the loser of the race reads the
    winner's file.
    """
    paths = paths or RbeePaths.from_env()
    path = paths.token_file
    token = _read(path)
    if token:
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    new = secrets.token_urlsafe(32)
    tmp = path.with_name(f".token.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new + "\n")
    try:
        os.link(tmp, path)  # fails if another process created the token first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    token = _read(path)
    if not token:
        raise TokenFileError(f"The token file {path} is empty; delete it and run again to make a new one.")
    return token


def _read(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenFileError(f"Cannot read the token file {path}: {exc.strerror}.") from exc
    if not text:
        raise TokenFileError(f"The token file {path} is empty; delete it and run again to make a new one.")
    return text


def tokens_equal(given: str, expected: str) -> bool:
    """Constant-time comparison, so timing does not leak how much of a guess was right."""
    return hmac.compare_digest(given.encode(), expected.encode())
