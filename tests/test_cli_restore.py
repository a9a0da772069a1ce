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
    assert "blobs checked: 4 present" in dry.stdout
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
