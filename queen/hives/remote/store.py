"""What the queen remembers of its remote hives across restarts: each one's own token, and whether it
should be running (so a restarted queen re-adopts it, and supervises it again).

Each remote hive gets its own token, never the queen's: a compromised machine holds only a credential
for its own hive, which the queen accepts for that hive's heartbeats and nothing else. Uninstalling a
hive revokes its token. The file is the queen's, owner-only, in its config dir.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from queen.errors import QueenError

FILE_NAME = "remote-hives.json"


class RemoteHiveStore:
    def __init__(self, config_dir: Path) -> None:
        self.path = config_dir / FILE_NAME
        self._hives: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._hives is None:
            try:
                data = json.loads(self.path.read_text())
            except FileNotFoundError:
                data = {}
            except (OSError, ValueError) as exc:
                raise QueenError(f"{self.path} is unreadable ({exc}); move it away to start over (remote hives "
                                 "then need `rbee hive install` again).", code="REMOTE_STORE") from None
            self._hives = {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}
        return self._hives

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._load(), f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def token(self, alias: str) -> str | None:
        return self._load().get(alias, {}).get("token")

    def issue_token(self, alias: str) -> str:
        """A fresh token for the hive (replacing any earlier one)."""
        token = secrets.token_urlsafe(32)
        self._load().setdefault(alias, {})["token"] = token
        self._save()
        return token

    def revoke(self, alias: str) -> None:
        if self._load().pop(alias, None) is not None:
            self._save()

    def keep_running(self, alias: str) -> bool:
        return bool(self._load().get(alias, {}).get("keep_running"))

    def set_keep_running(self, alias: str, value: bool) -> None:
        entry = self._load().setdefault(alias, {})
        if entry.get("keep_running") != value:
            entry["keep_running"] = value
            self._save()

    def to_keep_running(self) -> list[str]:
        return [alias for alias, entry in self._load().items() if entry.get("keep_running")]
