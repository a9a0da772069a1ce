"""Every Prometheus metric of tag-watchdog, in one private CollectorRegistry.

Labels are bounded: a repository, a registry host, a method, an HTTP status or error label, a
result. Never a digest; a tag only on the small ``tags_drifted_info`` gauge of drifted tags.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import prometheus_client as prom

from watchdog import __version__, models

PREFIX = "tag_watchdog_"
RESTORE_RESULTS = ("restored", "failed")
CHECK_RESULTS = ("ok", "error")
# found: an earlier send whose outcome was unknown turned out to be in Slack (recorded, not sent
# again); unverified: sent again although an earlier send may have got there (the lookup failed).
ALERT_RESULTS = ("delivered", "found", "unverified", "retry", "failed")


class Metrics:
    """The metric families. One instance per process (tests make their own)."""

    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        p = PREFIX
        self.tags_watched = prom.Gauge(
            p + "tags_watched", "Release tags recorded and watched.", ["repository"], registry=r
        )
        self.tags_drifted = prom.Gauge(
            p + "tags_drifted",
            "Tags that answer another digest than the recorded one, or were deleted.",
            ["repository"],
            registry=r,
        )
        self.drifted_tag = prom.Gauge(
            p + "drifted_tag_info",
            "1 for each tag that currently answers another digest (drifted) or was deleted.",
            ["repository", "tag", "state"],
            registry=r,
        )
        self._drifted_labels: dict[str, set[tuple[str, str]]] = {}
        self._watched: set[str] = set()  # repositories whose start-up poll time is set
        self.tag_moves = prom.Counter(
            p + "tag_moves",
            "Verified moves of a release tag to another digest.",
            ["repository"],
            registry=r,
        )
        self.tag_deletions = prom.Counter(
            p + "tag_deletions", "Confirmed deletions of a release tag.", ["repository"], registry=r
        )
        self.incidents = prom.Counter(
            p + "incidents",
            "Incidents opened (changes of one grouping key found close together: one alert), "
            "by the registry of the grouping key.",
            ["registry"],
            registry=r,
        )
        self.restores = prom.Counter(
            p + "restores",
            "Restores of a recorded digest, by result.",
            ["repository", "result"],
            registry=r,
        )
        self.checks = prom.Counter(
            p + "checks",
            "Watch checks, by registry and result (ok, error).",
            ["registry", "result"],
            registry=r,
        )
        self.registry_requests = prom.Counter(
            p + "registry_requests",
            "HTTP requests to registries, by method and status code or error label.",
            ["registry", "method", "code"],
            registry=r,
        )
        self.registry_request_duration = prom.Histogram(
            p + "registry_request_duration_seconds",
            "Duration of registry requests.",
            ["registry", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.poll_duration = prom.Histogram(
            p + "poll_duration_seconds",
            "Duration of one check of a watched repository.",
            ["repository"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.last_successful_poll = prom.Gauge(
            p + "last_successful_poll_timestamp_seconds",
            "Unix time of the last successful check of a repository; until its first success, "
            "the time the watchdog began watching it (so time() - this grows from start-up "
            "for a watch that never succeeds, and the staleness alert fires for it too).",
            ["repository"],
            registry=r,
        )
        self.alerts = prom.Counter(
            p + "alerts",
            "Alert deliveries, by channel and result (delivered, found, unverified, retry, "
            "failed).",
            ["channel", "result"],
            registry=r,
        )
        self.slack_actions = prom.Counter(
            p + "slack_actions",
            "Taps on the Slack buttons, by action (restore, accept, unknown) and result "
            "(restored, failed, accepted, already, refused, error; or why the request was "
            "refused: unsigned, bad_signature, stale, replayed, not_allowed, busy, stopping, overloaded, "
            "malformed).",
            ["action", "result"],
            registry=r,
        )
        self.alert_outbox_pending = prom.Gauge(
            p + "alert_outbox_pending", "Alerts written but not yet delivered.", registry=r
        )
        self.registry_ratelimit_remaining = prom.Gauge(
            p + "registry_ratelimit_remaining",
            "Requests left in the registry's rate-limit window, as the registry last reported.",
            ["registry"],
            registry=r,
        )
        self.build_info = prom.Gauge(
            p + "build_info",
            "Always 1; the version label says which release runs.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        self._vault_metrics()

    def watch(self, repository: str, registry: str, *, now: float | None = None) -> None:
        """Create the series of a watched repository at zero, so that ``increase()`` and alert
        rules see the first move, deletion or restore instead of a series that starts at 1; and
        its last successful poll at ``now`` (default: the time), when the watching begins, so
        that a watch that never succeeds is stale from start-up instead of absent."""
        if repository not in self._watched:
            self._watched.add(repository)
            self.last_successful_poll.labels(repository=repository).set(
                time.time() if now is None else now
            )
        self.tag_moves.labels(repository=repository)
        self.tag_deletions.labels(repository=repository)
        for result in RESTORE_RESULTS:
            self.restores.labels(repository=repository, result=result)
        for result in CHECK_RESULTS:
            self.checks.labels(registry=registry, result=result)
        self.incidents.labels(registry=registry)

    def count_incidents(self, events: Iterable[models.Event]) -> None:
        """Count the incidents ``events`` (just written) opened: once per incident, by the
        registry of its grouping key (the host of the repository whose change opened it)."""
        for event in events:
            if event.opens_incident:
                self.incidents.labels(registry=event.repository.partition("/")[0]).inc()

    def alert_channel(self, channel: str) -> None:
        """Create a configured alert channel's delivery series at zero (see ``watch``)."""
        for result in ALERT_RESULTS:
            self.alerts.labels(channel=channel, result=result)

    def set_drifted_tags(self, repository: str, tags: list[tuple[str, str]]) -> None:
        """Replace the drifted-tag series of ``repository`` with ``tags`` ((tag, state) pairs)."""
        new = set(tags)
        for tag, state in self._drifted_labels.get(repository, set()) - new:
            self.drifted_tag.remove(repository, tag, state)
        for tag, state in new:
            self.drifted_tag.labels(repository=repository, tag=tag, state=state).set(1)
        self._drifted_labels[repository] = new

    # The registry client reports through this observer (registry must not import metrics).
    def on_request(self, registry: str, method: str, code: str, seconds: float) -> None:
        self.registry_requests.labels(registry=registry, method=method, code=code).inc()
        self.registry_request_duration.labels(registry=registry, method=method).observe(seconds)

    def on_ratelimit(self, registry: str, remaining: float) -> None:
        self.registry_ratelimit_remaining.labels(registry=registry).set(remaining)

    # The alert worker reports through these (alerts must not import metrics).
    def on_alert(self, channel: str, result: str) -> None:
        self.alerts.labels(channel=channel, result=result).inc()

    def on_slack_action(self, action: str, result: str) -> None:
        self.slack_actions.labels(action=action, result=result).inc()

    def on_outbox_pending(self, pending: int) -> None:
        self.alert_outbox_pending.set(pending)

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return prom.generate_latest(self.registry)

    # --- the vault (issue 12) --------------------------------------------------------------------

    def _vault_metrics(self) -> None:
        p, r = "tag_watchdog_", self.registry
        self.vault_copies = prom.Counter(
            p + "vault_copies",
            "Release copies to the vault, by result: kept (the vault's tag answers the digest), "
            "retry (a temporary failure; tried again later), failed (given up, with a reason).",
            ["result"],
            registry=r,
        )
        for result in VAULT_RESULTS:
            self.vault_copies.labels(result=result)
        self.vault_pending = prom.Gauge(
            p + "vault_pending", "Release copies queued for the vault and not yet kept.", registry=r
        )

    # The vault copier reports through these (as the alert worker does).
    def on_vault_copy(self, result: str) -> None:
        self.vault_copies.labels(result=result).inc()

    def on_vault_pending(self, pending: int) -> None:
        self.vault_pending.set(pending)


VAULT_RESULTS = ("kept", "retry", "failed")
