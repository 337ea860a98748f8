"""A node's parameters declared from a dataclass of settings, validated before a change and applied
after it (the pattern of the ROS 2 demos' ``set_parameters_callback.py``).

Each field of the dataclass is a :func:`setting`: its name is the parameter's name, its default the
parameter's default, its metadata the description, the bounds (declared in the descriptor, so rclpy
and ``ros2 param describe`` know them, and checked again here, finiteness included), the allowed
choices and whether it is read-only. The dataclass itself stays ROS-free: its ``problem()`` method
(optional) says what is wrong with a combination of values, and :func:`settings_problem` checks a
settings object without ROS, so a unit test can check what a node would refuse.

:class:`NodeParameters` declares the fields on a node, refuses a start-up value that fails the
checks (a ValueError: the node does not start), refuses a change in the set-parameters callback
with the reason (nothing changes) and, in the post-set callback, replaces its ``values`` and calls
the node's ``apply``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Generic, TypeVar

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult

from dexwm_ros.parameter_bounds import bounds_problem, ranged

S = TypeVar("S")


def setting(default, description: str, *, bounds: tuple[float, float] | None = None, choices=None,
            read_only: bool = False, any_type: bool = False):
    """A dataclass field that is a node parameter. ``bounds``: (low, high), inclusive; ``choices``:
    the allowed values; ``any_type``: the parameter's type is not fixed by its default (an empty list
    says nothing about the type of its elements), so :func:`settings_problem` and ``problem()``
    check it instead of rclpy."""
    metadata = {"description": description, "bounds": bounds, "read_only": read_only, "any_type": any_type,
                "choices": tuple(choices) if choices is not None else None}
    return dataclasses.field(default=tuple(default) if isinstance(default, list) else default, metadata=metadata)


def settings_problem(settings) -> str | None:
    """Why ``settings`` cannot be used: a value outside its bounds or its choices, a float that is not
    finite, or the settings' own ``problem()``; None when they are fine."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        bounds, choices = f.metadata.get("bounds"), f.metadata.get("choices")
        if bounds is not None:
            problem = bounds_problem(f.name, value, *bounds)
            if problem:
                return problem
        elif isinstance(value, float) and not math.isfinite(value):
            return f"{f.name} must be finite, got {value}"
        if choices is not None and value not in choices:
            return f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}"
    check = getattr(settings, "problem", None)
    return check() if check is not None else None


def descriptor(f: dataclasses.Field) -> ParameterDescriptor:
    """The ParameterDescriptor of a :func:`setting` field."""
    meta = f.metadata
    read_only = bool(meta.get("read_only"))
    if meta.get("bounds") is not None:
        integer = isinstance(f.default, int) and not isinstance(f.default, bool)
        return ranged(meta["description"], *meta["bounds"], read_only=read_only, integer=integer)
    text = meta["description"]
    if meta.get("choices") is not None:
        text += f"; one of {', '.join(map(str, meta['choices']))}"
    return ParameterDescriptor(description=text, read_only=read_only, dynamic_typing=bool(meta.get("any_type")))


def _plain(value: Any) -> Any:
    """A parameter value as the settings hold it: arrays as tuples (hashable, immutable)."""
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return tuple(value.tolist() if hasattr(value, "tolist") else value)
    return value


class NodeParameters(Generic[S]):
    """The parameters of ``node`` declared from ``settings_type``; ``values`` holds the current ones.

    ``check(candidate, changed)``: refusals that need the node (a goal file that cannot be read),
    called for live changes only; ``apply(values, changed)``: called after a change took effect.
    """

    def __init__(self, node, settings_type: type[S], *, check: Callable[[S, set[str]], str | None] | None = None,
                 apply: Callable[[S, set[str]], None] | None = None):
        self._node, self._check, self._apply = node, check, apply
        self._names = {f.name for f in dataclasses.fields(settings_type)}
        declared = node.declare_parameters("", [(f.name, list(f.default) if isinstance(f.default, tuple)
                                                 else f.default, descriptor(f))
                                                for f in dataclasses.fields(settings_type)])
        values = settings_type(**{p.name: _plain(p.value) for p in declared})
        problem = settings_problem(values)
        if problem:
            raise ValueError(f"parameter {problem}")
        self.values: S = values
        node.add_on_set_parameters_callback(self._on_set)
        node.add_post_set_parameters_callback(self._on_applied)

    def _changes(self, params) -> dict[str, Any]:
        return {p.name: _plain(p.value) for p in params if p.name in self._names}

    def _on_set(self, params) -> SetParametersResult:
        changes = self._changes(params)
        if not changes:
            return SetParametersResult(successful=True)
        try:
            candidate = dataclasses.replace(self.values, **changes)
        except (TypeError, ValueError) as e:
            problem = str(e)
        else:
            problem = settings_problem(candidate)
            if problem is None and self._check is not None:
                problem = self._check(candidate, set(changes))
        if problem:
            self._node.get_logger().warning(f"parameter change refused: {problem}")
            return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    def _on_applied(self, params) -> None:
        changes = self._changes(params)
        if changes:
            self.values = dataclasses.replace(self.values, **changes)
            if self._apply is not None:
                self._apply(self.values, set(changes))
