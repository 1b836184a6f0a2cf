"""A real headless Chromium driven over the DevTools protocol (aiohttp's
websocket client), for the admin page's test.

``Browser`` starts ``chromium --headless`` (``--no-sandbox`` as root: its
sandbox refuses to run as root) with a DevTools port of its own choosing
and a profile in a temporary directory; ``Page`` is one tab: navigate,
evaluate, wait for a condition in the page, click like a mouse does, type.
Every ``console.error`` and uncaught exception of a page is kept in
``Page.errors``. Chromium missing is a failure saying how to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

START_S = 20.0
CALL_S = 15.0
NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "chromium is missing: apt-get install chromium (scripts/test installs it as root on Debian)"
    )


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session
        self.errors: list[str] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session)

    def event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            texts = [str(a.get("value", a.get("description", ""))) for a in params["args"]]
            self.errors.append("console: " + " ".join(texts))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"log ({entry['source']}): {entry['text']} {entry.get('url', '')}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            thrown = details.get("exception", {}).get("description", details.get("text"))
            self.errors.append(f"exception: {thrown}")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, predicate: str, timeout_s: float = 10.0) -> Any:
        """The first truthy value of the JS expression ``predicate``, checked in
        the page every 50 ms; AssertionError after ``timeout_s``."""
        script = f"""new Promise((done) => {{
            const until = Date.now() + {timeout_s * 1000};
            (function check() {{
                let value = null;
                try {{ value = ({predicate}); }} catch (error) {{ value = null; }}
                if (value) done(value);
                else if (Date.now() > until) done(null);
                else setTimeout(check, 50);
            }})();
        }})"""
        value = await self.evaluate(script)
        if not value:
            shown = await self.evaluate("document.getElementById('error')?.textContent")
            raise AssertionError(f"not true within {timeout_s} s: {predicate} (page: {shown!r})")
        return value

    async def click(self, selector: str) -> None:
        """A mouse click at the middle of the element ``selector`` names, once
        the element is there and nothing covers its middle."""
        box = await self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e || e.disabled) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " const x = r.left + r.width / 2, y = r.top + r.height / 2;"
            " const hit = document.elementFromPoint(x, y);"
            " return hit && (hit === e || e.contains(hit)) ? [x, y] : null; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def type_into(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)


class Browser:
    def __init__(self, process: asyncio.subprocess.Process, ws: Any) -> None:
        self.process = process
        self.ws = ws
        self._ids = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def send(
        self, method: str, params: dict[str, Any], session: str | None = None
    ) -> dict[str, Any]:
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        answer = self._waiting[self._ids] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(json.dumps(message))
        async with asyncio.timeout(CALL_S):
            return await answer

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                waiting = self._waiting.pop(data["id"], None)
                if waiting is not None and not waiting.done():
                    if "error" in data:
                        waiting.set_exception(AssertionError(f"devtools: {data['error']}"))
                    else:
                        waiting.set_result(data.get("result", {}))
            elif data.get("sessionId") in self._pages:
                self._pages[data["sessionId"]].event(data["method"], data.get("params", {}))
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(AssertionError("chromium closed its devtools connection"))

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = self._pages[attached["sessionId"]] = Page(self, attached["sessionId"])
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        await page.send("Log.enable")
        return page

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[Browser]:
    """A headless Chromium for as long as the context lasts, then killed."""
    arguments = [
        chromium(),
        "--headless=new",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),
        "about:blank",
    ]
    process = await asyncio.create_subprocess_exec(
        *arguments,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(START_S):
            while True:
                raw = await process.stderr.readline()
                if not raw:
                    raise AssertionError("chromium ended at start:\n" + "".join(lines[-20:]))
                line = raw.decode(errors="replace")
                lines.append(line)
                if line.startswith("DevTools listening on "):
                    url = line.split(" on ", 1)[1].strip()
                    break

        async def drained() -> None:
            assert process.stderr is not None
            while await process.stderr.readline():
                pass

        drain = asyncio.get_running_loop().create_task(drained())
        async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
            driven = Browser(process, ws)
            try:
                yield driven
            finally:
                await driven.close()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        async with asyncio.timeout(START_S):
            await process.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
