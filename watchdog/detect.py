"""Detection: what one observation of a tag means, given what was recorded. Pure, no I/O.

The rules (docs/DETECTION.md tells them to users):

* first sight of a tag records a silent baseline (``first_seen``);
* a different digest is a ``moved`` event only when the service has verified it by GET and hashing
  (the service guarantees that before calling ``classify``); the recorded digest stays the trusted
  one until a person accepts the move or it is restored;
* a tag already known to answer a foreign digest does not produce another event for the same digest
  (never alert twice for the same event);
* ``deleted`` only after ``policy.deletion_confirmations`` definitive "absent" answers in a row;
* an error observation never changes anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from watchdog import models

State = models.TagState
Kind = models.EventKind


@dataclasses.dataclass(frozen=True)
class Policy:
    deletion_confirmations: int = 2


DEFAULT_POLICY = Policy()


def classify(
    previous: models.TagRecord | None,
    observation: models.Observation,
    now: dt.datetime,
    *,
    repository: str,
    tag: str,
    policy: Policy = DEFAULT_POLICY,
) -> models.Change:
    """Return the record to write and the event to append for ``observation`` of one tag.

    ``Change.record is None`` means nothing to write but the batched last-checked time;
    an ERROR observation always yields an empty Change.
    """
    kind = observation.kind
    if kind is models.ObservationKind.ERROR:
        return models.Change(repository, tag)
    if kind is models.ObservationKind.ABSENT:
        return _absent(previous, now, repository, tag, policy)
    digest = observation.digest
    if digest is None:  # a PRESENT observation always carries a digest; be defensive anyway
        return models.Change(repository, tag)
    if previous is None:
        record = models.TagRecord(
            repository=repository,
            tag=tag,
            recorded_digest=digest,
            current_digest=digest,
            media_type=observation.media_type,
            state=State.OK,
            first_seen=now,
            last_checked=now,
            last_changed=now,
        )
        event = models.Event(
            repository, tag, Kind.FIRST_SEEN, now, new_digest=digest, detail=_media(observation)
        )
        return models.Change(repository, tag, record, event)
    return _present(previous, observation, digest, now)


def _media(observation: models.Observation) -> dict[str, object]:
    return {"media_type": observation.media_type} if observation.media_type else {}


def _absent(
    previous: models.TagRecord | None, now: dt.datetime, repository: str, tag: str, policy: Policy
) -> models.Change:
    if previous is None or previous.state is State.DELETED:
        return models.Change(repository, tag)
    missing = previous.missing_count + 1
    if missing < policy.deletion_confirmations:
        # Not yet: one definitive answer could be a registry mid-replication. Remember it.
        record = dataclasses.replace(previous, missing_count=missing, last_checked=now)
        return models.Change(repository, tag, record)
    record = dataclasses.replace(
        previous,
        state=State.DELETED,
        current_digest=None,
        missing_count=missing,
        last_checked=now,
        last_changed=now,
    )
    event = models.Event(
        repository,
        tag,
        Kind.DELETED,
        now,
        old_digest=previous.current_digest,
        detail={"recorded_digest": previous.recorded_digest, "confirmations": missing},
    )
    return models.Change(repository, tag, record, event)


def _present(
    previous: models.TagRecord, observation: models.Observation, digest: str, now: dt.datetime
) -> models.Change:
    repository, tag = previous.repository, previous.tag
    recorded = previous.recorded_digest
    state = State.OK if digest == recorded else State.DRIFTED
    if previous.state is State.DELETED:
        record = dataclasses.replace(
            previous,
            current_digest=digest,
            media_type=observation.media_type or previous.media_type,
            state=state,
            missing_count=0,
            last_checked=now,
            last_changed=now,
        )
        detail: dict[str, object] = {
            "recorded_digest": recorded,
            "matches_record": digest == recorded,
        }
        event = models.Event(
            repository, tag, Kind.REAPPEARED, now, new_digest=digest, detail=detail
        )
        return models.Change(repository, tag, record, event)
    if digest == previous.current_digest:
        if previous.missing_count:
            # A pending (unconfirmed) absence is cleared: write it, but it is no event.
            return models.Change(
                repository, tag, dataclasses.replace(previous, missing_count=0, last_checked=now)
            )
        return models.Change(repository, tag)  # unchanged: the batched touch is enough
    if digest == recorded:
        # It was drifted and now answers the recorded digest again without us restoring it.
        record = dataclasses.replace(
            previous,
            current_digest=digest,
            state=State.OK,
            missing_count=0,
            last_checked=now,
            last_changed=now,
        )
        event = models.Event(
            repository,
            tag,
            Kind.REVERTED,
            now,
            old_digest=previous.current_digest,
            new_digest=digest,
        )
        return models.Change(repository, tag, record, event)
    record = dataclasses.replace(
        previous,
        current_digest=digest,
        media_type=observation.media_type or previous.media_type,
        state=State.DRIFTED,
        missing_count=0,
        last_checked=now,
        last_changed=now,
    )
    detail = {"recorded_digest": recorded, "changed_platforms": list(observation.changed_platforms)}
    if observation.media_type:
        detail["media_type"] = observation.media_type
    event = models.Event(
        repository,
        tag,
        Kind.MOVED,
        now,
        old_digest=previous.current_digest,
        new_digest=digest,
        detail=detail,
    )
    return models.Change(repository, tag, record, event)


def changed_platforms(old: dict[str, str], new: dict[str, str]) -> tuple[str, ...]:
    """Platforms ("linux/amd64") whose child digest differs, was added or removed; sorted."""
    return tuple(sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p)))


def integrity(
    previous: models.TagRecord,
    missing_children: Sequence[str],
    missing_blobs: Sequence[str],
    now: dt.datetime,
    *,
    in_vault: bool = False,
) -> models.Change:
    """What an integrity check of the recorded digest means (docs/DETECTION.md, "Integrity").

    Only a tag that answers its recorded digest (``ok``) can become ``broken``: a ``broken``
    event names the child manifests and blobs gone. A ``broken`` tag found whole again (someone
    pushed the missing parts back) is ``ok`` again with a ``reverted`` event; anything else
    (still broken, or drifted or deleted meanwhile: the check's own rules apply) is no change.
    ``in_vault``: the vault keeps a complete copy of the recorded digest, so missing blobs can
    be copied back (``repairable``) as archived child manifests can be re-PUT.
    """
    repository, tag = previous.repository, previous.tag
    lost = bool(missing_children or missing_blobs)
    if previous.state is State.OK and lost:
        record = dataclasses.replace(previous, state=State.BROKEN, last_changed=now)
        event = models.Event(
            repository,
            tag,
            Kind.BROKEN,
            now,
            detail={
                "recorded_digest": previous.recorded_digest,
                "missing_children": list(missing_children),
                "missing_blobs": list(missing_blobs),
                # archived child manifests can be re-PUT; a blob only from a copy elsewhere
                "repairable": not missing_blobs or in_vault,
                **({"in_vault": True} if in_vault else {}),
            },
        )
        return models.Change(repository, tag, record, event)
    if previous.state is State.BROKEN and not lost:
        record = dataclasses.replace(previous, state=State.OK, last_changed=now)
        event = models.Event(
            repository,
            tag,
            Kind.REVERTED,
            now,
            new_digest=previous.recorded_digest,
            detail={"recorded_digest": previous.recorded_digest, "after": "broken"},
        )
        return models.Change(repository, tag, record, event)
    return models.Change(repository, tag)
