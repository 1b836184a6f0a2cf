"""drivebayctl's human output of each command's result (the ``render`` of
``kernel/control/ctl_commands.py``'s table).

Results arrive as the standard-library codec decodes them (dicts, lists,
strings). Names, messages, paths and values come from bundles and drivers:
every line goes through ``say``, which escapes their control characters.
Imports are kept light: ``status`` must answer in well under 100 ms.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from drivebay.sandbox.bundle_errors import shown

if TYPE_CHECKING:
    from typing import Any, TextIO


def say(line: str, file: TextIO | None = None) -> None:
    """Print one line for a human. Names, messages, paths and values come from
    bundles and drivers: their control characters (ESC, BEL, CR, C1 ...) are
    shown escaped, so nothing they hold can drive the operator's terminal."""
    print(shown(line), file=file)


def shown_lines(text: str) -> str:
    """``text`` (a log tail, an error) with each line escaped as ``say`` does,
    newlines kept."""
    return "\n".join(shown(line) for line in text.split("\n"))


def print_json(result: Any) -> None:
    """What is not meant for a terminal as such (JSON escapes control characters)."""
    import json

    print(json.dumps(result, indent=2, default=str))


def print_value(result: Any) -> None:
    say(str(result))


def print_call_result(result: Any) -> None:
    import json

    print(json.dumps(result, default=str))  # JSON escapes control characters


def print_outcomes(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        outcome = row["message"] if row["ok"] else f"ERROR ({row['message']})"
        say(f"{row['name']}: {outcome}")


def print_tail(text: str) -> None:
    # The driver's own bytes for a pipe (grep, less -R); escaped for a terminal.
    sys.stdout.write(shown_lines(text) if sys.stdout.isatty() else text)
    sys.stdout.flush()


def print_avail(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        label = shown(f"{row['name']}@{row['version']}" if row["name"] else "-")
        file = shown(row["file"])
        source = row.get("source") or "drivers-dir"
        verdict, note = row["verdict"], row["message"] or ""
        warning = row.get("signature_warning")
        if warning:
            note = f"{note} [{warning}]" if note else f"[{warning}]"
        if verdict == "offered" and row.get("installed"):
            verdict = "installed"  # a repository's version that is in the drivers dir
        if source == "drivers-dir" and row.get("update_available"):
            note = f"(update available) {note}"
        say(f"{file:<32} {label:<32} {shown(source):<14} {verdict:<10} {note}")


def print_repos(result: Any) -> None:
    for row in result if isinstance(result, list) else [result]:
        kind = "kept" if row["kept"] else "config"
        offers = "" if row.get("offers") is None else f"  {row['offers']} bundles"
        message = f"  {row['message']}" if row.get("message") else ""
        say(f"{row['name']:<16} {kind:<7} {row['url']}{offers}{message}")


def print_nodes(result: Any) -> None:
    """``nodes``: one line per node of the cluster (times in local time)."""
    for row in result:
        until = row.get("lease_until")
        lease = "" if until is None else f"  leases until {_clock(until)}"
        name, state, count = shown(row["node_id"]), _state(row), row["resources"]
        say(f"{name:<20} {state:<8} beat {_clock(row['last_heartbeat'])}  {count} resources{lease}")


def _state(row: dict[str, Any]) -> str:
    """A node's state, ``silent (draining)`` for a draining node that does not renew."""
    silent = row["state"] == "silent" and row.get("draining")
    return "silent (draining)" if silent else str(row["state"])


def print_drain(row: dict[str, Any]) -> None:
    """``drain-node``: the node's state now and what it still holds."""
    count = row["resources"]
    if row["state"] == "live":
        say(f"{shown(row['node_id'])} is live: it claims its share again")
    elif row["state"] != "draining":
        say(f"{shown(row['node_id'])} is {_state(row)}: {count} resources")
    elif count:
        say(f"{shown(row['node_id'])} is draining: {count} resources still to hand over")
    else:
        say(f"{shown(row['node_id'])} is draining: it holds no resources")


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def print_token(result: dict[str, Any]) -> None:
    limited = f" for drivers {', '.join(result['drivers'])}" if result.get("drivers") else ""
    say(result["token"])  # alone on stdout: TOKEN=$(drivebayctl token new ...)
    note = f"{result['role']} token{limited}: shown only now; kept as sha256 {result['sha256']}"
    say(note, file=sys.stderr)


def print_tokens(result: Any) -> None:
    """``token ls`` (a list) or ``token rm`` (the token removed)."""
    removed = isinstance(result, dict)
    for row in [result] if removed else result:
        drivers = ", ".join(row["drivers"]) or "every driver"
        line = f"{row['id']}  {row['role']:<8} {row['source']:<6}  {drivers}"
        say(f"{line}: removed" if removed else line)


def print_installed(result: dict[str, Any]) -> None:
    say(
        f"{result['name']}@{result['version']}: installed from {result['repo']} "
        f"({result['file']}), {result['state']}"
    )


def print_version(result: dict[str, Any]) -> None:
    low, high = result["protocol"]
    say(f"drivebayd {result['version']} (protocol {low}..{high})")


def print_resources(result: list[dict[str, Any]] | dict[str, Any]) -> None:
    """Every resource; or a page of them, then how many there are and where
    the next page starts."""
    rows = result["resources"] if isinstance(result, dict) else result
    for row in rows:
        version = row["version"] or "-"
        pin = f" (pinned {row['pinned']})" if row["pinned"] else ""
        node = f"  (node {row['node']})" if row.get("node") else ""
        say(f"{row['id']:<24} {row['driver'] + '@' + version + pin:<36} {row['state']}{node}")
    if isinstance(result, dict):
        more = f"; next page: --after {result['next']}" if result["next"] else ""
        say(f"({len(rows)} of {result['total']} resources{more})")


def print_resource_change(result: dict[str, Any]) -> None:
    if result.get("removed"):
        say(f"{result['id']}: removed")
    elif "driver" in result:
        pin = f"@{result['pinned']}" if result["pinned"] else ""
        say(f"{result['id']}: added ({result['driver']}{pin})")
    elif "pinned" in result:
        say(
            f"{result['id']}: {'pinned to ' + result['pinned'] if result['pinned'] else 'unpinned'}"
        )
    else:
        say(f"{result['id']}: properties set")


def print_status(rows: list[dict[str, Any]]) -> None:
    names = [shown(f"{r['name']}@{r['version']}" if r["version"] else r["name"]) for r in rows]
    width = max([32, *(len(n) for n in names)]) + 1
    for name, row in zip(names, rows, strict=True):
        say(f"{name:<{width}}{status_state(row):<10} {status_description(row)}")


def status_state(row: dict[str, Any]) -> str:
    """The state, and for a FATAL driver that is retried, when (local time)."""
    retry = row.get("next_retry_at")
    if row["state"] != "FATAL" or retry is None:
        return str(row["state"])
    import time

    return f"FATAL, retry at {time.strftime('%H:%M:%S', time.localtime(retry))}"


def status_description(row: dict[str, Any]) -> str:
    """What the state means, and a signature the trust policy only warns of."""
    described = _state_description(row)
    warning = row.get("signature_warning")
    return f"{described}; {warning}" if warning else described


def _state_description(row: dict[str, Any]) -> str:
    if row["state"] == "RUNNING":
        uptime = int(row["uptime_s"] or 0)
        hours, rest = divmod(uptime, 3600)
        minutes, seconds = divmod(rest, 60)
        count = row["resources"]
        plural = "" if count == 1 else "s"
        uptime_text = f"{hours}:{minutes:02d}:{seconds:02d}"
        text = f"pid {row['pid']}, uptime {uptime_text}, {count} resource{plural}"
    else:
        text = str(row["message"] or "Not started")
    update = row.get("update_available")
    return f"{text}; update {update} available" if update else text


def print_operations(info: dict[str, Any]) -> None:
    """One line per operation (``async resize(name: str) -> dict``) and its
    summary below it; the names alone from a daemon that sends no details."""
    details = info.get("operation_details") or []
    if not details:
        say(f"  {'operations:':<14}{', '.join(info['operations']) or '-'}")
        return
    say("  operations:")
    for op in details:
        say(f"    {'async ' if op['async'] else ''}{op['name']}{op['signature']}")
        if op["summary"]:
            say(f"        {op['summary']}")


def print_describe(info: dict[str, Any]) -> None:
    say(f"{info['name']}@{info['version']}  {info['state']}  {info['message']}")
    for key in (
        "description",
        "category",
        "entrypoint",
        "pid",
        "restarts",
        "codec",
        "loop",
        "bundle",
        "stored_at",
        "env_key",
    ):
        say(f"  {key + ':':<14}{info.get(key)}")
    if info.get("signature"):
        say(f"  {'signature:':<14}{info['signature']}")
    if info.get("update_available"):
        say(f"  {'update:':<14}{info['update_available']} available (drivebayctl install)")
    say(f"  {'requires:':<14}{', '.join(info['requires']) or '-'}")
    say(f"  {'dependencies:':<14}{', '.join(info['dependencies']) or '-'}")
    say(f"  {'idempotent:':<14}{', '.join(info.get('idempotent') or []) or '-'}")
    print_operations(info)
    say(f"  {'limits:':<14}{', '.join(f'{k}={v}' for k, v in info['limits'].items()) or '-'}")
    for stream, path in info["logs"].items():
        say(f"  {stream + ' log:':<14}{path}")
    if info["properties"]:
        say("  properties:")
        for prop in info["properties"]:
            need = "required" if prop["required"] else "optional"
            label = prop.get("label_text") or prop.get("label") or ""
            say(f"    {prop['key']:<16}{prop['type']:<9}{need:<9}{label}")
            help_text = prop.get("description_text") or ""
            if help_text:
                say(f"    {'':<34}{help_text}")
    say("  history:")
    import time

    for move in info["history"]:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(move["at"]))
        reason = f"  ({move['reason']})" if move["reason"] else ""
        say(f"    {at}  {move['from']} -> {move['to']}{reason}")


def print_events(result: Any) -> None:
    """``events`` (a list) or one event of ``events -f``, one line each."""
    for event in result if isinstance(result, list) else [result]:
        say(event_line(event))


def event_line(event: dict[str, Any]) -> str:
    """``2026-12-03 16:50:01.123  1a2b3c4d-17  driver.state  alpha@1.0.0  RUNNING -> ...``"""
    import time

    at = event["time"]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"
    driver, version = event.get("driver"), event.get("version")
    subject = event.get("resource") or (f"{driver}@{version}" if version else driver) or "-"
    return f"{stamp}  {event['id'] or '-'}  {event['type']}  {subject}  {event_summary(event)}"


def event_summary(event: dict[str, Any]) -> str:
    """What an event says, in a few words."""
    data = event.get("data") or {}
    kind = event["type"]
    if kind == "driver.state":
        text = f"{data.get('from')} -> {data.get('to')}"
        if "signal" in data:
            text += f" after signal {data['signal']} ({data.get('signal_name') or '?'})"
        elif "exit_status" in data:
            text += f" after exit status {data['exit_status']}"
        return f"{text} ({data['reason']})" if data.get("reason") else text
    if kind == "gap":
        return f"GAP: {data.get('reason')}"
    if kind == "audit":
        return f"{data.get('who')}: {data.get('what')}: {data.get('outcome')}"
    return " ".join(f"{key}={value}" for key, value in data.items())
