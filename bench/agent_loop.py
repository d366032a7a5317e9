"""An agent's tool loop over each API (#29): 5 steps, each a request whose answer is a required tool call
followed by that call's result in the next request, through OpenAI chat completions, the Responses API
(going on with previous_response_id, as agents do) and Anthropic's Messages API, against one real queen
and worker on the built-in model at temperature 0.

The three loops give the worker the same chat (each API's conversion of calls and results reads the
same to the model), so the difference of a step's time between two APIs is what the API layer adds. The
loops alternate (the order rotated each round, so a warm KV cache favours none) and the per-step figure is
the median over rounds of (loop time - chat's loop time) / 5. The last line printed is one JSON object.

    .venv/bin/python bench/agent_loop.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import print_run_in_temp_home  # noqa: E402
from tests.support.processes import start_queen  # noqa: E402

MODEL = "smollm2-135m"
STEPS = 5
MAX_TOKENS = 40
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo"]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}
DESCRIPTION = "The current weather in a city."
ASK = "Find the weather in five cities, one call at a time."


def result_of(step: int) -> str:
    return f"{CITIES[step]}: sunny, {18 + step} degrees."


class Api:
    """One API's loop: its requests, and reading the call out of each answer."""

    name = ""
    path = ""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self.session, self.url, self.token = session, url, token

    async def post(self, body: dict) -> dict:
        async with self.session.post(self.url + self.path, json=body, headers=self.headers()) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise SystemExit(f"{self.name}: {resp.status} {answer}")
            return answer

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    async def loop(self) -> float:
        started = time.perf_counter()
        await self.run()
        return time.perf_counter() - started

    async def run(self) -> None:
        raise NotImplementedError


class Chat(Api):
    name, path = "openai_chat", "/v1/chat/completions"

    async def run(self) -> None:
        tools = [{"type": "function", "function": {"name": "get_weather", "description": DESCRIPTION,
                                                   "parameters": SCHEMA}}]
        messages: list[dict] = [{"role": "user", "content": ASK}]
        for step in range(STEPS):
            answer = await self.post({"model": MODEL, "messages": messages, "tools": tools, "tool_choice": "required",
                                      "max_tokens": MAX_TOKENS, "temperature": 0})
            message = answer["choices"][0]["message"]
            call = message["tool_calls"][0]
            messages += [message, {"role": "tool", "tool_call_id": call["id"], "content": result_of(step)}]


class Responses(Api):
    name, path = "responses", "/v1/responses"

    async def run(self) -> None:
        tools = [{"type": "function", "name": "get_weather", "description": DESCRIPTION, "parameters": SCHEMA}]
        body: dict = {"input": ASK}
        for step in range(STEPS):
            answer = await self.post({"model": MODEL, "tools": tools, "tool_choice": "required",
                                      "max_output_tokens": MAX_TOKENS, "temperature": 0, **body})
            call = answer["output"][0]
            body = {"previous_response_id": answer["id"],
                    "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": result_of(step)}]}


class Anthropic(Api):
    name, path = "anthropic", "/v1/messages"

    def headers(self) -> dict:
        return {"x-api-key": self.token, "anthropic-version": "2023-06-01"}

    async def run(self) -> None:
        tools = [{"name": "get_weather", "description": DESCRIPTION, "input_schema": SCHEMA}]
        messages: list[dict] = [{"role": "user", "content": ASK}]
        for step in range(STEPS):
            answer = await self.post({"model": MODEL, "messages": messages, "tools": tools,
                                      "tool_choice": {"type": "any"}, "max_tokens": MAX_TOKENS, "temperature": 0})
            use = answer["content"][0]
            messages += [{"role": "assistant", "content": answer["content"]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"],
                                                       "content": result_of(step)}]}]


async def run(home: Path, rounds: int) -> dict:
    queen = await asyncio.to_thread(start_queen, home)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            apis = [cls(session, queen.url, queen.token) for cls in (Chat, Responses, Anthropic)]
            for api in apis:  # the worker starts, every API's path warms up
                await api.loop()
            times: dict[str, list[float]] = {api.name: [] for api in apis}
            for r in range(rounds):
                for api in apis[r % 3:] + apis[:r % 3]:
                    times[api.name].append(await api.loop())
    finally:
        await asyncio.to_thread(queen.stop, 30)

    def per_step_ms(name: str) -> float:
        return round(statistics.median((t - c) / STEPS for t, c in zip(times[name], times["openai_chat"])) * 1000, 2)

    return {
        "rounds": rounds, "steps": STEPS,
        "step_ms": {name: round(statistics.median(t) / STEPS * 1000, 1) for name, t in times.items()},
        "added_per_step_ms": {"responses": per_step_ms("responses"), "anthropic": per_step_ms("anthropic")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    print_run_in_temp_home(lambda home: run(home, args.rounds))


if __name__ == "__main__":
    main()
