"""Push real images to a test registry with plain httpx (never with the client under test).

Content is deterministic from a ``seed``: the same seed gives the same bytes and digests, another
seed gives another "build". Every helper returns the exact bytes it pushed and their digest.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
from typing import Any

import httpx

from watchdog import models
from watchdog.registry import media

LAYER_TYPE_OCI = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TYPE_DOCKER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CONFIG_TYPE_OCI = "application/vnd.oci.image.config.v1+json"
CONFIG_TYPE_DOCKER = "application/vnd.docker.container.image.v1+json"

DEFAULT_PLATFORMS: tuple[tuple[str, str, str | None], ...] = (
    ("linux", "amd64", None),
    ("linux", "arm64", "v8"),
)


@dataclasses.dataclass(frozen=True)
class Pushed:
    """Something now in the registry: its exact bytes, digest and media type."""

    digest: str
    body: bytes
    media_type: str

    @property
    def size(self) -> int:
        return len(self.body)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclasses.dataclass(frozen=True)
class PushedIndex:
    """An index (or Docker manifest list) and its per-platform child manifests."""

    index: Pushed
    children: dict[str, Pushed]  # "linux/arm64/v8" -> child manifest

    @property
    def digest(self) -> str:
        return self.index.digest


def _canonical(doc: dict[str, Any]) -> bytes:
    # Fixed formatting, so that a seed always gives the same bytes.
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def layer_bytes(seed: int | str, size: int = 256) -> bytes:
    """A real gzipped tar with one file whose content depends on ``seed``; reproducible."""
    content = hashlib.sha256(f"layer-{seed}".encode()).hexdigest().encode() * max(1, size // 64)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"seed-{seed}.txt")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


class Pusher:
    """Pushes blobs and manifests to one registry (``base_url`` like ``http://127.0.0.1:5000``).

    ``headers`` (e.g. from ``RegistryServer.push_auth(repo)``) go on every request; a callable
    ``auth_for(repository) -> headers`` may be given instead for registries needing per-repo
    tokens.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        auth_for: Any = None,
        verify: Any = True,
    ) -> None:
        """``verify``: httpx's, e.g. ``RegistryServer.ssl_context()`` for a TLS registry."""
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers or {})
        self._auth_for = auth_for
        self._http = httpx.Client(timeout=10.0, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _h(self, repository: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = dict(self._headers)
        if self._auth_for is not None:
            out.update(self._auth_for(repository))
        out.update(extra or {})
        return out

    # --- blobs -------------------------------------------------------------------------------

    def blob(
        self, repository: str, data: bytes, media_type: str = "application/octet-stream"
    ) -> Pushed:
        """Monolithic upload: POST to open an upload session, PUT the bytes with their digest."""
        digest = models.sha256_digest(data)
        start = self._http.post(
            f"{self.base_url}/v2/{repository}/blobs/uploads/", headers=self._h(repository)
        )
        if start.status_code != 202:
            raise AssertionError(f"blob upload start: {start.status_code} {start.text}")
        location = httpx.URL(self.base_url).join(start.headers["location"])
        location = location.copy_merge_params({"digest": digest})
        done = self._http.put(
            location,
            content=data,
            headers=self._h(repository, {"Content-Type": "application/octet-stream"}),
        )
        if done.status_code != 201:
            raise AssertionError(f"blob upload: {done.status_code} {done.text}")
        return Pushed(digest, data, media_type)

    def config_blob(
        self,
        repository: str,
        *,
        os: str = "linux",
        architecture: str = "amd64",
        variant: str | None = None,
        seed: int | str = 0,
        labels: dict[str, str] | None = None,
        created: str | None = "2024-01-01T00:00:00Z",
        revision: str | None = None,
        source: str | None = None,
        docker: bool = False,
        layers: list[Pushed] | None = None,
    ) -> Pushed:
        """An image config for a platform, with optional OCI revision/source labels."""
        all_labels = dict(labels or {})
        if revision is not None:
            all_labels["org.opencontainers.image.revision"] = revision
        if source is not None:
            all_labels["org.opencontainers.image.source"] = source
        diff_ids = [models.sha256_digest(gzip.decompress(layer.body)) for layer in (layers or [])]
        doc: dict[str, Any] = {
            "architecture": architecture,
            "os": os,
            "config": {"Labels": all_labels, "Env": [f"SEED={seed}"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        if variant:
            doc["variant"] = variant
        if created is not None:
            doc["created"] = created
        return self.blob(
            repository, _canonical(doc), CONFIG_TYPE_DOCKER if docker else CONFIG_TYPE_OCI
        )

    def layer(self, repository: str, *, seed: int | str = 0, docker: bool = False) -> Pushed:
        return self.blob(
            repository, layer_bytes(seed), LAYER_TYPE_DOCKER if docker else LAYER_TYPE_OCI
        )

    # --- manifests -----------------------------------------------------------------------------

    def manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> Pushed:
        """PUT ``body`` as ``reference`` (a tag or its digest) with Content-Type ``media_type``."""
        resp = self._http.put(
            f"{self.base_url}/v2/{repository}/manifests/{reference}",
            content=body,
            headers=self._h(repository, {"Content-Type": media_type}),
        )
        if resp.status_code != 201:
            raise AssertionError(f"manifest put {reference}: {resp.status_code} {resp.text}")
        digest = models.sha256_digest(body)
        assert resp.headers.get("docker-content-digest") in (None, digest)
        return Pushed(digest, body, media_type)

    def image(
        self,
        repository: str,
        tag: str | None = None,
        *,
        seed: int | str = 0,
        os: str = "linux",
        architecture: str = "amd64",
        variant: str | None = None,
        docker: bool = False,
        **config_kwargs: Any,
    ) -> Pushed:
        """A single-platform image (config + one layer + manifest), tagged or by digest only."""
        layer = self.layer(repository, seed=f"{seed}-{os}-{architecture}-{variant}", docker=docker)
        cfg = self.config_blob(
            repository,
            os=os,
            architecture=architecture,
            variant=variant,
            seed=seed,
            docker=docker,
            layers=[layer],
            **config_kwargs,
        )
        media_type = media.DOCKER_MANIFEST if docker else media.OCI_MANIFEST
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": cfg.descriptor(),
            "layers": [layer.descriptor()],
        }
        body = _canonical(doc)
        return self.manifest(repository, tag or models.sha256_digest(body), body, media_type)

    def index(
        self,
        repository: str,
        tag: str | None = None,
        *,
        seed: int | str = 0,
        platforms: tuple[tuple[str, str, str | None], ...] = DEFAULT_PLATFORMS,
        docker: bool = False,
        **config_kwargs: Any,
    ) -> PushedIndex:
        """An OCI index (or, with ``docker=True``, a Docker manifest list) over ``platforms``."""
        children: dict[str, Pushed] = {}
        entries: list[dict[str, Any]] = []
        for os_, arch, variant in platforms:
            child = self.image(
                repository,
                None,
                seed=seed,
                os=os_,
                architecture=arch,
                variant=variant,
                docker=docker,
                **config_kwargs,
            )
            platform: dict[str, str] = {"os": os_, "architecture": arch}
            if variant:
                platform["variant"] = variant
            key = f"{os_}/{arch}" + (f"/{variant}" if variant else "")
            children[key] = child
            entries.append(child.descriptor(platform=platform))
        media_type = media.DOCKER_MANIFEST_LIST if docker else media.OCI_INDEX
        body = _canonical({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
        pushed = self.manifest(repository, tag or models.sha256_digest(body), body, media_type)
        return PushedIndex(pushed, children)

    def tag(self, repository: str, tag: str, pushed: Pushed) -> Pushed:
        """Point ``tag`` at already-pushed manifest bytes (a re-tag, like ``crane tag``)."""
        return self.manifest(repository, tag, pushed.body, pushed.media_type)

    def delete_manifest(self, repository: str, digest: str) -> None:
        """DELETE a manifest by digest (the registry removes every tag pointing to it)."""
        resp = self._http.delete(
            f"{self.base_url}/v2/{repository}/manifests/{digest}", headers=self._h(repository)
        )
        if resp.status_code != 202:
            raise AssertionError(f"manifest delete {digest}: {resp.status_code} {resp.text}")
