"""The daemon's HTTP side (Starlette): ``/metrics``, ``/healthz``, ``/readyz``, and mounted
beside them the registry hooks (web.hooks), the HTTP API v1 (web.api) and the Slack buttons
(web.slack).

``/healthz`` answers while the process can serve at all; ``/readyz`` only when the database
answers, the scheduler runs and every watch completed a cycle recently. With ``http.read_token``
set, ``/metrics`` wants it (or ``http.api_token``) as bearer token and ``/readyz`` tells its
reasons only to who gives it (the status code is for every probe); ``/healthz`` stays open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from watchdog import actions, config, metrics
from watchdog.store import repo as store_repo
from watchdog.web import api, common, hooks, slack

ReadinessProbe = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def build_app(
    metrics_: metrics.Metrics,
    readiness: ReadinessProbe,
    *,
    settings: config.Settings | None = None,
    store: store_repo.Store | None = None,
    actions_: actions.Actions | None = None,
    on_registry_events: hooks.EventSink | None = None,
    spawn: slack.Spawn | None = None,
) -> Starlette:
    """The ASGI app: metrics exposition, liveness, readiness (with its reasons as JSON) and the
    registry hooks (refused unless ``settings`` configure their tokens and
    ``on_registry_events`` is given); with a ``store``, ``actions_`` and ``spawn`` (which runs a
    Slack tap's action in the background) also the API and ``/slack/actions``."""

    api_token = settings.http.api_token if settings is not None else None
    read_token = settings.http.read_token if settings is not None else None

    async def metrics_endpoint(request: Request) -> Response:
        if read_token is not None and not common.reader_ok(request, api_token, read_token):
            return common.error(401, "/metrics needs the bearer token (http.read_token)")
        return Response(
            metrics_.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        ready, detail = await readiness()
        if read_token is not None and not common.reader_ok(request, api_token, read_token):
            detail = {}  # the reasons name hosts and repositories: for token holders only
        return JSONResponse(
            {"status": "ready" if ready else "not ready", **detail},
            status_code=200 if ready else 503,
        )

    routes = [
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *hooks.routes(
            settings.hooks.registry_token if settings is not None else None,
            settings.hooks.dockerhub_token if settings is not None else None,
            on_registry_events,
        ),
    ]
    if settings is not None and store is not None and actions_ is not None and spawn is not None:
        routes += [
            *api.routes(store, api_token, actions_, read_token),
            *slack.routes(settings, store, actions_, spawn=spawn, observer=metrics_),
        ]
    return Starlette(routes=routes)
