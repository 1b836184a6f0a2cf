"""The resources, kept in SQLite in the state dir (``<state>/resources.db``).

A restart of ``drivebayd`` restores every resource and its binding from here,
and which driver versions failed (so that a restart does not bring back a
version the previous run had rolled back). The store is used from the event
loop's thread only and every call is a short local query, so it is
synchronous. The file is in WAL mode with ``synchronous=NORMAL``: a commit
does not wait for the disk, a crash of the machine may lose the last commits
but never corrupts.

The schema is versioned with ``PRAGMA user_version`` and grown by the
functions in ``MIGRATIONS`` (the one at index ``n`` takes version ``n`` to
``n + 1``). Before writing anything, ``ResourceStore.open`` checks the file
through a read-only connection: a file that is not a database, fails
``quick_check``, or has a newer schema than this code knows is refused with a
``KernelError`` and left exactly as it was, for the operator to restore or
to hand to a newer ``drivebayd``.

The file must stay the one the store opened: SQLite keeps writing to a file
that was deleted or renamed over, and a restart would not find what it
acknowledged. Every write checks the path's device and inode before it
begins and after it commits; a file deleted or replaced meanwhile makes
every write fail with ``StateStoreLost`` (logged once, as an error) while
reads go on from the open file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import msgspec

from drivebay.protocol.errors import KernelError, NoSuchName, RequestError, StateStoreLost

log = logging.getLogger("drivebay.store")
STORE_FILE: Final = "resources.db"
RESOURCE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Resource(msgspec.Struct, frozen=True):
    """A resource: its id, its driver's name, the driver version it is pinned
    to (None: the newest running one) and its validated properties."""

    id: str
    driver: str
    pinned: str | None = None
    properties: dict[str, Any] = {}


def check_resource_id(resource_id: str) -> None:
    """Raises ``RequestError`` unless ``resource_id`` is a valid resource id."""
    if not RESOURCE_ID.fullmatch(resource_id):
        shown = repr(resource_id[:140])
        raise RequestError(
            f"{shown} is not a resource id; use 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, for example vol-1"
        )


# -- the schema --------------------------------------------------------------


def _create_resources(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE resources ("
        " id TEXT PRIMARY KEY,"
        " driver TEXT NOT NULL,"
        " pinned TEXT NULL,"
        " properties TEXT NOT NULL,"  # a JSON object
        " created REAL,"
        " updated REAL)"
    )
    db.execute("CREATE INDEX resources_by_driver ON resources (driver)")


def _create_failed_versions(db: sqlite3.Connection) -> None:
    # Driver versions that failed (build, start, health, attach) with the
    # digest of the bundle that did: not started again until a new bundle or
    # an operator's start, also after a restart of the daemon.
    db.execute(
        "CREATE TABLE failed_versions ("
        " key TEXT PRIMARY KEY,"  # name@version
        " digest TEXT NOT NULL,"
        " reason TEXT NOT NULL,"
        " at REAL NOT NULL)"
    )


MIGRATIONS: Final[tuple[Callable[[sqlite3.Connection], None], ...]] = (
    _create_resources,
    _create_failed_versions,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


# -- the store -------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode
_decode_properties = msgspec.json.Decoder(dict[str, Any]).decode


class ResourceStore:
    """The resources of one state dir; open with ``ResourceStore.open``."""

    def __init__(
        self,
        path: Path,
        db: sqlite3.Connection,
        clock: Callable[[], float],
        identity: tuple[int, int] | None,
    ) -> None:
        self.path = path
        self._db = db
        self._clock = clock
        self._identity = identity  # (st_dev, st_ino) of the file opened
        self._lost = False  # said so in the log

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> Self:
        """The store in the file ``path``, created (mode 0600) if missing and
        migrated to ``SCHEMA_VERSION``.

        Raises ``KernelError`` when the file cannot be used: not a database,
        corrupt, newer than this code, or not readable and writable. The file
        is not modified then.
        """
        if path.exists() and path.stat().st_size > 0:
            _check_readonly(path)
        else:
            _create_private(path)
        db = _connect(path, f"file:{_uri_path(path)}?mode=rw")
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            _migrate(db, path)
            _probe_writable(db)
            identity = _identity(path)
        except sqlite3.Error as exc:
            db.close()
            raise _unwritable(path, exc) from exc
        except OSError as exc:
            db.close()
            raise _uncheckable(path, exc) from exc
        except BaseException:
            db.close()
            raise
        return cls(path, db, clock, identity)

    def close(self) -> None:
        """Close the file; the store cannot be used afterwards."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def all(self) -> list[Resource]:
        """Every resource, ordered by id."""
        rows = self._db.execute(
            "SELECT id, driver, pinned, properties FROM resources ORDER BY id"
        ).fetchall()
        return [self._resource(*row) for row in rows]

    def get(self, resource_id: str) -> Resource | None:
        """The resource ``resource_id``, or None when there is none."""
        row = self._db.execute(
            "SELECT id, driver, pinned, properties FROM resources WHERE id = ?", (resource_id,)
        ).fetchone()
        return None if row is None else self._resource(*row)

    def add(self, resource: Resource) -> None:
        """Store a new resource.

        Raises ``RequestError`` when its id is malformed or already taken.
        """
        check_resource_id(resource.id)
        now = self._clock()
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO resources (id, driver, pinned, properties, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (resource.id, resource.driver, resource.pinned, _json(resource), now, now),
                )
        except sqlite3.IntegrityError:
            raise RequestError(
                f"resource {resource.id} already exists; use 'resource set' to change it"
            ) from None

    def update(self, resource: Resource) -> None:
        """Replace the stored resource with the same id.

        Raises ``NoSuchName`` when there is none: add it first.
        """
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE resources SET driver = ?, pinned = ?, properties = ?, updated = ?"
                " WHERE id = ?",
                (resource.driver, resource.pinned, _json(resource), self._clock(), resource.id),
            )
        if cursor.rowcount == 0:
            raise _no_such(resource.id)

    def remove(self, resource_id: str) -> None:
        """Delete the resource ``resource_id``; raises ``NoSuchName`` when there is none."""
        with self._transaction():
            cursor = self._db.execute("DELETE FROM resources WHERE id = ?", (resource_id,))
        if cursor.rowcount == 0:
            raise _no_such(resource_id)

    def failed_versions(self) -> dict[str, tuple[str, str]]:
        """name@version -> (bundle digest, reason) of every version that failed."""
        rows = self._db.execute("SELECT key, digest, reason FROM failed_versions").fetchall()
        return {key: (digest, reason) for key, digest, reason in rows}

    def record_failure(self, key: str, digest: str, reason: str) -> None:
        """Remember that version ``key`` (name@version) failed with this bundle.

        Never raises: this is the daemon's own note, made while it handles
        the failure (nobody is told it was stored). When it cannot be
        written, the log says so and that a restart may try the version again."""
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT OR REPLACE INTO failed_versions (key, digest, reason, at)"
                    " VALUES (?, ?, ?, ?)",
                    (key, digest, reason, self._clock()),
                )
        except KernelError as exc:
            log.warning(
                "%s failed, and that cannot be stored (%s); after a restart of drivebayd "
                "it may be started again",
                key,
                exc,
            )

    def forget_failure(self, key: str) -> None:
        """An operator gives version ``key`` a new chance."""
        with self._transaction():
            self._db.execute("DELETE FROM failed_versions WHERE key = ?", (key,))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; a failing disk (full, read-only, locked by
        another program) is a ``KernelError``, a constraint error passes.

        Raises ``StateStoreLost`` when the file was deleted or replaced, before
        the transaction or during it (then what it wrote is in a file that is
        no longer at ``path``: it does not count)."""
        self._check_identity()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise _unwritable(self.path, exc) from exc
        self._check_identity()

    def _check_identity(self) -> None:
        """Raises ``StateStoreLost`` unless ``path`` is still the file opened."""
        try:
            now = _identity(self.path)
        except OSError as exc:
            raise _uncheckable(self.path, exc) from exc
        if now is not None and now == self._identity:
            if self._lost:
                log.warning("state store %s is back in place; changes are stored again", self.path)
                self._lost = False
            return
        if not self._lost:
            self._lost = True
            # Empty our WAL into the file we hold: left beside a replacement
            # after a kill -9, its frames would be laid over that file.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.error(
                "state store %s was deleted or replaced while drivebayd ran: every change "
                "is refused from now on (resources keep serving, reads work); restart "
                "drivebayd to use the file now at that path",
                self.path,
            )
        raise StateStoreLost(f"state store {self.path} was deleted or replaced; restart drivebayd")

    def _resource(self, resource_id: str, driver: str, pinned: str | None, text: str) -> Resource:
        try:
            properties = _decode_properties(text)
        except msgspec.DecodeError as exc:
            raise KernelError(
                f"{self.path}: the properties of resource {resource_id} are not a JSON "
                f"object ({exc}); restore a backup or fix them with sqlite3"
            ) from exc
        return Resource(resource_id, driver, pinned, properties)


def _json(resource: Resource) -> str:
    try:
        return _encode(resource.properties).decode()
    except (msgspec.EncodeError, TypeError, UnicodeEncodeError) as exc:
        raise RequestError(
            f"the properties of resource {resource.id} cannot be stored as JSON ({exc}); "
            "use strings, numbers, booleans, lists and mappings"
        ) from exc


def _identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at ``path``, None when there is none;
    raises OSError when it cannot be known."""
    try:
        status = os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    return status.st_dev, status.st_ino


def _uncheckable(path: Path, exc: OSError) -> KernelError:
    return KernelError(
        f"{path}: cannot check the resource database ({exc.strerror}); "
        "check that the state dir is readable"
    )


def _unwritable(path: Path, exc: sqlite3.Error) -> KernelError:
    return KernelError(
        f"{path}: cannot write the resource database ({exc}); check the free space and "
        "that the file and the state dir are writable, and stop other programs using it"
    )


def _no_such(resource_id: str) -> NoSuchName:
    return NoSuchName(f"no resource {resource_id}; 'drivebayctl resources' lists them")


# -- opening safely ------------------------------------------------------------


def _uri_path(path: Path) -> str:
    """``path`` for a ``file:`` URI: absolute, with ``%``, ``?`` and ``#`` escaped."""
    text = os.path.abspath(path)
    return text.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _connect(path: Path, uri: str) -> sqlite3.Connection:
    try:
        # Autocommit: transactions are explicit. The timeout bounds how long
        # the event loop waits for a lock another program (sqlite3) holds.
        return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=1.0)
    except sqlite3.Error as exc:
        raise KernelError(
            f"{path}: cannot open the resource database ({exc}); "
            "check that the state dir exists and is readable and writable"
        ) from exc


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (SQLite gives its -wal and -shm
    files the same mode): properties may hold host names and paths."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise KernelError(
            f"{path}: cannot create the resource database ({exc.strerror}); "
            "check that the state dir exists and is writable"
        ) from exc


def _probe_writable(db: sqlite3.Connection) -> None:
    """Raise sqlite3.Error now if ``db`` cannot be written: ``mode=rw`` quietly
    opens a write-protected file read-only, and the first ``add`` would fail
    instead. Rewriting ``user_version`` with its own value changes nothing."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    db.execute(f"PRAGMA user_version = {version}")


def _check_readonly(path: Path) -> None:
    """Raises ``KernelError`` when the file at ``path`` is not a resource
    database this code can use; never writes to it."""
    # A read-only connection to a WAL file still creates its -wal and -shm
    # files. A file with neither a WAL nor a rollback journal beside it has
    # nothing to recover: it is read as immutable, and nothing appears beside it.
    pending = any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-journal"))
    immutable = "" if pending else "&immutable=1"
    with closing(_connect(path, f"file:{_uri_path(path)}?mode=ro{immutable}")) as db:
        try:
            verdict = _one_line(db.execute("PRAGMA quick_check").fetchall())
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise KernelError(
                f"{path}: not a resource database ({exc}); move it aside and restore a "
                "backup, or remove it to start with no resources"
            ) from exc
    if verdict != "ok":
        raise KernelError(
            f"{path}: the resource database is corrupt (quick_check: {verdict}); "
            "move it aside and restore a backup"
        )
    if version > SCHEMA_VERSION:
        raise KernelError(
            f"{path}: schema version {version} is newer than this drivebayd understands "
            f"({SCHEMA_VERSION}); upgrade drivebayd or restore a backup"
        )
    if version == 0 and tables:
        raise KernelError(
            f"{path}: a database of something else (it has tables but no drivebay schema "
            "version); move it aside or choose another --state"
        )


def _one_line(rows: list[tuple[str]]) -> str:
    """``quick_check``'s answer as one line: ``ok``, or its first problem."""
    problems = [
        line
        for (text,) in rows
        for line in text.splitlines()
        if line.strip() and not line.startswith("*** in database")
    ]
    if len(problems) > 1:
        return f"{problems[0]}, and {len(problems) - 1} more problems"
    return problems[0] if problems else "no answer"


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to ``SCHEMA_VERSION``, all steps in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:  # another process wrote it after the check
            raise KernelError(
                f"{path}: schema version {version} is newer than this drivebayd understands "
                f"({SCHEMA_VERSION}); upgrade drivebayd or restore a backup"
            )
        for migration in MIGRATIONS[version:]:
            migration(db)
        if version < SCHEMA_VERSION:
            # PRAGMA takes no parameters; SCHEMA_VERSION is our own integer.
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
