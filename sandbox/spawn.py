"""Starting a driver child: its interpreter, environment, fds and exit watch.

The child gets a fresh interpreter in isolated mode (``-I``), a minimal
environment, its own session and process group (so the kernel can signal the
driver and everything it started as one), stdin from /dev/null, stdout and
stderr on pipes the kernel reads, and exactly two inherited fds: its ends of
the channel ``socketpair`` and of the descriptor channel (a ``SOCK_SEQPACKET``
pair that carries handed-over sockets, see ``protocol.fd_passing``). Its
exit is seen through a pidfd the event loop watches, as it happens, with no
polling and no SIGCHLD handler. The child puts what the driver starts in a
PID namespace of its own (``containment``, see
``protocol.init_shim``); the process group is the fallback and, in both
cases, what the kernel signals.

Every descriptor has one owner: a pipe belongs to its transport from the
moment the transport exists (only the transport closes it), the pidfd to the
exit watch (closed only after its reader is removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from drivebay.sandbox.cancel_safe import wait_until_done
from drivebay.sandbox.output import OutputCapture, RotatingFile
from drivebay.sandbox.pipe_reader import PipeReader
from drivebay.sandbox.privileges import RunAs
from drivebay.sandbox.runtime_dir import BOOTSTRAP

if TYPE_CHECKING:
    from drivebay.sandbox.fork_server import Templates

PASSED_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class SpawnSpec:
    """Everything needed to start one driver child."""

    python: Path
    runtime_dir: Path
    entrypoint: str
    driver: str
    version: str
    cwd: Path
    src: Path | None = None
    stdout_log: Path | None = None
    stderr_log: Path | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    max_frame: int = 16 * 1024 * 1024
    log_level: str = "INFO"
    rlimits: Mapping[str, int] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    on_output: Callable[[str, bytes], None] | None = None  # ("stdout"|"stderr", chunk)
    run_as: RunAs | None = None  # switch to this user before exec (root daemon only)
    containment: str = "auto"  # see protocol.init_shim.contain
    scheduling: str = "normal"  # the runtime's policy: see protocol.runtime
    # ``spawn: fork-server``: fork the child from its interpreter's template
    # (sandbox.fork_server); None: exec the interpreter.
    templates: Templates | None = None


class Started(Protocol):
    """What the kernel keeps of a started child: a ``subprocess.Popen`` or a
    ``fork_server.ForkedChild``."""

    pid: int
    returncode: int | None
    stdout: IO[bytes] | None
    stderr: IO[bytes] | None

    def wait(self) -> int: ...


def _relayed(popen: Started, own: int) -> int:
    """The wait status to report: the driver's, when its init (a forked
    child's PID 1) left it on the status pipe, else the child's own."""
    fd = getattr(popen, "status_fd", -1)
    if fd < 0:
        return own
    popen.status_fd = -1  # type: ignore[attr-defined]
    try:
        os.set_blocking(fd, False)
        data = os.read(fd, 4)
    except BlockingIOError:
        data = b""
    finally:
        os.close(fd)
    return int.from_bytes(data, "little") if len(data) == 4 else own


def child_environment(spec: SpawnSpec, channel_fd: int, fd_channel_fd: int = -1) -> dict[str, str]:
    """The child's whole environment: a few basics and its DRIVEBAY_* settings."""
    env = {name: os.environ[name] for name in PASSED_ENVIRONMENT if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if spec.run_as is not None:
        import pwd

        entry = pwd.getpwuid(spec.run_as.uid)
        env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    env.update(
        DRIVEBAY_CHANNEL_FD=str(channel_fd),
        DRIVEBAY_FD_CHANNEL_FD=str(fd_channel_fd),
        DRIVEBAY_ENTRYPOINT=spec.entrypoint,
        DRIVEBAY_SRC=str(spec.src or ""),
        DRIVEBAY_DRIVER=spec.driver,
        DRIVEBAY_VERSION=spec.version,
        DRIVEBAY_PARENT_PID=str(os.getpid()),
        DRIVEBAY_MAX_FRAME=str(spec.max_frame),
        DRIVEBAY_LOG_LEVEL=spec.log_level,
        DRIVEBAY_RLIMITS=",".join(f"{name}={value}" for name, value in spec.rlimits.items()),
        DRIVEBAY_CONTAINMENT=spec.containment,
        DRIVEBAY_SCHEDULING=spec.scheduling,
    )
    env.update(spec.extra_env)
    return env


def describe_exit(returncode: int) -> str:
    """``exit status 3`` or ``signal 9 (SIGKILL)``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
        return f"signal {-returncode} ({name})"
    return f"exit status {returncode}"


def _only_child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            children = listing.read().split()
    except OSError:
        return None
    return int(children[0]) if len(children) == 1 else None


class ChildProcess:
    """A running driver child. ``exited`` resolves to its return code once it
    has been reaped; until then its process group may be signalled."""

    def __init__(
        self,
        popen: Started,
        pidfd: int,
        channel: socket.socket,
        readers: tuple[PipeReader, PipeReader],
        pipes: list[asyncio.BaseTransport],
        fd_channel: socket.socket,
    ) -> None:
        self.popen = popen
        self._pipes = pipes
        self._readers = readers
        self.pid = popen.pid
        self.channel = channel
        self.fd_channel = fd_channel  # non-blocking; read and written by protocol.fd_passing
        self.stdout = readers[0].capture
        self.stderr = readers[1].capture
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = self._loop.create_future()
        self.cpu_s = 0.0  # CPU time the child used, once reaped
        # Owned from here: closed in _on_exit, after its reader is removed.
        self._pidfd = pidfd
        self._loop.add_reader(pidfd, self._on_exit)

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    def signal_group(self, signum: int) -> None:
        """Signal the child's whole process group, unless it was reaped (its
        pid could then belong to someone else)."""
        if self.exited.done():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def driver_pid(self, reported: int) -> int:
        """The driver's pid as the daemon sees it, given the pid it reported
        (its ``getpid()``): the process we started when it is not contained;
        in its PID namespace it is 2, and our child's grandchild (our child
        keeps, its child is PID 1, whose child is the driver), or, forked
        from a template, our child's child (our child is PID 1)."""
        if reported == self.pid:
            return self.pid
        found: int | None = self.pid
        for _ in range(1 if hasattr(self.popen, "status_fd") else 2):
            found = _only_child(found) if found is not None else None
        return found if found is not None else self.pid

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        # The leader is a zombie, so its pid (= the group id) cannot be reused
        # yet: end whatever the driver started, then reap.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        # wait4, not Popen.wait: its CPU time tells a CPU-limit death apart.
        _, status, usage = os.wait4(self.pid, 0)
        status = _relayed(self.popen, status)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        returncode = self.popen.returncode = os.waitstatus_to_exitcode(status)
        self.exited.set_result(returncode)

    async def output_drained(self, timeout: float) -> None:
        """Once the child has exited: wait (bounded) until what it left in its
        pipes is read, so tails are complete. Not for end-of-file: a
        descendant holding a pipe must not hold up the crash recovery."""
        waits = [w for w in (r.wait_pending() for r in self._readers) if w is not None]
        if waits:
            await asyncio.wait(waits, timeout=timeout)

    def close(self) -> None:
        """Release the kernel's ends (channel, pipes) once the child is reaped.
        Each pipe is closed by its transport, which owns it."""
        self.channel.close()
        self.fd_channel.close()
        for pipe in self._pipes:
            pipe.close()

    def stderr_tail(self, lines: int = 10) -> str:
        tail = self.stderr.tail(lines)
        return " | ".join(line for line in tail if line.strip())


def _identity(run_as: RunAs | None) -> dict[str, Any]:
    if run_as is None:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": list(run_as.groups)}


async def spawn_child(spec: SpawnSpec) -> ChildProcess:
    """Start the child. Raises OSError when the interpreter cannot be run (or
    a descriptor cannot be had); then nothing is left behind: no process, no
    descriptor, no transport. Each thing made is put on ``on_failure`` as it
    is made, with what releases it (as trio's ``_open_process`` does), and
    the stack is let go only once the ``ChildProcess`` owns everything."""
    with contextlib.ExitStack() as on_failure:
        kernel_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        on_failure.callback(kernel_end.close)
        on_failure.callback(child_end.close)  # closing twice is harmless
        kernel_fds, child_fds = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        on_failure.callback(kernel_fds.close)
        on_failure.callback(child_fds.close)
        with child_end, child_fds:  # the child's copies are all it needs once it runs
            if spec.templates is None:
                popen: Started = await _popen_off_loop(spec, child_end.fileno(), child_fds.fileno())
            else:
                popen = await _forked(spec, child_end.fileno(), child_fds.fileno())
        assert popen.stdout is not None and popen.stderr is not None
        # A pipe is closed here only until its transport owns it (and closes it).
        unowned = {"stdout": popen.stdout, "stderr": popen.stderr}
        on_failure.callback(_close_each, unowned.values())
        on_failure.callback(_kill_and_reap, popen)  # first: never leave a child unwatched
        pidfd = os.pidfd_open(popen.pid)
        on_failure.callback(os.close, pidfd)
        transports: list[asyncio.BaseTransport] = []
        on_failure.callback(_close_each, transports)
        loop = asyncio.get_running_loop()
        readers = []
        for name, path in (("stdout", spec.stdout_log), ("stderr", spec.stderr_log)):
            listener = functools.partial(spec.on_output, name) if spec.on_output else None
            capture = OutputCapture(
                RotatingFile(path, spec.log_max_bytes, spec.log_backups) if path else None,
                listener=listener,
            )
            reader = PipeReader(capture)
            await _connect(loop, reader, unowned, name, transports)
            readers.append(reader)
        kernel_end.setblocking(False)
        kernel_fds.setblocking(False)
        readers_pair = (readers[0], readers[1])
        child = ChildProcess(popen, pidfd, kernel_end, readers_pair, transports, kernel_fds)
        on_failure.pop_all()
        return child


async def _popen_off_loop(
    spec: SpawnSpec, child_fd: int, fd_channel_fd: int
) -> subprocess.Popen[bytes]:
    """``_popen`` in a thread: vfork returns only once the child has exec'd,
    which on a busy host (a hundred drivers starting) takes tens of ms, a
    stall of every client on the loop. Never given up halfway: a cancel
    waits for the thread, and a child it made is then killed and reaped."""
    made = asyncio.ensure_future(asyncio.to_thread(_popen, spec, child_fd, fd_channel_fd))
    try:
        await wait_until_done(made)
    except BaseException:
        if not made.cancelled() and made.exception() is None:
            popen = made.result()
            _kill_and_reap(popen)
            _close_each(pipe for pipe in (popen.stdout, popen.stderr) if pipe is not None)
        raise
    return made.result()


def _kill_and_reap(popen: Started) -> None:
    """A child we cannot watch: kill its group and reap it right here."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    # Itself too: a forked child may not lead its group yet. Unreaped, so its pid.
    with contextlib.suppress(ProcessLookupError):
        os.kill(popen.pid, signal.SIGKILL)
    popen.wait()


def _close_each(things: Iterable[Any]) -> None:
    for thing in list(things):
        thing.close()


async def _connect(
    loop: asyncio.AbstractEventLoop,
    reader: PipeReader,
    unowned: dict[str, IO[bytes]],
    name: str,
    transports: list[asyncio.BaseTransport],
) -> None:
    """Connect pipe ``name`` to ``reader``; its transport, which then owns the
    pipe, moves from ``unowned`` to ``transports``. Never given up halfway:
    uvloop closes the descriptor of a connection cancelled inside
    ``connect_read_pipe`` behind the file object's back (which then closed it
    a second time, EBADF or someone else's reused number), so a cancel lets
    the connection finish, within a loop pass, and then stays a cancel."""
    connecting = asyncio.ensure_future(
        loop.connect_read_pipe(functools.partial(_same, reader), unowned[name])
    )
    try:
        await wait_until_done(connecting)  # within a loop pass
    finally:
        if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
            transport, _ = connecting.result()
            del unowned[name]
            transports.append(transport)
    connecting.result()  # its own error, if it failed


def _same(reader: PipeReader) -> PipeReader:
    return reader


def _popen(spec: SpawnSpec, child_fd: int, fd_channel_fd: int) -> subprocess.Popen[bytes]:
    # Popen (vfork + exec) returns within a millisecond and, unlike the
    # loop's subprocess API, lets us own the reaping through a pidfd.
    return subprocess.Popen(
        # -B: the child writes no bytecode anywhere; the store and the
        # runtime dir ship theirs, and must stay read-only even for root.
        [str(spec.python), "-I", "-B", "-c", BOOTSTRAP, str(spec.runtime_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(child_fd, fd_channel_fd),
        start_new_session=True,
        cwd=spec.cwd,
        env=child_environment(spec, child_fd, fd_channel_fd),
        **_identity(spec.run_as),
    )


async def _forked(spec: SpawnSpec, child_fd: int, fd_channel_fd: int) -> Started:
    """The child forked from its interpreter's template, set up as ``_popen``'s
    (see protocol.fork_template): same environment, identity, fds, session."""
    from drivebay.protocol.fork_template import CHANNEL_FD, FD_CHANNEL_FD
    from drivebay.sandbox.fork_server import ForkedChild

    assert spec.templates is not None
    with contextlib.ExitStack() as on_failure:
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        on_failure.callback(os.close, status_r)
        on_failure.callback(os.close, status_w)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        on_failure.callback(os.close, out_r)
        on_failure.callback(os.close, out_w)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        on_failure.callback(os.close, err_r)
        on_failure.callback(os.close, err_w)
        forking = asyncio.ensure_future(
            spec.templates.fork(
                spec.python,
                spec.runtime_dir,
                child_environment(spec, CHANNEL_FD, FD_CHANNEL_FD),
                spec.cwd,
                spec.run_as,
                [status_w, out_w, err_w, child_fd, fd_channel_fd],
            )
        )
        # Never given up halfway: a child made for a cancelled start is ours
        # to reap (the reply is bounded by REPLY_TIMEOUT_S).
        try:
            await wait_until_done(forking)
        finally:
            if forking.done() and not forking.cancelled() and forking.exception() is None:
                killed = ForkedChild(forking.result(), None, None, -1)
                on_failure.callback(_kill_and_reap, killed)
        pid = forking.result()
        on_failure.pop_all()
    for fd in (status_w, out_w, err_w):  # the child has its copies
        os.close(fd)
    return _forked_child(pid, out_r, err_r, status_r)


def _forked_child(pid: int, out_r: int, err_r: int, status_r: int) -> Started:
    """The pipes' read ends as Popen has them (file objects, owned by
    transports); the status pipe's is read and closed when the child is reaped."""
    from drivebay.sandbox.fork_server import ForkedChild

    return ForkedChild(pid, open(out_r, "rb"), open(err_r, "rb"), status_r)
