"""Put a release back: the restore procedure (docs/ARCHITECTURE.md, "Restore").

1. Take the recorded digest (or another digest that was once the tag's trusted one); fetch its
   manifest by digest from the registry, else from the archive; verify sha256(bytes) == digest.
   The bytes are the identity: JSON is never parsed-and-re-serialised on the way.
2. For an index, check every child manifest exists (HEAD by digest); archived children that are
   missing are re-PUT (by digest) first. Check the config and layer blobs exist. Anything gone
   for good means ``restore_failed`` with the reason, and nothing in the registry is changed.
3. PUT the bytes to the tag with Content-Type = their media type (push-scoped token).
4. HEAD the tag: it must answer the digest; record ``restored`` (else ``restore_failed``).

Loop protection (step 5) is the caller's policy (``service``): a person may always restore.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import logging
from collections.abc import Callable
from typing import Any

from watchdog import errors, models
from watchdog.registry import client as registry_client
from watchdog.registry import copy as registry_copy
from watchdog.registry import media, resolve
from watchdog.store import repo as store_repo

log = logging.getLogger("watchdog.restore")

ACTOR_AUTO = "watchdog"

K = models.EventKind

# Events whose digests were, at that moment, the tag's trusted (recorded) digest.
_TRUSTED_NEW = (K.FIRST_SEEN, K.ACCEPTED, K.RESTORED, K.REVERTED)


class BlobState(enum.Enum):
    """What a plan found of one config or layer blob (``Plan.blob_counts`` and the plan's text
    count every state)."""

    PRESENT = "present"
    IN_VAULT = "in_vault"  # gone from the registry, copied back from the vault's kept copy
    MISSING = "missing"  # gone from the registry and not in the vault: the restore cannot be done


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a restore of one tag would do; computed without changing anything."""

    repository: str  # ImageRef.name, e.g. "ghcr.io/deephaven/server"
    path: str  # the repository path inside its registry, e.g. "deephaven/server"
    tag: str
    digest: str
    manifest: models.Manifest | None  # None when the bytes are gone for good
    source: str  # where the bytes come from: "registry", "archive" or "" (nowhere)
    current_digest: str | None  # what the tag answered at the last check
    children_present: tuple[str, ...] = ()
    children_to_put: tuple[models.Manifest, ...] = ()
    blobs: tuple[tuple[str, BlobState], ...] = ()  # every blob checked, once, in order
    problems: tuple[str, ...] = ()  # things gone for good: the restore cannot be done
    # The record says the tag answers ``digest``, its recorded digest, and is ok, and the
    # registry, asked now, agrees: a restore has nothing to do (the CLI does not PUT it again).
    up_to_date: bool = False
    # The record says so but the registry, asked now, answers this (None: the tag is gone):
    # moved since the last check, unseen by any check yet. "" when not asked or agreeing.
    unseen: str | None = ""
    # Recoverable from the vault: where (its full name, "" without a kept copy), the blobs the
    # registry lost that the vault copies back, the children and manifest that came from it.
    vault: str = ""
    blobs_from_vault: tuple[str, ...] = ()
    children_from_vault: tuple[str, ...] = ()

    @property
    def from_vault(self) -> bool:
        """True when the restore brings bytes back from the vault."""
        return bool(self.blobs_from_vault or self.children_from_vault or self.source == "vault")

    @property
    def ok(self) -> bool:
        """The restore can be done (it may have nothing to do: ``nothing_to_do``)."""
        return self.manifest is not None and not self.problems

    @property
    def nothing_to_do(self) -> bool:
        return self.up_to_date

    @property
    def blobs_checked(self) -> tuple[str, ...]:
        return tuple(digest for digest, _ in self.blobs)

    def blob_counts(self) -> dict[str, int]:
        """How many blobs were found in each state, every state named (0 included)."""
        counts = {state.value: 0 for state in BlobState}
        for _, state in self.blobs:
            counts[state.value] += 1
        return counts

    @property
    def reason(self) -> str | None:
        """Why the restore cannot be done, in one phrase (None when it can)."""
        if self.ok:
            return None
        if len(self.problems) == 1:
            return self.problems[0]
        missing = self.blob_counts()[BlobState.MISSING.value]
        if missing == len(self.problems):
            return f"{missing} blobs are gone from the registry"
        return f"{len(self.problems)} problems"

    def verdict(self) -> str:
        """What the restore does, in one line: nothing to do, cannot restore, or would PUT."""
        if self.nothing_to_do:
            return f"nothing to do: the tag already answers the recorded digest {self.digest}"
        if not self.ok:
            return f"cannot restore: {self.reason}; nothing was changed"
        return f"would PUT {self.manifest_size} bytes to {self.repository}:{self.tag}, then HEAD it"

    def describe(self) -> list[str]:
        """The plan as lines for a person (what ``restore --dry-run`` prints): the verdict right
        under the first line, then the problems (when more than the one the verdict names),
        then what was found."""
        lines = [f"restore {self.repository}:{self.tag} to {self.digest}", "  " + self.verdict()]
        if len(self.problems) > 1 or self.nothing_to_do:  # else the verdict names the one
            lines += [f"  PROBLEM: {problem}" for problem in self.problems]
        if self.unseen != "":
            now = self.unseen or "nothing (the tag is gone)"
            lines.append(f"  the tag answers {now} now: moved since the last check, unseen yet")
        elif self.current_digest:
            lines.append(f"  the tag answered {self.current_digest} at the last check")
        else:
            lines.append("  the tag was deleted at the last check")
        if self.manifest is not None:
            lines.append(
                f"  manifest: {self.manifest.media_type}, {len(self.manifest.body)} bytes, "
                f"from the {self.source}"
            )
        for child in self.children_to_put:
            where = "the vault" if child.digest in self.children_from_vault else "the archive"
            lines.append(f"  re-PUT child {child.digest} ({child.media_type}) from {where}")
        for blob in self.blobs_from_vault:
            lines.append(f"  copy blob {blob} back from the vault {self.vault}")
        for digest in self.children_present:
            lines.append(f"  child {digest}: present")
        if self.manifest is not None:
            counts = ", ".join(  # "in the vault" only when the vault brings some back
                f"{n} {state.replace('_', ' the ')}"
                for state, n in self.blob_counts().items()
                if n or state != BlobState.IN_VAULT.value
            )
            lines.append(f"  blobs: {len(self.blobs)} checked, {counts}")
        return lines

    @property
    def manifest_size(self) -> int:
        return len(self.manifest.body) if self.manifest is not None else 0

    def detail(self) -> dict[str, Any]:
        """What an event records about this plan (JSON-ready)."""
        return {
            "source": self.source,
            "media_type": self.manifest.media_type if self.manifest is not None else None,
            "children_reput": [c.digest for c in self.children_to_put],
            "blobs_checked": len(self.blobs),
            **(
                {
                    "vault": self.vault,
                    "blobs_from_vault": len(self.blobs_from_vault),
                    "children_from_vault": list(self.children_from_vault),
                }
                if self.from_vault
                else {}
            ),
        }


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The result of one restore: the event written (``restored`` or ``restore_failed``)."""

    event: models.Event
    plan: Plan | None

    @property
    def restored(self) -> bool:
        return self.event.kind is K.RESTORED

    @property
    def reason(self) -> str | None:
        reason = self.event.detail.get("reason")
        return str(reason) if reason is not None else None


def restorable_digests(record: models.TagRecord, history: list[models.Event]) -> set[str]:
    """Every digest that was at some point the tag's trusted (recorded) digest."""
    out = {record.recorded_digest}
    for event in history:
        if event.kind in _TRUSTED_NEW and event.new_digest:
            out.add(event.new_digest)
        if event.kind is K.ACCEPTED and event.old_digest:
            out.add(event.old_digest)
        recorded = event.detail.get("recorded_digest")
        if isinstance(recorded, str):
            out.add(recorded)
    return out


class Restorer:
    """Restores tags of one registry. ``actor`` names who asked, in every event written."""

    def __init__(
        self,
        store: store_repo.Store,
        registry: registry_client.RegistryClient,
        *,
        clock: Callable[[], dt.datetime],
        actor: str = ACTOR_AUTO,
        registries: Callable[[str], registry_client.RegistryClient] | None = None,
    ) -> None:
        """``registries`` gives the client of another registry host: a vault kept there."""
        self.store = store
        self.registry = registry
        self.clock = clock
        self.actor = actor
        self.registries = registries

    async def plan(self, ref: models.ImageRef, digest: str | None = None) -> Plan:
        """Work out what restoring ``ref`` (a tagged reference) to ``digest`` (default: the
        recorded digest) takes, changing nothing.

        Raises UsageError when the tag was never recorded or ``digest`` was never its trusted
        digest; RegistryError when the registry cannot be asked. Things gone for good are not
        errors here: they are the plan's ``problems``.
        """
        record, target = await self._target(ref, digest)
        assert ref.tag is not None  # _target refuses an untagged reference
        path = ref.repository
        vault = await self._vault(ref.name, target)
        manifest, source = await self._fetch(ref.name, path, target, archive_first=False)
        if manifest is None and vault is not None:
            manifest = await _from_vault(vault, target)
            source = "vault" if manifest is not None else ""
        base = Plan(
            repository=ref.name,
            path=path,
            tag=ref.tag,
            digest=target,
            manifest=manifest,
            source=source,
            current_digest=record.current_digest,
            vault=vault.name if vault is not None else "",
        )
        if record.state is models.TagState.OK and record.current_digest == target:
            # "nothing to do" only when the registry agrees with the last check's word
            answers = await self._answers(path, ref.tag)
            if answers == target:
                base = dataclasses.replace(base, up_to_date=target == record.recorded_digest)
            else:
                base = dataclasses.replace(base, unseen=answers)
        if manifest is None:
            return dataclasses.replace(
                base,
                problems=(
                    f"manifest {target} is gone from the registry and is not in the archive",
                ),
            )
        problems: list[str] = []
        present: list[str] = []
        to_put: list[models.Manifest] = []
        found = _Found(vault)
        if media.is_index(manifest.media_type):
            images = await self._children_of(
                ref.name, path, manifest, present, to_put, problems, found
            )
        else:
            images = [manifest]
        blobs = await self._check_blobs(path, images, problems, found)
        return dataclasses.replace(
            base,
            children_present=tuple(present),
            children_to_put=tuple(to_put),
            blobs=tuple(blobs),
            problems=tuple(problems),
            blobs_from_vault=tuple(found.blobs),
            children_from_vault=tuple(found.children),
        )

    async def _answers(self, path: str, tag: str) -> str | None:
        """The digest the tag answers now; None when it is definitively absent."""
        try:
            return (await resolve.resolve_digest(self.registry, path, tag)).digest
        except errors.NotFound:
            return None

    async def _target(
        self, ref: models.ImageRef, digest: str | None
    ) -> tuple[models.TagRecord, str]:
        """The record of ``ref`` and the digest to restore it to (``digest``, which must have
        been a trusted digest of the tag, or the recorded one). Raises UsageError otherwise."""
        if ref.tag is None:
            raise errors.UsageError(f"restore needs a tagged reference, got {ref}")
        record = await asyncio.to_thread(self.store.get_tag, ref.name, ref.tag)
        if record is None:
            raise errors.UsageError(
                f"{ref.name}:{ref.tag} was never recorded: only a recorded digest can be restored"
            )
        if digest is None:
            return record, record.recorded_digest
        models.check_digest(digest)
        history = await asyncio.to_thread(self.store.history, ref.name, ref.tag)
        if digest not in restorable_digests(record, history):
            raise errors.UsageError(
                f"{digest} was never recorded for {ref.name}:{ref.tag}; "
                f"only its recorded digests can be restored (now {record.recorded_digest})"
            )
        return record, digest

    async def _children_of(
        self,
        name: str,
        path: str,
        index: models.Manifest,
        present: list[str],
        to_put: list[models.Manifest],
        problems: list[str],
        found: _Found,
    ) -> list[models.Manifest]:
        """Check every child of ``index``: those the registry has go to ``present``, archived
        ones it lost (or, not archived, kept in the vault: ``found``) to ``to_put``, lost ones
        to ``problems``. Returns the image manifests."""
        images: list[models.Manifest] = []
        for child_digest, _ in _children(index, problems):
            if await self.registry.manifest_exists(path, child_digest):
                present.append(child_digest)
                child, _ = await self._fetch(name, path, child_digest, archive_first=True)
            else:
                child = await asyncio.to_thread(self.store.get_manifest, name, child_digest)
                if child is None and found.vault is not None:
                    child = await _from_vault(found.vault, child_digest)
                    if child is not None:
                        found.children.append(child_digest)
                if child is None:
                    problems.append(
                        f"child manifest {child_digest} is gone from the registry "
                        "and is not in the archive"
                    )
                    continue
                to_put.append(child)
            if child is not None and not media.is_index(child.media_type):
                images.append(child)
        return images

    async def _check_blobs(
        self, path: str, images: list[models.Manifest], problems: list[str], found: _Found
    ) -> list[tuple[str, BlobState]]:
        """HEAD every config and layer blob of ``images`` once; the lost ones the vault keeps
        go to ``found`` (and are ``IN_VAULT``), the others to ``problems``. Returns each blob
        checked with what was found, in order."""
        blobs: dict[str, BlobState] = {}
        for image in images:
            try:
                digests = media.blobs(image.body)
            except errors.ProtocolError as exc:
                problems.append(f"manifest {image.digest}: {exc}")
                continue
            for blob in digests:
                if blob in blobs:
                    continue
                if await self.registry.head_blob(path, blob):
                    blobs[blob] = BlobState.PRESENT
                    continue
                if found.vault is not None and await found.vault.client.head_blob(
                    found.vault.path, blob
                ):
                    found.blobs.append(blob)
                    blobs[blob] = BlobState.IN_VAULT
                    continue
                blobs[blob] = BlobState.MISSING
                problems.append(f"blob {blob} (of {image.digest}) is gone from the registry")
        return list(blobs.items())

    async def run(self, ref: models.ImageRef, digest: str | None = None) -> Outcome:
        """Restore ``ref`` to its recorded digest (or ``digest``) and record the outcome.

        Writes exactly one event: ``restored`` (the record becomes state ok, current = recorded
        = the digest) or ``restore_failed`` with ``detail.reason`` (the record untouched). A
        registry failure is a ``restore_failed`` too; UsageError (not restorable) writes nothing.
        """
        plan: Plan | None = None
        try:
            plan = await self.plan(ref, digest)
            if not plan.ok:
                return await self._failed(ref, plan, "; ".join(plan.problems), plan.digest)
            return await self._execute(plan)
        except errors.RegistryError as exc:
            target = plan.digest if plan is not None else digest
            return await self._failed(ref, plan, f"could not complete: {exc}", target)

    async def _execute(self, plan: Plan) -> Outcome:
        assert plan.manifest is not None
        if plan.blobs_from_vault:
            vault = await self._vault(plan.repository, plan.digest)
            if vault is None:
                raise errors.RegistryUnavailable(f"the vault {plan.vault} cannot be reached")
            for blob in plan.blobs_from_vault:
                how = await registry_copy.copy_blob(
                    vault.client, vault.path, self.registry, plan.path, blob
                )
                log.info(
                    "restore_blob_from_vault ref=%s blob=%s how=%s", plan.repository, blob, how
                )
        for child in plan.children_to_put:
            await self.registry.put_manifest(plan.path, child.digest, child.body, child.media_type)
            log.info("restore_child_put ref=%s@%s", plan.repository, child.digest)
        await self.registry.put_manifest(
            plan.path, plan.tag, plan.manifest.body, plan.manifest.media_type
        )
        answered = (await resolve.resolve_digest(self.registry, plan.path, plan.tag)).digest
        ref = models.ImageRef.parse(f"{plan.repository}:{plan.tag}")
        if answered != plan.digest:
            return await self._failed(
                ref, plan, f"after the PUT the tag answers {answered}, not {plan.digest}", None
            )
        now = self.clock()
        record = await asyncio.to_thread(self.store.get_tag, plan.repository, plan.tag)
        assert record is not None  # plan() found it; records are never deleted
        new_record = dataclasses.replace(
            record,
            recorded_digest=plan.digest,
            current_digest=plan.digest,
            media_type=plan.manifest.media_type,
            state=models.TagState.OK,
            missing_count=0,
            last_checked=now,
            last_changed=now,
        )
        event = models.Event(
            plan.repository,
            plan.tag,
            K.RESTORED,
            now,
            old_digest=record.current_digest,
            new_digest=plan.digest,
            detail=plan.detail(),
            actor=self.actor,
        )
        change = models.Change(plan.repository, plan.tag, new_record, event)
        (saved,) = await asyncio.to_thread(self.store.apply_changes, plan.repository, now, [change])
        log.warning(
            "tag_restored ref=%s:%s digest=%s by=%s",
            plan.repository,
            plan.tag,
            plan.digest,
            self.actor,
        )
        return Outcome(saved, plan)

    async def _failed(
        self, ref: models.ImageRef, plan: Plan | None, reason: str, digest: str | None
    ) -> Outcome:
        assert ref.tag is not None
        now = self.clock()
        detail: dict[str, Any] = {"reason": errors.truncate(reason, 1000)}
        if plan is not None:
            detail.update(plan.detail())
        event = models.Event(
            ref.name,
            ref.tag,
            K.RESTORE_FAILED,
            now,
            old_digest=plan.current_digest if plan is not None else None,
            new_digest=digest,
            detail=detail,
            actor=self.actor,
        )
        change = models.Change(ref.name, ref.tag, None, event)
        (saved,) = await asyncio.to_thread(self.store.apply_changes, ref.name, now, [change])
        log.warning(
            "restore_failed ref=%s:%s by=%s reason=%r", ref.name, ref.tag, self.actor, reason
        )
        return Outcome(saved, plan)

    async def _vault(self, name: str, digest: str) -> _Vault | None:
        """Where the vault keeps release ``digest`` of ``name`` (its latest kept copy), with a
        client for it; None without a kept copy, or when no client for its registry is at hand."""
        kept = await asyncio.to_thread(self.store.vault.kept, name, digest)
        if not kept or not kept[0].vault_repository:
            return None
        where = models.ImageRef.parse(kept[0].vault_repository, allow_tag=False)
        if where.host == self.registry.name:
            client = self.registry
        elif self.registries is not None:
            client = self.registries(where.host)
        else:
            log.warning("restore_vault_unreachable vault=%s: no client for its registry", where)
            return None
        return _Vault(where.name, client, where.repository)

    async def _fetch(
        self, name: str, path: str, digest: str, *, archive_first: bool
    ) -> tuple[models.Manifest | None, str]:
        """The verified bytes of manifest ``digest`` and where they came from, or (None, "")."""
        if archive_first:
            archived = await asyncio.to_thread(self.store.get_manifest, name, digest)
            if archived is not None:
                return _verified(archived), "archive"
        lie: errors.ProtocolError | None = None
        try:
            fetched = await self.registry.get_manifest(path, digest, expected_digest=digest)
            return _verified(fetched), "registry"
        except errors.NotFound:
            pass
        except errors.ProtocolError as exc:
            # The registry served bytes that are not this digest: the verified archive copy is
            # the release; without one, the lie is the reason the restore cannot go on.
            log.warning("restore_registry_lied digest=%s error=%r", digest, str(exc))
            lie = exc
        archived = await asyncio.to_thread(self.store.get_manifest, name, digest)
        if archived is not None:
            return _verified(archived), "archive"
        if lie is not None:
            raise lie
        return None, ""


@dataclasses.dataclass(frozen=True)
class _Vault:
    name: str  # HOST/PATH, for people
    client: registry_client.RegistryClient
    path: str


@dataclasses.dataclass
class _Found:
    """What a plan found lost from the registry and kept in ``vault``."""

    vault: _Vault | None
    blobs: list[str] = dataclasses.field(default_factory=list)
    children: list[str] = dataclasses.field(default_factory=list)


async def _from_vault(vault: _Vault, digest: str) -> models.Manifest | None:
    """Manifest ``digest`` from the vault, verified; None when the vault does not have it."""
    try:
        return _verified(
            await vault.client.get_manifest(vault.path, digest, expected_digest=digest)
        )
    except errors.NotFound:
        return None


def _verified(manifest: models.Manifest) -> models.Manifest:
    """``manifest`` when its bytes hash to its digest (the registry client and the store check
    too; this is the last line before bytes are PUT); ProtocolError otherwise."""
    actual = models.sha256_digest(manifest.body)
    if actual != manifest.digest:
        raise errors.ProtocolError(f"manifest {manifest.digest} hashes to {actual}: not restoring")
    return manifest


def _children(manifest: models.Manifest, problems: list[str]) -> list[tuple[str, str | None]]:
    try:
        return media.children(manifest.body)
    except errors.ProtocolError as exc:
        problems.append(f"index {manifest.digest}: {exc}")
        return []
