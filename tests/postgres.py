"""A throw-away PostgreSQL server for tests and benchmarks.

``ThrowawayPostgres`` runs ``initdb`` and ``pg_ctl`` into a fresh temporary
directory and starts a server that listens only on a Unix socket in that
directory (``listen_addresses=''``), with trust authentication: only who can
enter the directory can connect. PostgreSQL refuses to run as root, so a
root caller runs the server as the ``postgres`` user (``runuser``; the
directory is given to that user); anyone else runs it as themselves.
``stop`` ends the server (waits until it is gone) and removes the directory.

The server's process is not our child: ``pg_ctl`` starts it detached and
returns once it accepts connections, so a test's check for leaked children
is not disturbed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Final

SUPERUSER: Final = "drivebay"
SERVER_USER: Final = "postgres"  # Debian's account for the server, used when we are root
HOW_TO_INSTALL: Final = (
    "PostgreSQL's initdb and pg_ctl are missing; install them (apt-get install postgresql, "
    "as scripts/test does when run as root) and run again"
)
# Fast and small: nothing here must survive a crash of the machine.
SETTINGS: Final = {
    "listen_addresses": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'16MB'",
    "max_connections": "100",
    "log_min_messages": "warning",
}


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says what to install or fix."""


def server_binaries() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: on the PATH, else Debian's
    newest ``/usr/lib/postgresql/N/bin``. Raises ``PostgresUnavailable``."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    found_dirs = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]
    versions = sorted(d for d in found_dirs if d.parent.name.isdigit() and (d / "initdb").exists())
    if not versions:
        raise PostgresUnavailable(HOW_TO_INSTALL)
    return max(versions, key=lambda d: int(d.parent.name))


class ThrowawayPostgres:
    """One PostgreSQL server in a temporary directory; ``start``, then ``stop``."""

    def __init__(self) -> None:
        self.bin = server_binaries()
        self.as_root = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="drivebay-pg-", dir=self._parent()))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.started = False

    @property
    def socket_dir(self) -> str:
        return str(self.dir)

    def conninfo(self, dbname: str = "postgres") -> str:
        """A libpq connection string for database ``dbname`` of this server."""
        return f"host={self.dir} user={SUPERUSER} dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """The same as a ``postgresql://`` URL (the form ``cluster.database`` takes)."""
        return f"postgresql:///{dbname}?host={self.dir}&user={SUPERUSER}"

    def start(self) -> None:
        """Create the cluster and start the server; on failure everything is
        removed and ``PostgresUnavailable`` says why (with the log's tail)."""
        try:
            if self.as_root:
                server = _server_user()
                os.chown(self.dir, server.pw_uid, server.pw_gid)
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            )
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(f"unix_socket_directories = '{self.dir}'\n")
                conf.writelines(f"{key} = {value}\n" for key, value in SETTINGS.items())
            self.started = True
            log = str(self.log)
            self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (if started), wait until it is gone, remove the directory."""
        try:
            if self.started and (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data))
            self.started = False
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        argv = [str(self.bin / program), *args]
        if self.as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        done = subprocess.run(
            argv,
            cwd=self.dir,  # the server's user may not be able to enter ours
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            env={**_clean_env(), "LC_ALL": "C"},
        )
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PostgresUnavailable(
                f"{program} failed ({done.returncode}): {' / '.join(said)}{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            return ""
        return f"; server log: {' / '.join(lines)}" if lines else ""

    def _parent(self) -> str:
        """Where the directory goes: the usual temporary directory, unless we
        are root and the server's user could not reach into it."""
        base = tempfile.gettempdir()
        if self.as_root and not _reachable_by_all(Path(base)):
            return "/tmp"
        return base


def _server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"the tests run as root, which PostgreSQL refuses, and there is no {SERVER_USER} "
            "user to run it as; install postgresql (it creates that user)"
        ) from None


def _reachable_by_all(path: Path) -> bool:
    """Can any user enter ``path`` (every ancestor searchable by others)?"""
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _clean_env() -> dict[str, str]:
    """Our environment without libpq's and the server's variables (PGDATA,
    PGHOST, ...), which would point the programs elsewhere."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}
