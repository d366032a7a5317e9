"""Ollama-compatible endpoints on the queen, so Ollama's clients (Open WebUI, editors, the `ollama`
Python package) can use your hives:

    POST /api/chat         chat in the model's own template, NDJSON stream (default) or one object
    POST /api/generate     a prompt (through the chat template; `raw` sends it as is), streamed or not
    GET  /api/tags         the models of every hive (name: its short alias plus ":latest")
    GET  /api/ps           the running workers
    POST /api/show         one model's details (catalog entry and memory estimate)
    POST /api/pull         a model download (an rbee reference: hf:… or file:…) with progress lines
    POST /api/embed        embedding vectors (normalised, as Ollama's); /api/embeddings is the older form
    GET  /api/version      rbee's version

Each request runs as an ordinary queen job (`infer`, `model_list`, `model_download`, `embed`), so it shows
in `rbee jobs` and the TUI. Errors come in Ollama's shape, `{"error": "message"}`; the bearer token is
required as everywhere (`ollama.Client(host=…, headers={"Authorization": "Bearer <token>"})`).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from queen.access.middleware import submit_job
from queen.api.common import (
    ApiError,
    Failure,
    api_route,
    cancel_if_client_leaves,
    follow,
    read_body,
    stream,
    until_finished,
    wait_for_answer,
)
from queen.api.tool_calls import (
    add_system,
    calls_as_text,
    check_json_schema,
    check_tools,
    parse_tool_calls,
    tools_prompt,
)
from queen.appkeys import CONFIG, HIVES, WORKERS
from shared import __version__, appkeys
from shared.builtin_model import BUILTIN_ARCHITECTURE, builtin_model_path, builtin_model_sha256
from shared.errors import InvalidRequest, RbeeError
from shared.events import Data, End, Error, JobState, Narration, Token
from shared.inference import MAX_TOKENS_LIMIT
from shared.job_registry import Job
from shared.models import BUILTIN_MODEL, alias_of, is_reference, parse_reference
from shared.operations import LOCAL_HIVE, MAX_EMBED_INPUTS, Embed, Infer, ModelDownload, ModelList
from shared.wire import parse_message

PREFIX = "/api/"
TAG = ":latest"  # Ollama names are name:tag; rbee's models have one version each
NDJSON = "application/x-ndjson"
CATALOG_TIMEOUT_S = 15.0  # a hive that does not list its models by then is left out of /api/tags
# Ollama option -> rbee's Generation field (the others Ollama knows are accepted and ignored).
OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
           "num_predict": "max_tokens", "stop": "stop", "presence_penalty": "presence_penalty",
           "frequency_penalty": "frequency_penalty"}
FIELD_NAMES = {v: k for k, v in OPTIONS.items()} | {"json_schema": "format", "logprobs": "top_logprobs"}
UNSUPPORTED = {"/api/create": "create a model from a Modelfile", "/api/copy": "copy a model",
               "/api/push": "push a model", "/api/delete": "delete a model"}


class OllamaError(ApiError):
    """A request Ollama's API would refuse too; said as {"error": message}."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, status=status, code="OLLAMA_ERROR")


def error_response(status: int, code: str, message: str, param: str | None = None) -> web.Response:
    """An error in Ollama's shape: {"error": message}."""
    return web.json_response({"error": message}, status=status)


def matches(path: str) -> bool:
    return path.startswith(PREFIX)


def now_iso() -> str:
    return iso(time.time())


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def setup_ollama_api(app: web.Application) -> None:
    routes = [("POST", "/api/chat", chat), ("POST", "/api/generate", generate), ("GET", "/api/tags", tags),
              ("GET", "/api/ps", ps), ("POST", "/api/show", show), ("POST", "/api/pull", pull),
              ("POST", "/api/embed", embed), ("POST", "/api/embeddings", embeddings),
              ("GET", "/api/version", version)]
    routes += [("*", path, unsupported(what)) for path, what in UNSUPPORTED.items()]
    for method, path, handler in routes:
        app.router.add_route(method, path, api_route(error_response, handler))


def unsupported(what: str):
    async def handler(request: web.Request) -> web.Response:
        raise OllamaError(f"rbee does not {what} through the Ollama API; rbee's models are GGUF files: "
                          "`rbee model download hf:<org>/<repo>:<file>.gguf`, `rbee model delete ID`.", 501)
    return handler


# --- request parsing ---------------------------------------------------------------------------------


def model_name(body: dict[str, Any]) -> str:
    """The model to use: an rbee reference, or a short alias (":latest", as /api/tags lists it, is dropped)."""
    name = body.get("model", body.get("name"))  # older clients send "name"
    if not isinstance(name, str) or not name.strip():
        raise OllamaError(f"'model' is required: a model from /api/tags (e.g. {BUILTIN_MODEL}{TAG}) or an rbee "
                          "reference (hf:<org>/<repo>:<file>.gguf, file:<path>)")
    name = name.strip()
    return name[:-len(TAG)] if name.endswith(TAG) else name


def stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise OllamaError("'stream' must be true or false")
    return stream


def _to_infer(body: dict[str, Any], *, chat: bool) -> Infer:
    fields: dict[str, Any] = {"model": model_name(body)}
    for name, why in (("images", "rbee's models read text only"), ("suffix", "fill-in-the-middle is not supported"),
                      ("template", "rbee always uses the model's own chat template"),
                      ("context", "send the conversation as /api/chat messages instead"),
                      ("think", "rbee's models do not think aloud")):
        if body.get(name):
            raise OllamaError(f"'{name}' is not supported: {why}")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise OllamaError("'messages' must be a list of {role, content}")
        fields["messages"] = chat_messages(messages)
        if body.get("tools"):  # Ollama's tool choice is always "auto": the model may call one, or answer
            add_system(fields["messages"], tools_prompt(check_tools(body["tools"]), "auto"))
    else:
        prompt, system = body.get("prompt", ""), body.get("system")
        if not isinstance(prompt, str):
            raise OllamaError("'prompt' must be a string")
        if system is not None and not isinstance(system, str):
            raise OllamaError("'system' must be a string")
        if body.get("raw"):
            fields["prompt"] = prompt  # as is: no template, no system prompt (as Ollama does)
        else:
            fields["messages"] = ([{"role": "system", "content": system}] if system else []) + \
                                 [{"role": "user", "content": prompt}]
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise OllamaError("'options' must be an object")
    for option, name in OPTIONS.items():
        value = options.get(option)
        if option == "num_predict" and value in (-1, -2) and not isinstance(value, bool):
            # -1 (until it is done) and -2 (fill the context): both end at the slot's context at the latest
            fields.update(max_tokens=MAX_TOKENS_LIMIT, fill_context=True)
            continue
        if value is None or (option == "seed" and isinstance(value, int) and value < 0):
            continue  # seed -1: random
        fields[name] = [value] if option == "stop" and isinstance(value, str) else value
    fmt = body.get("format")
    if fmt == "json":
        fields["json_schema"] = {}
    elif isinstance(fmt, dict):
        check_json_schema(fmt, "format")
        fields["json_schema"] = fmt
    elif fmt not in (None, ""):
        raise OllamaError("'format' must be \"json\" or a JSON schema (an object)")
    if not chat and body.get("tools"):
        raise OllamaError("'tools' are for /api/chat")
    if body.get("logprobs"):
        top = body.get("top_logprobs", 0)
        fields["logprobs"] = top if isinstance(top, int) and not isinstance(top, bool) else -1
    return parse_message(Infer, fields)


def to_infer(body: dict[str, Any], *, chat: bool) -> Infer:
    """Ollama's request as an `infer` operation; what rbee cannot do is refused by name."""
    try:
        return _to_infer(body, chat=chat)
    except ApiError:
        raise
    except InvalidRequest as exc:
        name = FIELD_NAMES.get(exc.field or "", exc.field)
        where = f"options.{name}" if exc.field in OPTIONS.values() else name
        raise OllamaError(f"'{where}' {exc.problem}" if exc.field and exc.problem else exc.message) from None


def chat_messages(messages: list[Any]) -> list[Any]:
    """Ollama's messages as rbee's {role, content}: an assistant's tool calls and a tool's result become
    text the model reads (calls in words: tool_calls.calls_as_text)."""
    out: list[Any] = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict):
            out.append(m)  # the wire check names it
            continue
        if m.get("images"):
            raise OllamaError(f"messages[{k}]: 'images' are not supported: rbee's models read text only")
        role, content = m.get("role"), m.get("content")
        content = "" if content is None and role in ("assistant", "tool") else content
        if role == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"] if isinstance(m["tool_calls"], list) else [None]
            fns = [c.get("function") if isinstance(c, dict) else None for c in calls]
            if not all(isinstance(fn, dict) and isinstance(fn.get("name"), str) for fn in fns):
                raise OllamaError(f"messages[{k}]: each of 'tool_calls' needs a 'function' with a 'name' and "
                                  "'arguments'")
            said = calls_as_text([{"name": fn["name"], "arguments": fn.get("arguments") or {}} for fn in fns])
            content = "\n".join(([content] if isinstance(content, str) and content else []) + [said])
        elif role == "tool":
            role, content = "user", f"Result of {m.get('tool_name') or 'the function'}: {content}"
        out.append({"role": role, "content": content})
    return out


def ollama_calls(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Tool calls (as parse_tool_calls finds them) in Ollama's shape: arguments an object, not a string."""
    return [{"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
            for c in calls] if calls else None


# --- jobs ----------------------------------------------------------------------------------------------


def failure_error(failure: Failure, model: str | None = None) -> OllamaError:
    """A job's failure as Ollama says it: a model that is not there is "model '…' not found"."""
    if failure.status == 404 and model is not None:
        return OllamaError(f"model '{model}' not found: {failure.message}", 404)
    return OllamaError(failure.message, failure.status)


async def run_job(request: web.Request, operation: Any, model: str | None = None) -> dict[str, Any]:
    """Run `operation` as a queen job; its result, or its failure in Ollama's shape."""
    job = submit_job(request, operation)
    failure, _ = await wait_for_answer(request, job)
    if failure is not None:
        raise failure_error(failure, model)
    return job.result or {}


# --- generation ----------------------------------------------------------------------------------------


async def chat(request: web.Request) -> web.StreamResponse:
    return await generation(request, chat=True)


async def generate(request: web.Request) -> web.StreamResponse:
    return await generation(request, chat=False)


def durations(job: Job, stats: Any) -> dict[str, Any]:
    """Ollama's counters and timings (nanoseconds) from the job's stats."""
    ns = lambda s: int(s * 1e9)  # noqa: E731
    total = (job.finished_at or time.time()) - job.created_at
    tokens, rate = stats.get("tokens_out") or 0, stats.get("tokens_per_s") or 0
    ttft = (stats.get("ttft_ms") or 0) / 1000
    return {"done_reason": "length" if stats.get("stop_reason") == "length" else "stop",
            "total_duration": ns(total), "load_duration": 0, "prompt_eval_count": stats.get("prompt_tokens") or 0,
            "prompt_eval_duration": ns(ttft), "eval_count": tokens,
            "eval_duration": ns(tokens / rate) if rate else ns(max(0.0, total - ttft))}


def _logprobs(found: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Worker logprobs ({token, logprob, top}) in Ollama's shape."""
    if not isinstance(found, list):
        return None
    return [{"token": p.get("token"), "logprob": p.get("logprob"),
             "top_logprobs": [{"token": t.get("token"), "logprob": t.get("logprob")} for t in p.get("top") or []]}
            for p in found if isinstance(p, dict)]


def piece(name: str, chat: bool, text: str, logprobs: list | None = None, calls: list | None = None
          ) -> dict[str, Any]:
    """One line of an answer: `message` for chat, `response` for generate."""
    out: dict[str, Any] = {"model": name, "created_at": now_iso()}
    if chat:
        out["message"] = {"role": "assistant", "content": text}
        if calls:
            out["message"]["tool_calls"] = calls
    else:
        out["response"] = text
    if logprobs is not None:
        out["logprobs"] = logprobs
    out["done"] = False  # the last line says true, with the counts
    return out


class OllamaRenderer:
    """One request's answer as Ollama's NDJSON lines (or one object): `message` for chat, `response` for
    generate; the last line says done, with the counts."""

    content_type = NDJSON
    headers_at_once = False  # a failure before the first token gets its own status

    def __init__(self, job: Job, name: str, chat: bool, operation: Infer) -> None:
        self.job, self.name, self.chat, self.model = job, name, chat, operation.model
        self.logprobs = operation.logprobs is not None

    def piece(self, text: str, logprobs: list | None = None, calls: list | None = None) -> dict[str, Any]:
        return piece(self.name, self.chat, text, logprobs, calls)

    @staticmethod
    def line(value: dict[str, Any]) -> str:
        return json.dumps(value, ensure_ascii=False) + "\n"

    def start(self) -> str:
        return ""

    def token(self, token: Token) -> str:
        return self.line(self.piece(token.t, _logprobs(token.logprobs)))

    def error(self, error: Error) -> str:
        return ""  # said once the job ends

    def end(self, end: End, calls: list[dict[str, Any]] | None) -> str:
        out = self.line(self.piece("", calls=ollama_calls(calls))) if calls else ""
        return out + self.line({**self.piece(""), "done": True, **durations(self.job, end.stats)})

    def failed(self, failure: Failure) -> str:
        return self.line({"error": failure_error(failure, self.model).message})

    def close(self) -> str:
        return ""

    def failure(self, failure: Failure) -> web.Response:
        error = failure_error(failure, self.model)
        return error_response(error.status, error.code, error.message)

    def whole(self, result: dict[str, Any], tools: list[dict[str, Any]], logprobs: list[dict[str, Any]]
              ) -> web.Response:
        text = result.get("text", "")
        calls = ollama_calls(parse_tool_calls(text, tools)) if tools else None
        out = self.piece("" if calls else text, calls=calls)
        if self.logprobs:
            out["logprobs"] = _logprobs(logprobs) or []
        return web.json_response({**out, "done": True, **durations(self.job, result)})


async def generation(request: web.Request, *, chat: bool) -> web.StreamResponse:
    body = await read_body(request, empty={})
    streamed = stream_flag(body)
    name = str(body["model"]) if isinstance(body.get("model"), str) else ""
    if not body.get("messages" if chat else "prompt"):  # Ollama's way to load a model: nothing to say yet
        model_name(body)  # workers start on the first real request
        return web.json_response({**piece(name, chat, ""), "done": True, "done_reason": "load"})
    operation = to_infer(body, chat=chat)
    tools = check_tools(body["tools"]) if chat and body.get("tools") else []  # valid: to_infer checked them
    job = submit_job(request, operation)
    renderer = OllamaRenderer(job, name, chat, operation)
    if streamed:
        return await stream(request, job, renderer, tools)
    failure, logprobs = await wait_for_answer(request, job, logprobs=operation.logprobs is not None)
    if failure is not None:
        return renderer.failure(failure)
    return renderer.whole(job.result or {}, tools, logprobs)


# --- models ----------------------------------------------------------------------------------------------


async def catalogs(request: web.Request) -> list[dict[str, Any]]:
    """Every hive's catalog entries (a `model_list` job on each), with `hive_id`; the built-in is always
    there (any hive provisions it on first use)."""
    registry = request.app[appkeys.JOB_REGISTRY]

    async def one(alias: str) -> list[dict[str, Any]]:
        job = registry.submit(ModelList(hive_id=alias))
        try:
            await asyncio.wait_for(until_finished(request, job), CATALOG_TIMEOUT_S)
        except asyncio.TimeoutError:  # the timeout cancelled until_finished, which cancelled the job
            return []
        found = []
        async for events in follow(job):
            for event in events:
                if isinstance(event, Data) and event.action == "model_list":
                    found += [{**m, "hive_id": alias} for m in event.payload.get("models") or []]
        return found

    entries = [m for models in await asyncio.gather(*(one(a) for a in request.app[HIVES].schedulable()))
               for m in models]
    if not any(m["id"] == BUILTIN_MODEL for m in entries):
        try:
            path = builtin_model_path()
            entries.append({"id": BUILTIN_MODEL, "reference": BUILTIN_MODEL, "alias": BUILTIN_MODEL,
                            "path": str(path), "size": path.stat().st_size, "sha256": builtin_model_sha256() or "",
                            "added_at": path.stat().st_mtime, "hive_id": None, "estimate": {},
                            "architecture": BUILTIN_ARCHITECTURE})
        except (RbeeError, OSError):
            pass  # not installed here: nothing to offer
    return entries  # each hive's entries carry the GGUF's architecture (read once, when it was catalogued)


def ollama_names(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Model id -> the name /api/tags gives it: its alias with ":latest", or its full reference when two
    models share the alias (a name must say one model)."""
    ids_by_alias: dict[str, set[str]] = {}
    for m in entries:
        ids_by_alias.setdefault(m.get("alias") or alias_of(m["id"]), set()).add(m["id"])
    return {i: (a + TAG if len(ids) == 1 else i) for a, ids in ids_by_alias.items() for i in ids}


def details(entry: dict[str, Any] | None) -> dict[str, Any]:
    """Ollama's model details; the quantisation as the file's name says it (…Q4_1.gguf)."""
    name = alias_of(str((entry or {}).get("id", "")))
    quant = "Q4_1" if name == BUILTIN_MODEL else (name.rsplit(".", 1)[1].upper() if "." in name else "")
    family = str((entry or {}).get("architecture") or "")
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else None,
            "parameter_size": "", "quantization_level": quant}


def tag_of(entry: dict[str, Any], names: dict[str, str], hives: list[str]) -> dict[str, Any]:
    name = names[entry["id"]]
    return {"name": name, "model": name, "modified_at": iso(entry.get("added_at") or 0),
            "size": entry.get("size") or 0, "digest": entry.get("sha256") or "", "details": details(entry),
            "rbee": {"id": entry["id"], "hives": hives}}


def find(entries: list[dict[str, Any]], wanted: str) -> list[dict[str, Any]]:
    """Catalog entries `wanted` names: by reference, by /api/tags name, or by alias."""
    try:
        canonical = parse_reference(wanted).id if is_reference(wanted) else None
    except InvalidRequest:
        canonical = None
    names = ollama_names(entries)
    low = wanted.lower()
    return [m for m in entries if m["id"] in (wanted, canonical) or names[m["id"]] in (wanted, wanted + TAG)
            or (m.get("alias") or alias_of(m["id"])) == low]


async def tags(request: web.Request) -> web.Response:
    entries = await catalogs(request)
    names = ollama_names(entries)
    hives: dict[str, list[str]] = {}
    for m in entries:
        hives.setdefault(m["id"], [])
        if m.get("hive_id"):
            hives[m["id"]].append(m["hive_id"])
    seen: set[str] = set()
    models = []
    for m in entries:
        if m["id"] not in seen:
            seen.add(m["id"])
            models.append(tag_of(m, names, hives[m["id"]]))
    return web.json_response({"models": models})


async def show(request: web.Request) -> web.Response:
    body = await read_body(request, empty={})
    wanted = model_name(body)
    entries = await catalogs(request)
    found = find(entries, wanted)
    if not found:
        raise OllamaError(f"model '{wanted}' not found on any hive (GET /api/tags lists them; POST /api/pull "
                          "with an rbee reference adds one)", 404)
    if len({m["id"] for m in found}) > 1:
        raise OllamaError(f"'{wanted}' names {len({m['id'] for m in found})} models "
                          f"({', '.join(sorted({m['id'] for m in found}))}); name one by its full reference")
    entry = found[0]
    estimate = entry.get("estimate") or {}
    info: dict[str, Any] = {"general.file_type": "gguf"}
    if estimate.get("ctx_size"):
        info["rbee.context_length"] = estimate["ctx_size"]
    return web.json_response({
        "license": "", "modelfile": f"FROM {entry.get('reference') or entry['id']}\n", "parameters": "",
        "template": "", "details": details(entry), "model_info": info, "capabilities": ["completion"],
        "modified_at": iso(entry.get("added_at") or 0),
        "rbee": {"id": entry["id"], "reference": entry.get("reference"), "size": entry.get("size"),
                 "sha256": entry.get("sha256"), "hives": [m["hive_id"] for m in found if m.get("hive_id")],
                 "memory_estimate": estimate},
    })


async def ps(request: web.Request) -> web.Response:
    """The running workers; a worker's size is its hive's memory estimate, its expiry when the queen stops
    it for idleness (a busy one: the idle time from now)."""
    idle_s = request.app[CONFIG].worker_idle_timeout_s
    now_wall, now_mono = time.time(), time.monotonic()
    workers = [w for w in request.app[WORKERS].all() if w.alive]
    entries = {(m.get("hive_id"), m["id"]): m for m in await catalogs(request)} if workers else {}
    models = []
    for w in workers:
        name = alias_of(w.model) + TAG
        entry = entries.get((w.hive_id, w.model)) or {"id": w.model}
        estimate = entry.get("estimate") or {}
        size = int((estimate.get("total_mb") or 0) * 2**20)
        expires = now_wall + (idle_s - (now_mono - w.last_used) if w.idle else idle_s)
        models.append({"name": name, "model": name, "size": size, "digest": entry.get("sha256") or "",
                       "details": details(entry), "expires_at": iso(expires),
                       "size_vram": size if w.device != "cpu" else 0, "context_length": estimate.get("ctx_size"),
                       "rbee": {"id": w.model, **w.to_dict()}})
    return web.json_response({"models": models})


async def pull(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, empty={})
    wanted = model_name(body)
    streamed = stream_flag(body)
    if not is_reference(wanted):
        raise OllamaError(f"'{wanted}' is not a model rbee can pull: rbee pulls GGUF files, not Ollama's library. "
                          f"Pass an rbee reference: hf:<org>/<repo>:<file>.gguf (a file on Hugging Face), "
                          f"file:<path to a .gguf> (a file on the hive's machine) or {BUILTIN_MODEL}")
    try:
        reference = parse_reference(wanted)
    except InvalidRequest as exc:
        raise OllamaError(exc.message) from None
    hive = body.get("hive_id") or LOCAL_HIVE  # rbee's addition: which hive gets it
    if not isinstance(hive, str):
        raise OllamaError("'hive_id' must be a hive's alias (a string)")
    job = request.app[appkeys.JOB_REGISTRY].submit(ModelDownload(hive_id=str(hive), model=wanted))
    if not streamed:
        failure, _ = await wait_for_answer(request, job)
        if failure is not None:
            raise failure_error(failure)
        return web.json_response({"status": "success"})
    resp = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
    await resp.prepare(request)
    async with cancel_if_client_leaves(request, job):
        await resp.write(json.dumps({"status": "pulling manifest"}).encode() + b"\n")
        async for events in follow(job):
            lines = []
            for event in events:
                if isinstance(event, Data) and event.action == "download_progress":
                    p = event.payload
                    lines.append({"status": f"pulling {reference.file or reference.id}", "digest": reference.id,
                                  "total": p.get("total") or 0, "completed": p.get("done") or 0})
                elif isinstance(event, Narration) and event.action == "model_verify":
                    lines.append({"status": "verifying sha256 digest"})
                elif isinstance(event, End) and event.state is JobState.COMPLETED:
                    lines.append({"status": "success", "digest": f"sha256:{event.stats.get('sha256', '')}"})
                elif isinstance(event, End):
                    lines.append({"error": failure_error(Failure.of(job, event.state)).message})
            if lines:
                await resp.write("".join(json.dumps(line) + "\n" for line in lines).encode())
        await resp.write_eof()
    return resp


# --- embeddings and version ------------------------------------------------------------------------------


async def embed(request: web.Request) -> web.Response:
    body = await read_body(request, empty={})
    model = model_name(body)
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise OllamaError("'input' must be a non-empty string or a non-empty list of non-empty strings")
    if len(texts) > MAX_EMBED_INPUTS:
        raise OllamaError(f"'input' holds {len(texts)} items; at most {MAX_EMBED_INPUTS} per request")
    if body.get("dimensions") is not None:
        raise OllamaError("'dimensions' is not supported: vectors have the model's own dimension")
    started = time.time()
    result = await run_job(request, Embed(model=model, input=tuple(texts)), model)
    return web.json_response({
        "model": body.get("model", body.get("name")), "embeddings": result.get("embeddings") or [],  # unit length already
        "total_duration": int((time.time() - started) * 1e9), "load_duration": 0,
        "prompt_eval_count": result.get("prompt_tokens") or 0})


async def embeddings(request: web.Request) -> web.Response:
    """The older endpoint: one prompt, one vector (unit length, as every rbee embedding)."""
    body = await read_body(request, empty={})
    model = model_name(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise OllamaError("'prompt' must be a non-empty string")
    result = await run_job(request, Embed(model=model, input=(prompt,)), model)
    return web.json_response({"embedding": (result.get("embeddings") or [[]])[0]})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})
