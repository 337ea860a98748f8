"""The one check of a joint command against joint limits and the per-command step cap.

The real Franka driver (franka_driver.arm) and the simulation (dexwm_sim.runner) both call
:func:`check_joint_command`, so the simulation refuses exactly what the real driver refuses and a
planner that breaks a limit or the cap is caught in simulation too. Rule: a target outside the
limits, or a step over the cap, is refused (never clamped) and nothing moves. No rclpy, no MuJoCo.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# Targets this close outside a limit count as on it (float round trips through messages).
LIMIT_EPS = 1e-9


class CommandRejected(ValueError):
    """A command that was not forwarded to the robot; ``code`` says why (see MoveJoints codes)."""

    def __init__(self, message: str, code: str = "invalid_goal"):
        super().__init__(message)
        self.code = code


def check_joint_command(points, lower, upper, names: Sequence[str], max_step: Optional[float] = None,
                        current: Optional[np.ndarray] = None) -> np.ndarray:
    """Validate (N, n) joint positions; return them as a float array or raise CommandRejected.

    ``max_step`` (None: no cap) bounds the change of any joint from ``current`` (when given) to
    point 0 and between consecutive points.
    """
    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)
    n = len(names)
    try:
        pts = np.array(points, dtype=float)
    except (TypeError, ValueError) as exc:
        raise CommandRejected(f"joint positions are not numbers: {exc}") from None
    if pts.ndim == 1:
        pts = pts[None, :]
    if pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] != n:
        raise CommandRejected(f"expected one or more points of {n} joint positions, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise CommandRejected("joint positions contain NaN or inf")
    bad = (pts < lower - LIMIT_EPS) | (pts > upper + LIMIT_EPS)
    if bad.any():
        k, j = map(int, np.argwhere(bad)[0])
        raise CommandRejected(
            f"point {k}: {names[j]} = {pts[k, j]:.4f} rad is outside its limits "
            f"[{lower[j]:.4f}, {upper[j]:.4f}]", code="invalid_joints")
    if max_step is None:
        return pts
    chain = pts if current is None else np.vstack([np.asarray(current, dtype=float)[None, :], pts])
    if len(chain) > 1:
        steps = np.abs(np.diff(chain, axis=0))
        if steps.max() > max_step:
            k, j = map(int, np.unravel_index(np.argmax(steps), steps.shape))
            where = ("from the current position to point 0" if current is not None and k == 0
                     else f"between points {k - (current is not None)} and {k + (current is None)}")
            raise CommandRejected(
                f"{names[j]} would move {steps[k, j]:.4f} rad {where}, more than the per-command "
                f"cap max_joint_step = {max_step:.4f} rad", code="invalid_joints")
    return pts
