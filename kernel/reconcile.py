"""What reconciling decides, as pure functions from what the kernel knows to actions.

The kernel gathers ``Facts`` (the bundles of the drivers directory, its slots
and their states, the active versions, pins, recorded failures, a few
settings); the functions here return the ``Action`` list that brings the
slots toward what should run, and the kernel's executor (``Kernel._apply``)
applies them in order. Starting takes time, so there are passes around the
start plan (``kernel/drivers/ordering.py``): ``arrange`` before it (which versions
have a slot), ``block`` and ``start_wave`` for each of its waves (which
versions start, which wait for a requirement or a free place), ``promote``
after it (who serves now). ``roll_back``
decides whether a version that crash-looped soon after taking over fails, and
``stale`` which running processes were spawned with settings the config no
longer has. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from drivebay.kernel.drivers.lifecycle import IDLE, State
from drivebay.sandbox.pep440 import version_key


@dataclass(frozen=True)
class SlotFacts:
    """What reconciling needs to know of one slot."""

    driver: str
    version: str
    digest: str  # of the bundle it runs
    state: State = State.STOPPED
    reason: str = ""  # of its state
    candidate: bool = False  # a new version on probation, not serving yet
    held: bool = False  # an operator stopped it
    requires: tuple[str, ...] = ()  # drivers that must run before it starts
    stale_settings: bool = False  # its process was spawned with settings since changed
    refused_digest: str | None = None  # content of this version a replacement failed with
    crash_loop_on_probation: bool = False  # its crash loop began soon after taking over

    @property
    def key(self) -> str:
        return f"{self.driver}@{self.version}"


@dataclass(frozen=True)
class Facts:
    """What the kernel knows, as plain data."""

    available: Mapping[str, Mapping[str, str]]  # driver -> version -> bundle digest
    slots: Mapping[str, SlotFacts]  # by name@version, in the kernel's order
    active: Mapping[str, str] = field(default_factory=dict)  # driver -> serving version
    failed: Mapping[str, str] = field(default_factory=dict)  # name@version -> failed digest
    pinned: tuple[str, ...] = ()  # name@version a resource is pinned to (or about to be)
    replacing: frozenset[str] = frozenset()  # name@version already being replaced
    reload_same_version: bool = False  # same_version_change: reload
    window_s: float = 60.0  # restart.window_s: the length of probation


@dataclass(frozen=True)
class Hold:
    """Its bundle changed in place and that is refused: the running content stays."""

    key: str


@dataclass(frozen=True)
class Replace:
    """Hand it over to a fresh process: new content (``fresh``) or new settings."""

    key: str
    fresh: bool


@dataclass(frozen=True)
class Activate:
    """Unpinned resources of ``driver`` use ``version`` (None: no version serves)."""

    driver: str
    version: str | None


@dataclass(frozen=True)
class Retire:
    """Nobody needs it any more: drain and stop it, showing ``reason``."""

    key: str
    reason: str


@dataclass(frozen=True)
class Add:
    """A slot for this version; a ``candidate`` is on probation until it serves."""

    key: str
    candidate: bool


@dataclass(frozen=True)
class MarkFailed:
    """A candidate failed: its bundle is not started again (until a new one or a start)."""

    key: str
    reason: str


@dataclass(frozen=True)
class HandOver:
    """A candidate became healthy: move the unpinned resources from ``old`` to ``new``."""

    old: str
    new: str


@dataclass(frozen=True)
class RollBack:
    """It crash-looped on probation: it fails, and ``successor`` serves again."""

    key: str
    reason: str
    successor: str


@dataclass(frozen=True)
class Block:
    """Its requirements are not met: it stays (or goes) down, BLOCKED, saying ``reason``."""

    key: str
    reason: str


@dataclass(frozen=True)
class Refuse:
    """No descriptors for one more version: it stays STOPPED, saying why."""

    key: str


@dataclass(frozen=True)
class Start:
    """Start it (``reset``: out of BLOCKED, forgetting past failures)."""

    key: str
    reset: bool


Action = (
    Hold
    | Replace
    | Activate
    | Retire
    | Add
    | MarkFailed
    | HandOver
    | RollBack
    | Block
    | Refuse
    | Start
)


def arrange(facts: Facts) -> list[Action]:
    """Before the start plan: refuse or replace bundles changed in place,
    retire the slots nobody wants (another running version of the driver
    serving instead), and add a slot for every wanted version without one.
    A version newer than the serving one is added as a candidate."""
    actions: list[Action] = []
    available = {driver: dict(versions) for driver, versions in facts.available.items()}
    for key, slot in facts.slots.items():
        digest = available.get(slot.driver, {}).get(slot.version)
        if digest is None or digest == slot.digest:
            continue
        if digest == slot.refused_digest:  # failed once: the running content serves on
            available[slot.driver][slot.version] = slot.digest
            continue
        if facts.reload_same_version:
            actions.append(Replace(key, fresh=True))
        else:
            actions.append(Hold(key))
            available[slot.driver][slot.version] = slot.digest
    wanted = _wanted(facts, available)
    active = dict(facts.active)
    remaining = dict(facts.slots)
    for key, slot in facts.slots.items():
        if key in wanted:
            continue
        del remaining[key]
        if active.get(slot.driver) == slot.version:
            successor = _newest_running(remaining.values(), slot.driver)
            if successor is None:
                del active[slot.driver]
            else:
                active[slot.driver] = successor
            actions.append(Activate(slot.driver, successor))
        reason = "bundle removed" if slot.driver not in available else "not needed"
        actions.append(Retire(key, reason))
    for key in wanted:
        if key not in facts.slots:
            driver, _, version = key.partition("@")
            serving = active.get(driver)
            upgrade = serving is not None and version_key(version) > version_key(serving)
            actions.append(Add(key, candidate=upgrade))
    return actions


def _wanted(facts: Facts, available: Mapping[str, Mapping[str, str]]) -> dict[str, None]:
    """Per driver its newest version that has not failed (newer failed ones
    keep their FAILED row), plus pinned ones and the serving one; in order."""
    wanted: dict[str, None] = {}
    for driver, versions in available.items():
        for version in sorted(versions, key=version_key, reverse=True):
            key = f"{driver}@{version}"
            wanted[key] = None
            if facts.failed.get(key) != versions[version]:
                break
    for key in facts.pinned:
        driver, _, version = key.partition("@")
        if version in available.get(driver, {}):
            wanted[key] = None
    for driver, version in facts.active.items():
        if f"{driver}@{version}" in facts.slots and version in available.get(driver, {}):
            wanted[f"{driver}@{version}"] = None
    return wanted


def _newest_running(slots: Iterable[SlotFacts], driver: str) -> str | None:
    running = [s.version for s in slots if s.driver == driver and s.state is State.RUNNING]
    return max(running, key=version_key) if running else None


def block(facts: Facts, blocked: Mapping[str, str]) -> list[Block]:
    """Every slot of a driver the plan blocked (``ordering.Plan.blocked``)."""
    return [
        Block(key, reason)
        for driver, reason in blocked.items()
        for key, slot in facts.slots.items()
        if slot.driver == driver
    ]


def start_wave(
    facts: Facts, wave: Iterable[str], holding: int, places: int
) -> list[Block | Refuse | Start]:
    """One wave of the start plan, its drivers in order: a slot whose
    requirement is not running is blocked; one that is down and not stopped by
    an operator starts while fewer than ``places`` versions hold a place
    (``holding`` do now), else it is refused."""
    running = {s.driver for s in facts.slots.values() if s.state is State.RUNNING}
    actions: list[Block | Refuse | Start] = []
    for driver in wave:
        for key, slot in facts.slots.items():
            if slot.driver != driver:
                continue
            unmet = [need for need in slot.requires if need not in running]
            if unmet:
                actions.append(Block(key, f"requires {', '.join(unmet)}, which is not running"))
            elif not slot.held and slot.state in IDLE:
                if holding >= places:
                    actions.append(Refuse(key))
                    continue
                holding += 1
                actions.append(Start(key, reset=slot.state is State.BLOCKED))
    return actions


def promote(facts: Facts) -> list[Action]:
    """After the start plan: a candidate that failed is marked failed (the
    version before it keeps serving); one that runs takes over from the
    serving version, or serves at once when there is none. Then ``stale``."""
    actions: list[Action] = []
    active = dict(facts.active)
    handed_over: set[str] = set()
    for key, slot in facts.slots.items():
        if not slot.candidate or slot.state not in (State.RUNNING, State.FAILED):
            continue
        if slot.state is State.FAILED:
            actions.append(MarkFailed(key, slot.reason))
            continue
        old = f"{slot.driver}@{active.get(slot.driver)}"
        if old not in facts.slots or old == key:
            actions.append(Activate(slot.driver, slot.version))
        else:
            actions.append(HandOver(old, key))
            handed_over.add(old)
        active[slot.driver] = slot.version
    actions.extend(r for r in stale(facts) if r.key not in handed_over)
    return actions


def stale(facts: Facts) -> list[Replace]:
    """Running versions spawned with settings the config no longer has: each
    is handed over to a new process. Those stopped by an operator, FATAL or
    FAILED take the new settings at their next start."""
    return [
        Replace(key, fresh=False)
        for key, slot in facts.slots.items()
        if slot.state is State.RUNNING
        and not slot.held
        and not slot.candidate
        and key not in facts.replacing
        and slot.stale_settings
    ]


def roll_back(facts: Facts, key: str) -> RollBack | None:
    """``key`` entered FATAL: if it serves, took over in an upgrade and its
    crash loop began within one restart window of that, it fails as a new
    version does and the newest older version that has not failed serves
    again. Otherwise (no such version, or a later crash loop) it stays FATAL."""
    slot = facts.slots[key]
    if facts.active.get(slot.driver) != slot.version or not slot.crash_loop_on_probation:
        return None
    mine = version_key(slot.version)
    older = [
        version
        for version, digest in facts.available.get(slot.driver, {}).items()
        if version_key(version) < mine and facts.failed.get(f"{slot.driver}@{version}") != digest
    ]
    if not older:
        return None
    reason = f"rolled back: crash loop within {facts.window_s:g}s of taking over ({slot.reason})"
    return RollBack(key, reason, f"{slot.driver}@{max(older, key=version_key)}")
