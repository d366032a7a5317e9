"""A stand-in `nvidia-smi` for machines without a GPU: an executable put first on PATH that answers as the
real one does, from a JSON spec beside it (`nvidia-smi.json`) that a test may rewrite between calls.

    smi = FakeNvidiaSmi.install(tmp_path / "bin", [gpu("NVIDIA GeForce RTX 4090", "8.9", 24564, free_mb=20000)])
    start_hive(home, env=smi.env())          # or monkeypatch.setenv("PATH", smi.env()["PATH"])
    smi.update(0, free_mb=12000)             # the next call says so

It answers `-L` / `--list-gpus`, `--query-gpu=FIELDS --format=csv[,noheader][,nounits]` (the fields below,
in any order), `-i N` / `--id=N`, `-h`; anything else is refused with a non-zero exit, as the real one does.
The spec may also say: "old_driver": true (compute_cap is refused, as before driver 510), "fail": "message"
(every call fails with it, exit 9: the driver is not loaded), "hang_s": seconds (each call sleeps first).
Each call's arguments are appended to `nvidia-smi.calls` beside it (one JSON list a line).

This file runs as that executable too (with no imports beyond the standard library)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

INVALID = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n"
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
             "latest NVIDIA driver is installed and running.\n")
UNITS = {"memory.total": " MiB", "memory.free": " MiB", "memory.used": " MiB", "utilization.gpu": " %"}
HEADERS = {"memory.total": "memory.total [MiB]", "memory.free": "memory.free [MiB]",
           "memory.used": "memory.used [MiB]", "utilization.gpu": "utilization.gpu [%]"}


def gpu(name: str = "NVIDIA GeForce RTX 4090", compute_cap: str | None = "8.9", total_mb: int | str = 24564, *,
        free_mb: int | str | None = None, used_mb: int | str | None = None, util_pct: int | str = 0) -> dict[str, Any]:
    """One GPU of a spec: sizes in MiB as nvidia-smi counts them; a figure may be "[N/A]" and the like.
    Free defaults to all of it but a driver's few hundred MiB; used to what free leaves."""
    if free_mb is None:
        free_mb = int(total_mb) - 300 if isinstance(total_mb, int) else total_mb
    if used_mb is None:
        used_mb = int(total_mb) - int(free_mb) if isinstance(total_mb, int) and isinstance(free_mb, int) else "[N/A]"
    return {"name": name, "compute_cap": compute_cap, "total_mb": total_mb, "free_mb": free_mb, "used_mb": used_mb,
            "util_pct": util_pct}


class FakeNvidiaSmi:
    """The executable, its spec and its call log, all in one folder (put first on PATH)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.path = bin_dir / "nvidia-smi"
        self.spec_path = bin_dir / "nvidia-smi.json"
        self.calls_path = bin_dir / "nvidia-smi.calls"

    @classmethod
    def install(cls, bin_dir: Path, gpus: list[dict[str, Any]], **options: Any) -> "FakeNvidiaSmi":
        bin_dir.mkdir(parents=True, exist_ok=True)
        fake = cls(bin_dir)
        fake.path.write_text(f"#!{sys.executable} -IS\n"
                             f"import runpy\nrunpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__',"
                             f" init_globals={{'FAKE_DIR': {str(bin_dir.resolve())!r}}})\n")
        fake.path.chmod(0o755)
        fake.set(gpus, **options)
        return fake

    def spec(self) -> dict[str, Any]:
        return json.loads(self.spec_path.read_text())

    def set(self, gpus: list[dict[str, Any]], **options: Any) -> None:
        """Describe the machine anew (written whole, then renamed: a call never reads half of it)."""
        partial = self.spec_path.with_suffix(".tmp")
        partial.write_text(json.dumps({"gpus": gpus, **options}))
        partial.replace(self.spec_path)

    def update(self, index: int, **figures: Any) -> None:
        """Change one GPU's figures (free_mb, used_mb, util_pct, ...) for the calls that follow."""
        spec = self.spec()
        spec["gpus"][index].update(figures)
        self.set(**spec)

    def calls(self) -> list[list[str]]:
        if not self.calls_path.exists():
            return []
        return [json.loads(line) for line in self.calls_path.read_text().splitlines()]

    def env(self) -> dict[str, str]:
        """PATH with this folder first (for a daemon's environment)."""
        return {"PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


# --- the executable ------------------------------------------------------------------------------------

def _uuid(index: int) -> str:
    return f"GPU-{index:08x}-0000-4000-8000-{index:012x}"


def _field(spec: dict[str, Any], index: int, field: str, units: bool) -> str | None:
    """One figure as nvidia-smi prints it; None: not a field it knows."""
    g = spec["gpus"][index]
    values = {
        "index": index, "name": g.get("name"), "uuid": _uuid(index), "driver_version": spec.get("driver", "550.54.15"),
        "pci.bus_id": f"00000000:{index + 1:02X}:00.0", "compute_cap": g.get("compute_cap"),
        "memory.total": g.get("total_mb"), "memory.free": g.get("free_mb"), "memory.used": g.get("used_mb"),
        "utilization.gpu": g.get("util_pct"), "count": len(spec["gpus"]),
    }
    if field not in values:
        return None
    value = values[field]
    if value is None:
        return "[N/A]"
    text = str(value)
    if units and field in UNITS and not text.startswith("["):
        text += UNITS[field]
    return text


def _query(spec: dict[str, Any], fields: list[str], fmt: list[str], ids: list[int]) -> int:
    known = {"index", "name", "uuid", "driver_version", "pci.bus_id", "memory.total", "memory.free", "memory.used",
             "utilization.gpu", "count"} | ({"compute_cap"} if not spec.get("old_driver") else set())
    for field in fields:
        if field not in known:
            sys.stdout.write(f'Field "{field}" is not a valid field to query.\n\n')
            return 2
    if not fmt or fmt[0] != "csv" or not set(fmt[1:]) <= {"noheader", "nounits"}:
        sys.stdout.write(INVALID)
        return 2
    if "noheader" not in fmt:
        names = [HEADERS.get(f, f) if "nounits" not in fmt else f for f in fields]
        sys.stdout.write(", ".join(names) + "\n")
    for index in ids:
        sys.stdout.write(", ".join(str(_field(spec, index, f, "nounits" not in fmt)) for f in fields) + "\n")
    return 0


def main(argv: list[str], here: Path) -> int:
    with open(here / "nvidia-smi.calls", "a") as log:
        log.write(json.dumps(argv) + "\n")
    spec = json.loads((here / "nvidia-smi.json").read_text())
    time.sleep(float(spec.get("hang_s", 0)))
    if spec.get("fail"):
        sys.stdout.write(str(spec["fail"]).rstrip("\n") + "\n")
        return 9
    count = len(spec["gpus"])
    if count == 0:
        sys.stdout.write("No devices were found\n")
        return 6
    ids, fields, fmt, listing = list(range(count)), None, None, False
    if not argv:  # its summary table, cut down to a line a GPU
        for index, g in enumerate(spec["gpus"]):
            sys.stdout.write(f"|   {index}  {g.get('name')}  {g.get('used_mb')}MiB / {g.get('total_mb')}MiB  "
                             f"{g.get('util_pct')}% |\n")
        return 0
    args = list(argv)
    while args:
        arg = args.pop(0)
        key, eq, value = arg.partition("=")
        if arg in ("-h", "--help"):
            sys.stdout.write("NVIDIA System Management Interface (a test's stand-in)\n")
            return 0
        if arg in ("-L", "--list-gpus"):
            listing = True
        elif key in ("--query-gpu", "-i", "--id", "--format") and (eq or args):
            value = value if eq else args.pop(0)
            if key == "--query-gpu":
                fields = [f.strip() for f in value.split(",") if f.strip()]
            elif key == "--format":
                fmt = [f.strip() for f in value.split(",")]
            else:
                try:
                    ids = [int(i) for i in value.split(",")]
                except ValueError:
                    ids = [-1]
                if any(not 0 <= i < count for i in ids):
                    sys.stdout.write("No devices were found\n")
                    return 6
        else:
            sys.stdout.write(INVALID)
            return 2
    if listing and fields is None:
        for index in ids:
            sys.stdout.write(f"GPU {index}: {spec['gpus'][index]['name']} (UUID: {_uuid(index)})\n")
        return 0
    if fields is not None and fmt is not None and not listing:
        return _query(spec, fields, fmt, ids)
    sys.stdout.write(INVALID)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], Path(globals()["FAKE_DIR"])))
