"""`tag-watchdog restore / accept / guard` as a user or a CI job runs them (subprocess, real
registry, SQLite file)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import clean_env, run
from watchdog.registry import media
from watchdog.store import claims, db
from watchdog.store import repo as store_repo


def write_config(path: Path, host: str, repository: str, db: Path) -> Path:
    path.write_text(
        f"database_url: sqlite:///{db}\n"
        f"watches:\n  - repository: {host}/{repository}\n    on_move: alert\n"
    )
    return path


def tag_digest(server: support_registry.RegistryServer, repository: str, tag: str) -> str:
    resp = httpx.head(
        f"{server.url}/v2/{repository}/manifests/{tag}", headers={"Accept": media.ACCEPT}
    )
    return resp.headers["docker-content-digest"]


def test_manual_restore_dry_run_refusal_and_accept(
    tmp_path: Path, registry: support_registry.RegistryServer, repo: str, pusher: images.Pusher
) -> None:
    release = pusher.index(repo, "0.15.0", seed="release")
    cfg = str(write_config(tmp_path / "c.yaml", registry.host, repo, tmp_path / "w.db"))
    ref = f"{registry.host}/{repo}:0.15.0"
    assert run("scan", "-c", cfg).returncode == 0
    rebuilt = pusher.index(repo, "0.15.0", seed="rebuild")
    assert run("scan", "-c", cfg).returncode == 1

    # --dry-run prints the plan and changes nothing
    dry = run("restore", ref, "--dry-run", "-c", cfg)
    assert dry.returncode == 0, dry.stderr
    assert f"restore {ref} to {release.digest}" in dry.stdout
    assert "blobs: 4 checked, 4 present, 0 missing" in dry.stdout
    assert tag_digest(registry, repo, "0.15.0") == rebuilt.digest
    plan = json.loads(run("restore", ref, "--dry-run", "--json", "-c", cfg).stdout)
    assert plan["dry_run"] is True and plan["digest"] == release.digest
    assert plan["current_digest"] == rebuilt.digest and plan["problems"] == []
    assert sorted(plan["children_present"]) == sorted(c.digest for c in release.children.values())
    history = json.loads(run("history", ref, "--json", "-c", cfg).stdout)
    assert [e["kind"] for e in history] == ["first_seen", "moved"]

    # a digest that was never the tag's record is refused with a clear message
    refused = run("restore", ref, "--digest", rebuilt.digest, "-c", cfg)
    assert refused.returncode == 2
    assert f"{rebuilt.digest} was never recorded for {ref}" in refused.stderr
    assert "Traceback" not in refused.stderr

    # the real thing
    done = run("restore", ref, "-c", cfg)
    assert done.returncode == 0, done.stderr
    assert f"restored {ref} to {release.digest}" in done.stdout
    assert tag_digest(registry, repo, "0.15.0") == release.digest
    history = json.loads(run("history", ref, "--json", "-c", cfg).stdout)
    assert history[-1]["kind"] == "restored" and history[-1]["actor"].startswith("cli")
    assert run("scan", "-c", cfg).returncode == 0  # quiet again

    # a deliberate re-release: accept makes the new digest the record; later scans are quiet
    again = pusher.index(repo, "0.15.0", seed="re-release")
    assert run("scan", "-c", cfg).returncode == 1
    accepted = run("accept", ref, "--reason", "hotfix re-release", "-c", cfg)
    assert accepted.returncode == 0, accepted.stderr
    assert again.digest in accepted.stdout
    status = {r["tag"]: r for r in json.loads(run("status", "--json", "-c", cfg).stdout)}
    assert status["0.15.0"]["recorded_digest"] == again.digest
    assert status["0.15.0"]["state"] == "ok"
    assert run("scan", "-c", cfg).returncode == 0
    history = json.loads(run("history", ref, "--json", "-c", cfg).stdout)
    assert history[-1]["kind"] == "accepted"
    assert history[-1]["detail"]["reason"] == "hotfix re-release"
    # nothing left to accept
    assert run("accept", ref, "-c", cfg).returncode == 2


def test_several_tags_at_once_and_every_drifted_tag(
    tmp_path: Path, registry: support_registry.RegistryServer, repo: str, pusher: images.Pusher
) -> None:
    """`restore A B C` and `restore --drifted` (issue 15, items 2 and 6): 1.0.0 overwritten (can
    be put back), 2.0.0 overwritten with a layer of its release gone (cannot), 3.0.0 untouched
    (nothing to do). Every REF is judged before anything changes; the exit code is the worst."""
    tags = ("1.0.0", "2.0.0", "3.0.0")
    releases = {t: pusher.image(repo, t, seed=f"release-{t}") for t in tags}
    cfg = str(write_config(tmp_path / "c.yaml", registry.host, repo, tmp_path / "w.db"))
    a, b, c = (f"{registry.host}/{repo}:{t}" for t in tags)
    assert run("scan", "-c", cfg).returncode == 0
    rebuilds = {t: pusher.image(repo, t, seed=f"rebuild-{t}") for t in tags[:2]}
    lost = media.blobs(releases["2.0.0"].body)[1]
    httpx.delete(f"{registry.url}/v2/{repo}/blobs/{lost}").raise_for_status()
    assert run("scan", "-c", cfg).returncode == 1

    def answers() -> list[str]:
        return [tag_digest(registry, repo, t) for t in tags]

    moved = [rebuilds["1.0.0"].digest, rebuilds["2.0.0"].digest, releases["3.0.0"].digest]

    # --drifted --dry-run: the plan of every drifted tag (3.0.0 is not), problems up front
    dry = run("restore", "--drifted", "--dry-run", "-c", cfg)
    assert dry.returncode == 3, dry.stderr
    blocks = dry.stdout.split("\n\n")
    assert blocks[0].splitlines()[:2] == [
        f"restore {a} to {releases['1.0.0'].digest}",
        f"  would PUT {releases['1.0.0'].size} bytes to {a}, then HEAD it",
    ]
    assert blocks[1].splitlines()[:2] == [
        f"restore {b} to {releases['2.0.0'].digest}",
        f"  cannot restore: blob {lost} (of {releases['2.0.0'].digest}) is gone from the "
        "registry; nothing was changed",
    ]
    assert "  blobs: 2 checked, 1 present, 1 missing" in blocks[1].splitlines()
    assert c not in dry.stdout
    assert blocks[2].strip() == (
        "2 tags: 1 would be restored, 1 cannot be restored; nothing was changed (dry run)"
    )
    assert answers() == moved

    # one REF never recorded: a usage error naming it, and nothing restored
    refused = run("restore", a, f"{registry.host}/{repo}:9.9.9", b, "-c", cfg)
    assert refused.returncode == 2, refused.stderr
    assert "1 of 3 references cannot be restored; nothing was changed" in refused.stderr
    assert f"{repo}:9.9.9 was never recorded" in refused.stderr
    assert answers() == moved and refused.stdout == ""

    # all three: restored, failed (recorded as restore_failed), nothing to do; worst: 3
    done = run("restore", a, b, c, a, "--json", "-c", cfg)  # a named twice: restored once
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["exit_code"], doc["dry_run"]) == (3, False)
    results = doc["results"]
    assert [(r["ref"], r["outcome"], r["exit_code"]) for r in results] == [
        (a, "restored", 0),
        (b, "failed", 3),
        (c, "nothing_to_do", 0),
    ]
    assert results[0]["event"]["kind"] == "restored"
    assert results[1]["event"]["kind"] == "restore_failed" and lost in results[1]["reason"]
    assert results[2]["event"] is None and results[2]["plan"]["nothing_to_do"] is True
    assert results[1]["plan"]["blobs"] == {"checked": 2, "present": 1, "in_vault": 0, "missing": 1}
    assert answers() == [releases["1.0.0"].digest, rebuilds["2.0.0"].digest, moved[2]]

    # accept judges every REF first too: 1.0.0 is back at its record, so nothing is accepted
    accept = run("accept", b, a, "-c", cfg)
    assert accept.returncode == 2
    assert "1 of 2 references cannot be accepted; nothing was changed" in accept.stderr
    engine = db.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        record = store_repo.Store(engine).get_tag(f"{registry.host}/{repo}", "2.0.0")
    finally:
        engine.dispose()
    assert record is not None and record.recorded_digest == releases["2.0.0"].digest
    accepted = run("accept", b, "--json", "-c", cfg)  # the one REF's own document
    assert accepted.returncode == 0, accepted.stderr
    doc = json.loads(accepted.stdout)
    assert (doc["exit_code"], doc["outcome"], doc["ref"]) == (0, "accepted", b)
    assert doc["event"]["new_digest"] == rebuilds["2.0.0"].digest

    # a repository with nothing recorded (a typo?): said so, exit 0
    none = run("restore", "--drifted", "--repository", f"{registry.host}/{repo}-x", "-c", cfg)
    assert none.returncode == 0, none.stderr
    assert none.stdout.startswith(f"no tags of {registry.host}/{repo}-x recorded")


def test_guard_exit_codes(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    make_fault_proxy,
) -> None:
    ref = f"{registry.host}/{repo}:0.15.0"
    # no config, no DB: absent -> 0 (a definitive 404 NAME_UNKNOWN)
    absent = run("guard", ref, cwd=tmp_path)
    assert absent.returncode == 0, absent.stderr
    assert "does not exist" in absent.stdout
    release = pusher.index(repo, "0.15.0", seed="release")
    pusher.image(repo, "0.14.0", seed="old")
    # the repository exists, the tag does not: MANIFEST_UNKNOWN -> 0
    assert run("guard", f"{registry.host}/{repo}:0.16.0", cwd=tmp_path).returncode == 0
    present = run("guard", ref, cwd=tmp_path)
    assert present.returncode == 1
    assert release.digest in present.stdout and "already released" in present.stdout
    allowed = run("guard", ref, "--allow-digest", release.digest, "--json", cwd=tmp_path)
    assert allowed.returncode == 0
    assert json.loads(allowed.stdout)["results"][0]["allowed"] is True
    other = run("guard", ref, "--allow-digest", "sha256:" + "0" * 64, cwd=tmp_path)
    assert other.returncode == 1

    # with a config and its DB: when it was first recorded
    cfg = str(write_config(tmp_path / "c.yaml", registry.host, repo, tmp_path / "w.db"))
    assert run("scan", "-c", cfg).returncode == 0
    recorded = run("guard", ref, "-c", cfg, "--json")
    assert recorded.returncode == 1
    assert json.loads(recorded.stdout)["results"][0]["first_recorded"]

    # unsure is never 0: refused access, a broken registry, nobody listening
    proxy = make_fault_proxy(registry)
    proxied = f"{proxy.host}/{repo}:0.15.0"
    for status in (401, 403, 500):
        proxy.reset()
        proxy.fail(None, "/v2/", status, body=b'{"errors":[{"code":"DENIED"}]}')
        for candidate in (proxied, f"{proxy.host}/{repo}:9.9.9"):
            result = run("guard", candidate, cwd=tmp_path)
            assert result.returncode == 3, (status, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr
    proxy.reset()
    proxy.fail(None, f"/v2/{repo}/manifests/", 404, body=b"404 page not found")
    assert run("guard", proxied, cwd=tmp_path).returncode == 3  # a proxy's bare 404 is no answer
    # a HEAD without a digest is settled by a verified GET; a GET that then finds nothing is no
    # answer either (a race with a delete, or a confused registry), never "go ahead"
    proxy.reset()
    proxy.rewrite_header("HEAD", "/manifests/", "Docker-Content-Digest", None)
    settled = run("guard", proxied, cwd=tmp_path)
    assert settled.returncode == 1 and release.digest in settled.stdout
    proxy.fail(
        "GET",
        "/manifests/",
        404,
        body=b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}',
        headers={"Content-Type": "application/json"},
    )
    vanished = run("guard", proxied, cwd=tmp_path)
    assert vanished.returncode == 3 and "vanished between HEAD and GET" in vanished.stderr
    proxy.stop()
    assert run("guard", proxied, cwd=tmp_path).returncode == 3
    assert run("guard", "not a ref", cwd=tmp_path).returncode == 2


@pytest.mark.postgres
def test_restore_waits_while_a_check_of_the_repository_holds_its_claim(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    pg_url: str,
) -> None:
    """On PostgreSQL a hand-started restore takes the repository's claim, like a daemon's check:
    it waits for a check under way (here the test holds the claim as a replica checking it would)
    and puts the tag back only after it; no check can see the tag put back before `restored`."""
    release = pusher.image(repo, "1.0.0", seed="release")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: {pg_url}\nwatches: [{{repository: '{registry.host}/{repo}', on_move: alert}}]\n"
    )
    ref = f"{registry.host}/{repo}:1.0.0"
    assert run("scan", "-c", str(cfg)).returncode == 0
    rebuilt = pusher.image(repo, "1.0.0", seed="rebuilt")
    assert run("scan", "-c", str(cfg)).returncode == 1
    engine = db.create_engine(pg_url)
    try:
        checking = claims.Claims(engine).acquire(
            f"{registry.host}/{repo}", dt.datetime.now(dt.UTC), slot=None
        )
        assert checking is not None
        proc = subprocess.Popen(
            [sys.executable, "-m", "watchdog", "restore", ref, "-c", str(cfg)],
            cwd=tmp_path,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(2.0)
            assert proc.poll() is None, proc.communicate()  # waiting for the check
            assert tag_digest(registry, repo, "1.0.0") == rebuilt.digest  # nothing put yet
        finally:
            checking.release()
        out, err = proc.communicate(timeout=60)
    finally:
        engine.dispose()
    assert proc.returncode == 0, err
    assert f"restored {ref} to {release.digest}" in out
    assert tag_digest(registry, repo, "1.0.0") == release.digest
