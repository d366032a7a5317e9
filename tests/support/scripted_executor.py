"""An executor for the shared job server's own tests: real operations, behaviour chosen by the test.

The job server is the unit under test here; this plays the part a daemon's executor plays, with outcomes
(slow tokens, failure, a bug, cancellation cleanup) the tests can ask for. Daemons bring their own.
"""

from __future__ import annotations

import asyncio
import re

from shared.errors import RbeeError
from shared.events import Data, Token, emit, narrate
from shared.job_registry import Job
from shared.operations import HiveGet, Infer, Operation, Status


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
