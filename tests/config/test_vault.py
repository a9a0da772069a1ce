"""The vault's section and naming scheme: repositories derived from the prefix within the
repository grammar, tags within the 128-character tag grammar, never a referrers fallback tag."""

from __future__ import annotations

import pytest

from watchdog import config, errors, models

HEX = "ab" * 32
DIGEST = "sha256:" + HEX


def vault(prefix: str = "ghcr.io/acme/release-vault") -> config.VaultSettings:
    return config.VaultSettings(repository=models.ImageRef.parse(prefix))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("ghcr.io/deephaven/server", "acme/release-vault/ghcr.io/deephaven/server"),
        ("127.0.0.1:5000/a/b", "acme/release-vault/127.0.0.1-5000/a/b"),
        ("[::1]:5000/a", "acme/release-vault/1-5000/a"),
        ("nginx", "acme/release-vault/docker.io/library/nginx"),
    ],
)
def test_the_vault_repository_is_the_prefix_then_the_source(source: str, expected: str) -> None:
    path = vault().repository_for(models.ImageRef.parse(source))
    assert path == expected and models.is_repository_path(path)


def test_tags_keep_the_version_and_the_whole_digest_within_128_characters() -> None:
    assert vault().tag_for("0.15.0", DIGEST) == f"0.15.0--{HEX}"
    long = vault().tag_for("v" * 128, DIGEST)
    assert len(long) == 128 and long.endswith(HEX) and models.TAG_RE.match(long)
    assert vault().child_tag_for(DIGEST) == f"p--{HEX}"
    for tag in (vault().tag_for("1.0.0", DIGEST), vault().child_tag_for(DIGEST)):
        assert not tag.startswith("sha256-")
    with pytest.raises(errors.InvalidReference):
        vault().tag_for("1.0.0", "sha256:nothex")


def test_a_vault_name_over_255_characters_is_a_config_problem() -> None:
    deep = "ghcr.io/" + "/".join(["x" * 60] * 3)
    with pytest.raises(errors.ConfigError, match="too long a vault repository"):
        config.from_mapping({"vault": {"repository": "ghcr.io/" + "v" * 180}, "watches": [deep]})


def test_vault_false_opts_a_watch_out_and_no_vault_vaults_nothing() -> None:
    settings = config.from_mapping(
        {
            "vault": {"repository": "registry.example:5000/vault"},
            "watches": ["ghcr.io/a/b", {"repository": "ghcr.io/c/d", "vault": False}],
        }
    )
    assert settings.vaulted() == {"ghcr.io/a/b"}
    assert config.from_mapping({"watches": ["ghcr.io/a/b"]}).vaulted() == frozenset()
