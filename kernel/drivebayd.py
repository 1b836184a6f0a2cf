"""``drivebayd``: run the kernel in the foreground until a signal says stop.

Logs go to stderr (systemd and supervisord collect them), as text or as
JSON lines (``--log-format``). Under systemd (``Type=notify``) it says when
it is ready, its status, when it stops, and pings the watchdog
(``kernel.systemd``). SIGTERM and SIGINT stop cleanly (drivers in reverse
start order); a second one cancels the stop, which still kills and reaps
every child. SIGHUP re-reads the config.
Operator mistakes (bad config, another daemon running) print one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import drivebay
from drivebay.protocol.errors import DrivebayError

if TYPE_CHECKING:
    from drivebay.kernel.config import Config
    from drivebay.kernel.drivers.descriptors import DescriptorBudget
    from drivebay.kernel.notify import Notifier


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="drivebayd",
        description="Host plug-in drivers, each in its own process and virtualenv.",
    )
    parser.add_argument(
        "--config",
        "-c",
        help="config file (default: $DRIVEBAY_CONFIG, ./drivebay.yaml, /etc/drivebay/...)",
    )
    parser.add_argument(
        "--drivers", help="watched drop directory for bundles (default: <state>/drivers)"
    )
    parser.add_argument("--state", help="state directory (default: ~/.local/state/drivebay)")
    parser.add_argument("--socket", help="control socket path (default: <state>/drivebayd.sock)")
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text, or as one JSON object each (default: text)",
    )
    parser.add_argument("--version", action="version", version=f"drivebayd {drivebay.__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from drivebay.kernel.config import load_config
    from drivebay.kernel.config_search import find_config

    overrides: dict[str, Any] = {
        "state_dir": args.state,
        "drivers_dir": args.drivers,
        "socket": args.socket,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    try:
        path = find_config(args.config)
        config = load_config(path, overrides)
    except DrivebayError as exc:
        print(f"drivebayd: {exc}", file=sys.stderr)
        return 2
    from drivebay.kernel import log_format
    from drivebay.kernel.notify import Notifier

    log_format.install(config.log_level, config.log_format, sys.stderr)
    notifier = Notifier.from_environment(os.environ)  # systemd's Type=notify, if it asks
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # "N changes detected"
    from drivebay.kernel.drivers.descriptors import raise_soft_limit

    # Before the kernel sizes itself on the limit; said once the state dir is ours.
    nofile = raise_soft_limit()
    import uvloop

    from drivebay.kernel.kernel import Kernel

    try:
        daemon = Kernel(config, path, overrides)
    except OSError as exc:  # the state dir: a file in the way, read-only, not ours
        print(
            f"drivebayd: cannot use state dir {config.state_path}: {exc.strerror} "
            f"({exc.filename}); make it writable for this user, or choose another --state",
            file=sys.stderr,
        )
        return 1
    except DrivebayError as exc:  # trust: a key file that cannot be read
        print(f"drivebayd: {exc}", file=sys.stderr)
        return 2
    try:
        uvloop.run(_run(daemon, nofile, notifier))
    except DrivebayError as exc:
        print(f"drivebayd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _log_descriptors(
    nofile: tuple[int, int, int], budget: DescriptorBudget, config: Config
) -> None:
    """What ``raise_soft_limit`` did (``nofile``: before, after, hard), and what it allows."""
    from drivebay.kernel.drivers.descriptors import open_files_over

    before, after, hard = nofile
    log = logging.getLogger("drivebay")
    if after != before:
        log.info("raised the soft descriptor limit (RLIMIT_NOFILE) from %d to %d", before, after)
    elif after < hard:
        log.warning("could not raise the soft descriptor limit %d to the hard %d", after, hard)
    if budget.connections_capped:
        log.warning("%s; raise LimitNOFILE for more", budget.summary())
    else:
        log.info("%s", budget.summary())
    for warning in open_files_over(config, hard):
        log.warning("%s", warning)


async def _run(daemon: Any, nofile: tuple[int, int, int], notifier: Notifier) -> None:
    from drivebay.kernel.control.server import serve_control
    from drivebay.kernel.httpapi.server import serve_http
    from drivebay.kernel.metrics.listener import serve_metrics
    from drivebay.kernel.systemd import informing

    @contextlib.asynccontextmanager
    async def serve(kernel: Any) -> AsyncIterator[None]:
        _log_descriptors(nofile, kernel.descriptors, kernel.config)  # the state dir is ours
        # The control socket opens last: once it answers, every listener is up.
        async with (
            serve_http(kernel),
            serve_metrics(kernel),
            serve_control(kernel),
            informing(kernel, notifier),
        ):
            yield

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    log = logging.getLogger("drivebay")

    def stop(signum: int) -> None:
        if daemon.stopping:
            log.warning(
                "second %s: forcing the stop (drivers are killed)", signal.Signals(signum).name
            )
            main_task.cancel()
            return
        log.info("%s: stopping", signal.Signals(signum).name)
        daemon.shutdown()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    try:
        await daemon.run(serve)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    log.info("drivebayd stopped")


if __name__ == "__main__":
    sys.exit(main())
