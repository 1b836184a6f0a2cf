"""The reserved method names of a driver class, and what each must look like.

A driver class is plain Python; the runtime finds its lifecycle hooks by
name. These names are never operations, and a class that defines one with
another meaning (a sync ``handoff``, a ``takeover`` without its two
parameters, a ``detach`` that is not callable) is refused at load with one
line, so a hypervisor driver's ``resume`` operation can never be mistaken
for a hook, and a hook can never be called as an operation.
Standard library only: this runs in the driver's interpreter.
"""

from __future__ import annotations

import inspect
from typing import Any

# name -> (must be a coroutine function, the positional parameters it takes
# after self/cls; None: not checked, the hook's shape is not settled yet)
RESERVED: dict[str, tuple[bool, tuple[str, ...] | None]] = {
    "health": (False, ()),
    "attach": (False, ()),
    "detach": (False, ()),
    "handoff": (True, ()),
    "takeover": (True, ("state", "from_version")),
    "handoff_aborted": (True, ()),
    "reconcile_operation": (False, ("op_id", "operation", "args")),
}
LIFECYCLE_METHODS = frozenset(RESERVED)
"""The one list of names that are hooks, never operations."""

STATE_HOOKS = ("handoff", "takeover", "handoff_aborted")
"""The hooks the kernel needs to know of before it moves a resource."""

REPORTED_HOOKS = (*STATE_HOOKS, "reconcile_operation")
"""The hooks ``Ready.hooks`` lists when the class defines them: the state hooks,
and ``reconcile_operation`` (the kernel asks it only of a class that has it)."""

SHAPES = {
    "health": "@classmethod async def health(cls) -> dict",
    "attach": "async def attach(self) -> None",
    "detach": "async def detach(self) -> None",
    "handoff": "async def handoff(self) -> dict",
    "takeover": "async def takeover(self, state: dict, from_version: str) -> None",
    "handoff_aborted": "async def handoff_aborted(self) -> None",
    "reconcile_operation": (
        "async def reconcile_operation(self, op_id: str, operation: str, args: dict) -> Any"
    ),
}


class HookMisdefined(TypeError):
    """A driver class defines a reserved name with another meaning; rename it."""


def check_hooks(driver_class: type) -> list[str]:
    """The hooks of ``REPORTED_HOOKS`` ``driver_class`` defines, in that order.

    Raises HookMisdefined (one line naming the class, the name and the shape
    it must have) when a reserved name is something else."""
    for name, (is_async, parameters) in RESERVED.items():
        try:
            member = inspect.getattr_static(driver_class, name)
        except AttributeError:
            continue
        if member is None:  # ``takeover = None``: a subclass says it has none
            continue
        problem = _problem(getattr(driver_class, name), member, is_async, parameters)
        if problem:
            raise HookMisdefined(
                f"{driver_class.__qualname__}.{name} {problem}; {name!r} is reserved for the "
                f"lifecycle hook `{SHAPES[name]}` (docs/drivers.md): rename it"
            )
    return [name for name in REPORTED_HOOKS if callable(getattr(driver_class, name, None))]


def _problem(bound: Any, member: Any, is_async: bool, parameters: tuple[str, ...] | None) -> str:
    """What is wrong with ``member`` as the hook, or ``""``. ``bound`` is it
    as seen on the class (a plain ``def`` still takes ``self`` there)."""
    if not callable(bound) or inspect.isclass(bound):
        return "is not a method"
    if is_async and not inspect.iscoroutinefunction(bound):
        return "is not an async def"
    if parameters is None:
        return ""
    try:
        signature = inspect.signature(bound)
    except (TypeError, ValueError):
        return ""  # a builtin or an odd callable: nothing to check against
    kinds = inspect.Parameter
    values = list(signature.parameters.values())
    positional = [
        p for p in values if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is p.empty]
    keyword_only = [p for p in values if p.kind is kinds.KEYWORD_ONLY and p.default is p.empty]
    takes_rest = any(p.kind is kinds.VAR_POSITIONAL for p in values)
    wanted = len(parameters) + (1 if inspect.isfunction(member) else 0)
    if len(required) > wanted or keyword_only or (len(positional) < wanted and not takes_rest):
        shown = ", ".join(parameters) or "no parameters"
        return f"takes the wrong parameters (it must take {shown})"
    return ""
