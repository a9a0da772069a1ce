"""HTTP API v1 (JSON), served by the daemon next to /metrics.

Reads (tags, history) are open to clients on loopback and need the bearer token from anywhere
else; writes (restore, accept) always need ``http.api_token`` as ``Authorization: Bearer ...`` and
are refused when no token is configured. The OpenAPI document at ``/api/v1/openapi.json`` is the
``OPENAPI`` constant below; a test checks it against the routes.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from watchdog import actions, config, errors, models, views
from watchdog.store import repo as store_repo

log = logging.getLogger("watchdog.api")

MAX_BODY_BYTES = 64 * 1024
STATES = tuple(s.value for s in models.TagState)


Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def bearer_matches(header: str | None, secret: config.Secret | None) -> bool:
    """``Authorization: Bearer <secret>``, compared in constant time; False when no secret is set."""
    if secret is None or not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), secret.reveal().encode()
    )


def _bearer_ok(request: Request, token: config.Secret | None) -> bool:
    return bearer_matches(request.headers.get("authorization"), token)


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def routes(
    store: store_repo.Store, token: config.Secret | None, actions_: actions.Actions
) -> list[Route]:
    """The /api/v1 routes over ``store`` and ``actions_``."""

    def guarded(handler: Handler, *, write: bool) -> Handler:
        async def run(request: Request) -> Response:
            if write:
                if token is None:
                    return _error(403, "writes are disabled: set http.api_token")
                if not _bearer_ok(request, token):
                    log.warning("api_refused reason=bad_token path=%s", request.url.path)
                    return _error(401, "missing or wrong bearer token")
            elif not _loopback(request) and not _bearer_ok(request, token):
                return _error(401, "reads from outside loopback need the bearer token")
            try:
                return await handler(request)
            except BodyTooLarge as exc:
                return _error(413, str(exc))
            except (errors.InvalidReference, errors.UsageError) as exc:
                return _error(400, str(exc))
            except errors.StoreError as exc:
                return _error(503, str(exc))
            except errors.RegistryError as exc:
                return _error(502, str(exc))

        return run

    async def tags(request: Request) -> Response:
        repository = request.query_params.get("repository")
        state = request.query_params.get("state")
        if state is not None and state not in STATES:
            raise errors.UsageError(f"state must be one of {', '.join(STATES)}")
        name = models.ImageRef.parse(repository, allow_tag=False).name if repository else None
        records = await asyncio.to_thread(store.all_tags, name)
        if state is not None:
            records = [r for r in records if r.state.value == state]
        return JSONResponse({"tags": [views.record_json(r) for r in records]})

    async def history(request: Request) -> Response:
        ref = models.ImageRef.parse(request.query_params.get("ref", ""), require_tag=True)
        assert ref.tag is not None
        events = await asyncio.to_thread(store.history, ref.name, ref.tag)
        return JSONResponse(
            {"ref": f"{ref.name}:{ref.tag}", "events": [views.event_json(e) for e in events]}
        )

    async def do_restore(request: Request) -> Response:
        body = await _json_body(request)
        ref = models.ImageRef.parse(_field(body, "ref"), require_tag=True)
        digest = body.get("digest")
        if digest is not None:
            digest = models.check_digest(_string(digest, "digest"))
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise errors.UsageError("dry_run must be true or false")
        if dry_run:
            plan = await actions_.plan(ref, digest, actions.ACTOR_API)
            return JSONResponse({"result": "plan", "ok": plan.ok, "plan": views.plan_json(plan)})
        result = await actions_.restore(ref, digest, actions.ACTOR_API)
        return JSONResponse(
            {
                "result": "restored" if result.restored else "failed",
                "reason": result.reason,
                "event": views.event_json(result.event),
            },
            status_code=200 if result.restored else 502,
        )

    async def do_accept(request: Request) -> Response:
        body = await _json_body(request)
        ref = models.ImageRef.parse(_field(body, "ref"), require_tag=True)
        reason = body.get("reason")
        if reason is not None:
            reason = _string(reason, "reason")
        event = await actions_.accept(ref, reason, actions.ACTOR_API)
        return JSONResponse({"result": "accepted", "event": views.event_json(event)})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    return [
        Route("/api/v1/tags", guarded(tags, write=False), methods=["GET"]),
        Route("/api/v1/history", guarded(history, write=False), methods=["GET"]),
        Route("/api/v1/restore", guarded(do_restore, write=True), methods=["POST"]),
        Route("/api/v1/accept", guarded(do_accept, write=True), methods=["POST"]),
        Route("/api/v1/openapi.json", openapi, methods=["GET"]),
    ]


class BodyTooLarge(errors.UsageError):
    """A request body over the endpoint's limit (answer 413)."""


class ClientGone(errors.UsageError):
    """The client closed the connection before sending its whole body (no one hears an answer)."""


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


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, MAX_BODY_BYTES)
    try:
        body = json.loads(raw or b"{}")
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        raise errors.UsageError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise errors.UsageError("request body must be a JSON object")
    return body


def _string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise errors.UsageError(f"{name} must be a string")
    return value


def _field(body: dict[str, Any], name: str) -> str:
    if name not in body:
        raise errors.UsageError(f"{name} is required")
    return _string(body[name], name)


_ERROR = {"$ref": "#/components/schemas/Error"}


def _responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": ok}}}
    }
    text = {
        400: "Bad input",
        401: "Missing or wrong bearer token",
        403: "Writes disabled",
        502: "The registry failed",
        503: "The database is unavailable",
    }
    for code in codes:
        out[str(code)] = {
            "description": text[code],
            "content": {"application/json": {"schema": _ERROR}},
        }
    return out


_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "tag-watchdog API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
            "Tag": {
                "type": "object",
                "required": ["repository", "tag", "ref", "state", "recorded_digest"],
                "properties": {
                    "repository": {"type": "string"},
                    "tag": {"type": "string"},
                    "ref": {"type": "string"},
                    "state": {"type": "string", "enum": list(STATES)},
                    "recorded_digest": {"type": "string"},
                    "current_digest": {"type": ["string", "null"]},
                    "media_type": {"type": ["string", "null"]},
                    "first_seen": {"type": "string", "format": "date-time"},
                    "last_checked": {"type": "string", "format": "date-time"},
                    "last_changed": {"type": "string", "format": "date-time"},
                },
            },
            "Event": {
                "type": "object",
                "required": ["id", "repository", "tag", "kind", "at", "actor"],
                "properties": {
                    "id": {"type": ["integer", "null"]},
                    "repository": {"type": "string"},
                    "tag": {"type": "string"},
                    "kind": {"type": "string", "enum": [k.value for k in models.EventKind]},
                    "at": {"type": "string", "format": "date-time"},
                    "old_digest": {"type": ["string", "null"]},
                    "new_digest": {"type": ["string", "null"]},
                    "detail": {"type": "object"},
                    "actor": {"type": "string"},
                },
            },
        },
    },
    "paths": {
        "/api/v1/tags": {
            "get": {
                "summary": "Every recorded tag (open on loopback, else bearer token)",
                "parameters": [
                    {
                        "name": "repository",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "state",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": list(STATES)},
                    },
                ],
                "responses": _responses(
                    {
                        "type": "object",
                        "properties": {
                            "tags": {"type": "array", "items": {"$ref": "#/components/schemas/Tag"}}
                        },
                    },
                    400,
                    401,
                    503,
                ),
            }
        },
        "/api/v1/history": {
            "get": {
                "summary": "The append-only events of one tag",
                "parameters": [
                    {"name": "ref", "in": "query", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses(
                    {
                        "type": "object",
                        "properties": {
                            "ref": {"type": "string"},
                            "events": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Event"},
                            },
                        },
                    },
                    400,
                    401,
                    503,
                ),
            }
        },
        "/api/v1/restore": {
            "post": {
                "summary": "Put a recorded digest back (or plan it with dry_run)",
                "security": _BEARER,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["ref"],
                                "properties": {
                                    "ref": {"type": "string"},
                                    "digest": {"type": "string"},
                                    "dry_run": {"type": "boolean"},
                                },
                            }
                        }
                    },
                },
                "responses": _responses(
                    {
                        "type": "object",
                        "required": ["result"],
                        "properties": {
                            "result": {"type": "string", "enum": ["restored", "failed", "plan"]},
                            "event": {"$ref": "#/components/schemas/Event"},
                            "plan": {"type": "object"},
                            "ok": {"type": "boolean"},
                            "reason": {"type": ["string", "null"]},
                        },
                    },
                    400,
                    401,
                    403,
                    502,
                    503,
                ),
            }
        },
        "/api/v1/accept": {
            "post": {
                "summary": "Make the tag's current digest the record (a deliberate re-release)",
                "security": _BEARER,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["ref"],
                                "properties": {
                                    "ref": {"type": "string"},
                                    "reason": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": _responses(
                    {
                        "type": "object",
                        "properties": {
                            "result": {"type": "string", "enum": ["accepted"]},
                            "event": {"$ref": "#/components/schemas/Event"},
                        },
                    },
                    400,
                    401,
                    403,
                    503,
                ),
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    },
}
