"""A node's parameters declared from a dataclass of settings, validated before a change and applied
after it (the pattern of the ROS 2 demos' ``set_parameters_callback.py``).

Each field of the dataclass is a :func:`dexwm_ros.node_settings.setting`: its name is the parameter's name, its default the
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
from typing import Any, Callable, Generic, TypeVar

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult

from dexwm_ros.node_settings import settings_problem

S = TypeVar("S")


def ranged(description: str, low: float, high: float, read_only: bool = False,
           integer: bool = False) -> ParameterDescriptor:
    """A descriptor whose range also appears in the description (shown by ``ros2 param describe``);
    ``integer``: an integer parameter's range (rclpy checks a range of the parameter's own type only,
    and no range of an array: :func:`settings_problem` checks those)."""
    shown = f"{int(low)} .. {int(high)}" if integer else f"{low:g} .. {high:g}"
    descriptor = ParameterDescriptor(description=f"{description}; allowed {shown}", read_only=read_only)
    if integer:
        descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
    else:
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high))]
    return descriptor


def descriptor(f: dataclasses.Field) -> ParameterDescriptor:
    """The ParameterDescriptor of a :func:`setting` field."""
    meta = f.metadata
    read_only = bool(meta.get("read_only"))
    if meta.get("bounds") is not None:
        integer = isinstance(f.default, int) and not isinstance(f.default, bool)
        ranged_descriptor = ranged(meta["description"], *meta["bounds"], read_only=read_only, integer=integer)
        ranged_descriptor.dynamic_typing = bool(meta.get("any_type"))
        return ranged_descriptor
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
