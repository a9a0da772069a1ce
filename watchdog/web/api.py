"""HTTP API v1 (JSON), served by the daemon next to /metrics.

Reads (tags, history, incidents) are open to clients on loopback and need the bearer token from anywhere
else; writes (restore, accept, an incident's restore) always need ``http.api_token`` as ``Authorization: Bearer ...`` and
are refused when no token is configured. Writes run through watchdog.actions, as the CLI's do.
The OpenAPI document at ``/api/v1/openapi.json`` is the ``OPENAPI`` constant below; a test checks
it against the routes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from watchdog import actions, config, errors, models, vaulting, views
from watchdog.store import repo as store_repo
from watchdog.web import common

log = logging.getLogger("watchdog.api")

MAX_BODY_BYTES = 64 * 1024
STATES = tuple(s.value for s in models.TagState)


def _guarded(
    handler: common.Handler,
    token: config.Secret | None,
    *,
    write: bool,
    read_token: config.Secret | None = None,
) -> common.Handler:
    """``handler`` behind the API's rules: writes need the bearer token (refused without one
    configured), reads need it from outside loopback, or ``read_token`` (or the write token)
    from everyone when it is set (common.reader_ok)."""
    answering = common.answering(handler)

    async def run(request: Request) -> Response:
        if write:
            if token is None:
                return common.error(403, "writes are disabled: set http.api_token")
            if not common.bearer_ok(request, token):
                log.warning("api_refused reason=bad_token path=%s", request.url.path)
                return common.error(401, "missing or wrong bearer token")
        elif not common.reader_ok(request, token, read_token):
            if read_token is not None:
                return common.error(401, "reads need the bearer token (http.read_token)")
            return common.error(401, "reads from outside loopback need the bearer token")
        return await answering(request)

    return run


def routes(
    store: store_repo.Store,
    token: config.Secret | None,
    actions_: actions.Actions,
    read_token: config.Secret | None = None,
) -> list[Route]:
    """The /api/v1 routes over ``store`` and ``actions_``; with a ``read_token``, the reads and
    the OpenAPI document want it (or ``token``) from every client."""

    async def tags(request: Request) -> Response:
        repository = request.query_params.get("repository")
        state = request.query_params.get("state")
        if state is not None and state not in STATES:
            raise errors.UsageError(f"state must be one of {', '.join(STATES)}")
        name = models.ImageRef.parse(repository, allow_tag=False).name if repository else None
        records = await asyncio.to_thread(store.all_tags, name)
        if state is not None:
            records = [r for r in records if r.state.value == state]
        copies = await asyncio.to_thread(store.vault.copies, name)
        return JSONResponse(
            {
                "tags": [
                    views.record_json(r)
                    | {"vault": vaulting.state_json(vaulting.copy_of(copies, r))}
                    for r in records
                ]
            }
        )

    async def history(request: Request) -> Response:
        ref = models.ImageRef.parse(request.query_params.get("ref", ""), require_tag=True)
        assert ref.tag is not None
        events = await asyncio.to_thread(store.history, ref.name, ref.tag)
        return JSONResponse(
            {"ref": f"{ref.name}:{ref.tag}", "events": [views.event_json(e) for e in events]}
        )

    async def do_restore(request: Request) -> Response:
        body = await common.json_body(request, MAX_BODY_BYTES)
        ref = models.ImageRef.parse(_field(body, "ref"), require_tag=True)
        digest = _optional(body, "digest")
        digest = models.check_digest(digest) if digest is not None else None
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise errors.UsageError("dry_run must be true or false")
        if dry_run:
            plan = await actions_.plan(ref, digest, actions.ACTOR_API)
            return JSONResponse({"result": "plan", "ok": plan.ok, "plan": views.plan_json(plan)})
        # planned first, as `tag-watchdog restore` does: a tag that already answers its record
        # is nothing to do (no PUT, no event), not a restore
        (planned,) = await actions.plan_all(actions_, [ref], digest, actions.ACTOR_API)
        done = await actions.restore_planned(actions_, planned, digest, actions.ACTOR_API)
        if done.outcome == views.NOTHING_TO_DO:
            why = done.reason or (done.plan.verdict() if done.plan is not None else None)
            return JSONResponse({"result": "nothing_to_do", "reason": why, "event": None})
        if done.outcome == views.COULD_NOT_COMPLETE:
            return JSONResponse({"result": "failed", "reason": done.reason, "event": None}, 503)
        if done.outcome == views.REFUSED:
            return JSONResponse({"result": "refused", "reason": done.reason, "event": None}, 409)
        restored = done.outcome == views.RESTORED
        return JSONResponse(
            {
                "result": "restored" if restored else "failed",
                "reason": done.reason,
                "event": views.event_json(done.event) if done.event is not None else None,
            },
            status_code=200 if restored else 502,
        )

    async def do_accept(request: Request) -> Response:
        body = await common.json_body(request, MAX_BODY_BYTES)
        ref = models.ImageRef.parse(_field(body, "ref"), require_tag=True)
        event = await actions_.accept(ref, _optional(body, "reason"), actions.ACTOR_API)
        return JSONResponse({"result": "accepted", "event": views.event_json(event)})

    async def incidents(request: Request) -> Response:
        repository = request.query_params.get("repository")
        name = models.ImageRef.parse(repository, allow_tag=False).name if repository else None
        limit = _limit(request.query_params.get("limit"))
        found = await asyncio.to_thread(store.incidents.recent, limit, name)
        now = actions_.clock()
        return JSONResponse({"incidents": [views.incident_json(i, now) for i in found]})

    async def incident(request: Request) -> Response:
        incident_id = _incident_id(request)
        found = await asyncio.to_thread(store.incidents.get, incident_id)
        if found is None:
            return common.error(404, views.no_incident(incident_id))
        return JSONResponse(views.incident_json(found, actions_.clock(), events=True))

    async def restore_incident(request: Request) -> Response:
        incident_id = _incident_id(request)
        body = await common.json_body(request, MAX_BODY_BYTES)
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise errors.UsageError("dry_run must be true or false")
        try:
            refs = await asyncio.to_thread(actions.incident_refs, store, incident_id)
        except actions.UnknownIncident as exc:
            return common.error(404, str(exc))
        results = []
        if refs:  # one that cannot be restored at all: UsageError (400), nothing changed
            results = await actions.restore_all(
                actions_, refs, None, actions.ACTOR_API, dry_run=dry_run
            )
        doc = views.outcomes_json(results, several=True, dry_run=dry_run)
        if not refs:
            doc["reason"] = actions.nothing_in_incident(incident_id)
        # a plan is an answer whatever it found; a restore: 409 when one was refused (someone
        # was quicker), 502 when one failed or could not complete
        status = 200 if dry_run else {0: 200, 2: 409}.get(doc["exit_code"], 502)
        return JSONResponse(doc, status_code=status)

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    def read(handler: common.Handler) -> common.Handler:
        return _guarded(handler, token, write=False, read_token=read_token)

    return [
        Route(
            "/api/v1/tags",
            _guarded(tags, token, write=False, read_token=read_token),
            methods=["GET"],
        ),
        Route(
            "/api/v1/history",
            _guarded(history, token, write=False, read_token=read_token),
            methods=["GET"],
        ),
        Route("/api/v1/restore", _guarded(do_restore, token, write=True), methods=["POST"]),
        Route("/api/v1/accept", _guarded(do_accept, token, write=True), methods=["POST"]),
        Route("/api/v1/incidents", read(incidents), methods=["GET"]),
        Route("/api/v1/incidents/{id}", read(incident), methods=["GET"]),
        Route(
            "/api/v1/incidents/{id}/restore",
            _guarded(restore_incident, token, write=True),
            methods=["POST"],
        ),
        Route(
            "/api/v1/openapi.json",
            _guarded(openapi, token, write=False, read_token=read_token) if read_token else openapi,
            methods=["GET"],
        ),
    ]


def _limit(text: str | None) -> int:
    """The ``limit`` query parameter: a whole number from 1 (default views.INCIDENTS_LISTED)."""
    if text is None:
        return views.INCIDENTS_LISTED
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise errors.UsageError("limit must be a whole number from 1")
    return int(text)


def _incident_id(request: Request) -> int:
    text = str(request.path_params["id"])
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise errors.UsageError(f"not an incident id: {errors.truncate(text, 40)!r}")
    return int(text)


def _string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise errors.UsageError(f"{name} must be a string")
    return value


def _field(body: dict[str, Any], name: str) -> str:
    if name not in body:
        raise errors.UsageError(f"{name} is required")
    return _string(body[name], name)


def _optional(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return _string(value, name) if value is not None else None


_ERROR = {"$ref": "#/components/schemas/Error"}


def _responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": ok}}}
    }
    text = {
        400: "Bad input",
        401: "Missing or wrong bearer token",
        403: "Writes disabled",
        404: "No such incident",
        502: "The registry failed",
        503: "The database is unavailable",
    }
    for code in codes:
        out[str(code)] = {
            "description": text[code],
            "content": {"application/json": {"schema": _ERROR}},
        }
    return out


def _json_request(properties: dict[str, Any]) -> dict[str, Any]:
    """A required JSON object body with ``properties``, of which ``ref`` is required."""
    schema = {"type": "object", "required": ["ref"], "properties": properties}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_INCIDENT_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
# `restore --incident ID --json`: the worst exit code, and one outcome per tag (as `restore A B`)
_OUTCOMES = {
    "type": "object",
    "required": ["exit_code", "dry_run", "results"],
    "properties": {
        "exit_code": {"type": "integer"},
        "dry_run": {"type": "boolean"},
        "results": {"type": "array", "items": {"type": "object"}},
        "reason": {"description": "why there was nothing to restore", "type": "string"},
    },
}

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
                    "vault": {
                        "description": "the vault copy of the recorded digest (null: none asked)",
                        "type": ["object", "null"],
                        "properties": {
                            "state": {"type": "string", "enum": ["pending", "kept", "failed"]},
                            "at": {"type": "string", "format": "date-time"},
                            "repository": {"type": ["string", "null"]},
                            "tag": {"type": ["string", "null"]},
                            "attempts": {"type": "integer"},
                            "reason": {"type": ["string", "null"]},
                        },
                    },
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
                    "incident": {
                        "description": "the incident the event belongs to (null: none)",
                        "type": ["integer", "null"],
                    },
                },
            },
            "IncidentTag": {
                "type": "object",
                "required": ["ref", "repository", "tag", "change", "state", "actor"],
                "properties": {
                    "ref": {"type": "string"},
                    "repository": {"type": "string"},
                    "tag": {"type": "string"},
                    "change": {
                        "description": "the tag's latest change in the incident",
                        "type": "string",
                        "enum": sorted(k.value for k in models.INCIDENT_CHANGES),
                    },
                    "at": {"type": "string", "format": "date-time"},
                    "old_digest": {"type": ["string", "null"]},
                    "new_digest": {"type": ["string", "null"]},
                    "changed_platforms": {"type": "array", "items": {"type": "string"}},
                    "state": {
                        "description": "the kind of the tag's latest event in the incident",
                        "type": "string",
                        "enum": [k.value for k in models.EventKind],
                    },
                    "actor": {"type": "string"},
                    "pushed_by": {
                        "description": "who pushed the change, as a registry notification said",
                        "type": ["object", "null"],
                    },
                },
            },
            "Incident": {
                "type": "object",
                "required": ["id", "group_key", "opened_at", "closes_at", "open", "tags"],
                "properties": {
                    "id": {"type": "integer"},
                    "group_key": {"type": "string"},
                    "registry": {"type": "string"},
                    "opened_at": {"type": "string", "format": "date-time"},
                    "last_change_at": {"type": "string", "format": "date-time"},
                    "closes_at": {"type": "string", "format": "date-time"},
                    "open": {"type": "boolean"},
                    "tag_count": {"type": "integer"},
                    "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "pushed_by": {
                        "description": "who pushed its changes (empty: unknown)",
                        "type": "array",
                        "items": {"type": "string"},
                    },
                    "tags": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/IncidentTag"},
                    },
                    "events": {
                        "description": "every event of it (GET /api/v1/incidents/{id} only)",
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Event"},
                    },
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
                "requestBody": _json_request(
                    {
                        "ref": {"type": "string"},
                        "digest": {"type": "string"},
                        "dry_run": {"type": "boolean"},
                    }
                ),
                "responses": _responses(
                    {
                        "type": "object",
                        "required": ["result"],
                        "properties": {
                            "result": {
                                "type": "string",
                                "enum": ["restored", "failed", "plan", "nothing_to_do", "refused"],
                            },
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
                "requestBody": _json_request(
                    {"ref": {"type": "string"}, "reason": {"type": "string"}}
                ),
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
        "/api/v1/incidents": {
            "get": {
                "summary": "The recent incidents, newest first",
                "parameters": [
                    {
                        "name": "repository",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1},
                    },
                ],
                "responses": _responses(
                    {
                        "type": "object",
                        "properties": {
                            "incidents": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Incident"},
                            }
                        },
                    },
                    400,
                    401,
                    503,
                ),
            }
        },
        "/api/v1/incidents/{id}": {
            "get": {
                "summary": "One incident, with its events",
                "parameters": [_INCIDENT_ID],
                "responses": _responses(
                    {"$ref": "#/components/schemas/Incident"}, 400, 401, 404, 503
                ),
            }
        },
        "/api/v1/incidents/{id}/restore": {
            "post": {
                "summary": "Restore every tag of the incident still drifted, deleted or broken "
                "(or plan it with dry_run), as `restore --incident ID --json`",
                "security": _BEARER,
                "parameters": [_INCIDENT_ID],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"dry_run": {"type": "boolean"}},
                            }
                        }
                    },
                },
                "responses": _responses(_OUTCOMES, 400, 401, 403, 404, 503)
                | {
                    str(code): {
                        "description": f"{text}: the outcome of each tag says which",
                        "content": {"application/json": {"schema": _OUTCOMES}},
                    }
                    for code, text in (
                        (409, "A record changed meanwhile"),
                        (502, "A restore failed"),
                    )
                },
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
