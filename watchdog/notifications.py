"""Registry push notifications: parse and match.

Three shapes, one result (``RegistryEvent``): CNCF distribution's ``notifications.endpoints``
envelope (``parse``), Harbor's webhooks in its Default and CloudEvents formats (``parse_harbor``)
and Docker Hub's repository webhooks (``parse_dockerhub``).

Pure: the HTTP layer hands in the body, the daemon gets back which watched repositories to check
now. A notification only ever *triggers* a check; what changed is decided by the check itself,
so a forged or replayed event can cost a poll but never fake a move. Polling stays the safety net
for notifications that are lost.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence

from watchdog import config, errors, models, safejson

MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
MAX_BODY_BYTES = 1024 * 1024
MAX_EVENTS = 1000


MAX_PUSHER_FIELD = 200  # characters: a name, an address or a user agent, as shown in an alert


@dataclasses.dataclass(frozen=True)
class Pusher:
    """Who pushed, as the registry's notification said: untrusted text, bounded and printable.

    ``actor`` is the account (distribution's ``actor.name``, Harbor's ``operator``, Docker
    Hub's ``pusher``); ``address`` and ``user_agent`` the pushing client's, when the registry
    gives them (distribution does); ``source`` names the notification's format.
    """

    source: str  # registry | harbor | dockerhub
    actor: str | None = None
    address: str | None = None
    user_agent: str | None = None

    def as_detail(self) -> dict[str, str]:
        """The JSON form kept on an event (``detail["pushed_by"]``): only the fields given."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


@dataclasses.dataclass(frozen=True)
class RegistryEvent:
    action: str  # push | delete | pull | mount
    repository: str  # the path inside the registry, e.g. "deephaven/server"
    tag: str | None
    host: str | None  # request.host: how the pusher reached the registry, when given
    # who pushed, and the manifest digest pushed, when the notification says (they do not
    # change which checks are due, so events compare without them)
    pusher: Pusher | None = dataclasses.field(default=None, compare=False)
    digest: str | None = dataclasses.field(default=None, compare=False)


def _text(value: object) -> str | None:
    """An untrusted string for display: control characters dropped, at most MAX_PUSHER_FIELD."""
    if not isinstance(value, str):
        return None
    clean = "".join(c for c in value if c.isprintable()).strip()
    return clean[:MAX_PUSHER_FIELD] or None


def _pusher(
    source: str, actor: object, address: object = None, agent: object = None
) -> Pusher | None:
    found = Pusher(source, _text(actor), _text(address), _text(agent))
    return found if (found.actor or found.address or found.user_agent) else None


def _digest(value: object) -> str | None:
    return value if isinstance(value, str) and models.DIGEST_RE.fullmatch(value) else None


def parse(body: bytes) -> list[RegistryEvent]:
    """Parse a notification envelope ``{"events": [...]}``; raise UsageError when it is not one."""
    if len(body) > MAX_BODY_BYTES:
        raise errors.UsageError(f"notification body over {MAX_BODY_BYTES} bytes")
    try:
        doc = safejson.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        raise errors.UsageError("notification body is not JSON") from None
    raw_events = doc.get("events") if isinstance(doc, dict) else None
    if not isinstance(raw_events, list):
        raise errors.UsageError('expected {"events": [...]}')
    if len(raw_events) > MAX_EVENTS:
        raise errors.UsageError(f"more than {MAX_EVENTS} events in one notification")
    out = []
    for raw in raw_events:
        if not isinstance(raw, dict):
            continue
        target = raw.get("target")
        request = raw.get("request")
        target = target if isinstance(target, dict) else {}
        request = request if isinstance(request, dict) else {}
        action, repository = raw.get("action"), target.get("repository")
        if not isinstance(action, str) or not isinstance(repository, str):
            continue
        tag = target.get("tag")
        host = request.get("host")
        actor = raw.get("actor")
        out.append(
            RegistryEvent(
                action=action,
                repository=repository,
                tag=tag if isinstance(tag, str) and models.TAG_RE.match(tag) else None,
                host=models.normalize_host(host) if isinstance(host, str) and host else None,
                pusher=_pusher(
                    "registry",
                    actor.get("name") if isinstance(actor, dict) else None,
                    request.get("addr"),
                    request.get("useragent"),
                ),
                digest=_digest(target.get("digest")),
            )
        )
    return out


# Harbor event types (Default format, and the CloudEvents ``type`` of the same event) that may
# have changed what a tag points at. Everything else Harbor sends (pulls, scans, quota,
# replication and retention reports) is ignored.
_HARBOR_ACTIONS = {
    "PUSH_ARTIFACT": "push",
    "harbor.artifact.pushed": "push",
    "DELETE_ARTIFACT": "delete",
    "harbor.artifact.deleted": "delete",
}
MAX_HARBOR_RESOURCES = 1000


def parse_harbor(body: bytes) -> list[RegistryEvent]:
    """Parse a Harbor webhook payload; raise UsageError when it is not one.

    Default format: ``{"type": "PUSH_ARTIFACT", "event_data": {"resources": [...],
    "repository": {...}}}``; CloudEvents format: ``{"specversion": "1.0", "type":
    "harbor.artifact.pushed", "data": {"resources": [...], "repository": {...}}}``. Returns one
    ``push`` or ``delete`` event per resource (its tag, when it is a valid tag, else None; the
    registry host taken from its ``resource_url``), or one without a tag when there are no
    resources; other event types give ``[]``. The repository is ``repository.repo_full_name``
    (else ``namespace/name``).
    """
    doc = _json_object(body, "Harbor webhook")
    kind = doc.get("type")
    if not isinstance(kind, str):
        raise errors.UsageError('expected a Harbor webhook payload ({"type": ..., ...})')
    data = doc.get("data") if "specversion" in doc else doc.get("event_data")
    action = _HARBOR_ACTIONS.get(kind)
    if action is None:
        return []
    if not isinstance(data, dict):
        field = "data" if "specversion" in doc else "event_data"
        raise errors.UsageError(f"Harbor {kind} payload without an {field} object")
    repo = data.get("repository")
    repository = _harbor_repository(repo if isinstance(repo, dict) else {})
    if repository is None:
        raise errors.UsageError(f"Harbor {kind} payload without repository.repo_full_name")
    # "operator": top level in both formats (the Default one also repeats it in event_data)
    operator = doc.get("operator") or data.get("operator")
    pusher = _pusher("harbor", operator)
    resources = data.get("resources")
    if not isinstance(resources, list) or not resources:
        return [
            RegistryEvent(action=action, repository=repository, tag=None, host=None, pusher=pusher)
        ]
    if len(resources) > MAX_HARBOR_RESOURCES:
        raise errors.UsageError(f"more than {MAX_HARBOR_RESOURCES} resources in one notification")
    out = []
    for resource in resources:
        if not isinstance(resource, dict):
            continue
        url = resource.get("resource_url")
        # "harbor.example.com/library/nginx:1.25" or "...@sha256:...": the host comes first
        # (Harbor writes its own external host there, port included), whatever it looks like.
        host = url.split("/", 1)[0] if isinstance(url, str) and "/" in url else ""
        out.append(
            RegistryEvent(
                action=action,
                repository=repository,
                tag=_tag(resource.get("tag")),
                host=models.normalize_host(host) if host else None,
                pusher=pusher,
                digest=_digest(resource.get("digest")),
            )
        )
    return out


def _harbor_repository(repo: dict[str, object]) -> str | None:
    full = repo.get("repo_full_name")
    if isinstance(full, str) and full:
        return full
    namespace, name = repo.get("namespace"), repo.get("name")
    if isinstance(namespace, str) and isinstance(name, str) and namespace and name:
        return f"{namespace}/{name}"
    return None


def parse_dockerhub(body: bytes) -> list[RegistryEvent]:
    """Parse a Docker Hub repository webhook payload; raise UsageError when it is not one.

    ``{"push_data": {"tag": "1.2.3", ...}, "repository": {"repo_name": "org/app", ...},
    "callback_url": ...}``: Docker Hub sends pushes only. Returns one ``push`` event on host
    ``docker.io`` (an official image's ``nginx`` is ``library/nginx``, as Docker names it), with
    the tag when it is a valid one. ``callback_url`` is never called.
    """
    doc = _json_object(body, "Docker Hub webhook")
    push_data, repo = doc.get("push_data"), doc.get("repository")
    if not isinstance(push_data, dict) or not isinstance(repo, dict):
        raise errors.UsageError(
            'expected a Docker Hub webhook payload ({"push_data": {...}, "repository": {...}})'
        )
    name = repo.get("repo_name")
    if not isinstance(name, str) or not name:
        raise errors.UsageError("Docker Hub payload without repository.repo_name")
    try:
        ref = models.ImageRef.parse(f"{models.DOCKER_HUB}/{name}", allow_tag=False)
    except errors.InvalidReference as exc:
        raise errors.UsageError(f"Docker Hub payload: repository.repo_name: {exc}") from None
    return [
        RegistryEvent(
            action="push",
            repository=ref.repository,
            tag=_tag(push_data.get("tag")),
            host=ref.host,
            pusher=_pusher("dockerhub", push_data.get("pusher")),
        )
    ]


def _json_object(body: bytes, what: str) -> dict[str, object]:
    if len(body) > MAX_BODY_BYTES:
        raise errors.UsageError(f"notification body over {MAX_BODY_BYTES} bytes")
    try:
        doc = safejson.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        raise errors.UsageError(f"{what} body is not JSON") from None
    if not isinstance(doc, dict):
        raise errors.UsageError(f"{what} body is not a JSON object")
    return doc


def _tag(value: object) -> str | None:
    return value if isinstance(value, str) and models.TAG_RE.match(value) else None


def watches_to_check(
    events: Iterable[RegistryEvent], watches: Sequence[config.WatchSettings]
) -> list[config.WatchSettings]:
    """The watches an immediate check is due for: pushes of a watched release tag, and deletes.

    Pulls (the watchdog's own HEADs and GETs cause them) and pushes of untagged content or of tags
    the watch ignores trigger nothing. A repository watched on several registries is matched by
    ``request.host`` when the event names a watched host, else all of them are checked.
    """
    due: dict[str, config.WatchSettings] = {}
    for event in events:
        if event.action == "push":
            if event.tag is None:
                continue
        elif event.action != "delete":
            continue
        same_path = [w for w in watches if w.repository.repository == event.repository]
        by_host = [w for w in same_path if w.repository.host == event.host]
        for watch in by_host or same_path:
            if event.tag is not None and not watch.tags.matches(event.tag):
                continue
            due.setdefault(watch.name, watch)
    return list(due.values())


LEDGER_WINDOW = 600.0  # seconds: a notification explains a change found at most this long after
LEDGER_SIZE = 10_000  # tags remembered at once; the oldest are forgotten first


@dataclasses.dataclass(frozen=True)
class _Push:
    action: str  # push | delete
    pusher: Pusher
    digest: str | None
    at: float  # monotonic seconds


class PushLedger:
    """Who recently pushed or deleted what, from registry notifications, so that the check a
    notification brings forward can say who moved or deleted the tag.

    In memory and bounded (``size`` keys, ``window`` seconds): it only attributes, it never
    decides anything, so what a restart forgets costs a name in an alert, nothing more. Keys are
    (host or None, repository path, tag or ``@digest``): a notification without
    ``request.host`` matches the repository on any host, as ``watches_to_check`` does, and a
    delete by digest (distribution's only kind) is found by the digest the tag was recorded at.
    """

    def __init__(
        self,
        *,
        window: float = LEDGER_WINDOW,
        size: int = LEDGER_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.size = size
        self.clock = clock
        self._pushes: collections.OrderedDict[tuple[str | None, str, str], list[_Push]] = (
            collections.OrderedDict()
        )

    def note(self, events: Iterable[RegistryEvent], at: float | None = None) -> None:
        """Remember who pushed or deleted, for every such event that names a pusher (``at``:
        when, on this ledger's clock; default now)."""
        now = self.clock() if at is None else at
        for event in events:
            if event.pusher is None or event.action not in ("push", "delete"):
                continue
            keys = []
            if event.tag is not None:
                keys.append((event.host, event.repository, event.tag))
            if event.action == "delete" and event.digest is not None:
                keys.append((event.host, event.repository, "@" + event.digest))
            for key in keys:
                kept = [p for p in self._pushes.pop(key, []) if now - p.at <= self.window]
                kept.append(_Push(event.action, event.pusher, event.digest, now))
                self._pushes[key] = kept[-8:]  # a few per tag inside the window is plenty
            while len(self._pushes) > self.size:
                self._pushes.popitem(last=False)

    def who(
        self, host: str, repository: str, tag: str, digest: str | None, *, deleted: bool = False
    ) -> Pusher | None:
        """Who, inside the window, pushed ``digest`` to ``host/repository:tag`` (a notification
        naming another digest does not count; one naming none does), or, with ``deleted``,
        deleted the tag or the manifest ``digest`` it was recorded at. The latest wins."""
        now = self.clock()
        keys = [(h, repository, tag) for h in (host, None)]
        if deleted and digest is not None:
            keys += [(h, repository, "@" + digest) for h in (host, None)]
        action = "delete" if deleted else "push"
        found = [
            p
            for key in keys
            for p in self._pushes.get(key, [])
            if p.action == action
            and now - p.at <= self.window
            and (deleted or digest is None or p.digest in (None, digest))
        ]
        return max(found, key=lambda p: p.at).pusher if found else None
