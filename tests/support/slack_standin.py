"""A local HTTP server that stands in for Slack: an Incoming Webhook URL and the Web API.

It records every request slack-sdk sends (path, headers, JSON body) and answers like Slack does,
unless a test scripts other answers first (``fail_next``: 500s, a 429 with ``Retry-After``, a
permanent refusal). ``stop()`` and ``start()`` again keep the port: "Slack was down".

Bot mode keeps the channel's messages (``posted``: ts, thread_ts, text, metadata) and answers
``conversations.history`` and ``conversations.replies`` from them as Slack does: history newest
first and without thread replies, replies oldest first starting with the parent; ``oldest`` /
``latest`` (exclusive unless ``inclusive``), ``limit`` (``max_page`` caps it, as Slack caps some
apps at 15), ``cursor`` paging with ``has_more`` and ``response_metadata.next_cursor``; message
``metadata`` only with ``include_all_metadata``. The token's ``scopes`` decide what it may do: a
method whose scope is missing answers ``missing_scope`` with ``needed`` and ``provided``. Every
``ts`` comes from ``clock`` (real time unless a test shares its fake clock), strictly increasing.

Example::

    with SlackStandIn() as slack:
        settings = SlackSettings(webhook_url=Secret(slack.webhook_url))
        ...
        assert slack.messages()[0]["text"].startswith("tag-watchdog")
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

WEBHOOK_PATH = "/services/T000/B000/standin-webhook-secret"
TOKEN = "xoxb-standin-token-secret"
CHANNEL_ID = "C0STANDIN"  # a public channel: reading it needs channels:history
ALL_SCOPES = frozenset({"chat:write", "channels:history", "groups:history"})
# The scope each Web API method needs of a bot token (for CHANNEL_ID, a public channel).
NEEDED = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    "conversations.history": "channels:history",
    "conversations.replies": "channels:history",
}


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: Any = None  # dict -> JSON; str -> text
    headers: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]  # the JSON body, or the form's (or query string's) arguments


class SlackStandIn:
    def __init__(self) -> None:
        self.requests: list[Request] = []  # every request, answered or refused
        self.delivered: list[Request] = []  # requests answered with success
        self.updates: list[Request] = []  # chat.update requests answered with success
        self.ephemerals: list[Request] = []  # chat.postEphemeral requests answered with success
        self.lookups: list[Request] = []  # conversations.history/.replies requests, all of them
        # the channel as Slack keeps it: every message chat.postMessage accepted, oldest first
        self.posted: list[dict[str, Any]] = []
        self.scopes: set[str] = set(ALL_SCOPES)  # what the bot token was granted
        self.max_page = 999  # Slack's cap on ``limit`` (15 for some apps since 2025)
        self.clock: Callable[[], float] = time.time
        self._last_ts = 0.0
        self._script: list[tuple[Answer, str | None]] = []  # (answer, only for this method)
        # Seconds between accepting a message (it is in ``delivered``) and answering: the trip
        # back from Slack, during which a crash of the sender cannot know the message went out.
        self.answer_delay = 0.0
        self.in_flight = 0  # requests being handled now
        self._lock = threading.Lock()
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

            do_GET = do_POST  # Slack takes GET with a query string too

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

    def fail_next(self, *answers: Answer, method: str | None = None) -> None:
        """Answer the next requests with ``answers``, in order, before answering like Slack;
        with ``method`` (e.g. ``"chat.postMessage"``) only the requests to that method."""
        with self._lock:
            self._script.extend((a, method) for a in answers)

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
        path, _, query = h.path.partition("?")
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        if len(raw) < length:
            # the sender hung up mid-body (a daemon killed while sending): Slack takes nothing
            # from a request it never received whole, and there is no one left to answer
            return
        ctype = h.headers.get("Content-Type") or ""
        try:
            if ctype.startswith("application/x-www-form-urlencoded"):
                # slack-sdk sends the read methods' arguments as a form (Slack takes both)
                body = dict(urllib.parse.parse_qsl(raw.decode()))
            else:
                body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_raw": raw.decode(errors="replace")}
        if query:
            body = {**dict(urllib.parse.parse_qsl(query)), **body}
        req = Request(path, {k.lower(): v for k, v in h.headers.items()}, body)
        method = path.removeprefix("/api/")
        with self._lock:
            self.requests.append(req)
            if method.startswith("conversations."):
                self.lookups.append(req)
            scripted = None
            for i, (answer, only) in enumerate(self._script):
                if only is None or only == method:
                    scripted = answer
                    del self._script[i]
                    break
        if scripted is not None:
            self._answer(h, scripted)
            return
        if path == WEBHOOK_PATH:
            with self._lock:
                self.delivered.append(req)
            if self.answer_delay:
                time.sleep(self.answer_delay)
            self._answer(h, Answer(200, "ok"))
        elif method in NEEDED:
            if req.headers.get("authorization") != f"Bearer {TOKEN}":
                self._answer(h, Answer(200, {"ok": False, "error": "invalid_auth"}))
                return
            if NEEDED[method] not in self.scopes:
                refusal = {
                    "ok": False,
                    "error": "missing_scope",
                    "needed": NEEDED[method],
                    "provided": ",".join(sorted(self.scopes)),
                }
                self._answer(h, Answer(200, refusal))
            elif method.startswith("conversations."):
                self._answer(h, Answer(200, self._conversation(method, req.body)))
            elif method == "chat.postMessage":
                with self._lock:
                    ts = self._next_ts()
                    self.delivered.append(req)
                    self.posted.append(
                        {
                            "type": "message",
                            "ts": ts,
                            "thread_ts": req.body.get("thread_ts"),
                            "text": req.body.get("text"),
                            "metadata": req.body.get("metadata"),
                        }
                    )
                if self.answer_delay:
                    time.sleep(self.answer_delay)
                self._answer(
                    h, Answer(200, {"ok": True, "channel": CHANNEL_ID, "ts": ts, "message": {}})
                )
            else:
                with self._lock:
                    ts = str(req.body.get("ts") or self._next_ts())
                    (self.updates if method == "chat.update" else self.ephemerals).append(req)
                self._answer(
                    h, Answer(200, {"ok": True, "channel": CHANNEL_ID, "ts": ts, "message": {}})
                )
        else:
            self._answer(h, Answer(404, "no_service"))

    def _next_ts(self) -> str:
        # Slack's ts: seconds.microseconds of its clock, unique within a channel
        self._last_ts = max(round(self.clock(), 6), round(self._last_ts + 1e-6, 6))
        return f"{self._last_ts:.6f}"

    def _conversation(self, method: str, q: dict[str, Any]) -> dict[str, Any]:
        """Answer conversations.history or conversations.replies like Slack."""
        if q.get("channel") != CHANNEL_ID:
            return {"ok": False, "error": "channel_not_found"}
        inclusive = str(q.get("inclusive", "")).lower() in ("1", "true")
        oldest, latest = float(q.get("oldest") or 0), float(q.get("latest") or 9e12)

        def within(m: dict[str, Any]) -> bool:
            ts = float(m["ts"])
            if inclusive:
                return oldest <= ts <= latest
            return oldest < ts < latest

        with self._lock:
            posted = [dict(m) for m in self.posted]
        if method == "conversations.history":
            # parents and unthreaded messages only, newest first
            chosen = [m for m in reversed(posted) if not m["thread_ts"] and within(m)]
        else:
            parent = str(q.get("ts") or "")
            if not any(m["ts"] == parent for m in posted):
                return {"ok": False, "error": "thread_not_found"}
            # the parent, then its replies, oldest first
            chosen = [m for m in posted if (m["ts"] == parent or m["thread_ts"] == parent)]
            chosen = [m for m in chosen if m["ts"] == parent or within(m)]
        if str(q.get("include_all_metadata", "")).lower() not in ("1", "true"):
            for m in chosen:
                m.pop("metadata", None)
        for m in chosen:
            if m.get("metadata") is None:
                m.pop("metadata", None)
            if not m["thread_ts"]:
                del m["thread_ts"]
        limit = max(1, min(int(q.get("limit") or 100), self.max_page))
        start = int(str(q.get("cursor") or "offset:0").split(":", 1)[1])
        page = chosen[start : start + limit]
        more = start + limit < len(chosen)
        return {
            "ok": True,
            "messages": page,
            "has_more": more,
            "response_metadata": {"next_cursor": f"offset:{start + limit}" if more else ""},
        }

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
