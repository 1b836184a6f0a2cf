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
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import watchfiles

from kernel.config import Config
from kernel.ordering import Node, Plan, plan
from kernel.registry import Registry
from kernel.state_lock import StateLock
from kernel.states import SETTLED_OK, State
from kernel.supervisor import DriverSlot, SlotContext
from protocol.errors import DrivebayError, NoSuchName, RequestError
from protocol.versions import PROTOCOL_MAX
from sandbox.bundles import StoredBundle, remove_staging
from sandbox.env_key import EnvRequest
from sandbox.envs import ensure_env
from sandbox.pidfiles import PidRecords
from sandbox.runtime_dir import ensure_runtime_dir

log = logging.getLogger("drivebay.kernel")


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
        self.registry = Registry(config.drivers_path, self.state_dir, config.settle_s)
        self.slots: dict[str, DriverSlot] = {}  # by driver name (one version each, for now)
        self.plan = Plan()
        self.ready = asyncio.Event()  # the first reconcile is done
        self._kick = asyncio.Event()
        self._stop = asyncio.Event()
        self._pids = PidRecords(self.state_dir / "run")
        self._lock = StateLock(self.state_dir)
        self._runtime_dir: Path | None = None
        self._reload_wanted = False

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
            if os.geteuid() == 0 and not self.config.user:
                log.warning(
                    "drivers run as root: set `user:` in the config to run them unprivileged"
                )
            if serve is not None:
                async with serve(self):
                    await self._main()
            else:
                await self._main()
        finally:
            self._lock.release()

    async def _main(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                reconciler = group.create_task(self._reconciler(), name="reconciler")
                watcher = group.create_task(self._watch(), name="watcher")
                await self._stop.wait()
                watcher.cancel()
                reconciler.cancel()
        finally:
            await self._stop_all()

    def shutdown(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_reload(self) -> None:
        """SIGHUP: reload the config in the reconciler (which owns changes)."""
        self._reload_wanted = True
        self.kick()

    def kick(self) -> None:
        """Something changed: reconcile soon."""
        self._kick.set()

    async def _watch(self) -> None:
        """Wake the reconciler whenever the drivers directory changes."""
        self.kick()
        async for _ in watchfiles.awatch(
            self.config.drivers_path,
            stop_event=self._stop,
            debounce=200,
            step=50,
            recursive=True,
            ignore_permission_denied=True,
        ):
            self.kick()

    async def _reconciler(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._reload_wanted:
                self._reload_wanted = False
                try:
                    await self.reload_config()
                except DrivebayError as exc:
                    log.error("reload failed, keeping the old configuration: %s", exc)
            await self.reconcile()
            self.ready.set()
            if self.registry.unsettled:
                # A directory still being copied: look again once it may have settled.
                asyncio.get_running_loop().call_later(self.config.settle_s, self.kick)

    # -- reconciling -----------------------------------------------------------

    async def reconcile(self) -> None:
        """Make the running drivers match the drivers directory and the plan."""
        await self.registry.rescan()
        wanted = self.registry.newest()
        for name in list(self.slots):
            slot = self.slots[name]
            bundle = wanted.get(name)
            if bundle is None or bundle.manifest.version != slot.manifest.version:
                reason = (
                    "bundle removed"
                    if bundle is None
                    else f"superseded by {bundle.manifest.version}"
                )
                log.info("stopping %s: %s", slot.name, reason)
                await self._remove_slot(name)
            elif bundle.digest != slot.bundle.digest:
                if self.config.same_version_change == "reload":
                    log.info("%s changed in place; restarting it", slot.name)
                    await self._remove_slot(name)
                else:
                    self._reject_same_version(bundle, slot)
                    wanted[name] = slot.bundle
        for name, bundle in wanted.items():
            if name not in self.slots:
                slot = DriverSlot(bundle, self._slot_context())
                slot.lifecycle.listen(lambda _state: self.kick())
                self.slots[name] = slot
                slot.launch()
        self.plan = plan(
            {
                name: Node(name, s.manifest.category, s.manifest.requires)
                for name, s in self.slots.items()
            },
            self.config.category_order,
        )
        await self._start_by_plan()

    def _reject_same_version(self, bundle: StoredBundle, slot: DriverSlot) -> None:
        for entry in self.registry.entries.values():
            if entry.bundle is bundle:
                entry.error = (
                    f"{entry.path.name}: driver.yaml: version: content changed but the version "
                    f"is still {bundle.manifest.version} (running: {slot.bundle.source.name}); "
                    "raise the version, or set same_version_change: reload"
                )
                entry.bundle = None
                log.warning("rejected bundle: %s", entry.error)

    async def _start_by_plan(self) -> None:
        for name, reason in self.plan.blocked.items():
            self.slots[name].block(reason)
        for wave in self.plan.waves:
            starting = []
            for name in wave:
                slot = self.slots[name]
                unmet = [
                    need
                    for need in slot.manifest.requires
                    if self.slots[need].state is not State.RUNNING
                ]
                if unmet:
                    slot.block(f"requires {', '.join(unmet)}, which is not running")
                elif not slot.held and slot.state in (State.STOPPED, State.BLOCKED):
                    slot.want_running(reset=slot.state is State.BLOCKED)
                    starting.append(slot)
            await asyncio.gather(*(self._settle(slot) for slot in starting))

    async def _settle(self, slot: DriverSlot) -> None:
        budget = self.config.timeouts.start_s * 2 + 600  # a first env build may download
        try:
            await slot.wait_settled(budget, SETTLED_OK)
        except RequestError as exc:
            log.warning("%s", exc)

    async def _remove_slot(self, name: str) -> None:
        slot = self.slots.pop(name)
        await slot.close()

    async def _stop_all(self) -> None:
        """Stop every driver, dependents before what they depend on."""
        for wave in self.plan.stop_waves():
            await asyncio.gather(*(self.slots[n].close() for n in wave if n in self.slots))
        await asyncio.gather(*(slot.close() for slot in self.slots.values()))

    # -- what slots need -------------------------------------------------------

    def _slot_context(self) -> SlotContext:
        assert self._runtime_dir is not None
        return SlotContext(
            config=self.config,
            runtime_dir=self._runtime_dir,
            prepare=self._prepare_env,
            on_spawn=self._pids.record,
            on_reap=self._pids.forget,
        )

    async def _prepare_env(self, bundle: StoredBundle) -> tuple[Path, str]:
        settings = self.config.for_driver(bundle.manifest.name)
        lib = bundle.path / "lib"
        request = EnvRequest(
            python=Path(settings.python or self.config.python or sys.executable),
            dependencies=tuple(bundle.manifest.dependencies),
            wheels=bundle.wheels,
            wheel_dir=lib if bundle.wheels else None,
            protocol_version=PROTOCOL_MAX,
        )
        cache = Path(self.config.uv_cache_dir).expanduser() if self.config.uv_cache_dir else None
        env = await ensure_env(request, self.config.envs_path, uv_cache=cache)
        return env.python, env.key

    async def reload_config(self) -> list[str]:
        """Re-read the config file (SIGHUP, ``drivebayctl reload``) and rescan.

        Drivers whose settings changed are restarted with the new settings;
        returns their names. Raises ConfigError (nothing changed) when the
        new file is invalid. State dir, socket and drivers dir keep the values
        the daemon started with.
        """
        from kernel.config import load_config

        fresh = load_config(self.config_path, self._overrides)
        fresh = msgspec.structs.replace(
            fresh,
            state_dir=self.config.state_dir,
            drivers_dir=self.config.drivers_dir,
            socket=self.config.socket,
        )
        changed = [
            name
            for name in self.slots
            if fresh.for_driver(name) != self.config.for_driver(name)
            or fresh.limits != self.config.limits
        ]
        self.config = fresh
        self.registry.settle_s = fresh.settle_s
        for name in changed:
            log.info("settings of %s changed; restarting it", name)
            await self._remove_slot(name)
        self.kick()
        log.info("configuration reloaded from %s", self.config_path or "defaults")
        return changed

    # -- lookups for commands --------------------------------------------------

    def slot(self, name: str) -> DriverSlot:
        """The slot for ``name`` or ``name@version``; RequestError when unknown."""
        driver, _, version = name.partition("@")
        slot = self.slots.get(driver)
        if slot is None or (version and slot.manifest.version != version):
            known = ", ".join(sorted(s.name for s in self.slots.values())) or "none"
            raise NoSuchName(f"no such driver: {name} (known: {known})")
        return slot
