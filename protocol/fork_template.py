"""The template of one environment: an interpreter that forks drivers.

With ``spawn: fork-server`` the daemon starts one template per driver
interpreter (``sandbox.fork_server``). The template imports what every
driver child imports before it loads driver code (this runtime, its codec,
the event loop), freezes those objects out of the garbage collector's reach
(``gc.freeze``: a collection in a child then writes none of their pages),
and waits for requests on its control socket. Each request carries a
child's settings (environment, working directory, identity) and, by
SCM_RIGHTS, its descriptors: the reply socket, the stdout and stderr pipes,
the channel and the descriptor channel.

For each request the template clones itself with ``CLONE_PARENT``: the new
process is the daemon's child, not the template's, so the daemon reaps it
and reads its exit status and CPU time through a pidfd as for an exec'd
child, and a template that dies takes no driver with it. The new process
writes its pid on the reply socket, then becomes what an exec'd child is
before its first line of Python: a session and process group of its own,
stdin from /dev/null, stdout and stderr on the pipes, the channel at fd 3
and the descriptor channel at fd 4 and nothing else, the working
directory, the driver's user (root daemon only; then dumpable again, as
after an exec), the driver's whole environment. It then runs the bootstrap
of an exec'd child (``init_shim.start``, ``runtime.main``), so the parent
death signal, the PID namespace and the limits are set exactly as there.

Every child of a template shares its address-space layout and hash seed
(the known weakness of zygotes; docs/operations.md says when to prefer
``spawn: exec``). Standard library only: this runs in the driver's interpreter.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import socket
import sys

from . import child_codec, init_shim, msgpack_lite, runtime

CLONE_PARENT = 0x00008000
SIGCHLD = 17
SYS_CLONE = {"x86_64": 56, "aarch64": 220}
PR_SET_DUMPABLE = 4
REQUEST_MAX = 1 << 20  # bytes: an environment is far smaller
FDS = ("reply", "stdout", "stderr", "channel", "fd_channel")
CHANNEL_FD, FD_CHANNEL_FD = 3, 4  # where a child finds its two channels
EXIT_SETUP = 126  # the child could not be set up (the line on stderr says why)
_HIGH = 64  # received descriptors are moved above this before they are placed


def serve() -> None:
    """The template's main: ``-c`` with argv = [runtime dir, control fd, daemon pid]."""
    control_fd, daemon = int(sys.argv[2]), int(sys.argv[3])
    init_shim.die_with_parent(daemon)
    _warm()
    control = socket.socket(fileno=control_fd)
    control.set_inheritable(False)
    control.setblocking(True)
    control.sendall(b"ready")
    while True:
        data, ancillary, _, _ = control.recvmsg(REQUEST_MAX, socket.CMSG_SPACE(len(FDS) * 4))
        if not data:
            os._exit(0)  # the daemon closed our socket: we are done
        fds = _fds(ancillary)
        if len(fds) != len(FDS):
            _close(fds)
            continue
        pid = _clone_parent()
        if pid == 0:
            _become(json.loads(data), fds)  # never returns
        _close(fds)


def _warm() -> None:
    """Import what each child uses before it loads the driver; freeze it."""
    child_codec.ChildCodec()  # imports msgspec when the environment has it
    msgpack_lite.packb(None)
    runtime._event_loop_runner()  # imports uvloop when the environment has it
    import asyncio.unix_events  # noqa: F401
    import concurrent.futures.thread  # noqa: F401
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


def _clone_parent() -> int:
    """``fork``, but the child's parent is our parent (the daemon). The
    interpreter's own fork bookkeeping runs around it, as in ``os.fork``."""
    api = ctypes.pythonapi
    libc = init_shim._libc()
    number = SYS_CLONE.get(os.uname().machine)
    if number is None:
        return os.fork()  # unknown ABI: the child is then ours (the daemon refuses it)
    api.PyOS_BeforeFork()
    pid = int(libc.syscall(number, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    error = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        print(f"drivebay template: clone: {os.strerror(error)}", file=sys.stderr, flush=True)
    return pid


def _become(request: dict[str, object], fds: list[int]) -> None:
    """In the new child: report our pid, set up as an exec'd child, run the driver."""
    try:
        high = [_move_high(fd) for fd in fds]
        reply = high[0]
        os.write(reply, str(os.getpid()).encode())
        os.close(reply)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for target, fd in zip((0, 1, 2, CHANNEL_FD, FD_CHANNEL_FD), [null, *high[1:]]):  # noqa: B905
            os.dup2(fd, target)
        os.closerange(FD_CHANNEL_FD + 1, os.sysconf("SC_OPEN_MAX"))
    except BaseException:
        os._exit(EXIT_SETUP)
    try:
        _settle(request)
    except BaseException as exc:
        line = repr(f"drivebay runtime: cannot set up the driver process: {exc}")[1:-1]
        os.write(2, line.encode("ascii", "backslashreplace") + b"\n")
        os._exit(EXIT_SETUP)
    sys.argv[:] = sys.argv[:2]  # as an exec'd child has them
    init_shim.start()
    runtime.main()
    os._exit(0)  # main ends with os._exit; never reached


def _move_high(fd: int) -> int:
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, _HIGH)
    os.close(fd)
    return moved


def _settle(request: dict[str, object]) -> None:
    """Working directory, identity, environment: in Popen's order."""
    os.chdir(str(request["cwd"]))
    ids = request.get("ids")
    if isinstance(ids, list):
        uid, gid, groups = int(ids[0]), int(ids[1]), [int(g) for g in ids[2]]
        os.setgroups(groups)
        os.setregid(gid, gid)
        os.setreuid(uid, uid)
        # A process that changed its ids is not dumpable until it execs: it
        # could not write its own uid_map (the user namespace) nor be traced.
        init_shim._libc().prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
