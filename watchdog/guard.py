"""The release guard (``tag-watchdog guard``): may CI publish this version?

``decide`` is pure: what the registry answered about a tag, what the record remembers about it
(when a config was given) and an allowed digest give a ``Verdict`` with its exit code and reasons.
``ask`` is the one registry question (HEAD, a verified GET when needed). The CLI only parses,
gathers those answers and prints.

The guard fails closed: it answers 0 only when it knows the version was never released (the
registry says definitively that the tag does not exist and, with a config, the record has never
seen it), or the tag already is the allowed digest (a re-run). A version the record shows was
released is refused (1) also when the tag is gone now: publishing it again is the re-release the
watchdog exists to prevent. When it cannot tell it answers 3.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from watchdog import errors, models
from watchdog.registry import client as registry_client
from watchdog.registry import resolve

GO, RELEASED, USAGE, UNSURE = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the registry said about the tag: a digest, a definitive absence, or an error."""

    digest: str | None = None
    error: str | None = None  # could not tell (unreachable, refused, a lie)

    @property
    def absent(self) -> bool:
        return self.digest is None and self.error is None


@dataclasses.dataclass(frozen=True)
class Memory:
    """What the record remembers about the tag (only with a config).

    ``error`` is set when the database could not be read: then nothing else is known.
    """

    record: models.TagRecord | None = None
    history: tuple[models.Event, ...] = ()
    error: str | None = None

    @property
    def deleted_at(self) -> dt.datetime | None:
        """When the deletion of the tag was last confirmed (None when it was not, or it came
        back since)."""
        last: dt.datetime | None = None
        for event in self.history:
            if event.kind is models.EventKind.DELETED:
                last = event.at
            elif event.kind in (models.EventKind.REAPPEARED, models.EventKind.RESTORED):
                last = None
        return last


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The guard's answer about one reference."""

    ref: str
    code: int
    outcome: str  # "absent" | "allowed" | "released" | "unsure"
    reasons: tuple[str, ...]
    digest: str | None = None  # what the tag answers now
    recorded_digest: str | None = None
    first_recorded: dt.datetime | None = None
    deleted_at: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "exit_code": self.code,
            "outcome": self.outcome,
            "exists": self.digest is not None,
            "digest": self.digest,
            "allowed": self.outcome == "allowed",
            "recorded_digest": self.recorded_digest,
            "first_recorded": _iso(self.first_recorded),
            "deleted_at": _iso(self.deleted_at),
            "reasons": list(self.reasons),
        }


def decide(ref: str, answer: Answer, memory: Memory | None, allowed: str | None = None) -> Verdict:
    """The verdict about ``ref`` (``host/path:tag``) from the registry's ``answer``, the record's
    ``memory`` (None: no config, the registry alone decides) and the ``allowed`` digest."""
    record = memory.record if memory is not None else None
    base = Verdict(
        ref,
        UNSURE,
        "unsure",
        (),
        digest=answer.digest,
        recorded_digest=record.recorded_digest if record is not None else None,
        first_recorded=record.first_seen if record is not None else None,
        deleted_at=memory.deleted_at if memory is not None and record is not None else None,
    )
    if answer.digest is not None:
        return _present(base, answer.digest, allowed)
    if record is not None:
        return _remembered(base, answer)
    if answer.error is not None:
        return _with(base, UNSURE, "unsure", f"the registry could not be asked: {answer.error}")
    if memory is not None and memory.error is not None:
        return _with(
            base,
            UNSURE,
            "unsure",
            f"the tag does not exist now, but the record cannot say whether it was released "
            f"and deleted: {memory.error}",
        )
    if memory is not None:
        return _with(base, GO, "absent", "the tag does not exist and was never recorded")
    return _with(base, GO, "absent", "the tag does not exist")


def _present(base: Verdict, digest: str, allowed: str | None) -> Verdict:
    if allowed is not None and digest == allowed:
        return _with(base, GO, "allowed", f"the tag already is {digest} (allowed: a re-run)")
    reasons = [f"the tag is already released: it answers {digest}"]
    if base.first_recorded is not None:
        reasons.append(f"first recorded {when(base.first_recorded)}")
    if base.recorded_digest is not None and base.recorded_digest != digest:
        reasons.append(f"the recorded (trusted) digest is {base.recorded_digest}")
    return dataclasses.replace(base, code=RELEASED, outcome="released", reasons=tuple(reasons))


def _remembered(base: Verdict, answer: Answer) -> Verdict:
    """The tag does not answer (or the registry cannot say) but the record shows it released."""
    reasons = [
        f"the record shows it released: first recorded {when(base.first_recorded)} "
        f"as {base.recorded_digest}"
    ]
    if base.deleted_at is not None:
        reasons.append(f"deleted since: it disappeared {when(base.deleted_at)}")
    elif answer.error is None:
        reasons.append("it does not answer now (the deletion is not confirmed yet)")
    if answer.error is not None:
        reasons.append(f"the registry could not be asked: {answer.error}")
    reasons.append("publishing it again would be a re-release; restore it instead")
    return dataclasses.replace(base, code=RELEASED, outcome="released", reasons=tuple(reasons))


def _with(base: Verdict, code: int, outcome: str, reason: str) -> Verdict:
    return dataclasses.replace(base, code=code, outcome=outcome, reasons=(reason,))


def worst(codes: Sequence[int]) -> int:
    """The exit code of several verdicts: 1 when any version is released (a definite "no",
    whatever else could not be told, as ``scan`` does with drift), else 3 when any is unsure,
    else 0."""
    if RELEASED in codes:
        return RELEASED
    if UNSURE in codes:
        return UNSURE
    return GO


def text(verdict: Verdict) -> str:
    """One line for a person."""
    head = {
        "absent": "go ahead",
        "allowed": "go ahead",
        "released": "refusing to overwrite a release",
        "unsure": "cannot tell, refusing",
    }[verdict.outcome]
    return f"{verdict.ref}: {head}: " + "; ".join(verdict.reasons)


async def ask(client: registry_client.RegistryClient, ref: models.ImageRef) -> Answer:
    """What the registry says about ``ref``'s tag. Only a 404 carrying a registry error code is
    an absence; anything else that is not a verified digest is an error (fail closed)."""
    try:
        resolved = await resolve.resolve_digest(client, ref.repository, ref.tag or "")
    except errors.NotFound:
        return Answer()
    except errors.RegistryError as exc:
        return Answer(error=str(exc))
    return Answer(digest=resolved.digest)


def when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "at an unknown time"


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value is not None else None
