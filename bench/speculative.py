"""Speculative decoding by n-gram lookup (worker/ngram.py): one stream at temperature 0, on two worker
processes of the built-in model side by side, one guessing (the default) and one with --draft-max 0.
Two prompts: "repeat this passage with one change" (the answer copies its prompt: guesses are kept) and
free text (few are). Each round sends each prompt to one worker, then the other (the order alternates by
round); tokens/s is the answer's tokens over the time from sending the request to its end, and beside it
the decoding's alone (the tokens after the first over the time after the first: llama-server's
predicted_per_second). The texts of both sides must be identical. First, what a guessed position costs on
this machine: one decode of a token and its 8 guesses against one of the token alone, in this process (the
ratio depends on it: each guess is another position of the batch, and where the model's weight type has no
batched kernel for this CPU, a position costs about half a token or more). The last line printed is one
JSON object.

    .venv/bin/python bench/speculative.py [--rounds 15] [--max-tokens 160] [--requantize q8_0]

--requantize runs it all on a copy of the built-in model's weights in another type (llama.cpp's own
quantizer, in a temporary directory): the built-in's Q4_1 has no batched kernel on x86; Q4_0, Q5_0 and Q8_0
have (llamafile's sgemm, and the repack for Q4_0), so a guess costs less there. What the file holds
(tensors per type) is printed, and in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.builtin_model import builtin_model_path  # noqa: E402
from shared.events import End, Token  # noqa: E402
from shared.inference import InferenceRequest  # noqa: E402
from shared.job_client import JobClient  # noqa: E402
from tests.support.passages import FREE, REPEAT  # noqa: E402
from tests.support.processes import start_worker  # noqa: E402
from worker.config import all_cores  # noqa: E402
from worker.owner_thread import quiet_llama_logs  # noqa: E402


class Answer(NamedTuple):
    rate: float  # tokens/s from sending the request to its end
    decoding_rate: float  # tokens/s after the first token: the decoding alone (llama-server's predicted_per_second)
    text: str
    stats: dict


async def answer(worker, messages, max_tokens: int) -> Answer:
    """One streamed answer, timed."""
    request = InferenceRequest(messages=tuple((m["role"], m["content"]) for m in messages), max_tokens=max_tokens,
                               temperature=0)
    events, first = [], None
    async with JobClient(worker.url, worker.token, path="/v1/inference") as client:
        start = time.perf_counter()
        job = await client.submit(request)
        async for event in client.stream(job.job_id):
            if first is None and isinstance(event, Token):
                first = time.perf_counter()
            events.append(event)
        done = time.perf_counter()
    end = events[-1]
    if not isinstance(end, End) or end.state != "completed" or first is None:
        raise SystemExit(f"a generation failed: {end}")
    tokens, text = end.stats["tokens_out"], "".join(e.t for e in events if isinstance(e, Token))
    return Answer(tokens / (done - start), (tokens - 1) / (done - first), text, dict(end.stats))


# --requantize's choices: llama.cpp's file types. No k-quants: their blocks are 256 values and most of this
# model's rows are 576, so llama.cpp writes a Q4_K_M of it mostly as Q5_0 (the types written are printed).
QUANT_TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


def tensor_types(path: Path) -> dict[str, int]:
    """How many of the file's tensors each type holds (its GGUF tensor table), most first."""
    from collections import Counter

    from hive.gguf import read_gguf

    return dict(Counter(t.type_name for t in read_gguf(path).tensors).most_common())


def requantize(quant: str, directory: Path) -> Path:
    """A copy of the built-in model's weights in `quant`, written by llama.cpp's quantizer."""
    import ctypes

    import llama_cpp

    source, out = builtin_model_path(), directory / f"smollm2-135m-{quant}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant])
    params.allow_requantize = True  # from Q4_1: what the built-in model is
    params.nthread = all_cores()
    quiet_llama_logs()
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)):
        raise SystemExit(f"llama.cpp could not requantize {source} to {quant}")
    return out


def guess_cost(model_path: Path, guesses: int = 8, repeats: int = 30) -> float:
    """A guessed position's decode time as a share of a whole token's: (t(1 + guesses) - t(1)) / guesses / t(1),
    medians, after a 300-token prompt, with the worker's threads."""
    import llama_cpp

    quiet_llama_logs()
    logging.disable(logging.WARNING)  # its notes on how it placed the model are not this benchmark's output
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), llama_cpp.llama_model_default_params())
    if not model:
        raise SystemExit(f"llama.cpp could not load {model_path}")
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 2048, 512, 512
    params.n_threads = params.n_threads_batch = all_cores()
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        llama_cpp.llama_model_free(model)
        raise SystemExit(f"llama.cpp could not make a context for {model_path}")
    memory, batch = llama_cpp.llama_get_memory(ctx), llama_cpp.llama_batch_init(512, 0, 1)
    vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))

    def decode(tokens: list[int], start: int, logits: bool) -> float:
        for k, token in enumerate(tokens):
            batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.seq_id[k][0] = token, start + k, 1, 0
            batch.logits[k] = logits or k == len(tokens) - 1
        batch.n_tokens = len(tokens)
        began = time.perf_counter()
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama.cpp could not decode")
        return time.perf_counter() - began

    try:
        decode([100 + (k * 37) % (vocab - 100) for k in range(300)], 0, False)
        times: dict[int, list[float]] = {1: [], 1 + guesses: []}
        for r in range(repeats):
            for n in (times if r % 2 == 0 else reversed(list(times))):
                times[n].append(decode([100 + (r * 11 + k * 7) % (vocab - 100) for k in range(n)], 300, True))
                llama_cpp.llama_memory_seq_rm(memory, 0, 300, -1)
        one, many = statistics.median(times[1]), statistics.median(times[1 + guesses])
        return (many - one) / guesses / one
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
        logging.disable(logging.NOTSET)


def median_ratio(runs: dict[str, list[Answer]], rate: str) -> float:
    """The median over rounds of guessing's rate over plain's, each round's pair measured side by side."""
    pairs = zip(runs["guessing"], runs["plain"])
    return round(statistics.median(getattr(g, rate) / getattr(p, rate) for g, p in pairs), 3)


async def measure(home: Path, model_path: Path, rounds: int, max_tokens: int) -> dict:
    guessing = await asyncio.to_thread(start_worker, home / "guessing", model=model_path)
    plain = await asyncio.to_thread(start_worker, home / "plain", "--draft-max", "0", model=model_path)
    sides = {"guessing": guessing, "plain": plain}
    result: dict = {}
    try:
        for name, messages in (("repeat", REPEAT), ("free", FREE)):
            for worker in sides.values():  # warm: the prompt's cache, the first decode
                await answer(worker, messages, 8)
            runs: dict[str, list[Answer]] = {"guessing": [], "plain": []}
            for r in range(rounds):
                for side in (["plain", "guessing"] if r % 2 == 0 else ["guessing", "plain"]):
                    runs[side].append(await answer(sides[side], messages, max_tokens))
                print(f"{name} round {r + 1}: guessing {runs['guessing'][-1].rate:6.1f} tok/s | "
                      f"plain {runs['plain'][-1].rate:6.1f} tok/s", file=sys.stderr)
            last = runs["guessing"][-1].stats
            result[name] = {
                "guessing_tokens_per_s": round(statistics.median(a.rate for a in runs["guessing"]), 1),
                "plain_tokens_per_s": round(statistics.median(a.rate for a in runs["plain"]), 1),
                "ratio": median_ratio(runs, "rate"),
                "ratio_after_first_token": median_ratio(runs, "decoding_rate"),
                "identical_texts": all(g.text == p.text for g, p in zip(runs["guessing"], runs["plain"])),
                "tokens": last["tokens_out"],
                "guessed": last.get("draft_tokens", 0), "kept": last.get("draft_tokens_accepted", 0),
            }
    finally:
        for worker in sides.values():
            await asyncio.to_thread(worker.stop)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 15: a round takes about 2 s, and a median of 5 moved between 1.39x and 1.56x over nine runs on one VM
    # (the plain side alone between 100 and 136 tokens/s); more rounds narrow what one run says
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--requantize", choices=sorted(QUANT_TYPES),
                        help="run on a copy of the built-in model's weights in this type (default: the built-in, Q4_1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rbee-bench-") as tmp:
        model_path = builtin_model_path()
        if args.requantize:
            print(f"requantizing the built-in model to {args.requantize}", file=sys.stderr)
            model_path = requantize(args.requantize, Path(tmp))
        types = tensor_types(model_path)
        print(f"{model_path.name}: tensors {', '.join(f'{n} {t}' for t, n in types.items())}", file=sys.stderr)
        cost = guess_cost(model_path)
        print(f"a guessed position costs {cost:.2f} of a token's decode on this machine", file=sys.stderr)
        result = asyncio.run(measure(Path(tmp), model_path, args.rounds, args.max_tokens))
    print(f"{'prompt':>7} | {'guessing tok/s':>14} | {'plain tok/s':>11} | {'ratio':>5} | {'decoding':>8} | "
          "identical | guessed/kept")
    for name, r in result.items():
        print(f"{name:>7} | {r['guessing_tokens_per_s']:>14} | {r['plain_tokens_per_s']:>11} | {r['ratio']:>5} | "
              f"{r['ratio_after_first_token']:>8} | "
              f"{str(r['identical_texts']):>9} | {r['guessed']}/{r['kept']} of {r['tokens']} tokens")
    print(json.dumps({"bench": "speculative", "rounds": args.rounds, "max_tokens": args.max_tokens,
                      "model": args.requantize or "builtin-q4_1", "tensor_types": types,
                      "guess_cost": round(cost, 3), **result}))


if __name__ == "__main__":
    main()
