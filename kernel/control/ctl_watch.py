"""``drivebayctl status --watch``: status, printed again whenever it changes.

Two connections: one follows the event stream (``events-follow``), the
other asks for ``status`` each time an event says a driver, a bundle or a
resource changed. The newest event is read before the first status, and the
stream starts after it, so no change between the two goes unseen. Ends with
Ctrl-C (exit 0) or when the daemon goes away. No msgspec, no asyncio.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from drivebay.client import Client
from drivebay.kernel.control.ctl_render import print_status, say, shown_lines

if TYPE_CHECKING:
    from typing import Any

# Event types after which status may read differently.
CHANGES_STATUS = frozenset(
    {
        "driver.state",
        "bundle.verified",
        "bundle.invalid",
        "resource.added",
        "resource.removed",
        "update.available",
        "gap",
    }
)
CLEAR = "\x1b[H\x1b[2J"


def watch_status(path: str, payload: dict[str, Any], as_json: bool) -> int:
    """Print status now and after every change, until Ctrl-C (main turns it into exit 0)."""
    with Client(path) as asking, Client(path) as following:
        newest = asking.request("events", last=1)
        since = newest[-1]["id"] if newest and newest[-1]["id"] else "0"
        code = _show(asking, payload, as_json)
        if code is not None:
            return code
        for reply in following.replies("events-follow", {"since": since}):
            if not reply.ok:
                print(shown_lines(f"drivebayctl: {reply.error or 'failed'}"), file=sys.stderr)
                return reply.code or 1
            if isinstance(reply.result, dict) and reply.result.get("type") in CHANGES_STATUS:
                code = _show(asking, payload, as_json)
                if code is not None:
                    return code
    return 1  # the stream ended: the daemon is stopping


def _show(client: Client, payload: dict[str, Any], as_json: bool) -> int | None:
    """Print status once; an exit code when the daemon refused it."""
    reply = list(client.replies("status", payload))[-1]  # one reply
    if not reply.ok:
        print(shown_lines(f"drivebayctl: {reply.error or 'failed'}"), file=sys.stderr)
        return reply.code or 1
    if as_json:
        import json

        print(json.dumps(reply.result, default=str), flush=True)  # one line per status
        return None
    if sys.stdout.isatty():
        sys.stdout.write(CLEAR)
    say(f"drivebayctl status --watch, {time.strftime('%H:%M:%S')} (Ctrl-C ends)")
    print_status(reply.result or [])
    print(flush=True)
    return None
