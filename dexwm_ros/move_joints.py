"""What the three MoveJoints servers (franka, allegro, sim) share: how a goal ends, and the one set
of rules every server applies to a goal's timing, tolerance and age before anything moves.

The rules (documented in the README's "Safety" section):

- **Stale goals are refused.** A goal whose ``trajectory.header.stamp`` is older than the server's
  ``max_command_age_s`` (or as far in the future: the clocks disagree) is refused with the age in the
  message. A zero stamp means "unstamped" (hand-typed ``ros2 action send_goal``) and is accepted;
  the planner always stamps its goals, so a goal of the planner that arrives late is always caught.
- **Timing**: every ``time_from_start`` is >= 0; they are either all zero (the driver's default
  speed) or strictly increasing from > 0. Anything else (negative, non-monotonic) is refused.
- **Tolerance**: 0, 1 or one value per joint, each finite, > 0 and at most ``MAX_GOAL_TOLERANCE``.
- **Time limit**: finite, >= 0 (0 = the driver's default) and at most ``MAX_TIME_LIMIT_S``.
"""
from __future__ import annotations

import math

import numpy as np

from dexwm_ros.action import MoveJoints

# A per-joint tolerance above 1 rad would call almost any motion a success.
MAX_GOAL_TOLERANCE = 1.0
# Ten minutes: longer than any motion of these drivers; a larger value is a unit mistake.
MAX_TIME_LIMIT_S = 600.0
# Bounds of the servers' max_command_age_s parameter [s].
COMMAND_AGE_RANGE = (0.05, 60.0)
DEFAULT_MAX_COMMAND_AGE_S = 2.0


class GoalRefused(ValueError):
    """A goal that must not be executed; ``code`` is the MoveJoints result code to answer with."""

    def __init__(self, message: str, code: int = MoveJoints.Result.INVALID_GOAL):
        super().__init__(message)
        self.code = code


def end_goal(goal_handle, code: int) -> None:
    """Put a MoveJoints goal in the terminal state its result code means."""
    if code == MoveJoints.Result.SUCCESSFUL:
        goal_handle.succeed()
    elif code == MoveJoints.Result.CANCELED:
        goal_handle.canceled()
    else:
        goal_handle.abort()


def is_deliberate(code: int) -> bool:
    """Pre-emption and stop are someone's choice, not faults worth a diagnostics report."""
    return code in (MoveJoints.Result.PREEMPTED, MoveJoints.Result.STOPPED)


def check_command_age(stamp_s: float, now_s: float, max_age_s: float, what: str = "goal") -> None:
    """Refuse a command stamped more than ``max_age_s`` before (or after) ``now_s``; 0 = unstamped."""
    if stamp_s == 0.0:
        return
    age = now_s - stamp_s
    if age > max_age_s:
        raise GoalRefused(f"stale {what}: stamped {age:.2f} s ago, more than max_command_age_s = "
                          f"{max_age_s:g} s (sent before a stall or by a sender that gave up); not executed")
    if age < -max_age_s:
        raise GoalRefused(f"{what} stamped {-age:.2f} s in the future, more than max_command_age_s = "
                          f"{max_age_s:g} s: the sender's clock differs from this driver's; not executed")


def check_timing(times) -> np.ndarray:
    """The points' time_from_start [s]: all zero, or strictly increasing from > 0; else GoalRefused."""
    t = np.asarray(list(times), dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise GoalRefused(f"time_from_start must be >= 0, got {t.tolist()}")
    if np.any(t != 0.0) and (t[0] <= 0.0 or np.any(np.diff(t) <= 0.0)):
        raise GoalRefused(f"time_from_start must be all zero or strictly increasing from > 0, got {t.tolist()}")
    return t


def check_tolerance(values, n: int, default: float) -> np.ndarray:
    """(n,) per-joint tolerance from 0, 1 or n values; GoalRefused outside (0, MAX_GOAL_TOLERANCE]."""
    tol = np.asarray(list(values), dtype=np.float64)
    if tol.size == 0:
        tol = np.array([default])
    if tol.size == 1:
        tol = np.full(n, tol[0])
    if tol.shape != (n,):
        raise GoalRefused(f"goal_tolerance needs 0, 1 or {n} values, got {tol.size}")
    if not np.all(np.isfinite(tol)) or np.any(tol <= 0) or np.any(tol > MAX_GOAL_TOLERANCE):
        raise GoalRefused(f"goal_tolerance values must be > 0 and <= {MAX_GOAL_TOLERANCE:g} rad, "
                          f"got {tol.tolist()}")
    return tol


def check_time_limit(limit_s: float) -> float:
    """The goal's time limit [s] (0 = the driver's default); GoalRefused when negative or absurd."""
    if not math.isfinite(limit_s) or limit_s < 0:
        raise GoalRefused(f"time_limit must be >= 0 s (0 = the driver's default), got {limit_s}")
    if limit_s > MAX_TIME_LIMIT_S:
        raise GoalRefused(f"time_limit {limit_s:g} s is above the maximum of {MAX_TIME_LIMIT_S:g} s")
    return float(limit_s)
