"""``drivebay.client`` against a real daemon: Client and AsyncClient answer,
fail by the drivebay error's name, say what to do without a daemon, and carry
requests from several threads or tasks on one connection."""

from __future__ import annotations

import asyncio
import socket
import threading
from contextlib import aclosing
from pathlib import Path

import pytest
import uvloop

from drivebay.client import (
    AsyncClient,
    Client,
    DaemonUnavailable,
    DrivebayError,
    OperationError,
    RequestError,
)
from tests.e2e.test_resources import mis, ok  # noqa: F401 (the fixture)


def with_resources(daemon, *ids: str) -> None:  # type: ignore[no-untyped-def]
    for resource in ids:
        ok(daemon.ctl("resource", "add", resource, "--driver", "mis", "host=a"))


def test_client_requests_calls_and_names_errors(mis):  # noqa: F811
    with Client(str(mis.socket)) as client:
        added = client.request("resource-add", id="v1", driver="mis", assignments=["host=a"])
        assert added["id"] == "v1"
        assert client.request("version")["version"] == "0.1.0"
        (row,) = client.request("status", {"names": ["mis"]})
        assert (row["name"], row["version"], row["state"]) == ("mis", "1.0.0", "RUNNING")
        assert client.call("v1", "echo", {"value": [1, "two"]}) == [1, "two"]

        with pytest.raises(OperationError) as failed:
            client.call("v1", "fail", {"message": "disk on fire"}, timeout=5)
        error = failed.value
        assert (error.type, error.code) == ("OperationFailed", 1)
        assert error.message == str(error) == "ValueError: disk on fire"
        assert "ValueError: disk on fire" in error.traceback and "in fail" in error.traceback

        with pytest.raises(OperationError) as unknown:
            client.call("nope", "echo")
        assert (unknown.value.type, unknown.value.code) == ("NoSuchName", 4)

        with pytest.raises(OperationError) as malformed:
            client.request("describe", nme="mis")
        assert (malformed.value.type, malformed.value.code) == ("RequestError", 2)
        assert "unknown field `nme`" in str(malformed.value)

        with pytest.raises(RequestError, match="cannot send that request"):
            client.call("v1", "echo", {"value": 10**30})
        assert client.call("v1", "echo", {"value": "still connected"}) == "still connected"


def test_client_is_shared_by_threads_and_streams(mis):  # noqa: F811
    with_resources(mis, "v1", "v2")
    results: dict[int, list[object]] = {}

    with Client(str(mis.socket)) as client:

        def work(n: int) -> None:
            ids = ("v1", "v2")
            results[n] = [client.call(ids[i % 2], "echo", {"value": [n, i]}) for i in range(20)]

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == {n: [[n, i] for i in range(20)] for n in range(6)}

        # The first reply is the tail (no lines: ""); every later one new output.
        for text in client.stream("tail-follow", name="mis", lines=0):
            if "hello" in text:
                break
            assert text == ""
            with pytest.raises(RuntimeError, match="use a second Client"):
                client.call("v1", "echo")  # this thread holds the connection
            with Client(str(mis.socket)) as other:  # this one is busy with the stream
                assert other.call("v1", "say", {"text": "hello"}) is True
        # Left early: that connection closed; the next request opens another.
        assert client.call("v1", "echo", {"value": "again"}) == "again"


def test_async_client_multiplexes_tasks_and_names_errors(mis):  # noqa: F811
    with_resources(mis, "v1", "v2", "v3")

    async def main() -> None:
        async with AsyncClient(str(mis.socket)) as client, asyncio.timeout(30):
            # hold returns only once release ran: both are in flight at once.
            held, released = await asyncio.gather(
                client.call("v1", "hold", {"gate": "g"}),
                client.call("v2", "release", {"gate": "g"}),
            )
            assert (held, released) == ("g", None)

            async def echoes(n: int) -> list[object]:
                return [await client.call("v3", "echo", {"value": [n, i]}) for i in range(10)]

            answers = await asyncio.gather(*(echoes(n) for n in range(8)))
            assert answers == [[[n, i] for i in range(10)] for n in range(8)]

            with pytest.raises(OperationError) as failed:
                await client.call("v1", "fail", {"message": "disk on fire"})
            assert (failed.value.type, failed.value.code) == ("OperationFailed", 1)
            assert "ValueError: disk on fire" in failed.value.traceback
            with pytest.raises(OperationError) as malformed:
                await client.request("describe", {"nme": "mis"})
            assert (malformed.value.type, malformed.value.code) == ("RequestError", 2)

            said = False
            async with aclosing(client.stream("tail-follow", name="mis", lines=0)) as texts:
                async for text in texts:
                    if "from async" in text:
                        break
                    if not said:
                        said = await client.call("v1", "say", {"text": "from async"})
            assert (await client.request("version"))["version"] == "0.1.0"

    uvloop.run(main())


def test_without_a_daemon_the_error_says_what_to_do(tmp_path: Path) -> None:
    path = str(tmp_path / "none.sock")
    expected = f"drivebayd is not running at {path}; start it with drivebayd"
    with pytest.raises(DaemonUnavailable) as sync_error:
        Client(path).request("status")
    assert str(sync_error.value) == expected and sync_error.value.path == path
    assert isinstance(sync_error.value, DrivebayError)

    async def attempt() -> None:
        await AsyncClient.connect(path)

    with pytest.raises(DaemonUnavailable, match="start it with drivebayd"):
        uvloop.run(attempt())

    # A socket file nobody listens on (a daemon that died): the same advice.
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(stale))
        with pytest.raises(DaemonUnavailable, match="is not running at"):
            Client.connect(str(stale))

    # A request that cannot be encoded is the caller's, daemon or not.
    with pytest.raises(RequestError):
        Client(path).call("v1", "echo", {"n": 10**30})


def test_permission_denied_says_whose_socket_it_is() -> None:
    error = DaemonUnavailable.because("/run/d.sock", PermissionError(13, "Permission denied"))
    assert str(error) == (
        "permission denied on /run/d.sock; run as the daemon's user "
        "or give this user access to the socket"
    )


def test_the_docs_name_every_error_of_protocol_errors() -> None:
    """docs/client.md's tables of error names are protocol/errors.py's, no more, no less."""
    import re

    from drivebay.protocol import errors

    text = (Path(__file__).resolve().parents[2] / "docs" / "client.md").read_text()
    table = set(re.findall(r"^\| `(\w+)` \|", text, re.MULTILINE))
    raised = {"OperationError", "DaemonUnavailable", "ConnectionLost", "NotDrivebayd"}
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, DrivebayError)
    }
    assert table == classes - {"DrivebayError"} | errors.RUNTIME_ERRORS | raised
