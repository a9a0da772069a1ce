"""A hostile "registry" on 127.0.0.1 that drips its answer: one byte of the response headers every
``interval`` seconds, never finishing them.

Each byte arrives well within any read timeout, so only a wall-clock deadline ends an exchange
with it. It answers every connection the same way, whatever the request, until stopped; it counts
the requests it saw. Threads (one per connection), so it drips the same whether the test is sync or
async, and it never blocks the event loop of the client under test.

    with DrippingServer(interval=0.5) as slow:
        settings = config.RegistrySettings(host=slow.host, insecure=True, timeout=2.0)
"""

from __future__ import annotations

import socket
import socketserver
import threading
from typing import Any

# What the drip spells, byte by byte: a status line and headers that never end.
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Drip: " + b"." * 100_000


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client giving up mid-drip is the point, not an error


class DrippingServer:
    """Start with ``start()`` or as a context manager; ``host`` is ``127.0.0.1:<port>``."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> DrippingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> DrippingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler_class(self) -> type[socketserver.BaseRequestHandler]:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(5.0)
                try:
                    head = b""
                    while b"\r\n\r\n" not in head and len(head) < 65536:
                        chunk = sock.recv(4096)
                        if not chunk:
                            return
                        head += chunk
                    with outer._lock:
                        outer.requests += 1
                    for i in range(len(_HEAD)):
                        if outer._stop.wait(outer.interval):
                            return
                        sock.sendall(_HEAD[i : i + 1])
                except OSError:
                    return  # the client gave up: its deadline worked

        return Handler
