"""An executor for the shared job server's own tests: real operations, behaviour chosen by the test.

The job server is the unit under test here; this plays the part a daemon's executor plays, with outcomes
(slow tokens, failure, a bug, cancellation cleanup) the tests can ask for. Daemons bring their own.
"""

from __future__ import annotations

import asyncio
import re

from shared.errors import InvalidRequest, RbeeError
from shared.events import Data, Token, emit, narrate
from shared.job_registry import Job
from shared.operations import Embed, HiveGet, Infer, Operation, Status


class ScriptedExecutor:
    def __init__(self) -> None:
        self.cleaned_up: list[str] = []
        self.started = asyncio.Event()

    async def __call__(self, operation: Operation, job: Job) -> dict | None:
        self.started.set()
        if isinstance(operation, Infer):
            # prompt "tokens=N delay=S": N tokens, S seconds apart
            n = int(re.search(r"tokens=(\d+)", operation.prompt).group(1))
            m = re.search(r"delay=([\d.]+)", operation.prompt)
            delay = float(m.group(1)) if m else 0.0

            async def record_cleanup() -> None:
                self.cleaned_up.append(job.id)

            job.add_cleanup(record_cleanup)
            narrate("infer_start", f"Generating {n} tokens", target=operation.model)
            for i in range(n):
                emit(Token(t=f"t{i} ", i=i))
                if delay:
                    await asyncio.sleep(delay)
                elif i % 256 == 255:
                    await asyncio.sleep(0)  # let readers in, as a real token source would
            return {"tokens_out": n}
        if isinstance(operation, HiveGet):
            if operation.alias == "down":
                raise RbeeError("Hive 'down' does not answer at 127.0.0.1:1.", code="HIVE_UNREACHABLE")
            if operation.alias == "bug":
                raise ValueError("something our code did not expect")
            emit(Data(action="hive_get", payload={"alias": operation.alias, "state": "running"}))
            return None
        if isinstance(operation, Status):
            narrate("status", "All quiet")
            return None
        raise RbeeError(f"not scripted: {operation.name}")


class ScriptedGenerator(ScriptedExecutor):
    """Plays the queen's inference runner for the API layers' tests: an answer with the result a runner
    returns (text, counts, stop reason, log-probabilities), chat messages as well as prompts, embeddings,
    and failures chosen by the model's name, with the statuses the real daemons give them. It keeps every
    operation it was given, so a test can see what a request became.

    The answer is what follows "say:" in the prompt (or the last message), in tokens of 3 characters;
    otherwise "tokens=N delay=S" as ScriptedExecutor, else "Hello there."; "queued=S" waits S seconds first.
    """

    FAILURES = {  # model -> (what the real daemon raises, after how many tokens)
        "missing": (lambda: RbeeError("No model 'missing' on hive localhost.", code="MODEL_NOT_FOUND", status=404), 0),
        "too-long": (lambda: InvalidRequest("The prompt has 9000 tokens; the context holds 2048.", field="prompt",
                                            code="PROMPT_TOO_LONG"), 0),
        "busy": (lambda: RbeeError("Every slot is busy.", code="QUEUE_FULL", status=503), 0),
        "crash": (lambda: RbeeError("Worker w1 died mid-generation.", code="WORKER_CRASHED", status=502), 2),
        "bug": (lambda: ValueError("something our code did not expect"), 0),
    }

    def __init__(self) -> None:
        super().__init__()
        self.operations: list[Operation] = []

    async def __call__(self, operation: Operation, job: Job) -> dict | None:
        self.operations.append(operation)
        self.started.set()
        if isinstance(operation, Embed):
            if operation.model in self.FAILURES:
                raise self.FAILURES[operation.model][0]()
            return {"embeddings": [[0.6, 0.8, 0.0] for _ in operation.input], "dimensions": 3,
                    "prompt_tokens": sum(len(t.split()) for t in operation.input), "model": operation.model}
        if not isinstance(operation, Infer):
            return await super().__call__(operation, job)
        text = operation.prompt if operation.prompt is not None else operation.messages[-1][1]
        if operation.count_only:  # a word a token, every message counted (the tools' system message too)
            words = sum(len(content.split()) for _, content in operation.messages or (("user", text),))
            return {"text": "", "tokens_out": 0, "prompt_tokens": words, "prompt_tokens_reused": 0,
                    "ttft_ms": None, "tokens_per_s": 0.0, "stop_reason": "count", "model": operation.model}
        if "say:" not in text and "tokens=" in text:
            pieces = [f"t{i} " for i in range(int(re.search(r"tokens=(\d+)", text).group(1)))]
        else:
            answer = text.split("say:", 1)[1] if "say:" in text else "Hello there."
            pieces = [answer[k:k + 3] for k in range(0, len(answer), 3)]
        m = re.search(r"delay=([\d.]+)", text)
        delay = float(m.group(1)) if m else 0.0
        failure, after = self.FAILURES.get(operation.model, (None, 0))

        async def record_cleanup() -> None:
            self.cleaned_up.append(job.id)

        job.add_cleanup(record_cleanup)
        queued = re.search(r"queued=([\d.]+)", text)  # "queued=S": S seconds before the first token (no worker yet)
        if queued:
            await asyncio.sleep(float(queued.group(1)))
        stop_reason, matched = "stop", None
        if len(pieces) > operation.max_tokens:
            pieces, stop_reason = pieces[:operation.max_tokens], "length"
        for stop in operation.stop or ():
            whole = "".join(pieces)
            if stop in whole:
                cut = whole.index(stop)
                pieces = [whole[k:min(k + 3, cut)] for k in range(0, cut, 3)]
                stop_reason, matched = "stop", stop
        for i, piece in enumerate(pieces):
            if failure is not None and i == after:
                raise failure()
            logprobs = None
            if operation.logprobs is not None:
                logprobs = [{"token": piece, "logprob": -0.5,
                             "top": [{"token": piece, "logprob": -0.5}] * operation.logprobs}]
            emit(Token(t=piece, i=i, logprobs=logprobs))
            await asyncio.sleep(delay)
        if failure is not None:
            raise failure()
        cached = re.search(r"cached=(\d+)", text)  # "cached=N": a worker's KV cache held N of its tokens
        return {"text": "".join(pieces), "tokens_out": len(pieces), "prompt_tokens": len(text.split()),
                "prompt_tokens_reused": min(int(cached.group(1)), len(text.split())) if cached else 0,
                "ttft_ms": 1.0, "tokens_per_s": 100.0, "stop_reason": stop_reason, "stop_sequence": matched,
                "model": operation.model}
