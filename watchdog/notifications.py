"""Registry push notifications (CNCF distribution's ``notifications.endpoints``): parse and match.

Pure: the HTTP layer hands in the body, the daemon gets back which watched repositories to check
now. A notification only ever *triggers* a check; what changed is decided by the check itself,
so a forged or replayed event can cost a poll but never fake a move. Polling stays the safety net
for notifications that are lost.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence

from watchdog import config, errors, models

MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
MAX_BODY_BYTES = 1024 * 1024
MAX_EVENTS = 1000


@dataclasses.dataclass(frozen=True)
class RegistryEvent:
    action: str  # push | delete | pull | mount
    repository: str  # the path inside the registry, e.g. "deephaven/server"
    tag: str | None
    host: str | None  # request.host: how the pusher reached the registry, when given


def parse(body: bytes) -> list[RegistryEvent]:
    """Parse a notification envelope ``{"events": [...]}``; raise UsageError when it is not one."""
    if len(body) > MAX_BODY_BYTES:
        raise errors.UsageError(f"notification body over {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
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
        out.append(
            RegistryEvent(
                action=action,
                repository=repository,
                tag=tag if isinstance(tag, str) and models.TAG_RE.match(tag) else None,
                host=models.normalize_host(host) if isinstance(host, str) and host else None,
            )
        )
    return out


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
