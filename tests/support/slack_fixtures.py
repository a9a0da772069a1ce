"""Slack fixtures (a pytest plugin, listed in tests/conftest.py): ``standin``, the Slack stand-in
(tests/support/slack_standin.py) started for one test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.slack_standin import SlackStandIn


@pytest.fixture
def standin() -> Iterator[SlackStandIn]:
    """A started Slack stand-in (Web API and Incoming Webhook) on 127.0.0.1, stopped after."""
    with SlackStandIn() as s:
        yield s
