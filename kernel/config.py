"""The daemon's configuration: one YAML file, validated into Structs.

Looked for, when ``--config`` is absent, at ``$DRIVEBAY_CONFIG``, then
``./drivebay.yaml``, then ``/etc/drivebay/drivebay.yaml``; everything not
given has a built-in default. Unknown keys are refused with the nearest known
name. Command-line flags override the file. ``drivebayctl`` resolves the same
file to find the same socket.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from drivebay.kernel.cluster.settings import ClusterSettings
from drivebay.kernel.drivers.restarts import RestartPolicy
from drivebay.kernel.paths import DEFAULT_STATE_DIR, HTTP_SOCKET_NAME, SOCKET_NAME
from drivebay.protocol.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from drivebay.sandbox.bundle_reader import ReadLimits
    from drivebay.sandbox.manifest_schema import Limits
    from drivebay.sandbox.trust import TrustPolicy


class TimeoutSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    start_s: float = 30.0
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 10.0
    call_s: float = 30.0
    drain_s: float = 10.0
    term_s: float = 5.0
    kill_s: float = 5.0
    health_interval_s: float = 30.0
    # A warm spare must answer a ping this fast, or it is discarded (frozen, dead).
    spare_s: float = 0.5
    request_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0  # a control request arrives whole

    def settle_budget(self) -> float:
        """The one rule for how long the kernel waits on a driver version (a
        command, a start wave, a pin, a replacement, a call for a version
        coming back): a failed start and its retry, a staged stop, and a
        first virtualenv build, which may download. It bounds a wait that
        normally ends as soon as the state settles."""
        return self.start_s * 2 + self.drain_s + self.term_s + self.kill_s + 600

    def handover_budget(self, *call_s: float) -> float:
        """How long resources may take to switch versions: each waits for the
        call in flight (the longest deadline), detaches and attaches."""
        return max(call_s, default=self.call_s) * 2 + 30


class LimitSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Defaults for a driver's ``limits`` (its manifest may lower or raise them)."""

    memory_mb: int | None = 1024
    open_files: int | None = 1024
    cpu_s: int | None = None
    processes: int | None = None

    def rlimits(self, own: Limits) -> dict[str, int]:
        """A driver's RLIMIT_* values: its manifest's ``own`` limits over these
        defaults (what the kernel and ``drivebay check`` spawn it with)."""
        memory = own.memory_mb or self.memory_mb
        files = own.open_files or self.open_files
        cpu = own.cpu_s or self.cpu_s
        processes = own.processes or self.processes
        limits: dict[str, int] = {}
        if memory:
            limits["as"] = memory * 1024 * 1024
        if files:
            limits["nofile"] = files
        if cpu:
            limits["cpu"] = cpu
        if processes:
            limits["nproc"] = processes
        return limits


class LogSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 3


class BundleLimitSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How much a dropped bundle may hold before it is refused unread."""

    max_members: int = 10_000
    max_total_mb: int = 200
    max_file_mb: int = 100
    max_ratio: int = 100  # compression ratio of a zip member (zip bombs)
    max_depth: int = 64  # folders nested inside one bundle

    def read_limits(self) -> ReadLimits:
        from drivebay.sandbox.bundle_reader import (
            ReadLimits,  # zipfile and friends: not for drivebayctl
        )

        mib = 1024 * 1024
        return ReadLimits(
            max_members=self.max_members,
            max_total_bytes=self.max_total_mb * mib,
            max_member_bytes=self.max_file_mb * mib,
            max_ratio=self.max_ratio,
            max_depth=self.max_depth,
        )


class ControlSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The control socket's bounds (see kernel/control/limits.py)."""

    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 512
    request_buffer_mb: Annotated[int, msgspec.Meta(ge=1)] = 64  # shared by large requests


class TlsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The HTTP API's TLS (``http.tls``): PEM files; with ``client_ca``, a TCP
    client must present a certificate that CA signed to connect (it grants no
    role: a request still needs a token)."""

    cert: str
    key: str
    client_ca: str | None = None


class HttpSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The HTTP API (``http:``; docs/api.md): always on its Unix socket,
    optionally on TCP (``listen: HOST:PORT``, TLS unless loopback)."""

    socket: str | None = None  # default <state_dir>/http.sock
    listen: str | None = None
    tls: TlsSettings | None = None

    def address(self) -> tuple[str, int] | None:
        """``listen`` as (host, port); None when not set. ConfigError when it
        is not HOST:PORT, or names a non-loopback host without ``tls``."""
        if self.listen is None:
            return None
        host, colon, port = self.listen.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"http.listen: {self.listen!r} is not HOST:PORT; write 127.0.0.1:8080"
            )
        if self.tls is None and not _loopback(host):
            raise ConfigError(
                f"http.listen: {self.listen} is not a loopback address and http.tls is not set; "
                "set http.tls (cert, key) or listen on 127.0.0.1"
            )
        return host, int(port)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: where it points may change; not loopback


class EventSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The in-memory event ring (``drivebayctl events``, ``GET /v1/events``)."""

    ring_size: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10_000  # events kept
    # an SSE stream's comment line after this many seconds without an event
    heartbeat_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15.0


class TrustSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which bundle signatures the daemon accepts (``trust:``); see docs/distribution.md.

    ``keys`` and ``authorities`` are public key files (``NAME.pub``);
    ``revoked`` lists key ids (sha256 hex of the raw public key)."""

    signatures: Literal["off", "warn", "require"] = "off"
    keys: tuple[str, ...] = ()
    authorities: tuple[str, ...] = ()
    revoked: tuple[str, ...] = ()

    def policy(self) -> TrustPolicy:
        """The policy with its key files read; ConfigError names a file that
        cannot be read or is not an Ed25519 public key."""
        from drivebay.sandbox.trust import load_policy  # cryptography: not for drivebayctl

        return load_policy(self.signatures, self.keys, self.authorities, self.revoked)


class RepositorySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One TUF repository under ``repositories:``: its URL (or directory) and
    the trusted ``root.json`` a client starts its chain of trust from."""

    name: str
    url: str
    root: str


class MetricsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Prometheus metrics (``metrics:``); see docs/operations.md."""

    enabled: bool = True  # count every call by operation and outcome (the one per-call cost)
    listen: str | None = None  # HOST:PORT of a listener of its own; a bare PORT is on loopback

    def address(self) -> tuple[str, int] | None:
        """``listen`` as (host, port); None when unset. Raises ConfigError."""
        if self.listen is None:
            return None
        host, colon, port = self.listen.rpartition(":")
        if not colon:
            host, port = "", self.listen
        host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
        if not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                f"metrics.listen: {self.listen!r} is not HOST:PORT; write e.g. 127.0.0.1:9464"
            )
        return host, int(port)


RoleName = Literal["viewer", "operator", "admin"]


class TokenRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A bearer token by its sha256 (hex), its role, and the driver globs it is
    limited to (none: every driver)."""

    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]
    role: RoleName
    drivers: tuple[str, ...] = ()


class AuthorizationSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who may do what (``authorization:``; kernel/control/authz.py,
    docs/operations.md)."""

    users: dict[str, RoleName] = {}
    groups: dict[str, RoleName] = {}
    tokens: tuple[TokenRule, ...] = ()


class DriverSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-driver settings under ``drivers: {NAME: ...}``."""

    auto_update: bool | None = None  # None: the global auto_update
    user: str | None = None
    python: str | None = None
    log_level: str | None = None
    env: dict[str, str] = {}
    limits: LimitSettings | None = None


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    state_dir: str = DEFAULT_STATE_DIR
    drivers_dir: str | None = None  # default <state_dir>/drivers
    socket: str | None = None  # default <state_dir>/drivebayd.sock
    socket_group: str | None = None
    envs_dir: str | None = None  # default <state_dir>/envs; may be shared by daemons
    uv_cache_dir: str | None = None  # default: uv's own cache
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"  # the daemon's own lines (kernel/log_format.py)
    python: str | None = None  # interpreter driver envs are built on; default the kernel's
    user: str | None = None  # run drivers as this user (root daemon only)
    # What keeps a driver's descendants from outliving it (sandbox/containment.py).
    containment: Literal["auto", "pid_namespace", "process_group"] = "auto"
    # Driver processes' Linux scheduling policy (protocol/runtime.py; operations.md).
    scheduling: Literal["normal", "batch"] = "normal"
    # How a driver process starts: forked from its interpreter's template, or
    # a new interpreter (sandbox/fork_server.py, docs/operations.md).
    spawn: Literal["fork-server", "exec"] = "fork-server"
    category_order: tuple[str, ...] = ("network", "storage", "hypervisor")
    settle_s: float = 1.0  # a dropped directory must be unchanged this long
    same_version_change: str = "error"  # or "reload": a changed bundle of the same version
    max_frame_bytes: int = 16 * 1024 * 1024
    mailbox_size: int = 1000
    # The most state moves in flight at once in a handover (kernel/drivers/move_window.py).
    handover_moves: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 32
    restart: RestartPolicy = RestartPolicy()
    timeouts: TimeoutSettings = TimeoutSettings()
    limits: LimitSettings = LimitSettings()
    logs: LogSettings = LogSettings()
    bundles: BundleLimitSettings = BundleLimitSettings()
    control: ControlSettings = ControlSettings()
    http: HttpSettings = HttpSettings()
    events: EventSettings = EventSettings()
    trust: TrustSettings = TrustSettings()
    repositories: tuple[RepositorySettings, ...] = ()
    update_check_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # 0: never check
    auto_update: bool = False  # install what a check finds without being asked
    metrics: MetricsSettings = MetricsSettings()
    authorization: AuthorizationSettings = AuthorizationSettings()
    drivers: dict[str, DriverSettings] = {}
    cluster: ClusterSettings | None = None  # None: one node, resources in SQLite

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser()

    @property
    def drivers_path(self) -> Path:
        return (
            Path(self.drivers_dir).expanduser() if self.drivers_dir else self.state_path / "drivers"
        )

    @property
    def socket_path(self) -> Path:
        return Path(self.socket).expanduser() if self.socket else self.state_path / SOCKET_NAME

    @property
    def http_socket_path(self) -> Path:
        given = self.http.socket
        return Path(given).expanduser() if given else self.state_path / HTTP_SOCKET_NAME

    @property
    def envs_path(self) -> Path:
        return Path(self.envs_dir).expanduser() if self.envs_dir else self.state_path / "envs"

    @property
    def uv_cache_path(self) -> Path | None:
        return Path(self.uv_cache_dir).expanduser() if self.uv_cache_dir else None

    def for_driver(self, name: str) -> DriverSettings:
        return self.drivers.get(name, DriverSettings())


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read ``path`` (None: defaults), apply ``overrides``; ConfigError says what to fix."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}; check --config") from exc
        from drivebay.sandbox.safe_yaml import load_yaml

        try:
            loaded = load_yaml(data, str(path), "")
        except BundleError as exc:
            raise ConfigError(str(exc)) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: must be a mapping of settings (state_dir: ..., ...)")
        raw = loaded or {}
    if path is not None:
        # Relative paths in a file mean "next to this file", wherever we run from.
        for key in PATH_KEYS:
            value = raw.get(key)
            if isinstance(value, str) and not value.startswith(("/", "~")):
                raw[key] = str((path.parent / value).absolute())
        _anchor_key_files(raw.get("trust"), path.parent)
        _anchor_http_files(raw.get("http"), path.parent)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in PATH_KEYS and isinstance(value, str) and not value.startswith("~"):
            value = os.path.abspath(value)  # a flag's relative path: from where we run
        raw[key] = value
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path or 'configuration'}: {explain(str(exc))}") from exc
    if config.same_version_change not in ("error", "reload"):
        raise ConfigError(
            f"{path or 'configuration'}: same_version_change: must be 'error' or 'reload'"
        )
    _check_log_levels(config, f"{path or 'configuration'}")
    try:
        config.http.address()
        config.metrics.address()
    except ConfigError as exc:
        raise ConfigError(f"{path or 'configuration'}: {exc}") from None
    return config


def _anchor_key_files(trust: object, base: Path) -> None:
    """``trust.keys`` and ``trust.authorities`` relative to the config file too."""
    if not isinstance(trust, dict):
        return
    for key in ("keys", "authorities"):
        files = trust.get(key)
        if isinstance(files, list):
            trust[key] = [
                str((base / f).absolute()) if isinstance(f, str) and f[:1] not in "/~" else f
                for f in files
            ]


def _anchor_http_files(http: object, base: Path) -> None:
    """``http.socket`` and the ``http.tls`` files relative to the config file too."""
    if not isinstance(http, dict):
        return
    places: list[dict[str, Any]] = [http]
    if isinstance(http.get("tls"), dict):
        places.append(http["tls"])
    for place in places:
        for key in ("socket", "cert", "key", "client_ca"):
            value = place.get(key)
            if isinstance(value, str) and value and value[:1] not in "/~":
                place[key] = str((base / value).absolute())


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _check_log_levels(config: Config, where: str) -> None:
    """A level ``logging`` does not know would fail only when used, with a traceback."""
    levels: dict[str, str | None] = {"log_level": config.log_level}
    levels.update({f"drivers.{name}.log_level": s.log_level for name, s in config.drivers.items()})
    for key, level in levels.items():
        if level is not None and level not in LOG_LEVELS:
            known = ", ".join(LOG_LEVELS)
            raise ConfigError(f"{where}: {key}: {level!r} is not a level; use one of {known}")


PATH_KEYS = ("state_dir", "drivers_dir", "socket", "envs_dir", "uv_cache_dir")

_STRUCTS: dict[str, type[msgspec.Struct]] = {
    "": Config,
    "restart": RestartPolicy,
    "timeouts": TimeoutSettings,
    "limits": LimitSettings,
    "logs": LogSettings,
    "bundles": BundleLimitSettings,
    "control": ControlSettings,
    "trust": TrustSettings,
    "http": HttpSettings,
    "http.tls": TlsSettings,
    "repositories[]": RepositorySettings,
    "metrics": MetricsSettings,
    "authorization": AuthorizationSettings,
    "authorization.tokens[]": TokenRule,
    "drivers.*": DriverSettings,
    "drivers.*.limits": LimitSettings,
    "cluster": ClusterSettings,
}


def explain(error: str) -> str:
    """A msgspec validation message as ``path: problem; fix``."""
    found = re.fullmatch(r"(.*?)(?: - at `\$(.*)`)?", error)
    assert found is not None
    message, path = found[1], (found[2] or "").lstrip(".")
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", message)
    if unknown:
        generic = re.sub(r"^drivers\.[^.]+", "drivers.*", path)
        generic = re.sub(r"\[\d+\]", "[]", generic)
        known = _STRUCTS.get(generic, Config).__struct_fields__
        close = difflib.get_close_matches(unknown[1], known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "known: " + ", ".join(known)
        return f"{path + ': ' if path else ''}unknown key '{unknown[1]}'; {hint}"
    return f"{path + ': ' if path else ''}{message}"
