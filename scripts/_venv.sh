# Shared by scripts/run and scripts/test: create .venv once and (re)install the
# project only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

ensure_venv() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.drivebay-installed"
    local want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $extras"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        if [ -n "$extras" ]; then
            "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e "$ROOT[$extras]"
        else
            "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e "$ROOT"
        fi
        echo "$want" > "$stamp"
    fi
}

# Compile our bytecode ahead of time: imports stay fast (drivebayctl status is
# timed) even where PYTHONDONTWRITEBYTECODE keeps Python from caching it.
compile_project() {
    "$VENV/bin/python" -m compileall -q "$ROOT/kernel" "$ROOT/sandbox" "$ROOT/protocol" >/dev/null
}
