"""Free TCP ports for servers a test starts in another process, with no race between test
processes (pytest-xdist workers, or two suites running side by side on one machine).

"Bind port 0, read the port, close, let the subprocess bind it" has a window in which another
process can take the port: a kernel-chosen port for someone else's listener, or the source port of
any outgoing connection. So ports are handed out from a range BELOW the kernel's ephemeral range
(which the kernel never hands out by itself), and each one is claimed with an ``flock`` on
``<tmp>/tag-watchdog-test-ports/<port>.lock`` that the claiming process holds until it exits (the
kernel drops it then, even on SIGKILL). A claimed port is never handed out twice, in any process
using this module, for as long as its claimer lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path
from typing import IO

LOCK_DIR = Path(tempfile.gettempdir()) / "tag-watchdog-test-ports"
LOWEST = 10000  # below this, well-known services (PostgreSQL 5432, Prometheus 9090, 9797 ...)
HIGHEST = 65535
MIN_RANGE = 2000  # fewer candidates than this outside the ephemeral range: use the range anyway

_held: dict[int, IO[bytes]] = {}  # the claims of this process, kept open until it exits


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def candidates() -> range:
    """The ports this module hands out: the largest stretch above LOWEST outside the kernel's
    ephemeral range."""
    lo, hi = _ephemeral_range()
    below, above = range(LOWEST, max(LOWEST, lo)), range(min(hi + 1, HIGHEST + 1), HIGHEST + 1)
    best = max(below, above, key=len)
    return best if len(best) >= MIN_RANGE else range(LOWEST, HIGHEST + 1)


def _claim(port: int) -> IO[bytes] | None:
    handle = (LOCK_DIR / f"{port}.lock").open("a+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _bindable(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (a TIME_WAIT left by a closed server does not count:
    the servers under test set SO_REUSEADDR, as this probe does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A 127.0.0.1 port that nothing listens on and that no other process using this module
    holds; it stays this process's until the process exits (a server may stop and start on it
    again)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    pool = candidates()
    # a random start per call: processes starting together do not queue up on the same files
    start = random.randrange(len(pool))
    for i in range(len(pool)):
        port = pool[(start + i) % len(pool)]
        if port in _held:
            continue
        handle = _claim(port)
        if handle is None:
            continue
        if not _bindable(port):
            # someone outside this scheme listens there: leave the port alone
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()).encode())
        handle.flush()
        _held[port] = handle
        return port
    raise RuntimeError(f"no free port left in {pool.start}-{pool.stop - 1}")
