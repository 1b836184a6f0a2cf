"""Driver children forked from a template per interpreter (``spawn: fork-server``).

``Templates`` holds one template process (``protocol.fork_template``) per
driver interpreter, started on first use and again after it exited. A
request sends the child's settings and its descriptors (reply socket, stdout
and stderr pipes, channel, descriptor channel) over the template's control
socket (``SOCK_SEQPACKET``, SCM_RIGHTS); the template clones itself with
``CLONE_PARENT``, so the child is drivebayd's own child, and the child and
the template each write its pid on the reply socket (a line each). The
daemon then checks that the pid is its child (``waitid`` with ``WNOWAIT``,
which reaps nothing) before it opens a pidfd for it: only the daemon reaps
its children, so the pid cannot have been reused in between. A driver can
only come from the template of its own interpreter: the templates are keyed
by it.

The template is reaped here, through its pidfd, as soon as it exits; the
children it made are not its children and go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from drivebay.sandbox.privileges import RunAs
from drivebay.sandbox.runtime_dir import PACKAGE

log = logging.getLogger("drivebay.fork_server")

START_TIMEOUT_S = 30.0  # a template imports the runtime once; an idle host needs ~0.1 s
REPLY_TIMEOUT_S = 10.0
TEMPLATE_BOOTSTRAP = (
    f"import sys; sys.path.insert(0, sys.argv[1]); from {PACKAGE}.fork_template import serve; "
    "serve()"
)
_TEMPLATE_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "TZ")


class ForkedChild:
    """What ``spawn`` needs of a ``subprocess.Popen``, for a forked child."""

    def __init__(self, pid: int, stdout: Any, stderr: Any, status_fd: int) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        # The read end of the pipe on which a PID 1 leaves the driver's wait
        # status (spawn.ChildProcess reads and closes it once it reaps us).
        self.status_fd = status_fd

    def wait(self) -> int:
        """Reap the child (blocking): only for one that was killed and never watched."""
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            if self.status_fd >= 0:
                os.close(self.status_fd)
                self.status_fd = -1
        return self.returncode


class Template:
    """One template process and its control socket."""

    def __init__(self, python: Path, runtime_dir: Path) -> None:
        self.python = python
        self.runtime_dir = runtime_dir
        self.pid = 0
        self._popen: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._pidfd = -1
        self._exited = asyncio.Event()
        # One sender at a time: a full socket is waited for with the loop's
        # writer callback, of which a descriptor has one (a second would
        # replace the first, whose sender would then wait out its timeout).
        self._sending = asyncio.Lock()
        # The sender waiting for room now: it owns the socket's writer
        # callback, so it, not whoever ends the template, closes the socket.
        self._room: asyncio.Future[None] | None = None

    @property
    def alive(self) -> bool:
        return self._control is not None

    async def start(self) -> None:
        """Start the template and wait until it has imported what it shares."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(ours.close)
            with theirs:
                popen = _launch(self.python, self.runtime_dir, theirs.fileno())
            on_failure.callback(_kill_and_wait, popen)
            pidfd = os.pidfd_open(popen.pid)
            on_failure.callback(os.close, pidfd)
            ours.setblocking(False)
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = await loop.sock_recv(ours, 16)
            if ready != b"ready":
                raise OSError(f"the template of {self.python} exited while starting")
            on_failure.pop_all()
        self.pid, self._popen, self._control, self._pidfd = popen.pid, popen, ours, pidfd
        self._exited.clear()
        loop.add_reader(pidfd, self._on_exit)
        log.info("template for %s: pid %d", self.python, self.pid)

    def _on_exit(self) -> None:
        """Reap the template; the drivers it made are not its children and go on."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if self._popen is not None:
            self._popen.returncode = code  # reaped here, not by Popen
        self._drop_control()
        self._exited.set()
        if code != 0:
            log.warning("template for %s (pid %d) exited: %s", self.python, self.pid, code)

    async def fork(self, settings: dict[str, Any], fds: list[int]) -> int:
        """Send one request; return the pid of the child it made (our child)."""
        if self._control is None:
            raise ConnectionResetError(f"the template of {self.python} has exited")
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        with ours:
            try:
                with theirs:
                    request = json.dumps(settings).encode()
                    async with self._sending:
                        await self._send(request, [theirs.fileno(), *fds])
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    answer = await _answer(loop, ours)
            except TimeoutError:
                await self._give_up(ours)
                raise
        if not answer and await self._died():  # with our request unread
            raise ConnectionResetError(f"the template of {self.python} has exited")
        pid = _reported(answer)
        if pid is None:
            why = repr(answer.decode("ascii", "replace"))[1:-1] or "no answer"
            raise OSError(f"the template of {self.python} could not fork a driver process: {why}")
        # Ours (and not yet reaped, by us, the only one who reaps it)? Then no
        # other process can have its pid: the pidfd is for this child.
        _check_ours(pid)
        return pid

    async def _died(self) -> bool:
        """After an end-of-file with no answer: did the template die? (It
        answers a failed clone in words, so an end-of-file alone comes from
        its death, whose reaping may be a loop pass behind: waited for,
        bounded.)"""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._exited.wait(), REPLY_TIMEOUT_S)
        return self._exited.is_set()

    async def _send(self, data: bytes, fds: list[int]) -> None:
        """One request with its descriptors, waiting (bounded) for room on a
        full socket; ConnectionResetError once the template has exited or is
        ended, also while we wait (``_drop_control`` wakes us)."""
        loop = asyncio.get_running_loop()
        while True:
            sock = self._control
            if sock is None:
                raise ConnectionResetError(f"the template of {self.python} has exited")
            try:
                socket.send_fds(sock, [data], fds)
                return
            except BlockingIOError:
                pass
            fd = sock.fileno()
            self._room = room = loop.create_future()
            loop.add_writer(fd, _wake, room)
            try:
                async with asyncio.timeout(REPLY_TIMEOUT_S):
                    await room
            finally:
                loop.remove_writer(fd)
                self._room = None
                if self._control is not sock:  # dropped meanwhile: left to us to close
                    sock.close()

    def _drop_control(self) -> None:
        """No more requests: close the control socket, or, while a sender
        waits for room on it, wake that sender, which closes it (it must
        first remove its writer callback, which needs the descriptor)."""
        control, self._control = self._control, None
        if control is None:
            return
        if self._room is not None:
            _wake(self._room)
        else:
            control.close()

    async def _give_up(self, reply: socket.socket) -> None:
        """The template took no request or answered none within
        REPLY_TIMEOUT_S (stopped, stuck): kill it, so that the requests it
        holds die with it and the next fork starts a new one. A child it made
        for this request just before is ours to reap: it writes its pid on
        ``reply`` first thing, and holds its other end alone once the template
        is gone; a child made later cannot be (its request died unread)."""
        log.warning("template for %s (pid %d) does not answer: killed", self.python, self.pid)
        if self._pidfd >= 0:  # not reaped yet: the pidfd is still this template's
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._exited.wait(), REPLY_TIMEOUT_S)
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                answer = await _answer(asyncio.get_running_loop(), reply)
            pid = _reported(answer)
            if pid is not None:
                await _kill_stray(pid)

    async def close(self, timeout: float) -> None:
        """End the template (closing its socket makes it exit) and reap it."""
        self._drop_control()
        if self._pidfd < 0:
            return
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await asyncio.wait_for(self._exited.wait(), timeout)


class Templates:
    """The templates of every interpreter, owned by the kernel (``close`` at its end)."""

    def __init__(self) -> None:
        self._templates: dict[tuple[str, str], Template] = {}
        self._starting: dict[tuple[str, str], asyncio.Lock] = {}

    def pids(self) -> list[int]:
        return [t.pid for t in self._templates.values() if t.alive]

    async def template(self, python: Path, runtime_dir: Path) -> Template:
        """The running template of ``python`` and ``runtime_dir``; started
        (again) when it is not."""
        key = (str(python), str(runtime_dir))
        lock = self._starting.setdefault(key, asyncio.Lock())
        async with lock:
            template = self._templates.get(key)
            if template is None or not template.alive:
                template = Template(python, runtime_dir)
                await template.start()
                self._templates[key] = template
            return template

    async def fork(
        self,
        python: Path,
        runtime_dir: Path,
        env: dict[str, str],
        cwd: Path,
        run_as: RunAs | None,
        fds: list[int],
    ) -> int:
        """A new child of ours, forked from ``python``'s template."""
        settings: dict[str, Any] = {"env": env, "cwd": str(cwd)}
        if run_as is not None:
            settings["ids"] = [run_as.uid, run_as.gid, list(run_as.groups)]
        template = await self.template(python, runtime_dir)
        try:
            return await template.fork(settings, fds)
        except ConnectionError:  # it died just now (killed?): once more with a new one
            await template.close(START_TIMEOUT_S)
            template = await self.template(python, runtime_dir)
            return await template.fork(settings, fds)

    async def retire(self, envs: list[Path]) -> None:
        """End the templates of interpreters in ``envs`` (removed environments)."""
        gone = [key for key in self._templates if any(Path(key[0]).is_relative_to(e) for e in envs)]
        await asyncio.gather(*(self._templates.pop(key).close(START_TIMEOUT_S) for key in gone))

    async def close(self, timeout: float = 5.0) -> None:
        templates, self._templates = list(self._templates.values()), {}
        await asyncio.gather(*(t.close(timeout) for t in templates))


def _reported(answer: bytes) -> int | None:
    """The child's pid from the reply: a line from the child and one from
    the template (the same pid), either of which may be missing."""
    first = answer.split(b"\n", 1)[0]
    return int(first) if first.isdigit() else None


async def _answer(loop: asyncio.AbstractEventLoop, reply: socket.socket) -> bytes:
    """What the child wrote on the reply socket (its pid), up to end-of-file."""
    answer = b""
    while chunk := await loop.sock_recv(reply, 32):
        answer += chunk
    return answer


async def _kill_stray(pid: int) -> None:
    """Kill and reap a child of ours made for a start given up (bounded)."""
    try:
        _check_ours(pid)
        pidfd = os.pidfd_open(pid)
    except (ChildProcessError, ProcessLookupError):
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        loop.add_reader(pidfd, _wake, gone)
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                await gone
        finally:
            loop.remove_reader(pidfd)
        _reap(pid)
    finally:
        os.close(pidfd)


def _reap(pid: int) -> None:
    """Reap a child that has exited (its pidfd said so): no wait."""
    os.waitpid(pid, 0)


def _kill_and_wait(popen: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        popen.kill()
    popen.wait()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _check_ours(pid: int) -> None:
    """Raises ChildProcessError unless ``pid`` is an unreaped child of ours
    (``WNOWAIT``: nothing is reaped, and ``WNOHANG``: nothing waits)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)


def _launch(python: Path, runtime_dir: Path, control_fd: int) -> subprocess.Popen[bytes]:
    """Start a template (vfork + exec: within a millisecond)."""
    env = {k: os.environ[k] for k in _TEMPLATE_ENVIRONMENT if k in os.environ}
    return subprocess.Popen(
        [
            str(python),
            "-I",
            "-B",
            "-c",
            TEMPLATE_BOOTSTRAP,
            str(runtime_dir),
            str(control_fd),
            str(os.getpid()),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        pass_fds=(control_fd,),
        start_new_session=True,
        cwd="/",
        env=env,
    )
