"""The HTTP server under the app: uvicorn (h11), with the limits that keep hostile or broken
clients from holding the daemon's file descriptors and from passing for someone else.

- At most ``http.max_connections`` connections, and never more than half the descriptors the
  process may open (accepted an eighth of them at a time): the registry clients, the database
  and the log need the rest. Past the cap
  the oldest connection still sending its request (or idle between requests) is closed; when
  every connection is busy being answered, the newcomer is answered 503 and closed.
- A request's headers must arrive within ``http.header_timeout`` of the connection (or of the
  first byte after the previous answer), its body within ``http.body_timeout`` of its headers:
  else ``408`` and the connection is closed. An idle connection is closed after
  ``http.keep_alive``.
- ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are believed from ``http.trusted_proxies`` only
  (uvicorn believes them from 127.0.0.1 by default).

docs/SECURITY.md says what this leaves exposed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http import h11_impl

from watchdog import config

log = logging.getLogger("watchdog.http")

_RLIMIT_WANTED = 1 << 16  # when the hard limit is unlimited: plenty, and what Linux allows


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit (the usual soft limit of 1024 is a
    relic of select(); asyncio uses epoll) and return the soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _RLIMIT_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # not allowed here: keep the soft limit, the cap below follows it
    return soft


def connection_cap(wanted: int, fd_limit: int) -> int:
    """The connections the server holds at once: ``wanted``, but at most half of ``fd_limit``
    (the checks' sockets, the database and the log keep the other half)."""
    return max(1, min(wanted, fd_limit // 2))


def accept_batch(fd_limit: int) -> int:
    """The listen backlog, which is also how many connections asyncio accepts at a time."""
    return max(8, min(128, fd_limit // 8))


def _raw_answer(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Protocol(h11_impl.H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a deadline on a request's headers."""

    max_connections: ClassVar[int] = 256
    header_timeout: ClassVar[float] = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened = self.loop.time()
        self._header_timer: asyncio.TimerHandle | None = None
        self._watch_headers()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _evictable(self) -> bool:
        """Still sending its request (or idle between two): nothing of ours is lost by closing."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and (
            self.cycle is None or self.cycle.response_complete or not self.cycle.response_started
        )

    def _make_room(self) -> None:
        others = [
            c
            for c in self.connections
            if isinstance(c, _Protocol)
            and c is not self
            and not c.transport.is_closing()
            and c._evictable()
        ]
        if not others:
            log.warning("http_refused reason=too_many_connections limit=%d", self.max_connections)
            self._answer_and_close(503, "Service Unavailable", "too many connections")
            return
        oldest = min(others, key=lambda c: c._opened)
        log.debug("http_connection_closed reason=connection_cap client=%r", oldest.client)
        oldest.transport.abort()

    def _watch_headers(self) -> None:
        if self.transport.is_closing():
            return
        if not self._awaiting_headers():
            self._stop_header_timer()
        elif self._header_timer is None and self.timeout_keep_alive_task is None:
            # (idle after an answer, the keep-alive timer runs instead)
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._awaiting_headers() and not self.transport.is_closing():
            self._answer_and_close(408, "Request Timeout", "request headers too slow")

    def _answer_and_close(self, status: int, reason: str, message: str) -> None:
        self.transport.write(_raw_answer(status, reason, message))
        self.transport.close()


class BodyDeadline:
    """ASGI middleware: a request body that has not all arrived ``seconds`` after its headers
    is answered 408 (connection closed); the app sees the client gone (``http.disconnect``)."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        state = {"body_done": False, "answered": False, "started": False}

        async def timed_receive() -> Any:
            if state["body_done"] or state["answered"]:
                return await receive()  # after the body: waiting for a disconnect is not bounded
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                state["answered"] = True
                if not state["started"]:
                    log.info("http_body_timeout path=%s seconds=%s", scope["path"], self.seconds)
                    await _send_408(send)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def guarded_send(message: Any) -> None:
            if state["answered"]:
                return  # the 408 went out: the app's own answer has no one to go to
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, timed_receive, guarded_send)


async def _send_408(send: Any) -> None:
    body = json.dumps({"error": "request body too slow"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 408,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def uvicorn_config(app: Any, settings: config.HttpSettings) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` under ``settings``' limits; raises the process's
    soft limit on open files first (``raise_fd_limit``) and caps connections below it."""
    fd_limit = raise_fd_limit()
    cap = connection_cap(settings.max_connections, fd_limit)
    if cap < settings.max_connections:
        log.warning(
            "http_connections_capped max_connections=%d limit=%d open_files_limit=%d",
            settings.max_connections,
            cap,
            fd_limit,
        )
    protocol = type(
        "Protocol",
        (_Protocol,),
        {"max_connections": cap, "header_timeout": settings.header_timeout},
    )
    trusted = list(settings.trusted_proxies)
    return uvicorn.Config(
        BodyDeadline(app, settings.body_timeout),
        http=protocol,
        log_config=None,
        access_log=False,
        lifespan="off",
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        # asyncio accepts up to `backlog` connections in a row before any of them can be closed:
        # a small batch keeps a burst of connections below the file-descriptor limit too
        backlog=accept_batch(fd_limit),
        timeout_keep_alive=max(1, round(settings.keep_alive)),
        h11_max_incomplete_event_size=16 * 1024,  # headers past 16 KiB: 400, the connection closed
    )
