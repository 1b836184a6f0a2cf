"""What a reload does with each setting: the table, and that each reaches its place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from drivebay.kernel.config import (
    Config,
    ControlSettings,
    EventSettings,
    LimitSettings,
    LogSettings,
    TimeoutSettings,
)
from drivebay.kernel.drivers.process import DriverProcess
from drivebay.kernel.drivers.restarts import RestartPolicy
from drivebay.kernel.drivers.slot import DriverSlot, SlotContext
from drivebay.kernel.kernel import Kernel
from drivebay.kernel.reloading import EFFECTS, Effect, keep_fixed, spawn_settings
from drivebay.sandbox.bundles import load_bundle
from tests.helpers import fixture_spec, run
from tests.sandbox.bundles import make_bundle

# A value different from the default, per top-level key.
CHANGED: dict[str, Any] = {
    "state_dir": "/elsewhere",
    "drivers_dir": "/elsewhere/drop",
    "socket": "/elsewhere/ctl.sock",
    "socket_group": "ops",
    "envs_dir": "/elsewhere/envs",
    "mailbox_size": 7,
    "control": ControlSettings(max_connections=9),
    "http": {"listen": "127.0.0.1:9"},
    "uv_cache_dir": "/elsewhere/uv",
    "category_order": ("storage",),
    "settle_s": 9.0,
    "handover_moves": 9,
    "same_version_change": "reload",
    "restart": RestartPolicy(max_restarts=9),
    "timeouts": TimeoutSettings(call_s=9),
    "bundles": msgspec.structs.replace(Config().bundles, max_members=9),
    "log_level": "DEBUG",
    "log_format": "json",
    "python": "/usr/bin/python3",
    "user": "nobody",
    "max_frame_bytes": 9999,
    "limits": LimitSettings(memory_mb=9),
    "logs": LogSettings(max_bytes=9),
    "containment": "process_group",
    "scheduling": "batch",
    "spawn": "exec",
    "trust": {"signatures": "warn"},
    "repositories": [{"name": "acme", "url": "https://127.0.0.1/", "root": "/root.json"}],
    "update_check_interval_s": 60,
    "auto_update": True,
    "events": EventSettings(ring_size=9),
    "metrics": {"listen": "127.0.0.1:9464"},
    "authorization": {"groups": {"ops": "viewer"}},
    "drivers": {"alpha": {"env": {"A": "1"}}},
    "cluster": {"database": "postgresql://db.example/drivebay", "node_id": "n1"},
}


def test_every_setting_says_what_a_reload_does_with_it():
    assert set(EFFECTS) == set(Config.__struct_fields__) == set(CHANGED)


def slot_under(tmp_path: Path, config: Callable[[], Config]) -> DriverSlot:
    """A slot of driver alpha reading ``config()`` as the kernel's config now
    (nothing is built or spawned)."""
    bundle = load_bundle(make_bundle(tmp_path / "drop", name="alpha"), tmp_path / "state")

    async def prepare(_: Any) -> tuple[Path, str]:
        raise AssertionError("not started here")

    context = SlotContext(
        current_config=config,
        runtime_dir=tmp_path,
        prepare=prepare,
        on_spawn=lambda *_: None,
        on_reap=lambda *_: None,
        on_event=lambda *_: None,
    )
    return DriverSlot(bundle, context)


@pytest.mark.parametrize("key", sorted(EFFECTS))
def test_a_new_process_exactly_for_the_settings_spawned_into_it(tmp_path, key):
    config = Config()
    slot = slot_under(tmp_path, lambda: config)
    before = slot.settings_now()
    config = msgspec.convert({key: CHANGED[key]}, Config)
    assert (slot.settings_now() != before) is (EFFECTS[key] is Effect.RESPAWN)
    if key == "drivers":
        assert spawn_settings(config, "beta") == spawn_settings(Config(), "beta")


def test_a_driver_s_auto_update_is_not_spawned_into_it():
    config = msgspec.convert({"drivers": {"alpha": {"auto_update": True}}}, Config)
    assert spawn_settings(config, "alpha") == spawn_settings(Config(), "alpha")


@pytest.mark.parametrize("key", [k for k, e in EFFECTS.items() if e is Effect.RESTART])
def test_settings_fixed_at_start_keep_their_value_and_are_named(key):
    new = msgspec.convert({key: CHANGED[key]}, Config)
    kept, named = keep_fixed(Config(), new)
    assert named == [key]
    assert kept == Config()


def test_a_reload_reaches_the_registry_and_keeps_what_needs_a_restart(tmp_path):
    config_path = tmp_path / "drivebay.yaml"
    base = {"state_dir": str(tmp_path / "state"), "mailbox_size": 10, "settle_s": 1.0}
    config_path.write_text(yaml.safe_dump(base))
    from drivebay.kernel.config import load_config

    kernel = Kernel(load_config(config_path), config_path)
    reload = {**base, "mailbox_size": 20, "settle_s": 3.0, "bundles": {"max_members": 5}}
    reload["category_order"] = ["storage"]
    config_path.write_text(yaml.safe_dump(reload))
    changed, fixed = run(kernel.reload_config())
    assert (changed, fixed) == ([], ["mailbox_size"])
    assert kernel.registry.settle_s == 3.0
    assert kernel.registry.limits.max_members == 5
    assert kernel.config.category_order == ("storage",)  # the next plan uses it
    assert kernel.config.mailbox_size == 10


# The driver process holds the config's own timeouts type: each setting is its field.
DEADLINES = "start_s ping_interval_s ping_timeout_s call_s drain_s term_s kill_s"
TIMEOUTS = {name: name for name in DEADLINES.split()}


@pytest.mark.parametrize(("setting", "field"), sorted(TIMEOUTS.items()))
def test_a_reloaded_timeout_reaches_the_running_process(tmp_path, setting, field):
    config = Config(state_dir=str(tmp_path / "state"))

    async def main() -> None:
        nonlocal config
        slot = slot_under(tmp_path, lambda: config)
        # A process as the slot holds it while it runs (not spawned: only its
        # deadlines are looked at).
        slot.process = DriverProcess(fixture_spec(tmp_path), slot._timeouts())
        before = getattr(slot.process.timeouts, field)
        config = msgspec.structs.replace(
            config, timeouts=msgspec.structs.replace(config.timeouts, **{setting: 123.0})
        )
        slot.reconfigure()
        assert before != 123.0
        assert getattr(slot.process.timeouts, field) == 123.0

    run(main())


@pytest.mark.parametrize("key", sorted(EFFECTS))
def test_a_reload_takes_each_setting_as_the_table_says(tmp_path, key):
    import logging

    from drivebay.kernel.config import load_config

    config_path = tmp_path / "drivebay.yaml"
    base = {"state_dir": str(tmp_path / "state")}
    config_path.write_text(yaml.safe_dump(base))
    kernel = Kernel(load_config(config_path), config_path)
    before = kernel.config
    config_path.write_text(yaml.safe_dump({**base, key: msgspec.to_builtins(CHANGED[key])}))
    level = logging.getLogger().level
    try:
        _, fixed = run(kernel.reload_config())
        daemon_level = logging.getLevelName(logging.getLogger().level)
    finally:
        logging.getLogger().setLevel(level)
    assert daemon_level == kernel.config.log_level  # the daemon's own level follows at once
    new = getattr(load_config(config_path), key)
    if EFFECTS[key] is Effect.RESTART:
        assert (fixed, getattr(kernel.config, key)) == ([key], getattr(before, key))
    else:
        # Read from the kernel's config where used, pushed to slots and
        # registry by the reload, or compared with each running process.
        assert (fixed, getattr(kernel.config, key)) == ([], new)
