"""Protocol version negotiation (standard library only; the child loads it).

Each side announces the inclusive range of protocol versions it speaks; the
highest version in both ranges wins. Evolution rules, so old and new peers
keep talking:

- Messages are MessagePack arrays ``[tag, field1, field2, ...]``. A new field
  is only ever appended at the end, with a default; a decoder ignores trailing
  fields it does not know and fills missing ones with their defaults.
- A field is never removed, renamed in meaning, or retyped; a tag is never
  reused. A change that cannot follow these rules bumps ``PROTOCOL_MAX`` and,
  once the old form is no longer supported, ``PROTOCOL_MIN``.
"""

from __future__ import annotations

PROTOCOL_MIN = 1
PROTOCOL_MAX = 1


def negotiate(ours: tuple[int, int], theirs: tuple[int, int]) -> int | None:
    """The highest version both ranges contain, or None when they are disjoint."""
    low = max(ours[0], theirs[0])
    high = min(ours[1], theirs[1])
    return high if low <= high else None


def describe_mismatch(ours: tuple[int, int], theirs: tuple[int, int]) -> str:
    """One line saying why two ranges cannot talk and what to do."""
    return (
        f"no common protocol version: kernel speaks {ours[0]}..{ours[1]}, "
        f"driver runtime speaks {theirs[0]}..{theirs[1]}; "
        "rebuild the driver's environment with this kernel's runtime"
    )
