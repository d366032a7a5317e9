"""API keys on the queen's routes (queen/access): scopes, models, ownership, revoke and rotate, bad
credentials, each refused in the API's own error shape, on the real routes over a scripted generator."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from queen.access import middleware
from tests.support.api_app import AUTH, MODEL

CHAT = "/v1/chat/completions"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def make_key(client, name: str, **settings) -> str:
    resp = await client.post("/v1/keys", headers=AUTH, json={"name": name, **settings})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["secret"]


def chat(model: str = MODEL, text: str = "say:Hi.", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def test_an_infer_key_answers_on_its_models_only(client):
    secret = await make_key(client, "webui", models=[MODEL])
    resp = await client.post(CHAT, headers=bearer(secret), json=chat())
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["choices"][0]["message"]["content"] == "Hi."
    resp = await client.post(CHAT, headers=bearer(secret), json=chat("smollm2-135m"))
    assert resp.status == 403
    error = (await resp.json())["error"]
    assert f"may use {MODEL} only, not 'smollm2-135m'" in error["message"] and error["type"] == "invalid_request_error"
    resp = await client.post("/v1/messages", headers={"x-api-key": secret}, json={  # Anthropic's header
        "model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "say:Yo."}]})
    assert resp.status == 200 and (await resp.json())["content"][0]["text"] == "Yo."


async def test_scopes_are_refused_in_each_apis_shape(client):
    infer = await make_key(client, "app")
    read = await make_key(client, "dash", scope="read")
    resp = await client.get("/v1/hives", headers=bearer(infer))
    assert resp.status == 403
    assert "has scope 'infer'; GET /v1/hives needs 'read'" in (await resp.json())["error"]["message"]
    resp = await client.post("/api/pull", headers=bearer(read), json={"model": "x"})
    assert resp.status == 403 and "needs 'admin'" in (await resp.json())["error"]  # Ollama: a string
    resp = await client.post("/v1/keys", headers=bearer(read), json={"name": "mine"})
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "FORBIDDEN"
    resp = await client.post("/v1/jobs", headers=bearer(infer), json={"operation": "status"})
    assert resp.status == 403 and "the status operation needs 'read'" in (await resp.json())["error"]["message"]
    resp = await client.post("/v1/jobs", headers=bearer(read), json={"operation": "hive_install", "alias": "x"})
    assert resp.status == 403 and "needs 'admin'" in (await resp.json())["error"]["message"]
    resp = await client.post("/v1/messages", headers={"x-api-key": "rbee-sk-wrong"}, json={})
    body = await resp.json()
    assert resp.status == 401 and body["type"] == "error" and body["error"]["type"] == "authentication_error"


async def test_a_key_sees_and_cancels_its_own_jobs_only(client):
    mine, theirs = await make_key(client, "alice"), await make_key(client, "bob")
    job = await (await client.post("/v1/jobs", headers=bearer(mine), json={
        "operation": "infer", "model": MODEL, "prompt": "tokens=3"})).json()
    job_id = job["job_id"]
    for method, path in (("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/stream"),
                         ("DELETE", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id[:8]}")):
        resp = await client.request(method, path, headers=bearer(theirs))
        assert resp.status == 404, (method, path)
    assert (await (await client.get("/v1/jobs", headers=bearer(theirs))).json())["jobs"] == []
    listed = (await (await client.get("/v1/jobs", headers=bearer(mine))).json())["jobs"]
    assert [j["job_id"] for j in listed] == [job_id] and listed[0]["key"] == "alice"
    everything = (await (await client.get("/v1/jobs", headers=AUTH)).json())["jobs"]
    assert [j["key"] for j in everything] == ["alice"]  # admin sees all, with whose they are
    resp = await client.post("/v1/conversations", headers=bearer(mine), json={"title": "t"})
    conv = (await resp.json())["conversation"]["id"]
    assert (await client.get(f"/v1/conversations/{conv}", headers=bearer(theirs))).status == 404
    assert (await client.delete(f"/v1/conversations/{conv}", headers=bearer(theirs))).status == 404
    assert (await client.get(f"/v1/conversations/{conv}", headers=bearer(mine))).status == 200


async def test_a_revoked_key_is_refused_at_once_and_its_streams_end(client):
    secret = await make_key(client, "temp")
    resp = await client.post(CHAT, headers=bearer(secret), json=chat(text="tokens=1000 delay=0.01", stream=True))
    assert resp.status == 200
    await resp.content.readline()  # streaming
    revoked = await client.delete("/v1/keys/temp", headers=AUTH)
    assert (await revoked.json()) == {"revoked": "temp", "jobs_ended": 1}
    rest = (await asyncio.wait_for(resp.text(), 1.0)).split("\n\n")
    errors = [json.loads(line[6:]) for line in rest if line.startswith("data: {\"error\"")]
    assert errors and "'temp' was revoked while this ran" in errors[0]["error"]["message"]
    resp = await client.post(CHAT, headers=bearer(secret), json=chat())
    assert resp.status == 401 and "'temp' was revoked" in (await resp.json())["error"]["message"]
    keys = (await (await client.get("/v1/keys", headers=AUTH)).json())["keys"]
    assert keys == []


async def test_rotate_gives_a_new_secret_and_the_old_one_stops(client):
    old = await make_key(client, "ci", scope="read", requests_per_minute=60)
    rotated = await (await client.post("/v1/keys/ci/rotate", headers=AUTH)).json()
    assert rotated["key"]["scope"] == "read" and rotated["key"]["requests_per_minute"] == 60
    assert (await client.get("/v1/hives", headers=bearer(old))).status == 401
    assert (await client.get("/v1/jobs", headers=bearer(rotated["secret"]))).status == 200


@pytest.mark.parametrize("headers, words", [
    ({}, "Missing API key"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "Malformed Authorization header"),
    ({"Authorization": "Bearer"}, "Malformed Authorization header"),
    ({"Authorization": "Bearer a b"}, "Malformed Authorization header"),
    ({"Authorization": "Bearer " + "k" * 4000}, "far longer than any rbee key"),
    ({"Authorization": "Bearer rbee-sk-guess"}, "Unknown API key"),
])
async def test_bad_credentials_are_told_what_to_send(client, headers, words):
    resp = await client.post(CHAT, headers=headers, json=chat())
    assert resp.status == 401 and words in (await resp.json())["error"]["message"]


async def test_a_key_in_the_url_is_refused_and_never_logged(client, caplog):
    secret = await make_key(client, "leaky")
    caplog.set_level(logging.DEBUG)
    resp = await client.post(f"{CHAT}?api_key={secret}", headers=bearer(secret), json=chat())
    assert resp.status == 401 and "never in the URL" in (await resp.json())["error"]["message"]
    await client.post(CHAT, headers=bearer(secret), json=chat())
    await client.delete("/v1/keys/leaky", headers=AUTH)
    await client.post(CHAT, headers=bearer(secret), json=chat())
    from queen.access.keys import hash_key

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in logged and hash_key(secret) not in logged


async def test_fifty_wrong_keys_lock_the_address_out_for_a_while(client):
    good = await make_key(client, "good")
    for k in range(middleware.FAILURES_ALLOWED - 1):
        assert (await client.get("/v1/jobs", headers=bearer(f"rbee-sk-guess{k}"))).status == 401
    assert (await client.get("/v1/jobs", headers=bearer(good))).status == 200  # not yet
    assert (await client.get("/v1/jobs", headers=bearer("rbee-sk-last"))).status == 401  # the 50th
    resp = await client.get("/v1/jobs", headers=bearer(good))
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 59
    assert "Too many wrong keys" in (await resp.json())["error"]["message"]
    resp = await client.post("/v1/messages", headers=bearer(good), json={})  # in Anthropic's shape too
    assert (await resp.json())["error"]["type"] == "rate_limit_error"


async def test_requests_per_minute_answer_429_with_retry_after_in_each_shape(client):
    secret = await make_key(client, "slow", requests_per_minute=3)
    for _ in range(3):
        assert (await client.post(CHAT, headers=bearer(secret), json=chat())).status == 200
    resp = await client.post(CHAT, headers=bearer(secret), json=chat())
    assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
    error = (await resp.json())["error"]
    assert error["code"] == "rate_limit_exceeded" and "3 requests a minute" in error["message"]
    resp = await client.post("/v1/messages", headers={"x-api-key": secret}, json={})
    assert resp.status == 429 and (await resp.json())["error"]["type"] == "rate_limit_error"
    resp = await client.post("/api/chat", headers=bearer(secret), json={})
    assert resp.status == 429 and "requests a minute" in (await resp.json())["error"]


async def test_requests_at_once(client):
    secret = await make_key(client, "one", max_concurrent=1)
    first = await client.post(CHAT, headers=bearer(secret), json=chat(text="tokens=50 delay=0.01", stream=True))
    await first.content.readline()
    resp = await client.post(CHAT, headers=bearer(secret), json=chat())
    assert resp.status == 429 and "1 request(s) at once" in (await resp.json())["error"]["message"]
    await first.text()  # it ends
    await asyncio.sleep(0.05)
    assert (await client.post(CHAT, headers=bearer(secret), json=chat())).status == 200


async def test_tokens_per_day_are_reserved_then_settled_and_usage_matches_the_answers(client):
    secret = await make_key(client, "budget", tokens_per_day=30)
    resp = await client.post(CHAT, headers=bearer(secret), json=chat(max_tokens=40))
    assert resp.status == 429 and "has 30 of its 30 tokens a day left" in (await resp.json())["error"]["message"]
    reported = []
    for text in ("say:Hello there.", "say:Yes."):
        resp = await client.post(CHAT, headers=bearer(secret), json=chat(text=text, max_tokens=8))
        assert resp.status == 200, await resp.text()
        reported.append((await resp.json())["usage"])
    await asyncio.sleep(0.05)  # the usage rows are written in the database's thread
    usage = (await (await client.get("/v1/keys/usage?name=budget", headers=AUTH)).json())["usage"]
    assert len(usage) == 1 and usage[0]["requests"] == 2 and usage[0]["model"] == MODEL
    assert usage[0]["prompt_tokens"] == sum(u["prompt_tokens"] for u in reported)
    assert usage[0]["completion_tokens"] == sum(u["completion_tokens"] for u in reported)
    used = usage[0]["total_tokens"]
    [listed] = (await (await client.get("/v1/keys", headers=AUTH)).json())["keys"]
    assert listed["tokens_today"] == used
    resp = await client.post(CHAT, headers=bearer(secret), json=chat(max_tokens=30 - used + 1))
    assert resp.status == 429 and f"has {30 - used} of its 30 tokens" in (await resp.json())["error"]["message"]
    metrics = await (await client.get("/metrics", headers=AUTH)).text()
    assert f'rbee_key_tokens_today{{key="budget"}} {float(used)}' in metrics
    bad = await client.get("/v1/keys/usage?since=yesterday", headers=AUTH)
    assert bad.status == 400 and "YYYY-MM-DD" in (await bad.json())["error"]["message"]


async def test_an_answer_cut_short_still_counts_the_tokens_it_streamed(client):
    secret = await make_key(client, "cut", tokens_per_day=10_000)
    resp = await client.post(CHAT, headers=bearer(secret), json=chat(text="tokens=1000 delay=0.01", stream=True))
    streamed = 0
    while streamed < 5:  # a few tokens out, then the key is revoked mid-answer
        line = await resp.content.readline()
        if line.startswith(b"data: {\"id\""):
            streamed += bool(json.loads(line[6:])["choices"][0]["delta"].get("content"))
    await client.delete("/v1/keys/cut", headers=AUTH)
    await resp.text()
    await asyncio.sleep(0.05)  # the usage rows are written in the database's thread
    [row] = (await (await client.get("/v1/keys/usage?name=cut", headers=AUTH)).json())["usage"]
    assert row["requests"] == 1 and row["completion_tokens"] >= streamed


async def test_counting_tokens_is_free_and_a_fill_context_answer_reserves_what_is_left(client, generator):
    secret = await make_key(client, "counter", tokens_per_day=30)
    for _ in range(3):  # counted, never charged: a key can count as often as it likes
        resp = await client.post("/v1/messages/count_tokens", headers={"x-api-key": secret}, json={
            "model": MODEL, "messages": [{"role": "user", "content": "one two three four five six"}]})
        assert resp.status == 200 and (await resp.json())["input_tokens"] == 6
    await asyncio.sleep(0.05)
    [listed] = (await (await client.get("/v1/keys", headers=AUTH)).json())["keys"]
    assert listed["tokens_today"] == 0
    # num_predict -1 (until the context ends) fits in what is left today, and is charged what it used
    resp = await client.post("/api/chat", headers=bearer(secret), json={
        "model": MODEL, "stream": False, "options": {"num_predict": -1},
        "messages": [{"role": "user", "content": "say:Hi."}]})
    assert resp.status == 200, await resp.text()
    assert generator.operations[-1].fill_context is True
