"""The drivers dir: bounded walks, top-level links, rescans that walk only what
changed, and bundles retried after a failure of the host. Real files, no
daemon."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from drivebay.kernel.config import BundleLimitSettings
from drivebay.kernel.drivers.directory import list_candidates, settled, walk
from drivebay.kernel.drivers.load_retry import LoadRetries, RetryPolicy
from drivebay.kernel.drivers.registry import WATCH_MAX_DIRS, Registry
from drivebay.sandbox.bundle_limits import ReadLimits
from tests.helpers import run
from tests.sandbox.bundles import make_bundle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wide_tree(root: Path, folders: int, files: int) -> Path:
    for i in range(folders):
        folder = root / f"d{i:03}"
        folder.mkdir(parents=True)
        for j in range(files):
            (folder / f"f{j:04}").touch()
    return root


def only(drivers: Path, name: str):  # type: ignore[no-untyped-def]
    return list_candidates(drivers)[drivers / name]


def test_a_walk_stops_at_the_entry_limit(tmp_path):
    drivers = tmp_path / "drivers"
    wide_tree(drivers / "huge", folders=40, files=100)  # 4,040 entries
    seen = walk(only(drivers, "huge"), ReadLimits(max_members=100))
    assert seen.refused == "huge: more than 100 entries; a bundle may hold at most 100"
    assert seen.visited <= 100
    assert len(seen.dirs) <= seen.visited + 1  # the root and the folders it met


def test_a_walk_stops_at_the_depth_limit(tmp_path):
    drivers = tmp_path / "drivers"
    deep = drivers / "deep"
    (deep / "/".join(f"n{i}" for i in range(100))).mkdir(parents=True)
    seen = walk(only(drivers, "deep"), BundleLimitSettings(max_depth=5).read_limits())
    assert seen.refused is not None and "nested deeper than 5 folders" in seen.refused
    assert seen.visited <= 6


def test_a_walk_stops_at_the_byte_limit(tmp_path):
    drivers = tmp_path / "drivers"
    big = drivers / "big"
    big.mkdir(parents=True)
    for i in range(50):
        with open(big / f"f{i:02}", "wb") as handle:
            handle.truncate(1 << 20)  # sparse: sizes without the disk
    seen = walk(only(drivers, "big"), ReadLimits(max_total_bytes=3 << 20))
    assert seen.refused == "big: more than 3 MiB in total; a bundle may hold at most 3 MiB"
    assert seen.visited <= 4


def test_a_top_level_link_is_refused_unwalked_and_named(tmp_path):
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    (drivers / "oops").symlink_to("/")
    (drivers / "usr").symlink_to("/usr")
    (drivers / "notes").symlink_to("/etc/hostname")  # a file, not named .zip: not a bundle
    (drivers / ".hidden").symlink_to("/")
    tops = list_candidates(drivers)
    assert sorted(p.name for p in tops) == ["oops", "usr"]
    seen = walk(tops[drivers / "oops"], ReadLimits())
    assert seen.visited == 0 and seen.dirs == ()
    assert seen.refused == (
        "oops: is a symbolic link (to /); put the bundle itself in the drivers dir, "
        "not a link to it"
    )


def test_a_link_inside_a_bundle_is_not_entered(tmp_path):
    drivers = tmp_path / "drivers"
    bundle = make_bundle(drivers)
    (bundle / "src" / "root").symlink_to("/")
    seen = walk(only(drivers, bundle.name), ReadLimits())
    assert seen.refused is None
    assert seen.visited == 5  # driver.yaml, LICENSE, src, its module, the link: nothing of /
    assert bundle / "src" / "root" not in seen.dirs


def test_a_directory_settles_when_quiet_or_unchanged_long_enough(tmp_path):
    seen = walk(only(tmp_path, make_bundle(tmp_path, "x").name), ReadLimits())
    newest = seen.newest_ns / 1e9
    assert settled(seen, 0.0, newest + 1.0, settle_s=1.0)  # quiet for 1 s
    assert not settled(seen, 0.5, newest + 0.5, settle_s=1.0)  # just written
    assert settled(seen, 1.0, newest - 60, settle_s=1.0)  # a future mtime, unchanged for 1 s


def test_an_invalid_tree_is_not_walked_again_until_it_changes(tmp_path):
    drivers = tmp_path / "drivers"
    wide_tree(drivers / "huge", folders=20, files=100)
    (drivers / "oops").symlink_to("/usr")
    registry = Registry(drivers, tmp_path / "state", settle_s=0, limits=ReadLimits(max_members=50))
    assert run(registry.rescan())
    huge, oops = registry.entries[drivers / "huge"], registry.entries[drivers / "oops"]
    assert [registry.verdict(e) for e in (huge, oops)] == [
        "huge: more than 50 entries; a bundle may hold at most 50",
        "oops: is a symbolic link (to /usr); put the bundle itself in the drivers dir, "
        "not a link to it",
    ]
    first = huge.walk
    assert not run(registry.rescan())
    assert registry.entries[drivers / "huge"].walk is first  # not walked again
    (drivers / "huge" / "d019" / "f0000").unlink()  # deep inside: the watcher says so
    registry.touched([str(drivers / "huge" / "d019" / "f0000")])
    run(registry.rescan())
    again = registry.entries[drivers / "huge"]
    assert again.walk is not first  # walked again
    assert registry.verdict(again) == "huge: more than 50 entries; a bundle may hold at most 50"
    shutil.rmtree(drivers / "huge")
    (drivers / "huge").mkdir()
    assert run(registry.rescan())  # changed at the top: walked without being told
    verdict = registry.verdict(registry.entries[drivers / "huge"])
    assert verdict is not None and verdict.startswith("huge: driver.yaml: missing")


def test_a_bundle_that_could_not_be_stored_is_retried_with_backoff(tmp_path):
    drivers, state = tmp_path / "drivers", tmp_path / "state"
    make_bundle(drivers, "alpha")
    state.mkdir()
    (state / "bundles").write_text("in the way")  # the store cannot be made
    clock = Clock()
    retries: LoadRetries[Path] = LoadRetries(RetryPolicy(initial_s=1, max_s=4), clock)
    registry = Registry(drivers, state, settle_s=0, retries=retries)
    run(registry.rescan())
    [entry] = registry.entries.values()
    assert entry.bundle is None and entry.error is not None
    assert "cannot store bundle" in entry.error and "trying again at" in entry.error
    assert registry.look_again_in() == 1
    clock.now += 1
    run(registry.rescan())  # due: tried again, failed again
    assert registry.look_again_in() == 2
    (state / "bundles").unlink()  # the cause goes
    clock.now += 1
    run(registry.rescan())  # not due yet: still refused
    assert registry.verdict(registry.entries[entry.path]) is not None
    clock.now += 1
    assert run(registry.rescan())
    assert registry.entries[entry.path].bundle is not None
    assert registry.invalid() == [] and registry.look_again_in() is None


def test_a_bundle_fault_is_final_until_the_bundle_changes(tmp_path):
    drivers = tmp_path / "drivers"
    bundle = make_bundle(drivers, "bad", manifest_extra={"entrypiont": "x:Y"})
    clock = Clock()
    registry = Registry(drivers, tmp_path / "state", settle_s=0, retries=LoadRetries(clock=clock))
    run(registry.rescan())
    assert len(registry.invalid()) == 1 and registry.look_again_in() is None
    first = registry.entries[bundle]
    clock.now += 3600
    run(registry.rescan())
    assert registry.entries[bundle] is first


def test_retry_delays_double_up_to_the_cap_and_reset_when_forgotten():
    clock = Clock()
    retries: LoadRetries[str] = LoadRetries(RetryPolicy(initial_s=1, factor=2, max_s=5), clock)
    assert [retries.failed("a") for _ in range(5)] == [1, 2, 4, 5, 5]
    assert retries.due() == set() and retries.next_in() == 5
    clock.now += 5
    assert retries.due() == {"a"} and retries.next_in() == 0
    retries.forget("a")
    assert retries.next_in() is None and retries.failed("a") == 1


@pytest.mark.parametrize("name", ["x.tmp", "x~", ".x", "x.part", "plain-file"])
def test_temporary_hidden_and_plain_files_are_not_candidates(tmp_path, name):
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    (drivers / name).write_text("")
    os.mkdir(drivers / "real")
    assert list(list_candidates(drivers)) == [drivers / "real"]


def test_new_limits_judge_again_what_the_old_ones_refused(tmp_path):
    drivers = tmp_path / "drivers"
    wide_tree(drivers / "huge", folders=2, files=30)
    registry = Registry(drivers, tmp_path / "state", settle_s=0, limits=ReadLimits(max_members=50))
    run(registry.rescan())
    assert registry.verdict(registry.entries[drivers / "huge"]) == (
        "huge: more than 50 entries; a bundle may hold at most 50"
    )
    registry.limits = ReadLimits(max_members=100)  # a reload
    assert run(registry.rescan())
    verdict = registry.verdict(registry.entries[drivers / "huge"])
    assert verdict is not None and verdict.startswith("huge: driver.yaml: missing")


def test_the_folders_to_watch_are_bounded_usable_bundles_first(tmp_path):
    drivers = tmp_path / "drivers"
    good = make_bundle(drivers, "good")
    wide_tree(drivers / "a-huge", folders=1500, files=0)
    registry = Registry(drivers, tmp_path / "state", settle_s=0)
    run(registry.rescan())
    folders = registry.watch_dirs()
    assert len(folders) == WATCH_MAX_DIRS
    assert {good, good / "src"} <= folders


def test_a_directory_being_copied_waits_until_it_settles(tmp_path):
    drivers = tmp_path / "drivers"
    bundle = make_bundle(drivers, "fresh")  # just written: it may still be being copied
    registry = Registry(drivers, tmp_path / "state", settle_s=3600)
    assert not run(registry.rescan())
    assert registry.entries == {} and list(registry.unsettled) == [bundle]
    assert registry.look_again_in() == 3600
    assert bundle / "src" in registry.watch_dirs()  # its changes are watched meanwhile
    for path in [bundle, *bundle.rglob("*")]:
        os.utime(path, (1, 1), follow_symlinks=False)  # quiet for long: settled
    assert run(registry.rescan())
    assert registry.entries[bundle].bundle is not None and registry.unsettled == {}


def test_a_retry_does_not_wait_for_a_settled_directory_to_settle_again(tmp_path):
    drivers, state = tmp_path / "drivers", tmp_path / "state"
    bundle = make_bundle(drivers, "alpha")
    state.mkdir()
    (state / "bundles").write_text("in the way")
    clock = Clock()
    registry = Registry(drivers, state, settle_s=0, retries=LoadRetries(clock=clock))
    run(registry.rescan())  # settled at once, not stored
    assert registry.entries[bundle].bundle is None
    registry.settle_s = 3600  # its files now look as fresh as ever
    (state / "bundles").unlink()
    clock.now += 1
    assert run(registry.rescan())  # the retry loads the same content, already settled
    assert registry.entries[bundle].bundle is not None
    assert registry.unsettled == {} and registry.look_again_in() is None
