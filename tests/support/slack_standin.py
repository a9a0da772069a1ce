"""A local HTTP server that stands in for Slack: an Incoming Webhook URL and the Web API.

It records every request slack-sdk sends (path, headers, JSON body) and answers like Slack does,
unless a test scripts other answers first (``fail_next``: 500s, a 429 with ``Retry-After``, a
permanent refusal). ``stop()`` and ``start()`` again keep the port: "Slack was down".

Example::

    with SlackStandIn() as slack:
        settings = SlackSettings(webhook_url=Secret(slack.webhook_url))
        ...
        assert slack.messages()[0]["text"].startswith("tag-watchdog")
"""

from __future__ import annotations

import dataclasses
import http.server
import itertools
import json
import threading
import time
from typing import Any

WEBHOOK_PATH = "/services/T000/B000/standin-webhook-secret"
TOKEN = "xoxb-standin-token-secret"
CHANNEL_ID = "C0STANDIN"


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: Any = None  # dict -> JSON; str -> text
    headers: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class SlackStandIn:
    def __init__(self) -> None:
        self.requests: list[Request] = []  # every request, answered or refused
        self.delivered: list[Request] = []  # requests answered with success
        self.updates: list[Request] = []  # chat.update requests answered with success
        self.ephemerals: list[Request] = []  # chat.postEphemeral requests answered with success
        self._script: list[Answer] = []
        # Seconds between accepting a message (it is in ``delivered``) and answering: the trip
        # back from Slack, during which a crash of the sender cannot know the message went out.
        self.answer_delay = 0.0
        self.in_flight = 0  # requests being handled now
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- control -------------------------------------------------------------------------------

    def start(self) -> SlackStandIn:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                with owner._lock:
                    owner.in_flight += 1
                try:
                    owner._handle(self)
                except OSError:
                    pass  # the sender hung up (or died) before the answer
                finally:
                    with owner._lock:
                        owner.in_flight -= 1

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SlackStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, *answers: Answer) -> None:
        """Answer the next requests with ``answers``, in order, before answering like Slack."""
        with self._lock:
            self._script.extend(answers)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def messages(self) -> list[dict[str, Any]]:
        """The bodies of the messages Slack accepted, in order."""
        with self._lock:
            return [r.body for r in self.delivered]

    # --- serving -------------------------------------------------------------------------------

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_raw": raw.decode(errors="replace")}
        req = Request(h.path, {k.lower(): v for k, v in h.headers.items()}, body)
        with self._lock:
            self.requests.append(req)
            scripted = self._script.pop(0) if self._script else None
        if scripted is not None:
            self._answer(h, scripted)
            return
        if h.path == WEBHOOK_PATH:
            with self._lock:
                self.delivered.append(req)
            if self.answer_delay:
                time.sleep(self.answer_delay)
            self._answer(h, Answer(200, "ok"))
        elif h.path in ("/api/chat.postMessage", "/api/chat.update", "/api/chat.postEphemeral"):
            if req.headers.get("authorization") != f"Bearer {TOKEN}":
                self._answer(h, Answer(200, {"ok": False, "error": "invalid_auth"}))
                return
            if h.path == "/api/chat.postMessage":
                ts = f"1700000000.{next(self._ts):06d}"
                kept = self.delivered
            else:
                ts = str(req.body.get("ts") or f"1700000000.{next(self._ts):06d}")
                kept = self.updates if h.path == "/api/chat.update" else self.ephemerals
            with self._lock:
                kept.append(req)
            self._answer(
                h, Answer(200, {"ok": True, "channel": CHANNEL_ID, "ts": ts, "message": {}})
            )
        else:
            self._answer(h, Answer(404, "no_service"))

    @staticmethod
    def _answer(h: http.server.BaseHTTPRequestHandler, answer: Answer) -> None:
        if isinstance(answer.body, dict):
            data = json.dumps(answer.body).encode()
            ctype = "application/json; charset=utf-8"
        else:
            data = str(answer.body or "").encode()
            ctype = "text/plain; charset=utf-8"
        h.send_response(answer.status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in answer.headers:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
