"""A real ``docker-registry`` (CNCF distribution) for tests, open, htpasswd or token-authenticated,
over plain HTTP or TLS (a certificate from a private CA made in the test, optionally requiring a
client certificate from it).

Each server gets its own config, storage directory and free 127.0.0.1 port. The token variant
trusts a tiny in-test JWT issuer (ES256, key in ``x5c``) that grants per scope and can be told
to deny or to require basic credentials.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import http.server
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import ports
from tests.support import tls as support_tls
from watchdog import config

BINARY_NAMES = ("docker-registry", "registry")
SERVICE = "tag-watchdog-test-registry"
ISSUER = "tag-watchdog-test-issuer"


def find_binary() -> str | None:
    """The distribution registry binary, or None (tests needing it then skip)."""
    explicit = os.environ.get("WATCHDOG_TEST_REGISTRY_BIN")
    if explicit:
        return explicit
    for name in BINARY_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    """A free 127.0.0.1 port for a server in another process, claimed for this test process
    (tests/support/ports.py: no race between pytest-xdist workers)."""
    return ports.free_port()


def htpasswd_line(username: str, password: str) -> str:
    """One htpasswd line with a bcrypt hash (cost 4: tests need speed, not strength).

    Uses the ``bcrypt`` package; without it, libcrypt through the (deprecated) stdlib ``crypt``.
    """
    try:
        import bcrypt  # test-only dependency
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if not hashed or not hashed.startswith("$2"):
            raise RuntimeError("neither the bcrypt package nor a bcrypt-capable libcrypt") from None
        return f"{username}:{hashed}"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{username}:{hashed}"


# --- the token issuer ----------------------------------------------------------------------------


@dataclasses.dataclass
class TokenRequest:
    method: str
    user: str | None  # the basic-auth user, None when anonymous
    scopes: list[str]
    service: str | None
    user_agent: str | None = None


GrantPolicy = Callable[[str | None, str, str, list[str]], list[str]]


def default_grant(user: str | None, type_: str, name: str, actions: list[str]) -> list[str]:
    """Authenticated users get what they ask; anonymous users get nothing (a useless token)."""
    return list(actions) if user is not None else []


class TokenIssuer:
    """An OAuth2-ish token service on 127.0.0.1 issuing ES256 JWTs for the test registry.

    Knobs (reset() restores them): ``users`` (basic credentials it accepts), ``require_auth``
    (anonymous requests get 401), ``deny`` (every request gets 401), ``grant`` (policy:
    user, type, name, actions -> granted actions), ``expires_in``, ``token_field`` ("token" or
    "access_token"). ``requests`` records every request it answered.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tag-watchdog test issuer")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = workdir / "issuer.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()
        self._lock = threading.Lock()
        self.users: dict[str, str] = {}
        # OAuth2 refresh tokens (docker's "identitytoken") it accepts by POST, -> user
        self.refresh_tokens: dict[str, str] = {}
        self.reset()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def reset(self) -> None:
        with self._lock:
            self.require_auth = False
            self.deny = False
            self.grant: GrantPolicy = default_grant
            self.expires_in: int | None = 300
            self.token_field = "token"
            self.requests: list[TokenRequest] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def mint(self, access: list[dict[str, Any]], subject: str = "test-admin") -> str:
        """A valid token for ``access`` entries, without going through HTTP (for test setup)."""
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,  # distribution 2.8 wants a string here, not a list
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": [self._x5c]})

    def admin_token(self, repository: str) -> str:
        return self.mint(
            [{"type": "repository", "name": repository, "actions": ["pull", "push", "delete"]}]
        )

    def _answer(
        self, method: str, query: str, authorization: str | None, user_agent: str | None = None
    ) -> tuple[int, bytes]:
        params = urllib.parse.parse_qs(query)
        scopes = [s for value in params.get("scope", []) for s in value.split()]
        user: str | None = None
        if method == "POST":
            # the OAuth2 refresh-token grant; the form arrives as ``query``
            refresh = (params.get("refresh_token") or [""])[0]
            if (params.get("grant_type") or [""])[0] != "refresh_token":
                return 400, b'{"details":"unsupported grant_type"}'
            if refresh not in self.refresh_tokens:
                self._record(method, None, scopes, params, user_agent)
                return 401, b'{"details":"invalid refresh token"}'
            user = self.refresh_tokens[refresh]
        elif authorization and authorization.lower().startswith("basic "):
            try:
                raw = base64.b64decode(authorization.split(" ", 1)[1]).decode()
            except ValueError:
                return 400, b'{"details":"bad basic header"}'
            name, _, password = raw.partition(":")
            if self.users.get(name) != password:
                self._record(method, name, scopes, params, user_agent)
                return 401, b'{"details":"wrong username or password"}'
            user = name
        self._record(method, user, scopes, params, user_agent)
        if self.deny or (self.require_auth and user is None):
            return 401, b'{"details":"access denied"}'
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            type_, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            granted = self.grant(user, type_, name, actions)
            access.append({"type": type_, "name": name, "actions": granted})
        token = self.mint(access, subject=user or "")
        body: dict[str, Any] = {self.token_field: token}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return 200, json.dumps(body).encode()

    def _record(
        self,
        method: str,
        user: str | None,
        scopes: list[str],
        params: dict[str, list[str]],
        user_agent: str | None = None,
    ) -> None:
        with self._lock:
            service = (params.get("service") or [None])[0]
            self.requests.append(TokenRequest(method, user, scopes, service, user_agent))

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/token":
                    self._send(404, b"not here")
                    return
                status, body = issuer._answer(
                    "GET",
                    url.query,
                    self.headers.get("Authorization"),
                    self.headers.get("User-Agent"),
                )
                self._send(status, body)

            def do_POST(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = self.rfile.read(length).decode() if length else ""
                if url.path != "/token":
                    self._send(404, b"not here")
                    return
                status, body = issuer._answer("POST", form, None, self.headers.get("User-Agent"))
                self._send(status, body)

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


# --- the registry ----------------------------------------------------------------------------


class RegistryServer:
    """``docker-registry serve`` on a free 127.0.0.1 port with its own config and storage.

    ``mode`` is "open", "basic" (htpasswd: ``username``/``password``) or "token" (trusts
    ``issuer``; ``username``/``password`` are the issuer's basic credentials).
    """

    def __init__(
        self,
        workdir: Path,
        mode: str = "open",
        *,
        username: str = "watchdog",
        password: str | None = None,
        binary: str | None = None,
        extra_config: str = "",
        tls: support_tls.PrivateCA | None = None,
        require_client_cert: bool = False,
    ) -> None:
        """``extra_config``: YAML appended to the generated config (e.g. ``notifications:``).
        ``tls``: serve HTTPS with a server certificate from that CA; ``require_client_cert``:
        refuse clients without a certificate from it (distribution's ``http.tls.clientcas``)."""
        if mode not in ("open", "basic", "token"):
            raise ValueError(f"unknown registry mode {mode!r}")
        self.mode = mode
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or find_binary() or "docker-registry"
        self.username = username if mode != "open" else None
        self.password = (password or f"pw-{uuid.uuid4().hex}") if mode != "open" else None
        self.issuer: TokenIssuer | None = None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = workdir / "registry.log"
        self.extra_config = extra_config
        if require_client_cert and tls is None:
            raise ValueError("require_client_cert needs tls")
        self.ca = tls
        self.require_client_cert = require_client_cert
        self.server_pair = tls.server(f"server-{uuid.uuid4().hex[:8]}") if tls else None
        # the certificate the tests' own clients (pushers, the start probe) present
        self.client_pair = tls.client(f"client-{uuid.uuid4().hex[:8]}") if tls else None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://{self.host}"

    def ssl_context(self, *, client_cert: bool = True) -> ssl.SSLContext | bool:
        """For plain httpx: trusts this server's CA (and presents a client certificate, when it
        requires one and ``client_cert``); True (the default trust) without TLS."""
        if self.ca is None:
            return True
        context = ssl.create_default_context(cafile=str(self.ca.ca_file))
        if client_cert and self.require_client_cert and self.client_pair is not None:
            context.load_cert_chain(str(self.client_pair.cert), str(self.client_pair.key))
        return context

    def settings(self, **overrides: Any) -> config.RegistrySettings:
        """RegistrySettings for this server: plain HTTP, its credentials, no docker config."""
        values: dict[str, Any] = {
            "host": self.host,
            "username": self.username,
            "password": config.Secret(self.password) if self.password else None,
            "insecure": self.ca is None,
            "timeout": 5.0,
            "use_docker_config": False,
        }
        values.update(overrides)
        return config.RegistrySettings(**values)

    def push_auth(self, repository: str) -> dict[str, str]:
        """Headers with which plain httpx may push to and delete from ``repository``."""
        if self.mode == "basic":
            raw = f"{self.username}:{self.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        if self.mode == "token":
            assert self.issuer is not None
            return {"Authorization": "Bearer " + self.issuer.admin_token(repository)}
        return {}

    def _config(self) -> str:
        storage = self.workdir / "storage"
        storage.mkdir(exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {storage}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: tag-watchdog-tests",
        ]
        if self.server_pair is not None and self.ca is not None:
            lines += [
                "  tls:",
                f"    certificate: {self.server_pair.cert}",
                f"    key: {self.server_pair.key}",
            ]
            if self.require_client_cert:
                lines += ["    clientcas:", f"      - {self.ca.ca_file}"]
        if self.mode == "basic":
            assert self.username and self.password
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(htpasswd_line(self.username, self.password) + "\n")
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: tag-watchdog-test",
                f"    path: {htpasswd}",
            ]
        elif self.mode == "token":
            assert self.issuer is not None
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.issuer.realm}",
                f"    service: {SERVICE}",
                f"    issuer: {ISSUER}",
                f"    rootcertbundle: {self.issuer.cert_path}",
            ]
        return "\n".join(lines) + "\n" + self.extra_config

    def start(self, timeout: float = 15.0) -> RegistryServer:
        """Start the server and return once ``/v2/`` answers (any HTTP status).

        The first start picks a free port; a restart after ``stop()`` comes back on the SAME
        port with the same storage, so a client made before the stop reaches it again.
        """
        if self.running:
            return self
        if self.mode == "token" and self.issuer is None:
            self.issuer = TokenIssuer(self.workdir)
            assert self.username and self.password
            self.issuer.users[self.username] = self.password
            self.issuer.start()
        last_error = ""
        restart = self.port != 0
        # A fresh free port can be taken between probing and binding: try another. A restart
        # must keep its port (clients hold the address), so it only retries the same one.
        for _ in range(3):
            if not restart:
                self.port = free_port()
            cfg = self.workdir / "config.yml"
            cfg.write_text(self._config())
            log = self._log.open("ab")
            self._proc = subprocess.Popen(
                [self.binary, "serve", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    last_error = self._log.read_text(errors="replace")[-2000:]
                    self._proc = None
                    if restart:
                        time.sleep(0.2)  # the old process's socket may still be closing
                    break
                try:
                    httpx.get(self.url + "/v2/", timeout=1.0, verify=self.ssl_context())
                    return self
                except httpx.TransportError:
                    time.sleep(0.01)
            else:
                self.stop()
                raise RuntimeError(f"docker-registry did not answer within {timeout}s")
        raise RuntimeError(f"docker-registry failed to start: {last_error}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s). Idempotent. The issuer stays up."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def garbage_collect(self, *, delete_untagged: bool = True) -> str:
        """Stop the server, run ``docker-registry garbage-collect [--delete-untagged]`` on its
        storage (distribution wants it stopped), start it again on the same port; return GC's
        output. Untagged manifests go, and every blob no manifest references any more."""
        self.stop()
        args = [self.binary, "garbage-collect"]
        if delete_untagged:
            args.append("--delete-untagged")
        done = subprocess.run(
            [*args, str(self.workdir / "config.yml")],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.workdir,
        )
        self.start()
        if done.returncode != 0:
            raise RuntimeError(
                f"garbage-collect failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout + done.stderr

    def wipe_storage(self) -> None:
        """Stop the server, delete everything it stored, start it again (same port): every
        repository, manifest and blob is gone."""
        self.stop()
        shutil.rmtree(self.workdir / "storage", ignore_errors=True)
        self.start()

    def close(self) -> None:
        self.stop()
        if self.issuer is not None:
            self.issuer.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
