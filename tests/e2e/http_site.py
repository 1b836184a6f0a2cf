"""A static HTTP site on 127.0.0.1 in a process of its own, for the repository tests.

Run as ``python http_site.py ROOT CONTROL``: serves ROOT on an ephemeral port
and prints that port as its first line. ``CONTROL`` is a JSON file
``{path suffix: count}``, read again whenever it changes: a request whose path
ends with a suffix of non-zero count is cut short (its full length
announced, half of it sent, the connection closed) and the count goes down.
A process of its own: the connections and files it holds for the daemon's
downloads are never counted as the test process's leaked descriptors.
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any


class Cuts:
    """The truncation counts, as the control file says (re-read when it changes)."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self.seen: int | None = None
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def take(self, path: str) -> bool:
        """Is ``path`` to be cut short now? (Counts one cut if so.)"""
        with self.lock:
            try:
                stamp = self.control.stat().st_mtime_ns
            except FileNotFoundError:
                stamp = None
            if stamp != self.seen:
                self.seen = stamp
                self.counts = json.loads(self.control.read_text()) if stamp else {}
            cut = next((end for end, n in self.counts.items() if path.endswith(end) and n), None)
            if cut is None:
                return False
            self.counts[cut] -= 1
            return True


class Handler(http.server.SimpleHTTPRequestHandler):
    cuts: Cuts

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if not self.cuts.take(self.path):
            super().do_GET()
            return
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


def main() -> None:
    root, control = sys.argv[1], Path(sys.argv[2])
    Handler.cuts = Cuts(control)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=root))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    os.close(1)  # the parent read the port; nothing else goes there
    server.serve_forever()


if __name__ == "__main__":
    main()
