"""`tag-watchdog incidents [ID]` and `restore --incident ID` as a person runs them (subprocess, real
registry), on SQLite and PostgreSQL: a burst of moves in one namespace is one incident, listed and
shown, and put back bit for bit in one command."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import run
from watchdog.registry import media


def manifest(server: support_registry.RegistryServer, repository: str, tag: str) -> httpx.Response:
    resp = httpx.get(
        f"{server.url}/v2/{repository}/manifests/{tag}", headers={"Accept": media.ACCEPT}
    )
    resp.raise_for_status()
    return resp


def test_a_burst_of_moves_is_one_incident_listed_shown_and_restored(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    db_url: str,
) -> None:
    server, web = repo, f"{repo}-web"  # one namespace (t/): one incident
    releases = {
        (server, "1.0.0"): pusher.index(server, "1.0.0", seed="release-1").index,
        (server, "2.0.0"): pusher.image(server, "2.0.0", seed="release-2"),
        (web, "1.0.0"): pusher.image(web, "1.0.0", seed="release-web"),
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: {db_url}\nincidents: {{window: 10m}}\n"
        f"watches: ['{registry.host}/{server}', '{registry.host}/{web}']\n"
    )
    c = ("-c", str(cfg))
    refs = [f"{registry.host}/{r}:{t}" for r, t in releases]
    assert run("scan", *c).returncode == 0
    quiet = run("incidents", *c)
    assert quiet.returncode == 0 and quiet.stdout.startswith("no incidents recorded"), quiet

    rebuilt = {
        (server, "1.0.0"): pusher.index(server, "1.0.0", seed="rebuild-1").index,
        (server, "2.0.0"): pusher.image(server, "2.0.0", seed="rebuild-2"),
        (web, "1.0.0"): pusher.image(web, "1.0.0", seed="rebuild-web"),
    }
    assert run("scan", *c).returncode == 1

    # the list: one incident, three tags moved, who pushed unknown (no registry notification)
    listed = run("incidents", *c)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(f"incident 1  {registry.host}/t  opened ")
    assert ", open until " in lines[0]
    assert lines[1] == "  3 tags: 3 moved; pushed by unknown"
    # the tags in the order the check wrote them (a check's tags come in no promised order)
    assert sorted(line.split() for line in lines[2:]) == [[ref, "moved"] for ref in sorted(refs)]
    (doc,) = json.loads(run("incidents", "--json", *c).stdout)
    assert (doc["id"], doc["group_key"], doc["open"], doc["tag_count"]) == (
        1,
        f"{registry.host}/t",
        True,
        3,
    )
    assert doc["counts"] == {"moved": 3} and doc["pushed_by"] == []
    assert sorted((t["ref"], t["old_digest"], t["new_digest"]) for t in doc["tags"]) == sorted(
        (ref, releases[k].digest, rebuilt[k].digest) for ref, k in zip(refs, releases, strict=True)
    )
    only_web = json.loads(
        run("incidents", "--json", "--repository", f"{registry.host}/{web}", *c).stdout
    )
    assert [i["id"] for i in only_web] == [1]
    other = run("incidents", "--repository", f"{registry.host}/{repo}-none", *c)
    assert other.stdout.startswith(f"no incidents of {registry.host}/{repo}-none recorded")

    # one incident: every tag, old -> new, the platforms changed
    shown = run("incidents", "1", *c)
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.splitlines()
    assert table[3].split()[:3] == ["TAG", "CHANGE", "OLD"]
    (row,) = [line for line in table[4:] if line.startswith(refs[0] + " ")]
    assert row.split()[:4] == [
        refs[0],
        "moved",
        releases[(server, "1.0.0")].digest[:19],
        rebuilt[(server, "1.0.0")].digest[:19],
    ]
    assert "linux/amd64" in row and row.split()[-3:] == ["moved", "watchdog", "unknown"]
    assert len(table) == 7
    detail = json.loads(run("incidents", "1", "--json", *c).stdout)
    assert [e["kind"] for e in detail["events"]] == ["moved"] * 3
    assert {e["incident"] for e in detail["events"]} == {1}
    history = json.loads(run("history", refs[1], "--json", *c).stdout)
    assert [(e["kind"], e["incident"]) for e in history] == [("first_seen", None), ("moved", 1)]

    # an unknown id, a bad one, an ID with list options: clear usage errors, no traceback
    for bad, fragment in [
        (("incidents", "99"), "no incident 99 recorded"),
        (("incidents", "one"), "invalid int value"),
        (("incidents", "1", "--limit", "3"), "give no ID with them"),
        (("restore", "--incident", "99"), "no incident 99 recorded"),
        (("restore", "--incident", "1", refs[0]), "give no REF"),
        (("restore", "--incident", "1", "--drifted"), "give no REF"),
    ]:
        failed = run(*bad, *c)
        assert failed.returncode == 2, (bad, failed.stdout, failed.stderr)
        assert fragment in failed.stderr and "Traceback" not in failed.stderr, bad

    # web:1.0.0 is a deliberate re-release: accepted, it joins the incident and is not restored
    assert run("accept", refs[2], *c).returncode == 0

    def answers() -> list[str]:
        return [manifest(registry, r, t).headers["docker-content-digest"] for r, t in releases]

    moved = [d.digest for d in rebuilt.values()]
    dry = run("restore", "--incident", "1", "--dry-run", *c)
    assert dry.returncode == 0, dry.stderr
    assert f"restore {refs[0]} to {releases[(server, '1.0.0')].digest}" in dry.stdout
    assert f"restore {refs[1]} to {releases[(server, '2.0.0')].digest}" in dry.stdout
    assert refs[2] not in dry.stdout
    assert "2 tags: 2 would be restored; nothing was changed (dry run)" in dry.stdout
    assert answers() == moved  # a dry run changes nothing

    done = run("restore", "--incident", "1", "--json", *c)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert (outcome["exit_code"], outcome["dry_run"]) == (0, False)
    assert sorted((r["ref"], r["outcome"]) for r in outcome["results"]) == [
        (refs[0], "restored"),
        (refs[1], "restored"),
    ]
    assert answers() == [
        releases[(server, "1.0.0")].digest,
        releases[(server, "2.0.0")].digest,
        moved[2],
    ]
    # bit for bit: the registry serves the release's own bytes again
    assert manifest(registry, server, "1.0.0").content == releases[(server, "1.0.0")].body
    assert manifest(registry, server, "2.0.0").content == releases[(server, "2.0.0")].body

    again = run("restore", "--incident", "1", *c)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("nothing to restore in incident 1")
    after = run("incidents", *c).stdout.splitlines()
    assert sorted(line.split() for line in after[2:]) == sorted(
        [[refs[0], "restored"], [refs[1], "restored"], [refs[2], "accepted"]]
    )
    assert run("scan", *c).returncode == 0  # quiet again
