"""Does the TUI's token pane keep up with a fast worker? A synthetic stream at 500 tokens/s is fed to the
real app (headless, Textual's test driver) and we measure what was drawn and how late. The stream is
shaped like prose: a line break every 40 tokens (--line-every 0 for one endless line, the worst case).

    .venv/bin/python bench/tui_tokens.py [--rate 500] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keeper_tui.tui.app import RbeeApp  # noqa: E402
from shared.paths import RbeePaths  # noqa: E402


def token(i: int, line_every: int) -> str:
    return f"tok{i}\n" if line_every and i % line_every == line_every - 1 else f"tok{i} "


async def measure(rate: float, seconds: float, line_every: int) -> dict:
    paths = RbeePaths.from_env({"RBEE_HOME": tempfile.mkdtemp(prefix="rbee-tui-bench-")})
    app = RbeeApp("http://127.0.0.1:9", autostart=False, paths=paths)  # no queen needed: we feed the pane
    async with app.run_test(size=(140, 40)) as pilot:
        pane = app.chat.transcript.start_answer("bench").body  # a chat answer, in the transcript as a real one streams
        await pilot.pause()
        total = int(rate * seconds)
        start = time.perf_counter()
        for i in range(total):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pane.append(token(i, line_every))
        offered_s = time.perf_counter() - start
        while pane.rendered_tokens < total and time.perf_counter() - start < seconds + 5:
            await pilot.pause(0.01)
        rendered_s = time.perf_counter() - start
        assert pane.text == "".join(token(i, line_every) for i in range(total))
        return {"bench": "tui_tokens", "offered_tokens_per_s": round(total / offered_s, 1),
                "rendered_tokens_per_s": round(pane.rendered_tokens / rendered_s, 1),
                "rendered_all": pane.rendered_tokens == total, "max_lag_ms": round(pane.max_lag_s * 1000, 1),
                "p50_lag_ms": round(statistics.median(pane.lags_s) * 1000, 1),
                "p90_lag_ms": round(sorted(pane.lags_s)[int(len(pane.lags_s) * 0.9)] * 1000, 1),
                "tokens": total, "line_every": line_every}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--line-every", type=int, default=40, help="tokens per line; 0: one endless line")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.rate, args.seconds, args.line_every))))


if __name__ == "__main__":
    main()
