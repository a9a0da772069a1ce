"""Incident messages: pure rendering (alerts.incident), Block Kit's limits at any size."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from watchdog import models
from watchdog.alerts import incident as incident_view
from watchdog.alerts import render

AT = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
BUTTONS = render.Context(on_move="alert", buttons=True, threads=True, config_path="/etc/tw.yaml")


def _moved(i: int, repo: str = "ghcr.io/acme/app", tag: str | None = None, **detail: Any):
    return models.Event(
        repository=repo,
        tag=tag or f"1.0.{i}",
        kind=models.EventKind.MOVED,
        at=AT + dt.timedelta(seconds=i),
        old_digest=OLD,
        new_digest=NEW,
        detail={"changed_platforms": ["linux/amd64", "linux/arm64"], **detail},
        id=i + 1,
        incident_id=7,
    )


def _incident(events: list[models.Event]) -> models.Incident:
    return models.Incident(
        id=7,
        group_key="ghcr.io/acme",
        opened_at=AT,
        last_change_at=events[-1].at,
        closes_at=events[-1].at + dt.timedelta(minutes=2),
        events=tuple(events),
    )


def _contexts(incident: models.Incident, context: render.Context = BUTTONS):
    return {e.repository: context for e in incident.events}


def _check_limits(message: render.Message) -> None:
    """What Slack refuses a whole message for."""
    assert len(message.blocks) <= render.MAX_BLOCKS
    assert len(message.text) <= render.MAX_FALLBACK
    for block in message.blocks:
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= render.MAX_SECTION
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= render.MAX_HEADER
        if block["type"] == "actions":
            assert len(block["elements"]) <= 25
            ids = [e["action_id"] for e in block["elements"]]
            assert len(ids) == len(set(ids))  # unique within the block
            for element in block["elements"]:
                assert len(element["value"]) <= render.MAX_BUTTON_VALUE
                assert len(element["text"]["text"]) <= 75
                if "confirm" in element:
                    assert len(element["confirm"]["text"]["text"]) <= 300


@pytest.mark.parametrize("n", [2, 7, 40, 41, 200])
def test_an_incident_of_any_size_stays_within_block_kit_s_limits(n: int) -> None:
    repos = [f"ghcr.io/acme/{name}" for name in ("api", "web", "worker")]
    events = [_moved(i, repos[i % 3], f"1.{i}.0") for i in range(n)]
    incident = _incident(events)
    message = incident_view.render_incident(incident, _contexts(incident))
    _check_limits(message)
    text = json.dumps(message.blocks)
    assert f"{n} release tags moved in ghcr.io/acme" in text
    shown = min(n, incident_view.MAX_TAG_LINES)
    assert all(f"{e.repository}:{e.tag}`" in text for e in events[:shown])
    if n > incident_view.MAX_TAG_LINES:
        assert f"and {n - shown} more" in text and "tag-watchdog incidents 7" in text
        assert f"{events[-1].repository}:{events[-1].tag}`" not in text
    buttons = {
        e["action_id"]: e for b in message.blocks if b["type"] == "actions" for e in b["elements"]
    }
    assert buttons[incident_view.ACTION_RESTORE_ALL]["text"]["text"] == f"Restore all ({n})"
    assert json.loads(buttons[incident_view.ACTION_RESTORE_ALL]["value"]) == {
        "incident": 7,
        "shown": n,
    }
    assert buttons[incident_view.ACTION_ACCEPT_ALL]["confirm"]["style"] == "danger"
    per_tag = min(n, incident_view.MAX_TAG_BUTTONS)
    assert sum(a.startswith(render.ACTION_RESTORE + ".") for a in buttons) == per_tag
    # webhook's closing message and the redraw with an outcome hold the limits too
    _check_limits(incident_view.render_incident(incident, _contexts(incident), closing=True))
    _check_limits(
        incident_view.render_incident(incident, _contexts(incident), outcome="*done* " * 400)
    )
    _check_limits(incident_view.render_news(incident, events, _contexts(incident)))


def test_an_incident_of_one_tag_is_that_tag_s_alert_naming_its_incident() -> None:
    event = _moved(0, pushed_by={"source": "registry", "actor": "ci-bot"})
    incident = _incident([event])
    message = incident_view.render_incident(incident, _contexts(incident))
    alone = render.render_event(event, BUTTONS)
    assert message.text == alone.text
    assert message.blocks[:-1] == alone.blocks[:-1]
    assert message.blocks[-1]["elements"][0]["text"].endswith("· incident 7")
    # once restored, it shows where it stands and offers nothing to tap
    restored = models.Event(
        "ghcr.io/acme/app", "1.0.0", models.EventKind.RESTORED, AT, NEW, OLD, id=5, incident_id=7
    )
    settled = incident_view.render_incident(_incident([event, restored]), _contexts(incident))
    assert "*Now:* *restored* by the watchdog" in json.dumps(settled.blocks)
    assert not [b for b in settled.blocks if b["type"] == "actions"]


def test_who_pushed_is_summed_up_and_polling_said_unknown() -> None:
    ci = {"source": "registry", "actor": "ci-bot", "address": "10.0.0.5"}
    events = [_moved(0, pushed_by=ci), _moved(1, pushed_by=ci), _moved(2)]
    text = json.dumps(incident_view.render_incident(_incident(events), {}).blocks)
    assert "`ci-bot` from `10.0.0.5` (2 tags)" in text
    assert "unknown for 1 tag (found by polling" in text


def test_where_each_tag_stands_and_the_buttons_follow_what_is_left_to_do() -> None:
    events = [_moved(0), _moved(1), _moved(2)]
    restored = models.Event(
        "ghcr.io/acme/app",
        "1.0.1",
        models.EventKind.RESTORED,
        AT,
        NEW,
        OLD,
        actor="slack:U0ALICE1 (alice)",
        id=10,
        incident_id=7,
    )
    incident = _incident([*events, restored])
    message = incident_view.render_incident(incident, _contexts(incident))
    text = json.dumps(message.blocks)
    assert "*restored* by <@U0ALICE1> (alice)" in text
    assert "Restore all (2)" in text  # the restored tag is no longer offered
    assert "tag-watchdog restore -c /etc/tw.yaml --incident 7" in text
    # with an outcome in their place, no buttons
    done = incident_view.render_incident(incident, _contexts(incident), outcome="*all done*")
    assert not [b for b in done.blocks if b["type"] == "actions"]
    assert "*all done*" in json.dumps(done.blocks)


def test_outside_text_is_escaped() -> None:
    event = _moved(0, tag="1.0.0", pushed_by={"source": "registry", "actor": "<!channel>"})
    other = _moved(1, repo="ghcr.io/acme/x")
    incident = _incident([event, other])
    text = json.dumps(incident_view.render_incident(incident, {}).blocks)
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
