"""The suite's own machinery for pytest-xdist (tests/support/parallel.py, no_skips.py, ports.py,
the database pool of db_fixtures.py),
checked on small suites of its own run in real pytest subprocesses: a skip on a worker still fails
a WATCHDOG_NO_SKIPS run, a ``serial`` test runs alone while the others do run side by side, and
ports handed to concurrent processes never collide."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support import db_fixtures, parallel, ports
from watchdog import models
from watchdog.store import db, repo, tables

ROOT = Path(__file__).resolve().parent.parent

SMALL_SUITE = """
import pytest

def test_passes():
    pass

@pytest.mark.xfail(reason="an expected failure is no skip", strict=True)
def test_expected_failure():
    assert False

def test_skips():
    pytest.skip("no registry here")
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    # the small suites import tests.support.* from this checkout, and need no other plugin
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("WATCHDOG_NO_SKIPS", "1")


@pytest.mark.parametrize("workers", [["-p", "xdist", "-n", "2"], []], ids=["xdist", "one-process"])
def test_a_skip_fails_a_no_skips_run_on_workers_too(
    pytester: pytest.Pytester, env: None, workers: list[str]
) -> None:
    pytester.makepyfile(test_small=SMALL_SUITE)
    result = pytester.runpytest_subprocess("-p", "tests.support.no_skips", *workers)
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "WATCHDOG_NO_SKIPS is set but 1 test(s) were skipped:",
            "  test_small.py::test_skips: Skipped: no registry here",
        ]
    )


TIMED_SUITE = """
import json, os, time
import pytest

def _timed(name, seconds):
    start = time.monotonic()
    time.sleep(seconds)
    with open(os.environ["TIMES"], "a") as f:
        f.write(json.dumps([name, start, time.monotonic()]) + "\\n")

def test_long():
    # still running when another worker, done with its short tests, reaches the serial one
    _timed("long", 1.5)

@pytest.mark.parametrize("i", range(6))
def test_ordinary(i):
    _timed(f"ordinary-{i}", 0.4)

@pytest.mark.serial
def test_alone():
    _timed("alone", 0.6)

@pytest.mark.xfail(reason="counts as no skip", strict=True)
def test_expected_failure():
    assert False
"""


def test_a_serial_test_runs_alone_while_ordinary_ones_overlap(
    pytester: pytest.Pytester, env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    times = tmp_path / "times.jsonl"
    monkeypatch.setenv("TIMES", str(times))
    pytester.makeini("[pytest]\nmarkers =\n    serial: runs alone\n")
    pytester.makepyfile(test_timed=TIMED_SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "xdist", "-p", "tests.support.parallel", "-p", "tests.support.no_skips", "-n", "3"
    )
    result.assert_outcomes(passed=8, xfailed=1)
    assert result.ret == pytest.ExitCode.OK  # WATCHDOG_NO_SKIPS is set: an xfail is no skip
    spans = {
        name: (start, end) for name, start, end in map(json.loads, times.read_text().splitlines())
    }
    alone = spans.pop("alone")
    overlapping = [n for n, (s, e) in spans.items() if s < alone[1] and alone[0] < e]
    assert not overlapping, (alone, spans)
    # and the lock it waits for is a shared one for the others: they ran side by side
    pairs = [(a, b) for a in spans for b in spans if a < b]
    assert any(spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1] for a, b in pairs), spans


def test_every_name_in_the_serial_and_slow_tables_is_a_test() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    for name in [*parallel.SERIAL, *parallel.SLOW]:
        assert re.search(rf"^(async )?def {name}\(", sources, re.M), f"{name}: no such test"


CLAIMER = """
import sys, time
from tests.support import ports
print(" ".join(str(ports.free_port()) for _ in range(int(sys.argv[1]))), flush=True)
sys.stdin.read()  # holds its claims until told to go
"""


def test_concurrent_processes_never_get_the_same_port() -> None:
    """Ports come from below the kernel's ephemeral range and are claimed with a lock held for the
    claimer's life: four processes claiming at once get forty different ports, none of them this
    process's, each free to listen on."""
    mine = {ports.free_port() for _ in range(5)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, "10"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        got = [[int(p) for p in proc.stdout.readline().split()] for proc in procs]  # type: ignore[union-attr]
    finally:
        for proc in procs:
            proc.communicate(timeout=10)
    claimed = [p for ports_of_one in got for p in ports_of_one]
    assert len(claimed) == 40 and len(set(claimed) | mine) == 45
    pool = ports.candidates()
    lo, hi = ports._ephemeral_range()
    assert all(p in pool for p in claimed)
    if len(pool) >= ports.MIN_RANGE:
        assert not any(lo <= p <= hi for p in claimed)


# --- the worker's databases (tests/support/db_fixtures.py) -------------------------------------


def _events_ids(url: str) -> list[int]:
    engine = db.create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(tables.events.c.id))]
    finally:
        engine.dispose()


def _add_event(url: str) -> None:
    engine = db.create_engine(url)
    try:
        store = repo.Store(engine)
        event = models.Event(
            repository="127.0.0.1:5000/a/b",
            tag="1.0.0",
            kind=models.EventKind.FIRST_SEEN,
            at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            new_digest="sha256:" + "a" * 64,
        )
        record = models.TagRecord(
            repository=event.repository,
            tag=event.tag,
            recorded_digest=event.new_digest,
            current_digest=event.new_digest,
            media_type="application/vnd.oci.image.manifest.v1+json",
            state=models.TagState.OK,
            first_seen=event.at,
            last_checked=event.at,
            last_changed=event.at,
        )
        change = models.Change(event.repository, event.tag, record=record, event=event)
        store.apply_check(event.repository, event.at, [change])
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_pooled_database_comes_back_empty_with_ids_from_1_and_a_changed_one_never(
    _pg_server: Any,
) -> None:
    server = db_fixtures._require(_pg_server)
    url = server.migrated()
    _add_event(url)
    assert _events_ids(url) == [1]
    server.give_back(url, reusable=True)
    again = server.migrated()
    assert again == url  # the same database, from the pool
    assert _events_ids(again) == []
    _add_event(again)
    assert _events_ids(again) == [1]  # as in a new database
    # a test that changed the schema does not hand it on
    engine = sa.create_engine(again)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE events ADD COLUMN extra integer")
    engine.dispose()
    server.give_back(again, reusable=True)
    other = server.migrated()
    assert other != again and _events_ids(other) == []
    server.give_back(other, reusable=True)
