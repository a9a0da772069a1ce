"""Image references (the distribution reference grammar with Docker's normalisation), digests."""

from __future__ import annotations

import pytest

from watchdog import errors, models

D = "sha256:" + "e" * 64


@pytest.mark.parametrize(
    ("text", "host", "repository", "tag", "digest"),
    [
        ("ghcr.io/deephaven/server:0.15.0", "ghcr.io", "deephaven/server", "0.15.0", None),
        ("nginx", "docker.io", "library/nginx", None, None),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("docker.io/nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("index.docker.io/grafana/grafana", "docker.io", "grafana/grafana", None, None),
        ("grafana/grafana:10.0.0", "docker.io", "grafana/grafana", "10.0.0", None),
        ("localhost/app:1.0.0", "localhost", "app", "1.0.0", None),
        ("localhost:5000/team/app:v1.0.0", "localhost:5000", "team/app", "v1.0.0", None),
        ("127.0.0.1:5000/a/b/c:1.0.0", "127.0.0.1:5000", "a/b/c", "1.0.0", None),
        ("[::1]:5000/app:1.0.0", "[::1]:5000", "app", "1.0.0", None),
        (f"ghcr.io/deephaven/server@{D}", "ghcr.io", "deephaven/server", None, D),
        (f"ghcr.io/deephaven/server:0.15.0@{D}", "ghcr.io", "deephaven/server", "0.15.0", D),
        ("GHCR.IO/x/y:Tag_1", "ghcr.io", "x/y", "Tag_1", None),
        ("quay.io/a__b/c-d.e:1", "quay.io", "a__b/c-d.e", "1", None),
    ],
)
def test_parse(text: str, host: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = models.ImageRef.parse(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == (host, repository, tag, digest)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "UPPER/case",
        "ghcr.io/",
        "ghcr.io/a/:tag",
        "a//b",
        "a/b:",
        "a/b:-bad",
        "a/b:.bad",
        "a/b:" + "x" * 129,
        "a/b@sha256:short",
        "a/b@md5:" + "0" * 32,
        "ghcr.io/a b",
        "ghcr.io/a/b:t g",
        "-host.io/a",
        "x" * 300,
        "http://ghcr.io/a/b",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(errors.InvalidReference):
        models.ImageRef.parse(text)


def test_str_round_trip_and_name() -> None:
    ref = models.ImageRef.parse("nginx:1.25")
    assert str(ref) == "docker.io/library/nginx:1.25"
    assert ref.name == "docker.io/library/nginx"
    assert str(models.ImageRef.parse(str(ref))) == str(ref)
    assert str(ref.with_digest(D)) == f"docker.io/library/nginx@{D}"


def test_require_and_forbid_tag() -> None:
    with pytest.raises(errors.InvalidReference, match="with a tag"):
        models.ImageRef.parse("ghcr.io/a/b", require_tag=True)
    with pytest.raises(errors.InvalidReference, match="without a tag"):
        models.ImageRef.parse("ghcr.io/a/b:1.0.0", allow_tag=False)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("ghcr.io", False),
        ("10.0.0.1:5000", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert models.is_loopback_host(host) is loopback


def test_api_host_for_docker_hub() -> None:
    assert models.api_host("docker.io") == "registry-1.docker.io"
    assert models.api_host("ghcr.io") == "ghcr.io"


def test_digest_helpers() -> None:
    assert models.sha256_digest(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert models.check_digest(D) == D
    with pytest.raises(errors.InvalidReference):
        models.check_digest("sha256:" + "E" * 64)
    assert models.short_digest(D) == "sha256:eeeeeeeeeeee"
