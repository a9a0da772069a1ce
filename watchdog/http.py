"""The daemon's HTTP side (Starlette): ``/metrics``, ``/healthz``, ``/readyz``.

``/healthz`` answers while the process can serve at all; ``/readyz`` only when the database
answers, the scheduler runs and every watch completed a cycle recently.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from watchdog import metrics

ReadinessProbe = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def build_app(metrics_: metrics.Metrics, readiness: ReadinessProbe) -> Starlette:
    """The ASGI app: metrics exposition, liveness, readiness (with its reasons as JSON)."""

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

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )
