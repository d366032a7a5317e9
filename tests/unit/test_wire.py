"""shared/wire.py, handshake, ports, the sampling definition and the daemon client's error typing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from aiohttp import web

from shared.client import DaemonClient
from shared.errors import InvalidRequest, ServerError, ServerUnreachable
from shared.handshake import listening_line, listening_url, listening_version
from shared.inference import SAMPLING_DEFAULTS, InferenceRequest, parse_inference_request
from shared.operations import Infer, parse_operation
from shared.version import THIS, PeerVersion
from shared.wire import WireEnum, WireMessage, bounds, parse_message


class Color(WireEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, kw_only=True)
class Sample(WireMessage):
    name: ClassVar[str] = "sample"
    color: Color
    size: float = field(default=1.0, metadata=bounds(0, 10))


def test_enums_parse_from_and_serialise_to_their_values():
    sample = parse_message(Sample, {"color": "blue"})
    assert sample.color is Color.BLUE and sample.to_dict() == {"color": "blue", "size": 1.0}
    assert f"{Color.RED}" == "red" and str(Color.RED) == "red"


@pytest.mark.parametrize("data, field_name, problem", [
    ({"color": "green"}, "color", "must be one of red, blue, not 'green'"),
    ({"color": "red", "size": 11}, "size", "must be at most 10, not 11"),
    ({"color": "red", "size": float("nan")}, "size", "must be a finite number"),
    ({"color": "red", "size": "big"}, "size", "must be a number, not a string"),
    ({}, "color", "is required"),
    ({"color": "red", "shade": 1}, "shade", "is not a field (valid: color, size)"),
])
def test_errors_carry_the_field_and_the_problem(data, field_name, problem):
    with pytest.raises(InvalidRequest) as err:
        parse_message(Sample, data)
    assert (err.value.field, err.value.problem) == (field_name, problem)
    assert f"'{field_name}'" in err.value.message


def test_sampling_is_defined_once_for_infer_and_the_worker_request():
    infer = parse_operation({"operation": "infer", "prompt": "Hi", "top_k": 5, "stop": "END"})
    request = infer.to_request()
    assert isinstance(request, InferenceRequest)
    assert request == parse_inference_request(request.to_dict())
    assert (request.top_k, request.stop, request.max_tokens) == (5, ("END",), SAMPLING_DEFAULTS["max_tokens"])
    shared_fields = {f.name for f in dataclasses.fields(InferenceRequest)} - {"continue_ids"}  # queen → worker only
    assert shared_fields <= {f.name for f in dataclasses.fields(Infer)}
    continued = parse_inference_request({"prompt": "Hi", "continue_ids": [1, 2, 3]})
    assert continued.continue_ids == (1, 2, 3) and parse_inference_request(continued.to_dict()) == continued
    for bad in ([1, -2], [1.5], "12", [True]):
        with pytest.raises(InvalidRequest, match="continue_ids"):
            parse_inference_request({"prompt": "Hi", "continue_ids": bad})
    assert SAMPLING_DEFAULTS == {"max_tokens": 128, "temperature": 0.8, "top_p": 0.95, "top_k": 40, "seed": None,
                                 "stop": None}


def test_handshake_has_one_writer_and_one_reader():
    line = listening_line("rbee-hive", "gpu1", "http://127.0.0.1:40123")
    assert listening_url(line) == "http://127.0.0.1:40123"
    assert listening_url(line.encode() + b"\n") == "http://127.0.0.1:40123"
    assert listening_url("rbee-hive: cannot listen on 127.0.0.1:7835") is None
    assert listening_version(line) == THIS
    assert listening_version("rbee-hive gpu1 listening on http://127.0.0.1:40123") == PeerVersion(None, 0)  # older


async def test_client_turns_error_bodies_into_typed_errors(aiohttp_server):
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "UNAUTHORIZED", "message": "Wrong bearer token."}}, status=401)

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>", status=500)

    app = web.Application()
    app.router.add_get("/v1/capabilities", refuse)
    app.router.add_get("/broken", garbage)
    server = await aiohttp_server(app)
    async with DaemonClient(str(server.make_url("")), "token") as client:
        with pytest.raises(ServerError) as err:
            await client.request("GET", "/v1/capabilities")
        assert (err.value.status, err.value.code, err.value.message) == (401, "UNAUTHORIZED", "Wrong bearer token.")
        with pytest.raises(ServerError) as err:
            await client.request("GET", "/broken")
        assert err.value.code == "HTTP_500" and "oops" in err.value.message
        assert await client.health_or_none() is None  # 404: not a healthy daemon
    port = server.port
    await server.close()
    async with DaemonClient(f"http://127.0.0.1:{port}") as gone:
        with pytest.raises(ServerUnreachable, match=f"Nothing answers at http://127.0.0.1:{port}"):
            await gone.health()


async def test_a_url_that_is_not_http_is_a_typed_error_not_a_crash():
    async with DaemonClient("localhost:7833") as client:  # a scheme forgotten, as people do
        with pytest.raises(ServerError, match="failed"):
            await client.request("GET", "/health")
        assert await client.health_or_none() is None
