"""HTTPS registries with a private CA, and one requiring a client certificate (mTLS): real
``docker-registry`` servers with certificates from a CA made in the test.

The CA is trusted per registry (``ca_file``, docker's ``certs.d``, guard's ``--ca-file``), added
to the default trust rather than replacing it; without it the check is a TLS error, never a
change.
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest

from tests.support import cli, images
from tests.support import registry as support_registry
from tests.support import tls as support_tls
from watchdog import config, errors
from watchdog.registry import client, transport

REPO = "team/app"
TAG = "1.0.0"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> support_tls.PrivateCA:
    return support_tls.PrivateCA(tmp_path_factory.mktemp("private-ca"))


def _serve(
    tmp_path_factory: pytest.TempPathFactory, ca: support_tls.PrivateCA, *, mtls: bool
) -> Iterator[tuple[support_registry.RegistryServer, str]]:
    binary = support_registry.find_binary()
    if binary is None:
        pytest.skip("the docker-registry binary (CNCF distribution) is not installed")
    workdir = tmp_path_factory.mktemp("registry-mtls" if mtls else "registry-tls")
    server = support_registry.RegistryServer(
        workdir, binary=binary, tls=ca, require_client_cert=mtls
    )
    server.start()
    try:
        with images.Pusher(server.url, verify=server.ssl_context()) as pusher:
            digest = pusher.image(REPO, TAG).digest
        yield server, digest
    finally:
        server.close()


@pytest.fixture(scope="module")
def tls_registry(
    tmp_path_factory: pytest.TempPathFactory, ca: support_tls.PrivateCA
) -> Iterator[tuple[support_registry.RegistryServer, str]]:
    """An HTTPS registry (certificate from ``ca``) holding team/app:1.0.0, and its digest."""
    yield from _serve(tmp_path_factory, ca, mtls=False)


@pytest.fixture(scope="module")
def mtls_registry(
    tmp_path_factory: pytest.TempPathFactory, ca: support_tls.PrivateCA
) -> Iterator[tuple[support_registry.RegistryServer, str]]:
    """Like ``tls_registry``, but refusing clients without a certificate from ``ca``."""
    yield from _serve(tmp_path_factory, ca, mtls=True)


def _settings(server: support_registry.RegistryServer, **values: object) -> config.Settings:
    entry = {"host": server.host, "timeout": "5s", **values}
    return config.from_mapping({"registries": [entry], "certs_dir": "/nonexistent"}, env={})


async def _head(settings: config.RegistrySettings) -> str:
    async with client.RegistryClient(settings) as rc:
        return (await rc.head_manifest(REPO, TAG)).digest


async def test_without_the_ca_the_check_is_a_tls_error(
    tls_registry: tuple[support_registry.RegistryServer, str],
) -> None:
    server, _ = tls_registry
    settings = _settings(server, insecure=False).registry(server.host)
    with pytest.raises(errors.RegistryUnavailable) as info:
        await _head(settings)
    message = str(info.value)
    assert "TLS handshake failed" in message and "certificate verify failed" in message
    assert "trust it with ca_file or certs.d" in message
    assert server.host in message


async def test_ca_file_is_added_to_the_default_trust(
    tls_registry: tuple[support_registry.RegistryServer, str],
    ca: support_tls.PrivateCA,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the default trust is certifi's bundle (SSL_CERT_FILE would replace it, as before)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    server, digest = tls_registry
    # no `insecure:` given: a loopback host with a ca_file speaks HTTPS
    settings = _settings(server, ca_file=str(ca.ca_file)).registry(server.host)
    assert settings.scheme == "https"
    assert await _head(settings) == digest
    # the public roots are all still there, next to the private CA
    context = transport.ssl_context(settings)
    public = ssl.create_default_context(cafile=certifi.where())
    subjects = {c["subject"] for c in context.get_ca_certs()}
    assert {c["subject"] for c in public.get_ca_certs()} <= subjects
    assert len(public.get_ca_certs()) > 50
    assert context.cert_store_stats()["x509_ca"] == public.cert_store_stats()["x509_ca"] + 1
    private = ((("commonName", "tag-watchdog test CA"),),)
    assert private in subjects


async def test_docker_certs_d_gives_the_ca_and_the_client_pair(
    tmp_path: Path,
    tls_registry: tuple[support_registry.RegistryServer, str],
    mtls_registry: tuple[support_registry.RegistryServer, str],
    ca: support_tls.PrivateCA,
) -> None:
    certs_d = tmp_path / "certs.d"
    tls_server, tls_digest = tls_registry
    mtls_server, mtls_digest = mtls_registry
    # docker's names: ca.crt (any *.crt), client.cert + client.key
    (certs_d / tls_server.host).mkdir(parents=True)
    shutil.copy(ca.ca_file, certs_d / tls_server.host / "ca.crt")
    pair = ca.client("watchdog-client")
    (certs_d / mtls_server.host).mkdir(parents=True)
    shutil.copy(ca.ca_file, certs_d / mtls_server.host / "corp-root.crt")
    shutil.copy(pair.cert, certs_d / mtls_server.host / "client.cert")
    shutil.copy(pair.key, certs_d / mtls_server.host / "client.key")
    # WATCHDOG_CERTS_DIR, and hosts with no registries: entry at all (the defaults for them)
    settings = config.from_mapping({}, env={"WATCHDOG_CERTS_DIR": str(certs_d)})
    tls_settings = settings.registry(tls_server.host)
    assert tls_settings.scheme == "https"  # a certs.d entry on loopback: HTTPS
    assert await _head(tls_settings) == tls_digest
    assert await _head(settings.registry(mtls_server.host)) == mtls_digest
    # a loopback host without an entry keeps plain HTTP
    assert settings.registry("127.0.0.1:1").scheme == "http"


async def test_mtls_is_refused_without_a_client_certificate_and_works_with_one(
    mtls_registry: tuple[support_registry.RegistryServer, str], ca: support_tls.PrivateCA
) -> None:
    server, digest = mtls_registry
    without = _settings(server, ca_file=str(ca.ca_file)).registry(server.host)
    with pytest.raises(errors.RegistryUnavailable) as info:
        await _head(without)
    message = str(info.value)
    assert server.host in message and "TLS" in message
    assert "wants one: client_cert" in message
    pair = ca.client("watchdog")
    with_cert = _settings(
        server, ca_file=str(ca.ca_file), client_cert=str(pair.cert), client_key=str(pair.key)
    ).registry(server.host)
    assert await _head(with_cert) == digest


def test_guard_without_a_config_reaches_tls_and_mtls_registries_with_flags(
    tmp_path: Path,
    tls_registry: tuple[support_registry.RegistryServer, str],
    mtls_registry: tuple[support_registry.RegistryServer, str],
    ca: support_tls.PrivateCA,
) -> None:
    env = {"WATCHDOG_CERTS_DIR": str(tmp_path / "none")}
    tls_server, tls_digest = tls_registry
    ref = f"{tls_server.host}/{REPO}:{TAG}"
    # --tls without the CA: the registry cannot be trusted, so the guard cannot tell: exit 3
    refused = cli.run("guard", ref, "--tls", env=env)
    assert refused.returncode == 3, refused.stderr
    assert (
        "TLS handshake failed" in refused.stderr and "certificate verify failed" in refused.stderr
    )
    assert "Traceback" not in refused.stderr
    # with the CA: the tag exists, exit 1 (a CA file implies HTTPS on loopback)
    found = cli.run("guard", ref, "--ca-file", str(ca.ca_file), "--json", env=env)
    assert found.returncode == 1, found.stderr
    assert tls_digest in found.stdout
    mtls_server, mtls_digest = mtls_registry
    pair = ca.client("guard")
    flags = ["--ca-file", str(ca.ca_file), "--client-cert", str(pair.cert)]
    mtls = cli.run(
        "guard", f"{mtls_server.host}/{REPO}:{TAG}", *flags, "--client-key", str(pair.key), env=env
    )
    assert mtls.returncode == 1, mtls.stderr
    assert mtls_digest in mtls.stdout


def test_guard_flags_are_checked_like_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from watchdog import cli as watchdog_cli

    monkeypatch.delenv("WATCHDOG_CONFIG", raising=False)
    monkeypatch.setenv("WATCHDOG_CERTS_DIR", str(tmp_path / "none"))
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello\n")
    missing = tmp_path / "missing.crt"
    argv = ["guard", "127.0.0.1:1/team/app:1.0.0", "--ca-file", str(not_pem)]
    assert watchdog_cli.main([*argv, "--client-cert", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"--ca-file: cannot use {not_pem} as a CA bundle" in err
    assert f"--client-cert: cannot read {missing}" in err
    assert "--client-key: is required with client_cert" in err
    # plain HTTP and a CA contradict each other
    pem = tmp_path / "good.pem"
    pem.write_bytes(support_tls.PrivateCA(tmp_path / "ca").ca_file.read_bytes())
    assert watchdog_cli.main(["guard", argv[1], "--ca-file", str(pem), "--plain-http"]) == 2
    assert "--tls/--plain-http: is true (plain HTTP)" in capsys.readouterr().err


def test_guard_help_names_the_tls_flags() -> None:
    import contextlib
    import io

    from watchdog import cli as watchdog_cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        watchdog_cli.build_parser().parse_args(["guard", "--help"])
    text = out.getvalue()
    for flag in ("--ca-file", "--client-cert", "--client-key", "--tls", "--plain-http"):
        assert flag in text
    assert "certs.d" in text
