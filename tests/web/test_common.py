"""web.common: the one mapping of errors to HTTP statuses, bounded bodies (and a client that hangs
up half-way), JSON bodies and token comparison, through a real Starlette app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from watchdog import actions, config, errors
from watchdog.web import common

LIMIT = 64


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (common.BodyTooLarge("big"), 413),
        (common.ClientGone("gone"), 400),
        (errors.UsageError("bad"), 400),
        (actions.AlreadyDone("done"), 400),
        (errors.InvalidReference("ref"), 400),
        (errors.StoreError("db"), 503),
        (errors.DatabaseUnavailable("db down"), 503),
        (errors.RegistryError("registry"), 502),
        (errors.NotFound("gone"), 502),
        (errors.AuthError("denied"), 502),
        (errors.AlertError("slack"), None),  # no endpoint expects it: a bug, answered 500
        (errors.ConfigError(["x: bad"]), None),
    ],
)
def test_every_expected_error_has_one_status(exc: errors.WatchdogError, status: int | None) -> None:
    assert common.status_of(exc) == status
    answer = common.answer_to(exc)
    assert answer.status_code == (status or 500)
    assert answer.body == JSONResponse({"error": str(exc)}).body


def _client(handler: common.Handler) -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/", common.answering(handler), methods=["POST"])])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://web")


async def _echo_json(request: Request) -> Response:
    return JSONResponse(await common.json_body(request, LIMIT))


async def test_a_body_over_the_limit_is_413_declared_or_streamed() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(LIMIT):
            yield b"  "  # no Content-Length: the limit is found while reading

    async with _client(_echo_json) as c:
        ok = await c.post("/", content=b'{"a": 1}')
        assert ok.status_code == 200 and ok.json() == {"a": 1}
        declared = await c.post("/", content=b" " * (LIMIT + 1))
        assert declared.status_code == 413
        assert declared.json() == {"error": f"request body over {LIMIT} bytes"}
        streamed = await c.post("/", content=chunks())
        assert streamed.status_code == 413


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "request body is not JSON"),
        (b"\xff\xfe", "request body is not JSON"),
        (b"[1, 2]", "request body must be a JSON object"),
        (b"[" * 40, "request body is not JSON"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_400(body: bytes, error: str) -> None:
    async with _client(_echo_json) as c:
        resp = await c.post("/", content=body)
    assert resp.status_code == 400 and resp.json() == {"error": error}


async def test_an_empty_body_is_an_empty_object() -> None:
    async with _client(_echo_json) as c:
        resp = await c.post("/")
    assert resp.status_code == 200 and resp.json() == {}


async def test_an_unexpected_error_is_not_answered_as_an_expected_one() -> None:
    async def fails(request: Request) -> Response:
        raise errors.AlertError("slack is down")

    async with _client(fails) as c:
        resp = await c.post("/")
    assert resp.status_code == 500  # Starlette's own answer: the error went up, with its traceback


async def test_a_client_gone_half_way_is_an_answer_not_a_crash() -> None:
    app = Starlette(routes=[Route("/", common.answering(_echo_json), methods=["POST"])])
    received = [
        {"type": "http.request", "body": b'{"a": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return received.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"web")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400


async def test_tokens_are_compared_whole_and_only_when_set() -> None:
    secret = config.Secret("s3cret")
    seen: dict[str, bool] = {}

    async def check(request: Request) -> Response:
        seen["bearer"] = common.bearer_ok(request, secret)
        seen["query"] = common.query_token_ok(request, secret)
        seen["unset"] = common.bearer_ok(request, None) or common.query_token_ok(request, None)
        return Response()

    async def ask(path: str, headers: dict[str, str] | None = None) -> dict[str, bool]:
        async with _client(check) as c:
            assert (await c.post(path, headers=headers)).status_code == 200
        return dict(seen)

    assert await ask("/", {"Authorization": "Bearer s3cret"}) == {
        "bearer": True,
        "query": False,
        "unset": False,
    }
    assert (await ask("/", {"Authorization": "bearer  s3cret "}))["bearer"]  # scheme, spaces
    for header in ("Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret", ""):
        assert not (await ask("/", {"Authorization": header}))["bearer"], header
    assert (await ask("/?token=s3cret"))["query"]
    for query in ("/?token=s3cre", "/?token=s3cret&token=s3cret", "/?token=", "/?tok=s3cret"):
        assert not (await ask(query))["query"], query
    assert not (await ask("/?token=s3cret", {"Authorization": "Bearer s3cret"}))["unset"]
