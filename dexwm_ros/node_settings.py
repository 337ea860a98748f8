"""A node's settings as one ROS-free dataclass: each field a :func:`setting` (the parameter's name,
default, description, bounds, choices, read-only flag), and :func:`settings_problem`, the checks a
node runs before it takes a value (dexwm_ros.node_parameters declares the fields on a node).

Kept free of ROS so that a unit test, a CLI or a driver core can build and check a node's settings
without rclpy.
"""
from __future__ import annotations

import dataclasses
import math


def setting(default, description: str, *, bounds: tuple[float, float] | None = None, choices=None,
            read_only: bool = False, any_type: bool = False):
    """A dataclass field that is a node parameter. ``bounds``: (low, high), inclusive; ``choices``:
    the allowed values; ``any_type``: the parameter's type is not fixed by its default (an empty list
    says nothing about the type of its elements; a number too large for an int64 arrives as a
    double), so :func:`settings_problem` and ``problem()`` check it instead of rclpy."""
    metadata = {"description": description, "bounds": bounds, "read_only": read_only, "any_type": any_type,
                "choices": tuple(choices) if choices is not None else None}
    return dataclasses.field(default=tuple(default) if isinstance(default, list) else default, metadata=metadata)


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def settings_problem(settings) -> str | None:
    """Why ``settings`` cannot be used: an integer setting given another type, a value outside its
    bounds or its choices, a float that is not finite, or the settings' own ``problem()``; None when
    they are fine."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        bounds, choices = f.metadata.get("bounds"), f.metadata.get("choices")
        if _is_int(f.default) and not _is_int(value):
            return f"{f.name} must be an integer, got {value!r}"
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


def positive_problem(settings, names) -> str | None:
    """The first of ``names`` whose value is not a finite number > 0, as a refusal; None when all are."""
    for name in names:
        value = float(getattr(settings, name))
        if not (value > 0 and math.isfinite(value)):
            return f"{name} must be a positive number, got {value}"
    return None
