"""Every request the watchdog sends says who it is, ``User-Agent: tag-watchdog/<version>``, so
that registry operators (and Slack) can find it in their access logs."""

from __future__ import annotations

from collections.abc import Callable

from tests.support import faultproxy, images
from tests.support import registry as support_registry
from tests.support.slack_standin import TOKEN, SlackStandIn
from watchdog import __version__, config
from watchdog.alerts import render, slack
from watchdog.registry import client

EXPECTED = f"tag-watchdog/{__version__}"


async def test_registry_requests_carry_the_user_agent(
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    fault_proxy: faultproxy.FaultProxy,
) -> None:
    assert __version__ and EXPECTED.startswith("tag-watchdog/")
    pushed = pusher.image(repo, "1.0.0")
    async with client.RegistryClient(registry.settings(host=fault_proxy.host)) as rc:
        await rc.ping()
        assert await rc.list_tags(repo) == ["1.0.0"]
        assert (await rc.head_manifest(repo, "1.0.0")).digest == pushed.digest
        await rc.get_manifest(repo, pushed.digest)
    seen = fault_proxy.seen
    assert {s.method for s in seen} >= {"GET", "HEAD"} and len(seen) >= 4
    assert {s.headers.get("user-agent") for s in seen} == {EXPECTED}


async def test_token_requests_carry_the_user_agent(
    token_registry: support_registry.RegistryServer,
    token_issuer: support_registry.TokenIssuer,
    repo: str,
    make_pusher: Callable[[support_registry.RegistryServer], images.Pusher],
) -> None:
    make_pusher(token_registry).image(repo, "1.0.0")
    token_issuer.requests.clear()
    async with client.RegistryClient(token_registry.settings()) as rc:
        await rc.head_manifest(repo, "1.0.0")
    assert token_issuer.requests
    assert {r.user_agent for r in token_issuer.requests} == {EXPECTED}


def test_slack_requests_carry_the_user_agent(standin: SlackStandIn) -> None:
    message = render.Message(text="hello", blocks=[])
    slack.WebhookSender(config.Secret(standin.webhook_url), timeout=2).send(message)
    bot = slack.BotSender(config.Secret(TOKEN), "#releases", standin.base_url, timeout=2)
    bot.send(message)
    agents = [r.headers.get("user-agent", "") for r in standin.requests]
    assert len(agents) == 2
    # slack-sdk appends its own products (Python/..., slackclient/...): ours comes first
    assert all(a.startswith(EXPECTED + " ") for a in agents), agents
