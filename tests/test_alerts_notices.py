"""A registry unreachable for longer than ``slack.unreachable_after`` gives ONE alert, and ONE
recovery message when it answers again: no flood, however many checks fail in between. A real
registry is stopped and started; the clock is injected."""

from __future__ import annotations

import datetime as dt

from tests.support import images
from tests.support import registry as support_registry
from watchdog import config, metrics, models, service
from watchdog.registry import client as registry_client
from watchdog.store import repo


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


async def _no_sleep(seconds: float) -> None:
    return None


def notices(store: repo.Store) -> list[dict[str, str]]:
    return [r["notice"] for r in store.outbox_rows() if r["notice"] is not None]


async def test_one_alert_when_a_registry_stays_unreachable_and_one_when_it_is_back(
    store: repo.Store, own_registry: support_registry.RegistryServer
) -> None:
    with images.Pusher(own_registry.url) as pusher:
        pusher.image("team/app", "1.0.0", seed="a")
    alerting = repo.Store(store.engine, channels=("slack",))
    ref = models.ImageRef.parse(f"{own_registry.host}/team/app")
    watch = config.WatchSettings(repository=ref)
    settings = config.Settings(
        watches=(watch,),
        slack=config.SlackSettings(webhook_url=config.Secret("http://x"), unreachable_after=300),
    )
    clients = service.Clients(
        settings, sleep=_no_sleep, retry=registry_client.RetryPolicy(attempts=1, base=0.0)
    )
    clock = Clock()
    checker = service.Checker(settings, alerting, clients, metrics.Metrics(), clock=clock)
    try:
        assert (await checker.check_watch(watch)).ok
        own_registry.stop()
        for _ in range(10):  # ten failed checks a minute apart: the threshold is five minutes
            result = await checker.check_watch(watch)
            assert result.error is not None
            clock.now += dt.timedelta(minutes=1)
        (down,) = notices(alerting)
        assert down["kind"] == "registry_unreachable" and down["registry"] == own_registry.host
        assert down["since"] == "2026-11-28 09:00:00 UTC" and down["error"]
        own_registry.start()
        assert (await checker.check_watch(watch)).ok
        assert (await checker.check_watch(watch)).ok
        down_again, up = notices(alerting)
        assert down_again == down
        assert up == {
            "kind": "registry_recovered",
            "registry": own_registry.host,
            "down_for": "10 min",
        }
        # a short blip (under the threshold) says nothing at all
        own_registry.stop()
        await checker.check_watch(watch)
        own_registry.start()
        await checker.check_watch(watch)
        assert len(notices(alerting)) == 2
    finally:
        await clients.aclose()


def test_the_threshold_is_configurable() -> None:
    raw = {"slack": {"webhook_url": "http://x", "unreachable_after": "2m"}}
    assert config.from_mapping(raw, env={}).slack.unreachable_after == 120.0
    assert config.from_mapping({}, env={}).slack.unreachable_after == 600.0
