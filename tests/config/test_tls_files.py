"""A registry's TLS files (``ca_file``, ``client_cert``, ``client_key``, docker's certs.d) are
checked when the config is loaded: every bad one is a problem reported with the others."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support import cli
from tests.support import tls as support_tls
from watchdog import config, errors


@pytest.fixture
def ca(tmp_path: Path) -> support_tls.PrivateCA:
    return support_tls.PrivateCA(tmp_path / "ca")


def _problems(text: str, path: Path, env: dict[str, str] | None = None) -> list[str]:
    path.write_text(text)
    with pytest.raises(errors.ConfigError) as info:
        config.load(path, env or {})
    return info.value.problems


def test_every_bad_file_is_a_problem_naming_key_line_and_path(
    tmp_path: Path, ca: support_tls.PrivateCA
) -> None:
    client = ca.client()
    other = support_tls.PrivateCA(tmp_path / "other").client()
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(client.key.read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    text = f"""\
certs_dir: /nonexistent
registries:
  - host: a.example
    ca_file: {tmp_path / "missing.pem"}
  - host: b.example
    ca_file: {not_pem}
  - host: c.example
    ca_file: {tmp_path}
  - host: d.example
    client_cert: {client.cert}
  - host: e.example
    client_key: {client.key}
  - host: f.example
    client_cert: {client.cert}
    client_key: {other.key}
  - host: g.example
    client_cert: {client.cert}
    client_key: {encrypted}
  - host: h.example
    client_cert: {client.cert}
    client_key: {tmp_path / "nokey.pem"}
  - host: localhost:5000
    insecure: true
    ca_file: {ca.ca_file}
watches: [a.example/x]
"""
    problems = _problems(text, tmp_path / "c.yaml")
    assert problems == [
        f"registries[0].ca_file (line 4): cannot use {tmp_path / 'missing.pem'} as a CA bundle: "
        "no such file (expected PEM certificates)",
        f"registries[1].ca_file (line 6): cannot use {not_pem} as a CA bundle: "
        "NO_CERTIFICATE_OR_CRL_FOUND (expected PEM certificates)",
        f"registries[2].ca_file (line 8): cannot use {tmp_path} as a CA bundle: "
        "is a directory, not a file (expected PEM certificates)",
        "registries[3].client_key (line 9): is required with client_cert "
        "(the certificate's private key)",
        "registries[4].client_cert (line 11): is required with client_key",
        f"registries[5].client_cert (line 14): cannot use {client.cert} with {other.key} as a "
        "client certificate: KEY_VALUES_MISMATCH (expected a PEM certificate and the PEM "
        "private key that belongs to it)",
        f"registries[6].client_cert (line 17): the client key {encrypted} is encrypted: "
        "give it without a passphrase",
        f"registries[7].client_key (line 21): cannot read {tmp_path / 'nokey.pem'}: "
        "No such file or directory",
        "registries[8].insecure (line 23): is true (plain HTTP), but ca_file/client_cert are "
        "for HTTPS",
    ]
    # a path is no secret: it is named; the files' content never is
    assert not any("BEGIN" in p for p in problems)


def test_a_broken_certs_d_entry_is_a_problem_of_certs_dir(
    tmp_path: Path, ca: support_tls.PrivateCA
) -> None:
    certs_d = tmp_path / "certs.d"
    host = certs_d / "registry.example:5443"
    host.mkdir(parents=True)
    (host / "ca.crt").write_text("garbage\n")
    shutil.copy(ca.client().cert, host / "client.cert")  # and no client.key
    shutil.copy(ca.client("lonely").key, host / "lonely.key")  # and no lonely.cert
    problems = _problems(
        "watches: [registry.example:5443/team/app]\n",
        tmp_path / "c.yaml",
        {"WATCHDOG_CERTS_DIR": str(certs_d)},
    )
    assert problems == [
        f"certs_dir (from WATCHDOG_CERTS_DIR): cannot use {host / 'ca.crt'} as a CA bundle: "
        "NO_CERTIFICATE_OR_CRL_FOUND (expected PEM certificates)",
        f"certs_dir (from WATCHDOG_CERTS_DIR): {host / 'client.cert'} has no key client.key "
        "beside it",
        f"certs_dir (from WATCHDOG_CERTS_DIR): {host / 'lonely.key'} has no certificate "
        "lonely.cert beside it",
    ]


def test_good_files_load_and_print_back(tmp_path: Path, ca: support_tls.PrivateCA) -> None:
    client = ca.client()
    path = tmp_path / "c.yaml"
    path.write_text(
        f"""\
certs_dir: {tmp_path / "certs.d"}
registries:
  - host: registry.example
    ca_file: {ca.ca_file}
    client_cert: {client.cert}
    client_key: {client.key}
watches: [registry.example/team/app]
"""
    )
    settings = config.load(path, {})
    reg = settings.registry("registry.example")
    assert (reg.ca_file, reg.client_cert, reg.client_key) == (
        str(ca.ca_file),
        str(client.cert),
        str(client.key),
    )
    printed = config.to_yaml(settings)
    assert f"ca_file: {ca.ca_file}" in printed and f"client_key: {client.key}" in printed
    assert f"certs_dir: {tmp_path / 'certs.d'}" in printed
    path.write_text(printed)
    assert config.load(path, {}) == settings  # the printout loads back to the same settings


def test_config_check_exits_2_with_every_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"""\
registries:
  - host: registry.example
    ca_file: {tmp_path / "missing.pem"}
    client_cert: {tmp_path / "missing.crt"}
watches: [registry.example/team/app]
interval: 0s
"""
    )
    result = cli.run("config", "check", "-c", str(path), env={"WATCHDOG_CERTS_DIR": "/none"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "invalid configuration (4 problems)" in result.stderr
    assert f"cannot use {tmp_path / 'missing.pem'} as a CA bundle" in result.stderr
    assert f"cannot read {tmp_path / 'missing.crt'}" in result.stderr
    assert "client_key (line 2): is required with client_cert" in result.stderr
    assert "interval (line 6): must be at least 1s" in result.stderr


def test_command_line_flags_go_over_every_registry_entry(ca: support_tls.PrivateCA) -> None:
    settings = config.from_mapping(
        {
            "certs_dir": "/nonexistent",
            "registries": [{"host": "localhost:5000", "insecure": True, "timeout": "3s"}],
        },
        env={},
    )
    assert settings.registry("localhost:5000").scheme == "http"
    flagged = settings.with_registry_flags({"insecure": False, "ca_file": None})
    entry = flagged.registry("localhost:5000")
    assert (entry.scheme, entry.timeout) == ("https", 3.0)  # the rest of the entry still holds
    assert flagged.registry("127.0.0.1:1").scheme == "https"  # and hosts without one
    assert settings.registry("127.0.0.1:1").scheme == "http"  # the original is unchanged
    # a CA given on the command line: HTTPS, unless the entry insists on plain HTTP
    with_ca = settings.with_registry_flags({"ca_file": str(ca.ca_file)})
    assert with_ca.registry("127.0.0.1:1").ca_file == str(ca.ca_file)
    with pytest.raises(errors.ConfigError) as info:
        with_ca.registry("localhost:5000")
    assert info.value.problems == [
        "registries: localhost:5000: insecure: is true (plain HTTP), but ca_file/client_cert "
        "are for HTTPS"
    ]
