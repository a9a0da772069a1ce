"""Manifest media types and the small amount of manifest reading tag-watchdog needs.

Nothing here re-serialises JSON: the bytes a registry served are the identity of a manifest, and
these helpers only look inside them.
"""

from __future__ import annotations

import json
from typing import Any

from watchdog import errors, safejson

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
# Old signed manifests: we never ask for them, but a registry may still answer with one.
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ALL_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)

# Every type in Accept: a registry that is not offered the list types answers a multi-platform
# tag with one platform's manifest (and that child's digest), which would look like a move.
ACCEPT = ", ".join(ALL_TYPES)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def base_type(content_type: str | None) -> str | None:
    """``application/json; charset=utf-8`` -> ``application/json``; None or blank -> None."""
    if not content_type:
        return None
    value = content_type.split(";", 1)[0].strip().lower()
    return value or None


def is_index(media_type: str | None) -> bool:
    """True for an OCI image index or a Docker manifest list."""
    return base_type(media_type) in INDEX_TYPES


def is_schema1(media_type: str | None) -> bool:
    """True for the legacy (signed) schema 1 manifests whose digest is not the body's hash."""
    return base_type(media_type) in {DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED}


def parse_manifest(body: bytes) -> dict[str, Any]:
    """The manifest as a JSON object; raises ProtocolError when it is not one."""
    try:
        value = safejson.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.ProtocolError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise errors.ProtocolError(f"manifest is not a JSON object but {type(value).__name__}")
    return value


def media_type_of(body: bytes, content_type: str | None) -> str | None:
    """The manifest's own ``mediaType`` field, else the Content-Type the registry sent."""
    declared = parse_manifest(body).get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    return base_type(content_type)


def _descriptors(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    raw = doc.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise errors.ProtocolError(f"manifest field {key!r} is not a list")
    out: list[dict[str, Any]] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("digest"), str):
            raise errors.ProtocolError(f"manifest field {key!r} holds an entry without a digest")
        out.append(item)
    return out


def children(index_body: bytes) -> list[tuple[str, str | None]]:
    """``(digest, media_type)`` of every manifest an index lists, in the index's order."""
    doc = parse_manifest(index_body)
    return [
        (d["digest"], d.get("mediaType") if isinstance(d.get("mediaType"), str) else None)
        for d in _descriptors(doc, "manifests")
    ]


def platform_key(platform: object) -> str | None:
    """``os/arch[/variant]`` for an index entry's ``platform`` object, or None without one."""
    if not isinstance(platform, dict):
        return None
    os_ = platform.get("os")
    arch = platform.get("architecture")
    if not isinstance(os_, str) or not isinstance(arch, str):
        return None
    key = f"{os_}/{arch}"
    variant = platform.get("variant")
    if isinstance(variant, str) and variant:
        key += f"/{variant}"
    return key


def platforms(index_body: bytes) -> dict[str, str]:
    """Map ``os/arch[/variant]`` -> child digest for every platform entry of an index.

    Entries without a platform (attestations, ``unknown/unknown`` provenance) are left out; when
    a platform appears twice the first entry wins, as a client pulling by platform would pick it.
    """
    doc = parse_manifest(index_body)
    out: dict[str, str] = {}
    for desc in _descriptors(doc, "manifests"):
        key = platform_key(desc.get("platform"))
        if key is None or key == "unknown/unknown":
            continue
        out.setdefault(key, desc["digest"])
    return out


def blobs(manifest_body: bytes) -> list[str]:
    """Digests of the config blob and every layer of a single-platform manifest."""
    doc = parse_manifest(manifest_body)
    out: list[str] = []
    config = doc.get("config")
    if config is not None:
        if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
            raise errors.ProtocolError("manifest field 'config' has no digest")
        out.append(config["digest"])
    out.extend(d["digest"] for d in _descriptors(doc, "layers"))
    return out
