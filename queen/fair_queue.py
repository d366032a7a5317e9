"""Requests waiting for a slot of one model, and whose turn is next: round-robin across owners (the API
key that made each request; the queen's own token is one owner too), first come first served within one.
So one key's burst cannot hold another key's request behind it: with 24 of key A waiting and then one of
key B, B's is next (A holds the slots already, or was served last).

The owner whose turn it is: the one with the fewest requests holding slots now, then the one served
longest ago, then the one waiting longest."""

from __future__ import annotations

import itertools
from collections import deque
from typing import Callable

Owner = str | None


class FairQueue:
    def __init__(self) -> None:
        self._lines: dict[Owner, deque[str]] = {}  # each owner's waiting job ids, oldest first
        self._since: dict[Owner, int] = {}  # when each owner's line began (an arrival number)
        self._served: dict[Owner, int] = {}  # when each owner was last given a slot
        self._clock = itertools.count()

    def add(self, job_id: str, owner: Owner) -> None:
        if owner not in self._lines:
            self._lines[owner] = deque()
            self._since[owner] = next(self._clock)
        self._lines[owner].append(job_id)

    def remove(self, job_id: str, owner: Owner) -> None:
        line = self._lines.get(owner)
        if line is None or job_id not in line:
            return
        line.remove(job_id)
        if not line:
            del self._lines[owner]
            del self._since[owner]

    def served(self, owner: Owner) -> None:
        """`owner`'s request was given a slot: the others' turn comes before its next one."""
        self._served[owner] = next(self._clock)
        if len(self._served) > 4 * len(self._lines) + 1000:  # owners long gone are forgotten
            self._served = {o: t for o, t in self._served.items() if o in self._lines}

    def next(self, running: Callable[[Owner], int] = lambda _: 0) -> str | None:
        """The job whose turn it is; `running(owner)`: how many of that owner's requests hold slots now."""
        if not self._lines:
            return None
        if len(self._lines) == 1:
            return next(iter(self._lines.values()))[0]
        owner = min(self._lines, key=lambda o: (running(o), self._served.get(o, -1), self._since[o]))
        return self._lines[owner][0]

    def ahead(self, job_id: str, owner: Owner) -> int:
        """About how many requests go before this one: its owner's earlier ones, and a turn of each other
        owner waiting per one of those."""
        line = self._lines.get(owner, deque())
        mine = line.index(job_id) if job_id in line else 0
        return mine + sum(min(len(other), mine + 1) for o, other in self._lines.items() if o != owner)

    def jobs(self) -> list[str]:
        return [job for line in self._lines.values() for job in line]

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def __bool__(self) -> bool:
        return bool(self._lines)
