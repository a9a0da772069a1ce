"""The settings, declared once: each key with its type, default and rules. docs/CONFIG.md is the
reference for users; a test checks that every key here is in it."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar

import pydantic

from watchdog import errors, models
from watchdog.config import fields, tls

DEFAULT_DATABASE_URL = "sqlite:///watchdog.db"
DEFAULT_CHECK_TIMEOUT = 300.0
# release-like: 1.2.3, v1.2.3, 1.2.3-rc.1, 1.2.3-build.5 ; not latest, main, sha-abc, sha256-...
# (no "+build" form: "+" is not in the OCI tag grammar, so no registry can hold such a tag)
DEFAULT_INCLUDE = (r"^v?[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?$",)
ON_MOVE = ("alert", "restore")
# Slack user ids: U... (or W... on Enterprise Grid), upper-case letters and digits.
SLACK_USER_RE = re.compile(r"^[UW][A-Z0-9]{2,30}$")
_DATABASE_RE = re.compile(r"^(sqlite|postgresql)(\+\w+)?://")
_LISTEN_RE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def _host(value: str) -> str:
    host = value.strip().rstrip("/")
    if not host:
        raise fields.problem("is required")
    if "://" in host:
        raise fields.problem(f"give host[:port] without a scheme, got {host!r}")
    return models.normalize_host(host)


def _repository(value: Any) -> models.ImageRef:
    if isinstance(value, models.ImageRef):
        return value
    try:
        ref = models.ImageRef.parse(fields.as_text(value), allow_tag=False)
    except errors.InvalidReference as exc:
        raise fields.problem(str(exc)) from None
    if ref.digest:
        raise fields.problem("give a repository, not a digest reference")
    return ref


def _host_key(value: Any) -> str:
    return _host(fields.as_text(value))


def _repository_key(value: Any) -> str:
    return _repository(value).name


def _ca_file(path: str) -> str:
    problem = tls.ca_problem(path)
    if problem:
        raise fields.problem(problem)
    return path


def _readable(path: str) -> str:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise fields.problem(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    return path


def _listen_ok(listen: str) -> bool:
    match = _LISTEN_RE.fullmatch(listen)
    return match is not None and 0 < int(match.group(2)) < 65536


OptText = fields.Text | None
CaFile = Annotated[str, pydantic.BeforeValidator(fields.as_text), pydantic.AfterValidator(_ca_file)]
# the pair is checked together (problems()): a key is only wrong for its certificate
PemFile = Annotated[
    str, pydantic.BeforeValidator(fields.as_text), pydantic.AfterValidator(_readable)
]
OptSecret = fields.Secret | None
Host = Annotated[str, pydantic.BeforeValidator(fields.as_text), pydantic.AfterValidator(_host)]
Repository = Annotated[models.ImageRef, pydantic.PlainValidator(_repository)]
DatabaseUrl = Annotated[
    fields.Secret,
    fields.checked(
        lambda url: bool(_DATABASE_RE.match(url.reveal())),
        "must start with sqlite:/// or postgresql+psycopg://",
    ),
]
WebhookUrl = Annotated[
    fields.Secret,
    fields.checked(
        lambda url: url.reveal().startswith(("https://", "http://")), "must be an http(s) URL"
    ),
]
SlackUser = Annotated[
    str,
    fields.checked(
        lambda user: bool(SLACK_USER_RE.fullmatch(user)),
        "{value!r} is not a Slack user id (like U0123ABCD)",
    ),
]


class RegistrySettings(fields.Section):
    host: Host  # normalised (docker.io for Docker Hub), may include :port
    username: OptText = None
    password: OptSecret = None
    # PEM CAs trusted for this registry on top of the default ones; a client certificate (mTLS)
    ca_file: CaFile | None = None
    client_cert: PemFile | None = None
    client_key: PemFile | None = None
    # plain HTTP; loopback hosts default to True, as Docker does, unless TLS files are given
    insecure: fields.Flag = pydantic.Field(default=fields.DERIVED, validate_default=True)
    max_concurrency: Annotated[int, fields.integer(1, 256)] = 8
    timeout: fields.Duration = 10.0
    # credentials for pushes (restore), when they differ from the pull ones
    push_username: OptText = None
    push_password: OptSecret = None
    # True when the config says nothing about credentials: docker config.json / helpers are tried
    use_docker_config: fields.Flag = pydantic.Field(default=fields.DERIVED, validate_default=True)
    # docker's certs.d directory (its <host[:port]>/ entry adds CAs and a client pair); set by
    # Settings.registry() from the top-level certs_dir, None: not looked at
    certs_dir: OptText = None

    internal: ClassVar[frozenset[str]] = frozenset({"use_docker_config", "certs_dir"})

    @pydantic.field_validator("insecure", mode="before")
    @classmethod
    def _plain_http_on_loopback(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        if value is not None:
            return value
        # a CA or a client certificate for a loopback registry says it speaks HTTPS
        tls_given = any(info.data.get(k) for k in ("ca_file", "client_cert", "client_key"))
        return models.is_loopback_host(info.data.get("host", "")) and not tls_given

    @pydantic.field_validator("use_docker_config", mode="before")
    @classmethod
    def _docker_config_without_username(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        return info.data.get("username") is None if value is None else value

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.password and not self.username:
            yield "username", "is required when a password is given"
        if self.push_password and not self.push_username:
            yield "push_username", "is required when a push_password is given"
        if self.client_cert and not self.client_key:
            yield "client_key", "is required with client_cert (the certificate's private key)"
        if self.client_key and not self.client_cert:
            yield "client_cert", "is required with client_key"
        cert, key = self.client_cert, self.client_key
        # an unreadable one is that field's own problem, already reported
        if (
            isinstance(cert, str)
            and isinstance(key, str)
            and tls.readable(cert)
            and tls.readable(key)
        ):
            problem = tls.pair_problem(cert, key)
            if problem:
                yield "client_cert", problem
        if self.insecure is True and (self.ca_file or self.client_cert):
            yield "insecure", "is true (plain HTTP), but ca_file/client_cert are for HTTPS"

    def tls_material(self) -> tls.Material:
        """The CA files and client pair of this registry: the config's, then its certs.d entry
        (the config's client pair wins). Raises ConfigError for a broken certs.d entry."""
        found, problems = tls.certs_d(self.certs_dir, self.host)
        if problems:
            raise errors.ConfigError([f"certs_dir: {p}" for p in problems])
        cas = ((self.ca_file,) if self.ca_file else ()) + found.ca_files
        if self.client_cert:
            return tls.Material(cas, self.client_cert, self.client_key)
        return tls.Material(cas, found.client_cert, found.client_key)

    @property
    def scheme(self) -> str:
        return "http" if self.insecure else "https"


class TagFilter(fields.Section):
    include: fields.Patterns = DEFAULT_INCLUDE
    exclude: fields.Patterns = ()

    _inc: tuple[re.Pattern[str], ...] = pydantic.PrivateAttr(default=())
    _exc: tuple[re.Pattern[str], ...] = pydantic.PrivateAttr(default=())

    def model_post_init(self, context: Any, /) -> None:
        self._inc = tuple(re.compile(p) for p in self.include)
        self._exc = tuple(re.compile(p) for p in self.exclude)

    def matches(self, tag: str) -> bool:
        """True for a tag this watch records. Referrer fallback tags (``sha256-...``) and text
        outside the OCI tag grammar (``models.is_tag``) never match.

        The patterns are searched (``re.search``) in tags that passed the grammar first, so
        ``$`` in a pattern is as good as ``\\Z`` here: no valid tag holds a newline.
        """
        if tag.startswith("sha256-") or not models.is_tag(tag):
            return False
        return any(p.search(tag) for p in self._inc) and not any(p.search(tag) for p in self._exc)


class WatchSettings(fields.Section):
    repository: Repository  # without tag
    tags: TagFilter = TagFilter()
    on_move: Annotated[
        fields.Text,
        fields.checked(lambda v: v in ON_MOVE, "must be one of alert, restore, got {value!r}"),
    ] = "alert"
    interval: fields.Interval | None = None  # None = the global interval
    check_timeout: fields.Interval | None = None  # None = the global check_timeout
    # a confirmed deletion of a release: None = as on_move (docs/CONFIG.md, docs/DETECTION.md)
    on_delete: Annotated[
        OptText,
        fields.checked(
            lambda v: v is None or v in ON_MOVE, "must be one of alert, restore, got {value!r}"
        ),
    ] = None

    @property
    def delete_policy(self) -> str:
        """What a confirmed deletion of one of this watch's releases brings: "alert" or
        "restore" (``on_delete``, else the watch's ``on_move``)."""
        return self.on_delete or self.on_move

    @property
    def restores(self) -> bool:
        """True when the watchdog puts anything back on its own (a move or a deletion)."""
        return self.on_move == "restore" or self.delete_policy == "restore"

    vault: fields.Flag = True  # False: this watch's releases are not copied to the vault

    @classmethod
    def prepare(cls, data: Any) -> Any:
        return {"repository": data} if isinstance(data, str) else data  # `watches: [nginx]`

    @property
    def name(self) -> str:
        return self.repository.name


def _network(value: Any) -> str:
    """An address (``10.0.0.7``) or a network (``10.0.0.0/8``), written the one way uvicorn's
    proxy-header check compares (host bits of a network cleared)."""
    text = fields.as_text(value).strip()
    try:
        if "/" in text:
            return str(ipaddress.ip_network(text, strict=False))
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise fields.problem(
            f"expected an IP address or network (10.0.0.0/8), got {fields.shown(value)}"
        ) from None


Network = Annotated[str, pydantic.BeforeValidator(_network)]


class HttpSettings(fields.Section):
    listen: Annotated[
        fields.Text, fields.checked(_listen_ok, "expected host:port, got {value!r}")
    ] = "127.0.0.1:9797"
    api_token: OptSecret = None
    # Wanted (Authorization: Bearer) for /metrics, the API's reads and its openapi.json from
    # every client, loopback too. None: /metrics is open, API reads are open on loopback.
    read_token: OptSecret = None
    # reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed; none: the peer is
    # the client (docs/SECURITY.md)
    trusted_proxies: Annotated[tuple[Network, ...], fields.StrList] = ()
    # HTTP connections held at once; past it the oldest one still sending its request is closed
    # (kept well below the file-descriptor limit the checks need: see web.server)
    max_connections: Annotated[int, fields.integer(4, 65536)] = 256
    header_timeout: fields.Interval = 10.0  # a request's headers must arrive within this
    body_timeout: fields.Interval = 10.0  # ... and its body within this after them: else 408
    keep_alive: fields.Interval = 5.0  # an idle connection is closed after this

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class SlackSettings(fields.Section):
    webhook_url: WebhookUrl | None = None
    token: OptSecret = None
    channel: OptText = None
    signing_secret: OptSecret = None
    allowed_users: Annotated[tuple[SlackUser, ...], fields.StrList] = ()
    base_url: OptText = None  # Web API base (tests point it at a local stand-in)
    # one alert when no check of a registry succeeded for this long, one when it answers again
    unreachable_after: fields.Duration = 600.0
    # the outbox lease: a send whose outcome is unknown (the daemon died mid-send) goes out again
    # after this long; keep it well above a send's 10 s timeout when replicas share the outbox
    lease: fields.Interval = 60.0

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.token and not self.channel:
            yield "channel", "is required with slack.token"
        # Buttons (Restore / Accept from the alert) need all three: a bot token (to update the
        # message), the signing secret (to trust a tap) and the people allowed to tap. Half a
        # setup fails closed.
        if self.signing_secret and not self.token:
            yield "signing_secret", "needs slack.token: buttons work in bot-token mode only"
        if self.signing_secret and not self.allowed_users:
            yield (
                "allowed_users",
                "list the Slack user ids (U...) allowed to restore or accept from Slack",
            )
        if self.allowed_users and not self.signing_secret:
            yield "signing_secret", "is required with slack.allowed_users"

    @property
    def buttons(self) -> bool:
        """True when alerts carry Restore/Accept buttons: bot mode, a signing secret to verify
        the taps and an allow-list of who may tap."""
        return bool(self.token and self.channel and self.signing_secret and self.allowed_users)


class RestoreSettings(fields.Section):
    max_per_tag: Annotated[int, fields.integer(1, 1000)] = 3
    window: fields.Duration = 3600.0


class IntegritySettings(fields.Section):
    """Periodic HEADs of every release's child manifests and blobs (docs/DETECTION.md)."""

    enabled: fields.Flag = True
    # each release is checked once per interval, the releases spread evenly over it
    interval: fields.Interval = 86400.0


class IncidentSettings(fields.Section):
    """How changes (moves, deletions, broken releases) are grouped into incidents: one alert
    each, growing as changes join (docs/ALERTS.md)."""

    # false: no incidents, every change alerted on its own (as before incidents existed)
    enabled: fields.Flag = True
    # namespace: registry + first path segment (ghcr.io/deephaven); repository; registry
    group_by: Annotated[
        fields.Text,
        fields.checked(
            lambda v: v in models.GROUP_BY,
            "must be one of namespace, repository, registry, got {value!r}",
        ),
    ] = "namespace"
    # a change found within this long of the incident's last change joins it; 0s: no grouping
    window: fields.Duration = 120.0
    # the incident's first message waits this long for the rest of a burst (0s: alert at once)
    wait: fields.Duration = 0.0
    # what joins the incident later is told (a thread reply and a redraw) at most this often
    update_interval: fields.Duration = 10.0

    def grouping(self) -> models.Grouping | None:
        """These settings as the store takes them (None when incidents are off)."""
        if not self.enabled:
            return None
        return models.Grouping(
            by=self.group_by,
            window=self.window,
            wait=self.wait,
            update_interval=self.update_interval,
        )


class HookSettings(fields.Section):
    # "Authorization: Bearer <token>" on /hooks/registry and /hooks/harbor
    registry_token: OptSecret = None
    # "?token=<token>" on /hooks/dockerhub (Docker Hub cannot send headers)
    dockerhub_token: OptSecret = None


def _vault_repository(value: Any) -> models.ImageRef:
    ref = _repository(value)
    if len(ref.repository) > models.MAX_NAME_LENGTH - 64:
        raise fields.problem("leave room for the source repositories: at most 191 characters")
    return ref


class VaultSettings(fields.Section):
    """``vault:``: where complete copies of every release are kept (docs/CONFIG.md, "The vault").

    The naming scheme lives here, beside the prefix it derives from, so that the copier, restore
    and the docs agree on one rule.
    """

    # HOST[:PORT]/PREFIX: the vault repository of source HOST/a/b is PREFIX/<host>/a/b
    repository: Annotated[models.ImageRef, pydantic.PlainValidator(_vault_repository)]
    max_concurrency: Annotated[int, fields.integer(1, 64)] = 4  # copies at once per registry
    scan_timeout: fields.Interval = 600.0  # how long `scan` waits for its copies at the end
    retry_for: fields.Interval = 86400.0  # a copy that keeps failing temporarily: then `failed`

    @property
    def host(self) -> str:
        return self.repository.host

    def repository_for(self, source: models.ImageRef) -> str:
        """The vault repository (a path on the vault's registry) of source ``HOST/a/b``:
        ``PREFIX/<host>/a/b``, the host lower-cased with every character the repository grammar
        refuses (``:`` of a port, IPv6 brackets) turned into ``-``. Raises InvalidReference when
        the result is over 255 characters."""
        host = re.sub(r"-+", "-", re.sub(r"[^a-z0-9.]", "-", source.host.lower())).strip("-.")
        return models.check_repository(f"{self.repository.repository}/{host}/{source.repository}")

    @staticmethod
    def tag_for(tag: str, digest: str) -> str:
        """The vault tag holding release ``tag`` at ``digest``: ``<tag>--<64 hex>``, the tag cut to
        62 characters so the whole stays within the 128 of the tag grammar. A person browsing the
        vault sees the version; the full hex finds the copy of any digest. Never ``sha256-...``
        (the referrers fallback tags)."""
        models.check_digest(digest)
        models.check_tag(tag)
        return f"{tag[:62]}--{digest.removeprefix('sha256:')}"

    @staticmethod
    def child_tag_for(digest: str) -> str:
        """The vault tag holding the platform (child) manifest ``digest`` of a multi-platform
        release: ``p--<64 hex>``. Children are tagged because distribution's
        ``garbage-collect --delete-untagged`` deletes untagged children of a tagged index."""
        models.check_digest(digest)
        return f"p--{digest.removeprefix('sha256:')}"


class Settings(fields.Section):
    database_url: DatabaseUrl = fields.Secret(DEFAULT_DATABASE_URL)
    interval: fields.Interval = 60.0
    jitter: fields.Duration = pydantic.Field(
        default=fields.DERIVED, validate_default=True
    )  # interval/6, <= 10s
    http: HttpSettings = HttpSettings()
    registries: Annotated[
        tuple[RegistrySettings, ...],
        fields.unique(RegistrySettings, "host", _host_key, "{} is configured twice"),
    ] = ()
    watches: Annotated[
        tuple[WatchSettings, ...],
        fields.unique(WatchSettings, "repository", _repository_key, "{} is watched twice"),
    ] = ()
    slack: SlackSettings = SlackSettings()
    restore: RestoreSettings = RestoreSettings()
    integrity: IntegritySettings = IntegritySettings()
    incidents: IncidentSettings = IncidentSettings()
    hooks: HookSettings = HookSettings()
    # the most one check of one watch may spend asking its registry (listing, HEADs, GETs);
    # writing the outcome is never cut short. A registry that answers too slowly costs its own
    # watches this long, then the check fails as unreachable and the slot goes to the others.
    check_timeout: fields.Interval = DEFAULT_CHECK_TIMEOUT
    # docker's layout: <certs_dir>/<host[:port]>/{ca.crt,*.crt,client.cert,client.key}
    certs_dir: fields.Text = tls.DEFAULT_CERTS_DIR
    vault: VaultSettings | None = None

    _source: str | None = pydantic.PrivateAttr(default=None)
    # RegistrySettings values every registry takes over its own (with_registry_flags)
    _flags: dict[str, Any] = pydantic.PrivateAttr(default_factory=dict)

    @pydantic.field_validator("jitter", mode="before")
    @classmethod
    def _jitter_from_interval(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        return min(10.0, info.data.get("interval", 60.0) / 6) if value is None else value

    @property
    def source(self) -> str | None:
        """The file these settings came from (None: defaults and the environment only)."""
        return self._source

    def check_deadline(self, watch: WatchSettings) -> float:
        """Seconds one check of ``watch`` may spend asking its registry."""
        return watch.check_timeout if watch.check_timeout is not None else self.check_timeout

    def problems(self) -> Iterator[tuple[str, str]]:
        # the certs.d entries this config will use: those of its registries and watched hosts
        # (an invalid list is held as given: only the valid entries count)
        registries = self.registries if isinstance(self.registries, tuple | list) else ()
        watches = self.watches if isinstance(self.watches, tuple | list) else ()
        hosts = {r.host for r in registries if isinstance(r, RegistrySettings)}
        hosts |= {w.repository.host for w in watches if isinstance(w, WatchSettings)}
        certs_dir = self.certs_dir if isinstance(self.certs_dir, str) else None
        for host in sorted(hosts):
            for problem in tls.certs_d(certs_dir, host)[1]:
                yield "certs_dir", problem
        if isinstance(self.vault, VaultSettings) and isinstance(self.watches, tuple):
            for watch in self.watches:
                if not isinstance(watch, WatchSettings) or not watch.vault:
                    continue
                try:
                    self.vault.repository_for(watch.repository)
                except errors.InvalidReference:
                    yield "vault.repository", f"too long a vault repository for {watch.name}"

    def vaulted(self) -> frozenset[str]:
        """The watched repositories (``ImageRef.name``) whose releases go to the vault."""
        if self.vault is None:
            return frozenset()
        return frozenset(w.name for w in self.watches if w.vault)

    def registry(self, host: str) -> RegistrySettings:
        """Settings for ``host``: the configured entry, else defaults (plain HTTP on loopback,
        unless certs.d holds TLS files for it), with the certs.d directory to look in."""
        wanted = models.normalize_host(host)
        reg = next((r for r in self.registries if r.host == wanted), None)
        if reg is None:
            reg = RegistrySettings(host=wanted)
        if self._flags:
            reg = _validated(
                RegistrySettings, {**reg.model_dump(exclude_unset=True), **self._flags}
            )
        update: dict[str, Any] = {"certs_dir": self.certs_dir}
        derived = "insecure" not in reg.model_fields_set
        if derived and reg.insecure and tls.host_dir(self.certs_dir, reg.host) is not None:
            update["insecure"] = False  # docker's certs.d entry: this one speaks HTTPS
        return reg.model_copy(update=update)

    def with_registry_flags(
        self, flags: dict[str, Any], names: dict[str, str] | None = None
    ) -> Settings:
        """A copy in which every registry takes ``flags`` (RegistrySettings fields, None meaning
        "not given") over its own values: the command line's ``--ca-file``, ``--tls``... Raises
        ConfigError for a bad one, named as ``names`` (field -> flag) says."""
        given = {k: v for k, v in flags.items() if v is not None}
        if not given:
            return self
        names = names or {}
        try:
            RegistrySettings.model_validate({"host": "flags.invalid", **given})
        except pydantic.ValidationError as exc:
            problems = []
            for e in exc.errors():
                key = str(e["loc"][0]) if e["loc"] else ""
                message = (e.get("ctx") or {}).get("msg", e["msg"])
                problems.append(f"{names.get(key, key)}: {message}")
            raise errors.ConfigError(problems, source="command line") from None
        copy = self.model_copy()
        copy._flags = given
        return copy


def _validated(model: type[RegistrySettings], data: dict[str, Any]) -> RegistrySettings:
    """``model`` from ``data``, a ValidationError worded as a ConfigError (the config's entry and
    the command line's flags disagree, e.g. ``insecure: true`` with ``--ca-file``)."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = [
            f"registries: {data.get('host')}: {'.'.join(map(str, e['loc']))}: "
            f"{(e.get('ctx') or {}).get('msg', e['msg'])}"
            for e in exc.errors()
        ]
        raise errors.ConfigError(problems) from None
