"""The template of one environment: an interpreter that forks drivers.

With ``spawn: fork-server`` the daemon starts one template per driver
interpreter (``sandbox.fork_server``). The template imports what every
driver child imports before it loads driver code (this runtime, its codec,
the event loop), freezes those objects out of the garbage collector's reach
(``gc.freeze``: a collection in a child then writes none of their pages),
and waits for requests on its control socket. Each request carries a
child's settings (environment, working directory, identity) and, by
SCM_RIGHTS, its descriptors: the reply socket, the status pipe, the stdout
and stderr pipes, the channel and the descriptor channel.

For each request the template clones itself with ``CLONE_PARENT``, and with
``CLONE_NEWPID`` (or ``CLONE_NEWUSER | CLONE_NEWPID``) as the containment
asks and the kernel allows: the new process is the daemon's child, not the
template's, so the daemon reaps it and reads its exit and CPU time through a
pidfd as for an exec'd child, and a template that dies takes no driver with
it. The new process makes itself a session and process group of its own,
writes its pid on the reply socket (the template writes it too: either
report reaches the daemon), then becomes what an exec'd child is before its
first line of Python: stdin from /dev/null, stdout and stderr on the pipes, the
channel at fd 3 and the descriptor channel at fd 4, the working directory,
the driver's user (root daemon only; then dumpable again, as after an exec),
the driver's whole environment, the parent-death signal. In a namespace it
is PID 1: it forks the driver (PID 2), reaps orphans as ``init_shim``'s
init does, and leaves the driver's wait status on the status pipe (PID 1
cannot die of a signal it sends itself). The driver then runs the runtime
(``runtime.main``), which sets the limits as in an exec'd child.

Every child of a template shares its address-space layout and hash seed
(the known weakness of zygotes; docs/operations.md says when to prefer
``spawn: exec``). Standard library only: this runs in the driver's interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import json
import os
import signal
import socket
import sys
from typing import Any

from . import child_codec, init_shim, msgpack_lite, runtime

CLONE_PARENT = 0x00008000
SIGCHLD = 17
SYS_CLONE = {"x86_64": 56, "aarch64": 220}
PR_SET_DUMPABLE = 4
REQUEST_MAX = 1 << 20  # bytes: an environment is far smaller
FDS = ("reply", "status", "stdout", "stderr", "channel", "fd_channel")
CHANNEL_FD, FD_CHANNEL_FD, STATUS_FD = 3, 4, 5  # where a child finds them
EXIT_SETUP = 126  # the child could not be set up (the line on stderr says why)
_HIGH = 64  # received descriptors are moved above this before they are placed
# What to try for each containment, in order (as init_shim.contain does).
TRIES = {
    "process_group": (0,),
    "auto": (init_shim.CLONE_NEWPID, init_shim.CLONE_NEWUSER | init_shim.CLONE_NEWPID, 0),
    "pid_namespace": (init_shim.CLONE_NEWPID, init_shim.CLONE_NEWUSER | init_shim.CLONE_NEWPID),
}
_refused: dict[int, str] = {}  # namespace flags the kernel refused us, and why


def serve() -> None:
    """The template's main: ``-c`` with argv = [runtime dir, control fd, daemon pid]."""
    control_fd, daemon = int(sys.argv[2]), int(sys.argv[3])
    init_shim.die_with_parent(daemon)
    _warm()
    control = socket.socket(fileno=control_fd)
    control.set_inheritable(False)
    control.setblocking(True)
    control.sendall(b"ready")
    ids = os.geteuid(), os.getegid()  # ours, mapped to themselves in a user namespace
    while True:
        data, ancillary, _, _ = control.recvmsg(REQUEST_MAX, socket.CMSG_SPACE(len(FDS) * 4))
        if not data:
            os._exit(0)  # the daemon closed our socket: we are done
        fds = _fds(ancillary)
        if len(fds) != len(FDS):
            _close(fds)
            continue
        request = json.loads(data)
        mode = str(request["env"].get("DRIVEBAY_CONTAINMENT", "auto"))
        try:
            pid, flags, why = _clone_contained(TRIES.get(mode, TRIES["auto"]))
        except OSError as exc:  # EAGAIN: a process limit; said on the reply socket
            print(f"drivebay template: clone: {exc.strerror}", file=sys.stderr, flush=True)
            pid = -1
            # (An end-of-file alone would say that we died.) EPIPE: the
            # daemon gave up on this request.
            with contextlib.suppress(OSError):
                os.write(fds[0], f"clone: {exc.strerror}".encode("ascii", "replace"))
        if pid == 0:
            _become(request, fds, flags, why, ids, daemon)  # never returns
        if pid > 0:
            _report(fds[0], pid)
        _close(fds)


def _report(reply: int, pid: int) -> None:
    """The child's pid, as the child itself writes it: one of the two
    reports reaches the daemon even if the child dies before its own (it is
    the daemon's to reap) or we die before ours. Never blocking: the daemon
    reads the reply socket to its end, or gave up on it (then EPIPE)."""
    sock = socket.socket(fileno=reply)
    try:
        with contextlib.suppress(OSError):
            sock.send(f"{pid}\n".encode(), socket.MSG_DONTWAIT)
    finally:
        sock.detach()


def _warm() -> None:
    """Import what each child uses before it loads the driver; freeze it."""
    child_codec.ChildCodec()  # imports msgspec when the environment has it
    msgpack_lite.packb(None)
    runtime._event_loop_runner()  # imports uvloop when the environment has it
    import asyncio.unix_events  # noqa: F401
    import concurrent.futures.thread  # noqa: F401
    import fcntl  # noqa: F401
    import logging  # noqa: F401
    import resource  # noqa: F401
    import traceback  # noqa: F401

    init_shim._libc()
    gc.collect()
    gc.freeze()


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, usable, 4))
    return fds


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _clone_contained(tries: tuple[int, ...]) -> tuple[int, int, str]:
    """Clone with the first namespace flags the kernel allows: (pid, flags,
    why none could be had). A required namespace that cannot be had gives a
    plain child with flags -1, which says so and exits (as an exec'd child
    does). Raises OSError when no child can be made at all."""
    why = ""
    for flags in tries:
        if flags in _refused:
            why = _refused[flags]
            continue
        try:
            return _clone_parent(flags), flags, ""
        except OSError as exc:
            if flags == 0 or exc.errno not in (
                errno.EPERM,
                errno.EINVAL,
                errno.ENOSPC,
                errno.EUSERS,
            ):
                raise
            why = _refused[flags] = exc.strerror or str(exc)
    return _clone_parent(0), -1, why


def _clone_parent(flags: int) -> int:
    """``fork``, but the child's parent is our parent (the daemon), and in the
    namespaces of ``flags``. The interpreter's own fork bookkeeping runs
    around it, as in ``os.fork``. Raises OSError when the kernel refuses."""
    api = ctypes.pythonapi
    libc = init_shim._libc()
    number = SYS_CLONE[os.uname().machine]
    api.PyOS_BeforeFork()
    pid = int(libc.syscall(number, CLONE_PARENT | flags | SIGCHLD, 0, 0, 0, 0))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    error = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(error, os.strerror(error))
    return pid


def _become(
    request: dict[str, Any],
    fds: list[int],
    flags: int,
    why: str,
    ids: tuple[int, int],
    daemon: int,
) -> None:
    """In the new child: report our pid, set up as an exec'd child, run the
    driver; in a PID namespace we are its PID 1 and the driver our child."""
    try:
        high = [_move_high(fd) for fd in fds]
        reply = high[0]
        # A group of our own before the daemon knows us: it signals the
        # group, and a kill sent before a later setsid would miss us.
        os.setsid()
        # Our pid as the daemon sees it (in a PID namespace, getpid() is 1).
        os.write(reply, os.readlink("/proc/self").encode() + b"\n")
        os.close(reply)
        null = os.open(os.devnull, os.O_RDWR)
        places = (STATUS_FD, 0, 1, 2, CHANNEL_FD, FD_CHANNEL_FD)
        for target, fd in zip(places, [high[1], null, *high[2:]]):  # noqa: B905
            os.dup2(fd, target)
        os.closerange(STATUS_FD + 1, os.sysconf("SC_OPEN_MAX"))
    except BaseException:
        os._exit(EXIT_SETUP)
    try:
        if flags > 0 and flags & init_shim.CLONE_NEWUSER:
            _map_ids(*ids)
        _settle(request)
    except BaseException as exc:
        _say(f"drivebay runtime: cannot set up the driver process: {exc}")
        os._exit(EXIT_SETUP)
    sys.argv[:] = sys.argv[:2]  # as an exec'd child has them
    env = request["env"]
    name = f"{env.get('DRIVEBAY_DRIVER', '')}@{env.get('DRIVEBAY_VERSION', '')}"
    _retitle(f"drivebay {name}")
    if flags < 0:  # a namespace was required and the kernel refused it
        _say(
            f"drivebay runtime: cannot give the driver a PID namespace: {why}; "
            "set `containment: auto` in the config to run it without one"
        )
        os._exit(init_shim.EXIT_CONTAINMENT)
    _die_with(daemon)
    if flags > 0:
        _as_init(name)  # returns in the driver, PID 2
    else:
        os.close(STATUS_FD)
    _rehearse()
    runtime.main()
    os._exit(0)  # main ends with os._exit; never reached


def _retitle(title: str) -> None:
    """What ``ps`` shows for us (our command line), instead of the template's:
    written over the arguments' memory, as ``setproctitle`` does."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        data = title.encode("utf-8", "replace")[: end - start - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            memory.seek(start)
            memory.write(data + b"\0" * (end - start - len(data)))
    except (OSError, ValueError, IndexError):
        pass  # a cosmetic: the template's command line stays


REHEARSAL = """
import asyncio


class Rehearsal:
    \"\"\"What loading a driver class does, on a class of ours.\"\"\"

    def __init__(self, resource_id: str, properties: dict, emit=None) -> None:
        self.resource_id = resource_id

    async def run(self, count: int = 1, *, name: str = "") -> dict:
        \"\"\"An async operation.\"\"\"
        return {"count": count}

    def sync(self, value=None):
        return value
"""


def _rehearse() -> None:
    """Before the driver is loaded (a warm spare waits for that): do once
    what loading it does (compile, run a module, look at a class's
    operations), so that the pages of the interpreter this touches are
    copied from the template now, not while a crashed driver's spare is
    being started."""
    import types

    module = types.ModuleType("_drivebay_rehearsal")
    exec(compile(REHEARSAL, "<rehearsal>", "exec"), module.__dict__)
    runtime.Operations(module.Rehearsal)


def _say(line: str) -> None:
    """One line on stderr, control characters escaped."""
    shown = repr(line)[1:-1]
    os.write(2, shown.encode("ascii", "backslashreplace") + b"\n")


def _map_ids(uid: int, gid: int) -> None:
    """In our own user namespace: our ids map to themselves (init_shim's way)."""
    try:
        init_shim._write("/proc/self/setgroups", "deny")
        init_shim._write("/proc/self/uid_map", f"{uid} {uid} 1\n")
        init_shim._write("/proc/self/gid_map", f"{gid} {gid} 1\n")
    except OSError as exc:
        raise init_shim.ContainmentError(
            f"cannot map our ids in the user namespace: {exc}"
        ) from exc


def _die_with(daemon: int) -> None:
    """The parent-death signal, then: is the daemon still our parent? (Read
    from /proc: in a PID namespace getppid() is 0.) Set after the identity,
    whose change would clear it."""
    init_shim._libc().prctl(init_shim.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("PPid:"):
                if int(line.split()[1]) != daemon:
                    os._exit(1)  # the daemon died before we could tie ourselves to it
                return


def _as_init(name: str) -> None:
    """PID 1: fork the driver (returning in it), reap orphans until it exits,
    leave its wait status on the status pipe for the daemon, exit. (PID 1
    cannot die of a signal it sends itself, so the pipe carries the status.)"""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        driver = os.fork()
    except BaseException as exc:  # EAGAIN: a process limit reached
        init_shim._fail("init", exc)
    if driver == 0:
        os.close(STATUS_FD)
        init_shim._libc().prctl(init_shim.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        return
    try:
        init_shim._libc().prctl(init_shim.PR_SET_NAME, b"drivebay-init", 0, 0, 0)
        _retitle(f"drivebay-init {name}")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Python's handler would let it in
        init_shim._hold_nothing(keep=(STATUS_FD,))
        while True:
            status = init_shim._reap_all(driver)
            if status is not None:
                os.write(STATUS_FD, status.to_bytes(4, "little"))
                code = os.waitstatus_to_exitcode(status)
                os._exit(code if code >= 0 else 128 - code)  # the status pipe says which
            signal.sigwaitinfo({signal.SIGCHLD})
    except BaseException as exc:
        init_shim._fail("init", exc)


def _move_high(fd: int) -> int:
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, _HIGH)
    os.close(fd)
    return moved


def _settle(request: dict[str, Any]) -> None:
    """Working directory, identity, environment: in Popen's order."""
    os.chdir(str(request["cwd"]))
    ids = request.get("ids")
    if isinstance(ids, list) and (os.geteuid() == 0 or ids[:2] != [os.getuid(), os.getgid()]):
        uid, gid, groups = int(ids[0]), int(ids[1]), [int(g) for g in ids[2]]
        os.setgroups(groups)
        os.setregid(gid, gid)
        os.setreuid(uid, uid)
        # A process that changed its ids is not dumpable until it execs: it
        # could not be traced nor read its own /proc files as the driver expects.
        init_shim._libc().prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
