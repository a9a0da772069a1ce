"""What registry cleanups do to a real ``docker-registry``'s filesystem storage, for tests.

Distribution's API cannot delete a tag alone (``DELETE /v2/<name>/manifests/<tag>`` is refused):
``untag`` removes the tag's link from the storage the way a tag deletion in a registry UI, ``regctl
tag rm`` or a retention policy that untags leaves it: the manifest and its blobs stay, addressable
by digest. (Delete by digest is ``images.Pusher.delete_manifest``.)
"""

from __future__ import annotations

import shutil
import subprocess

from tests.support import registry as support_registry


def untag(server: support_registry.RegistryServer, repository: str, tag: str) -> None:
    """Delete ``tag`` of ``repository`` only; its manifest stays in the registry."""
    path = (
        server.workdir
        / "storage/docker/registry/v2/repositories"
        / repository
        / "_manifests/tags"
        / tag
    )
    if not path.is_dir():
        raise AssertionError(f"no tag {tag} of {repository} in {server.workdir}")
    shutil.rmtree(path)


def garbage_collect(server: support_registry.RegistryServer, *, delete_untagged: bool) -> str:
    """Distribution's own cleanup, as an operator runs it: stop the registry, ``docker-registry
    garbage-collect [--delete-untagged] CONFIG``, start it again (same port, same storage).
    Returns the tool's output."""
    server.stop()
    args = [server.binary, "garbage-collect", str(server.workdir / "config.yml")]
    if delete_untagged:
        args.insert(2, "--delete-untagged")
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    finally:
        server.start()
    if done.returncode != 0:
        raise AssertionError(f"garbage-collect failed: {done.stdout}{done.stderr}")
    return done.stdout + done.stderr
