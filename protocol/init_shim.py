"""A PID namespace per driver, with our init as its PID 1: nothing the driver
starts outlives it.

The child's bootstrap calls ``start`` first thing, while it is one thread
and has imported next to nothing. The process the daemon started (the
*keeper*) makes a new PID namespace for its children (with a user namespace
when it lacks CAP_SYS_ADMIN, as an ordinary user or a ``user:`` driver does)
and forks the *init*, PID 1 there, which forks the runtime, which returns
from ``start`` and goes on as the driver.
Whatever the driver starts lives in the namespace, whatever it does
(``setsid``, a double fork): an orphan is re-parented to the init, which reaps
it, and when the init dies the Linux kernel kills every process left in the
namespace. The init exits when the runtime does and dies with the keeper, the
keeper with the daemon (parent-death signals), so ``kill -9`` of the driver,
of the keeper or of the daemon ends all of them.

The init's only own child is the runtime; the driver's children are the
runtime's, so reaping orphans with ``waitpid(-1)`` cannot take a status the
driver waits for. The keeper hands the runtime's exit status on as its own
(the same code, or death by the same signal), so the daemon sees the driver's
exit as if it were its direct child. The daemon signals the process group,
which the three share, so SIGTERM reaches the driver directly: the keeper
ignores it, and the init, as PID 1, gets no signal it does not handle.

Inside the namespace the driver's pid is 2 and its parent's 1.
Standard library only: this runs in the driver's interpreter.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
EXIT_CONTAINMENT = 5  # the runtime could not contain the driver as it was told to

GROUP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class ContainmentError(Exception):
    """The namespace was made but could not be set up: the child cannot go on."""


def start() -> None:
    """The bootstrap's first step, before the runtime is imported (so the
    keeper and the init, copies of this process, stay small): tie our life to
    the daemon's, then contain as ``DRIVEBAY_CONTAINMENT`` says. Exits with
    EXIT_CONTAINMENT, saying why on stderr, when a required namespace cannot
    be made."""
    die_with_parent(int(os.environ.get("DRIVEBAY_PARENT_PID", "0")))
    mode = os.environ.get("DRIVEBAY_CONTAINMENT", "auto")
    try:
        contain(mode)
    except (OSError, ContainmentError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        other = "auto" if mode == "pid_namespace" else "process_group"
        print(
            f"drivebay runtime: cannot give the driver a PID namespace: {reason}; "
            f"set `containment: {other}` in the config to run it without one",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_CONTAINMENT)


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL us when the daemon dies; exit if it already has."""
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)  # the daemon died before we could tie ourselves to it


def contain(mode: str) -> str:
    """Go on as the driver inside a PID namespace with our init as PID 1.

    ``mode`` is ``auto`` (a namespace where the kernel allows one, else
    nothing), ``pid_namespace`` (required) or ``process_group`` (nothing).
    Returns what was done, or ``""`` when the driver stays where it is.
    Raises OSError when a required namespace cannot be made, and, whatever
    the mode, OSError or ContainmentError when one was made but the init
    could not be started in it (the child must not go on then: its next
    fork would be the namespace's PID 1).
    """
    if mode == "process_group":
        return ""
    try:
        kind = _new_namespace()
    except OSError:
        if mode == "pid_namespace":
            raise
        return ""
    _fork_init()  # returns in the runtime only
    return kind


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if _libc().unshare(flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"unshare: {os.strerror(code)}")


def _new_namespace() -> str:
    """A PID namespace for our next children; with a user namespace when needed."""
    try:
        _unshare(CLONE_NEWPID)
        return "PID namespace"
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EINVAL):
            raise
    # Without CAP_SYS_ADMIN: a user namespace of our own gives it, over our
    # namespaces only. Our ids map to themselves: the driver sees no change.
    uid, gid = os.geteuid(), os.getegid()
    _unshare(CLONE_NEWUSER | CLONE_NEWPID)
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
        _write("/proc/self/gid_map", f"{gid} {gid} 1\n")
    except OSError as exc:
        # Past unshare there is no way back to an uncontained start.
        raise ContainmentError(f"cannot map our ids in the user namespace: {exc}") from exc
    return "user and PID namespace"


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _fork_init() -> None:
    """Keeper: fork the init and hand on the runtime's exit. Returns in the runtime."""
    keeper = os.pidfd_open(os.getpid())
    status_r, status_w = os.pipe()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    init = os.fork()  # the first child after unshare: PID 1 of the namespace
    if init == 0:
        os.close(status_r)
        _as_init(keeper, status_w)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        return  # the runtime
    os.close(keeper)
    os.close(status_w)
    _as_keeper(init, status_r)


def _as_keeper(init: int, status_r: int) -> None:
    """Wait for the init, then end the way the runtime ended. Never returns."""
    try:
        for signum in GROUP_SIGNALS:  # sent to the group: the driver gets them too
            signal.signal(signum, signal.SIG_IGN)
        _hold_nothing(keep=(status_r,))
        report = b""
        while chunk := os.read(status_r, 4):
            report += chunk
        _, own = os.waitpid(init, 0)
        status = int.from_bytes(report, "little") if len(report) == 4 else own
        _end_like(os.waitstatus_to_exitcode(status))
    except BaseException as exc:
        _fail("keeper", exc)


def _end_like(code: int) -> None:
    """Exit with ``code``, or die of signal ``-code`` (without a core file)."""
    if code >= 0:
        os._exit(code)
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    if -code not in (signal.SIGKILL, signal.SIGSTOP):  # their action cannot be changed
        signal.signal(-code, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {-code})
    os.kill(os.getpid(), -code)
    os._exit(128 - code)  # a signal that does not end a process (SIGCHLD, ...)


def _as_init(keeper: int, status_w: int) -> None:
    """PID 1: fork the runtime (returning in it), then reap orphans until the
    runtime exits; its status goes to the keeper."""
    libc = _libc()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if select.select([keeper], [], [], 0)[0]:
        os._exit(EXIT_CONTAINMENT)  # the keeper died before the parent-death signal was set
    try:
        runtime = os.fork()
    except BaseException as exc:  # EAGAIN: a process limit reached
        _fail("init", exc)
    if runtime == 0:
        os.close(keeper)
        os.close(status_w)
        # Dies with the init too (the kernel kills the namespace), but at once.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        return
    try:
        libc.prctl(PR_SET_NAME, b"drivebay-init", 0, 0, 0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Python's handler would let it in
        _hold_nothing(keep=(keeper, status_w))
        while True:
            status = _reap_all(runtime)
            if status is not None:
                os.write(status_w, status.to_bytes(4, "little"))
                os._exit(0)  # and the kernel kills what is left in the namespace
            signal.sigwaitinfo({signal.SIGCHLD})
    except BaseException as exc:
        _fail("init", exc)


def _fail(who: str, exc: BaseException) -> None:  # never returns (no typing import here)
    """End with one line on stderr (the driver's log, quoted in the kernel's
    error) instead of a bare exit status 5; control characters escaped."""
    line = repr(f"drivebay {who}: {type(exc).__name__}: {exc}")[1:-1]
    os.write(2, line.encode("ascii", "backslashreplace") + b"\n")
    os._exit(EXIT_CONTAINMENT)


def _reap_all(runtime: int) -> int | None:
    """Reap every child that has exited; the runtime's wait status if it has."""
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == runtime:
            found = status


def _hold_nothing(keep: tuple[int, ...]) -> None:
    """Close every descriptor but stderr and ``keep``: not the driver's channel,
    not its stdout pipe (the daemon reads end-of-file from them)."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
    os.chdir("/")


def probe() -> None:
    """``python -c`` entry of the daemon's start check: prints what ``contain``
    does for a driver of this user, or ``none: REASON``."""
    if len(sys.argv) > 2:  # root probing for a ``user:``: become it first
        uid, gid = int(sys.argv[1]), int(sys.argv[2])
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        # As after an exec: a process that changed its uid may not write its own
        # /proc/self files (uid_map) until it is dumpable again.
        _libc().prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    try:
        kind = contain("pid_namespace")
    except OSError as exc:
        print(f"none: {exc.strerror or exc}", flush=True)
        os._exit(0)
    except ContainmentError as exc:
        print(f"none: {exc}", flush=True)
        os._exit(0)
    print(kind if os.getpid() == 2 else "none: the driver is not PID 2 inside", flush=True)
    os._exit(0)
