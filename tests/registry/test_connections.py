"""Connection reuse: polling thousands of tags must not cost a TCP handshake per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support import images
from tests.support import registry as support_registry
from watchdog.registry import client as registry_client


def client_sockets_to(port: int) -> int:
    """Sockets on this machine (any state, TIME_WAIT included) whose remote end is ``port``."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            remote = line.split()[2]
            if int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


async def test_heads_reuse_connections(tmp_path: Path) -> None:
    # a private registry, so no other test's sockets are counted
    server = support_registry.RegistryServer(tmp_path / "r", "open").start()
    try:
        with images.Pusher(server.url) as pusher:
            image = pusher.image("team/app", "1.0.0", seed="a")
            for i in range(1, 60):
                pusher.tag("team/app", f"1.0.{i}", image)
        before = client_sockets_to(server.port)
        settings = server.settings(max_concurrency=8)
        async with registry_client.RegistryClient(settings) as rc:
            heads = await asyncio.gather(
                *(rc.head_manifest("team/app", f"1.0.{i}") for i in range(1, 60))
            )
            await asyncio.gather(*(rc.head_manifest("team/app", "1.0.1") for _ in range(60)))
            opened = client_sockets_to(server.port) - before
        assert {h.digest for h in heads} == {image.digest}
        # 120 HEADs over at most 8 connections (plus the /v2/ probe), not one each
        assert opened <= 10, f"{opened} sockets for 120 HEADs: connections are not reused"
    finally:
        server.close()
