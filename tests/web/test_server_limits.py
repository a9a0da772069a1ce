"""HTTP server limits (web.server): slow or numerous clients cannot take the file descriptors the
checks need, a request must arrive in time (408 else), and proxy headers are believed only from
the configured proxies."""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import clean_env, http_status, wait_for
from tests.support.registry import free_port
from watchdog import config, errors
from watchdog.web import server as web_server

FD_LIMIT = 256  # the daemon's, soft and hard: it cannot raise it
CLIENTS = 600  # slow clients, far more than the daemon could hold descriptors for
TRICKLE = b"POST /slack/actions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"


def _ok_checks(port: int) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return -1.0
    found = re.findall(r'^tag_watchdog_checks_total\{[^}]*result="ok"[^}]*\} (\S+)$', text, re.M)
    return sum(float(v) for v in found)


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _open_slow_clients(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, opened at once (the kernel retries the SYNs a full accept queue
    drops), each having sent its headers and one byte of its body."""
    pending = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        pending.append(s)
    opened = []
    deadline = time.monotonic() + 20
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], pending, [], 0.5)
        for s in writable:
            pending.remove(s)
            try:
                s.sendall(TRICKLE + b"x")
                opened.append(s)
            except OSError:
                s.close()
    for s in pending:
        s.close()
    return opened


def _still_open(clients: list[socket.socket]) -> list[socket.socket]:
    """The clients the daemon has not closed, each sent one more byte of its body."""
    alive = []
    for s in clients:
        try:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                if s.recv(1 << 16) == b"":
                    raise ConnectionResetError
            s.send(b"x")
            alive.append(s)
        except OSError:
            s.close()
    return alive


@pytest.mark.registry
def test_slow_clients_leave_healthz_and_the_checks_their_file_descriptors(
    tmp_path: Path, registry: support_registry.RegistryServer, repo: str, pusher: images.Pusher
) -> None:
    pusher.image(repo, "1.0.0", seed="a")
    port = free_port()
    path = tmp_path / "c.yaml"
    path.write_text(
        f"database_url: sqlite:///{tmp_path}/w.db\ninterval: 1s\njitter: 0s\n"
        f"http: {{listen: '127.0.0.1:{port}', header_timeout: 60s, body_timeout: 60s}}\n"
        f"watches: ['{registry.host}/{repo}']\n"
    )
    log = (tmp_path / "log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "watchdog", "run", "-c", str(path)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=log,
        preexec_fn=_low_fd_limit,  # setrlimit only: safe between fork and exec
    )
    clients: list[socket.socket] = []
    try:
        wait_for(lambda: _ok_checks(port) >= 1, what="the first successful check")
        clients = _open_slow_clients(port, CLIENTS)
        assert len(clients) > FD_LIMIT  # all connected: the daemon accepted them (and then ...)
        before = _ok_checks(port)
        assert before >= 1  # /metrics answered in the flood
        assert http_status(port, "/healthz") == 200
        wait_for(lambda: _ok_checks(port) >= before + 2, what="checks succeeding in the flood")

        # ... holds at most half its descriptors for HTTP (and a backlog the kernel holds for
        # it): the oldest were closed
        deadline = time.monotonic() + 30
        while len(clients := _still_open(clients)) > FD_LIMIT // 2 + web_server.accept_batch(
            FD_LIMIT
        ):
            assert time.monotonic() < deadline, f"{len(clients)} slow clients still connected"
            time.sleep(0.2)
        assert clients, "the slow clients were all dropped: the flood did not hold"
        assert http_status(port, "/healthz") == 200
    finally:
        for s in clients:
            s.close()
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
    text = (tmp_path / "log").read_text()
    assert "Too many open files" not in text and "check_failed" not in text, text[-3000:]
    assert "http_connections_capped" in text  # said at start: the 256 asked for became 128


# --- in process: a real uvicorn on a thread, real sockets -----------------------------------


async def _echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {"client": request.client.host if request.client else None, "bytes": len(body)}
    )


@contextlib.contextmanager
def _serving(**http: object) -> Iterator[int]:
    port = free_port()
    settings = config.HttpSettings.model_validate({"listen": f"127.0.0.1:{port}", **http})
    app = Starlette(routes=[Route("/echo", _echo, methods=["GET", "POST"])])
    server = uvicorn.Server(web_server.uvicorn_config(app, settings))
    server.config.host, server.config.port = "127.0.0.1", port
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="the server")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _answer_of(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def test_a_request_too_slow_to_arrive_is_answered_408_and_closed() -> None:
    with _serving(header_timeout="1s", body_timeout="1s") as port:
        started = time.monotonic()
        silent = socket.create_connection(("127.0.0.1", port))  # connects, sends nothing
        half_headers = socket.create_connection(("127.0.0.1", port))
        half_headers.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
        half_body = socket.create_connection(("127.0.0.1", port))
        half_body.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        for sock in (silent, half_headers, half_body):
            answer = _answer_of(sock, timeout=10)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"connection: close" in answer.lower()
            sock.close()
        assert time.monotonic() - started < 8
        # a request that arrives in time is served as before, a body in pieces too
        whole = socket.create_connection(("127.0.0.1", port))
        whole.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        time.sleep(0.3)
        whole.sendall(b"cd")
        assert b'"bytes":4' in _answer_of(whole, timeout=0.8)
        whole.close()


@pytest.mark.parametrize(
    ("trusted", "seen"),
    [((), "127.0.0.1"), (("127.0.0.0/8",), "203.0.113.9"), (("10.0.0.0/8",), "127.0.0.1")],
)
def test_forwarded_for_is_believed_from_trusted_proxies_only(
    trusted: tuple[str, ...], seen: str
) -> None:
    with _serving(trusted_proxies=list(trusted)) as port:
        answer = httpx.get(
            f"http://127.0.0.1:{port}/echo",
            headers={"X-Forwarded-For": "203.0.113.9"},
            timeout=5,
        )
    assert answer.json()["client"] == seen


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        config.from_mapping({"http": {"trusted_proxies": ["proxy.local", "10.0.0.1/8"]}})
    assert "http.trusted_proxies" in str(caught.value) and "proxy.local" in str(caught.value)
