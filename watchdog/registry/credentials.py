"""Who we are to a registry: credentials from the settings, docker ``config.json`` and
docker credential helpers.

Blocking (a helper is a subprocess): the client calls :func:`resolve_credentials` in a thread,
once per registry identity, and only when the registry asks for credentials.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from watchdog import config, errors, models

# The key docker login writes for Docker Hub, and what its credential helpers expect.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
HELPER_TIMEOUT = 10.0
# docker-credential-* helpers answer this (on stdout, exit 1) when they hold nothing for a host.
_HELPER_NOT_FOUND = "credentials not found"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Who we are to one registry. ``repr`` never shows the secrets."""

    username: str | None = None
    password: config.Secret | None = None
    # An OAuth2 refresh token ("identitytoken" in config.json): exchanged at the realm by POST.
    identity_token: config.Secret | None = None
    source: str = "settings"  # where they came from, for messages: settings, config.json, helper

    @property
    def identity(self) -> str:
        """A non-secret name for the cache key and for messages."""
        if self.username:
            return self.username
        return "<identity token>" if self.identity_token else "<anonymous>"

    def basic_header(self) -> str | None:
        """``Basic base64(user:password)`` or None without a username and password."""
        if self.username is None or not self.password:
            return None
        raw = f"{self.username}:{self.password.reveal()}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def secrets(self) -> list[str]:
        """Every secret string these credentials could put on the wire (for redaction)."""
        out: list[str] = []
        if self.password:
            out.append(self.password.reveal())
        if self.identity_token:
            out.append(self.identity_token.reveal())
        header = self.basic_header()
        if header:
            out.append(header.split(" ", 1)[1])
        return out

    def __repr__(self) -> str:
        return f"Credentials(identity={self.identity!r}, source={self.source!r})"

    __str__ = __repr__


def docker_config_path(env: Mapping[str, str]) -> Path | None:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (None without a home)."""
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    home = env.get("HOME")
    if not home:
        return None
    return Path(home) / ".docker" / "config.json"


def _config_key_host(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://host:5000/x`` -> ``host:5000``."""
    rest = key.split("://", 1)[1] if "://" in key else key
    return models.normalize_host(rest.split("/", 1)[0])


def _helper_server_url(host: str) -> str:
    return DOCKER_HUB_CONFIG_KEY if models.normalize_host(host) == models.DOCKER_HUB else host


def load_docker_config(env: Mapping[str, str], path: Path | None = None) -> dict[str, Any] | None:
    """The parsed docker ``config.json`` (``path``, else found from ``env``), or None without one.

    A file that exists but cannot be read or parsed raises AuthError: silently pulling
    anonymously would turn a broken login into a confusing 401 later.
    """
    if path is None:
        path = docker_config_path(env)
    if path is None or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.AuthError(f"cannot read docker config {path}: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise errors.AuthError(f"docker config {path} is not a JSON object")
    return value


def _from_auths(cfg: Mapping[str, Any], host: str) -> Credentials | None:
    auths = cfg.get("auths")
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if not isinstance(entry, dict) or _config_key_host(str(key)) != host:
            continue
        username = entry.get("username")
        password = entry.get("password")
        auth = entry.get("auth")
        if isinstance(auth, str) and auth:
            try:
                decoded = base64.b64decode(auth, validate=False).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise errors.AuthError(
                    f"docker config: the 'auth' entry for {host} is not base64 of user:password"
                ) from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise errors.AuthError(
                    f"docker config: the 'auth' entry for {host} is not base64 of user:password"
                )
        token = entry.get("identitytoken")
        identity = config.Secret(token) if isinstance(token, str) and token else None
        if isinstance(username, str) and username and isinstance(password, str):
            return Credentials(username, config.Secret(password), identity, "config.json")
        if identity:
            return Credentials(
                username if isinstance(username, str) and username else None,
                None,
                identity,
                "config.json",
            )
    return None


def _run_helper(
    argv: list[str], stdin: bytes, env: Mapping[str, str], timeout: float
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in a session of its own; its exit code, stdout and stderr.

    On timeout the whole process group is killed, not only the helper: a helper waiting on a
    child of its own (a keyring prompt, ``sleep``) would otherwise leave that child behind,
    and that child holding our pipes open would keep ``communicate`` waiting as well.
    Raises TimeoutExpired then.
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        start_new_session=True,  # its own process group, led by the helper
    )
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout)
    except BaseException:  # the timeout, or an interrupt while waiting
        _kill_group(proc)
        raise
    return proc.returncode, stdout, stderr


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process of ``proc``'s group (the helper's session) and reap the helper."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=5)  # the pipes close with the group's last process
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def run_credential_helper(
    name: str, host: str, env: Mapping[str, str], timeout: float = HELPER_TIMEOUT
) -> Credentials | None:
    """Ask ``docker-credential-<name> get`` for ``host``; None when it holds nothing for it.

    Runs the helper without a shell (the name comes from a file the user controls, but it is
    never interpreted by one) and with a timeout, so that a helper waiting for a desktop
    keyring prompt cannot hang a poll forever.
    """
    program = f"docker-credential-{name}"
    if not name or "/" in name or os.sep in name:
        raise errors.AuthError(f"docker config names an invalid credential helper {name!r}")
    path = shutil.which(program, path=env.get("PATH"))
    if path is None:
        raise errors.AuthError(f"credential helper {program} is not on PATH")
    try:
        returncode, stdout, stderr = _run_helper(
            [path, "get"], _helper_server_url(host).encode(), env, timeout
        )
    except subprocess.TimeoutExpired:
        raise errors.AuthError(
            f"credential helper {program} timed out after {timeout:g}s"
        ) from None
    except OSError as exc:
        raise errors.AuthError(f"cannot run credential helper {program}: {exc.strerror}") from None
    proc = subprocess.CompletedProcess([path, "get"], returncode, stdout, stderr)
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        if _HELPER_NOT_FOUND in out.lower():
            return None
        # stderr of a helper is its own error text; it does not echo the secret it failed to get
        detail = errors.truncate(proc.stderr.decode("utf-8", "replace") or out, 120)
        raise errors.AuthError(
            f"credential helper {program} failed for {host} (exit {proc.returncode}): {detail}"
        )
    try:
        value = json.loads(out)
    except json.JSONDecodeError:
        raise errors.AuthError(f"credential helper {program} did not answer JSON") from None
    if not isinstance(value, dict):
        raise errors.AuthError(f"credential helper {program} did not answer a JSON object")
    username = value.get("Username")
    secret = value.get("Secret")
    if not isinstance(secret, str) or not secret:
        return None
    source = f"helper {program}"
    if username == "<token>":
        # Docker's convention: the secret is an identity (refresh) token, not a password.
        return Credentials(None, None, config.Secret(secret), source)
    if not isinstance(username, str) or not username:
        raise errors.AuthError(f"credential helper {program} answered no Username for {host}")
    return Credentials(username, config.Secret(secret), None, source)


def resolve_credentials(
    settings: config.RegistrySettings,
    env: Mapping[str, str] | None = None,
    *,
    config_path: Path | None = None,
) -> Credentials | None:
    """The credentials to use for ``settings.host``, or None to go anonymous.

    Order: username/password from the settings; then (only when ``use_docker_config``) the
    docker config: ``credHelpers[host]`` (a helper named for this host is the most specific
    thing the user said), inline ``auths`` entries (``auth`` or ``username``/``password``,
    ``identitytoken``), and last the global ``credsStore``. ``config_path`` overrides where
    ``config.json`` is looked for. Blocking (may run a helper).
    """
    if settings.username:
        return Credentials(settings.username, settings.password, None, "settings")
    if not settings.use_docker_config:
        return None
    env = dict(os.environ if env is None else env)
    cfg = load_docker_config(env, config_path)
    if cfg is None:
        return None
    host = models.normalize_host(settings.host)
    helpers = cfg.get("credHelpers")
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if isinstance(name, str) and _config_key_host(str(key)) == host:
                return run_credential_helper(name, host, env)
    inline = _from_auths(cfg, host)
    if inline is not None:
        return inline
    store = cfg.get("credsStore")
    if isinstance(store, str) and store:
        return run_credential_helper(store, host, env)
    return None
