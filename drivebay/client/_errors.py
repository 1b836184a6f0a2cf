"""What the clients raise, besides ``RequestError`` for a request that cannot
be encoded: all of it under ``DrivebayError`` (standard library only).

The two connection errors are ``ConnectionError``s too, so code that waits for
a daemon to come up (``except OSError``) keeps working.
"""

from __future__ import annotations

from drivebay.protocol.errors import DrivebayError


class OperationError(DrivebayError):
    """The daemon answered a request with an error.

    ``type`` is the drivebay error's name (``NoSuchName``, ``OperationFailed``,
    ``CallTimeout``, ``RequestError`` for a malformed request...; empty when
    the daemon refused the connection itself), ``code`` the exit status
    drivebayctl uses for it, ``message`` the daemon's one line and
    ``traceback`` a failed operation's own (else empty). Nothing to retry
    blindly: the message says what to change.
    """

    def __init__(self, message: str, code: int, type: str = "", traceback: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.type = type
        self.traceback = traceback


class DaemonUnavailable(DrivebayError, ConnectionError):
    """No daemon could be reached at ``path``: nothing listens there (not
    started, stopped, or another socket path), or this user may not open it.
    The message says which and what to do."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path

    @classmethod
    def because(cls, path: str, error: OSError) -> DaemonUnavailable:
        """The error for a failed connect to ``path``, worded for its cause."""
        if isinstance(error, PermissionError):
            message = (
                f"permission denied on {path}; run as the daemon's user "
                "or give this user access to the socket"
            )
        elif isinstance(error, (FileNotFoundError, ConnectionRefusedError)):
            message = f"drivebayd is not running at {path}; start it with drivebayd"
        else:
            message = f"cannot connect to drivebayd at {path}: {error.strerror or error}"
        return cls(message, path)


class ConnectionLost(DrivebayError, ConnectionError):
    """The connection ended before the reply: the daemon stopped, or what
    answers is not drivebayd's protocol. Whether an operation in flight took
    effect is unknown; connect again and check before retrying."""


class NotDrivebayd(ConnectionLost):
    """What answers at the socket path does not speak drivebayd's protocol
    (the path names another program's socket); check the path."""
