"""aiorun.run: asyncio.run, except that Ctrl-C never waits without bound on a thread that
``asyncio.to_thread`` started (a store call: it cannot be cancelled). asyncio.run itself would:
``loop.shutdown_default_executor`` waits for every such thread (without a limit on 3.11)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

from watchdog import aiorun


def _ctrl_c() -> None:
    # SIGINT to this process, from the main thread, while the loop runs: asyncio.Runner's own
    # handler is installed then (it cancels the main task), so pytest never sees it
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    signal.raise_signal(signal.SIGINT)


def test_ctrl_c_does_not_wait_for_a_thread_that_does_not_return() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # as in a program
    blocked = threading.Event()  # the store call: returns only when the test says so
    started = threading.Event()

    def store_call() -> None:
        started.set()
        blocked.wait(60)

    async def command() -> None:
        call = asyncio.create_task(asyncio.to_thread(store_call))
        await asyncio.to_thread(started.wait, 10)
        _ctrl_c()
        await call

    begun = time.monotonic()
    try:
        with pytest.raises(aiorun.Interrupted) as caught:
            aiorun.run(command(), grace=0.5)
        took = time.monotonic() - begun
    finally:
        blocked.set()  # the abandoned thread ends, so this process exits normally
    assert isinstance(caught.value, KeyboardInterrupt)  # cli.main's "interrupted", exit 130
    assert caught.value.abandoned == 1
    assert took < 5  # asyncio.run: until the thread returns (60 s here)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_waits_for_a_thread_that_returns_within_the_grace() -> None:
    finished = threading.Event()

    def store_call() -> None:
        time.sleep(0.3)
        finished.set()

    async def command() -> None:
        call = asyncio.create_task(asyncio.to_thread(store_call))
        await asyncio.sleep(0.05)
        _ctrl_c()
        await call

    with pytest.raises(aiorun.Interrupted) as caught:
        aiorun.run(command(), grace=10)
    assert finished.is_set()
    assert caught.value.abandoned == 0  # nothing left behind: the process exits as usual


def test_calls_not_started_when_ctrl_c_came_never_start() -> None:
    release = threading.Event()
    ran: list[int] = []

    def store_call(i: int) -> None:
        ran.append(i)
        release.wait(10)

    async def command() -> None:
        # far more calls than the executor has threads: most of them wait in its queue
        calls = [asyncio.create_task(asyncio.to_thread(store_call, i)) for i in range(100)]
        await asyncio.sleep(0.1)
        _ctrl_c()
        await asyncio.gather(*calls)

    try:
        with pytest.raises(aiorun.Interrupted) as caught:
            aiorun.run(command(), grace=0.2)
        started = len(ran)
    finally:
        release.set()
    assert 0 < caught.value.abandoned == started < 100
    time.sleep(0.2)
    assert len(ran) == started  # the queued ones were cancelled, not run after all


def test_without_ctrl_c_it_is_asyncio_run() -> None:
    done: list[str] = []

    def store_call() -> str:
        time.sleep(0.1)
        done.append("call")
        return "answer"

    async def command() -> str:
        return await asyncio.to_thread(store_call)

    assert aiorun.run(command()) == "answer"
    assert done == ["call"]
    with pytest.raises(ValueError, match="a bug"):
        aiorun.run(_raises())


async def _raises() -> None:
    await asyncio.sleep(0)
    raise ValueError("a bug")
