"""A vault copy of a big layer across two registries: peak RSS stays bounded (the blob is
streamed in 8 MiB chunks, never held whole), and the same copy on one registry by mount.

    .venv/bin/python -m bench.vault_bench [--mb 200]

Starts two of Debian's docker-registry on 127.0.0.1 (own storage, removed afterwards), pushes an
image with one layer of ``--mb`` MB of random bytes to the first, and runs `tag-watchdog scan` with
``vault:`` on the second: the scan records the tag, then streams the release into the vault before
it exits. Then the same with the vault on the first registry (a mount: no bytes move). Reports
wall time, CPU seconds and peak RSS of each scan process (wait4 on that one process), and checks
that the vault's tag answers the digest. The registries share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
from pathlib import Path

from bench import fleet_bench
from tests.support import images
from tests.support import registry as support_registry
from watchdog import models
from watchdog.registry import media


def push_big_image(server: support_registry.RegistryServer, repo: str, mb: int) -> str:
    layer = os.urandom(mb * 1024 * 1024)
    with images.Pusher(server.url) as pusher:
        blob = pusher.blob(repo, layer, images.LAYER_TYPE_OCI)
        del layer
        cfg = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
        config_blob = pusher.blob(repo, cfg, images.CONFIG_TYPE_OCI)
        doc = {
            "schemaVersion": 2,
            "mediaType": media.OCI_MANIFEST,
            "config": config_blob.descriptor(),
            "layers": [
                {"mediaType": images.LAYER_TYPE_OCI, "digest": blob.digest, "size": blob.size}
            ],
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        return pusher.manifest(repo, "1.0.0", body, media.OCI_MANIFEST).digest


def scan_into_vault(
    workdir: Path, src: support_registry.RegistryServer, vault: support_registry.RegistryServer
) -> dict[str, float]:
    db = workdir / f"vault-{vault.port}.db"
    cfg = workdir / f"vault-{vault.port}.yaml"
    registries = "".join(
        f'  - {{host: "{host}", insecure: true, timeout: 60s}}\n'
        for host in dict.fromkeys([src.host, vault.host])
    )
    cfg.write_text(
        f"""database_url: sqlite:///{db}
registries:
{registries}watches: ["{src.host}/bench/big"]
vault: {{repository: "{vault.host}/vault"}}
"""
    )
    run = fleet_bench.cli_scan(cfg, workdir)
    with sqlite3.connect(db) as conn:
        (state,) = conn.execute("SELECT state FROM vault_copies").fetchone()
    if state != "kept":
        raise SystemExit(f"the copy is {state}: {run['stderr'][-2000:]}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description="vault copy benchmark")
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with (
            support_registry.RegistryServer(workdir / "src") as src,
            support_registry.RegistryServer(workdir / "vault") as vault,
        ):
            digest = push_big_image(src, "bench/big", args.mb)
            across = scan_into_vault(workdir, src, vault)
            same = scan_into_vault(workdir, src, src)
            print(f"# release {digest}: one layer of {args.mb} MB")
            for label, run in (
                ("across registries (streamed)", across),
                ("same registry (mount)", same),
            ):
                print(
                    f"{label}: scan wall {run['wall']:.1f}s, cpu {run['cpu']:.1f}s, "
                    f"peak RSS {run['maxrss_mb']:.0f} MB"
                )
            assert models.DIGEST_RE.match(digest)


if __name__ == "__main__":
    main()
