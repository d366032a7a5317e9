"""A queen with two hives: its own `localhost`, and a second hive process with its own hive id and
RBEE_HOME (standing in for another machine), listed in the queen's hives.conf."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.builtin_model import builtin_model_path
from shared.paths import RbeePaths
from tests.support.processes import Daemon, start_hive, start_queen

SECOND = "second"


@dataclass
class TwoHives:
    queen: Daemon
    second: Daemon
    queen_paths: RbeePaths
    second_only_model: str  # a file: reference registered on the second hive only

    def stop(self) -> None:
        self.second.stop(30)
        self.queen.stop(30)


def start_two_hives(tmp_path: Path) -> TwoHives:
    queen_home, second_home = tmp_path / "queen-home", tmp_path / "second-home"
    queen = start_queen(queen_home)
    queen_paths = RbeePaths.from_env({"RBEE_HOME": str(queen_home)})
    second_paths = RbeePaths.from_env({"RBEE_HOME": str(second_home)})
    second_paths.config_dir.mkdir(parents=True)
    shutil.copy(queen_paths.token_file, second_paths.token_file)  # the same token, as hive_install gives it
    second = start_hive(second_home, "--hive-id", SECOND, "--queen-url", queen.url)
    port = second.url.rsplit(":", 1)[1]
    (queen_paths.config_dir / "hives.conf").write_text(f"Host {SECOND}\n    HostName 127.0.0.1\n    HivePort {port}\n")
    model = tmp_path / "models" / "only-on-second.gguf"
    model.parent.mkdir()
    shutil.copy(builtin_model_path(), model)
    return TwoHives(queen, second, queen_paths, f"file:{model}")
