"""The private directory that carries the driver runtime into a child.

A child must see the runtime and nothing else of the kernel: not ``kernel``,
not ``sandbox``, not the kernel's site-packages. So the few standard-library
modules of ``protocol`` that the child runs are copied into
``<state>/runtime/<digest>/_drivebay_runtime/`` and only that directory goes
on the child's ``sys.path``, beside the driver's ``src/``. The copy is a
package of a private name whose modules import each other relatively, so a
driver's own modules may be called ``protocol``, ``kernel`` or ``sandbox``.
The digest covers the files' contents, so a kernel upgrade never mixes
runtimes, and concurrent kernels on one state dir agree on the same copy.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import py_compile
import shutil
import tempfile
from pathlib import Path

from drivebay import protocol

# Part of the digest: a new layout (e.g. shipping bytecode) makes a new copy
# instead of reusing an old one that lacks it.
LAYOUT = b"drivebay-runtime-3 (_drivebay_runtime, with bytecode)"

PACKAGE = "_drivebay_runtime"
"""The import name of the runtime in a child: private, so no driver module has it."""

CHILD_MODULES = (
    "__init__.py",
    "errors.py",
    "versions.py",
    "frames.py",
    "msgpack_lite.py",
    "child_codec.py",
    "child_messages.py",
    "outbox.py",
    "hooks.py",
    "fd_passing.py",
    "handoff_state.py",
    "handoff_serving.py",
    "init_shim.py",
    "fork_template.py",
    "runtime.py",
)


def ensure_runtime_dir(state_dir: Path) -> Path:
    """The directory to put first on a child's ``sys.path``; created once."""
    source = Path(protocol.__file__).parent
    contents = {name: (source / name).read_bytes() for name in CHILD_MODULES}
    digest = hashlib.sha256(LAYOUT)
    for name, data in contents.items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    target = state_dir / "runtime" / digest.hexdigest()[:16]
    if (target / PACKAGE / "runtime.py").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        package = staging / PACKAGE
        package.mkdir()
        for name, data in contents.items():
            (package / name).write_bytes(data)
        # Children import these on every start and cannot write bytecode here
        # (read-only): compile it now, for the kernel's interpreter (the default).
        compileall.compile_dir(
            package, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH
        )
        for path in package.rglob("*"):
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
        os.chmod(package, 0o555)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / PACKAGE / "runtime.py").exists():
                raise
            # Another kernel put the same copy there first: use theirs.
    finally:
        if staging.exists():
            for path in [staging, *staging.rglob("*")]:
                if path.is_dir():
                    os.chmod(path, 0o755)
            shutil.rmtree(staging)
    return target


BOOTSTRAP = (
    f"import sys; sys.path.insert(0, sys.argv[1]); from {PACKAGE}.init_shim import start; "
    f"start(); from {PACKAGE}.runtime import main; main()"
)
