"""Value types shared by every layer: image references, digests, observations, tag records, events.

Pure: no I/O, no third-party imports.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from watchdog import errors

# What every layer tells the time with (injected in tests, never slept on).
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """Now, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = {
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
}

# The grammar of github.com/distribution/reference, written out for Python.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*", re.ASCII)
_PATH_HINT = "lower-case letters, digits and separators '.', '_', '__', '-', '/'"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?",
    re.ASCII,
)
# The OCI tag grammar (distribution-spec: ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}``). Every pattern
# here that judges untrusted text (a registry's tags/list, a manifest's child digests) is anchored
# with ``\A``/``\Z``, never ``^``/``$``: ``$`` also matches before a final newline, so
# ``"1.2.3\n"`` would pass and reach a URL. Prefer ``is_tag``/``is_digest`` (fullmatch) to these.
TAG_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
DIGEST_RE = re.compile(r"\Asha256:[a-f0-9]{64}\Z")
MAX_NAME_LENGTH = 255


def sha256_digest(body: bytes) -> str:
    """The OCI digest (``sha256:<hex>``) of ``body``."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def check_digest(value: str) -> str:
    """Return ``value`` if it is a well-formed sha256 digest, else raise InvalidReference."""
    if not is_digest(value):
        raise errors.InvalidReference(
            f"not a sha256 digest: {errors.truncate(value, 80)!r} (expected sha256:<64 hex digits>)"
        )
    return value


def short_digest(digest: str) -> str:
    """``sha256:ea6ca1c9b758`` - enough to tell digests apart in a table."""
    return digest[:19]


def is_tag(value: str) -> bool:
    """True for a tag of the OCI grammar: ASCII letters, digits, ``_``, ``.``, ``-``; at most 128
    characters; not starting with ``.`` or ``-``; nothing else (no final newline either)."""
    return TAG_RE.fullmatch(value) is not None


def is_digest(value: str) -> bool:
    """True for a well-formed ``sha256:<64 lower-case hex>`` digest and nothing else."""
    return DIGEST_RE.fullmatch(value) is not None


def check_tag(value: str) -> str:
    """Return ``value`` if :func:`is_tag`, else raise InvalidReference."""
    if not is_tag(value):
        raise errors.InvalidReference(
            f"not a valid tag: {errors.truncate(value, 80)!r} "
            "(letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')"
        )
    return value


def is_repository_path(path: str) -> bool:
    """True for a repository path inside a registry (``team/app``): the distribution grammar,
    at most MAX_NAME_LENGTH characters, no host, no tag."""
    return bool(path) and len(path) <= MAX_NAME_LENGTH and _PATH_RE.fullmatch(path) is not None


def check_repository(path: str) -> str:
    """Return ``path`` if :func:`is_repository_path`, else raise InvalidReference."""
    if not is_repository_path(path):
        raise errors.InvalidReference(
            f"not a valid repository name: {errors.truncate(path, 80)!r} ({_PATH_HINT})"
        )
    return path


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1``, with or without a port."""
    name = host
    if name.startswith("["):
        name = name[1 : name.index("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def normalize_host(host: str) -> str:
    """Canonical registry host: Docker Hub's aliases become ``docker.io``; names are lower-cased."""
    lowered = host.lower()
    return DOCKER_HUB if lowered in _DOCKER_HUB_ALIASES else lowered


def api_host(host: str) -> str:
    """The host that actually serves the Distribution API for ``host``."""
    return DOCKER_HUB_API if normalize_host(host) == DOCKER_HUB else host


@dataclasses.dataclass(frozen=True, order=True)
class ImageRef:
    """A parsed image reference. ``repository`` is the path inside the registry."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, *, require_tag: bool = False, allow_tag: bool = True) -> ImageRef:
        """Parse ``[host/]path[:tag][@digest]`` the way Docker does (``docker.io``, ``library/``).

        Raises InvalidReference naming what is wrong.
        """
        raw = text.strip()
        if not raw:
            raise errors.InvalidReference("empty image reference")
        digest: str | None = None
        if "@" in raw:
            raw, digest = raw.split("@", 1)
            check_digest(digest)
        tag: str | None = None
        last_slash = raw.rfind("/")
        colon = raw.rfind(":")
        if colon > last_slash:
            raw, tag = raw[:colon], raw[colon + 1 :]
            check_tag(tag)
        host, path = _split_host(raw)
        if not is_repository_path(path):
            raise errors.InvalidReference(
                f"not a valid repository name: {errors.truncate(text, 120)!r} ({_PATH_HINT})"
            )
        if host == DOCKER_HUB and "/" not in path:
            path = "library/" + path
        if tag is not None and not allow_tag:
            raise errors.InvalidReference(f"expected a repository without a tag: {text!r}")
        if require_tag and tag is None:
            raise errors.InvalidReference(f"expected an image reference with a tag: {text!r}")
        return cls(host=host, repository=path, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """``host/repository``: the canonical repository identity used in the store and metrics."""
        return f"{self.host}/{self.repository}"

    def with_tag(self, tag: str) -> ImageRef:
        return dataclasses.replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> ImageRef:
        return dataclasses.replace(self, tag=None, digest=digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def _split_host(raw: str) -> tuple[str, str]:
    first, sep, rest = raw.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if _HOST_RE.fullmatch(first) is None:
            raise errors.InvalidReference(
                f"not a valid registry host: {errors.truncate(first, 80)!r}"
            )
        return normalize_host(first), rest
    return DOCKER_HUB, raw


# --- what a poll sees ----------------------------------------------------------------------------


class ObservationKind(enum.Enum):
    PRESENT = (
        "present"  # the tag answers a digest (verified by GET when it differs from the record)
    )
    ABSENT = (
        "absent"  # definitive: not in tags/list and the manifest answers 404 with an error code
    )
    ERROR = "error"  # we could not tell: never a change


@dataclasses.dataclass(frozen=True)
class Observation:
    kind: ObservationKind
    digest: str | None = None
    media_type: str | None = None
    error: str | None = None
    # for a move: platforms whose child digest changed ("linux/amd64", ...); filled by the service
    changed_platforms: tuple[str, ...] = ()

    @classmethod
    def present(
        cls, digest: str, media_type: str | None, changed_platforms: tuple[str, ...] = ()
    ) -> Observation:
        return cls(
            ObservationKind.PRESENT,
            digest=digest,
            media_type=media_type,
            changed_platforms=changed_platforms,
        )

    @classmethod
    def absent(cls) -> Observation:
        return cls(ObservationKind.ABSENT)

    @classmethod
    def failed(cls, error: str) -> Observation:
        return cls(ObservationKind.ERROR, error=error)


class TagState(enum.Enum):
    OK = "ok"  # the tag answers the recorded digest
    DRIFTED = "drifted"  # the tag answers another digest; the recorded one is still the trusted one
    DELETED = "deleted"  # confirmed gone (two definitive answers in a row)
    # answers the recorded digest but cannot be pulled whole: a child manifest or blob is gone
    BROKEN = "broken"


class EventKind(enum.Enum):
    FIRST_SEEN = "first_seen"
    MOVED = "moved"
    DELETED = "deleted"
    REAPPEARED = "reappeared"
    REVERTED = "reverted"  # back at the recorded digest without us (someone ran crane tag)
    ACCEPTED = "accepted"
    RESTORED = "restored"
    RESTORE_FAILED = "restore_failed"
    # auto-restore gave up on a tag: something keeps pushing it (loop protection; alert loudly)
    RESTORE_STOPPED = "restore_stopped"
    # the integrity check found child manifests or blobs of the recorded digest gone
    BROKEN = "broken"


@dataclasses.dataclass(frozen=True)
class TagRecord:
    """What the store knows about one tag."""

    repository: str  # ImageRef.name, e.g. "ghcr.io/deephaven/server"
    tag: str
    recorded_digest: str  # the trusted digest: first seen, accepted or restored
    current_digest: str | None  # what the tag answered last (None once deleted)
    media_type: str | None
    state: TagState
    first_seen: dt.datetime
    last_checked: dt.datetime
    last_changed: dt.datetime
    missing_count: int = 0  # consecutive definitive "absent" answers

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclasses.dataclass(frozen=True)
class Event:
    """One row of the append-only event log."""

    repository: str
    tag: str
    kind: EventKind
    at: dt.datetime
    old_digest: str | None = None
    new_digest: str | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    actor: str = "watchdog"
    id: int | None = None
    # the incident the event belongs to (set by the store when it inserts the event), and
    # whether this event opened it (not stored: only the write that opened it knows)
    incident_id: int | None = None
    opens_incident: bool = dataclasses.field(default=False, compare=False)


# Events that open an incident, or join the open one of their grouping key: changes to a release.
INCIDENT_CHANGES = frozenset({EventKind.MOVED, EventKind.DELETED, EventKind.BROKEN})

GROUP_BY = ("namespace", "repository", "registry")


@dataclasses.dataclass(frozen=True)
class Grouping:
    """How changes are grouped into incidents (config ``incidents``).

    ``by``: ``namespace`` (the registry and the repository's first path segment:
    ``ghcr.io/deephaven`` for ``ghcr.io/deephaven/server``; a one-segment repository is in its
    registry's root namespace, the host alone), ``repository`` or ``registry``. ``window``: a
    change found within this many seconds of the incident's last change joins it (0: every
    change is an incident of its own). ``wait``: the incident's first message waits this long
    for the rest of a burst (Alertmanager's group_wait; 0: the first change alerts at once).
    ``update_interval``: what joins later is told (a reply, a redraw) at most this often
    (Alertmanager's group_interval).
    """

    by: str = "namespace"
    window: float = 120.0
    wait: float = 0.0
    update_interval: float = 10.0

    def key(self, repository: str) -> str:
        """The grouping key of ``repository`` (``host/path``, as ``ImageRef.name``)."""
        host, _, path = repository.partition("/")
        if self.by == "registry":
            return host
        if self.by == "repository":
            return repository
        first, sep, _ = path.partition("/")
        return f"{host}/{first}" if sep else host


@dataclasses.dataclass(frozen=True)
class Incident:
    """One incident: its events (the changes and what followed them), oldest first."""

    id: int
    group_key: str
    opened_at: dt.datetime
    last_change_at: dt.datetime
    closes_at: dt.datetime
    events: tuple[Event, ...] = ()

    def is_open(self, now: dt.datetime) -> bool:
        """True while a change of its key found at ``now`` would still join it."""
        return now < self.closes_at

    def latest_by_tag(self) -> dict[tuple[str, str], Event]:
        """The latest event of each tag, by (repository, tag), in the order tags first came."""
        out: dict[tuple[str, str], Event] = {}
        for e in self.events:
            out[(e.repository, e.tag)] = e
        return out

    def changes_by_tag(self) -> dict[tuple[str, str], Event]:
        """The latest change (move, deletion, broken) of each tag, in the order tags came."""
        out: dict[tuple[str, str], Event] = {}
        for e in self.events:
            if e.kind in INCIDENT_CHANGES:
                out[(e.repository, e.tag)] = e
        return out


@dataclasses.dataclass(frozen=True)
class OutboxItem:
    """One alert to deliver on one channel, as the store hands it to the delivery worker.

    Either ``event`` (an event of the log) or ``notice`` (an alert about the watchdog itself,
    e.g. ``{"kind": "registry_unreachable", ...}``) is set. ``first_seen`` is when the event's tag
    was first recorded; ``thread_id`` is the channel's id of the first message delivered about the
    same tag (Slack's ``ts``), for follow-ups to go into its thread.

    ``sent_at`` is set when an earlier send of this item may have reached the channel without its
    outcome being recorded (a crash, a timeout, a 5xx): when the earliest such send started.
    ``send_key`` is the random key that send carried (Slack message metadata), to find it by.
    """

    id: int
    channel: str
    attempts: int  # including the one this item was claimed for
    created_at: dt.datetime
    event: Event | None = None
    notice: dict[str, Any] | None = None
    first_seen: dt.datetime | None = None
    thread_id: str | None = None
    sent_at: dt.datetime | None = None
    send_key: str | None = None
    # An incident's message: ``part`` is "opening" or "update"; ``covered`` the highest event id
    # an earlier message of the incident on this channel showed (an update says what is newer);
    # ``parent_channel``: the conversation id of the opening message (for chat.update).
    incident: Incident | None = None
    part: str | None = None
    covered: int = 0
    parent_channel: str | None = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A manifest exactly as the registry served it: the bytes are the identity."""

    digest: str
    media_type: str
    body: bytes


@dataclasses.dataclass(frozen=True)
class ManifestHead:
    """What a HEAD on a manifest said."""

    digest: str | None  # None when the registry sent no Docker-Content-Digest
    media_type: str | None
    size: int | None = None


@dataclasses.dataclass(frozen=True)
class Change:
    """What one observation means for one tag: the record to write and the event to append.

    ``record`` is None when nothing about the tag needs writing beyond the batched last-checked
    time; ``event`` is None when nothing happened worth the event log.
    """

    repository: str
    tag: str
    record: TagRecord | None = None
    event: Event | None = None
