"""A driver's result reaches drivebayctl the same whether its env has msgspec or not.

Two copies of one driver: one built from the index (the builder adds
msgspec: the child encodes with it), one shipped with ``lib/`` lacking
msgspec (the child encodes with the stdlib codec). Each returns datetimes,
dates, UUIDs, decimals, enums, sets, dataclasses and bytes; ``drivebayctl
call`` (itself on the stdlib codec) decodes both, and prints the same.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import msgspec

from tests.e2e.harness import Daemon
from tests.sandbox.bundles import make_bundle
from tests.wheels import build_wheel

SOURCE = """
import dataclasses
import datetime
import decimal
import enum
import uuid


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Size:
    value: int
    unit: str = "GiB"


class {name}:
    def __init__(self, resource_id, properties):
        pass

    async def stamp(self):
        return {{
            "at": datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc),
            "local": datetime.datetime(2024, 1, 2, 4, 4, 5, tzinfo=datetime.timezone(
                datetime.timedelta(hours=1))),
            "before_1970": datetime.datetime(1960, 1, 1, tzinfo=datetime.timezone.utc),
            "naive": datetime.datetime(2024, 1, 2, 3, 4, 5),
            "day": datetime.date(2024, 1, 2),
            "time": datetime.time(3, 4, 5, tzinfo=datetime.timezone.utc),
            "age": datetime.timedelta(days=1, seconds=1),
            "id": uuid.UUID(int=1),
            "price": decimal.Decimal("1.10"),
            "colour": Colour.RED,
            "tags": {{"b"}},
            "frozen": frozenset({{1}}),
            "pair": (1, 2),
            "size": Size(10),
            "raw": b"\\x00\\x01",
        }}
"""


def bundle(staging: Path, name: str, offline: bool) -> Path:
    class_name = name.title() + "Driver"
    path = make_bundle(staging, name=name, src={f"{name}.py": SOURCE.format(name=class_name)})
    if offline:  # lib/ without msgspec: the env is built from it alone
        (path / "lib").mkdir()
        build_wheel(path / "lib", "tinydep", "1.0", {"tinydep.py": "VALUE = 1\n"})
    return path


def test_a_result_of_stdlib_types_is_the_same_from_either_codec(
    daemon: Daemon, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    printed: dict[str, str] = {}
    for name, offline, codec in (("fast", False, "msgspec"), ("plain", True, "stdlib")):
        daemon.drop(bundle(staging, name, offline))
        daemon.wait_state(name, "RUNNING")
        described = json.loads(daemon.ctl("describe", name, "--json").stdout)
        # The builder's msgspec is the one the parity tests compare against.
        assert described["codec"] == {"msgspec": f"msgspec {msgspec.__version__}"}.get(codec, codec)
        added = daemon.ctl("resource", "add", f"r-{name}", "--driver", name)
        assert added.returncode == 0, added.stderr
        called = daemon.ctl("call", f"r-{name}", "stamp")
        assert called.returncode == 0, called.stderr
        printed[codec] = called.stdout
    assert printed["msgspec"] == printed["stdlib"]
    result = json.loads(printed["msgspec"])
    utc = dt.timezone.utc  # noqa: UP017 -- as the driver writes it
    assert dt.datetime.fromisoformat(result["at"]) == dt.datetime(2024, 1, 2, 3, 4, 5, 6, utc)
    assert dt.datetime.fromisoformat(result["local"]) == dt.datetime(2024, 1, 2, 3, 4, 5, 0, utc)
    assert dt.datetime.fromisoformat(result["before_1970"]) == dt.datetime(
        1960, 1, 1, 0, 0, 0, 0, utc
    )
    assert {key: result[key] for key in result if key not in ("at", "local", "before_1970")} == {
        "naive": "2024-01-02T03:04:05",
        "day": "2024-01-02",
        "time": "03:04:05Z",
        "age": "P1DT1S",
        "id": "00000000-0000-0000-0000-000000000001",
        "price": "1.10",
        "colour": "red",
        "tags": ["b"],
        "frozen": [1],
        "pair": [1, 2],
        "size": {"value": 10, "unit": "GiB"},
        "raw": str(b"\x00\x01"),  # how drivebayctl prints bytes today
    }
