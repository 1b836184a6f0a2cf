"""The worker-vms bundle, run in a real driver child, starting real worker processes.

Workers are the driver's children, not ours: "gone" means no such process,
or a zombie left to whoever adopted it once the driver died.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path

import pytest

from drivebay.protocol.errors import OperationFailed
from tests.drivers.bundles import bundle_spec, until
from tests.helpers import eventually, run, started

# Says hello, then waits for a signal; with "stubborn", ignores SIGTERM; with
# "parent", first starts a child of its own (in its process group) and names it.
WORKER = """
import os, signal, subprocess, sys
if "stubborn" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "parent" in sys.argv:
    child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    print("child", child.pid, flush=True)
print("ready", os.environ["WORKER_NAME"], os.environ["WORKER_RESOURCE"], flush=True)
signal.pause()
"""


def command(*flags: str, code: str = WORKER) -> str:
    return shlex.join([sys.executable, "-c", code, *flags])


def host_pid(proc, pid: int) -> int:  # type: ignore[no-untyped-def]
    """The pid seen here of the driver's live descendant ``pid``, a pid as the
    driver sees it (in its PID namespace, where it is pid 2)."""
    todo = [proc.group]
    while todo:
        candidate = todo.pop()
        try:
            status = Path(f"/proc/{candidate}/status").read_text()
            tasks = os.listdir(f"/proc/{candidate}/task")
            for task in tasks:
                todo.extend(
                    int(child)
                    for child in Path(f"/proc/{candidate}/task/{task}/children").read_text().split()
                )
        except (FileNotFoundError, ProcessLookupError):
            continue
        nspids = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        if int(nspids.split()[-1]) == pid:
            return candidate
    raise AssertionError(f"no descendant of the driver is pid {pid} in its namespace")


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def ready(proc, resource: str, name: str) -> None:
    async def said_ready():
        output = await proc.call(resource, "instance_output", {"name": name})
        return f"ready {name} {resource}" in output

    await until(said_ready)


def test_start_list_stop_and_limits(tmp_path):
    async def main():
        async with started(bundle_spec(tmp_path, "worker-vms")) as proc:
            assert await proc.health() == {"ok": True}
            await proc.attach("w", {"command": command(), "max_instances": 2})
            a = await proc.call("w", "start_instance", {"name": "a"})
            b = await proc.call("w", "start_instance", {"name": "b"})
            assert a["state"] == "running" and a["exit_code"] is None and a["pid"] != b["pid"]
            seen = {name: host_pid(proc, i["pid"]) for name, i in (("a", a), ("b", b))}
            with pytest.raises(OperationFailed, match=r"max_instances \(2\) are running"):
                await proc.call("w", "start_instance", {"name": "c"})
            with pytest.raises(OperationFailed, match="instance 'a' is already running"):
                await proc.call("w", "start_instance", {"name": "a"})
            await ready(proc, "w", "a")
            listed = await proc.call("w", "list_instances", {})
            assert [(i["name"], i["state"]) for i in listed] == [("a", "running"), ("b", "running")]

            stopped = await proc.call("w", "stop_instance", {"name": "a"})
            assert stopped["state"] == "exited" and stopped["exit_code"] == -signal.SIGTERM
            assert stopped["exit"] == "signal 15 (SIGTERM)"
            assert gone(seen["a"])  # reaped before stop_instance returned
            c = await proc.call("w", "start_instance", {"name": "c"})
            seen["c"] = host_pid(proc, c["pid"])
            with pytest.raises(OperationFailed, match=r"max_instances \(2\)"):
                await proc.call("w", "start_instance", {"name": "a"})
            await proc.call("w", "stop_instance", {"name": "c"})
            again = await proc.call("w", "start_instance", {"name": "a"})
            assert again["pid"] != a["pid"] and again["state"] == "running"
            seen["again"] = host_pid(proc, again["pid"])

            await proc.detach("w")  # returns once every instance is reaped
            assert all(gone(pid) for pid in seen.values())

    run(main())


def test_stop_escalates_and_takes_the_process_group(tmp_path):
    async def main():
        async with started(bundle_spec(tmp_path, "worker-vms")) as proc:
            props = {"command": command("stubborn", "parent"), "max_instances": 1}
            await proc.attach("w", props)
            worker = await proc.call("w", "start_instance", {"name": "s"})
            await ready(proc, "w", "s")
            output = await proc.call("w", "instance_output", {"name": "s", "lines": 2})
            grandchild = host_pid(proc, int(output[0].split()[1]))
            assert not gone(grandchild)
            worker_pid = host_pid(proc, worker["pid"])
            stopped = await proc.call("w", "stop_instance", {"name": "s", "timeout_s": 0.2})
            assert stopped["exit_code"] == -signal.SIGKILL  # SIGTERM was ignored
            assert gone(worker_pid)
            await eventually(lambda: gone(grandchild))

    run(main())


def test_workers_die_with_a_killed_driver(tmp_path):
    async def main():
        async with started(bundle_spec(tmp_path, "worker-vms")) as proc:
            await proc.attach("w", {"command": command(), "max_instances": 3})
            pids = []
            for name in ("a", "b", "c"):
                pid = (await proc.call("w", "start_instance", {"name": name}))["pid"]
                pids.append(host_pid(proc, pid))
            await ready(proc, "w", "c")
            # No detach, no drain: only the parent-death signal can end them.
            os.kill(proc.pid, signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
            await eventually(lambda: all(gone(pid) for pid in pids))

    run(main())


def test_workers_stop_when_the_driver_stops(tmp_path):
    async def main():
        async with started(bundle_spec(tmp_path, "worker-vms")) as proc:
            await proc.attach("w", {"command": command(), "max_instances": 2})
            # Ignores SIGTERM: detach escalates to SIGKILL, within the drain deadline.
            await proc.attach("x", {"command": command("stubborn"), "max_instances": 1})
            pids = [
                host_pid(proc, (await proc.call(resource, "start_instance", {"name": "i"}))["pid"])
                for resource in ("w", "x")
            ]
            await ready(proc, "x", "i")  # SIGTERM is ignored from now on
        assert proc.returncode == 0  # drained: detached in time, not killed
        assert all(gone(pid) for pid in pids)  # reaped by detach, before the driver exited

    run(main())


def test_exit_code_output_and_memory_limit(tmp_path):
    greedy = "print('allocating', flush=True); bytearray(1 << 30)"

    async def main():
        async with started(bundle_spec(tmp_path, "worker-vms")) as proc:
            quits = command(code="print('bye'); raise SystemExit(3)")
            await proc.attach("q", {"command": quits, "max_instances": 1.0})
            capped = {"command": command(code=greedy), "max_instances": 1, "memory_mb": 256}
            await proc.attach("capped", capped)
            for resource in ("q", "capped"):
                await proc.call(resource, "start_instance", {"name": "i"})

            async def finished(resource: str) -> bool:
                [instance] = await proc.call(resource, "list_instances", {})
                return instance["state"] == "exited"

            await until(lambda: finished("q"))
            [instance] = await proc.call("q", "list_instances", {})
            assert instance["exit_code"] == 3 and instance["exit"] == "exit status 3"

            async def said(resource: str, text: str) -> bool:
                return text in "\n".join(
                    await proc.call(resource, "instance_output", {"name": "i", "lines": 50})
                )

            await until(lambda: said("q", "bye"))
            await until(lambda: finished("capped"))
            await until(lambda: said("capped", "MemoryError"))
            [instance] = await proc.call("capped", "list_instances", {})
            assert instance["exit_code"] == 1
            with pytest.raises(OperationFailed, match="LookupError: no instance 'z'"):
                await proc.call("q", "instance_output", {"name": "z"})

    run(main())


def test_workers_inherit_no_fds_and_a_clean_environment(tmp_path):
    probe = "import json, os; print(json.dumps([os.listdir('/proc/self/fd'), sorted(os.environ)]))"

    async def main():
        async with started(bundle_spec(tmp_path, "worker-vms")) as proc:
            await proc.attach("p", {"command": command(code=probe), "max_instances": 1})
            await proc.call("p", "start_instance", {"name": "i"})

            async def printed():
                return bool(await proc.call("p", "instance_output", {"name": "i"}))

            await until(printed)
            [line] = await proc.call("p", "instance_output", {"name": "i"})
            fds, names = json.loads(line)
            assert sorted(fds) == ["0", "1", "2", "3"]  # 3: the listing's own descriptor
            assert {"WORKER_NAME", "WORKER_RESOURCE", "PATH"} <= set(names)
            assert not [name for name in names if name.startswith("DRIVEBAY_")]

    run(main())


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"command": "no-such-program-here", "max_instances": 1}, "is not an executable"),
        ({"command": 'echo "unbalanced', "max_instances": 1}, "cannot be split"),
        ({"command": "  ", "max_instances": 1}, "command must be a program"),
        ({"command": "true", "max_instances": 0}, "max_instances must be a whole number"),
        ({"command": "true", "max_instances": 1.5}, "max_instances must be a whole number"),
        ({"command": "true"}, "max_instances is required"),
        ({"command": "true", "max_instances": 1, "memory_mb": -1}, "memory_mb must be"),
    ],
)
def test_bad_properties_refuse_attach(tmp_path, props, message):
    async def main():
        async with started(bundle_spec(tmp_path, "worker-vms")) as proc:
            with pytest.raises(OperationFailed, match=message):
                await proc.attach("w", props)
            await proc.attach("ok", {"command": "true", "max_instances": 1})
            with pytest.raises(OperationFailed, match=re.escape("'../x' is not an instance name")):
                await proc.call("ok", "start_instance", {"name": "../x"})

    run(main())
