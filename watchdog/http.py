"""The daemon's HTTP side (Starlette): ``/metrics``, ``/healthz``, ``/readyz``, ``/hooks/registry``.

``/healthz`` answers while the process can serve at all; ``/readyz`` only when the database
answers, the scheduler runs and every watch completed a cycle recently.
"""

from __future__ import annotations

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
    on_registry_events: EventSink | None = None,
    api_routes: Sequence[Route] = (),
) -> Starlette:
    """The ASGI app: metrics exposition, liveness, readiness (with its reasons as JSON), and the
    registry notification endpoint (refused unless ``hooks.registry_token`` is configured)."""

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

    async def registry_hook(request: Request) -> Response:
        if hook_token is None or on_registry_events is None:
            return JSONResponse(
                {"error": "hooks.registry_token is not configured"}, status_code=403
            )
        if not api.bearer_matches(request.headers.get("authorization"), hook_token):
            log.warning("hook_refused reason=bad_token client=%s", _client(request))
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > notifications.MAX_BODY_BYTES:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            events = notifications.parse(await _read_limited(request))
        except errors.UsageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        triggered = await on_registry_events(events)
        return JSONResponse({"events": len(events), "checks_triggered": triggered})

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/hooks/registry", registry_hook, methods=["POST"]),
            *api_routes,
        ]
    )


async def _read_limited(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > notifications.MAX_BODY_BYTES:
            raise errors.UsageError(f"notification body over {notifications.MAX_BODY_BYTES} bytes")
    return bytes(body)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"
