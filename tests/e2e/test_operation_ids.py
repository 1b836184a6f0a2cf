"""An operation's op_id through a real daemon: ``drivebayctl call`` of an
operation that declares it reaches the driver with an id of the kernel's,
never the caller's; the manifest's ``idempotent`` list is shown by describe."""

from __future__ import annotations

import json

from tests.e2e.test_daemon import build
from tests.helpers import FIXTURES

LEDGER = (FIXTURES / "ledger" / "src" / "ledger.py").read_text()


def test_call_gets_the_kernels_op_id_and_refuses_the_callers(daemon, tmp_path):
    bundle = build(
        tmp_path,
        "ledger",
        src={"ledger.py": LEDGER},
        manifest_extra={"entrypoint": "ledger:Ledger", "idempotent": ["write"]},
    )
    daemon.drop(bundle)
    daemon.wait_state("ledger", "RUNNING")
    assert daemon.ctl("resource", "add", "l1", "--driver", "ledger").returncode == 0
    answers = [
        json.loads(daemon.ctl("call", "l1", "write", f"value:={n}", "--json").stdout)["result"]
        for n in range(2)
    ]
    ids = [answer["op_id"] for answer in answers]
    assert all(ids) and ids[0] != ids[1]  # each call its own id
    assert [a["times"] for a in answers] == [1, 1] and answers[0]["epoch"] == 0
    refused = daemon.ctl("call", "l1", "write", "value:=1", "op_id=mine")
    assert refused.returncode == 1
    assert refused.stderr == (
        "error: RequestError: ledger@1.0.0: operation write takes its op_id from the kernel; "
        "do not pass op_id as an argument\n"
    )
    described = json.loads(daemon.ctl("describe", "ledger", "--json").stdout)
    assert described["idempotent"] == ["write"]
    assert (
        "op_id: str" in {d["name"]: d for d in described["operation_details"]}["write"]["signature"]
    )
