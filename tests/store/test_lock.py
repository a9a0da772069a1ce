"""One daemon per SQLite file (watchdog/store/lock.py), against real files and real processes: a
second holder is refused with a message naming the file and the holder, the lock goes with its
holder (release, normal exit, SIGKILL), another spelling of the same file is the same lock, and
other backends take none.

The end-to-end case (a second ``tag-watchdog run`` refused with exit 3) is in
tests/test_cli_scan.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run
from tests.support.registry import free_port
from watchdog import errors
from watchdog.store import db, lock

# A process that takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLDER = """
import sys
from watchdog.store import db, lock
held = lock.DaemonLock(db.create_engine(sys.argv[1]))
held.acquire()
print("held", flush=True)
sys.stdin.read()
"""


class Holder:
    """Another process holding the lock of ``url`` (started with ``cwd``)."""

    def __init__(self, url: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, url],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "held\n", self.proc.communicate(timeout=10)[1]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit(self) -> int:
        """Let it end by itself (it never calls ``release``)."""
        self.proc.communicate(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.close()


def _lock(url: str) -> lock.DaemonLock:
    return lock.DaemonLock(db.create_engine(url))


def test_a_second_holder_is_refused_naming_the_file_and_the_holders_pid(
    tmp_path: Path, holders: list[Holder]
) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    first = Holder(url, tmp_path)
    holders.append(first)
    second = _lock(url)
    with pytest.raises(errors.AlreadyRunning) as caught:
        second.acquire()
    message = str(caught.value)
    assert f"another tag-watchdog daemon (pid {first.pid}) already runs on" in message
    assert str(tmp_path / "w.db") in message
    assert "run one daemon per SQLite file (use PostgreSQL to run several)" in message
    # a store error (exit 3), and nothing a retry would fix while the other daemon lives
    assert isinstance(caught.value, errors.StoreError)
    assert caught.value.exit_code == 3 and not caught.value.temporary
    # the refused one holds nothing: the lock file still names the first holder
    assert (tmp_path / "w.db.lock").read_text() == str(first.pid)


def test_the_lock_is_free_again_after_release_and_names_its_new_holder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    first, second = _lock(url), _lock(url)
    first.acquire()
    # flock belongs to the open file, not the process: a second holder in the same process is
    # refused as well
    with pytest.raises(errors.AlreadyRunning, match=f"pid {os.getpid()}"):
        second.acquire()
    first.release()
    first.release()  # releasing twice is harmless
    second.acquire()
    try:
        assert (tmp_path / "w.db.lock").read_text() == str(os.getpid())
        with pytest.raises(errors.AlreadyRunning):
            first.acquire()
    finally:
        second.release()


@pytest.mark.parametrize("end", ["exit", "sigkill"])
def test_the_lock_goes_with_its_holder_even_on_sigkill(
    tmp_path: Path, holders: list[Holder], end: str
) -> None:
    """No stale lock: the kernel drops a flock when its process dies, however it dies. The lock
    file stays behind with the dead pid in it, and does not matter."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    holder = Holder(url, tmp_path)
    holders.append(holder)
    with pytest.raises(errors.AlreadyRunning):
        _lock(url).acquire()
    if end == "exit":
        assert holder.exit() == 0
    else:
        holder.kill()
        assert holder.proc.returncode == -signal.SIGKILL
    assert (tmp_path / "w.db.lock").read_text() == str(holder.pid)  # left behind
    after = _lock(url)
    after.acquire()
    try:
        assert (tmp_path / "w.db.lock").read_text() == str(os.getpid())
    finally:
        after.release()


def test_another_spelling_of_the_same_file_is_the_same_lock(
    tmp_path: Path, holders: list[Holder]
) -> None:
    """A relative URL (from the holder's working directory) and an absolute one through a
    symlinked directory name one file, so they take one lock."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    holders.append(Holder("sqlite:///w.db", data))
    with pytest.raises(errors.AlreadyRunning, match="already runs on"):
        _lock(f"sqlite:///{tmp_path / 'link' / 'w.db'}").acquire()
    # another file in the same directory is another lock
    other = _lock(f"sqlite:///{data / 'other.db'}")
    other.acquire()
    other.release()


def test_postgresql_takes_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL replicas coordinate inside the database (tests/system/test_replicas.py): nothing is
    locked and no file is made (the engine never connects here)."""
    monkeypatch.chdir(tmp_path)
    url = "postgresql+psycopg://watchdog:pw@127.0.0.1:5432/watchdog"
    first, second = _lock(url), _lock(url)
    assert first.path is None
    first.acquire()
    second.acquire()
    first.release()
    second.release()
    assert not list(tmp_path.iterdir())


def test_run_on_a_sqlite_file_in_a_missing_directory_says_the_database_is_unreachable(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-dir" / "w.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{missing}\n"
        f"http: {{listen: '127.0.0.1:{free_port()}'}}\n"
        "watches: ['127.0.0.1:1/a/b']\n"
    )
    scan = run("scan", "-c", str(cfg), cwd=tmp_path)
    assert scan.returncode == 3
    assert "unreachable: unable to open the database file" in scan.stderr
    daemon = run("run", "-c", str(cfg), cwd=tmp_path, timeout=60)
    assert daemon.returncode == 3
    assert "internal error" not in daemon.stderr
    assert "unreachable: unable to open the database file" in daemon.stderr
