"""Start order: categories first, then ``requires`` inside a category.

``plan`` turns the drivers' (category, requires) into waves: every driver of
a wave may start concurrently once the previous wave has settled. Categories
come in the configured order, unknown ones after, alphabetically. A driver
whose requirement is absent, of another category, or in a cycle is BLOCKED
with the reason, and so is everything that depends on it; the rest still
start. Stopping walks the waves backwards (``stop_order``), each wave
concurrently: shutdown and ``drivebayctl stop`` both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

DEFAULT_CATEGORY_ORDER = ("network", "storage", "hypervisor")


@dataclass(frozen=True)
class Node:
    name: str
    category: str
    requires: tuple[str, ...] = ()


@dataclass
class Plan:
    waves: list[list[str]] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)

    def stop_waves(self) -> list[list[str]]:
        return [list(wave) for wave in reversed(self.waves)]


def stop_order(plan: Plan, items: Iterable[T], name: Callable[[T], str]) -> list[list[T]]:
    """``items`` (named by ``name``) in the groups they stop in, one group
    after the other and each group's members concurrently: first those outside
    the plan (blocked, so not running, and nothing running needs them), then
    the plan's waves backwards, dependents before what they require. Empty
    groups are left out; inside a group the order of ``items`` is kept."""
    rank = {member: index for index, wave in enumerate(plan.stop_waves()) for member in wave}
    groups: dict[int, list[T]] = {}
    for item in items:
        groups.setdefault(rank.get(name(item), -1), []).append(item)
    return [groups[index] for index in sorted(groups)]


def category_rank(category: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(category), "") if category in order else (len(order), category)


def plan(nodes: Mapping[str, Node], order: Sequence[str] = DEFAULT_CATEGORY_ORDER) -> Plan:
    result = Plan()
    blocked = result.blocked
    for node in nodes.values():
        for need in node.requires:
            if need not in nodes:
                blocked[node.name] = f"requires {need}, which is not installed"
            elif nodes[need].category != node.category:
                blocked[node.name] = (
                    f"requires {need} of category {nodes[need].category}; requires may only "
                    f"name drivers of its own category ({node.category})"
                )
    for cycle in _cycles(nodes):
        for name in cycle:
            blocked.setdefault(name, "requires cycle: " + " -> ".join([*cycle, cycle[0]]))
    _block_dependents(nodes, blocked)
    categories = sorted(
        {node.category for node in nodes.values()}, key=lambda c: category_rank(c, order)
    )
    for category in categories:
        members = {
            n.name: n for n in nodes.values() if n.category == category and n.name not in blocked
        }
        done: set[str] = set()
        while len(done) < len(members):
            wave = sorted(
                name
                for name, node in members.items()
                if name not in done and all(need in done for need in node.requires)
            )
            result.waves.append(wave)
            done.update(wave)
    return result


def _block_dependents(nodes: Mapping[str, Node], blocked: dict[str, str]) -> None:
    changed = True
    while changed:
        changed = False
        for node in nodes.values():
            if node.name in blocked:
                continue
            for need in node.requires:
                if need in blocked:
                    blocked[node.name] = f"requires {need}, which is blocked"
                    changed = True
                    break


def _cycles(nodes: Mapping[str, Node]) -> list[list[str]]:
    """Every cycle of requires, each as the list of its members in order."""
    color: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        color[name] = 1
        stack.append(name)
        for need in nodes[name].requires:
            if need not in nodes:
                continue
            if color.get(need) == 1:
                cycles.append(stack[stack.index(need) :])
            elif need not in color:
                visit(need)
        stack.pop()
        color[name] = 2

    for name in sorted(nodes):
        if name not in color:
            visit(name)
    return cycles
