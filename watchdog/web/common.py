"""What more than one web endpoint needs: a bounded request body (and a client that hung up
half-way), token comparison in constant time, JSON bodies, and the one mapping of
``watchdog.errors`` to HTTP statuses (``STATUSES``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from watchdog import config, errors, safejson

Handler = Callable[[Request], Awaitable[Response]]


class BodyTooLarge(errors.UsageError):
    """A request body over the endpoint's limit (answer 413)."""


class ClientGone(errors.UsageError):
    """The client closed the connection before sending its whole body (no one hears an answer)."""


# The answer to each expected failure, the first match wins. What is not here is a bug: it
# propagates (Starlette answers 500 and logs the traceback).
STATUSES: tuple[tuple[type[errors.WatchdogError], int], ...] = (
    (BodyTooLarge, 413),
    (errors.UsageError, 400),  # bad input; ClientGone too, though no one hears it
    (errors.InvalidReference, 400),
    (errors.StoreError, 503),  # the database is unavailable, or the repository busy
    (errors.RegistryError, 502),
)


def status_of(exc: errors.WatchdogError) -> int | None:
    """The HTTP status that answers ``exc`` (STATUSES); None when no endpoint expects it."""
    return next((status for kind, status in STATUSES if isinstance(exc, kind)), None)


def error(status: int, message: str) -> JSONResponse:
    """The error answer every endpoint gives: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status)


def answer_to(exc: errors.WatchdogError) -> JSONResponse:
    """The answer to ``exc``: its status from STATUSES (500 when none fits)."""
    return error(status_of(exc) or 500, str(exc))


def answering(handler: Handler) -> Handler:
    """``handler``, with its expected failures answered as STATUSES says (``{"error": ...}``)."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except errors.WatchdogError as exc:
            if status_of(exc) is None:
                raise
            return answer_to(exc)

    return run


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The whole body of ``request``, refused beyond ``limit`` bytes (BodyTooLarge, from the
    declared Content-Length before a byte is read), or ClientGone when the client hangs up half-way
    (Starlette's ClientDisconnect would otherwise end in a 500 and a traceback)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"{what} over {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(f"{what} over {limit} bytes")
    except ClientDisconnect:
        raise ClientGone("the client closed the connection before sending the whole body") from None
    return bytes(body)


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    """The body of ``request`` as a JSON object (an empty body is ``{}``); UsageError when it is
    not one, BodyTooLarge beyond ``limit`` bytes."""
    raw = await read_body(request, limit)
    try:
        body = safejson.loads(raw or b"{}")
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        raise errors.UsageError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise errors.UsageError("request body must be a JSON object")
    return body


def bearer_ok(request: Request, secret: config.Secret | None) -> bool:
    """``Authorization: Bearer <secret>``, compared in constant time; False when no secret is set."""
    header = request.headers.get("authorization")
    if secret is None or not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), secret.reveal().encode()
    )


def query_token_ok(request: Request, secret: config.Secret | None) -> bool:
    """``?token=<secret>`` (exactly one), compared in constant time; False when no secret is set."""
    if secret is None:
        return False
    given = request.query_params.getlist("token")
    return len(given) == 1 and hmac.compare_digest(
        given[0].encode("utf-8", "surrogateescape"), secret.reveal().encode()
    )


def client_host(request: Request) -> str:
    """The peer's address, for log lines."""
    return request.client.host if request.client else "unknown"
