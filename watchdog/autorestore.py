"""``on_move: restore`` and ``on_delete: restore``: put back every release that moved or was
deleted, within loop protection.

A check persists its ``moved`` and ``deleted`` events first (marked ``restoring``: the promise the
alert makes), then ``AutoRestorer.run`` restores each through ``restore.Restorer``. A restore cut
short by a crash leaves a drifted (or deleted) tag whose last event is that ``moved`` (or
``deleted``): the next check finds it (``unfinished``) and finishes it. A tag restored
``restore.max_per_tag`` times within ``restore.window`` is not restored again: one loud
``restore_stopped`` event per window says "something keeps pushing (deleting) this tag", and a
person chooses (Restore or Accept).

Before a deletion is persisted, ``annotate_deletions`` asks whether the recorded digest is still
in the registry (a tag deleted alone) or not (deleted by digest, garbage-collected): the alert
offers ``crane tag`` only in the first case, and the restore plan says where the bytes come from.
The vault (issue 12, items 1-2) plugs in below ``restore.Restorer``: this module only decides
*whether* to restore, never where the bytes come from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Collection, Mapping, Sequence

from watchdog import config, errors, metrics, models, restore
from watchdog.registry import client as registry_client
from watchdog.store import repo as store_repo

# the check's logger: these lines are part of the check's log, and pipelines filter on it
log = logging.getLogger("watchdog.service")

REASON = "something keeps pushing this tag"
REASON_DELETED = "something keeps deleting this tag"
K = models.EventKind


def wanted(watch: config.WatchSettings) -> frozenset[models.EventKind]:
    """The events the watch restores on its own: ``moved`` (``on_move: restore``), ``deleted``
    and ``broken`` (``on_delete``, by default as ``on_move``)."""
    kinds = set()
    if watch.on_move == "restore":
        kinds.add(K.MOVED)
    if watch.delete_policy == "restore":
        # a release that lost child manifests or blobs (``broken``) is a partial deletion
        kinds.update((K.DELETED, K.BROKEN))
    return frozenset(kinds)


def policy_detail(watch: config.WatchSettings, kind: models.EventKind) -> dict[str, object]:
    """What a ``deleted`` or ``broken`` event records of the watch's policy: ``policy`` as the
    config spells it (for the alert) and, when the watch puts it back, ``restoring`` (the
    promise kept across crashes)."""
    key = "on_delete" if watch.on_delete else "on_move"
    detail: dict[str, object] = {"policy": f"{key}: {watch.delete_policy}"}
    if kind in wanted(watch):
        detail["restoring"] = True
    return detail


async def annotate_deletions(
    registry: registry_client.RegistryClient,
    watch: config.WatchSettings,
    changes: Sequence[models.Change],
) -> list[models.Change]:
    """``changes`` with every ``deleted`` event told the watch's ``policy`` (and, on a restore
    policy, ``restoring``: the promise kept across crashes) and ``digest_in_registry``: whether
    the recorded digest still answers by digest (True: the tag alone was deleted, ``crane tag``
    puts it back; False: deleted by digest or collected, only the archive can; None: the
    registry could not say). One HEAD per confirmed deletion, which is rare."""
    out: list[models.Change] = []
    for change in changes:
        event = change.event
        if event is None or event.kind is not K.DELETED:
            out.append(change)
            continue
        recorded = event.detail.get("recorded_digest")
        present: bool | None = None
        if isinstance(recorded, str):
            try:
                present = await registry.manifest_exists(watch.repository.repository, recorded)
            except errors.RegistryError as exc:
                log.warning("deleted_digest_unknown ref=%s:%s error=%r", event.repository,
                            event.tag, str(exc))  # fmt: skip
        detail = {**event.detail, **policy_detail(watch, K.DELETED), "digest_in_registry": present}
        out.append(dataclasses.replace(change, event=dataclasses.replace(event, detail=detail)))
    return out


async def unfinished(
    store: store_repo.Store,
    watch: config.WatchSettings,
    records: Mapping[str, models.TagRecord],
    since: dt.datetime | None = None,
) -> dict[str, models.Event]:
    """The ``moved`` (and ``deleted``) events of ``watch`` that promised a restore and have no
    outcome yet (the daemon died between the event's commit and the outcome's), by tag. Empty
    for a watch that restores nothing, and without a query when no tag is drifted (deleted).

    Deleted tags are looked at only when deleted at or after ``since`` (the caller passes now
    minus ``restore.window``): one history query each, and a deletion older than the window
    (its restore interrupted by a crash long ago) is left to a person."""
    kinds = wanted(watch)
    out: dict[str, models.Event] = {}
    if K.MOVED in kinds and any(r.state is models.TagState.DRIFTED for r in records.values()):
        last = await asyncio.to_thread(store.last_events_of_drifted, watch.repository.name)
        out.update((t, e) for t, e in last.items() if e.kind is K.MOVED and _promised(e))
    if K.DELETED in kinds and since is not None:
        for tag, record in records.items():
            if record.state is not models.TagState.DELETED or record.last_changed < since:
                continue
            history = await asyncio.to_thread(store.history, watch.repository.name, tag)
            if history and history[-1].kind is K.DELETED and _promised(history[-1]):
                out[tag] = history[-1]
    return out


def _promised(event: models.Event) -> bool:
    return event.detail.get("restoring") is True


def unobserved(
    unfinished_: Mapping[str, models.Event], asked: Collection[str]
) -> list[models.Event]:
    """The promised restores of deleted tags the check did not ask about (a deleted tag is asked
    about only when it is listed again, and then it is ``reappeared``, no longer to restore)."""
    return [e for t, e in unfinished_.items() if e.kind is K.DELETED and t not in asked]


def finishes_restore(obs: models.Observation, change: models.Change) -> bool:
    """For a tag whose restore was promised and not done: True when this observation leaves it
    to the restore (the tag still answers the moved digest, or the recorded one again), False
    when something else happened (moved again, gone, not answering)."""
    if obs.kind is not models.ObservationKind.PRESENT:
        return False
    return change.event is None or change.event.kind is models.EventKind.REVERTED


class AutoRestorer:
    """Restores moved and deleted tags for the checks, counting ``restores_total``. Safe to share."""

    def __init__(
        self,
        limits: config.RestoreSettings,
        store: store_repo.Store,
        registry_for: Callable[[str], registry_client.RegistryClient],
        metrics_: metrics.Metrics,
        *,
        clock: Callable[[], dt.datetime],
    ) -> None:
        """``registry_for`` gives the client of a registry host."""
        self.limits = limits
        self.store = store
        self.registry_for = registry_for
        self.metrics = metrics_
        self.clock = clock

    async def run(
        self,
        watch: config.WatchSettings,
        events: Sequence[models.Event],
        resume: Sequence[models.Event] = (),
    ) -> list[tuple[models.Change, models.Event]]:
        """Put back every tag that just moved or was deleted (the ``moved``/``deleted`` among
        ``events`` that the watch's policies restore: ``wanted``), within loop protection.

        Runs after the check's events are persisted; ``resume`` are earlier such events whose
        restore never wrote an outcome (a crash), finished the same way (the PUT of the same
        bytes again is harmless). A tag restored ``max_per_tag`` times within the
        ``window`` before it moved is not restored again: one ``restore_stopped`` event (the loud
        "something keeps pushing this tag") is written instead, once per window. Returns the
        changes (a restored record) and events written, for the result and metrics.
        """
        ref = watch.repository
        out: list[tuple[models.Change, models.Event]] = []
        limits = self.limits
        restorer = restore.Restorer(
            self.store, self.registry_for(ref.host), clock=self.clock, registries=self.registry_for
        )
        kinds = wanted(watch)
        todo = [(e, False) for e in events if e.kind in kinds]
        for cause, resumed in [*todo, *((e, True) for e in resume)]:
            tag_ref = ref.with_tag(cause.tag)
            # the window before the event: a resumed restore is judged as it was back then
            since = cause.at - dt.timedelta(seconds=limits.window)
            done = await asyncio.to_thread(
                self.store.count_events, ref.name, cause.tag, [models.EventKind.RESTORED], since
            )
            if done >= limits.max_per_tag:
                recorded = cause.detail.get("recorded_digest")
                stopped = await self._stop(tag_ref, done, since, recorded, cause, quiet=resumed)
                if stopped is not None:
                    out.append((models.Change(ref.name, cause.tag, None, stopped), stopped))
                continue
            if resumed:
                log.warning("restore_resumed ref=%s digest=%s", tag_ref, cause.new_digest)
            outcome = await restorer.run(tag_ref)
            result = "restored" if outcome.restored else "failed"
            self.metrics.restores.labels(repository=ref.name, result=result).inc()
            record = None
            if outcome.restored:
                record = await asyncio.to_thread(self.store.get_tag, ref.name, cause.tag)
            out.append((models.Change(ref.name, cause.tag, record, outcome.event), outcome.event))
        return out

    async def _stop(
        self,
        tag_ref: models.ImageRef,
        done: int,
        since: dt.datetime,
        recorded: object,
        cause: models.Event,
        *,
        quiet: bool = False,
    ) -> models.Event | None:
        """Write the one ``restore_stopped`` event of this window (None when already written;
        ``quiet``: then without the log line, for a move judged again at every check). Its old
        digest is the record (what Restore puts back), its new one what the tag answers now (what
        Accept would record)."""
        assert tag_ref.tag is not None
        already = await asyncio.to_thread(
            self.store.count_events,
            tag_ref.name,
            tag_ref.tag,
            [models.EventKind.RESTORE_STOPPED],
            since,
        )
        if already and quiet:
            return None
        reason = REASON_DELETED if cause.kind in (K.DELETED, K.BROKEN) else REASON
        log.error("restore_stopped ref=%s reason=%r", tag_ref, reason)
        if already:
            return None
        now = self.clock()
        event = models.Event(
            tag_ref.name,
            tag_ref.tag,
            models.EventKind.RESTORE_STOPPED,
            now,
            old_digest=recorded if isinstance(recorded, str) else None,
            new_digest=cause.new_digest,
            detail={
                "reason": reason,
                "after": cause.kind.value,
                "recorded_digest": recorded,
                "restores": done,
                "max_per_tag": self.limits.max_per_tag,
                "window_seconds": self.limits.window,
                "loud": True,
            },
            actor=restore.ACTOR_AUTO,
        )
        change = models.Change(tag_ref.name, tag_ref.tag, None, event)
        (saved,) = await asyncio.to_thread(self.store.apply_changes, tag_ref.name, now, [change])
        return saved
