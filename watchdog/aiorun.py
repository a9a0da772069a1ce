"""``asyncio.run`` for the one-shot commands (scan, restore, accept, guard, alerts test), such that
Ctrl-C never waits without bound on a thread.

Store calls run in threads (``asyncio.to_thread``), and a thread cannot be cancelled. After
Ctrl-C, ``asyncio.run`` cancels the tasks at once but then waits for every such thread to return
(``loop.shutdown_default_executor``: without a limit on Python 3.11, 300 s on 3.12), and the
interpreter waits for them again when it exits (it joins executor threads). A thread can be held
for long: each SQLite statement may wait out the busy timeout under another writer, a PostgreSQL
server that stopped answering holds a query for as long as TCP takes to give up. Here the threads
get ``GRACE_SECONDS`` after Ctrl-C and are then left behind; :func:`exit_now` ends the process
without waiting for them. That loses nothing: every store write is one transaction, which a
process that dies half-way rolls back (docs/RELIABILITY.md, the crash runs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")

# How long an interrupted command waits for its threads still running (a store call): enough for
# one ordinary statement to finish, short enough that Ctrl-C feels immediate.
GRACE_SECONDS = 2.0


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run`; ``abandoned`` threads were still running when it gave up on
    them (then only :func:`exit_now` ends the process without waiting for them)."""

    def __init__(self, abandoned: int) -> None:
        super().__init__(f"{abandoned} thread(s) abandoned")
        self.abandoned = abandoned


class _Threads(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor (what ``asyncio.to_thread`` runs on). It counts the calls not
    yet returned; once ``deadline`` is set, shutting down waits for them until then, no longer,
    and calls that have not started never start."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="watchdog-thread")
        self._changed = threading.Condition()
        self._running = 0
        self.deadline: float | None = None  # time.monotonic(); None: wait as long as it takes

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        future = super().submit(fn, *args, **kwargs)
        with self._changed:
            self._running += 1
        # done when the call returned or was cancelled before it started
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: concurrent.futures.Future[Any]) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify_all()

    def running(self) -> int:
        """Calls submitted and not finished (running, or queued and not cancelled)."""
        with self._changed:
            return self._running

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.deadline is None:
            super().shutdown(wait, cancel_futures=cancel_futures)
            return
        super().shutdown(wait=False, cancel_futures=True)
        if wait:
            with self._changed:
                self._changed.wait_for(
                    lambda: self._running == 0, max(0.0, self.deadline - time.monotonic())
                )


def run(main: Coroutine[Any, Any, T], *, grace: float = GRACE_SECONDS) -> T:
    """``asyncio.run(main)``; after Ctrl-C (SIGINT cancels ``main``, as with ``asyncio.run``)
    raises :class:`Interrupted` within about ``grace`` seconds, whatever threads still run."""
    threads = _Threads()
    runner = asyncio.Runner()
    runner.get_loop().set_default_executor(threads)
    try:
        result = runner.run(main)
    except KeyboardInterrupt:
        threads.deadline = time.monotonic() + grace
        # Ctrl-C again while it waits: what still runs is abandoned now
        with contextlib.suppress(KeyboardInterrupt):
            runner.close()
        raise Interrupted(threads.running()) from None
    except BaseException:
        runner.close()
        raise
    runner.close()
    return result


def exit_now(code: int) -> None:
    """End the process with ``code`` now, after flushing stdout and stderr, without waiting for
    threads (the interpreter's normal exit joins every executor thread: with a thread
    :func:`run` abandoned, it would wait for that thread after all)."""
    for stream in (sys.stdout, sys.stderr):
        # a reader gone, or a stream closed: nothing more can be said there
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
