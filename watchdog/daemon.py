"""``tag-watchdog run``: the scheduler and the HTTP server in one event loop.

One APScheduler job per watch (interval + jitter, never two runs of one watch at once, missed runs
coalesced). SIGTERM/SIGINT stop scheduling, let running checks finish (each persists in one
transaction, so even an interrupted check leaves the database consistent) and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from watchdog import (
    __version__,
    actions,
    config,
    errors,
    integrity,
    metrics,
    notifications,
    service,
    vaulting,
)
from watchdog.alerts import outbox
from watchdog.store import claims, db, lock
from watchdog.store import repo as store_repo
from watchdog.web import app as web_app
from watchdog.web import server as web_server

log = logging.getLogger("watchdog.daemon")

SHUTDOWN_GRACE = 30.0  # seconds given to running checks on shutdown
# /readyz turns false when a watch has not completed a cycle for this many intervals
STALE_AFTER_INTERVALS = 3
MAX_CONCURRENT_CHECKS = service.MAX_CONCURRENT_CHECKS  # watches checked at once
NOTIFIED_RECHECK_DELAY = 1.0  # seconds: the second look after a registry notification
# seconds from a watch's first notification to its check: a release pushes its tags one after
# the other (0.15.0, 0.15, latest), and one check after the burst finds every notification in
# the push ledger, so every move it finds names its pusher
NOTIFIED_SETTLE = 0.25


class SlotTrigger(BaseTrigger):  # type: ignore[misc]  # apscheduler 3 is untyped
    """Fires once in every slot of the watch (store/claims.py), ``jitter`` at most after its start.

    APScheduler's IntervalTrigger adds each jitter to the previous (jittered) fire time, so its
    fire times drift through the interval, and a check brought forward by a notification moves
    its whole grid. Anchored to the slots instead, the replicas of one watch all fire early in the
    same slot (the first claims it) and no slot is skipped or fired twice by one process.
    """

    __slots__ = ("interval", "jitter", "name")

    def __init__(self, name: str, interval: float, jitter: float) -> None:
        self.name = name
        self.interval = interval
        self.jitter = min(jitter, interval / 2)

    def get_next_fire_time(
        self, previous_fire_time: dt.datetime | None, now: dt.datetime
    ) -> dt.datetime:
        base = previous_fire_time or now  # the slot of the last run, or of now: the next one
        start = claims.slot_start(self.name, self.interval, base.astimezone(dt.UTC))
        # jitter spreads the load of many watches; nothing secret depends on it
        delay = random.uniform(0, self.jitter) if self.jitter else 0.0  # noqa: S311
        return start + dt.timedelta(seconds=self.interval + delay)

    def __str__(self) -> str:
        return f"slots[{self.interval}s, jitter {self.jitter}s]"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    def __init__(self, settings: config.Settings, *, clock: service.Clock = service.utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics.Metrics()
        self.stopping = asyncio.Event()
        self.last_cycle: dict[str, float] = {}
        self.running: set[asyncio.Task[Any]] = set()
        self.checking: set[str] = set()  # watches being checked now
        self.recheck: set[str] = set()  # watches to check again when their check ends
        self.triggered: set[str] = set()  # watches a notification asked to check now
        self.settling: set[str] = set()  # watches whose notified check waits NOTIFIED_SETTLE
        self.pushers = notifications.PushLedger()  # who pushed, from those notifications
        self.locks: dict[str, asyncio.Lock] = {}  # per watch: its check, or a hand-started action
        # checks at once, shared fairly between registries: a slow one costs its own watches only
        self.slots = service.FairSlots(
            MAX_CONCURRENT_CHECKS, {w.repository.host for w in settings.watches}
        )
        self.claims: claims.Claims | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.store: store_repo.Store | None = None
        self.checker: service.Checker | None = None
        self.alerts: outbox.Worker | None = None
        self.vault: vaulting.Copier | None = None

    async def run(self) -> int:
        """Run until a stop signal. Raises WatchdogError for start-up failures (bad DB, port in use)."""
        # Signals are ours from the first moment: a SIGTERM during start-up (before the scheduler
        # runs) ends in the same orderly shutdown, never in the default kill.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        engine = db.create_engine(self.settings.database_url.reveal())
        daemon_lock = lock.DaemonLock(engine)
        try:
            daemon_lock.acquire()
            await asyncio.to_thread(db.ensure_schema, engine, migrate_empty=True)
            self.store = store_repo.Store(
                engine,
                channels=outbox.channel_names(self.settings),
                vaulted=self.settings.vaulted(),
                grouping=self.settings.incidents.grouping(),
            )
            self.alerts = outbox.Worker(
                self.store.outbox,
                outbox.senders(self.settings),
                self.settings,
                observer=self.metrics,
                clock=self.clock,
            )
            self.claims = claims.Claims(engine)
            for channel in outbox.channel_names(self.settings):
                self.metrics.alert_channel(channel)
            sock = _bind(self.settings.http)
            clients = service.Clients(self.settings, observer=self.metrics)
            if self.settings.vault is not None:
                self.vault = vaulting.Copier(
                    self.settings,
                    self.store.vault,
                    clients.get,
                    observer=self.metrics,
                    notices=self.store.outbox,
                    clock=self.clock,
                )
            self.checker = service.Checker(
                self.settings,
                self.store,
                clients,
                self.metrics,
                clock=self.clock,
                pushers=self.pushers,
            )
            try:
                await self._serve(sock)
            finally:
                await clients.aclose()
        finally:
            engine.dispose()
            daemon_lock.release()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 0

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        app = web_app.build_app(
            self.metrics,
            self.readiness,
            settings=self.settings,
            store=self.store,
            actions_=self._actions(),
            on_registry_events=self.on_registry_events,
            spawn=self._spawn,
        )
        server = _Server(web_server.uvicorn_config(app, self.settings.http))
        server_task = asyncio.create_task(server.serve(sockets=[sock]))
        self.scheduler = AsyncIOScheduler(event_loop=loop, timezone=dt.UTC)
        now = dt.datetime.now(dt.UTC)
        for watch in self.settings.watches:
            interval = watch.interval or self.settings.interval
            self.scheduler.add_job(
                self._check,
                SlotTrigger(watch.name, interval, min(self.settings.jitter, interval / 2)),
                args=[watch],
                id=watch.name,
                name=f"check {watch.name}",
                max_instances=1,  # never two checks of one watch at once
                coalesce=True,  # after a stall, run once, not once per missed interval
                misfire_grace_time=int(interval),
                next_run_time=now,
            )
        self._schedule_integrity()
        self.scheduler.start()
        # The outbox worker: alerts queued by checks (or left by an earlier run) go out from here.
        alerts_stop = asyncio.Event()
        alerts_task = asyncio.create_task(self.alerts.run(alerts_stop)) if self.alerts else None
        # The vault copier: copies queued by checks (or left by an earlier run, even one killed
        # mid-copy) are made from here, in the background, never in a check's way.
        vault_stop = asyncio.Event()
        vault_task = asyncio.create_task(self.vault.run(vault_stop)) if self.vault else None
        host, port = sock.getsockname()[:2]
        log.info(
            "started version=%s watches=%d interval=%ss http=%s:%s database=%s",
            __version__,
            len(self.settings.watches),
            self.settings.interval,
            host,
            port,
            config.mask_url(self.settings.database_url.reveal()),
        )
        try:
            await self.stopping.wait()
        finally:
            log.info("stopping running_checks=%d", len(self.running))
            # Pause first: shutdown() cancels the job tasks APScheduler's asyncio executor still
            # runs, and a running check must finish (it persists in one transaction).
            self.scheduler.pause()
            # Wait for every running check and action, including one that started while we
            # waited (a check cannot start now, but an action taken a moment before could).
            deadline = loop.time() + SHUTDOWN_GRACE
            while self.running and loop.time() < deadline:
                await asyncio.wait(set(self.running), timeout=deadline - loop.time())
            for task in list(self.running):
                log.warning(
                    "cancelled_on_shutdown task=%r grace=%ss", task.get_name(), SHUTDOWN_GRACE
                )
                task.cancel()
            self.scheduler.shutdown(wait=False)
            if vault_task is not None:
                # A copy under way is cut short: it stays pending and is made on the next start.
                vault_stop.set()
                vault_task.cancel()
                await asyncio.gather(vault_task, return_exceptions=True)
            if alerts_task is not None:
                # After the checks: what they queued is tried once more; a send under way is
                # recorded before the worker returns.
                alerts_stop.set()
                _, late = await asyncio.wait({alerts_task}, timeout=SHUTDOWN_GRACE)
                for task in late:
                    task.cancel()
            server.should_exit = True
            await server_task
            log.info("stopped")

    async def on_registry_events(self, events: Sequence[notifications.RegistryEvent]) -> list[str]:
        """Bring the check of every watch an event concerns forward to now, and once more a moment
        later; a watch being checked right now is checked once more when that check ends."""
        self.pushers.note(events)  # before the check it triggers: that check says who pushed
        if self.store is not None:
            try:  # and for the other replicas, whose check may find the change first
                await asyncio.to_thread(self.store.pushes.note, events, self.clock())
            except errors.StoreError as exc:
                log.warning("pushers_not_shared error=%r", str(exc))
        due = notifications.watches_to_check(events, self.settings.watches)
        if self.scheduler is None or self.stopping.is_set():
            return []
        loop = asyncio.get_running_loop()
        for watch in due:
            if watch.name not in self.settling:  # one check for a burst of notifications
                self.settling.add(watch.name)
                loop.call_later(NOTIFIED_SETTLE, self._settled, watch.name)
            # distribution sends the push event before it writes the tag link, so the first check
            # can still see the old digest: look again shortly after (measured: 1 push in ~20).
            loop.call_later(NOTIFIED_RECHECK_DELAY, self._trigger, watch.name)
            log.info("check_triggered repository=%s by=registry_notification", watch.name)
        return [w.name for w in due]

    def _settled(self, name: str) -> None:
        self.settling.discard(name)
        self._trigger(name)

    def _trigger(self, name: str) -> None:
        if self.scheduler is None or self.stopping.is_set():
            return
        self.triggered.add(name)
        if name in self.checking:
            # APScheduler would skip a run while one is going (max_instances=1): ask the
            # running check to go round once more instead.
            self.recheck.add(name)
        else:
            self.scheduler.modify_job(name, next_run_time=dt.datetime.now(dt.UTC))

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> bool:
        """Run ``work`` in the background (an action answered in Slack); shutdown waits for it
        like for a running check. False (``work`` closed, never run) once the daemon is stopping:
        shutdown could not promise it the time to finish."""
        if self.stopping.is_set():
            work.close()
            return False
        task = asyncio.get_running_loop().create_task(work, name=name)
        self.running.add(task)
        task.add_done_callback(self._background_done)
        return True

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self.running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed task=%r", task.get_name(), exc_info=task.exception())

    def lock(self, repository: str) -> asyncio.Lock:
        """The lock that keeps a check of ``repository`` and a restore or accept of one of its
        tags (API, Slack) apart in this process: a check that looked at a tag while a restore put
        it back would take the restore for someone else's `reverted`."""
        return self.locks.setdefault(repository, asyncio.Lock())

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stopping.is_set():
            return
        log.info("signal_received signal=%s", sig.name)
        self.stopping.set()

    async def _check(self, watch: config.WatchSettings) -> None:
        if self.stopping.is_set() or self.checker is None or self.claims is None:
            return
        task = asyncio.current_task()
        if task is not None:
            task.set_name(f"check {watch.name}")
            self.running.add(task)
        self.checking.add(watch.name)
        interval = watch.interval or self.settings.interval
        try:
            # A notification that arrives while this watch is being checked asks for one more
            # check: what it announced may have happened after our HEAD of that tag.
            while True:
                self.recheck.discard(watch.name)
                # Scheduled runs of replicas sharing PostgreSQL: the first to claim the watch's
                # current slot checks it, the others skip until the next slot. Notified runs go now.
                urgent = watch.name in self.triggered
                self.triggered.discard(watch.name)
                now = self.clock()
                slot = None if urgent else claims.slot_start(watch.name, interval, now)
                async with self.lock(watch.name), self.slots.hold(watch.repository.host):
                    claim = await asyncio.to_thread(self.claims.acquire, watch.name, now, slot=slot)
                    if claim is None:
                        log.debug(
                            "check_skipped repository=%s reason=claimed_elsewhere", watch.name
                        )
                        # what the replica that checked it recorded: our gauges follow it
                        await self.checker.gauges_from_record(watch)
                    else:
                        try:
                            result = await self.checker.check_watch(watch)
                            if result.events and self.alerts is not None:
                                self.alerts.wake()  # deliver now, not at the worker's next round
                            if result.events and self.vault is not None:
                                self.vault.wake()  # copy a new release now
                        finally:
                            await asyncio.to_thread(claim.release)
                self.last_cycle[watch.name] = time.monotonic()
                if watch.name not in self.recheck or self.stopping.is_set():
                    break
        except errors.StoreError as exc:
            log.warning("check_not_claimed repository=%s error=%r", watch.name, str(exc))
        except Exception:
            # check_watch handles expected failures itself; this is a bug: log it, keep running.
            log.exception("check_crashed repository=%s", watch.name)
        finally:
            self.checking.discard(watch.name)
            if task is not None:
                self.running.discard(task)

    def _schedule_integrity(self) -> None:
        """The integrity sweep (``integrity``): a slice of the releases every tick."""
        if not self.settings.integrity.enabled or self.checker is None or self.store is None:
            return
        assert self.scheduler is not None
        from apscheduler.triggers.interval import IntervalTrigger

        sweeper = integrity.Sweeper(
            self.settings,
            self.store,
            self.checker.clients.get,
            self.checker.restorer,
            clock=self.clock,
            metrics_=self.metrics,
        )
        tick = integrity.tick_seconds(self.settings.integrity.interval)
        self.scheduler.add_job(
            self._integrity,
            IntervalTrigger(seconds=tick, timezone=dt.UTC),
            args=[sweeper],
            id="integrity",
            name="integrity sweep",
            max_instances=1,
            coalesce=True,
        )

    async def _integrity(self, sweeper: integrity.Sweeper) -> None:
        if self.stopping.is_set():
            return
        task = asyncio.current_task()
        if task is not None:
            self.running.add(task)
        try:
            if await sweeper.tick(self.holding) and self.alerts is not None:
                self.alerts.wake()
        except Exception:
            log.exception("integrity_crashed")  # a bug: logged, the daemon goes on
        finally:
            if task is not None:
                self.running.discard(task)

    @contextlib.asynccontextmanager
    async def holding(self, repository: str) -> AsyncIterator[None]:
        """Hold ``repository`` against checks, here (``lock``) and on other replicas (its claim),
        for a restore or accept started by hand. Waits at most actions.CLAIM_WAIT seconds in all
        for a check under way, then raises StoreError (the API answers 503, Slack says to tap
        again)."""
        assert self.claims is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + actions.CLAIM_WAIT
        lock = self.lock(repository)
        try:
            await asyncio.wait_for(lock.acquire(), actions.CLAIM_WAIT)
        except TimeoutError:
            raise errors.StoreError(
                f"{repository} is being checked right now: try again in a moment"
            ) from None
        try:
            remaining = max(deadline - loop.time(), 0.0)
            async with actions.claimed(self.claims, repository, self.clock, remaining):
                yield
        finally:
            lock.release()

    def _actions(self) -> actions.Actions | None:
        """The restores and accepts of the API and the Slack buttons, once the store is open."""
        if self.store is None or self.checker is None:
            return None
        return actions.Actions(
            self.store,
            self.holding,
            clock=self.clock,
            registries=self.checker.clients.get,
            on_restore=self._count_restore,
            on_written=self._wake_alerts,
        )

    def _count_restore(self, repository: str, result: str) -> None:
        self.metrics.restores.labels(repository=repository, result=result).inc()

    def _wake_alerts(self) -> None:
        if self.alerts is not None:
            self.alerts.wake()  # deliver the action's alert now, not at the worker's next round

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = database answers, scheduler runs, every watch completed a cycle recently."""
        problems: list[str] = []
        if self.store is None:
            problems.append("database not open")
        else:
            try:
                await asyncio.to_thread(self.store.ping)
            except errors.StoreError as exc:
                problems.append(f"database: {exc}")
        if self.scheduler is None or not self.scheduler.running or self.stopping.is_set():
            problems.append("scheduler not running")
        now = time.monotonic()
        for watch in self.settings.watches:
            limit = STALE_AFTER_INTERVALS * (watch.interval or self.settings.interval)
            last = self.last_cycle.get(watch.name)
            if last is None:
                problems.append(f"{watch.name}: no completed check yet")
            elif now - last > limit:
                problems.append(f"{watch.name}: last check {now - last:.0f}s ago")
        return (not problems, {"problems": problems})


def _bind(settings: config.HttpSettings) -> socket.socket:
    """Bind the HTTP listener ourselves so that a busy port is a clear error, not a crash."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise errors.WatchdogError(
            f"cannot listen on {settings.listen}: {exc.strerror or exc} (set http.listen)"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def main(settings: config.Settings) -> int:
    """Run the daemon to completion; the exit status of ``tag-watchdog run``."""
    return asyncio.run(Daemon(settings).run())
