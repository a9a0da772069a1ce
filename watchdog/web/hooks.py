"""Registry push notifications over HTTP: ``/hooks/registry`` (CNCF distribution),
``/hooks/harbor`` and ``/hooks/dockerhub``. Each parses its body (watchdog.notifications) and hands
the events to the daemon, which brings the checks they concern forward.

Authentication: distribution and Harbor send a configured ``Authorization`` header, checked
against ``hooks.registry_token``; Docker Hub cannot send headers, so its URL carries
``?token=<hooks.dockerhub_token>``. Both are compared in constant time and never logged (uvicorn's
access log, which would print the query, is off).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from watchdog import config, notifications
from watchdog.web import common

# the logger of these endpoints since before the web package: log pipelines filter on it
log = logging.getLogger("watchdog.http")

# Called with the parsed events; returns the names of the watches whose check was brought forward.
EventSink = Callable[[Sequence[notifications.RegistryEvent]], Awaitable[list[str]]]


@dataclasses.dataclass(frozen=True)
class _Hook:
    path: str
    source: str  # for the log
    parse: Callable[[bytes], list[notifications.RegistryEvent]]
    setting: str  # the config key of its token
    authorized: Callable[[Request, config.Secret | None], bool]
    refusal: str  # the answer to a missing or wrong token


_HOOKS = (
    _Hook(
        "/hooks/registry",
        "registry",
        notifications.parse,
        "hooks.registry_token",
        common.bearer_ok,
        "missing or wrong bearer token",
    ),
    # Harbor's webhook policy sends its "auth_header" as the Authorization header.
    _Hook(
        "/hooks/harbor",
        "harbor",
        notifications.parse_harbor,
        "hooks.registry_token",
        common.bearer_ok,
        "missing or wrong bearer token (set the policy's auth_header to 'Bearer <token>')",
    ),
    _Hook(
        "/hooks/dockerhub",
        "dockerhub",
        notifications.parse_dockerhub,
        "hooks.dockerhub_token",
        common.query_token_ok,
        "missing or wrong token (the webhook URL needs ?token=<hooks.dockerhub_token>)",
    ),
)


def routes(
    registry_token: config.Secret | None,
    dockerhub_token: config.Secret | None,
    on_registry_events: EventSink | None,
) -> list[Route]:
    """The hook routes. ``/hooks/registry`` and ``/hooks/harbor`` refuse every request (403)
    unless ``registry_token`` is set, ``/hooks/dockerhub`` unless ``dockerhub_token`` is, and all
    three without ``on_registry_events``. Answers ``{"events": n, "checks_triggered": [...]}``."""
    tokens = {"hooks.registry_token": registry_token, "hooks.dockerhub_token": dockerhub_token}

    def endpoint(hook: _Hook) -> common.Handler:
        token = tokens[hook.setting]

        async def receive(request: Request) -> Response:
            if token is None or on_registry_events is None:
                return common.error(403, f"{hook.setting} is not configured")
            if not hook.authorized(request, token):
                log.warning(
                    "hook_refused reason=bad_token source=%s client=%s",
                    hook.source,
                    common.client_host(request),
                )
                return common.error(401, hook.refusal)
            body = await common.read_body(
                request, notifications.MAX_BODY_BYTES, "notification body"
            )
            events = hook.parse(body)
            triggered = await on_registry_events(events)
            return JSONResponse({"events": len(events), "checks_triggered": triggered})

        return common.answering(receive)

    return [Route(hook.path, endpoint(hook), methods=["POST"]) for hook in _HOOKS]
