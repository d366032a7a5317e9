"""Where rbee keeps its config, data and state: XDG directories, or all under RBEE_HOME when set.

RBEE_HOME is how tests (and users with several setups) isolate everything at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class RbeePaths:
    config_dir: Path  # token, hives.conf
    data_dir: Path  # models, model catalog, job history
    state_dir: Path  # logs, pid files

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RbeePaths":
        env = os.environ if env is None else env
        home = env.get("RBEE_HOME")
        if home:
            root = Path(home).expanduser().absolute()
            return cls(root / "config", root / "data", root / "state")
        user_home = Path(env.get("HOME") or Path.home())

        def xdg(var: str, default: str) -> Path:
            value = env.get(var)
            # The XDG spec says relative paths are invalid and must be ignored.
            base = Path(value) if value and os.path.isabs(value) else user_home / default
            return base / "rbee"

        return cls(
            xdg("XDG_CONFIG_HOME", ".config"),
            xdg("XDG_DATA_HOME", ".local/share"),
            xdg("XDG_STATE_HOME", ".local/state"),
        )

    def make_private(self) -> None:
        """Create the directories owner-only (0700), and tighten ones an older rbee made 0755."""
        for directory in (self.config_dir, self.data_dir, self.state_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if directory.stat().st_mode & 0o077:
                directory.chmod(0o700)

    @property
    def token_file(self) -> Path:
        return self.config_dir / "token"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"
