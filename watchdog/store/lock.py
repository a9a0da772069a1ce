"""One daemon per SQLite file.

Two daemons on one SQLite file would poll everything twice and race on every event and alert.
PostgreSQL deployments coordinate inside the database; for SQLite the daemon holds an exclusive
``flock`` on ``<file>.lock`` for its whole life. The kernel drops it when the process dies, even by
SIGKILL, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from sqlalchemy.engine import Engine

from watchdog import errors
from watchdog.store import db


class DaemonLock:
    """Held while a daemon runs on a SQLite database; a no-op for other backends."""

    def __init__(self, engine: Engine) -> None:
        self._file: IO[bytes] | None = None
        self._shown = db.mask_url(engine.url)
        database = engine.url.database
        self.path = (
            Path(database).resolve().with_name(Path(database).name + ".lock")
            if engine.url.get_backend_name() == "sqlite" and database
            else None
        )

    def acquire(self) -> None:
        """Take the lock or raise errors.AlreadyRunning naming the file and the holder's pid;
        errors.DatabaseUnavailable when the lock file cannot be opened (a missing directory, no
        write permission): the database itself could not be opened either, and says so the way
        the other commands do."""
        if self.path is None:
            return
        try:
            # 0600: the lock file sits beside the database and says who holds it
            handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), "r+b")
        except OSError as exc:
            raise errors.DatabaseUnavailable(
                f"database {self._shown} unreachable: unable to open the database file "
                f"({exc.strerror or exc}: {self.path.parent})"
            ) from exc
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().decode(errors="replace").strip() or "unknown"
            handle.close()
            raise errors.AlreadyRunning(
                f"another tag-watchdog daemon (pid {holder}) already runs on "
                f"{self.path.with_suffix('')}; run one daemon per SQLite file "
                "(use PostgreSQL to run several)"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()).encode())
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
