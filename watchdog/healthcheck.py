"""``tag-watchdog health``: the container's health probe, following the daemon's listen address.

It reads the configuration the daemon reads (the same file and the same ``WATCHDOG_*``
environment, so ``WATCHDOG_HTTP_LISTEN`` counts) and asks ``GET /healthz`` at ``http.listen``; a
wildcard address (``0.0.0.0``, ``::``) is asked on the loopback of its family. The file is, in
this order: ``-c`` given to ``health``; the ``-c`` of the container's daemon (PID 1 running
``tag-watchdog run -c FILE``: a Docker health check cannot see the command's arguments);
``WATCHDOG_CONFIG``; none (the defaults: 127.0.0.1:9797).

Exit status as Docker's HEALTHCHECK wants it: 0 healthy, 1 anything else (the reason on stderr,
which Docker keeps in the container's health log).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from watchdog import config, errors, logs

HEALTHY, UNHEALTHY = 0, 1
# a wildcard listen address is asked on its family's loopback (nothing binds here)
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


def daemon_config(cmdline: Sequence[str]) -> str | None:
    """The ``-c``/``--config`` of ``cmdline`` when it is a ``tag-watchdog run`` (the console
    script, as its shebang runs it: ``python .../tag-watchdog run``; or ``python -m watchdog
    run``), else None."""
    args = list(cmdline)
    if args and Path(args[0]).name.startswith("python"):
        args = args[1:]
        while args and args[0].startswith("-") and args[0] != "-m":
            args = args[1:]  # the interpreter's own flags (-u, -X dev...)
        if args[:2] == ["-m", "watchdog"]:
            args = args[1:]
    if not args or not (args[0] == "watchdog" or Path(args[0]).name.startswith("tag-watchdog")):
        return None
    args = args[1:]
    if "run" not in args:
        return None
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    return None


def _pid1_cmdline(proc: Path) -> list[str]:
    try:
        raw = (proc / "1" / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def config_path(
    explicit: str | None, environ: Mapping[str, str], proc: Path = Path("/proc")
) -> str | None:
    """Which configuration file the probe reads (the module docstring's order)."""
    return explicit or daemon_config(_pid1_cmdline(proc)) or environ.get("WATCHDOG_CONFIG") or None


def probe_url(http: config.HttpSettings) -> str:
    """``/healthz`` at the listen address, a wildcard address replaced by its loopback."""
    host = _WILDCARDS.get(http.host, http.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{http.port}/healthz"


def check(url: str, timeout: float) -> str | None:
    """None when ``url`` answers 200, else why not (one line)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http only)
            if resp.status == 200:
                return None
            return f"{url} answered {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url} did not answer: {reason}"


def main(explicit: str | None, *, timeout: float = 4.0) -> int:
    """Probe the daemon once; the exit status (0 healthy, 1 not), one line on stdout or stderr."""
    path = config_path(explicit, os.environ)
    try:
        settings = config.load(path)
    except errors.WatchdogError as exc:
        logs.say(f"tag-watchdog health: unhealthy: configuration: {exc}", event="unhealthy")
        return UNHEALTHY
    url = probe_url(settings.http)
    problem = check(url, timeout)
    if problem is not None:
        logs.say(f"tag-watchdog health: unhealthy: {problem}", event="unhealthy")
        return UNHEALTHY
    print(f"tag-watchdog health: healthy ({url})")
    return HEALTHY
