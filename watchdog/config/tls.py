"""The TLS material of a registry: its own CA files and client certificate, from the config
(``ca_file``, ``client_cert``, ``client_key``) and from docker's ``certs.d/<host[:port]>/`` layout.

Checking here means loading the files exactly as the registry transport will (into an
:class:`ssl.SSLContext`), so that what ``config check`` accepts is what a connection gets. The
messages name the file (a path is not a secret) and never echo its content.
"""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

# docker's default; WATCHDOG_CERTS_DIR or the top-level ``certs_dir`` key point elsewhere
DEFAULT_CERTS_DIR = "/etc/docker/certs.d"


@dataclasses.dataclass(frozen=True)
class Material:
    """The files one registry's HTTPS connections use on top of the default trust."""

    ca_files: tuple[str, ...] = ()
    client_cert: str | None = None
    client_key: str | None = None

    def __bool__(self) -> bool:
        return bool(self.ca_files or self.client_cert)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, ssl.SSLError):
        return getattr(exc, "reason", None) or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def ca_problem(path: str) -> str | None:
    """None when ``path`` is a readable PEM bundle of at least one certificate, else why not."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        Path(path).read_bytes()  # a directory or an unreadable file, worded as such
        context.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot use {path} as a CA bundle: {_reason(exc)} (expected PEM certificates)"
    if not context.get_ca_certs():
        return f"cannot use {path} as a CA bundle: it holds no CA certificate"
    return None


def no_passphrase() -> bytes:
    """The ``password`` callback for ``load_cert_chain``: refuses an encrypted key."""
    # OpenSSL would otherwise ask for the passphrase on the terminal: a daemon must not hang
    raise ValueError("encrypted")


def pair_problem(cert: str, key: str) -> str | None:
    """None when ``cert`` (PEM, with its chain) and ``key`` (PEM, unencrypted) load as one client
    identity, else why not."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for path in (cert, key):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            return f"cannot read {path}: {_reason(exc)}"
    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ValueError:
        return f"the client key {key} is encrypted: give it without a passphrase"
    except ssl.SSLError as exc:
        return (
            f"cannot use {cert} with {key} as a client certificate: {_reason(exc)} "
            "(expected a PEM certificate and the PEM private key that belongs to it)"
        )
    return None


def readable(path: str) -> bool:
    """True when ``path`` is a file this process can read."""
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False


def host_dir(certs_dir: str | None, host: str) -> Path | None:
    """``certs_dir/<host[:port]>`` when it is a directory, else None."""
    if not certs_dir:
        return None
    path = Path(certs_dir) / host
    return path if path.is_dir() else None


def certs_d(certs_dir: str | None, host: str) -> tuple[Material, list[str]]:
    """What docker's layout holds for ``host`` (``*.crt``: CAs; ``<name>.cert`` with
    ``<name>.key``: the client pair, the first by name when there are several) and the problems
    of that directory (a certificate without its key, a key without its certificate, files
    that do not load). Nothing and no problems when the directory does not exist."""
    directory = host_dir(certs_dir, host)
    if directory is None:
        return Material(), []
    problems: list[str] = []
    try:
        names = sorted(p.name for p in directory.iterdir() if not p.is_dir())
    except OSError as exc:
        return Material(), [f"cannot read {directory}: {_reason(exc)}"]
    cas = [str(directory / n) for n in names if n.endswith(".crt")]
    for ca in cas:
        problem = ca_problem(ca)
        if problem:
            problems.append(problem)
    certs = {n.removesuffix(".cert") for n in names if n.endswith(".cert")}
    keys = {n.removesuffix(".key") for n in names if n.endswith(".key")}
    problems += [
        f"{directory / (n + '.cert')} has no key {n}.key beside it" for n in sorted(certs - keys)
    ]
    problems += [
        f"{directory / (n + '.key')} has no certificate {n}.cert beside it"
        for n in sorted(keys - certs)
    ]
    pairs = sorted(certs & keys)
    cert = key = None
    if pairs:
        cert, key = str(directory / (pairs[0] + ".cert")), str(directory / (pairs[0] + ".key"))
        problem = pair_problem(cert, key)
        if problem:
            problems.append(problem)
    return Material(tuple(cas), cert, key), problems
