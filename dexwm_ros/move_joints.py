"""The one MoveJoints action server: the franka, allegro and sim nodes serve their joint groups
(dexwm_robot.joint_group.JointGroup) with it, so every driver answers a goal the same way.

Semantics (also in the README's interface section):

- **Joint names**: empty means every joint of the driver, in its order; otherwise any non-empty
  subset of its joints in any order. Joints a goal does not name keep what they are commanded to now
  (the running motion's target, or where they hold) and are not judged. An unknown or repeated name
  refuses the goal (INVALID_JOINTS, the names in the message).
- **Points**: one point is a target, several are waypoints followed in order. Each point has one
  position per named joint, all finite (INVALID_GOAL otherwise).
- **Limits**: a target outside the joint limits, or (arm) a step over ``max_joint_step`` from the
  current position to the first point or between points, is **refused, never clamped**
  (INVALID_JOINTS): the robot holds and the running goal goes on as if the bad goal had not come.
- **Timing**: every ``time_from_start`` >= 0; all zero (the driver's default speed) or strictly
  increasing from > 0 (the hand and the simulation follow them; franky times the arm's motion itself
  at its dynamics limits). Anything else is refused (INVALID_GOAL).
- **Tolerance**: 0 values (the driver's default), 1 (every named joint) or one per named joint; each
  finite, > 0 and at most ``MAX_GOAL_TOLERANCE`` rad (INVALID_GOAL otherwise). The goal succeeds
  (SUCCESSFUL) once the trajectory is done and every named joint is within its tolerance.
- **Time limit**: finite, >= 0 and at most ``MAX_TIME_LIMIT_S``; 0 means the last time_from_start
  plus the driver's default time limit; a limit shorter than the trajectory is refused. When it
  passes, the goal ends TIMEOUT: a motion still under way is stopped and the group holds where it
  is; a group that finished its trajectory off target (a finger on an object) keeps its target.
- **Stale goals are refused** (INVALID_GOAL): a ``trajectory.header.stamp`` older than the node's
  ``max_command_age_s`` (or as far in the future: the clocks disagree). A zero stamp means
  "unstamped" (hand-typed ``ros2 action send_goal``) and is accepted; the planner stamps its goals.
- **Pre-emption**: a new valid goal (or a valid topic command) replaces the running goal at once;
  the old goal ends PREEMPTED (aborted) with the error at that moment. A refused goal pre-empts
  nothing.
- **Cancel**: the motion stops and the group holds where it is; the goal ends CANCELED.
- **Stop service**: the running goal ends STOPPED (aborted); the group holds.
- **Robot errors** (no connection, a lost connection, the hand's error state, a simulation reset):
  ROBOT_ERROR with the cause.

``final_error`` (and the feedback's ``error``) is target - position over all of the driver's joints,
in its order.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from rclpy.action import ActionServer, CancelResponse, GoalResponse

from dexwm_robot.command_limits import CommandRejected
from dexwm_robot.joint_group import (FAILED, PREEMPTED, REACHED, RUNNING, STOPPED, TIMED_OUT, GroupUnavailable,
                                     JointGroup)
from dexwm_ros.action import MoveJoints
from dexwm_ros.driver_settings import MAX_GOAL_TOLERANCE, MAX_TIME_LIMIT_S
from dexwm_ros.ros_time import seconds

R = MoveJoints.Result
# Feedback rate while a goal runs; the wait itself ends as soon as the motion does.
FEEDBACK_PERIOD_S = 0.05
# How long a cancel waits for the group to confirm the stop.
STOP_WAIT_S = 2.0
_CODES = {"invalid_goal": R.INVALID_GOAL, "invalid_joints": R.INVALID_JOINTS}


class GoalRefused(ValueError):
    """A goal or command that must not be executed; ``code`` is the MoveJoints result code."""

    def __init__(self, message: str, code: int = R.INVALID_GOAL):
        super().__init__(message)
        self.code = code


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
    """(n,) tolerance from 0, 1 or n values; GoalRefused outside (0, MAX_GOAL_TOLERANCE]."""
    tol = np.asarray(list(values), dtype=np.float64)
    if tol.size == 0:
        tol = np.array([default])
    if tol.size == 1:
        tol = np.full(n, tol[0])
    if tol.shape != (n,):
        raise GoalRefused(f"goal_tolerance needs 0, 1 or {n} values (one per named joint), got {tol.size}")
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


def joint_index(names, group: JointGroup) -> list[int]:
    """Indices into the group's joints of a message's joint names (empty: all, in the group's order)."""
    names = list(names)
    if not names:
        return list(range(len(group.names)))
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise GoalRefused(f"duplicate joint_names {repeated}", R.INVALID_JOINTS)
    unknown = [n for n in names if n not in group.names]
    if unknown:
        raise GoalRefused(f"unknown joint_names {unknown}; this driver's joints are {list(group.names)}",
                          R.INVALID_JOINTS)
    return [group.names.index(n) for n in names]


def full_points(index: list[int], rows, group: JointGroup) -> np.ndarray:
    """(N, n) positions of all the group's joints from rows of the named joints' positions; the
    joints not named keep what the group is commanded to now. GoalRefused when malformed."""
    rows = [list(r) for r in rows]
    if not rows:
        raise GoalRefused("the trajectory has no points")
    for k, row in enumerate(rows):
        if len(row) != len(index):
            raise GoalRefused(f"point {k} has {len(row)} positions for {len(index)} joints")
        if not all(math.isfinite(v) for v in row):
            raise GoalRefused(f"point {k}: non-finite position in {row}")
    n = len(group.names)
    if len(index) == n:
        return np.asarray(rows, dtype=np.float64)[:, np.argsort(index)]
    base = group.commanded()
    if base is None:
        raise GoalRefused("the driver has no joint positions yet to complete a goal for a subset of its joints",
                          R.ROBOT_ERROR)
    points = np.tile(np.asarray(base, dtype=np.float64), (len(rows), 1))
    points[:, index] = rows
    return points


@dataclass
class Goal:
    """A checked MoveJoints goal in the group's joint order."""

    points: np.ndarray       # (N, n)
    times: np.ndarray        # (N,) time_from_start [s]
    tolerance: np.ndarray    # (n,) rad; inf for joints the goal did not name
    time_limit: float        # [s]


def parse_goal(goal, group: JointGroup, now_s: float, max_age_s: float, default_tolerance: float,
               default_time_limit_s: float) -> Goal:
    """The checks of the module docstring, in order; GoalRefused with the reason."""
    traj = goal.trajectory
    check_command_age(seconds(traj.header.stamp), now_s, max_age_s, "goal")
    index = joint_index(traj.joint_names, group)
    points = full_points(index, (p.positions for p in traj.points), group)
    times = check_timing(seconds(p.time_from_start) for p in traj.points)
    tolerance = np.full(len(group.names), np.inf)
    tolerance[index] = check_tolerance(goal.goal_tolerance, len(index), default_tolerance)
    limit = check_time_limit(seconds(goal.time_limit))
    if limit == 0.0:
        limit = float(times[-1]) + default_time_limit_s
    elif limit < times[-1]:
        raise GoalRefused(f"time_limit {limit:g} s is shorter than the trajectory (last time_from_start "
                          f"{times[-1]:g} s)")
    return Goal(points, times, tolerance, limit)


class MoveJointsServer:
    """``action_name`` (MoveJoints) for ``group``, with the node's parameters for the defaults.

    ``report(problem, refused)`` hears refusals (``refused`` True: nothing was done) and failures,
    for the node's log and diagnostics, and ``report(None, False)`` when a goal started;
    ``wall_time_factor`` scales the wall-clock backstop for a group whose time runs slower than the
    wall clock (a simulation); ``move_kwargs`` go to every ``group.move``.
    """

    def __init__(self, node, action_name: str, group: JointGroup, *, tolerance_param: str,
                 time_limit_param: str, age_param: str = "max_command_age_s",
                 report: Optional[Callable[[Optional[str], bool], None]] = None, callback_group=None,
                 wall_time_factor: float = 1.0, move_kwargs: Optional[dict] = None):
        self.node, self.group, self.action_name = node, group, action_name
        self._params = (tolerance_param, time_limit_param, age_param)
        self._report = report or (lambda problem, refused: None)
        self._wall_time_factor = wall_time_factor
        self._move_kwargs = move_kwargs or {}
        # Every goal is accepted and checked in execute, so that a refusal comes with its reason.
        self.server = ActionServer(node, MoveJoints, action_name, execute_callback=self._execute,
                                   goal_callback=lambda request: GoalResponse.ACCEPT,
                                   cancel_callback=lambda handle: CancelResponse.ACCEPT,
                                   callback_group=callback_group)

    def _param(self, name: str) -> float:
        return float(self.node.get_parameter(name).value)

    def _execute(self, goal_handle):
        tolerance_param, time_limit_param, age_param = self._params
        try:
            goal = parse_goal(goal_handle.request, self.group, self.node.get_clock().now().nanoseconds * 1e-9,
                              self._param(age_param), self._param(tolerance_param), self._param(time_limit_param))
            motion = self.group.move(goal.points, goal.tolerance, goal.time_limit, goal.times, **self._move_kwargs)
        except GoalRefused as exc:
            return self._finish(goal_handle, exc.code, str(exc), refused=True)
        except CommandRejected as exc:
            return self._finish(goal_handle, _CODES[exc.code], str(exc), refused=True)
        except GroupUnavailable as exc:
            return self._finish(goal_handle, R.ROBOT_ERROR, str(exc), refused=True)
        except ValueError as exc:   # a group's own check of its input
            return self._finish(goal_handle, R.INVALID_GOAL, str(exc), refused=True)
        self._report(None, False)
        # Backstop in wall-clock time, should the group stop judging (a stalled thread): the group's
        # own time limit normally ends the motion long before.
        deadline = time.monotonic() + 2.0 * goal.time_limit * self._wall_time_factor + 5.0
        feedback = MoveJoints.Feedback()
        while not motion.wait(FEEDBACK_PERIOD_S):
            if goal_handle.is_cancel_requested:
                self._stop("move_joints goal canceled")
                motion.wait(STOP_WAIT_S)
                break
            if time.monotonic() > deadline:
                self._stop("move_joints backstop: the time limit passed without a verdict")
                return self._finish(goal_handle, R.TIMEOUT, f"no verdict within {goal.time_limit:.2f} s "
                                    "(the driver stopped judging); stopped and holding", self._error(motion))
            error = self._error(motion)
            if error is not None:
                feedback.error = error.tolist()
                feedback.max_abs_error = float(np.max(np.abs(error)))
                goal_handle.publish_feedback(feedback)
        error = motion.final_error if motion.final_error is not None else self._error(motion)
        if goal_handle.is_cancel_requested and motion.status in (STOPPED, FAILED, RUNNING):
            return self._finish(goal_handle, R.CANCELED, "canceled; stopped, holding position", error)
        code = {REACHED: R.SUCCESSFUL, TIMED_OUT: R.TIMEOUT, PREEMPTED: R.PREEMPTED, STOPPED: R.STOPPED,
                FAILED: R.ROBOT_ERROR}[motion.status]
        return self._finish(goal_handle, code, motion.reason or motion.status, error)

    def _stop(self, reason: str) -> None:
        try:
            self.group.stop(reason)
        except GroupUnavailable:   # nothing moves without a connection
            pass

    def _error(self, motion) -> Optional[np.ndarray]:
        state = self.group.state()
        return None if state is None else motion.target - state.position

    def _finish(self, goal_handle, code: int, message: str, error=None, refused: bool = False):
        result = MoveJoints.Result(error_code=code, message=message)
        if error is not None:
            result.final_error = [float(e) for e in error]
        if code == R.SUCCESSFUL:
            goal_handle.succeed()
        elif code == R.CANCELED:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        if code not in (R.SUCCESSFUL, R.CANCELED, R.PREEMPTED, R.STOPPED):
            self._report(f"{self.action_name}: {message}", refused)
        return result
