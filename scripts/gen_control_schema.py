"""Write docs/control-schema.json: the JSON Schema of every control command's
request and result, generated from the Structs of ``kernel/control/schema.py``.

Run it after changing a command: ``.venv/bin/python scripts/gen_control_schema.py``
(``--check`` exits 1, writing nothing, when the file is stale).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from drivebay.kernel.control.schema import json_schema

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "control-schema.json"


def schema_text() -> str:
    """The file's content: the schema as stable, indented JSON."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args()
    text = schema_text()
    if args.check:
        stale = not TARGET.exists() or TARGET.read_text() != text
        if stale:
            print(f"{TARGET} is stale: run scripts/gen_control_schema.py", file=sys.stderr)
        return 1 if stale else 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
