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
    local hash
    hash="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && covers "$(cat "$stamp")" "$hash" "$extras"; then
        return 0
    fi
    local want="$hash $extras"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    if [ -n "$extras" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[$extras]"
    else
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT"
    fi
    link_project
    echo "$want" > "$stamp"
}

# The venv imports our code as drivebay (and only so: no top-level kernel,
# sandbox or protocol) from the working tree. setuptools' editable install
# does that with an import hook that loads pathlib, re and fnmatch at every
# interpreter start (10 ms, a third of `drivebayctl status`); a static path to
# a directory that holds nothing but a link to drivebay/ costs nothing.
link_project() {
    local site
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    mkdir -p "$VENV/drivebay-path"
    ln -sfn "$ROOT/drivebay" "$VENV/drivebay-path/drivebay"
    rm -f "$site"/__editable__.drivebay-*.pth "$site"/__editable___drivebay_*_finder.py
    echo "$VENV/drivebay-path" > "$site/drivebay-path.pth"
}

# covers STAMP HASH EXTRAS: was the project installed from this pyproject.toml
# with at least these extras? (scripts/run after scripts/test reinstalls nothing)
covers() {
    local stamp_hash="${1%% *}" stamp_extras="${1#* }" extra
    [ "$stamp_hash" = "$2" ] || return 1
    [ "$1" = "$stamp_hash" ] && stamp_extras=""
    for extra in ${3//,/ }; do
        case ",$stamp_extras," in *",$extra,"*) ;; *) return 1 ;; esac
    done
    return 0
}

# Compile our bytecode ahead of time: imports stay fast (drivebayctl status is
# timed) even where PYTHONDONTWRITEBYTECODE keeps Python from caching it.
compile_project() {
    "$VENV/bin/python" -m compileall -q "$ROOT/drivebay" "$ROOT/kernel" "$ROOT/sandbox" "$ROOT/protocol" >/dev/null
}
