"""Media types and manifest reading (pure)."""

from __future__ import annotations

import json

import pytest

from watchdog import errors
from watchdog.registry import media

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def test_accept_lists_all_four_types():
    for media_type in (
        media.OCI_INDEX,
        media.OCI_MANIFEST,
        media.DOCKER_MANIFEST_LIST,
        media.DOCKER_MANIFEST,
    ):
        assert media_type in media.ACCEPT
    assert media.MAX_MANIFEST_BYTES == 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [
        (media.OCI_INDEX, True),
        (media.DOCKER_MANIFEST_LIST, True),
        (media.OCI_INDEX + "; charset=utf-8", True),
        (media.OCI_MANIFEST, False),
        (media.DOCKER_MANIFEST, False),
        (None, False),
        ("", False),
    ],
)
def test_is_index(media_type, expected):
    assert media.is_index(media_type) is expected


INDEX = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": media.OCI_INDEX,
        "manifests": [
            {
                "mediaType": media.OCI_MANIFEST,
                "digest": A,
                "size": 1,
                "platform": {"os": "linux", "architecture": "amd64"},
            },
            {
                "mediaType": media.OCI_MANIFEST,
                "digest": B,
                "size": 1,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
            {
                "mediaType": media.OCI_MANIFEST,
                "digest": C,
                "size": 1,
                "platform": {"os": "unknown", "architecture": "unknown"},
            },
            {"digest": C, "size": 1},
        ],
    }
).encode()


def test_platforms_and_children_of_an_index():
    assert media.platforms(INDEX) == {"linux/amd64": A, "linux/arm64/v8": B}
    assert media.children(INDEX) == [
        (A, media.OCI_MANIFEST),
        (B, media.OCI_MANIFEST),
        (C, media.OCI_MANIFEST),
        (C, None),
    ]


def test_blobs_of_a_manifest():
    body = json.dumps(
        {"schemaVersion": 2, "config": {"digest": A}, "layers": [{"digest": B}, {"digest": C}]}
    ).encode()
    assert media.blobs(body) == [A, B, C]
    assert media.blobs(b'{"schemaVersion": 2}') == []


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1]", b'"text"', b"\xff\xfe", b'{"manifests": 3}', b'{"manifests": [{}]}'],
)
def test_malformed_manifests_are_protocol_errors(body):
    with pytest.raises(errors.ProtocolError):
        media.children(body)


def test_media_type_of_prefers_the_body_field():
    assert media.media_type_of(INDEX, "application/json") == media.OCI_INDEX
    assert media.media_type_of(b"{}", media.DOCKER_MANIFEST + "; x=y") == media.DOCKER_MANIFEST
    assert media.media_type_of(b"{}", None) is None
