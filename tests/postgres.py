"""A throw-away PostgreSQL server for tests and benchmarks.

``ThrowawayPostgres`` runs ``initdb`` into a fresh temporary directory and
starts ``postgres`` on it, listening only on a Unix socket in that directory
(``listen_addresses=''``) with trust authentication: only who can enter the
directory can connect. PostgreSQL refuses to run as root, so a root caller
runs both as the ``postgres`` user (the child switches user before it
executes them, as ``runuser -u postgres`` would; the directory is given to
that user); anyone else runs them as themselves.

The server is our own child, started before the first test that needs it:
``stop`` asks it for a fast shutdown, waits for it and reaps it (SIGKILL
past a deadline), then removes the directory, so nothing is left running
nor left for init to reap. Its backends are its children, not ours.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Final

SUPERUSER: Final = "drivebay"
START_S: Final = 60.0
STOP_S: Final = 30.0
SERVER_USER: Final = "postgres"  # Debian's account for the server, used when we are root
HOW_TO_INSTALL: Final = (
    "PostgreSQL's initdb and postgres are missing; install them (apt-get install postgresql, "
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
    """The directory of ``initdb`` and ``postgres``: the one of ``initdb`` on
    the PATH, else Debian's newest ``/usr/lib/postgresql/N/bin``. Raises
    ``PostgresUnavailable``."""
    on_path = shutil.which("initdb")
    debian = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    debian.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, reverse=True)
    candidates = [Path(os.path.realpath(on_path)).parent] if on_path else []
    for found in [*candidates, *debian]:
        if (found / "initdb").exists() and (found / "postgres").exists():
            return found
    raise PostgresUnavailable(HOW_TO_INSTALL)


class ThrowawayPostgres:
    """One PostgreSQL server in a temporary directory; ``start``, then ``stop``."""

    def __init__(self) -> None:
        self.bin = server_binaries()
        self.as_root = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="drivebay-pg-", dir=self._parent()))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.server: subprocess.Popen[bytes] | None = None
        self._as: pwd.struct_passwd | None = None

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
        """Create the cluster and start the server; returns once it accepts
        connections. On failure everything is stopped and removed, and
        ``PostgresUnavailable`` says why (with the server log's tail)."""
        try:
            self._as = _server_user() if self.as_root else None
            if self._as is not None:
                os.chown(self.dir, self._as.pw_uid, self._as.pw_gid)
            self._initdb()
            self.launch()
        except BaseException:
            self.stop()
            raise

    def launch(self) -> None:
        """Start the server on the cluster made by ``start`` (again, after
        ``shut_down``); returns once it accepts connections."""
        with open(self.log, "ab") as log:
            self.server = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the tests, which stop it
                **self._child_options(),
            )
        self._wait_ready()

    def shut_down(self) -> None:
        """Stop the server (fast shutdown: sessions are ended) and reap it;
        the cluster stays for ``launch``."""
        server, self.server = self.server, None
        if server is None:
            return
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    def stop(self) -> None:
        """Stop the server and remove the directory."""
        try:
            self.shut_down()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _initdb(self) -> None:
        done = subprocess.run(
            [
                str(self.bin / "initdb"),
                *("-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--no-sync"),
                *("--encoding=UTF8", "--locale=C"),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_S,
            check=False,
            **self._child_options(),
        )
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PostgresUnavailable(f"initdb failed ({done.returncode}): {' / '.join(said)}")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"unix_socket_directories = '{self.dir}'\n")
            conf.writelines(f"{key} = {value}\n" for key, value in SETTINGS.items())

    def _wait_ready(self) -> None:
        """Until the server says ``ready`` in postmaster.pid (what ``pg_ctl -w``
        waits for), or exits, or START_S pass."""
        assert self.server is not None
        deadline = time.monotonic() + START_S
        while True:
            if self.server.poll() is not None:
                raise PostgresUnavailable(
                    f"postgres exited ({self.server.returncode}) while starting{self._log_tail()}"
                )
            if _status(self.data / "postmaster.pid") == "ready":
                return
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"postgres not ready in {START_S} s{self._log_tail()}")
            time.sleep(0.02)

    def _child_options(self) -> dict[str, Any]:
        """How our children run: in the directory (the server's user may not
        be able to enter ours), as the server's user when we are root, without
        libpq's variables (PGDATA, PGHOST...), which would point elsewhere."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        options: dict[str, Any] = {"cwd": self.dir, "env": {**env, "LC_ALL": "C"}}
        if self._as is not None:
            options |= {"user": self._as.pw_uid, "group": self._as.pw_gid, "extra_groups": []}
        return options

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


def _status(pid_file: Path) -> str:
    """The server's status in postmaster.pid (its 8th line), "" before there is one."""
    try:
        lines = pid_file.read_text().splitlines()
    except OSError:
        return ""
    return lines[7].strip() if len(lines) > 7 else ""
