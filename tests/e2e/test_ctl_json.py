"""``drivebayctl --json`` for every command that prints, ``call`` included:
its answer or its error as one JSON document, with the drivebay error's name."""

from __future__ import annotations

import json

from tests.e2e.test_resources import mis, ok  # noqa: F401 (the fixture)


def test_call_json_says_ok_and_result_or_the_error_by_name(mis):  # noqa: F811
    ok(mis.ctl("resource", "add", "v1", "--driver", "mis", "host=a"))
    echoed = ok(mis.ctl("call", "v1", "echo", "value=plain", "--json"))
    assert json.loads(echoed.stdout) == {"ok": True, "result": "plain"}

    failed = mis.ctl("call", "v1", "fail", "message=disk on fire", "--json")
    assert failed.returncode == 1, failed.stderr
    answer = json.loads(failed.stdout)
    assert answer["ok"] is False
    error = answer["error"]
    assert (error["type"], error["message"]) == ("OperationFailed", "ValueError: disk on fire")
    assert isinstance(error["traceback"], str)

    unknown = mis.ctl("call", "nope", "echo", "--json")
    assert unknown.returncode == 4
    assert json.loads(unknown.stdout)["error"]["type"] == "NoSuchName"

    bad = mis.ctl("call", "v1", "echo", "--timeout", "0", "--json")
    assert bad.returncode == 2
    error = json.loads(bad.stdout)["error"]
    assert error["type"] == "RequestError" and "timeout must be" in error["message"]


def test_acting_commands_print_json_too(mis):  # noqa: F811
    stopped = mis.ctl("stop", "mis", "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == [
        {"name": "mis@1.0.0", "ok": True, "message": "stopped", "code": 0}
    ]
    again = mis.ctl("stop", "mis", "--json")
    assert again.returncode == 7
    assert json.loads(again.stdout)[0]["message"] == "not running"
    reloaded = json.loads(ok(mis.ctl("reload", "--json")).stdout)
    assert reloaded["reloaded"] is True and reloaded["changed_drivers"] == []


def test_the_client_library_names_the_error_too(mis):  # noqa: F811
    import uvloop

    from drivebay.client import AsyncClient, OperationError

    async def main() -> OperationError:
        client = await AsyncClient.connect(str(mis.socket))
        try:
            await client.request("describe", {"nme": "mis"})
        except OperationError as exc:
            return exc
        finally:
            await client.close()
        raise AssertionError("a malformed request was answered")

    error = uvloop.run(main())
    assert (error.code, error.type) == (2, "RequestError")
    assert "unknown field `nme`" in str(error)


def test_every_result_is_what_the_schema_says(mis):  # noqa: F811
    """Each command's --json output of a real daemon decodes as the result
    type kernel/control/schema.py declares (and docs/control-schema.json shows)."""
    import msgspec

    from drivebay.kernel.control.schema import REQUESTS, RESULTS

    def conforms(wire: str, *argv: str) -> None:
        ran = mis.ctl(*argv, "--json")
        assert ran.returncode in (0, 3), (argv, ran.stderr)
        msgspec.convert(json.loads(ran.stdout), RESULTS[REQUESTS[wire]])

    conforms("resource-add", "resource", "add", "v1", "--driver", "mis", "host=a")
    conforms("resource-set", "resource", "set", "v1", "host=b")
    conforms("resource-pin", "resource", "pin", "v1", "1.0.0")
    conforms("resource-pin", "resource", "pin", "v1", "--unpin")
    conforms("resources", "resources")
    conforms("status", "status")
    conforms("describe", "describe", "mis")
    conforms("avail", "avail")
    conforms("pid", "pid")
    conforms("pid", "pid", "mis")
    conforms("version", "version")
    conforms("tail", "tail", "mis")
    conforms("call", "call", "v1", "echo", "value=x")
    conforms("resource-rm", "resource", "rm", "v1")
    conforms("restart", "restart", "mis")
    conforms("reload", "reload")
