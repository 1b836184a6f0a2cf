"""The admin page against a real daemon: its sessions over loopback TCP
(login with a token, HttpOnly SameSite=Strict cookie, CSRF on changes, 401
without a session), and the page itself in a real headless Chromium
(``browser.py``): it lists the running driver, a ``kill -9`` shows in the
feed and the driver's row, stop then start by clicks, resource rows never
more than a page (each page asked of the daemon), the feed's reader opened
again goes on after its last id (each event once, in order), a viewer sees
no buttons, no console errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from contextlib import closing
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from tests.e2e.browser import browser
from tests.e2e.test_authorization import sha
from tests.e2e.test_http_api import Api, Seen, check_seen, free_port
from tests.e2e.test_resources import mis_daemon

VIEWER = "viewer-token-for-the-page"
OPERATOR = "operator-token-for-the-page"
RESOURCES = 61  # more than a page (50)


def page_daemon(daemon_factory: Any, tmp_path: Path) -> tuple[Any, int]:
    port = free_port()
    tokens = [
        {"sha256": sha(VIEWER), "role": "viewer"},
        {"sha256": sha(OPERATOR), "role": "operator"},
    ]
    config = {"http": {"listen": f"127.0.0.1:{port}"}, "authorization": {"tokens": tokens}}
    return mis_daemon(daemon_factory, tmp_path, config), port


SEEN: Seen = []  # every /v1 answer over TCP, checked against the OpenAPI document


def http(
    port: int, method: str, target: str, headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, dict[str, str], Any]:
    with closing(HTTPConnection("127.0.0.1", port, timeout=30)) as connection:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, target, data, headers or {})
        response = connection.getresponse()
        text = response.read()
        kind = response.getheader("Content-Type", "").split(";")[0]
        answer = json.loads(text) if "json" in kind else text.decode()
        if target.startswith("/v1/"):
            SEEN.append((method, target.split("?")[0], response.status, kind, answer))
        return response.status, dict(response.getheaders()), answer


def csrf_audits(daemon: Any, port: int, session: dict[str, str], what: str) -> list[Any]:
    """The audit events of CSRF refusals of ``what``; each also a line in the log."""
    status, _, held = http(port, "GET", "/v1/events?since=0", session)
    assert status == 200, held
    found = [
        event
        for event in held
        if event["type"] == "audit"
        and event["data"]["what"] == what
        and "X-CSRF-Token" in event["data"]["outcome"]
    ]
    lines = [line for line in daemon.log().splitlines() if "audit: " in line and "X-CSRF" in line]
    for event in found:
        who, outcome = event["data"]["who"], event["data"]["outcome"]
        assert any(f"{who}: {what}: {outcome}" in line for line in lines), lines
    return found


def test_sessions_over_tcp(daemon_factory, tmp_path):  # type: ignore[no-untyped-def]
    daemon, port = page_daemon(daemon_factory, tmp_path)
    status, headers, page = http(port, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert (
        "<title>drivebay</title>" in page
        and "default-src 'none'" in headers["Content-Security-Policy"]
    )
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere

    assert http(port, "POST", "/v1/login")[0] == 401
    assert http(port, "POST", "/v1/login", {"Authorization": "Bearer a guess"})[0] == 401
    status, headers, opened = http(
        port, "POST", "/v1/login", {"Authorization": f"Bearer {OPERATOR}"}
    )
    assert status == 200 and opened["role"] == "operator" and opened["csrf"]
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    session = {"Cookie": cookie.split(";")[0]}

    assert http(port, "GET", "/v1/drivers")[0] == 401  # without a session
    assert http(port, "GET", "/v1/drivers", {"Cookie": "drivebay_session=forged"})[0] == 401
    status, _, page = http(port, "GET", "/", session)  # the page knows the session
    assert status == 200 and f"&quot;csrf&quot;:&quot;{opened['csrf']}&quot;" in page
    status, _, rows = http(port, "GET", "/v1/drivers", session)
    assert status == 200 and [row["name"] for row in rows] == ["mis"]
    assert http(port, "GET", "/v1/session", session)[2] == opened
    status, _, problem = http(port, "POST", "/v1/drivers/mis/stop", session)
    assert status == 403 and "X-CSRF-Token" in problem["detail"]  # no CSRF token
    wrong = {**session, "X-CSRF-Token": "wrong"}
    assert http(port, "POST", "/v1/drivers/mis/stop", wrong)[0] == 403
    refused = csrf_audits(daemon, port, session, "stop names=['mis']")
    assert len(refused) == 2, refused  # one line per refusal: who, what, outcome
    for event in refused:
        assert (
            event["data"]["who"].startswith("tcp 127.0.0.1:") and "session" in event["data"]["who"]
        )
        assert event["data"]["outcome"].startswith("refused: missing or wrong X-CSRF-Token")
    assert daemon.status()["mis"]["state"] == "RUNNING"  # nothing changed
    right = {**session, "X-CSRF-Token": opened["csrf"]}
    status, _, outcome = http(port, "POST", "/v1/drivers/mis/stop", right)
    assert status == 200 and outcome[0]["ok"], outcome
    daemon.wait_state("mis", "STOPPED")

    status, headers, viewer = http(port, "POST", "/v1/login", {"Authorization": f"Bearer {VIEWER}"})
    assert status == 200 and viewer["role"] == "viewer"
    as_viewer = {"Cookie": headers["Set-Cookie"].split(";")[0], "X-CSRF-Token": viewer["csrf"]}
    status, _, problem = http(port, "POST", "/v1/drivers/mis/start", as_viewer)
    assert (status, problem["detail"]) == (403, "permission denied: start needs operator")

    assert http(port, "POST", "/v1/logout", session)[0] == 403  # no CSRF token
    assert len(csrf_audits(daemon, port, session, "logout")) == 1
    assert http(port, "POST", "/v1/logout", right)[0] == 200
    assert http(port, "GET", "/v1/drivers", session)[0] == 401  # the session is gone
    assert http(port, "GET", "/v1/session", session)[0] == 401

    seen = [answer for answer in SEEN if answer[1] in ("/v1/login", "/v1/session", "/v1/logout")]
    assert {(m, p, s) for m, p, s, _, _ in seen} >= {
        ("POST", "/v1/login", 200),
        ("POST", "/v1/login", 401),
        ("GET", "/v1/session", 200),
        ("GET", "/v1/session", 401),
        ("POST", "/v1/logout", 200),
        ("POST", "/v1/logout", 403),
    }
    status, _, document = http(
        port, "GET", "/v1/openapi.json", {"Authorization": f"Bearer {VIEWER}"}
    )
    assert status == 200
    check_seen(document, SEEN)
    SEEN.clear()


async def scenario(daemon: Any, api: Api, port: int, profile: Path) -> None:
    url = f"http://127.0.0.1:{port}/"
    async with browser(profile) as chromium:
        page = await chromium.new_page()
        await page.goto(url)
        await page.wait_for("!document.getElementById('login').hidden")
        await page.type_into("#token", OPERATOR)
        await page.click("#login-button")
        row = "document.querySelector('tr[data-driver=\"mis\"]')"
        await page.wait_for(f"{row}?.querySelector('.state').textContent === 'RUNNING'")
        assert await page.evaluate("document.getElementById('role').textContent") == "operator"
        # every change to the resource table: its row count, kept to check the most
        await page.evaluate(
            "window.mostRows = 0; new MutationObserver(() => { window.mostRows = Math.max("
            "window.mostRows, document.querySelectorAll('#resources tr').length); })"
            ".observe(document.getElementById('resources'), {childList: true})"
        )
        # the states the driver's row showed, in order
        await page.evaluate(
            "window.states = []; new MutationObserver(() => { const s = document.querySelector("
            "'tr[data-driver=\"mis\"] .state')?.textContent; if (s && s !== window.states.at(-1))"
            " window.states.push(s); }).observe(document.getElementById('drivers'),"
            " {childList: true, subtree: true})"
        )
        await page.wait_for(
            f"document.getElementById('resource-count').textContent === '({RESOURCES})'"
        )
        await page.click("#next")  # the page of resources after the first
        await page.wait_for("document.getElementById('page').textContent === 'page 2 of 2'")
        assert await page.evaluate("document.querySelectorAll('#resources tr').length") == 11
        assert await page.evaluate("document.querySelector('#resources tr').dataset.resource") == (
            "v052"  # ordered by id: v002 ... v061, v1
        )
        await page.click("#prev")
        await page.wait_for("document.querySelectorAll('#resources tr').length === 50")
        assert await page.evaluate("document.querySelector('#resources tr').dataset.resource") == (
            "v002"
        )
        # the page asks the daemon for one page at a time, never for every resource
        asked = await page.evaluate(
            "performance.getEntriesByType('resource').map((e) => new URL(e.name))"
            ".filter((u) => u.pathname === '/v1/resources').map((u) => u.search)"
        )
        assert asked and all(query.startswith("?limit=50") for query in asked), asked
        assert "?limit=50&after=v051" in asked, asked
        assert await page.evaluate("document.getElementById('drivers-page').textContent") == (
            "page 1 of 1"
        )
        marks = await page.evaluate("performance.getEntriesByType('mark').map((m) => m.name)")
        assert {"drivebay:drivers", "drivebay:resources"} <= set(marks), marks

        before = len(await page.evaluate("window.states"))
        pid = int(await page.evaluate(f"{row}.querySelector('.pid').textContent"))
        assert pid == daemon.status()["mis"]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed = await page.wait_for(
            '[...document.querySelectorAll(\'#feed li[data-type="driver.state"]'
            '[data-driver="mis"]\')].map((li) => li.textContent)'
            ".find((text) => text.includes('signal=9'))"
        )
        assert "from=RUNNING" in killed, killed
        await page.wait_for(
            f"{row}.querySelector('.restarts').textContent === '1'"
            f" && {row}.querySelector('.state').textContent === 'RUNNING'"
            f" && {row}.querySelector('.pid').textContent !== '{pid}'"
        )

        after_kill = (await page.evaluate("window.states"))[before:]
        assert after_kill[-1] == "RUNNING" and set(after_kill[:-1]) - {"RUNNING"}, after_kill
        before = len(await page.evaluate("window.states"))

        await page.click('tr[data-driver="mis"] button[data-action="stop"]')
        await page.wait_for(f"{row}.querySelector('.state').textContent === 'STOPPED'")
        await page.click('tr[data-driver="mis"] button[data-action="start"]')
        await page.wait_for(f"{row}.querySelector('.state').textContent === 'RUNNING'")
        clicked = (await page.evaluate("window.states"))[before:]
        assert "STOPPED" in clicked and clicked[-1] == "RUNNING", clicked
        assert await page.evaluate("window.mostRows") == 50
        assert await page.evaluate("document.querySelectorAll('#resources tr').length") <= 50
        audits = await page.wait_for(
            "[...document.querySelectorAll('#feed li[data-type=\"audit\"]')]"
            ".map((li) => li.textContent).filter((text) => text.includes('session'))"
            ".filter((text) => text.includes('names'))"
        )
        assert any("what=stop names=['mis']" in text for text in audits), audits

        # the feed's reader closed, changes meanwhile, a reader opened again:
        # it goes on after the last id it showed, each event once and in order
        await page.evaluate("feed.close(); feed = null")
        for name in ("w1", "w2", "w3"):
            body = {"id": name, "driver": "mis", "properties": {"host": "a"}}
            status, answer = await asyncio.to_thread(api, "POST", "/v1/resources", body)
            assert status == 200, answer
        await page.evaluate("openFeed()")
        await page.wait_for(
            "document.querySelector('#feed li[data-type=\"resource.added\"]')"
            "?.textContent.includes('resource w3')"
        )
        ids = await page.evaluate(
            "[...document.querySelectorAll('#feed li')]"
            ".map((li) => li.dataset.id || li.dataset.type)"
        )
        shown = [int(event_id.rsplit("-", 1)[1]) for event_id in reversed(ids)]
        assert shown == list(range(shown[0], shown[0] + len(shown))), ids  # no gap, no twice
        added = await page.evaluate(
            "[...document.querySelectorAll('#feed li[data-type=\"resource.added\"]')]"
            ".map((li) => li.textContent.match(/resource (\\S+)/)[1])"
        )
        assert [name for name in reversed(added) if name.startswith("w")] == ["w1", "w2", "w3"], (
            added
        )

        await page.goto(url)  # loaded again: still logged in, no login asked
        await page.wait_for("document.getElementById('role').textContent === 'operator'")
        await page.wait_for(f"{row}?.querySelector('.state').textContent === 'RUNNING'")
        assert await page.evaluate("document.getElementById('login').hidden") is True

        await page.click("#logout")
        await page.wait_for("!document.getElementById('login').hidden")
        await page.type_into("#token", VIEWER)
        await page.click("#login-button")
        await page.wait_for("document.getElementById('role').textContent === 'viewer'")
        await page.wait_for(f"{row}?.querySelector('.state').textContent === 'RUNNING'")
        assert await page.evaluate("document.querySelectorAll('#drivers button').length") == 0
        assert await page.evaluate("document.querySelectorAll('button.act').length") == 0
        assert page.errors == [], page.errors


def test_the_page_in_chromium(daemon_factory, tmp_path):  # type: ignore[no-untyped-def]
    daemon, port = page_daemon(daemon_factory, tmp_path)
    api = Api(str(daemon.state / "http.sock"))  # its owner: admin
    for number in range(2, RESOURCES + 1):
        body = {"id": f"v{number:03}", "driver": "mis", "properties": {"host": "a"}}
        status, answer = api("POST", "/v1/resources", body)
        assert status == 200, answer
    asyncio.run(asyncio.wait_for(scenario(daemon, api, port, tmp_path / "profile"), 60))
