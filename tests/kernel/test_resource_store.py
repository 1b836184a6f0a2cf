"""The resource store: CRUD, persistence, the schema version, refusing bad files."""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from drivebay.kernel.resources.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    STORE_FILE,
    Resource,
    ResourceStore,
    check_resource_id,
)
from drivebay.protocol.errors import KernelError, NoSuchName, RequestError, StateStoreLost

VOL = Resource("vol-1", "nfs-storage", None, {"host": "nas", "size_gb": 10, "thin": True})


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / STORE_FILE


@pytest.fixture
def store(db_path: Path) -> Iterator[ResourceStore]:
    with ResourceStore.open(db_path) as opened:
        yield opened


def raw(db_path: Path, query: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return db.execute(query).fetchall()


# -- CRUD -------------------------------------------------------------------------


def test_add_then_get(store: ResourceStore) -> None:
    store.add(VOL)
    assert store.get("vol-1") == VOL
    assert store.get("vol-2") is None


def test_all_is_ordered_by_id(store: ResourceStore) -> None:
    for name in ("b", "c", "a"):
        store.add(Resource(name, "dir-volumes"))
    assert [resource.id for resource in store.all()] == ["a", "b", "c"]
    assert store.all()[0] == Resource("a", "dir-volumes", None, {})


def test_add_an_existing_id_is_refused(store: ResourceStore) -> None:
    store.add(VOL)
    with pytest.raises(RequestError) as caught:
        store.add(Resource("vol-1", "other"))
    assert str(caught.value) == "resource vol-1 already exists; use 'resource set' to change it"
    assert store.get("vol-1") == VOL


def test_update_replaces_everything_but_the_id(store: ResourceStore) -> None:
    store.add(VOL)
    changed = Resource("vol-1", "nfs-storage", "1.3.0", {"host": "nas2"})
    store.update(changed)
    assert store.get("vol-1") == changed
    assert store.all() == [changed]


def test_update_of_an_unknown_resource(store: ResourceStore) -> None:
    with pytest.raises(NoSuchName) as caught:
        store.update(VOL)
    assert str(caught.value) == "no resource vol-1; 'drivebayctl resources' lists them"


def test_remove(store: ResourceStore) -> None:
    store.add(VOL)
    store.remove("vol-1")
    assert store.get("vol-1") is None
    with pytest.raises(NoSuchName):
        store.remove("vol-1")


def test_created_and_updated_times_come_from_the_clock(db_path: Path) -> None:
    now = [100.0]
    with ResourceStore.open(db_path, clock=lambda: now[0]) as store:
        store.add(VOL)
        now[0] = 250.0
        store.update(VOL)
    assert raw(db_path, "SELECT created, updated FROM resources") == [(100.0, 250.0)]


def test_properties_of_every_json_kind_survive(store: ResourceStore) -> None:
    properties = {"s": "é\x00\n", "i": -(2**63), "f": 2.5, "b": False, "l": [1, "a"], "m": {}}
    store.add(Resource("r", "d", None, properties))
    assert store.get("r") == Resource("r", "d", None, properties)


def test_properties_that_are_not_json_are_refused(store: ResourceStore) -> None:
    with pytest.raises(RequestError) as caught:
        store.add(Resource("r", "d", None, {"s": "\udcff"}))
    assert str(caught.value).startswith("the properties of resource r cannot be stored as JSON")
    assert store.get("r") is None


@pytest.mark.parametrize("resource_id", ["a", "vol-1", "A.b_c-9", "9" * 128])
def test_valid_resource_ids(resource_id: str) -> None:
    check_resource_id(resource_id)


@pytest.mark.parametrize(
    "resource_id", ["", "-a", ".hidden", "_a", "a b", "a/b", "a\n", "é", "9" * 129]
)
def test_invalid_resource_ids(store: ResourceStore, resource_id: str) -> None:
    with pytest.raises(RequestError) as caught:
        store.add(Resource(resource_id, "d"))
    assert str(caught.value) == (
        f"{resource_id!r} is not a resource id; use 1 to 128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit, for example vol-1"
    )
    assert store.all() == []


# -- the file ---------------------------------------------------------------------


def test_resources_persist_across_reopen(db_path: Path) -> None:
    with ResourceStore.open(db_path) as store:
        store.add(VOL)
        store.add(Resource("vol-2", "nfs-storage", "1.2.0", {}))
        store.remove("vol-2")
    with ResourceStore.open(db_path) as store:
        assert store.all() == [VOL]


def test_the_file_is_in_wal_mode_and_private(db_path: Path, store: ResourceStore) -> None:
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_a_new_file_has_the_latest_schema(db_path: Path, store: ResourceStore) -> None:
    assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    columns = [row[1:4] for row in raw(db_path, "PRAGMA table_info(resources)")]
    assert columns == [
        ("id", "TEXT", 0),
        ("driver", "TEXT", 1),
        ("pinned", "TEXT", 0),
        ("properties", "TEXT", 1),
        ("created", "REAL", 0),
        ("updated", "REAL", 0),
    ]
    assert raw(db_path, "PRAGMA index_list(resources)")[0][1] == "resources_by_driver"


def test_an_empty_file_is_migrated_from_version_0(db_path: Path) -> None:
    db_path.touch()
    with ResourceStore.open(db_path) as store:
        store.add(VOL)
    assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    with ResourceStore.open(db_path) as store:
        assert store.all() == [VOL]


def test_a_missing_state_dir_is_a_kernel_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / STORE_FILE
    with pytest.raises(KernelError) as caught:
        ResourceStore.open(path)
    assert str(caught.value) == (
        f"{path}: cannot create the resource database (No such file or directory); "
        "check that the state dir exists and is writable"
    )


def test_a_path_with_uri_characters(tmp_path: Path) -> None:
    path = tmp_path / "a?b#c%20d" / STORE_FILE
    path.parent.mkdir()
    with ResourceStore.open(path) as store:
        store.add(VOL)
    with ResourceStore.open(path) as store:
        assert store.all() == [VOL]
    assert sorted(os.listdir(path.parent))[0] == STORE_FILE


# -- refusing a file it cannot use, without touching it ------------------------------


def refusal(db_path: Path) -> str:
    """The refusal to open ``db_path``, checking that nothing in its dir changed."""
    before = {path.name: path.read_bytes() for path in db_path.parent.iterdir()}
    with pytest.raises(KernelError) as caught:
        ResourceStore.open(db_path)
    assert {path.name: path.read_bytes() for path in db_path.parent.iterdir()} == before
    return str(caught.value)


def make_database(db_path: Path, *statements: str) -> None:
    with closing(sqlite3.connect(db_path)) as db:
        for statement in statements:
            db.execute(statement)
        db.commit()


def test_a_newer_schema_is_refused_and_left_as_it_was(db_path: Path) -> None:
    with ResourceStore.open(db_path) as store:
        store.add(VOL)
    make_database(db_path, "PRAGMA user_version = 7")
    assert refusal(db_path) == (
        f"{db_path}: schema version 7 is newer than this drivebayd understands "
        f"({SCHEMA_VERSION}); "
        "upgrade drivebayd or restore a backup"
    )


def test_a_newer_schema_still_in_the_wal_is_refused(db_path: Path) -> None:
    with ResourceStore.open(db_path) as store:
        store.add(VOL)
    with closing(sqlite3.connect(db_path)) as newer:  # a newer drivebayd, still running
        newer.execute("PRAGMA user_version = 7")
        newer.commit()
        assert Path(f"{db_path}-wal").stat().st_size > 0
        before = db_path.read_bytes()
        with pytest.raises(KernelError) as caught:
            ResourceStore.open(db_path)
        assert db_path.read_bytes() == before
    assert str(caught.value).startswith(f"{db_path}: schema version 7 is newer")


def test_a_file_that_is_not_a_database_is_refused_and_left_as_it_was(db_path: Path) -> None:
    db_path.write_bytes(b"this is not a database, just some garbage\n" * 100)
    assert refusal(db_path) == (
        f"{db_path}: not a resource database (file is not a database); move it aside and "
        "restore a backup, or remove it to start with no resources"
    )


def test_a_corrupt_database_is_refused_and_left_as_it_was(db_path: Path) -> None:
    with ResourceStore.open(db_path) as store:
        for number in range(300):
            store.add(Resource(f"vol-{number}", "nfs-storage", None, {"host": "x" * 200}))
    make_database(db_path, "PRAGMA journal_mode = DELETE")  # fold the WAL into the file
    data = bytearray(db_path.read_bytes())
    page_size = 4096
    assert len(data) > 4 * page_size
    data[2 * page_size : 4 * page_size] = b"\xa5" * (2 * page_size)  # trash two pages
    db_path.write_bytes(bytes(data))
    assert re.fullmatch(
        re.escape(f"{db_path}: the resource database is corrupt (quick_check: Page ")
        + r"\d+: btreeInitPage\(\) returns error code 11, and \d+ more problems\); "
        + re.escape("move it aside and restore a backup"),
        refusal(db_path),
    )


def test_a_database_of_something_else_is_refused(db_path: Path) -> None:
    make_database(db_path, "CREATE TABLE photos (name TEXT)")
    assert refusal(db_path) == (
        f"{db_path}: a database of something else (it has tables but no drivebay schema "
        "version); move it aside or choose another --state"
    )


def test_a_directory_in_place_of_the_file(db_path: Path) -> None:
    db_path.mkdir()
    (db_path / "x").touch()
    with pytest.raises(KernelError) as caught:
        ResourceStore.open(db_path)
    assert str(caught.value).startswith(f"{db_path}: cannot open the resource database (")


def test_a_file_locked_by_another_program_is_a_kernel_error(
    db_path: Path, store: ResourceStore
) -> None:
    with closing(sqlite3.connect(db_path, timeout=0, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(KernelError) as caught:
            store.add(VOL)
        other.execute("ROLLBACK")
    assert str(caught.value) == (
        f"{db_path}: cannot write the resource database (database is locked); check the free "
        "space and that the file and the state dir are writable, and stop other programs "
        "using it"
    )
    store.add(VOL)  # usable again once the lock is gone
    assert store.all() == [VOL]


def test_a_read_only_file_is_a_kernel_error(db_path: Path) -> None:
    if os.geteuid() != 0:
        with ResourceStore.open(db_path) as store:
            store.add(VOL)
        db_path.chmod(0o400)
        with pytest.raises(KernelError) as caught:
            ResourceStore.open(db_path)
        assert str(caught.value).startswith(f"{db_path}: cannot write the resource database (")
        return
    # Root writes any file: check as nobody, in a forked child, on a file nobody
    # may read but not write, in a directory nobody can reach.
    public = Path(tempfile.mkdtemp(prefix="drivebay-ro-"))
    try:
        public.chmod(0o755)
        path = public / "resources.db"
        with ResourceStore.open(path) as store:
            store.add(VOL)
        path.chmod(0o644)
        message = _open_as_nobody(path)
        assert message.startswith(f"{path}: cannot write the resource database ("), message
    finally:
        shutil.rmtree(public)


def _open_as_nobody(path: Path) -> str:
    """Open the store as nobody in a forked child; its KernelError text, or a failure."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                ResourceStore.open(path).close()
                text = "opened without error"
            except KernelError as exc:
                text = str(exc)
            os.write(write_end, text.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        text = reader.read().decode()
    os.waitpid(pid, 0)
    return text


def test_a_corrupt_properties_column_is_a_kernel_error(db_path: Path) -> None:
    with ResourceStore.open(db_path) as store:
        store.add(VOL)
    make_database(db_path, "UPDATE resources SET properties = '[1'")
    with ResourceStore.open(db_path) as store, pytest.raises(KernelError) as caught:
        store.all()
    assert str(caught.value).startswith(
        f"{db_path}: the properties of resource vol-1 are not a JSON object ("
    )


# -- 10,000 resources ----------------------------------------------------------------


def test_ten_thousand_resources(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    resources = [
        Resource(f"vol-{n:05}", "nfs-storage", None, {"host": f"nas{n}", "size_gb": n})
        for n in range(10_000)
    ]
    with ResourceStore.open(db_path) as store:
        started = time.perf_counter()
        for resource in resources:
            store.add(resource)
        added = time.perf_counter() - started
    with ResourceStore.open(db_path) as store:
        started = time.perf_counter()
        loaded = store.all()
        listed = time.perf_counter() - started
    assert loaded == resources
    with capsys.disabled():  # timings are shown, not asserted: machines differ
        print(
            f"\n10,000 resources: add {added * 1e6 / 10_000:.0f} µs each, "
            f"all() {listed * 1e3:.0f} ms"
        )


def test_a_version_1_file_gains_failed_versions_and_keeps_its_resources(db_path: Path) -> None:
    db_path.touch()
    with closing(sqlite3.connect(db_path)) as db:
        MIGRATIONS[0](db)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO resources (id, driver, pinned, properties, created, updated)"
            " VALUES ('vol-1', 'nfs', NULL, '{}', 0, 0)"
        )
        db.commit()
    with ResourceStore.open(db_path) as store:
        assert [r.id for r in store.all()] == ["vol-1"]
        assert store.failed_versions() == {}
        store.record_failure("nfs@1.3.0", "sha256:ab", "failed its health check")
    assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    with ResourceStore.open(db_path) as store:
        assert store.failed_versions() == {"nfs@1.3.0": ("sha256:ab", "failed its health check")}
        store.forget_failure("nfs@1.3.0")
        assert store.failed_versions() == {}


# -- the file deleted or replaced under the store ---------------------------------


def _every_write_is_refused(store: ResourceStore, db_path: Path) -> None:
    expected = f"state store {db_path} was deleted or replaced; restart drivebayd"
    writes = [
        lambda: store.add(Resource("vol-2", "nfs-storage")),
        lambda: store.update(Resource("vol-1", "nfs-storage", None, {"host": "other"})),
        lambda: store.remove("vol-1"),
        lambda: store.forget_failure("nfs@1.0.0"),
    ]
    for write in writes:
        with pytest.raises(StateStoreLost) as caught:
            write()
        assert str(caught.value) == expected
        assert isinstance(caught.value, KernelError)  # drivebayctl: one line, exit 1
    store.record_failure("nfs@1.0.0", "sha256:ab", "failed")  # logged, not raised
    assert store.failed_versions() == {}


def test_a_deleted_file_refuses_every_write_and_says_so_once(
    db_path: Path, store: ResourceStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.add(VOL)
    db_path.unlink()  # SQLite would go on writing to the unlinked file
    with caplog.at_level(logging.WARNING, logger="drivebay.store"):
        _every_write_is_refused(store, db_path)
    assert store.all() == [VOL]  # reads go on from the open file
    assert store.get("vol-1") == VOL
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            f"state store {db_path} was deleted or replaced while drivebayd ran: every change "
            "is refused from now on (resources keep serving, reads work); restart drivebayd "
            "to use the file now at that path",
        ),
        (
            logging.WARNING,
            f"nfs@1.0.0 failed, and that cannot be stored (state store {db_path} was deleted "
            "or replaced; restart drivebayd); after a restart of drivebayd it may be started "
            "again",
        ),
    ]


def test_a_file_renamed_over_it_refuses_every_write(db_path: Path, store: ResourceStore) -> None:
    store.add(VOL)
    other = db_path.with_name("other.db")
    with ResourceStore.open(other) as replacement:
        replacement.add(Resource("vol-9", "dir-volumes"))
    os.rename(other, db_path)
    _every_write_is_refused(store, db_path)
    assert store.all() == [VOL]
    # Its WAL is emptied into the old file: a kill -9 now would not leave
    # frames of the old file beside the new one.
    assert Path(f"{db_path}-wal").stat().st_size == 0
    store.close()
    with ResourceStore.open(db_path) as reopened:  # what a restart finds there
        assert [r.id for r in reopened.all()] == ["vol-9"]


def test_a_file_moved_away_and_back_is_written_again(db_path: Path, store: ResourceStore) -> None:
    store.add(VOL)
    aside = db_path.with_name("aside.db")
    os.rename(db_path, aside)
    with pytest.raises(StateStoreLost):
        store.remove("vol-1")
    os.rename(aside, db_path)  # the very file the store opened: nothing is lost
    store.remove("vol-1")
    assert store.all() == []


def test_a_file_replaced_during_a_write_does_not_count_it(db_path: Path) -> None:
    """Checked after the commit too: what went to the old file is not acknowledged."""
    other = db_path.with_name("other.db")
    ResourceStore.open(other).close()
    armed = [False]

    def clock() -> float:  # called inside update's transaction
        if armed[0]:
            armed[0] = False
            os.rename(other, db_path)
        return 0.0

    with ResourceStore.open(db_path, clock=clock) as store:
        store.add(VOL)
        armed[0] = True
        with pytest.raises(StateStoreLost):
            store.update(Resource("vol-1", "nfs-storage", None, {"host": "other"}))
        assert not armed[0]
