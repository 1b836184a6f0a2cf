"""The kernel: ties the registry, the supervisors, the watcher and control together.

One ``Kernel`` per daemon. ``run`` takes the state-dir lock, ends stale
drivers of a dead predecessor, serves the control socket, and then keeps the
running drivers equal to what the drivers directory holds: a *reconciler*
task, woken by the watcher, by reloads and by state changes, (re)computes
the start plan and moves each driver slot toward it. Shutdown stops drivers
in the reverse of the start order. Every task here is owned by ``run``'s
TaskGroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from drivebay.kernel.config import Config
from drivebay.kernel.control.authz import TokenStore, socket_mode
from drivebay.kernel.control.limits import ConnectionGate
from drivebay.kernel.control.peers import PeerRoles
from drivebay.kernel.control.scope import no_such_driver
from drivebay.kernel.drivers import spare_priority
from drivebay.kernel.drivers.descriptors import current_limit, descriptor_budget, places_held
from drivebay.kernel.drivers.handover import hand_over
from drivebay.kernel.drivers.launch_gate import LaunchGate, bounds_for, usable_cpus
from drivebay.kernel.drivers.lifecycle import SETTLED_OK, State, Transition
from drivebay.kernel.drivers.ordering import Node, Plan, plan, stop_order
from drivebay.kernel.drivers.registry import Registry
from drivebay.kernel.drivers.slot import DriverSlot, SlotContext
from drivebay.kernel.drivers.spare_priority import ImportNice
from drivebay.kernel.drivers.watch import watch_drivers
from drivebay.kernel.events import EventLog, bundle_judged, driver_moved
from drivebay.kernel.log_format import slot_fields, use_format
from drivebay.kernel.metrics.meters import Metrics
from drivebay.kernel.reconcile import (
    Action,
    Activate,
    Add,
    Block,
    Facts,
    HandOver,
    Hold,
    MarkFailed,
    Refuse,
    Replace,
    Retire,
    RollBack,
    SlotFacts,
    Start,
    arrange,
    block,
    promote,
    roll_back,
    stale,
    start_wave,
)
from drivebay.kernel.reloading import keep_fixed, spawn_settings
from drivebay.kernel.repos.service import Repositories
from drivebay.kernel.resources.actor import DriverAbsent, ResourceActor
from drivebay.kernel.resources.book import ResourceBook
from drivebay.kernel.resources.store import ResourceStore
from drivebay.kernel.state_lock import StateLock
from drivebay.protocol.errors import DrivebayError, RequestError
from drivebay.protocol.versions import PROTOCOL_MAX
from drivebay.sandbox import containment
from drivebay.sandbox.bundle_errors import quoted, shown
from drivebay.sandbox.bundles import Manifest, StoredBundle, remove_staging, version_key
from drivebay.sandbox.env_key import EnvRequest, env_key
from drivebay.sandbox.envs import collect_garbage, ensure_env
from drivebay.sandbox.fork_server import Templates
from drivebay.sandbox.pidfiles import PidRecords
from drivebay.sandbox.runtime_dir import ensure_runtime_dir

if TYPE_CHECKING:
    from drivebay.kernel.cluster.daemon import DaemonCluster

log = logging.getLogger("drivebay.kernel")

R = TypeVar("R")


class Kernel:
    """The daemon's core, independent of how it is started (CLI or tests)."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._overrides = overrides or {}
        self.state_dir = config.state_path
        self.events = EventLog(config.events.ring_size)  # what happened, for operators
        self.registry = Registry(
            config.drivers_path,
            self.state_dir,
            config.settle_s,
            config.bundles.read_limits(),
            trust=config.trust.policy(),
        )
        self.registry.on_verdict = functools.partial(bundle_judged, self.events)
        self.slots: dict[str, DriverSlot] = {}  # by name@version: what runs or should run
        self.retiring: list[DriverSlot] = []  # being drained after a handover
        self.active: dict[str, str] = {}  # driver -> the version unpinned resources use
        # name@version -> (digest, reason) of a bundle that failed: not started
        # again, also after a restart (kept in the state store), until a new
        # bundle or an operator's start.
        self._failed: dict[str, tuple[str, str]] = {}
        self._replacements: dict[str, StoredBundle] = {}  # same version, new content
        self.book: ResourceBook | None = None
        self.cluster: DaemonCluster | None = None  # with ``cluster:`` in the config
        self._requested: set[str] = set()  # name@version a pin is about to need
        self.last_switch_s = 0.0
        self.plan = Plan()
        self.ready = asyncio.Event()  # the first reconcile is done
        # Told of every state change of every slot, after the kernel's own listener.
        self.state_listeners: list[Callable[[DriverSlot, State], None]] = []
        self._kick = asyncio.Event()
        self._stop = asyncio.Event()
        self._pids = PidRecords(self.state_dir / "run")
        self._lock = StateLock(self.state_dir)
        self._runtime_dir: Path | None = None
        self._spare_nice: ImportNice | None = None  # read at start (spare_priority)
        self._templates: Templates | None = None  # spawn: fork-server (ended after the drivers)
        self._reload_wanted = False
        self._look_again: asyncio.TimerHandle | None = None
        self._awaiting_pass: list[asyncio.Future[None]] = []  # see next_pass
        # Every launch of a driver process: starts a few at a time, spares after the waves.
        self.launches = LaunchGate(bounds_for(usable_cpus()))
        self.repos = Repositories()  # TUF repositories: offers, installs, update check
        self.metrics = Metrics(count_calls=config.metrics.enabled)  # what /metrics shows
        self.tokens = TokenStore(self.state_dir)  # those drivebayctl token new made
        self.peers = PeerRoles()  # Unix peers' roles, looked up off the loop
        # What the descriptor limit (raised at start) allows; read once.
        self.descriptors = descriptor_budget(
            current_limit(), config.control.max_connections, config.restart.spare
        )
        # The one cap on client connections: the control socket's and the HTTP API's.
        self.connections = ConnectionGate(
            self.descriptors.connections,
            self.descriptors.limit if self.descriptors.connections_capped else None,
        )

    # -- running ---------------------------------------------------------------

    async def run(self, serve: Callable[[Kernel], Any] | None = None) -> None:
        """Run until ``shutdown``; ``serve`` starts the control server (an async
        context manager factory taking the kernel)."""
        self._lock.acquire()
        try:
            for pid in self._pids.end_stale():
                log.info("ended stale driver process %d", pid)
            remove_staging(self.state_dir)  # half-written bundle copies of a crash
            self.config.drivers_path.mkdir(parents=True, exist_ok=True)
            self._runtime_dir = ensure_runtime_dir(self.state_dir)
            self._templates = Templates()
            await self._say_containment()
            self._spare_nice = await asyncio.to_thread(spare_priority.for_this_daemon)
            if os.geteuid() == 0 and not self.config.user:
                log.warning(
                    "drivers run as root: set `user:` in the config to run them unprivileged"
                )
            self.book = self._open_book(ResourceStore.open(self.state_dir / "resources.db"))
            log.info("restored %d resources", self.book.restore())
            self._failed = self.book.store.failed_versions()
            if serve is not None:
                async with serve(self):
                    await self._main()
            else:
                await self._main()
        finally:
            self._lock.release()

    def _open_book(self, store: ResourceStore) -> ResourceBook:
        """The resource book: in the cluster's database with ``cluster:``, else in ``store``."""
        timeouts = self.config.timeouts
        args = (store, self._route_when_known, self.schema_for, self.config.mailbox_size)
        if self.config.cluster is None:
            return ResourceBook(*args, timeouts.settle_budget(), events=self.events)
        from drivebay.kernel.cluster.book import ClusterBook  # psycopg only when clustered

        cluster = self.config.cluster
        return ClusterBook(cluster, timeouts.call_s, *args, timeouts.settle_budget(), self.events)

    async def _say_containment(self) -> None:
        """One line at start: what keeps drivers' descendants from outliving them."""
        assert self._runtime_dir is not None
        users = {
            u for u in [self.config.user, *(d.user for d in self.config.drivers.values())] if u
        }
        found = await containment.probe(self._runtime_dir, sorted(users))
        log.log(*containment.summarize(self.config.containment, found))

    async def _main(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                reconciler = group.create_task(self._reconciler(), name="reconciler")
                watcher = group.create_task(self._watch(), name="watcher")
                checks = group.create_task(
                    self.repos.run_checks(self, self._stop), name="update-check"
                )
                self._start_cluster(group)
                await self._stop.wait()
                if self.cluster is not None:
                    await self.cluster.stopped()
                checks.cancel()
                watcher.cancel()
                reconciler.cancel()
        finally:
            await self._stop_all()
            if self._templates is not None:
                await self._templates.close()

    def _start_cluster(self, group: asyncio.TaskGroup) -> None:
        """With ``cluster:`` in the config, this node's cluster side as a task of ``group``."""
        if self.config.cluster is None:
            return
        from drivebay.kernel.cluster.daemon import DaemonCluster  # psycopg only when clustered

        self.cluster = DaemonCluster(self, self.config.cluster)
        self.cluster.start(group)

    def shutdown(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def wait_stopping(self) -> None:
        """Return once ``shutdown`` has been asked for."""
        await self._stop.wait()

    def request_reload(self) -> None:
        """SIGHUP: reload the config in the reconciler (which owns changes)."""
        self._reload_wanted = True
        self.kick()

    def kick(self) -> None:
        """Something changed: reconcile soon."""
        self._kick.set()

    def next_pass(self) -> asyncio.Future[None]:
        """Done when a reconcile pass that began after this call has ended (an
        installed bundle has then been read, and started when newest)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._awaiting_pass.append(done)
        self.kick()
        return done

    async def _watch(self) -> None:
        """Wake the reconciler whenever the drivers directory changes."""
        await watch_drivers(self.config.drivers_path, self.registry, self.kick, self._stop)

    async def _reconciler(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            awaiting, self._awaiting_pass = self._awaiting_pass, []
            if self._reload_wanted:
                self._reload_wanted = False
                try:
                    await self.reload_config()
                except DrivebayError as exc:
                    log.error("reload failed, keeping the old configuration: %s", exc)
            try:
                await self.reconcile()
                self._look_again_later()
                if not self.registry.unsettled:
                    await self.collect_envs()
                await self._end_unused_templates()
            except Exception:  # a kernel bug or a host problem: log it, keep serving
                log.exception("reconciling failed; retrying in 5 s")
                asyncio.get_running_loop().call_later(5, self.kick)
            self.ready.set()
            for done in awaiting:
                if not done.done():
                    done.set_result(None)

    async def _end_unused_templates(self) -> None:
        """With ``spawn: exec`` (a reload may set it) no driver is forked:
        the templates, each an idle interpreter, are ended (the drivers they
        made are not their children and go on). A reload back to
        ``fork-server`` starts them again on the next spawn."""
        if self._templates is not None and self.config.spawn != "fork-server":
            if self._templates.pids():
                log.info("spawn: %s: ending the fork-server templates", self.config.spawn)
            await self._templates.close()

    def _look_again_later(self) -> None:
        """A directory still being copied, or a bundle to retry: reconcile
        again when the registry needs it, although nothing changed."""
        if self._look_again is not None:
            self._look_again.cancel()
            self._look_again = None
        wait = self.registry.look_again_in()
        if wait is not None:
            self._look_again = asyncio.get_running_loop().call_later(wait, self.kick)

    # -- reconciling -----------------------------------------------------------

    async def reconcile(self) -> None:
        """Make the running driver versions match the drivers dir, the pins and
        the plan; hand resources over where a newer version became healthy."""
        await self.registry.rescan()
        available = self.registry.versions(keep={s.bundle.digest for s in self.slots.values()})
        for action in arrange(self._facts(available)):
            await self._apply(action, available)
        self.plan = plan(self._nodes(), self.config.category_order)
        await self._start_by_plan()
        for action in promote(self._facts(available)):
            await self._apply(action, available)
        for key, bundle in list(self._replacements.items()):
            del self._replacements[key]
            old = self.slots.pop(key, None)
            if old is not None:
                await self._replace(old, bundle)
        self._attach_idle_resources()

    def _facts(self, available: dict[str, dict[str, StoredBundle]] | None = None) -> Facts:
        """What reconciling decides from (``kernel.reconcile``), as plain data."""
        pins = tuple(self._requested)
        if self.book is not None:
            pins += tuple(f"{a.driver}@{a.pinned}" for a in self.book.actors.values() if a.pinned)
        return Facts(
            available={
                d: {v: b.digest for v, b in vs.items()} for d, vs in (available or {}).items()
            },
            slots={key: self._slot_facts(slot) for key, slot in self.slots.items()},
            active=dict(self.active),
            failed={key: digest for key, (digest, _) in self._failed.items()},
            pinned=pins,
            replacing=frozenset(self._replacements),
            reload_same_version=self.config.same_version_change == "reload",
            window_s=self.config.restart.window_s,
        )

    @staticmethod
    def _slot_facts(slot: DriverSlot) -> SlotFacts:
        running = slot.state is State.RUNNING
        return SlotFacts(
            driver=slot.manifest.name,
            version=slot.manifest.version,
            digest=slot.bundle.digest,
            state=slot.state,
            reason=slot.lifecycle.reason,
            candidate=slot.candidate,
            held=slot.held,
            requires=tuple(slot.manifest.requires),
            stale_settings=running
            and slot.settings_used != slot.settings_now() != slot.refused_settings,
            refused_digest=slot.refused_digest,
            crash_loop_on_probation=slot.crash_loop_on_probation(),
        )

    async def _apply(self, action: Action, available: dict[str, dict[str, StoredBundle]]) -> None:
        """Carry out one decision of ``kernel.reconcile``."""
        match action:
            case Hold(key):
                slot = self.slots[key]
                name, version = slot.manifest.name, slot.manifest.version
                self._reject_same_version(available[name][version], slot)
                available[name][version] = slot.bundle
            case Replace():
                self._replace_later(action, available)
            case Activate(driver, None):
                self.active.pop(driver, None)
            case Activate(driver, str(version)):
                self.slots[f"{driver}@{version}"].candidate = False
                self.active[driver] = version
            case Retire(key, reason):
                slot = self.slots.pop(key)
                log.info("stopping %s: %s", slot.name, reason)
                await self._retire(slot, reason)
            case Add(key, candidate):
                driver, _, version = key.partition("@")
                self._add_slot(available[driver][version], candidate=candidate)
            case MarkFailed(key, reason):
                slot = self.slots[key]
                if not self._failed_bundle(slot.name, slot.bundle):
                    self._upgrade_abandoned(slot, reason)
                self._mark_failed(slot, reason)
            case HandOver(old, new):
                if old in self.slots and new in self.slots:
                    await self._hand_over(self.slots[old], self.slots[new])
            case RollBack():
                self._apply_now(action)

    def _add_slot(self, bundle: StoredBundle, candidate: bool = False) -> DriverSlot:
        slot = DriverSlot(bundle, self._slot_context())
        slot.candidate = candidate
        slot.meter = self.metrics.meter(slot.manifest.name, slot.manifest.version)
        failed = self._failed.get(slot.name)
        if failed is not None and failed[0] == bundle.digest:  # in an earlier run
            slot.candidate = True  # on probation again if an operator starts it
            slot.stay_failed(
                f"{failed[1]} (kept from before drivebayd restarted; "
                f"drivebayctl start {slot.name} retries it)"
            )
        slot.lifecycle.listen(lambda state: self._on_slot_state(slot, state))
        self.slots[slot.name] = slot
        slot.launch()
        return slot

    def _on_slot_state(self, slot: DriverSlot, state: State) -> None:
        name = slot.manifest.name
        if state is State.RUNNING and not slot.candidate and name not in self.active:
            self.active[name] = slot.manifest.version  # its first good start, however late
        if state is State.FATAL and self.slots.get(slot.name) is slot:
            # A version that crash-looped soon after taking over fails as a
            # new version does (kept across restarts); see reconcile.roll_back.
            rollback = roll_back(self._facts(self.registry.versions()), slot.name)
            if rollback is not None:
                self._apply_now(rollback)
        for listener in list(self.state_listeners):
            listener(slot, state)
        self.kick()

    def _apply_now(self, action: RollBack) -> None:
        """The one decision taken in a listener, where nothing may be awaited."""
        slot = self.slots[action.key]
        log.warning("%s %s; %s serves again", slot.name, action.reason, action.successor)
        undone = {"to": action.successor.rpartition("@")[2], "reason": action.reason}  # a version
        name, version = slot.manifest.name, slot.manifest.version
        self.events.emit("upgrade.rolled_back", driver=name, version=version, data=undone)
        self.metrics.rolled_back(slot.manifest.name)
        self._mark_failed(slot, action.reason)
        del self.active[slot.manifest.name]  # the older version takes over once RUNNING
        slot.fail(action.reason)

    def _nodes(self) -> dict[str, Node]:
        nodes: dict[str, Node] = {}
        for slot in self.slots.values():
            name = slot.manifest.name
            known = nodes.get(name)
            if known is None or self.active.get(name) == slot.manifest.version:
                nodes[name] = Node(name, slot.manifest.category, slot.manifest.requires)
        return nodes

    def _reject_same_version(self, bundle: StoredBundle, slot: DriverSlot) -> None:
        """The running version keeps serving; the changed file shows INVALID
        (worked out on every pass: once it goes, or is fixed, it is forgotten)."""
        self.registry.hold(
            bundle,
            f"{bundle.source.name}: driver.yaml: version: content changed but the version "
            f"is still {bundle.manifest.version} (running: {slot.bundle.source.name}); "
            "raise the version, or set same_version_change: reload",
        )

    def _failed_bundle(self, key: str, bundle: StoredBundle) -> bool:
        failed = self._failed.get(key)
        return failed is not None and failed[0] == bundle.digest

    def _mark_failed(self, slot: DriverSlot, reason: str) -> None:
        """Version ``slot`` failed: the version before it serves, and this
        bundle is not started again (by this daemon or the next one)."""
        if self._failed_bundle(slot.name, slot.bundle):
            return  # every reconcile sees it again; the first reason stands
        self._failed[slot.name] = (slot.bundle.digest, reason)
        if self.book is not None:
            self.book.store.record_failure(slot.name, slot.bundle.digest, reason)

    def forget_failure(self, slot: DriverSlot) -> None:
        """An operator starts a FAILED version: give it a new chance.

        Stored first: when the store refuses, the version stays FAILED in
        memory too, and the operator's ``start`` gets the store's error."""
        if slot.name not in self._failed:
            return
        if self.book is not None:
            self.book.store.forget_failure(slot.name)
        del self._failed[slot.name]

    def running(self, driver: str) -> bool:
        return self._running(driver)

    async def ensure_version(self, driver: str, version: str | None) -> None:
        """Make sure ``driver`` ``version`` runs (for a pin); raises when it cannot."""
        if version is None:
            return
        self.schema_for(driver, version)
        key = f"{driver}@{version}"
        self._requested.add(key)  # wanted from now on: no reconcile may retire it
        try:
            if key not in self.slots:
                bundle = self.registry.versions()[driver][version]
                self._add_slot(bundle).want_running()
            slot = self.slots[key]
            ended = frozenset({State.RUNNING, State.FAILED, State.FATAL, State.BLOCKED})
            state = await slot.wait_settled(self.config.timeouts.settle_budget(), ended)
        finally:
            self._requested.discard(key)
        if state is not State.RUNNING:
            raise RequestError(f"{key} did not start: {slot.state} ({slot.lifecycle.reason})")

    def _running(self, driver: str) -> bool:
        return any(
            s.manifest.name == driver and s.state is State.RUNNING for s in self.slots.values()
        )

    async def _start_by_plan(self) -> None:
        """Start the plan's waves in order, each once the one before has settled."""
        for blocked in block(self._facts(), self.plan.blocked):
            self.slots[blocked.key].block(blocked.reason)
        holding = places_held(slot.state for slot in self.all_slots())
        with self.launches.waves():
            await self._run_waves(holding)

    async def _run_waves(self, holding: int) -> None:
        """The waves; meanwhile the gate admits no spare (``launches.waves``)."""
        for wave in self.plan.waves:
            starting: list[DriverSlot] = []
            for action in start_wave(self._facts(), wave, holding, self.descriptors.drivers):
                slot = self.slots[action.key]
                match action:
                    case Block(_, reason):
                        slot.block(reason)
                    case Refuse():
                        self._refuse_start(slot)
                    case Start(_, reset):
                        holding += 1
                        slot.want_running(reset=reset)
                        starting.append(slot)
            await asyncio.gather(*(self._settle(slot) for slot in starting))
            for slot in starting:
                if slot.state is State.RUNNING and slot.manifest.name not in self.active:
                    self.active[slot.manifest.name] = slot.manifest.version

    def _refuse_start(self, slot: DriverSlot) -> None:
        """No descriptors for one more version: it stays STOPPED, saying why."""
        slot.refuse_start(self.descriptors.refusal())

    def _replace_stale_settings(self) -> None:
        """Running versions spawned with settings the config no longer has are
        handed over to a new process (``reconcile.stale``). Checked on every
        pass, so a version that was starting (or restarting from a spare)
        during a reload is caught once it runs."""
        for action in stale(self._facts(self.registry.versions())):
            self._replace_later(action, {})

    def _replace_later(
        self, action: Replace, available: dict[str, dict[str, StoredBundle]]
    ) -> None:
        slot = self.slots[action.key]
        if action.fresh:
            bundle = available[slot.manifest.name][slot.manifest.version]
        else:
            log.info("settings of %s changed; handing it over to a new process", slot.name)
            bundle = slot.bundle
        self._replacements[action.key] = bundle

    async def _hand_over(self, old: DriverSlot, new: DriverSlot) -> None:
        name = new.manifest.name
        assert self.book is not None
        actors = [a for a in self.book.actors.values() if a.driver == name and not a.pinned]
        self.active[name] = new.manifest.version
        budget = self.config.timeouts.handover_budget(old.call_timeout, new.call_timeout)
        result = await hand_over(old, new, actors, budget, self.events, self.config.handover_moves)
        self.last_switch_s = result.switch_s
        self.metrics.handed_over(name, result.switch_s, result.ok, upgrade=True)
        if not result.ok:
            self.active[name] = old.manifest.version
            self._mark_failed(new, f"rolled back: {result.reason}")
            new.fail(f"rolled back: {result.reason}")
            await new.wait_settled(
                self.config.timeouts.settle_budget(), frozenset({State.FAILED, State.STOPPED})
            )
            return
        new.candidate = False
        new.took_over()
        pinned_here = any(
            a.pinned == old.manifest.version and a.driver == name for a in self.book.actors.values()
        )
        if not pinned_here:
            del self.slots[old.name]
            await self._retire(old)
        self._upgrade_finished(old, new)

    def _upgrade_abandoned(self, slot: DriverSlot, reason: str) -> None:
        """A new version failed its start or first health check while another
        serves: the upgrade is rolled back before anything moved."""
        name, version = slot.manifest.name, slot.manifest.version
        serving = self.active.get(name)
        if serving is None or serving == version:
            return  # nothing served before it: no upgrade
        undone = {"to": serving, "reason": reason}
        self.events.emit("upgrade.rolled_back", driver=name, version=version, data=undone)
        self.metrics.rolled_back(name)

    def _upgrade_finished(self, old: DriverSlot, new: DriverSlot) -> None:
        name, version = new.manifest.name, new.manifest.version
        done = {"from": old.manifest.version, "old_state": str(old.state)}
        self.events.emit("upgrade.finished", driver=name, version=version, data=done)

    async def _replace(self, old: DriverSlot, bundle: StoredBundle) -> None:
        """Same version, new content or settings: a fresh process, then a handover.

        The old slot is shown (``retiring``) until it has handed over; on any
        failure, a cancel included, it serves on and the new one is closed."""
        self.retiring.append(old)
        new = self._add_slot(bundle, candidate=True)
        moved = False
        try:
            new.want_running()
            ended = frozenset({State.RUNNING, State.FAILED, State.FATAL, State.BLOCKED})
            await new.wait_settled(self.config.timeouts.settle_budget(), ended)
            if new.state is not State.RUNNING:
                self._replacement_failed(old, new, new.lifecycle.reason)
                return
            self.slots[new.name] = new
            assert self.book is not None
            actors = [a for a in self.book.actors.values() if a.bound is old]
            budget = self.config.timeouts.handover_budget(old.call_timeout, new.call_timeout)
            result = await hand_over(
                old, new, actors, budget, self.events, self.config.handover_moves
            )
            self.metrics.handed_over(old.manifest.name, result.switch_s, result.ok, upgrade=False)
            moved = result.ok
            if not moved:
                self._replacement_failed(old, new, result.reason)
        finally:
            self.retiring.remove(old)
            if not moved:
                self.slots[old.name] = old
                await new.close()
        if not moved:
            return  # the old process serves on; only a success retires it
        new.candidate = False
        await self._retire(old)
        self._upgrade_finished(old, new)

    @staticmethod
    def _replacement_failed(old: DriverSlot, new: DriverSlot, reason: str) -> None:
        """Remember what was tried, so reconciling does not try it again and again."""
        if new.bundle.digest != old.bundle.digest:
            old.refused_digest = new.bundle.digest
        else:
            old.refused_settings = new.settings_used
        log.warning(
            "replacement of %s failed (%s); the old process keeps serving, and the "
            "replacement is tried again when its settings or its bundle change",
            old.name,
            reason,
        )

    async def _retire(self, slot: DriverSlot, reason: str = "superseded") -> None:
        """Drain and stop a version nobody uses any more; status shows it meanwhile."""
        self.retiring.append(slot)
        try:
            await slot.close(retire=reason)
        finally:
            self.retiring.remove(slot)

    def _attach_idle_resources(self) -> None:
        """Resources are live as soon as their version runs, not at their first call."""
        if self.book is None:
            return
        for actor in self.book.actors.values():
            try:
                route = self._route(actor)
            except DrivebayError:
                continue
            bound = actor.bound
            if route is not bound and route.state is State.RUNNING and not route.candidate:
                actor.rebind(route)  # misrouted (a pin changed, its version went away)
            elif bound is not None and actor.needs_attach(bound):
                actor.rebind(bound)  # its version restarted: attach-time work resumes
            elif bound is None and actor.needs_attach(route):
                actor.rebind(route)

    async def _settle(self, slot: DriverSlot) -> None:
        try:
            await slot.wait_settled(self.config.timeouts.settle_budget(), SETTLED_OK)
        except RequestError as exc:
            log.warning("%s", exc)

    async def stop_in_waves(
        self, slots: list[DriverSlot], stop: Callable[[DriverSlot], Awaitable[R]]
    ) -> list[R]:
        """Run ``stop`` on ``slots`` in the reverse of the start waves, each
        wave concurrently (dependents before what they depend on); the
        results in that order. Shutdown and ``drivebayctl stop`` use it."""
        results: list[R] = []
        for group in stop_order(self.plan, slots, lambda slot: slot.manifest.name):
            results.extend(await asyncio.gather(*(stop(slot) for slot in group)))
        return results

    async def _stop_all(self) -> None:
        """Stop every driver, dependents before what they depend on."""
        if self.book is not None:
            await self.book.close()
        await self.stop_in_waves(list(self.slots.values()), lambda slot: slot.close())
        await asyncio.gather(
            *(slot.close() for slot in [*self.slots.values(), *self.retiring]),
            return_exceptions=True,
        )

    # -- routing resources -------------------------------------------------------

    async def _route_when_known(self, actor: ResourceActor) -> DriverSlot:
        """``_route`` once the drivers dir has been read: a call that comes
        while the daemon starts waits for its driver (bounded), instead of
        being told that a driver it has not looked for yet is not installed."""
        if not self.ready.is_set():
            with contextlib.suppress(TimeoutError):  # still not read: _route says what it knows
                await asyncio.wait_for(self.ready.wait(), self.config.timeouts.start_s)
        return self._route(actor)

    def _route(self, actor: ResourceActor) -> DriverSlot:
        """The slot ``actor`` must use: its pinned version, else the active one."""
        version = actor.pinned or self.active.get(actor.driver)
        if version is None:
            first = next((s for s in self.slots.values() if s.manifest.name == actor.driver), None)
            if first is not None:
                return first
            raise DriverAbsent(
                f"driver {actor.driver} is not installed; drop its bundle into "
                f"{self.config.drivers_path} (resource {actor.resource_id} is kept)"
            )
        found = self.slots.get(f"{actor.driver}@{version}")
        if found is None:
            raise DriverAbsent(
                f"{actor.driver} {version} is not installed; drop that bundle, or "
                f"drivebayctl resource pin {actor.resource_id} --unpin"
            )
        return found

    def schema_for(self, driver: str, version: str | None) -> Manifest:
        installed = self.registry.versions()
        versions = installed.get(driver)
        if not versions:
            raise DriverAbsent(
                f"driver {driver} is not installed{nearest_name(driver, installed)}; "
                f"drop its bundle into {self.config.drivers_path}"
            )
        if version is None:
            version = self.active.get(driver) or max(versions, key=version_key)
        bundle = versions.get(version)
        if bundle is None:
            known = ", ".join(sorted(versions, key=version_key))
            raise DriverAbsent(f"{driver} has no version {version} (installed: {known})")
        return bundle.manifest

    # -- what slots need -------------------------------------------------------

    def _slot_context(self) -> SlotContext:
        assert self._runtime_dir is not None
        return SlotContext(
            current_config=lambda: self.config,
            runtime_dir=self._runtime_dir,
            prepare=self._prepare_env,
            on_spawn=self._pids.record,
            on_reap=self._pids.forget,
            on_event=self._on_event,
            on_move=self._on_move,
            launches=self.launches,
            on_spare=self._on_spare,
            spare_nice=self._spare_nice,
            templates=self._templates,
        )

    def _on_move(self, slot: DriverSlot, move: Transition) -> None:
        name, version = slot.manifest.name, slot.manifest.version
        driver_moved(self.events, name, version, move, slot.restarts.total, slot.next_retry_at)

    def _on_spare(self, slot: DriverSlot, pid: int) -> None:
        data = {"pid": pid}
        self.events.emit(
            "driver.spare", driver=slot.manifest.name, version=slot.manifest.version, data=data
        )

    def _on_event(self, slot: str, resource_id: str, name: str, data: Any) -> None:
        log.info(  # the driver's strings escaped, as its log lines are
            "event from %s: %s %s %s",
            slot,
            shown(resource_id),
            shown(name),
            shown(str(data)),
            extra=slot_fields(slot, "driver_event", resource=resource_id),
        )
        actor = self.book.actors.get(resource_id) if self.book is not None else None
        if actor is not None:
            actor.last_event = {"name": name, "data": data, "at": time.time(), "from": slot}

    def _env_request(self, bundle: StoredBundle) -> EnvRequest:
        settings = self.config.for_driver(bundle.manifest.name)
        lib = bundle.path / "lib"
        return EnvRequest(
            python=Path(settings.python or self.config.python or sys.executable),
            dependencies=tuple(bundle.manifest.dependencies),
            wheels=bundle.wheels,
            wheel_dir=lib if bundle.wheels else None,
            protocol_version=PROTOCOL_MAX,
        )

    async def collect_envs(self) -> list[str]:
        """Remove environments no known bundle version needs. Only for a private
        envs dir: a shared one (``envs_dir:``) may serve other daemons."""
        if self.config.envs_dir is not None:
            return []
        bundles = [b for versions in self.registry.versions().values() for b in versions.values()]
        keep = await asyncio.to_thread(lambda: {env_key(self._env_request(b)) for b in bundles})
        keep.update(slot.env_key for slot in self.all_slots() if slot.env_key)
        removed = await asyncio.to_thread(collect_garbage, self.config.envs_path, keep)
        for key in removed:
            log.info("removed unused environment %s", key[:12])
        if self._templates is not None and removed:
            await self._templates.retire([self.config.envs_path / key for key in removed])
        return removed

    async def _prepare_env(self, bundle: StoredBundle) -> tuple[Path, str]:
        request = self._env_request(bundle)
        env = await ensure_env(
            request,
            self.config.envs_path,
            uv_cache=self.config.uv_cache_path,
            on_built=self.metrics.env_built,
        )
        return env.python, env.key

    async def reload_config(self) -> tuple[list[str], list[str]]:
        """Re-read the config file (SIGHUP, ``drivebayctl reload``) and rescan.

        Every setting reaches what runs as ``kernel.reloading.EFFECTS`` says:
        live ones at once (also in running slots), drivers whose spawned
        settings changed are handed over to a fresh process (returned first),
        settings fixed at start keep their old value (returned second, and
        logged). Raises ConfigError (nothing changed) when the new file is
        invalid.
        """
        from drivebay.kernel.config import load_config

        fresh, fixed = keep_fixed(self.config, load_config(self.config_path, self._overrides))
        # Reads key files (and may load cryptography): off the loop. A file
        # that cannot be read refuses the reload.
        trust = await asyncio.to_thread(fresh.trust.policy)
        changed = sorted(
            {
                slot.manifest.name
                for slot in self.slots.values()
                if spawn_settings(fresh, slot.manifest.name)
                != spawn_settings(self.config, slot.manifest.name)
            }
        )
        self.config = fresh
        self.repos.changed.set()  # the update check's interval may be another
        logging.getLogger().setLevel(fresh.log_level)
        use_format(fresh.log_format)
        self.registry.settle_s = fresh.settle_s
        self.registry.limits = fresh.bundles.read_limits()
        self.registry.trust = trust
        self.events.resize(fresh.events.ring_size)
        for path in (fresh.socket_path, fresh.http_socket_path):  # users may have been named
            with contextlib.suppress(OSError):
                os.chmod(path, socket_mode(fresh))
        for slot in self.all_slots():
            slot.reconfigure()
        self._replace_stale_settings()
        self.kick()
        log.info("configuration reloaded from %s", self.config_path or "defaults")
        for key in fixed:
            log.warning("reload: %s changed; it takes effect when drivebayd restarts", key)
        return changed, fixed

    # -- lookups for commands --------------------------------------------------

    def slot(self, name: str) -> DriverSlot:
        """The slot for ``name@version``, or for ``name`` (its active version)."""
        driver, _, version = name.partition("@")
        version = version or self.active.get(driver, "")
        slot = self.slots.get(f"{driver}@{version}")
        if slot is None and not version:
            slot = next((s for s in self.slots.values() if s.manifest.name == driver), None)
        if slot is None:
            raise no_such_driver(name, sorted(self.slots))
        return slot

    def all_slots(self) -> list[DriverSlot]:
        """Every slot status shows: serving ones and ones being drained."""
        return [*self.slots.values(), *self.retiring]


def nearest_name(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'mis'?)`` for the name of ``known`` closest to
    ``name`` (as difflib sees it, as for manifest fields), else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {quoted(close[0])}?)" if close else ""
