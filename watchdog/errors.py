"""The one exception tree of tag-watchdog.

::

    WatchdogError                     base; ``temporary`` says whether retrying later may help
    ├── UsageError                    bad command-line input (exit 2)
    ├── ConfigError                   invalid configuration; carries every problem found (exit 2)
    ├── InvalidReference              a malformed image reference or digest (exit 2)
    ├── RegistryError                 anything that went wrong talking to a registry (exit 3)
    │   ├── RegistryUnavailable       connection refused/reset, DNS, TLS, timeout, 5xx   [temporary]
    │   ├── RateLimited               429; ``retry_after`` seconds when the registry said [temporary]
    │   ├── AuthError                 401/403, or no usable credentials                   [permanent]
    │   ├── NotFound                  a definitive 404 with a registry error code         [permanent]
    │   └── ProtocolError             the registry answered nonsense or lied (bad digest,
    │                                 malformed JSON, oversized body)                      [permanent]
    ├── AlertError                    an alert channel (Slack) refused or could not be reached (exit 3);
    │                                 ``temporary`` for 429/5xx/connection errors, with
    │                                 ``retry_after`` seconds when the channel said
    └── StoreError                    the database (exit 3)
        ├── DatabaseUnavailable       cannot connect / connection lost                   [temporary]
        ├── SchemaMismatch            the schema is older or newer than this release      [permanent]
        └── AlreadyRunning            another daemon holds the store                      [permanent]

Adapters (httpx, SQLAlchemy, slack-sdk) translate their exceptions into this tree once, at the
edge, with ``raise ... from exc``. Messages never contain secrets and bodies are truncated; only
``cli`` and ``daemon`` turn these into text for a person.
"""

from __future__ import annotations

MAX_BODY_IN_MESSAGE = 200


def truncate(text: str, limit: int = MAX_BODY_IN_MESSAGE) -> str:
    """Return ``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class WatchdogError(Exception):
    """Base of every error tag-watchdog raises on purpose."""

    temporary: bool = False
    exit_code: int = 3

    def __init__(self, message: str, *, temporary: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if temporary is not None:
            self.temporary = temporary

    def __str__(self) -> str:
        return self.message


class UsageError(WatchdogError):
    exit_code = 2


class ConfigError(WatchdogError):
    """Invalid configuration. ``problems`` lists every problem, each naming its key."""

    exit_code = 2

    def __init__(self, problems: list[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = f"{where}invalid configuration: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{where}invalid configuration ({len(self.problems)} problems):\n{lines}"
        super().__init__(message)


class InvalidReference(WatchdogError):
    """A malformed image reference, repository name, tag or digest."""

    exit_code = 2


class RegistryError(WatchdogError):
    """A registry could not answer the question asked."""

    def __init__(
        self,
        message: str,
        *,
        registry: str = "",
        status: int | None = None,
        temporary: bool | None = None,
    ) -> None:
        super().__init__(message, temporary=temporary)
        self.registry = registry
        self.status = status


class RegistryUnavailable(RegistryError):
    temporary = True


class RateLimited(RegistryError):
    temporary = True

    def __init__(
        self, message: str, *, registry: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message, registry=registry, status=429)
        self.retry_after = retry_after


class AuthError(RegistryError):
    temporary = False


class NotFound(RegistryError):
    """A definitive answer: the registry says the manifest/repository does not exist."""

    temporary = False

    def __init__(self, message: str, *, registry: str = "", code: str = "") -> None:
        super().__init__(message, registry=registry, status=404)
        self.code = code


class ProtocolError(RegistryError):
    temporary = False


class AlertError(WatchdogError):
    """An alert could not be delivered. Messages never contain the webhook URL or token."""

    def __init__(
        self,
        message: str,
        *,
        channel: str = "",
        status: int | None = None,
        temporary: bool = False,
        retry_after: float | None = None,
        needed_scope: str | None = None,
    ) -> None:
        super().__init__(message, temporary=temporary)
        self.channel = channel
        self.status = status
        self.retry_after = retry_after
        self.needed_scope = needed_scope  # Slack's ``missing_scope``: the scope it asked for


class StoreError(WatchdogError):
    pass


class DatabaseUnavailable(StoreError):
    temporary = True


class SchemaMismatch(StoreError):
    pass


class AlreadyRunning(StoreError):
    pass
