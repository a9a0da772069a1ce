"""A hostile registry of our own on 127.0.0.1: it answers whatever the test's handler says.

Where the fault proxy (:mod:`tests.support.faultproxy`) bends a real registry's answers, this
server has no registry behind it: a test writes the registry (or the token service, or the
origin a redirect points to) as one function from :class:`Seen` to :class:`Reply`, and reads back
every request it was sent, headers and body included: that is how a test proves a credential
never reached a host it must not reach.

Several servers make several origins: ``HostileServer(handler)`` listens on 127.0.0.1 on a port
of its own (another origin by port); :attr:`HostileServer.foreign_url` names the same socket as
``localhost`` (another host by name, for the "another host" rules). ``tls=True`` serves HTTPS
with a throwaway CA whose file is :attr:`HostileServer.ca_file` (point ``SSL_CERT_FILE`` at it).

Helpers make the usual hostile bodies: :func:`nested_json` (nesting deep enough to blow
Python's recursion limit), :func:`basic_challenge` and :func:`bearer_challenge`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import http.server
import ipaddress
import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    port: int  # the server that received it

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def form(self) -> dict[str, list[str]]:
        """The body as an url-encoded form (a token POST)."""
        return urllib.parse.parse_qs(self.body.decode("utf-8", "replace"))

    def basic_user(self) -> tuple[str, str] | None:
        """``(user, password)`` of a Basic Authorization header, else None."""
        auth = self.authorization or ""
        if not auth.lower().startswith("basic "):
            return None
        user, _, password = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":")
        return user, password


@dataclasses.dataclass
class Reply:
    """What the server answers: status, headers (repeatable) and body."""

    status: int = 200
    body: bytes | str | Any = b""
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


Handler = Callable[[Seen], Reply]


def basic_challenge() -> list[tuple[str, str]]:
    return [("WWW-Authenticate", 'Basic realm="hostile"')]


def bearer_challenge(
    realm: str, service: str = "hostile", scope: str | None = None
) -> list[tuple[str, str]]:
    value = f'Bearer realm="{realm}",service="{service}"'
    if scope:
        value += f',scope="{scope}"'
    return [("WWW-Authenticate", value)]


def redirect(location: str, status: int = 307) -> Reply:
    return Reply(status, b"", [("Location", location)])


def nested_json(depth: int = 100_000, inside: str = "[]") -> bytes:
    """``[[[...]]]`` nested ``depth`` times around ``inside``: valid JSON that no recursive
    parser with Python's default recursion limit can read."""
    return ("[" * depth + inside + "]" * depth).encode()


def nested_object(key: str, depth: int = 100_000) -> bytes:
    """``{"<key>": [[[...]]]}``: an object of the expected shape whose field nests too deep."""
    return b'{"' + key.encode() + b'": ' + nested_json(depth) + b"}"


class HostileServer:
    """An HTTP(S) server on 127.0.0.1 answering every request with ``handler(seen)``.

    ``requests`` records every request in order (thread-safe to read after the exchange).
    Use as a context manager, or ``start()``/``stop()``.
    """

    def __init__(
        self, handler: Handler | None = None, *, tls: bool = False, workdir: Path | None = None
    ) -> None:
        """``handler`` may be set later (``server.handler = ...``), once the test knows the
        URLs of the servers it points to; until then every request gets a 404."""
        self.handler: Handler = handler or (lambda seen: Reply(404, {"errors": []}))
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.tls = tls
        self.ca_file: Path | None = None
        if tls:
            if workdir is None:
                raise ValueError("a TLS server needs a workdir for its certificate")
            self.ca_file = self._make_tls(workdir)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: what RegistrySettings.host takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def foreign_url(self) -> str:
        """This server under another host name (``localhost``): another host to the client."""
        return f"{self.scheme}://localhost:{self.port}"

    def start(self) -> HostileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def seen(self, path_contains: str = "") -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if path_contains in r.path]

    def _make_tls(self, workdir: Path) -> Path:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile test server")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        cert_file = workdir / f"hostile-{self.port}.pem"
        key_file = workdir / f"hostile-{self.port}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_file, key_file)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        return cert_file

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                split = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(
                    method=self.command,
                    path=split.path,
                    query=urllib.parse.parse_qs(split.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    port=server.port,
                )
                with server._lock:
                    server.requests.append(seen)
                reply = server.handler(seen)
                payload = reply.payload()
                self.send_response(reply.status)
                names = {k.lower() for k, _ in reply.headers}
                for name, value in reply.headers:
                    self.send_header(name, value)
                if "content-type" not in names:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
