"""An agent's tool loop over each API (#29): 5 steps, each a request whose answer is a required tool call
followed by that call's result in the next request, through OpenAI chat completions, the Responses API
(going on with previous_response_id, as agents do) and Anthropic's Messages API, against one real queen
and worker on the built-in model at temperature 0.

The three loops give the worker the same chat (each API's conversion of calls and results reads the
same to the model: the same tokens in, the same tokens out). What the API layer adds to a step is the
client's time for the request minus the time its queen job took (from its creation to its end, as the job
records them): parsing, converting, a stored response looked up, rendering, HTTP both ways. The generation
itself (hundreds of ms, varying by tens) is left out, so a few ms show. Per API: the median over every step
of every round; "added" is that minus chat completions'. The loops alternate, the order rotated each round.
The last line printed is one JSON object.

    .venv/bin/python bench/agent_loop.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
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

    prefix = ""  # the answer's id is this and its job's uuid

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self.session, self.url, self.token = session, url, token
        self.steps: list[tuple[float, str]] = []  # (the client's seconds for the request, its job's id)

    async def post(self, body: dict) -> dict:
        started = time.time()
        async with self.session.post(self.url + self.path, json=body, headers=self.headers()) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise SystemExit(f"{self.name}: {resp.status} {answer}")
        self.steps.append((time.time() - started, "job-" + str(uuid.UUID(answer["id"].removeprefix(self.prefix)))))
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
    name, path, prefix = "openai_chat", "/v1/chat/completions", "chatcmpl-"

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
    name, path, prefix = "responses", "/v1/responses", "resp_"

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
    name, path, prefix = "anthropic", "/v1/messages", "msg_"

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
                api.steps.clear()
            times: dict[str, list[float]] = {api.name: [] for api in apis}
            for r in range(rounds):
                for api in apis[r % 3:] + apis[:r % 3]:
                    times[api.name].append(await api.loop())
            overhead = {api.name: [await layer_ms(session, queen, seconds, job_id) for seconds, job_id in api.steps]
                        for api in apis}
    finally:
        await asyncio.to_thread(queen.stop, 30)
    layer = {name: statistics.median(values) for name, values in overhead.items()}
    return {
        "rounds": rounds, "steps": STEPS,
        "step_ms": {name: round(statistics.median(t) / STEPS * 1000, 1) for name, t in times.items()},
        "api_layer_ms": {name: round(value, 2) for name, value in layer.items()},
        "added_per_step_ms": {name: round(layer[name] - layer["openai_chat"], 2) for name in ("responses", "anthropic")},
    }


async def layer_ms(session: aiohttp.ClientSession, queen, seconds: float, job_id: str) -> float:
    """A step's time beyond its job's own: the client's seconds minus the job's, in ms."""
    async with session.get(f"{queen.url}/v1/jobs/{job_id}", headers=queen.auth) as resp:
        job = await resp.json()
    return (seconds - (job["finished_at"] - job["created_at"])) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    print_run_in_temp_home(lambda home: run(home, args.rounds))


if __name__ == "__main__":
    main()
