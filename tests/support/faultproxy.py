"""A fault-injecting HTTP proxy on 127.0.0.1, in front of a real registry.

By default it forwards every request unchanged. Rules, matched by method and path regex (the
first matching live rule wins), make it answer a given status instead, wait first, drop the
connection, or forward and then rewrite the upstream's answer — for N requests or forever.

It runs in threads, so it serves just the same whether the test is sync or async, and one
slow rule never blocks the event loop of the client under test.

Extending it: give a rule a ``transform`` that receives the upstream's :class:`Answer` and
returns the one to send, a ``reply`` that makes the answer without asking upstream, or an
``action`` that writes to the socket itself. Ready-made faults (methods below): ``fail`` (any
status), ``rate_limit`` (429 with Retry-After in seconds or as an HTTP date), ``add(delay=...)``,
``add(drop=True)`` (close without answering) and ``add(reset=True)`` (TCP RST), ``truncate``
(fewer bytes than Content-Length), ``cut_json`` (a complete answer whose JSON stops half-way),
``malformed_json``, ``lie_digest`` (a Docker-Content-Digest that disagrees with the body),
``serve_instead`` (another manifest than the one asked for), ``huge`` (a big body with its
length), ``stream`` (an endless or very slow body without a length); any rule with ``every=2``
flaps: it applies to every other matching request and lets the others through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import hashlib
import http.client
import http.server
import json
import re
import socket
import struct
import sys
import threading
import time
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
    # A Content-Length to announce instead of len(body) (truncation); the connection is closed
    # after such an answer, as a server dying mid-body would.
    declared_length: int | None = None

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
    body: bytes = b""  # the request body (what a client PUT or POSTed)
    at: float = dataclasses.field(default_factory=time.time)  # when it was logged (wall clock)

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)


Transform = Callable[[Answer, Seen], Answer]
Reply = Callable[[Seen], Answer]


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
    reset: bool = False  # close with a TCP RST (SO_LINGER 0) instead of answering
    transform: Transform | None = None
    reply: Reply | None = None
    action: Callable[[http.server.BaseHTTPRequestHandler], None] | None = None
    every: int = 1  # 2: applies to the 1st, 3rd, 5th... matching request (flapping)
    hits: int = 0  # matching requests (including those let through by ``every``)
    applied: int = 0  # requests the fault was applied to

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.applied >= self.times:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path.search(path) is not None


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer is what many faults provoke: not worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


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
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
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
        reset: bool = False,
        transform: Transform | None = None,
        reply: Reply | None = None,
        action: Callable[[http.server.BaseHTTPRequestHandler], None] | None = None,
        every: int = 1,
    ) -> Rule:
        """Add a rule for ``method`` (None: any) and ``path`` (a regex searched in the path+query).

        ``times`` counts the requests the rule was applied to; with ``every=N`` only every N-th
        matching request gets the fault and the others are forwarded untouched.
        """
        if every < 1:
            raise ValueError("every must be >= 1")
        rule = Rule(
            method=method,
            path=re.compile(path),
            status=status,
            body=body.encode() if isinstance(body, str) else body,
            headers=dict(headers or {}),
            times=times,
            delay=delay,
            drop=drop,
            reset=reset,
            transform=transform,
            reply=reply,
            action=action,
            every=every,
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

    def rate_limit(
        self,
        method: str | None,
        path: str,
        retry_after: float | None,
        *,
        http_date: bool = False,
        **kwargs: Any,
    ) -> Rule:
        """Answer 429 with ``Retry-After`` in seconds, or (``http_date``) as an HTTP date."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = (
                email.utils.formatdate(time.time() + retry_after, usegmt=True)
                if http_date
                else f"{retry_after:g}"
            )
        body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"rate limited"}]}'
        headers["Content-Type"] = "application/json"
        return self.fail(method, path, 429, headers=headers, body=body, **kwargs)

    def truncate(self, method: str | None, path: str, keep: float = 0.5, **kwargs: Any) -> Rule:
        """Forward, then send only ``keep`` of the body while announcing its full length."""

        def transform(answer: Answer, request: Seen) -> Answer:
            answer.declared_length = len(answer.body)
            answer.body = answer.body[: int(len(answer.body) * keep)]
            return answer

        return self.add(method, path, transform=transform, **kwargs)

    def cut_json(self, method: str | None, path: str, **kwargs: Any) -> Rule:
        """Forward, then cut the body half-way, Content-Length and digest header to match.

        A well-formed HTTP answer whose JSON stops mid-document, "verified" by a header that
        matches the cut bytes: only parsing can tell.
        """

        def transform(answer: Answer, request: Seen) -> Answer:
            answer.body = answer.body[: len(answer.body) // 2]
            if answer.header("docker-content-digest") is not None:
                answer.set_header("Docker-Content-Digest", sha256_digest(answer.body))
            return answer

        return self.add(method, path, transform=transform, **kwargs)

    def malformed_json(self, method: str | None, path: str, **kwargs: Any) -> Rule:
        """Answer 200 with a JSON content type and a body that is not JSON."""
        body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",]'
        return self.fail(
            method, path, 200, body=body, headers={"Content-Type": "application/json"}, **kwargs
        )

    def lie_digest(self, method: str | None, path: str, **kwargs: Any) -> Rule:
        """Forward; a 200's Docker-Content-Digest becomes a digest that is not the body's."""

        def transform(answer: Answer, request: Seen) -> Answer:
            if answer.status == 200:
                real = answer.header("docker-content-digest") or ""
                answer.set_header("Docker-Content-Digest", sha256_digest(b"lie:" + real.encode()))
            return answer

        return self.add(method, path, transform=transform, **kwargs)

    def serve_instead(
        self,
        method: str | None,
        path: str,
        body: bytes,
        media_type: str,
        *,
        header: str = "match",
        **kwargs: Any,
    ) -> Rule:
        """Forward, then answer ``body`` (another, valid manifest) instead of what was asked for.

        ``header``: ``"match"`` sends the digest of ``body`` (a consistent lie), ``"lie"`` keeps
        the digest of what was asked for (or, for an error answer, the digest of something else).
        Applies whatever the upstream answered, 404 included, as a confused cache would.
        """
        if header not in ("match", "lie"):
            raise ValueError("header is 'match' or 'lie'")

        def transform(answer: Answer, request: Seen) -> Answer:
            asked = answer.header("docker-content-digest") if answer.status == 200 else None
            digest = sha256_digest(body)
            if header == "lie":
                digest = asked or sha256_digest(b"asked:" + request.path.encode())
            out = Answer(200, [("Content-Type", media_type)], body)
            out.set_header("Docker-Content-Digest", digest)
            return out

        return self.add(method, path, transform=transform, **kwargs)

    def huge(
        self,
        method: str | None,
        path: str,
        size: int,
        *,
        content_type: str = "application/vnd.oci.image.manifest.v1+json",
        **kwargs: Any,
    ) -> Rule:
        """Answer 200 with a ``size``-byte body (announced by Content-Length)."""
        head, tail = b'{"schemaVersion": 2, "x": "', b'"}'
        body = head + b"a" * max(0, size - len(head) - len(tail)) + tail
        return self.fail(
            method, path, 200, body=body, headers={"Content-Type": content_type}, **kwargs
        )

    def stream(
        self,
        method: str | None,
        path: str,
        *,
        chunk: int = 64 * 1024,
        interval: float = 0.0,
        limit_seconds: float = 30.0,
        content_type: str = "application/vnd.oci.image.manifest.v1+json",
        **kwargs: Any,
    ) -> Rule:
        """Answer 200 and then a body without a length that never ends: ``chunk`` bytes every
        ``interval`` seconds until the client hangs up (or ``limit_seconds``, or the proxy stops).
        """
        proxy = self

        def action(handler: http.server.BaseHTTPRequestHandler) -> None:
            handler.close_connection = True
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n"
            deadline = time.monotonic() + limit_seconds
            try:
                handler.wfile.write(head.encode() + b'{"schemaVersion": 2, "x": "')
                piece = b"a" * chunk
                while time.monotonic() < deadline and not proxy._stopping.is_set():
                    handler.wfile.write(piece)
                    handler.wfile.flush()
                    if interval and proxy._stopping.wait(interval):
                        break
            except OSError:
                pass  # the client hung up: what we wanted

        return self.add(method, path, action=action, **kwargs)

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
                    if (rule.hits - 1) % rule.every:
                        return None  # flapping: this one goes through untouched
                    rule.applied += 1
                    return rule
        return None

    def _log(
        self,
        method: str,
        path: str,
        status: int | None,
        headers: dict[str, str],
        body: bytes = b"",
    ) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, status, headers, body))

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
            # Headers and body go out in separate writes: with Nagle's algorithm on, the body
            # waits for the client's delayed ACK (~40 ms per keep-alive request).
            disable_nagle_algorithm = True

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
                if rule is not None and rule.reset:
                    proxy._log(method, self.path, None, plain_headers)
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        # linger 0: close() sends RST, not FIN (the socket really closes once
                        # the handler's file objects are closed, before any shutdown())
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        self.connection.close()
                    return
                if rule is not None and rule.drop:
                    proxy._log(method, self.path, None, plain_headers)
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if rule is not None and rule.reply is not None:
                    answer = rule.reply(Seen(method, self.path, None, plain_headers))
                elif rule is not None and rule.status is not None:
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
                proxy._log(method, self.path, answer.status, plain_headers, body)
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
                    length = answer.declared_length
                    self.send_header(
                        "Content-Length", str(len(answer.body) if length is None else length)
                    )
                if answer.declared_length is not None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
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


def sha256_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


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
