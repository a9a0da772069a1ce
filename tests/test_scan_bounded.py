"""`scan` checks a bounded number of watches at once and hands each result on as soon as it and
those before it are done, in the order of the config, so its memory does not grow with the fleet
(issue 6: peak RSS <= 150 MB while scanning 100,000 tags; bench/scale_bench.py measures it).
`scan --json` prints one whole document, in the shape it always had, or nothing."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import signal
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import pytest

from tests.support import faultproxy, images
from tests.support import registry as support_registry
from tests.support.cli import clean_env, run, wait_for
from tests.support.registry import free_port
from watchdog import cli_common, config, models, service, views


def _watches(n: int) -> list[config.WatchSettings]:
    return [
        config.WatchSettings(repository=models.ImageRef.parse(f"r.example/fleet/app{i:03d}"))
        for i in range(n)
    ]


class _Checker:
    """Stands in for service.Checker: each check waits for its watch's gate (open by default),
    then a few loop turns; it keeps a weak reference to every result it made."""

    def __init__(self, gates: dict[str, asyncio.Event] | None = None) -> None:
        self.gates = gates or {}
        self.started: list[str] = []
        self.running = 0
        self.most = 0
        self.made: list[weakref.ref[service.CheckResult]] = []
        self.fail: str | None = None  # the watch whose check raises (a bug)
        self.cancelled = 0

    async def check_watch(self, watch: config.WatchSettings) -> service.CheckResult:
        self.started.append(watch.name)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            gate = self.gates.get(watch.name)
            if gate is not None:
                await gate.wait()
            for _ in range(3):
                await asyncio.sleep(0)
            if watch.name == self.fail:
                raise RuntimeError("a bug")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        result = service.CheckResult(repository=watch.name, registry=watch.repository.host)
        self.made.append(weakref.ref(result))
        return result

    def alive(self) -> int:
        gc.collect()
        return sum(1 for r in self.made if r() is not None)


async def test_check_all_bounds_the_checks_in_flight_and_hands_results_on_in_order() -> None:
    watches = _watches(60)
    checker = _Checker()
    seen: list[str] = []
    most_alive = 0

    def on_result(r: service.CheckResult) -> None:
        nonlocal most_alive
        seen.append(r.repository)
        most_alive = max(most_alive, checker.alive())

    await service.check_all(checker, watches, on_result, limit=4)  # type: ignore[arg-type]
    assert seen == [w.name for w in watches]
    assert checker.most == 4
    # handed-over results are not kept: at most the window's (4 x 4) are alive at once
    assert most_alive <= 16
    await asyncio.sleep(0)  # a finished task's callbacks may hold it for one more loop turn
    assert checker.alive() == 0


async def test_a_slow_first_watch_holds_at_most_a_window_of_results_behind_it() -> None:
    watches = _watches(50)
    slow = asyncio.Event()
    checker = _Checker({watches[0].name: slow})
    seen: list[str] = []

    task = asyncio.create_task(
        service.check_all(checker, watches, lambda r: seen.append(r.repository), limit=3, window=10)  # type: ignore[arg-type]
    )
    # let everything that can run run: the first watch is stuck
    for _ in range(200):
        await asyncio.sleep(0)
    assert seen == []
    assert len(checker.started) == 10  # the window: the slow one and the next nine
    assert checker.alive() == 9  # finished, waiting for the first one: no more
    slow.set()
    await task
    assert seen == [w.name for w in watches]
    assert checker.most == 3
    assert checker.alive() == 0


async def test_a_check_that_raises_cancels_the_others_and_propagates() -> None:
    watches = _watches(30)
    stuck = asyncio.Event()  # never set: these checks only end by cancellation
    checker = _Checker({w.name: stuck for w in watches[6:]})
    checker.fail = watches[5].name
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="a bug"):
        await service.check_all(checker, watches, lambda r: seen.append(r.repository), limit=4)  # type: ignore[arg-type]
    assert seen == [w.name for w in watches[:5]]
    assert checker.running == 0  # nothing left running behind the exception
    assert checker.cancelled >= 1


async def test_cancelling_check_all_cancels_the_check_it_waits_for_too() -> None:
    # Ctrl-C cancels the scan while it waits for the first watch's check, which it has taken out
    # of its pending ones already: cancelling a task that awaits another cancels that one too
    watches = _watches(5)
    stuck = asyncio.Event()  # never set
    checker = _Checker({w.name: stuck for w in watches})
    task = asyncio.create_task(service.check_all(checker, watches, lambda r: None, limit=8))  # type: ignore[arg-type]
    for _ in range(20):
        await asyncio.sleep(0)
    assert checker.running == 5
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert checker.running == 0
    assert checker.cancelled == 5


@pytest.mark.parametrize("count", [0, 1, 3])
def test_scan_json_is_written_as_one_document_would_be(
    count: int, capsys: pytest.CaptureFixture[str]
) -> None:
    items = [
        {
            "repository": f"r.example/app{i}",
            "tags_checked": i,
            "error": None if i else 'down: "quoted"\nline',
            "tag_errors": {"1.0.0": "timeout"} if i == 2 else {},
            "events": [{"kind": "moved", "detail": {"platforms": ["linux/amd64"]}}] * i,
            "drifted": [],
            "ünïcode": "é",
        }
        for i in range(count)
    ]
    spool = io.StringIO()
    for n, item in enumerate(items):
        spool.write(",\n" if n else "\n")
        json.dump(item, spool, indent=2)
    views.write_scan_json(sys.stdout, 1, drift=True, complete=False, watches=spool)
    streamed = capsys.readouterr().out
    cli_common.print_json({"exit_code": 1, "drift": True, "complete": False, "watches": items})
    assert streamed == capsys.readouterr().out


def _push_fleet(server: support_registry.RegistryServer, names: list[str]) -> None:
    with images.Pusher(server.url) as pusher:
        for i, name in enumerate(names):
            image = pusher.image(name, "1.0.0", seed=f"app-{i}")
            pusher.tag(name, "1.0.1", image)


def test_scan_of_many_watches_reports_each_in_config_order(
    tmp_path: Path, server: support_registry.RegistryServer
) -> None:
    names = [f"fleet/app{i:02d}" for i in range(40)]  # more than a window of watches
    _push_fleet(server, names)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\n"
        "watches:\n" + "".join(f"  - {server.host}/{n}\n" for n in reversed(names))
    )

    text = run("scan", "-c", str(cfg), cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    lines = [ln for ln in text.stdout.splitlines() if not ln.startswith(" ")]
    assert lines == [f"{server.host}/{n}: 2 tags checked, 2 first_seen" for n in reversed(names)]

    again = run("scan", "--json", "-c", str(cfg), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert list(data) == ["exit_code", "drift", "complete", "watches"]
    assert data["exit_code"] == 0 and data["drift"] is False and data["complete"] is True
    assert [w["repository"] for w in data["watches"]] == [
        f"{server.host}/{n}" for n in reversed(names)
    ]
    assert all(w["tags_checked"] == 2 and w["events"] == [] for w in data["watches"])


def test_scan_json_with_drift_and_an_unreachable_registry_is_one_document(
    tmp_path: Path, server: support_registry.RegistryServer
) -> None:
    names = [f"fleet/app{i:02d}" for i in range(3)]
    _push_fleet(server, names)
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\n"
        "watches:\n"
        + "".join(f"  - {server.host}/{n}\n" for n in names)
        + f"  - {down}/fleet/gone\n"
    )
    first = run("scan", "--json", "-c", str(cfg), cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    with images.Pusher(server.url) as pusher:
        pusher.image(names[1], "1.0.0", seed="overwritten")
    second = run("scan", "--json", "-c", str(cfg), cwd=tmp_path)
    assert second.returncode == 1, second.stderr
    assert "Traceback" not in second.stderr
    data = json.loads(second.stdout)
    assert list(data) == ["exit_code", "drift", "complete", "watches"]
    assert data["exit_code"] == 1 and data["drift"] is True and data["complete"] is False
    by_name = {w["repository"]: w for w in data["watches"]}
    assert list(by_name) == [*(f"{server.host}/{n}" for n in names), f"{down}/fleet/gone"]
    assert [e["kind"] for e in by_name[f"{server.host}/{names[1]}"]["events"]] == ["moved"]
    assert by_name[f"{down}/fleet/gone"]["error"]


def _as_from_a_shell() -> None:
    # Ctrl-C from a shell: SIGINT at its default disposition and not blocked, whatever this
    # worker process inherited or was left with by earlier tests (a child inherits both)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


# serial: it failed in three clean-clone runs in a row (the scan not ending within 30 s of its
# SIGINT) and never alone or in 92 stress runs; the cause is not proven (docs/RELIABILITY.md)
@pytest.mark.serial
def test_scan_json_interrupted_mid_scan_prints_nothing_on_stdout(
    tmp_path: Path, server: support_registry.RegistryServer
) -> None:
    names = [f"fleet/app{i:02d}" for i in range(3)]
    _push_fleet(server, names)
    release = threading.Event()
    with faultproxy.FaultProxy(server.host) as proxy:
        # the last watch's tag list is never answered: the scan is under way when Ctrl-C comes
        proxy.add("GET", f"/v2/{names[-1]}/tags/list", action=lambda _h: release.wait(60))
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"database_url: sqlite:///{tmp_path / 'w.db'}\n"
            "watches:\n" + "".join(f"  - {proxy.host}/{n}\n" for n in names)
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "watchdog", "scan", "--json", "-c", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            # faulthandler: on SIGABRT every thread's stack goes to stderr (see below)
            env=clean_env({"PYTHONFAULTHANDLER": "1"}),
            preexec_fn=_as_from_a_shell,
        )
        try:
            wait_for(
                lambda: any(s.path.startswith(f"/v2/{names[-1]}/tags/list") for s in proxy.seen),
                what="the slow tag list to be asked for",
            )
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                # what it waits for, should it happen again
                proc.send_signal(signal.SIGABRT)
                _, err = proc.communicate(timeout=10)
                pytest.fail(f"no exit within 30 s of SIGINT; its threads then:\n{err[-8000:]}")
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert out == ""
    assert "interrupted" in err and "Traceback" not in err
