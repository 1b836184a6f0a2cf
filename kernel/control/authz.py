"""Who may run which command: one policy for the control socket and the HTTP API.

Three roles, each allowing what the one below does: ``viewer`` reads,
``operator`` also starts, stops, restarts, calls and sets resource
properties, ``admin`` does everything. ``NEEDS`` says, per request type,
the role it needs; a test checks that every request type has an entry.

Who a client is:

- a Unix socket peer (SO_PEERCRED, on the control socket and ``http.sock``):
  root and the daemon's own user are admin; then ``authorization.users``
  (by user name), else the highest of ``authorization.groups`` the peer is
  in (primary group or member); members of ``socket_group`` are operator
  unless ``groups`` names that group. A peer no rule names is refused.
- a TCP client of the HTTP API: by its bearer token (``Authorization:
  Bearer TOKEN``), compared by its sha256 with every token of the config and
  of the state dir (``tokens.json``, written by ``drivebayctl token new``) in
  constant time. A token's ``drivers`` globs limit the drivers (and the
  resources of those drivers) it acts on and sees. A client certificate
  (``http.tls.client_ca``) only authenticates the TLS connection: without a
  token the request is refused (401), whatever the certificate.
"""

from __future__ import annotations

import asyncio
import grp
import hashlib
import hmac
import os
import pwd
import secrets
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, cast

from drivebay.kernel.control import schema as S
from drivebay.kernel.control import scope
from drivebay.kernel.resources.book import no_such_resource
from drivebay.protocol.errors import ConfigError, NoSuchName, RequestError

if TYPE_CHECKING:
    from drivebay.kernel.config import Config, RoleName, TokenRule
    from drivebay.kernel.kernel import Kernel

TOKENS_FILE = "tokens.json"
MIN_PREFIX = 8  # hex digits of a sha256 that name a token for token rm


class Role(IntEnum):
    viewer = 1
    operator = 2
    admin = 3


class PermissionDenied(RequestError):
    """The client may not run this request (its role, or its token's drivers).

    Its line is ``permission denied: COMMAND needs ROLE``; ask the daemon's
    operator for that role (docs/operations.md, "Authorization")."""


class Unauthenticated(RequestError):
    """A TCP request came without a token the daemon knows.

    Present one (``Authorization: Bearer TOKEN``, from ``drivebayctl token
    new``) or log in on the admin page; a client certificate grants no role."""


VIEW, OPERATE, ADMIN = Role.viewer, Role.operator, Role.admin
NEEDS: dict[type[S.ControlRequest], Role] = {
    S.StatusRequest: VIEW,
    S.TailRequest: VIEW,
    S.TailFollowRequest: VIEW,
    S.DescribeRequest: VIEW,
    S.AvailRequest: VIEW,
    S.PidRequest: VIEW,
    S.VersionRequest: VIEW,
    S.ResourcesRequest: VIEW,
    S.RepoListRequest: VIEW,
    S.NodesRequest: VIEW,
    S.EventsRequest: VIEW,
    S.EventsFollowRequest: VIEW,
    S.StartRequest: OPERATE,
    S.StopRequest: OPERATE,
    S.RestartRequest: OPERATE,
    S.CallRequest: OPERATE,
    S.ResourceSetRequest: OPERATE,
    S.ResourceAddRequest: ADMIN,
    S.ResourceRmRequest: ADMIN,
    S.ResourcePinRequest: ADMIN,
    S.RepoAddRequest: ADMIN,
    S.RepoRmRequest: ADMIN,
    S.InstallRequest: ADMIN,
    S.ReloadRequest: ADMIN,
    S.ShutdownRequest: ADMIN,
    S.TokenNewRequest: ADMIN,
    S.TokenLsRequest: ADMIN,
    S.TokenRmRequest: ADMIN,
}
"""The role each request needs."""


@dataclass(frozen=True)
class Principal:
    """A client as the policy sees it: its role (None: no rule names it) and,
    for a token, the driver globs it is limited to (None: every driver) and
    the token's sha256 (an admin page session checks it is still known)."""

    who: str  # for the log and the audit line
    role: Role | None
    drivers: tuple[str, ...] | None = None
    token: str | None = None


# -- who ---------------------------------------------------------------------------


def peer_role(uid: int, gid: int, config: Config) -> Role | None:
    """The role of a Unix socket peer; None when no rule names it. Looks
    users and groups up (NSS, which may block), unless ``owner(uid)``: the
    servers call it through ``peers.PeerRoles``, in a worker thread."""
    if owner(uid):
        return Role.admin
    rules = config.authorization
    name = _user_name(uid)
    if name in rules.users:
        return Role[rules.users[name]]
    groups = dict(rules.groups)
    if config.socket_group and config.socket_group not in groups:
        groups[config.socket_group] = "operator"
    found = [Role[role] for group, role in groups.items() if _member(uid, gid, name, group)]
    return max(found, default=None)


def owner(uid: int) -> bool:
    """Root and the daemon's own user: always admin."""
    return uid in (0, os.geteuid())


def widens(config: Config) -> bool:
    """Does ``authorization`` name users or groups beyond the daemon's own user
    and ``socket_group``? Then the sockets are made reachable by anyone
    (mode 0666) and every peer is judged by the rules."""
    rules = config.authorization
    own = _user_name(os.geteuid())
    return any(user != own for user in rules.users) or any(
        group != config.socket_group for group in rules.groups
    )


def socket_mode(config: Config) -> int:
    if widens(config):
        return 0o666
    return 0o660 if config.socket_group else 0o600


def token_principal(who: str, presented: str, known: Iterable[TokenRule]) -> Principal:
    """The principal of a bearer token; Unauthenticated when it is unknown.

    Every known hash is compared (``hmac.compare_digest``), so the time
    taken does not say how much of a hash matched."""
    digest = hashlib.sha256(presented.encode()).hexdigest()
    found: TokenRule | None = None
    for rule in known:
        if hmac.compare_digest(digest, rule.sha256.lower()) and found is None:
            found = rule
    if found is None:
        raise Unauthenticated(
            "unknown token: present a token from drivebayctl token new "
            "(Authorization: Bearer TOKEN)"
        )
    return of_token(f"{who} token {digest[:12]}", found)


def of_token(who: str, rule: TokenRule) -> Principal:
    """The principal a token rule makes."""
    drivers = tuple(rule.drivers) if rule.drivers else None
    return Principal(who, Role[rule.role], drivers, rule.sha256.lower())


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """The pid, uid and gid of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def refusal(principal: Principal) -> str:
    """The line a peer no rule names is refused with."""
    uid = principal.who.rpartition(" uid ")[2]
    return (
        f"permission denied: no rule of this daemon names uid {uid}; "
        "ask its operator for a role (authorization in its config)"
    )


# -- may it ------------------------------------------------------------------------


def authorize(kernel: Kernel, principal: Principal, request: S.ControlRequest) -> None:
    """``check`` against the kernel's resources; raises PermissionDenied."""

    def driver_of(resource_id: str) -> str | None:
        book = kernel.book
        return book.driver_of(resource_id) if book is not None else None

    check(principal, request, driver_of)


def check(
    principal: Principal,
    request: S.ControlRequest,
    driver_of: Callable[[str], str | None],
) -> None:
    """Return if ``principal`` may run ``request``; raise PermissionDenied.

    ``driver_of`` names a resource's driver (None: no such resource; the
    handler then says so). A token limited to drivers is refused a driver
    outside its globs by name (403), and is told that a resource of another
    driver does not exist (``NoSuchName``, as for an unknown one: 404, exit
    4); what a reading request that names no driver answers it is bounded
    by ``scope.shown``."""
    command = str(type(request).__struct_config__.tag)
    needed = NEEDS[type(request)]
    if principal.role is None or principal.role < needed:
        raise PermissionDenied(f"permission denied: {command} needs {needed.name}")
    if principal.drivers is None:
        return
    resource = resource_named(request)
    if resource is not None:
        driver = driver_of(resource)
        if driver is not None and not scope.sees(principal, driver):
            raise no_such_resource(resource)
        return
    targets = drivers_named(request)
    if targets is None:
        if type(request) in S.CHANGING or needed is Role.admin:
            scope_of = (
                "of every driver (no name, or all)"
                if isinstance(request, S.StartRequest | S.StopRequest | S.RestartRequest)
                else "acts on the whole daemon and"
            )
            raise PermissionDenied(
                f"permission denied: {command} {scope_of} needs a token without driver globs"
            )
        return
    for driver in targets:
        if not scope.sees(principal, driver):
            raise PermissionDenied(
                f"permission denied: this token may not act on driver {driver} "
                f"(it may on {', '.join(principal.drivers)})"
            )


def drivers_named(request: S.ControlRequest) -> list[str] | None:
    """The drivers a request names; None when it names none (every driver,
    or the daemon itself)."""
    match request:
        case S.StartRequest(names) | S.StopRequest(names) | S.RestartRequest(names):
            if "all" in names:  # every driver, not one named "all" (nor one "al*" matches)
                return None
            return [n.partition("@")[0] for n in names] or None
        case S.StatusRequest(names):
            return [n.partition("@")[0] for n in names] or None
        case S.TailRequest(name=name) | S.TailFollowRequest(name=name):
            return [name.partition("@")[0]]
        case S.DescribeRequest(name=name) | S.PidRequest(name=str() as name):
            return [name.partition("@")[0]]
        case S.ResourceAddRequest(driver=driver) | S.InstallRequest(name=driver):
            return [driver]
    return None


def resource_named(request: S.ControlRequest) -> str | None:
    """The existing resource a request acts on, if it names one."""
    match request:
        case S.ResourceSetRequest(id=rid) | S.ResourceRmRequest(id=rid):
            return rid
        case S.ResourcePinRequest(id=rid) | S.CallRequest(resource=rid):
            return rid
    return None


# -- tokens kept in the state dir --------------------------------------------------


class TokenStore:
    """The tokens ``token new`` made, by their hashes, in ``<state>/tokens.json``
    (mode 0600, replaced whole); read once at start, kept in memory. A change
    (``add``, ``remove``) is written first and applied in memory only once
    written: the file and what the daemon accepts never disagree."""

    def __init__(self, state: Path) -> None:
        self.path = state / TOKENS_FILE
        self.rules: list[TokenRule] = self._read()
        self._lock = asyncio.Lock()

    def _read(self) -> list[TokenRule]:
        import msgspec

        from drivebay.kernel.config import TokenRule

        try:
            return msgspec.json.decode(self.path.read_bytes(), type=list[TokenRule])
        except FileNotFoundError:
            return []
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(
                f"{self.path}: cannot read the stored tokens ({exc}); restore or remove the file"
            ) from None

    def known(self, config: Config) -> list[TokenRule]:
        """Every token the daemon accepts: the config's, then the kept ones."""
        return [*config.authorization.tokens, *self.rules]

    def find(self, config: Config, digest: str) -> TokenRule | None:
        """The rule of the token whose sha256 is ``digest``, if it is still known."""
        return next((rule for rule in self.known(config) if rule.sha256.lower() == digest), None)

    async def add(self, role: Role, drivers: Iterable[str]) -> tuple[str, str]:
        """A new random token of ``role``: (the token, its sha256); only the
        hash is kept. Written before it is answered: it holds after a restart."""
        from drivebay.kernel.config import TokenRule

        token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(token.encode()).hexdigest()
        async with self._lock:
            rule = TokenRule(digest, cast("RoleName", role.name), tuple(drivers))
            await self._replace([*self.rules, rule])
        return token, digest

    async def remove(self, config: Config, prefix: str) -> TokenRule:
        """Remove the kept token whose sha256 starts with ``prefix``; the rule
        removed. A RequestError for a prefix
        that is too short, names no token or several, or a token of the config
        file (which the daemon does not rewrite)."""
        wanted = prefix.lower()
        if len(wanted) < MIN_PREFIX or not all(c in "0123456789abcdef" for c in wanted):
            raise RequestError(
                f"{prefix!r}: name a token by its sha256 or its first {MIN_PREFIX} or more "
                "hex digits (drivebayctl token ls lists them)"
            )
        async with self._lock:
            kept = [rule for rule in self.rules if rule.sha256.lower().startswith(wanted)]
            configured = [
                rule
                for rule in config.authorization.tokens
                if rule.sha256.lower().startswith(wanted)
            ]
            if len(kept) + len(configured) > 1:
                ids = ", ".join(rule.sha256[:12] for rule in [*kept, *configured])
                raise RequestError(
                    f"{prefix} names {len(kept) + len(configured)} tokens "
                    f"({ids}); give more of the hash"
                )
            if configured:
                raise RequestError(
                    f"token {configured[0].sha256[:12]} is in the config file "
                    "(authorization.tokens): remove it there, then drivebayctl reload"
                )
            if not kept:
                raise NoSuchName(f"no token {prefix}; drivebayctl token ls lists them")
            await self._replace([rule for rule in self.rules if rule is not kept[0]])
        return kept[0]

    async def _replace(self, rules: list[TokenRule]) -> None:
        """Write ``rules`` whole (a new file renamed over the old one), then
        take them; the caller holds the lock."""
        import msgspec

        from drivebay.sandbox.atomic_files import write_whole

        data = msgspec.json.format(msgspec.json.encode(rules)) + b"\n"
        await asyncio.to_thread(write_whole, self.path, data, 0o600)
        self.rules = rules


def _member(uid: int, gid: int, name: str, group: str) -> bool:
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    return gid == entry.gr_gid or name in entry.gr_mem


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""
