"""Declared bounds of the nodes' safety-relevant parameters, checked twice.

A range in the ParameterDescriptor lets rclpy (and ``ros2 param describe``) refuse a value outside
it; rclpy does not check ranges of array parameters, nor finiteness beyond the range, so every node
also runs :func:`bounds_problem` in its set-parameters callback and refuses with the reason.
"""
from __future__ import annotations

import math

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


def ranged(description: str, low: float, high: float, read_only: bool = False,
           integer: bool = False) -> ParameterDescriptor:
    """A descriptor whose range also appears in the description (shown by ``ros2 param describe``);
    ``integer``: an integer parameter's range (rclpy checks a range of the parameter's own type only)."""
    descriptor = ParameterDescriptor(description=f"{description}; allowed {low:g} .. {high:g}", read_only=read_only)
    if integer:
        descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
    else:
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high))]
    return descriptor


def bounds_problem(name: str, value, low: float, high: float) -> str | None:
    """Why ``value`` (a number or a list of numbers) is not a finite value within [low, high]."""
    values = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{name} must be a number, got {v!r}"
        if not math.isfinite(v):
            return f"{name} must be finite, got {v}"
        if not low <= v <= high:
            return f"{name} must be within [{low:g}, {high:g}], got {v:g}"
    return None


def first_problem(params, bounds: dict[str, tuple[float, float]]) -> str | None:
    """The first bound violation among rclpy Parameters ``params``, or None."""
    for param in params:
        if param.name in bounds:
            problem = bounds_problem(param.name, param.value, *bounds[param.name])
            if problem:
                return problem
    return None
