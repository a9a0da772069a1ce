"""The SQLite database, its -wal and -shm files and the daemon's lock file are created readable
by their owner alone (0600), whatever the umask lets through: they hold every tag's history and
archived manifests."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from watchdog.store import db, lock


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_wal_shm_and_lock_files_are_0600(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "watchdog.db"
    engine = db.create_engine(f"sqlite:///{path}")
    daemon_lock = lock.DaemonLock(engine)
    try:
        daemon_lock.acquire()
        db.upgrade(engine)
        with engine.connect() as conn:  # a reader keeps the -wal and -shm files in place
            conn.execute(sa.text("SELECT 1"))
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")]
            assert {f.name: oct(_mode(f)) for f in files} == {f.name: "0o600" for f in files}
    finally:
        daemon_lock.release()
        engine.dispose()


def test_an_existing_database_keeps_its_mode(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "shared.db"
    path.touch(mode=0o640)
    engine = db.create_engine(f"sqlite:///{path}")
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()
    assert _mode(path) == 0o640
