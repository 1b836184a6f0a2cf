"""Which repositories the daemon reads: those of the config, and those kept in
the state dir (``drivebayctl repo add``).

A kept repository is a line of ``STATE/repositories.json`` and its trusted
root, copied at ``repo add`` to ``STATE/repos/NAME/root.json``; both are
written whole (temp file, fsync, rename), so a crash leaves the old list or
the new one. ``STATE/repos/NAME/metadata`` is the TUF client's cache.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from drivebay.kernel.config import Config
from drivebay.kernel.repos.offers import RepositoryFailure, Source
from drivebay.protocol.errors import RequestError
from drivebay.sandbox.atomic_files import write_whole

KEPT = "repositories.json"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def cache_dir(state_dir: Path, name: str) -> Path:
    return state_dir / "repos" / name


def sources(config: Config) -> tuple[list[Source], list[str]]:
    """Every repository (the config's first), and one line per one that cannot be read."""
    found: list[Source] = []
    problems: list[str] = []
    for settings in config.repositories:
        try:
            root = Path(settings.root).expanduser().read_bytes()
        except OSError as exc:
            problems.append(
                f"repository {settings.name}: root {settings.root}: {exc.strerror}; "
                "fix repositories: in the config"
            )
            continue
        found.append(Source(settings.name, settings.url, root))
    names = {source.name for source in found}
    for name, url in _read_kept(config.state_path).items():
        if name in names:
            continue
        try:
            root = (cache_dir(config.state_path, name) / "root.json").read_bytes()
        except OSError as exc:
            problems.append(
                f"repository {name}: its root is gone ({exc.strerror}); repo rm and add it again"
            )
            continue
        found.append(Source(name, url, root, kept=True))
    return found, problems


def _read_kept(state_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((state_dir / KEPT).read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RepositoryFailure(
            f"{state_dir / KEPT}: unreadable ({exc}); remove it and add the repositories again"
        ) from exc
    return {str(k): str(v) for k, v in data.get("repositories", {}).items()}


def add_kept(config: Config, name: str, url: str, root: bytes) -> Source:
    """Keep repository ``name``; RequestError when the name, URL or root is wrong."""
    if not _NAME.fullmatch(name):
        raise RequestError(
            f"{name!r} cannot name a repository; use lowercase letters, digits, . _ -"
        )
    if name == "drivers-dir":
        raise RequestError("drivers-dir names the drivers directory; pick another name")
    if any(settings.name == name for settings in config.repositories):
        raise RequestError(
            f"repository {name} is in the config file; change it there, or pick another name"
        )
    if not (url.startswith(("http://", "https://", "file://")) or url.startswith("/")):
        raise RequestError(
            f"{url}: a repository URL is http(s)://..., file://... or an absolute directory"
        )
    check_root(root)
    state = config.state_path
    kept = _read_kept(state)
    if name in kept:
        raise RequestError(f"repository {name} already exists; repo rm {name} first")
    folder = cache_dir(state, name)
    shutil.rmtree(folder, ignore_errors=True)  # an old cache of a name used before
    write_whole(folder / "root.json", root, 0o600)
    kept[name] = url
    write_whole(state / KEPT, json.dumps({"repositories": kept}, indent=1).encode(), 0o600)
    return Source(name, url, root, kept=True)


def check_root(root: bytes) -> None:
    """RequestError unless ``root`` is a TUF root (its signatures are checked by the client)."""
    from tuf.api.metadata import Metadata, Root

    try:
        signed = Metadata.from_bytes(root).signed
    except Exception as exc:  # any parse failure: the file is not TUF metadata
        raise RequestError(
            f"--root: not TUF metadata ({type(exc).__name__}); pass the repository's "
            "metadata/root.json"
        ) from exc
    if not isinstance(signed, Root):
        raise RequestError("--root: not a root.json; pass the repository's metadata/root.json")


def remove_kept(config: Config, name: str) -> None:
    state = config.state_path
    kept = _read_kept(state)
    if name not in kept:
        if any(settings.name == name for settings in config.repositories):
            raise RequestError(f"repository {name} is in the config file; remove it there")
        raise RequestError(f"no repository {name}; see drivebayctl repo list")
    del kept[name]
    write_whole(state / KEPT, json.dumps({"repositories": kept}, indent=1).encode(), 0o600)
    shutil.rmtree(cache_dir(state, name), ignore_errors=True)
