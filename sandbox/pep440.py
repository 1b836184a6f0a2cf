"""PEP 440 versions and PEP 508 requirements, as much as a manifest needs.

``packaging`` is not a runtime dependency, so this is a small reading of the
two PEPs: the version grammar (public versions only; local ``+labels`` are
refused), its normal form, an ordering key, and a syntax check for version
specifiers and requirement strings. uv validates requirements fully when it
builds the environment; the checks here only catch mistakes early, with a
line that names the field.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from drivebay.sandbox.bundle_errors import quoted

# PEP 440, appendix B, without the local version part.
_VERSION = re.compile(
    r"""
    v?
    (?:(?P<epoch>[0-9]+)!)?
    (?P<release>[0-9]+(?:\.[0-9]+)*)
    (?:[-_.]?(?P<pre_l>alpha|a|beta|b|preview|pre|c|rc)[-_.]?(?P<pre_n>[0-9]+)?)?
    (?:-(?P<post_n1>[0-9]+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>[0-9]+)?)?
    (?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>[0-9]+)?)?
    """,
    re.VERBOSE | re.IGNORECASE,
)
_PRE_NAMES = {"alpha": "a", "a": "a", "beta": "b", "b": "b"}  # the rest mean "rc"
_PRE_ORDER = {"a": 0, "b": 1, "rc": 2}


class Version(NamedTuple):
    """A parsed public version; ``str()`` of it via ``normal`` is canonical."""

    epoch: int
    release: tuple[int, ...]
    pre: tuple[str, int] | None  # ("a" | "b" | "rc", number)
    post: int | None
    dev: int | None

    @property
    def normal(self) -> str:
        """The normal form PEP 440 prescribes, e.g. ``1.0rc1.post2.dev3``."""
        text = f"{self.epoch}!" if self.epoch else ""
        text += ".".join(str(part) for part in self.release)
        if self.pre is not None:
            text += f"{self.pre[0]}{self.pre[1]}"
        if self.post is not None:
            text += f".post{self.post}"
        if self.dev is not None:
            text += f".dev{self.dev}"
        return text


VersionKey = tuple[int, tuple[int, ...], tuple[int, int, int], int, tuple[int, int]]


def parse_version(text: str) -> Version | None:
    """``text`` parsed as a PEP 440 public version, or None when it is not one.

    Accepts every spelling PEP 440 normalizes (``V1.0-RC1``, ``1.0.post``);
    compare ``normal`` with ``text`` to require the normal form.
    """
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        return None
    pre_l = match["pre_l"]
    pre = None
    if pre_l is not None:
        pre = (_PRE_NAMES.get(pre_l.lower(), "rc"), int(match["pre_n"] or 0))
    post = match["post_n1"] or match["post_n2"]
    has_post = match["post_n1"] is not None or match["post_l"] is not None
    return Version(
        epoch=int(match["epoch"] or 0),
        release=tuple(int(part) for part in match["release"].split(".")),
        pre=pre,
        post=int(post or 0) if has_post else None,
        dev=int(match["dev_n"] or 0) if match["dev_l"] is not None else None,
    )


def version_key(text: str) -> VersionKey:
    """A sort key that orders PEP 440 versions as PEP 440 does.

    ``1.2.0 < 1.10.0``, ``1.0.dev0 < 1.0a1 < 1.0rc1 < 1.0 < 1.0.post1``, and
    ``1.0 == 1.0.0`` (equal keys mean the same version). Raises ``ValueError``
    when ``text`` is not a version; manifests are validated before this runs.
    """
    version = parse_version(text)
    if version is None:
        raise ValueError(f"not a PEP 440 version: {text!r}")
    release = list(version.release)
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    # Each part is an int triple/pair so the key compares without None or inf.
    if version.pre is not None:
        pre = (0, _PRE_ORDER[version.pre[0]], version.pre[1])
    elif version.post is None and version.dev is not None:
        pre = (-1, 0, 0)  # 1.0.dev0 sorts before 1.0a0
    else:
        pre = (1, 0, 0)
    post = -1 if version.post is None else version.post
    dev = (1, 0) if version.dev is None else (0, version.dev)
    return (version.epoch, tuple(release), pre, post, dev)


_SPEC_ITEM = re.compile(r"\s*(?P<op>===|~=|==|!=|<=|>=|<|>)\s*(?P<version>[^\s,;()]+)\s*")


def specifier_problem(text: str) -> str | None:
    """None when ``text`` is a PEP 440 specifier set like ``>=3.11,<4``, else
    what is wrong with it (a phrase without the fix)."""
    if not text.strip():
        return "it is empty"
    for item in text.split(","):
        match = _SPEC_ITEM.fullmatch(item)
        if match is None:
            return f"{quoted(item.strip())} has no comparison operator (==, >=, ~=, ...)"
        op, version = match["op"], match["version"]
        if op == "===":
            continue
        if op in ("==", "!=") and version.endswith(".*"):
            version = version[:-2]
        parsed = parse_version(version)
        if parsed is None:
            return f"{quoted(version)} is not a PEP 440 version"
        if op == "~=" and len(parsed.release) < 2:
            return f"'~=' needs two release numbers, as in ~={version}.0"
    return None


_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REQUIREMENT = re.compile(
    rf"""
    \s*(?P<name>{_NAME})\s*
    (?:\[\s*(?:{_NAME}(?:\s*,\s*{_NAME})*)?\s*\])?\s*
    (?P<url>@.*?)?
    (?:\(\s*(?P<paren_spec>[^()]*)\)|(?P<spec>[^;()@]*))
    (?:;(?P<marker>.*))?
    """,
    re.VERBOSE,
)


_OPTION = re.compile(r"(?:^|\s)-")
_MARKER_TOKEN = r"""'[^']*'|"[^"]*"|[A-Za-z_][A-Za-z0-9_.]*|===|==|!=|<=|>=|~=|<|>|\(|\)"""
_MARKER = re.compile(rf"\s*(?:{_MARKER_TOKEN})(?:\s*(?:{_MARKER_TOKEN}))*\s*")


def requirement_problem(text: str) -> str | None:
    """None when ``text`` reads as a PEP 508 requirement such as
    ``pyyaml[c]>=5,<7; python_version >= '3.11'``, else what is wrong with it.

    Direct references (``name @ url``) are refused: a bundle's dependencies
    come from the package index or from its own ``lib/`` wheels only.
    """
    if not text.isprintable() or _OPTION.search(text):
        # It becomes a line of a requirements file: no new lines, no options.
        return "it holds a control character or a word starting with '-'"
    match = _REQUIREMENT.fullmatch(text)
    if match is None:
        return "not PEP 508 syntax"
    if match["url"] is not None:
        return "direct references (name @ url) are not allowed, wheels go in lib/"
    spec = match["paren_spec"] if match["paren_spec"] is not None else match["spec"]
    if spec.strip():
        problem = specifier_problem(spec)
        if problem is not None:
            return problem
    marker = match["marker"]
    if marker is not None and not _MARKER.fullmatch(marker):
        return f"{quoted(marker.strip())} is not an environment marker"
    return None
