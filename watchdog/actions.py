"""The actions a person starts on one tag: plan a restore, restore, accept. One code path for the
CLI, the HTTP API and the Slack buttons.

While an action writes, no check of the tag's repository may run: a check that looked at a tag
while a restore put it back would take the restore for someone else's ``reverted``. How the
repository is held is the caller's (``Hold``): the CLI holds its claim (``claimed``: a check by a
daemon on PostgreSQL holds it too), the daemon its own per-repository lock first, then the claim.
A plan (``restore --dry-run``) changes nothing and holds nothing.

A command naming several tags (``restore A B C``, ``restore --drifted``, ``accept A B``) judges
all of them first (one that cannot be acted on is a UsageError naming each, and nothing is
changed), then acts on each in turn under its own repository's hold (``plan_all``,
``restore_planned``, ``accept_all``): what became of each is a ``TagResult``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import getpass
from collections.abc import AsyncIterator, Callable, Sequence

from watchdog import errors, models, restore, views
from watchdog.registry import client as registry_client
from watchdog.store import claims as store_claims
from watchdog.store import repo as store_repo

# seconds a hand-started restore or accept waits for a check of its repository (here or on
# another replica, PostgreSQL), then gives up (the CLI exits 3, the API answers 503, Slack asks
# to tap again)
CLAIM_WAIT = 30.0
CLAIM_POLL = 0.2  # seconds between two tries of a claim held by a check
ACTOR_API = "api"

# Holds a repository (given by ImageRef.name) against checks for as long as the context lasts;
# raises errors.StoreError when it cannot be had in time.
Hold = Callable[[str], contextlib.AbstractAsyncContextManager[None]]
Registries = Callable[[str], registry_client.RegistryClient]  # registry host -> its client


class AlreadyDone(errors.UsageError):
    """The tag answers, as its record, the digest a restore or accept was asked for: nothing
    to do (a second tap, or someone was quicker)."""


def cli_actor() -> str:
    """Who a restore or accept from the command line is recorded as: ``cli:<OS user>`` (``cli``
    when the user cannot be told)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@contextlib.asynccontextmanager
async def claimed(
    claims: store_claims.Claims,
    repository: str,
    clock: models.Clock = models.utcnow,
    wait: float = CLAIM_WAIT,
) -> AsyncIterator[None]:
    """Hold the claim on ``repository`` (store/claims.py), so that no check of it runs on any
    replica meanwhile. Waits up to ``wait`` seconds for a check that holds it, then raises
    StoreError. Polls a quick try (pg_try_advisory_lock) rather than blocking a worker thread."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        claim = await asyncio.to_thread(claims.acquire, repository, clock(), slot=None)
        if claim is not None:
            break
        if loop.time() >= deadline:
            raise errors.StoreError(
                f"{repository} is being checked by another process (a replica): "
                "try again in a moment"
            )
        await asyncio.sleep(CLAIM_POLL)
    try:
        yield
    finally:
        await asyncio.to_thread(claim.release)


def claims_hold(
    claims: store_claims.Claims, clock: models.Clock = models.utcnow, wait: float = CLAIM_WAIT
) -> Hold:
    """A Hold that takes the repository's claim (``claimed``): what a process without checks of
    its own (the CLI) needs."""
    return lambda repository: claimed(claims, repository, clock, wait)


@dataclasses.dataclass(frozen=True)
class Actions:
    """Plan, restore and accept over ``store``; ``hold`` keeps checks of the repository away while
    an action writes, ``registries`` gives the client of a registry host (only plan and restore
    need one). ``on_restore(repository, result)`` hears of every restore run (result ``restored``
    or ``failed``: the restores_total metric), ``on_written()`` of every event written (its
    alerts are queued with it)."""

    store: store_repo.Store
    hold: Hold
    _: dataclasses.KW_ONLY
    clock: models.Clock = models.utcnow
    registries: Registries | None = None
    on_restore: Callable[[str, str], None] | None = None
    on_written: Callable[[], None] | None = None

    def _restorer(self, ref: models.ImageRef, actor: str) -> restore.Restorer:
        if self.registries is None:
            raise RuntimeError("plan and restore need the registries' clients")
        return restore.Restorer(
            self.store,
            self.registries(ref.host),
            clock=self.clock,
            actor=actor,
            registries=self.registries,  # a vault on another registry
        )

    async def plan(self, ref: models.ImageRef, digest: str | None, actor: str) -> restore.Plan:
        """What restoring ``ref`` to ``digest`` (default: its record) would do; changes nothing.
        Raises UsageError when the tag or the digest cannot be restored (restore.Restorer.plan)."""
        return await self._restorer(ref, actor).plan(ref, digest)

    async def restore(
        self,
        ref: models.ImageRef,
        digest: str | None,
        actor: str,
        *,
        still_recorded: bool = False,
    ) -> restore.Outcome:
        """Restore ``ref`` to ``digest`` (default: its record), holding its repository, and
        record the outcome (one ``restored`` or ``restore_failed`` event).

        ``still_recorded``: only while ``digest`` is the tag's record and the tag does not answer
        it already, judged under the hold (``check_still_wanted``: UsageError, AlreadyDone)."""
        restorer = self._restorer(ref, actor)
        async with self.hold(ref.name):
            if still_recorded:
                assert digest is not None and ref.tag is not None
                record = await asyncio.to_thread(self.store.get_tag, ref.name, ref.tag)
                check_still_wanted(record, ref, digest)
            outcome = await restorer.run(ref, digest)
        if self.on_restore is not None:
            self.on_restore(ref.name, "restored" if outcome.restored else "failed")
        if self.on_written is not None:
            self.on_written()
        return outcome

    async def accept(
        self, ref: models.ImageRef, reason: str | None, actor: str, expected: str | None = None
    ) -> models.Event:
        """Make the tag's current digest its record, holding its repository (``accept``)."""
        async with self.hold(ref.name):
            event = await asyncio.to_thread(
                accept,
                self.store,
                ref,
                now=self.clock(),
                actor=actor,
                reason=reason,
                expected=expected,
            )
        if self.on_written is not None:
            self.on_written()
        return event


# --- several tags per command ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TagResult:
    """What became of one tag: ``outcome`` (a key of views.EXIT_CODES), the plan, the event
    written (if any) and, unless it went well, why."""

    ref: models.ImageRef
    outcome: str
    plan: restore.Plan | None = None
    event: models.Event | None = None
    reason: str | None = None


def unique(refs: list[models.ImageRef]) -> list[models.ImageRef]:
    """``refs`` without repeats (the same tag named twice is restored once), in order."""
    seen: dict[tuple[str, str | None], models.ImageRef] = {}
    for ref in refs:
        seen.setdefault((ref.name, ref.tag), ref)
    return list(seen.values())


def check_restore_request(
    refs: Sequence[str],
    drifted: bool,
    repository: str | None,
    digest: str | None,
    *,
    incident: int | None = None,
) -> None:
    """UsageError unless ``restore`` was given REFs, ``--drifted`` or ``--incident`` (one of
    them), ``--repository`` only with ``--drifted`` and ``--digest`` only with a single REF."""
    if incident is not None:
        if refs or drifted or repository or digest:
            raise errors.UsageError(
                "--incident restores the tags of one incident: give no REF, --drifted, "
                "--repository or --digest with it"
            )
        return
    if drifted and refs:
        raise errors.UsageError("--drifted restores every drifted tag: give no REF with it")
    if not drifted and (not refs or repository):
        raise errors.UsageError(
            "restore needs a REF (or several), --drifted [--repository R] or --incident ID"
        )
    if digest and (drifted or len(refs) > 1):
        raise errors.UsageError("--digest goes with a single REF")


def parse_refs(texts: Sequence[str]) -> list[models.ImageRef]:
    """Every text parsed as a tagged reference, repeats dropped; one UsageError naming every
    bad one (``refuse_all``)."""
    refs: list[models.ImageRef] = []
    problems: list[str] = []
    for text in texts:
        try:
            refs.append(models.ImageRef.parse(text, require_tag=True))
        except errors.InvalidReference as exc:
            problems.append(str(exc))
    refuse_all(problems, len(texts), "used")
    return unique(refs)


def drifted_refs(store: store_repo.Store, repository: str | None = None) -> list[models.ImageRef]:
    """Every tag (of ``repository``, a repository reference, else of all) the record shows
    drifted or deleted, in the record's order."""
    if repository is not None:
        repository = models.ImageRef.parse(repository, allow_tag=False).name
    wanted = (models.TagState.DRIFTED, models.TagState.DELETED)
    return [
        models.ImageRef.parse(record.ref)
        for record in store.all_tags(repository)
        if record.state in wanted
    ]


def nothing_drifted(store: store_repo.Store, repository: str | None = None) -> str:
    """What ``restore --drifted`` says when ``drifted_refs`` found nothing: that nothing is
    drifted, or that ``repository`` has no tag recorded at all (a typo, another database)."""
    if repository is None:
        return "nothing drifted: every recorded tag answers its recorded digest"
    name = models.ImageRef.parse(repository, allow_tag=False).name
    if not store.all_tags(name):
        return f"no tags of {name} recorded: nothing to restore (`status` lists what is)"
    return f"nothing drifted in {name}: every recorded tag answers its recorded digest"


class UnknownIncident(errors.UsageError):
    """No incident has the id asked for (the API answers 404)."""


# The states a restore of an incident's tags puts right.
RESTORABLE_STATES = (models.TagState.DRIFTED, models.TagState.DELETED, models.TagState.BROKEN)


def incident_refs(store: store_repo.Store, incident_id: int) -> list[models.ImageRef]:
    """Every tag of incident ``incident_id`` whose record is drifted, deleted or broken now, in
    the order the tags joined it (those restored or accepted since are left alone). Raises
    UnknownIncident when there is no such incident. Blocking."""
    incident = store.incidents.get(incident_id)
    if incident is None:
        raise UnknownIncident(views.no_incident(incident_id))
    refs: list[models.ImageRef] = []
    for repository, tag in incident.latest_by_tag():
        record = store.get_tag(repository, tag)
        if record is not None and record.state in RESTORABLE_STATES:
            refs.append(models.ImageRef.parse(record.ref))
    return refs


def nothing_in_incident(incident_id: int) -> str:
    """What ``restore --incident`` says when ``incident_refs`` found nothing to restore."""
    return (
        f"nothing to restore in incident {incident_id}: none of its tags is drifted, deleted or "
        "broken now"
    )


def refuse_all(problems: list[str], total: int, what: str) -> None:
    """Raise one UsageError for every reference that cannot be acted on (of ``total``): all are
    judged before anything is changed, and one bad reference changes nothing."""
    if not problems:
        return
    if total == 1:
        raise errors.UsageError(problems[0])
    lines = "\n".join(f"  - {p}" for p in problems)
    raise errors.UsageError(
        f"{len(problems)} of {total} references cannot be {what}; nothing was changed:\n{lines}"
    )


async def plan_all(
    acts: Actions, refs: list[models.ImageRef], digest: str | None, actor: str
) -> list[TagResult]:
    """Plan the restore of every tag of ``refs`` (to ``digest``, else its record), changing
    nothing: ``planned``, ``nothing_to_do``, ``cannot_restore`` or ``could_not_complete`` each.
    Raises UsageError naming every tag that cannot be restored at all (``refuse_all``)."""
    results: list[TagResult] = []
    problems: list[str] = []
    for ref in refs:
        try:
            plan = await acts.plan(ref, digest, actor)
        except errors.RegistryError as exc:
            reason = f"could not complete: {exc}; nothing was changed"
            results.append(TagResult(ref, views.COULD_NOT_COMPLETE, reason=reason))
            continue
        except (errors.UsageError, errors.InvalidReference) as exc:
            problems.append(str(exc))
            continue
        if plan.nothing_to_do:
            outcome = views.NOTHING_TO_DO
        else:
            outcome = views.PLANNED if plan.ok else views.CANNOT_RESTORE
        results.append(TagResult(ref, outcome, plan=plan, reason=plan.reason))
    refuse_all(problems, len(refs), "restored")
    return results


async def restore_planned(
    acts: Actions, planned: TagResult, digest: str | None, actor: str
) -> TagResult:
    """Carry out one tag's plan (``plan_all``): restore it under its repository's hold, on the
    condition (without ``digest``) that its record is still the digest planned: a restore or
    accept that got there first (another process) wins, the tag is not put back twice.
    ``planned`` that cannot be carried out (``nothing_to_do``, ``could_not_complete``) is
    returned as it is."""
    if planned.plan is None or planned.outcome == views.NOTHING_TO_DO:
        return planned
    ref = planned.ref
    # A tag moved unseen since the last check: its record (ok) would call the restore done.
    judged = digest is None and planned.plan.unseen == ""
    try:
        outcome = await acts.restore(
            ref, digest or planned.plan.digest, actor, still_recorded=judged
        )
    except AlreadyDone as exc:
        return TagResult(ref, views.NOTHING_TO_DO, plan=planned.plan, reason=str(exc))
    except errors.UsageError as exc:
        return TagResult(ref, views.REFUSED, plan=planned.plan, reason=str(exc))
    except (errors.RegistryError, errors.StoreError) as exc:
        reason = f"could not complete: {exc}; nothing was changed"
        return TagResult(ref, views.COULD_NOT_COMPLETE, plan=planned.plan, reason=reason)
    return TagResult(
        ref,
        views.RESTORED if outcome.restored else views.FAILED,
        plan=outcome.plan,
        event=outcome.event,
        reason=outcome.reason,
    )


async def restore_all(
    acts: Actions,
    refs: list[models.ImageRef],
    digest: str | None,
    actor: str,
    *,
    dry_run: bool = False,
    show: Callable[[list[TagResult]], None] | None = None,
) -> list[TagResult]:
    """Plan every tag of ``refs`` (``plan_all``: UsageError before anything changes), hand the
    plans to ``show``, then (unless ``dry_run``) carry each out in turn (``restore_planned``)."""
    planned = await plan_all(acts, refs, digest, actor)
    if show is not None:
        show(planned)
    if dry_run:
        return planned
    return [await restore_planned(acts, p, digest, actor) for p in planned]


async def accept_all(
    acts: Actions, refs: list[models.ImageRef], reason: str | None, actor: str
) -> list[TagResult]:
    """Accept the current digest of every tag of ``refs``, each under its repository's hold.
    Every tag is judged first (``check_acceptable``): UsageError naming each one that cannot be
    accepted, and nothing accepted. A tag accepted meanwhile by someone else is
    ``nothing_to_do``; a database that cannot be reached, ``could_not_complete``."""
    problems: list[str] = []
    for ref in refs:
        try:
            await asyncio.to_thread(check_acceptable, acts.store, ref)
        except errors.UsageError as exc:
            problems.append(str(exc))
    refuse_all(problems, len(refs), "accepted")
    results: list[TagResult] = []
    for ref in refs:
        try:
            event = await acts.accept(ref, reason, actor)
        except AlreadyDone as exc:
            results.append(TagResult(ref, views.NOTHING_TO_DO, reason=str(exc)))
        except errors.UsageError as exc:
            results.append(TagResult(ref, views.REFUSED, reason=str(exc)))
        except errors.StoreError as exc:
            reason = f"could not complete: {exc}; nothing was changed"
            results.append(TagResult(ref, views.COULD_NOT_COMPLETE, reason=reason))
        else:
            results.append(TagResult(ref, views.ACCEPTED, event=event))
    return results


def check_still_wanted(record: models.TagRecord | None, ref: models.ImageRef, digest: str) -> None:
    """For a restore to ``digest`` asked on the strength of an alert: raise UsageError unless
    ``digest`` is still the tag's record, AlreadyDone when the tag is back at it already. Called
    under the repository's hold, so that an accept or restore that got there first wins."""
    if record is None:
        raise errors.UsageError(f"{ref.name}:{ref.tag} was never recorded")
    if record.recorded_digest != digest:
        raise errors.UsageError(
            f"the record of {ref.name}:{ref.tag} changed since (now "
            f"{models.short_digest(record.recorded_digest)}): nothing was restored"
        )
    if record.state is models.TagState.OK and record.current_digest == digest:
        raise AlreadyDone(f"{ref.name}:{ref.tag} already answers {models.short_digest(digest)}")


def accept(
    store: store_repo.Store,
    ref: models.ImageRef,
    *,
    now: dt.datetime,
    actor: str,
    reason: str | None = None,
    expected: str | None = None,
) -> models.Event:
    """Make the tag's current digest its recorded one (a deliberate re-release); return the
    ``accepted`` event written with the record (state ok) in one transaction. Blocking; the
    caller holds the repository.

    Raises UsageError when the tag was never recorded, is deleted, already answers its recorded
    digest (nothing to accept; AlreadyDone when that is the digest asked for), or, with
    ``expected``, answers another digest than that one (the person accepting saw ``expected``:
    what moved since was never shown to them).
    """
    record = check_acceptable(store, ref, expected)
    assert record.current_digest is not None  # check_acceptable refuses a deleted tag
    new_record = dataclasses.replace(
        record,
        recorded_digest=record.current_digest,
        state=models.TagState.OK,
        missing_count=0,
        last_changed=now,
    )
    event = models.Event(
        record.repository,
        record.tag,
        models.EventKind.ACCEPTED,
        now,
        old_digest=record.recorded_digest,
        new_digest=record.current_digest,
        detail={"reason": reason or ""},
        actor=actor,
    )
    (saved,) = store.apply_changes(
        record.repository, now, [models.Change(record.repository, record.tag, new_record, event)]
    )
    return saved


def check_acceptable(
    store: store_repo.Store, ref: models.ImageRef, expected: str | None = None
) -> models.TagRecord:
    """The record of ``ref`` when its current digest can be accepted (``accept``'s rules);
    raises UsageError (AlreadyDone) otherwise. Blocking; changes nothing."""
    if ref.tag is None:
        raise errors.UsageError(f"accept needs a tagged reference, got {ref}")
    record = store.get_tag(ref.name, ref.tag)
    if record is None:
        raise errors.UsageError(f"{ref.name}:{ref.tag} was never recorded")
    if record.state is models.TagState.DELETED or record.current_digest is None:
        raise errors.UsageError(f"{record.ref} is deleted: there is no current digest to accept")
    if record.current_digest == record.recorded_digest:
        # accepted already (when it is the digest asked for), or back at its record meanwhile
        done = expected is None or expected == record.recorded_digest
        raise (AlreadyDone if done else errors.UsageError)(
            f"{record.ref} already answers its recorded digest {record.recorded_digest}"
        )
    if expected is not None and record.current_digest != expected:
        raise errors.UsageError(
            f"{record.ref} now answers {record.current_digest}, not {expected}: nothing accepted"
        )
    return record
