"""Ask the built-in model one question through a real llm-worker-rbee, then stop the worker.

The first-run check of the README until the queen and keeper land (then `rbee infer` replaces it).
The answer streams to stdout; what happens along the way goes to stderr.

    .venv/bin/python scripts/ask_worker.py "Why is the sky blue?" [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.builtin_model import builtin_model_path  # noqa: E402
from shared.errors import RbeeError  # noqa: E402
from shared.events import End, Error, Token  # noqa: E402
from shared.inference import InferenceRequest  # noqa: E402
from shared.job_client import JobClient  # noqa: E402
from shared.token import load_or_create_token  # noqa: E402


def say(message: str) -> None:
    print(f"\033[2m[ask_worker] {message}\033[0m" if sys.stderr.isatty() else f"[ask_worker] {message}",
          file=sys.stderr, flush=True)


async def ask(url: str, token: str, prompt: str, max_tokens: int) -> int:
    async with JobClient(url, token, path="/v1/inference") as client:
        for _ in range(600):  # the model loads in a second or two
            health = await client.health()
            if health["state"] == "ready":
                break
            await asyncio.sleep(0.1)
        say(f"worker ready ({health['model']}, {health['threads']} threads); asking")
        chat = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"  # SmolLM2's chat format
        job = await client.submit(InferenceRequest(prompt=chat, max_tokens=max_tokens, temperature=0.7,
                                                   stop=("<|im_end|>",)))
        async for event in client.stream(job.job_id):
            if isinstance(event, Token):
                print(event.t, end="", flush=True)
            elif isinstance(event, Error):
                say(f"error: {event.message}")
            elif isinstance(event, End):
                print()
                say(f"{event.state}: {event.stats.get('tokens_out')} tokens, "
                    f"{event.stats.get('tokens_per_s')} tokens/s, first token after {event.stats.get('ttft_ms')} ms")
                return 0 if event.state == "completed" else 1
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    worker_bin = Path(sys.executable).parent / "llm-worker-rbee"
    say("starting llm-worker-rbee on the built-in model smollm2-135m")
    proc = subprocess.Popen([str(worker_bin), "--worker-id", "ask-worker", "--model", str(builtin_model_path()),
                             "--model-ref", "smollm2-135m"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            say("the worker did not start (see the lines above)")
            return 1
        return asyncio.run(ask(m.group(1), load_or_create_token(), args.prompt, args.max_tokens))
    except RbeeError as exc:
        say(str(exc))
        return 1
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
