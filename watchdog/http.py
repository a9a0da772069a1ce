"""The daemon's HTTP side (Starlette): ``/metrics``, ``/healthz``, ``/readyz``, and the registry
hooks ``/hooks/registry`` (CNCF distribution), ``/hooks/harbor`` and ``/hooks/dockerhub``.

``/healthz`` answers while the process can serve at all; ``/readyz`` only when the database
answers, the scheduler runs and every watch completed a cycle recently.

Hook authentication: distribution and Harbor send a configured ``Authorization`` header, checked
against ``hooks.registry_token``; Docker Hub cannot send headers, so its URL carries
``?token=<hooks.dockerhub_token>``. Both are compared in constant time and never logged (uvicorn's
access log, which would print the query, is off).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from watchdog import api, config, errors, metrics, notifications

log = logging.getLogger("watchdog.http")

ReadinessProbe = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
# Called with the parsed events; returns the names of the watches whose check was brought forward.
EventSink = Callable[[Sequence[notifications.RegistryEvent]], Awaitable[list[str]]]


def build_app(
    metrics_: metrics.Metrics,
    readiness: ReadinessProbe,
    *,
    hook_token: config.Secret | None = None,
    dockerhub_token: config.Secret | None = None,
    on_registry_events: EventSink | None = None,
    api_routes: Sequence[Route] = (),
) -> Starlette:
    """The ASGI app: metrics exposition, liveness, readiness (with its reasons as JSON), and the
    registry notification endpoints: ``/hooks/registry`` and ``/hooks/harbor`` (refused unless
    ``hooks.registry_token`` is configured), ``/hooks/dockerhub`` (unless
    ``hooks.dockerhub_token`` is)."""

    async def metrics_endpoint(request: Request) -> Response:
        return Response(
            metrics_.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        ready, detail = await readiness()
        return JSONResponse(
            {"status": "ready" if ready else "not ready", **detail},
            status_code=200 if ready else 503,
        )

    async def hook(
        request: Request,
        source: str,
        parse: Callable[[bytes], list[notifications.RegistryEvent]],
        token: config.Secret | None,
        setting: str,
        authorized: Callable[[Request, config.Secret], bool],
        refusal: str,
    ) -> Response:
        if token is None or on_registry_events is None:
            return JSONResponse({"error": f"{setting} is not configured"}, status_code=403)
        if not authorized(request, token):
            log.warning(
                "hook_refused reason=bad_token source=%s client=%s", source, _client(request)
            )
            return JSONResponse({"error": refusal}, status_code=401)
        try:
            body = await api.read_body(request, notifications.MAX_BODY_BYTES, "notification body")
            events = parse(body)
        except api.BodyTooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except errors.UsageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        triggered = await on_registry_events(events)
        return JSONResponse({"events": len(events), "checks_triggered": triggered})

    async def registry_hook(request: Request) -> Response:
        return await hook(
            request,
            "registry",
            notifications.parse,
            hook_token,
            "hooks.registry_token",
            _bearer_ok,
            "missing or wrong bearer token",
        )

    async def harbor_hook(request: Request) -> Response:
        # Harbor's webhook policy sends its "auth_header" as the Authorization header.
        return await hook(
            request,
            "harbor",
            notifications.parse_harbor,
            hook_token,
            "hooks.registry_token",
            _bearer_ok,
            "missing or wrong bearer token (set the policy's auth_header to 'Bearer <token>')",
        )

    async def dockerhub_hook(request: Request) -> Response:
        return await hook(
            request,
            "dockerhub",
            notifications.parse_dockerhub,
            dockerhub_token,
            "hooks.dockerhub_token",
            _query_token_ok,
            "missing or wrong token (the webhook URL needs ?token=<hooks.dockerhub_token>)",
        )

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/hooks/registry", registry_hook, methods=["POST"]),
            Route("/hooks/harbor", harbor_hook, methods=["POST"]),
            Route("/hooks/dockerhub", dockerhub_hook, methods=["POST"]),
            *api_routes,
        ]
    )


def _bearer_ok(request: Request, token: config.Secret) -> bool:
    return api.bearer_matches(request.headers.get("authorization"), token)


def _query_token_ok(request: Request, token: config.Secret) -> bool:
    """``?token=<token>`` (exactly one), compared in constant time."""
    given = request.query_params.getlist("token")
    return len(given) == 1 and hmac.compare_digest(
        given[0].encode("utf-8", "surrogateescape"), token.reveal().encode()
    )


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"
