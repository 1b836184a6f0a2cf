"""The admin page (``GET /``): one HTML file with its script and style inline,
shipped in the package; no build step and nothing loaded from elsewhere. It
talks to the API it is served by (``/v1``) with the session ``POST /v1/login``
opens (``../sessions.py``)."""

from __future__ import annotations

import asyncio
from importlib import resources

from aiohttp import web

CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_page: bytes | None = None


def _read() -> bytes:
    return resources.files(__package__).joinpath("index.html").read_bytes()


async def admin_page(request: web.Request) -> web.Response:
    global _page
    if _page is None:
        _page = await asyncio.to_thread(_read)
    return web.Response(
        body=_page,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
