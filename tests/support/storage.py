"""What registry cleanups do to a real ``docker-registry``'s filesystem storage, for tests.

Distribution's API cannot delete a tag alone (``DELETE /v2/<name>/manifests/<tag>`` is refused):
``untag`` removes the tag's link from the storage the way a tag deletion in a registry UI, ``regctl
tag rm`` or a retention policy that untags leaves it: the manifest and its blobs stay, addressable
by digest. (Delete by digest is ``images.Pusher.delete_manifest``.)
"""

from __future__ import annotations

import shutil

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
