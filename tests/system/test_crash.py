"""Crashes: the daemon SIGKILLed at random points of cycles with moves and in the middle of
restores, many times over, then restarted (issue 5, item 6).

A real ``tag-watchdog run`` watches two repositories of a real registry, one ``on_move: alert``
and one ``on_move: restore``, through a fault proxy that makes every restore PUT slow on both
sides (the registry gets it 0.2 s after it is sent, the answer comes 0.3 s after that), so that
kills land before the PUT, and after the PUT but before ``restored`` is written. Slack is the
stand-in, which accepts a message and answers 0.25 s later (Slack's trip back), so that kills also
land between Slack accepting an alert and the ``delivered`` commit. The daemon sends through an
Incoming Webhook (``webhook``: that is the at-least-once window of docs/ALERTS.md) or a bot token
(``bot``: the restarted daemon finds such an alert in the channel's history and must not send it
again).

Incidents are on (issue 16), with a short window and wait (``INCIDENTS``): a round's moves, and
sometimes the next round's, are one incident; its restores join it later. So the alerts are an
incident's opening message and its updates (bot: a thread reply and a ``chat.update`` of the
opening; webhook: one closing message once the window is over), and kills land around both.

Each round overwrites some release tags (pushed straight to the registry, as a person would),
starts the daemon, tells it through ``/hooks/registry``, SIGKILLs it after a random delay and
notes where the kill landed (read from the database, the registry and the stand-in once the
process is dead and the proxy idle). At the end the daemon runs until everything settled, stops
with SIGTERM, and the test checks:

* every overwrite recorded exactly once, in order (no lost, no doubled event), and nothing else;
* every ``on_move: restore`` tag back at its recorded digest with one ``restored`` event per move
  (no ``reverted``, no ``restore_failed``): the registry, the record and the events agree;
* every outbox row delivered, one opening per incident; no lost alert: every alerted event
  covered by a delivered message of its incident (``covers`` >= its id) that is in the stand-in;
* bot: each row's message in the channel once (counted by the outbox id in its metadata), with
  the ``ts`` its row recorded; one top-level message per incident, its opening, every other one a
  reply in its thread, ``chat.update`` only of those; no ``alert_lookup_failed`` in the logs;
* webhook (no metadata: a message is matched to its incident by its footer): each incident's
  messages one per delivered row that sent one, plus once more for each kill that fell between
  Slack accepting a row's message and its ``delivered`` commit (counted at the kill: the row still
  pending while the stand-in had the message). Any other duplicate fails the test;
* no half-written rows: each tag's history starts with ``first_seen``, each event's manifest is in
  the archive and hashes to its digest, each alerted event has its outbox row (its incident's).

The seed of the random choices and delays is printed (``-s``); ``WATCHDOG_CRASH_SEED=N`` replays
them (the timing of the machine still varies), ``WATCHDOG_CRASH_KILLS=N`` changes the number of
kills, ``WATCHDOG_CRASH_OUT=figures.json`` writes the figures of docs/RELIABILITY.md.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.support import faultproxy, images, slack_standin
from tests.support import registry as support_registry
from tests.support.cli import start_daemon, wait_for
from tests.support.registry import free_port
from tests.support.slack_standin import SlackStandIn
from watchdog import models, notifications
from watchdog.registry import media
from watchdog.store import db, tables

ALERT_TAGS = ("1.0.0", "1.1.0", "1.2.0")
RESTORE_TAGS = ("2.0.0", "2.1.0", "2.2.0")
# kills per (store, Slack mode): bot mode gets more, it is the one that must not double; each
# run also costs ~10 s of start-up and settling (the suite's time: docs/PERFORMANCE.md)
# (12/20 and 5/10 until 2026-12-01: the suite had grown past its 6 minutes on 2 cores; `make soak`
# runs 120 of each kind on SQLite)
KILLS = {
    ("sqlite", "webhook"): 8,
    ("postgres", "webhook"): 4,
    ("sqlite", "bot"): 12,
    ("postgres", "bot"): 6,
}
HOOK_TOKEN = "crash-test-hook-token"
LEASE = 2.0  # slack.lease: an interrupted send goes out again after this long
PUT_DELAY_BEFORE = 0.2  # the proxy holds a restore PUT this long before the registry gets it
PUT_DELAY_AFTER = 0.3  # and the answer this long after
# (0.1 s until incidents: one message per incident is fewer sends for the kills to land in)
SLACK_ANSWER_DELAY = 0.25
# Incidents on (the default), with a window that makes some rounds join the incident of the
# round before and others open one of their own (a round takes 1-3 s), and a short wait: kills
# land around openings, updates (bot: thread replies plus chat.update; webhook: closing messages,
# sent once the window is over) and what joins an opening while it waits.
INCIDENTS = "{window: 1500ms, wait: 100ms, update_interval: 100ms}"
# a message's footer names its incident, else its event (a single news event's own alert)
FOOTER_INCIDENT = re.compile(r"\bincident (\d+)\b")
FOOTER_EVENT = re.compile(r"\bevent (\d+)\b")
K = models.EventKind
ALERTED = {k.value for k in K if k not in (K.FIRST_SEEN, K.ACCEPTED)}
# Whom an outbox row's messages are about: ("incident", id), ("event", id) for an alert of its
# own (an event outside incidents), ("notice", row id).
Owner = tuple[str, int]


@dataclasses.dataclass
class Figures:
    """Where the kills landed, and what came of it."""

    backend: str
    mode: str  # webhook | bot
    seed: int
    kills: int = 0
    overwrites: int = 0
    kills_before_ready: int = 0  # the daemon was still starting (or running its first checks)
    moves_unrecorded_at_kill: int = 0  # an overwrite pushed, its check not yet committed
    restores_pending_at_kill: int = 0  # `moved` committed, the restore PUT not in the registry
    half_restores_at_kill: int = 0  # the PUT in the registry, `restored` not committed
    sends_interrupted: int = 0  # an alert leased, not yet accepted by Slack
    alert_window_hits: int = 0  # Slack had accepted the alert, `delivered` was not committed
    openings_hit_at_kill: int = 0  # of those two: an incident's first message
    updates_hit_at_kill: int = 0  # of those two: an incident's update
    # the outcome, after the restart and settle
    events: int = 0
    alerts: int = 0  # alerted events
    incidents: int = 0
    update_rows: int = 0  # incident updates queued (one per channel)
    updates_sent: int = 0  # of those, sent (the others had nothing new to say)
    slack_messages: int = 0  # messages Slack accepted
    false_events: int = 0
    lost_events: int = 0
    doubled_events: int = 0
    half_restores: int = 0
    duplicate_alerts_in_window: int = 0  # re-sent after a kill in the window (webhook only)
    duplicate_alerts_other: int = 0
    lost_alerts: int = 0  # alerted events no delivered message covers, messages Slack lacks
    alerts_found: int = 0  # bot: in doubt after a kill, found in Slack's history, not re-sent
    alerts_unverified: int = 0  # bot: sent again because the lookup could not tell
    seconds: float = 0.0


class Harness:
    """The registry, proxy, stand-in and database of one crash run, and what was pushed."""

    def __init__(
        self,
        tmp_path: Path,
        db_url: str,
        registry: support_registry.RegistryServer,
        proxy: faultproxy.FaultProxy,
        pusher: images.Pusher,
        slack: SlackStandIn,
        repo: str,
        mode: str,
    ) -> None:
        self.tmp_path = tmp_path
        self.registry = registry
        self.proxy = proxy
        self.pusher = pusher
        self.slack = slack
        self.alert_repo = f"{repo}-alert"
        self.restore_repo = f"{repo}-restore"
        self.port = free_port()
        self.engine = db.create_engine(db_url)
        self.mode = mode
        if mode == "bot":
            # the channel's id: with a name, a kill in the window of the very first alert ever
            # delivered could not be looked up (docs/ALERTS.md)
            slack_cfg = (
                f"{{token: '{slack_standin.TOKEN}', channel: '{slack_standin.CHANNEL_ID}', "
                f"base_url: '{slack.base_url}', lease: {LEASE}s}}"
            )
        else:
            slack_cfg = f"{{webhook_url: '{slack.webhook_url}', lease: {LEASE}s}}"
        self.cfg = tmp_path / "c.yaml"
        self.cfg.write_text(
            f"database_url: '{db_url}'\ninterval: 1s\njitter: 0s\n"
            f"http: {{listen: '127.0.0.1:{self.port}'}}\n"
            f"hooks: {{registry_token: '{HOOK_TOKEN}'}}\n"
            f"slack: {slack_cfg}\n"
            "restore: {max_per_tag: 1000, window: 1h}\n"
            f"incidents: {INCIDENTS}\n"
            "watches:\n"
            f"  - {{repository: '{proxy.host}/{self.alert_repo}', on_move: alert}}\n"
            f"  - {{repository: '{proxy.host}/{self.restore_repo}', on_move: restore}}\n"
        )
        # (repository path, tag) -> every digest pushed to it, the release first
        self.pushed: dict[tuple[str, str], list[str]] = {}
        self.runs: list[tuple[subprocess.Popen[str], Path]] = []
        self.proc: subprocess.Popen[str] | None = None

    # --- the registry ----------------------------------------------------------------------------

    def name(self, path: str) -> str:
        return f"{self.proxy.host}/{path}"

    def push(self, path: str, tag: str, seed: str) -> str:
        """Push a new build of ``tag`` (the first tag of each repository is an index)."""
        if tag in (ALERT_TAGS[0], RESTORE_TAGS[0]):
            digest = self.pusher.index(path, tag, seed=seed).digest
        else:
            digest = self.pusher.image(path, tag, seed=seed).digest
        self.pushed.setdefault((path, tag), []).append(digest)
        return digest

    def registry_digest(self, path: str, tag: str) -> str | None:
        """What the tag answers, asked of the registry itself (not through the proxy)."""
        resp = httpx.head(
            f"{self.registry.url}/v2/{path}/manifests/{tag}",
            headers={"Accept": media.ACCEPT},
            timeout=5,
        )
        return resp.headers.get("docker-content-digest") if resp.status_code == 200 else None

    # --- the daemon ------------------------------------------------------------------------------

    def start(self) -> subprocess.Popen[str]:
        log = self.tmp_path / f"daemon-{len(self.runs)}.log"
        with log.open("w") as out:
            # faulthandler: a daemon that hangs is sent SIGABRT and its stacks go to its log
            self.proc = start_daemon(self.cfg, self.tmp_path, {"PYTHONFAULTHANDLER": "1"}, log=out)
        self.runs.append((self.proc, log))
        return self.proc

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def wait_healthy(self) -> None:
        try:
            wait_for(self.healthy, timeout=30, what="the daemon's HTTP server")
        except AssertionError:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(timeout=10)
            log = self.runs[-1][1].read_text()
            raise AssertionError(f"the daemon hung at start:\n{log[-5000:]}") from None

    def notify(self, pushes: list[tuple[str, str]]) -> None:
        """Tell the daemon about pushes, as the registry's notifications would."""
        body = {
            "events": [
                {"action": "push", "target": {"repository": path, "tag": tag}}
                for path, tag in pushes
            ]
        }
        # (a daemon not listening yet sees the pushes in its first checks anyway)
        with contextlib.suppress(httpx.TransportError):
            httpx.post(
                f"http://127.0.0.1:{self.port}/hooks/registry",
                content=json.dumps(body),
                headers={
                    "Authorization": f"Bearer {HOOK_TOKEN}",
                    "Content-Type": notifications.MEDIA_TYPE,
                },
                timeout=2,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
        # what the dead daemon had in flight reaches the registry and Slack all the same
        wait_for(lambda: self.proxy.in_flight == 0, what="the proxy to finish the dead's requests")
        wait_for(lambda: self.slack.in_flight == 0, what="the stand-in to finish its requests")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    # --- the database and the stand-in -----------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tables.events).order_by(tables.events.c.id))
            return [dict(r) for r in rows.mappings()]

    def outbox(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tables.outbox).order_by(tables.outbox.c.id))
            return [dict(r) for r in rows.mappings()]

    def tags(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tables.tags)).mappings()
            return {(r["repository"], r["tag"]): dict(r) for r in rows}

    def history(self, path: str, tag: str) -> list[dict[str, Any]]:
        name = self.name(path)
        return [e for e in self.events() if e["repository"] == name and e["tag"] == tag]

    def recorded(self, path: str, tag: str) -> bool:
        """True when every overwrite of the tag is recorded (and, for a restore watch, restored
        and back in the registry): the next overwrite will be a move of its own."""
        history = self.history(path, tag)
        moved = [e["new_digest"] for e in history if e["kind"] == "moved"]
        if not history or moved != self.pushed[(path, tag)][1:]:
            return False
        if path == self.restore_repo:
            release = self.pushed[(path, tag)][0]
            return history[-1]["kind"] != "moved" and self.registry_digest(path, tag) == release
        return True


def _all_tags(h: Harness) -> list[tuple[str, str]]:
    return [(h.alert_repo, t) for t in ALERT_TAGS] + [(h.restore_repo, t) for t in RESTORE_TAGS]


def _row_owner(row: dict[str, Any]) -> Owner:
    if row["incident_id"] is not None:
        return ("incident", int(row["incident_id"]))
    if row["event_id"] is not None:
        return ("event", int(row["event_id"]))
    return ("notice", int(row["id"]))


def _message_owner(message: dict[str, Any], incident_of: dict[int, int | None]) -> Owner | None:
    """Whom a webhook message is about, read from its footer (a webhook carries no metadata)."""
    blocks = message.get("blocks") or []
    footer = blocks[-1] if blocks else {}
    if footer.get("type") != "context":
        return None
    text = str(footer["elements"][0]["text"])
    if found := FOOTER_INCIDENT.search(text):
        return ("incident", int(found[1]))
    if found := FOOTER_EVENT.search(text):
        event_id = int(found[1])
        incident_id = incident_of.get(event_id)
        return ("event", event_id) if incident_id is None else ("incident", incident_id)
    return None


def _outbox_id(posted: dict[str, Any]) -> int | None:
    """The outbox row a message in the bot's channel carries in its metadata."""
    value = ((posted.get("metadata") or {}).get("event_payload") or {}).get("outbox_id")
    return int(value) if value is not None else None


@dataclasses.dataclass
class Seen:
    """The outbox and what the stand-in holds, read at one moment."""

    rows: list[dict[str, Any]]
    owners: dict[Owner, list[dict[str, Any]]]  # each owner's rows, oldest first
    messages: collections.Counter[Owner]  # the messages Slack accepted, by owner
    posted: collections.Counter[int]  # bot: the messages Slack accepted, by outbox row
    sent: set[int]  # the delivered rows that sent a message
    strays: list[str]  # messages that name no row (bot) or no incident or event (webhook)

    def sent_by(self, owner: Owner) -> int:
        return sum(r["id"] in self.sent for r in self.owners.get(owner, []))


def _read(h: Harness) -> Seen:
    rows = h.outbox()
    by_id = {r["id"]: r for r in rows}
    owners: dict[Owner, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in rows:
        owners[_row_owner(row)].append(row)
    messages: collections.Counter[Owner] = collections.Counter()
    posted: collections.Counter[int] = collections.Counter()
    strays: list[str] = []
    if h.mode == "bot":
        for message in list(h.slack.posted):
            of = by_id.get(_outbox_id(message))
            if of is None:
                strays.append(f"a message of no outbox row: {str(message)[:300]}")
                continue
            posted[of["id"]] += 1
            messages[_row_owner(of)] += 1
    else:
        incident_of = {int(e["id"]): e["incident_id"] for e in h.events()}
        for body in h.slack.messages():
            owner = _message_owner(body, incident_of)
            if owner is None:
                strays.append(f"a message naming no incident or event: {str(body)[:300]}")
                continue
            messages[owner] += 1
    sent: set[int] = set()
    for owner, of_owner in owners.items():
        shown = 0
        for row in of_owner:
            if row["status"] != "delivered":
                continue
            if h.mode == "bot" and row["remote_id"] is not None:
                sent.add(row["id"])
            elif h.mode == "webhook" and (owner[0] != "incident" or (row["covers"] or 0) > shown):
                # an incident's row that had nothing new to say is delivered covering no more
                # than the rows before it
                sent.add(row["id"])
            shown = max(shown, row["covers"] or 0)
    return Seen(rows, dict(owners), messages, posted, sent, strays)


def _note_kill(h: Harness, f: Figures, window: collections.Counter[int], ready: bool) -> None:
    """Where the kill landed: read once the daemon is dead and its requests are done.
    ``window``: by outbox row, how many of its messages Slack accepted before a kill kept
    ``delivered`` from being committed."""
    f.kills += 1
    f.kills_before_ready += not ready
    for path, tag in _all_tags(h):
        history = h.history(path, tag)
        moved = [e["new_digest"] for e in history if e["kind"] == "moved"]
        f.moves_unrecorded_at_kill += len(h.pushed[(path, tag)]) - 1 - len(moved)
        if path == h.restore_repo and history and history[-1]["kind"] == "moved":
            release = h.pushed[(path, tag)][0]
            if h.registry_digest(path, tag) == release:
                f.half_restores_at_kill += 1
            else:
                f.restores_pending_at_kill += 1
    seen = _read(h)
    now = time.time()
    for owner, rows in seen.owners.items():
        pending = [r for r in rows if r["status"] == "pending"]
        for row in pending:
            if h.mode == "bot":
                # each message carries its row's id: Slack has it, the database does not know
                unconfirmed = seen.posted[row["id"]] - window[row["id"]]
            elif row is pending[0]:
                # a webhook's message names its incident (or event) only; an owner's rows are
                # sent one at a time, in order: the first pending one was the one in flight
                explained = sum(window[r["id"]] for r in rows)
                unconfirmed = seen.messages[owner] - seen.sent_by(owner) - explained
            else:
                unconfirmed = 0
            in_flight = row["lease_until"] is not None and row["lease_until"].timestamp() > now
            if unconfirmed > 0:
                # it will go out once more (webhook), or be looked for and found (bot)
                window[row["id"]] += unconfirmed
                f.alert_window_hits += unconfirmed
            elif in_flight:
                f.sends_interrupted += 1
            if unconfirmed > 0 or in_flight:
                f.openings_hit_at_kill += row["part"] == "opening"
                f.updates_hit_at_kill += row["part"] == "update"


def _settled(h: Harness) -> bool:
    if not all(h.recorded(path, tag) for path, tag in _all_tags(h)):
        return False
    return all(row["status"] != "pending" for row in h.outbox())


def _short(value: Any, pushed: list[str]) -> str:
    """``value`` with each digest named by its push: ``#0`` the release, ``#1`` the first
    overwrite..., so that a failure reads as a story."""
    text = str(value)
    for i, digest in enumerate(pushed):
        text = text.replace(digest, f"#{i}")
    return text


def _check(h: Harness, f: Figures, window: collections.Counter[int]) -> list[str]:
    """Every way the final state can be wrong, counted into ``f``; the list of what was."""
    problems: list[str] = []
    events = h.events()
    f.events = len(events)
    for path, tag in _all_tags(h):
        pushed = h.pushed[(path, tag)]
        history = [(e["kind"], e["new_digest"]) for e in h.history(path, tag)]
        if path == h.alert_repo:
            expected = [("first_seen", pushed[0])] + [("moved", d) for d in pushed[1:]]
        else:
            expected = [("first_seen", pushed[0])]
            for digest in pushed[1:]:
                expected += [("moved", digest), ("restored", pushed[0])]
        if history != expected:
            problems.append(
                f"{tag} ({path.rsplit('-', 1)[1]}): events {_short(history, pushed)}, "
                f"expected {_short(expected, pushed)}"
            )
            have, want = collections.Counter(history), collections.Counter(expected)
            f.lost_events += sum((want - have).values())
            for item, n in (have - want).items():
                if item in want:
                    f.doubled_events += n
                else:
                    f.false_events += n
        record = h.tags()[(h.name(path), tag)]
        in_registry = h.registry_digest(path, tag)
        want_current = pushed[-1] if path == h.alert_repo else pushed[0]
        state = "drifted" if want_current != pushed[0] else "ok"
        got = (record["recorded_digest"], record["current_digest"], record["state"], in_registry)
        agreed = (pushed[0], want_current, state, want_current)
        if got != agreed:
            problems.append(
                f"{tag}: (recorded, current, state, registry) {_short(got, pushed)}, "
                f"expected {_short(agreed, pushed)}"
            )
            if path == h.restore_repo:
                f.half_restores += 1
    problems += _check_alerts(h, f, window, events)
    # no half-written rows: the archive holds every digest an event names, hashing to it
    with h.engine.connect() as conn:
        archive = {
            (r.repository, r.digest): bytes(r.body)
            for r in conn.execute(sa.select(tables.manifests))
        }
    for (repository, digest), body in archive.items():
        if models.sha256_digest(body) != digest:
            problems.append(f"archived {repository}@{digest} hashes to something else")
    for e in events:
        if e["new_digest"] and (e["repository"], e["new_digest"]) not in archive:
            problems.append(f"event {e['id']} ({e['kind']}): {e['new_digest']} not archived")
    return problems


def _check_alerts(
    h: Harness, f: Figures, window: collections.Counter[int], events: list[dict[str, Any]]
) -> list[str]:
    """The outbox and Slack: every row delivered, every alerted event shown by a delivered
    message, each message in Slack once (webhook: plus the window)."""
    problems: list[str] = []
    seen = _read(h)
    problems += seen.strays
    rows = seen.rows
    alerted = [e for e in events if e["kind"] in ALERTED]
    f.alerts = len(alerted)
    incidents = {int(e["incident_id"]) for e in alerted if e["incident_id"] is not None}
    f.incidents = len(incidents)
    f.slack_messages = sum(seen.messages.values())
    updates = [r for r in rows if r["part"] == "update"]
    f.update_rows = len(updates)
    f.updates_sent = sum(r["id"] in seen.sent for r in updates)
    # the rows: one per alerted event outside incidents, one opening per incident
    by_event = collections.Counter(r["event_id"] for r in rows if r["event_id"] is not None)
    solo = sorted(e["id"] for e in alerted if e["incident_id"] is None)
    if sorted(by_event) != solo or any(n != 1 for n in by_event.values()):
        problems.append(f"outbox rows {dict(by_event)} for alerted events {solo} (no incident)")
    openings = collections.Counter(r["incident_id"] for r in rows if r["part"] == "opening")
    if set(openings) != incidents or any(n != 1 for n in openings.values()):
        problems.append(f"openings {dict(openings)} for the incidents {sorted(incidents)}")
    not_delivered = [r for r in rows if r["status"] != "delivered"]
    if not_delivered:
        problems.append(f"outbox rows not delivered: {not_delivered}")
    # no lost alert: a delivered message of the event's incident showed it (or its own alert)
    for e in alerted:
        owner: Owner = ("event", e["id"])
        if e["incident_id"] is not None:
            owner = ("incident", int(e["incident_id"]))
        shown = max(
            (r["covers"] or 0 for r in seen.owners.get(owner, []) if r["status"] == "delivered"),
            default=0,
        )
        if (owner[0] == "incident" and shown < e["id"]) or not seen.messages[owner]:
            f.lost_alerts += 1
            problems.append(f"event {e['id']} ({e['kind']}, {owner}) shown by no message")
    if h.mode == "bot":
        problems += _check_bot(h, f, seen)
    else:
        problems += _check_webhook(f, seen, window)
    return problems


def _check_webhook(f: Figures, seen: Seen, window: collections.Counter[int]) -> list[str]:
    """Each owner's messages in Slack: one per delivered row that sent one, plus what a kill
    between Slack's answer and the commit explains (a webhook cannot tell that Slack had it)."""
    problems: list[str] = []
    for owner in sorted(set(seen.owners) | set(seen.messages)):
        n, want = seen.messages[owner], seen.sent_by(owner)
        explained = sum(window[r["id"]] for r in seen.owners.get(owner, []))
        if n < want:
            f.lost_alerts += want - n
            problems.append(f"{owner}: {want} rows delivered a message, Slack got {n}")
        elif n - want > explained:
            f.duplicate_alerts_other += n - want - explained
            problems.append(
                f"{owner}: Slack got {n} messages for {want} sent; {explained} explained by "
                "kills between Slack's answer and the commit"
            )
        f.duplicate_alerts_in_window += min(max(n - want, 0), explained)
    return problems


def _check_bot(h: Harness, f: Figures, seen: Seen) -> list[str]:
    """Each row's message in Slack once, where its row says; an incident's first message
    top-level, the rest in its thread; nothing re-sent without a lookup."""
    problems: list[str] = []
    posted = list(h.slack.posted)
    by_id = {r["id"]: r for r in seen.rows}
    of_row = {_outbox_id(m): m for m in posted if _outbox_id(m) in by_id}
    for row in seen.rows:
        n = seen.posted[row["id"]]
        if n > 1:
            f.duplicate_alerts_other += n - 1
            problems.append(f"outbox row {row['id']} ({row['part']}) reached Slack {n} times")
        if row["status"] == "delivered" and row["remote_id"] is not None:
            if n == 0:
                f.lost_alerts += 1
                problems.append(f"outbox row {row['id']} delivered, not in Slack")
            elif of_row[row["id"]]["ts"] != row["remote_id"]:
                problems.append(f"outbox row {row['id']}: ts {row['remote_id']}, Slack's differs")
        elif row["status"] == "delivered" and n:
            problems.append(f"outbox row {row['id']} recorded as not sent, but Slack has it")
    # an incident: one top-level message (its opening), every other one in that thread
    tops: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for m in posted:
        row = by_id.get(_outbox_id(m))
        if row is not None and row["incident_id"] is not None and not m["thread_ts"]:
            tops[int(row["incident_id"])].append(row)
    incidents = {int(r["incident_id"]) for r in seen.rows if r["incident_id"] is not None}
    for incident in sorted(incidents):
        parts = [r["part"] for r in tops.get(incident, [])]
        if parts != ["opening"]:
            problems.append(f"incident {incident}: top-level messages of rows {parts}")
    parent = {i: of_row[rs[0]["id"]]["ts"] for i, rs in tops.items() if len(rs) == 1}
    for row_id, m in of_row.items():
        incident_id = by_id[row_id]["incident_id"]
        if incident_id is not None and m["thread_ts"] and m["thread_ts"] != parent.get(incident_id):
            problems.append(f"outbox row {row_id}: a reply outside its incident's thread")
    redrawn = {str(u.body.get("ts")) for u in h.slack.updates}
    if redrawn - set(parent.values()):
        problems.append(f"chat.update of messages that are no incident's: {redrawn}")
    logs = "".join(log.read_text() for _, log in h.runs)
    f.alerts_found = logs.count("alert_found ")
    f.alerts_unverified = logs.count("alert_lookup_failed ")
    if f.alerts_unverified:
        problems.append(f"{f.alerts_unverified} alerts sent again without a lookup")
    return problems


def _append_figures(out: Path, figures: dict[str, Any]) -> None:
    """Add one run's figures to the JSON list in ``out``; runs on other pytest-xdist workers may
    be adding theirs at the same moment."""
    with out.open("a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        f.seek(0)
        text = f.read()
        previous = json.loads(text) if text.strip() else []
        f.seek(0)
        f.truncate()
        f.write(json.dumps([*previous, figures], indent=1))


@pytest.mark.parametrize("mode", ["webhook", "bot"])
def test_sigkill_at_random_points_of_cycles_and_restores_loses_and_doubles_nothing(
    tmp_path: Path,
    db_url: str,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    make_fault_proxy: Any,
    mode: str,
) -> None:
    backend = "postgres" if db_url.startswith("postgresql") else "sqlite"
    seed = int(os.environ.get("WATCHDOG_CRASH_SEED") or random.SystemRandom().randrange(2**31))
    kills = int(os.environ.get("WATCHDOG_CRASH_KILLS") or KILLS[(backend, mode)])
    print(
        f"\ncrash test ({backend}, {mode}): WATCHDOG_CRASH_SEED={seed} WATCHDOG_CRASH_KILLS={kills}"
    )
    rng = random.Random(seed)
    started = time.monotonic()
    proxy: faultproxy.FaultProxy = make_fault_proxy(registry)
    slack = SlackStandIn().start()
    slack.answer_delay = SLACK_ANSWER_DELAY
    h = Harness(tmp_path, db_url, registry, proxy, pusher, slack, repo, mode)

    def slow(answer: faultproxy.Answer, seen: faultproxy.Seen) -> faultproxy.Answer:
        time.sleep(PUT_DELAY_AFTER)
        return answer

    # only the daemon PUTs through the proxy: its restores (and re-PUT children)
    proxy.add("PUT", rf"^/v2/{re.escape(h.restore_repo)}/manifests/", delay=PUT_DELAY_BEFORE)
    proxy.add("PUT", rf"^/v2/{re.escape(h.restore_repo)}/manifests/", transform=slow)
    for path, tags in ((h.alert_repo, ALERT_TAGS), (h.restore_repo, RESTORE_TAGS)):
        for tag in tags:
            h.push(path, tag, f"{tag}-release")
    f = Figures(backend=backend, mode=mode, seed=seed)
    window: collections.Counter[int] = collections.Counter()
    try:
        h.start()
        h.wait_healthy()  # the schema is made
        wait_for(
            lambda: all(h.history(p, t) for p, t in _all_tags(h)),
            timeout=30,
            what="the baseline of every tag",
        )
        h.kill()
        _note_kill(h, f, window, ready=True)
        for round_ in range(kills):
            ready = [pt for pt in _all_tags(h) if h.recorded(*pt)]
            chosen = rng.sample(ready, k=min(len(ready), rng.randint(1, 3)))
            early = [pt for pt in chosen if rng.random() < 0.5]  # pushed while the daemon is down
            for path, tag in early:
                h.push(path, tag, f"{tag}-{round_}")
            h.start()
            if rng.random() < 0.15:
                # a kill during start-up and the first checks
                time.sleep(rng.uniform(0.2, 1.5))  # the random kill point, not a wait
                h.kill()
                _note_kill(h, f, window, ready=False)
                late = [pt for pt in chosen if pt not in early]
                for path, tag in late:  # pushed while it is down: seen by the next run
                    h.push(path, tag, f"{tag}-{round_}")
                f.overwrites += len(chosen)
                continue
            h.wait_healthy()
            late = [pt for pt in chosen if pt not in early]
            for path, tag in late:
                h.push(path, tag, f"{tag}-{round_}")
            h.notify(late)
            f.overwrites += len(chosen)
            time.sleep(rng.uniform(0.0, 1.2))  # the random kill point, not a wait
            h.kill()
            _note_kill(h, f, window, ready=True)
        # the last restart: it must sort everything out by itself
        h.start()
        h.wait_healthy()
        try:
            wait_for(lambda: _settled(h), timeout=60, what="every move recorded and alert sent")
            settled = ""
        except AssertionError as exc:
            settled = str(exc)  # the checks below say what is missing
        code = h.stop()
    finally:
        if h.proc is not None:
            h.proc.kill()
            h.proc.wait(timeout=10)
        slack.stop()
    f.seconds = round(time.monotonic() - started, 1)
    try:
        problems = _check(h, f, window)
    finally:
        h.engine.dispose()
    logs = [(proc.returncode, log.read_text()) for proc, log in h.runs]
    tracebacks = [text for _, text in logs if "Traceback" in text]
    summary = json.dumps(dataclasses.asdict(f))
    print(f"crash figures: {summary}")
    out = Path(os.environ.get("WATCHDOG_CRASH_OUT") or "")
    if out.name:
        _append_figures(out, dataclasses.asdict(f))
    assert not problems, f"seed {seed}: " + "\n".join(problems)
    assert not settled, f"seed {seed}: {settled}"
    assert code == 0, logs[-1][1][-3000:]
    assert not tracebacks, tracebacks[0][-3000:]
    assert f.kills == kills + 1 and f.overwrites > 0
