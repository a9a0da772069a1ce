"""A fault-injecting HTTP proxy on 127.0.0.1, in front of a real registry.

By default it forwards every request unchanged. Rules, matched by method and path regex (the
first matching live rule wins), make it answer a given status instead, wait first, drop the
connection, or forward and then rewrite the upstream's answer — for N requests or forever.

It runs in threads, so it serves just the same whether the test is sync or async, and one
slow rule never blocks the event loop of the client under test.

Extending it (truncation, lies, huge bodies): give a rule a ``transform`` that receives the
upstream's :class:`Answer` and returns the one to send, or an ``action`` that writes to the
socket itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import json
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclasses.dataclass
class Answer:
    """A response: status, headers (ordered, repeatable) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def set_header(self, name: str, value: str | None) -> None:
        """Replace every ``name`` header with one ``value`` (or remove them when None)."""
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        if value is not None:
            self.headers.append((name, value))


@dataclasses.dataclass
class Seen:
    """A request as the proxy received it (headers lower-cased), and the status it answered."""

    method: str
    path: str  # path and query
    status: int | None  # None when the connection was dropped (or an action answered)
    headers: dict[str, str]

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)


Transform = Callable[[Answer, Seen], Answer]


@dataclasses.dataclass
class Rule:
    """What to do with matching requests. With no ``status``, ``drop`` or ``action``: forward."""

    method: str | None
    path: re.Pattern[str]
    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    times: int | None = None  # None: forever
    delay: float = 0.0
    drop: bool = False
    transform: Transform | None = None
    action: Callable[[http.server.BaseHTTPRequestHandler], None] | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path.search(path) is not None


class FaultProxy:
    """Forwards to ``upstream`` (``host:port``, plain HTTP) unless a rule says otherwise."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests it was handling at once (since reset)
        self._stopping = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- rules ---------------------------------------------------------------------------------

    def add(
        self,
        method: str | None,
        path: str,
        *,
        status: int | None = None,
        body: bytes | str = b"",
        headers: dict[str, str] | None = None,
        times: int | None = None,
        delay: float = 0.0,
        drop: bool = False,
        transform: Transform | None = None,
        action: Callable[[http.server.BaseHTTPRequestHandler], None] | None = None,
    ) -> Rule:
        """Add a rule for ``method`` (None: any) and ``path`` (a regex searched in the path+query)."""
        rule = Rule(
            method=method,
            path=re.compile(path),
            status=status,
            body=body.encode() if isinstance(body, str) else body,
            headers=dict(headers or {}),
            times=times,
            delay=delay,
            drop=drop,
            transform=transform,
            action=action,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def fail(self, method: str | None, path: str, status: int, **kwargs: Any) -> Rule:
        """Shorthand: answer ``status`` (with ``body``, ``headers``) instead of forwarding."""
        return self.add(method, path, status=status, **kwargs)

    def rewrite_header(
        self, method: str | None, path: str, name: str, value: str | None, **kwargs: Any
    ) -> Rule:
        """Forward, then replace (or with None remove) header ``name`` in the answer."""

        def transform(answer: Answer, request: Seen) -> Answer:
            answer.set_header(name, value)
            return answer

        return self.add(method, path, transform=transform, **kwargs)

    def reset(self) -> None:
        """Forget every rule and the request log."""
        with self._lock:
            self._rules.clear()
            self.seen.clear()
            self.max_in_flight = self.in_flight

    def count(self, method: str | None = None, path: str = "") -> int:
        """How many requests matching ``method`` and the ``path`` regex reached the proxy."""
        pattern = re.compile(path)
        with self._lock:
            return sum(
                1
                for s in self.seen
                if (method is None or s.method == method) and pattern.search(s.path)
            )

    def _take(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    return rule
        return None

    def _log(self, method: str, path: str, status: int | None, headers: dict[str, str]) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, status, headers))

    # --- serving -------------------------------------------------------------------------------

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> Answer:
        host, _, port = self.upstream.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in headers:
                if key.lower() in HOP_BY_HOP or key.lower() == "content-length":
                    continue
                if key.lower() == "host":
                    value = self.upstream
                conn.putheader(key, value)
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return Answer(resp.status, list(resp.getheaders()), data)
        finally:
            conn.close()

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # an idle keep-alive connection does not hold a thread for long

            def _handle(self) -> None:
                with proxy._lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    self._handle_counted()
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1

            def _handle_counted(self) -> None:
                method = self.command
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                plain_headers = {k.lower(): v for k, v in self.headers.items()}
                rule = proxy._take(method, self.path)
                # interruptible, so that stopping the proxy does not wait for long delays
                if rule is not None and rule.delay and proxy._stopping.wait(rule.delay):
                    self.close_connection = True
                    return
                if rule is not None and rule.action is not None:
                    proxy._log(method, self.path, None, plain_headers)
                    rule.action(self)
                    return
                if rule is not None and rule.drop:
                    proxy._log(method, self.path, None, plain_headers)
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if rule is not None and rule.status is not None:
                    answer = Answer(rule.status, list(rule.headers.items()), rule.body)
                    if answer.header("content-type") is None:
                        answer.headers.append(("Content-Type", "text/plain"))
                else:
                    try:
                        answer = proxy._forward(method, self.path, list(self.headers.items()), body)
                    except OSError:
                        answer = Answer(502, [("Content-Type", "text/plain")], b"upstream down")
                    if rule is not None:
                        for key, value in rule.headers.items():
                            answer.set_header(key, value)
                        if rule.transform is not None:
                            answer = rule.transform(
                                answer, Seen(method, self.path, None, plain_headers)
                            )
                proxy._log(method, self.path, answer.status, plain_headers)
                self._write(method, answer)

            def _write(self, method: str, answer: Answer) -> None:
                self.send_response(answer.status)
                has_length = False
                for key, value in answer.headers:
                    lower = key.lower()
                    if lower in HOP_BY_HOP:
                        continue
                    if lower == "content-length":
                        if method == "HEAD":
                            has_length = True
                            self.send_header(key, value)
                        continue
                    self.send_header(key, value)
                if method != "HEAD" or not has_length:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if method != "HEAD":
                    try:
                        self.wfile.write(answer.body)
                    except OSError:
                        self.close_connection = True

            do_GET = _handle
            do_HEAD = _handle
            do_POST = _handle
            do_PUT = _handle
            do_PATCH = _handle
            do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def quote_path(text: str) -> str:
    """``re.escape`` for a literal path fragment in a rule."""
    return re.escape(urllib.parse.quote(text, safe="/:@"))


def paginate_tags(answer: Answer, request: Seen, *, absolute: str | None = None) -> Answer:
    """A transform for ``/tags/list``: honour ``n``/``last`` as the spec says, with a Link.

    distribution 2.8 ignores both (and answers unsorted); this makes it page like newer
    registries do. ``absolute`` (``http://host:port``) makes the Link absolute, not relative.
    """
    if answer.status != 200:
        return answer
    doc = json.loads(answer.body)
    tags = sorted(doc.get("tags") or [])
    n = int((request.query.get("n") or ["100"])[0])
    last = (request.query.get("last") or [None])[0]
    if last is not None:
        tags = [t for t in tags if t > last]
    page, rest = tags[:n], tags[n:]
    answer.body = json.dumps({"name": doc.get("name"), "tags": page}).encode()
    answer.set_header("Content-Type", "application/json")
    answer.set_header("Link", None)
    if rest:
        path = urllib.parse.urlsplit(request.path).path
        query = urllib.parse.urlencode({"n": n, "last": page[-1]})
        answer.set_header("Link", f'<{absolute or ""}{path}?{query}>; rel="next"')
    return answer
