"""The one exception hierarchy of drivebay.

Every error says who is at fault, through its base class:

- ``BundleError``: the operator gave a bad bundle; the message names the
  bundle, the field and the fix.
- ``RequestError``: the operator or a client asked for something impossible.
- ``DriverError``: a driver process misbehaved (crashed, hung, broke the
  protocol, raised); the kernel and every other driver keep running.
- ``KernelError``: the daemon itself cannot go on (state dir, lock, bug).

``str(error)`` is always one line fit to show an operator. Lives in
``protocol`` because every other package may import it (dependencies point
kernel -> sandbox -> protocol), and the driver runtime too (standard library
only): the names an ``error`` reply carries are defined here, once.
"""

from __future__ import annotations


class DrivebayError(Exception):
    """Base of every error drivebay raises on purpose."""


# -- the operator's input ---------------------------------------------------


class BundleError(DrivebayError):
    """A bundle was rejected: unsafe, malformed or inconsistent.

    The message is one line: ``<bundle>: <file>: <field path>: <problem and fix>``.
    Nothing of the bundle was loaded; fix the bundle and drop it again.
    """


class ConfigError(DrivebayError):
    """The daemon's configuration file or flags are invalid; fix and reload."""


class SigningError(DrivebayError):
    """A key, certificate or signature given to ``drivebay`` cannot be used
    (unreadable, of another kind, for another key or name). Nothing was
    written; the message says which file and how to fix it."""


class RequestError(DrivebayError):
    """A client asked for something that cannot be done (bad argument, wrong
    state). Nothing changed; the message says what to ask instead."""

    exit_code = 1


class NoSuchName(RequestError):
    """A command named a driver or resource the daemon does not know."""

    exit_code = 4


class NotRunning(RequestError):
    """The command needs a running target; start it first."""

    exit_code = 7


class Busy(RequestError):
    """A resource's mailbox is full; retry later (backpressure, nothing queued)."""


# -- a driver's behaviour ----------------------------------------------------


class DriverError(DrivebayError):
    """A driver process misbehaved; only that driver is affected."""


class ProtocolError(DriverError):
    """A peer sent bytes that are not a valid frame or message, a frame over
    the size limit, or speaks no common protocol version. The channel is
    closed; the kernel restarts that driver."""


class DriverStartError(DriverError):
    """A driver child did not complete its handshake: it exited, or said
    nothing within the deadline (it has been killed and reaped). The message
    carries the exit status and the last lines of its stderr."""


class DriverCrashed(DriverError):
    """The driver process died while a call was in flight. The call may or may
    not have taken effect; the caller decides whether to retry."""


class DriverHung(DriverError):
    """The driver stopped answering pings and was killed."""


class CallTimeout(DriverError):
    """A call passed its deadline; it was cancelled in the driver."""


class OutcomeUnknown(DriverError):
    """In a cluster: the operation was sent to the driver by a node that
    stopped (or lost the resource) before its result was recorded, and the
    driver neither lists it as idempotent nor has ``reconcile_operation``.
    It may or may not have taken effect: check the device before calling it
    again. List the operation under ``idempotent:`` in the manifest, or give
    the driver class ``reconcile_operation``, so that the next owner settles
    it by itself."""


class Fenced(RequestError):
    """In a cluster: this node may not act on the resource now (its lease
    may have ended, or another node owns it). The operation was not sent; it
    stays queued and runs once, on the resource's owner."""


class OperationFailed(DriverError):
    """The driver's operation raised. ``type`` and ``traceback`` are the
    driver's; the driver process is still healthy."""

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class EnvBuildError(DriverError):
    """Building a driver's virtualenv failed; the message carries uv's own
    words. The previous version of the driver, if any, keeps running."""


class HandoverFailed(DriverError):
    """A resource's state could not move to its new instance (the old
    instance's ``handoff``, the new one's ``takeover``, or the descriptors
    between them). Nothing was lost: the old instance got ``handoff_aborted``
    and serves on; the upgrade (or property change) is rolled back."""


# -- the daemon itself ---------------------------------------------------------


class KernelError(DrivebayError):
    """The daemon cannot go on: state dir unusable, already running, or a bug."""


class StateStoreLost(KernelError):
    """The state store file (``resources.db``) was deleted or replaced while
    the daemon ran. What the daemon holds in memory still serves and reads
    still work, but every change is refused: it would go to a file nobody
    will read again. Restart ``drivebayd`` to use the file now at that path."""


# -- names on the wire ----------------------------------------------------------
# An ``error`` reply's ``type`` says what failed: a driver's own exception is
# sent under its class's name (``module.Class``, a builtin bare); the driver
# runtime's own refusals use these names. The kernel raises each as
# ``OperationFailed`` with that ``type_name``; its own errors are named by their
# class (``CallTimeout``, ``DriverCrashed``...): ``error_name`` gives either.

CANCELLED = "Cancelled"
"""The kernel gave up on the request (its deadline passed, or it is stopping);
the operation has ended, or never started."""
DRAINING = "Draining"
"""The driver is finishing its work before it exits; the kernel retries elsewhere."""
NOT_ATTACHED = "NotAttached"
"""The call names a resource the driver process holds no instance for."""
ALREADY_ATTACHED = "AlreadyAttached"
"""The attach names a resource the driver process already holds an instance for."""
UNKNOWN_OPERATION = "UnknownOperation"
"""The driver class has no operation of that name."""
RESULT_TOO_LARGE = "ResultTooLarge"
"""The operation's result would not fit in one frame (``max_frame_bytes``)."""
UNENCODABLE_RESULT = "UnencodableResult"
"""The operation returned a value of a type the wire cannot carry."""
STATE_TOO_LARGE = "StateTooLarge"
"""The state an instance hands over would not fit in one frame (``max_frame_bytes``)."""
HANDOFF_FAILED = "HandoffFailed"
"""A state could not be handed over or taken over: a value it holds, or its
descriptors (truncated, the new process out of descriptors)."""
OP_ID_GIVEN = "OpIdGiven"
"""The call's arguments hold ``op_id``, which the operation takes from the kernel."""
NO_RECONCILE = "NoReconcile"
"""The kernel asked ``reconcile_operation`` of a class that has none."""

RUNTIME_ERRORS = frozenset(
    {
        CANCELLED,
        DRAINING,
        NOT_ATTACHED,
        ALREADY_ATTACHED,
        UNKNOWN_OPERATION,
        RESULT_TOO_LARGE,
        UNENCODABLE_RESULT,
        STATE_TOO_LARGE,
        HANDOFF_FAILED,
        OP_ID_GIVEN,
        NO_RECONCILE,
    }
)
"""Every name the driver runtime itself puts in an ``error`` reply."""


def error_name(exc: BaseException) -> str:
    """The name of what failed, as clients see it: the ``type`` of an
    ``OperationFailed`` (a driver's exception or a runtime refusal), else the
    class name of a drivebay error (``CallTimeout``, ``DriverCrashed``...)."""
    if isinstance(exc, OperationFailed):
        return exc.type_name
    return type(exc).__name__
