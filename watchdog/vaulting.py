"""The vault copier: keeps a complete copy of every release of the vaulted watches in the vault.

The copies to make are rows of ``store.vault`` (queued in the transaction of the event that asked
for them). The copier takes the due ones, copies each with ``registry.copy`` (mounted on one
registry, streamed across two), and records ``kept`` only once the vault's tag answered the
digest. A temporary failure (outage, 5xx, 429) is tried again later, with backoff, for
``vault.retry_for``; a permanent one (no push rights, the source lost a blob, a registry lying
about a digest) is ``failed`` at once, with the reason, and alerted. It runs beside the checks,
never in their way: the daemon runs ``run()`` as a task, ``scan`` calls ``drain()`` at the end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import Protocol

from watchdog import config, errors, models
from watchdog.registry import client as registry_client
from watchdog.registry import copy as registry_copy
from watchdog.store import vault as store_vault

log = logging.getLogger("watchdog.vaulting")

# Backoff of a copy that failed temporarily: 30 s, doubling, at most an hour.
RETRY_BASE = 30.0
RETRY_CAP = 3600.0
# The daemon looks for due copies at least this often (a check queues copies without telling).
POLL_SECONDS = 5.0
BATCH = 50


class Observer(Protocol):
    def on_vault_copy(self, result: str) -> None: ...

    def on_vault_pending(self, pending: int) -> None: ...


class Notices(Protocol):
    def enqueue_notice(self, notice: dict[str, object], now: dt.datetime) -> None: ...


ClientFor = Callable[[str], registry_client.RegistryClient]


def where(vault: config.VaultSettings, repository: str, tag: str, digest: str) -> tuple[str, str]:
    """``(vault repository path, vault tag)`` of release ``repository:tag`` at ``digest``."""
    source = models.ImageRef.parse(repository, allow_tag=False)
    return vault.repository_for(source), vault.tag_for(tag, digest)


class Copier:
    """Copies the due releases of ``queue`` into the vault of ``settings``."""

    def __init__(
        self,
        settings: config.Settings,
        queue: store_vault.VaultQueue,
        client_for: ClientFor,
        *,
        observer: Observer | None = None,
        notices: Notices | None = None,
        clock: Callable[[], dt.datetime] = models.utcnow,
    ) -> None:
        if settings.vault is None:
            raise ValueError("no vault configured")
        self.vault = settings.vault
        self.queue = queue
        self.client_for = client_for
        self.observer = observer
        self.notices = notices
        self.clock = clock
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for due copies now (a check just queued some)."""
        self._wake.set()

    # --- loops -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Copy due releases until ``stop`` is set; queue first the recorded tags that have no
        copy yet. Store failures are logged and tried again on the next round."""
        await self._backfill()
        while not stop.is_set():
            try:
                await self.run_once()
            except errors.StoreError as exc:
                log.warning("vault_store_error error=%r", str(exc))
            except Exception:
                # a bug: logged with its traceback; the copier goes on (the copy stays pending)
                log.exception("vault_copier_crashed")
            self._wake.clear()
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
            _, pending = await asyncio.wait(
                waiters, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()

    async def drain(self, seconds: float) -> int:
        """Copy every due release, for at most ``seconds``; return how many copies are still
        pending then (those interrupted stay pending: nothing is recorded for them)."""
        await self._backfill()
        try:
            async with asyncio.timeout(seconds):
                while await self.run_once():
                    pass
        except TimeoutError:
            log.warning("vault_drain_timeout seconds=%s", seconds)
        pending = await asyncio.to_thread(self.queue.pending_count)
        self._pending(pending)
        return pending

    async def run_once(self) -> int:
        """Copy the releases due now, at most ``vault.max_concurrency`` at once per registry;
        return how many were attempted."""
        due = await asyncio.to_thread(self.queue.due, self.clock(), limit=BATCH)
        if due:
            await asyncio.gather(*(self.copy(c) for c in due))
        self._pending(await asyncio.to_thread(self.queue.pending_count))
        return len(due)

    # --- one copy --------------------------------------------------------------------------------

    async def copy(self, item: store_vault.Copy) -> str:
        """Copy one release and record the outcome; return it (kept, retry, failed)."""
        try:
            vault_repo, vault_tag = where(self.vault, item.repository, item.tag, item.digest)
        except errors.InvalidReference as exc:
            return await self._failed(item, f"no vault name for it: {exc}", None, None)
        source = models.ImageRef.parse(item.repository, allow_tag=False)
        src = self.client_for(source.host)
        dst = self.client_for(self.vault.host)
        try:
            async with self._slot(source.host), self._slot(self.vault.host, other=source.host):
                report = await registry_copy.copy_release(
                    src,
                    source.repository,
                    dst,
                    vault_repo,
                    item.digest,
                    vault_tag,
                    child_tag=self.vault.child_tag_for,
                )
        except errors.RegistryError as exc:
            return await self._unsuccessful(item, exc, vault_repo, vault_tag)
        now = self.clock()
        kept_at = f"{self.vault.host}/{vault_repo}"  # where: the vault's registry too
        await asyncio.to_thread(self.queue.mark_kept, item.id, now, kept_at, vault_tag)
        log.info(
            "vault_copy_kept ref=%s:%s digest=%s vault=%s/%s:%s mounted=%d streamed=%d "
            "present=%d bytes=%d",
            item.repository,
            item.tag,
            item.digest,
            self.vault.host,
            vault_repo,
            vault_tag,
            report.mounted,
            report.streamed,
            report.present,
            report.bytes_streamed,
        )
        self._count("kept")
        return "kept"

    async def _unsuccessful(
        self, item: store_vault.Copy, exc: errors.RegistryError, vault_repo: str, vault_tag: str
    ) -> str:
        now = self.clock()
        age = (now - item.created_at).total_seconds()
        if exc.temporary and age < self.vault.retry_for:
            delay = min(RETRY_CAP, RETRY_BASE * 2 ** min(item.attempts, 16))
            at = now + dt.timedelta(seconds=delay)
            await asyncio.to_thread(self.queue.retry_later, item.id, now, at, str(exc))
            log.warning(
                "vault_copy_retry ref=%s:%s digest=%s in=%ss error=%r",
                item.repository,
                item.tag,
                item.digest,
                int(delay),
                str(exc),
            )
            self._count("retry")
            return "retry"
        reason = _reason(exc)
        return await self._failed(item, reason, f"{self.vault.host}/{vault_repo}", vault_tag)

    async def _failed(
        self,
        item: store_vault.Copy,
        reason: str,
        vault_repo: str | None,
        vault_tag: str | None,
    ) -> str:
        now = self.clock()
        await asyncio.to_thread(self.queue.mark_failed, item.id, now, reason, vault_repo, vault_tag)
        log.error(
            "vault_copy_failed ref=%s:%s digest=%s reason=%r",
            item.repository,
            item.tag,
            item.digest,
            reason,
        )
        self._count("failed")
        if self.notices is not None:
            notice: dict[str, object] = {
                "kind": "vault_copy_failed",
                "repository": item.repository,
                "tag": item.tag,
                "digest": item.digest,
                "reason": reason,
                "text": (
                    f"{item.repository}:{item.tag} ({item.digest}) could not be vaulted: "
                    f"{reason}. Until it is, a cleanup of the source repository can lose this "
                    "release for good."
                ),
            }
            try:
                await asyncio.to_thread(self.notices.enqueue_notice, notice, now)
            except errors.StoreError as exc:
                log.warning("notice_not_queued kind=vault_copy_failed error=%r", str(exc))
        return "failed"

    # --- helpers ---------------------------------------------------------------------------------

    def _slot(self, host: str, *, other: str | None = None) -> asyncio.Semaphore | _Nothing:
        """The per-registry bound; the vault's slot is not taken twice for a same-registry copy."""
        if other is not None and host == other:
            return _Nothing()
        slot = self._slots.get(host)
        if slot is None:
            slot = self._slots[host] = asyncio.Semaphore(self.vault.max_concurrency)
        return slot

    async def _backfill(self) -> None:
        try:
            queued = await asyncio.to_thread(self.queue.backfill, self.clock())
        except errors.StoreError as exc:
            log.warning("vault_backfill_failed error=%r", str(exc))
            return
        if queued:
            log.info("vault_backfill queued=%d", queued)

    def _count(self, result: str) -> None:
        if self.observer is not None:
            self.observer.on_vault_copy(result)

    def _pending(self, pending: int) -> None:
        if self.observer is not None:
            self.observer.on_vault_pending(pending)


class _Nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _reason(exc: errors.RegistryError) -> str:
    """The reason a person reads in the alert: what the registry said, and what it means."""
    text = str(exc)
    if isinstance(exc, errors.AuthError):
        return f"no push rights on the vault (or no pull on the source): {text}"
    if isinstance(exc, errors.NotFound):
        return f"the source no longer has all of it: {text}"
    if exc.temporary:
        return f"kept failing temporarily: {text}"
    return text


async def complete(
    settings: config.Settings,
    queue: store_vault.VaultQueue,
    client_for: ClientFor,
    *,
    notices: Notices | None = None,
) -> int:
    """`scan`'s end: make the due vault copies, for at most ``vault.scan_timeout``; return how
    many are still pending (0 without a vault)."""
    if settings.vault is None:
        return 0
    copier = Copier(settings, queue, client_for, notices=notices)
    return await copier.drain(settings.vault.scan_timeout)


# --- how the state reads (status, status --json, the API) ----------------------------------------


def state_json(item: store_vault.Copy | None) -> dict[str, object] | None:
    """The vault state of a tag's recorded digest as JSON (None: no copy asked for)."""
    if item is None:
        return None
    return {
        "state": item.state,
        "at": item.updated_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "repository": item.vault_repository,
        "tag": item.vault_tag,
        "attempts": item.attempts,
        "reason": item.reason,
    }


def state_text(item: store_vault.Copy | None) -> str:
    """The vault column of ``status``: pending, kept, failed, or ``-``."""
    return "-" if item is None else item.state


def copy_of(
    copies: dict[tuple[str, str, str], store_vault.Copy], record: models.TagRecord
) -> store_vault.Copy | None:
    """The copy of ``record``'s recorded digest among ``copies`` (``VaultQueue.copies()``)."""
    return copies.get((record.repository, record.tag, record.recorded_digest))
