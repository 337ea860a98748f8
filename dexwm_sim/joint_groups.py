"""The simulated arm and hand as JointGroups (dexwm_robot.joint_group), over a running SimRunner.

A thin wrapper: the runner validates a command exactly as the real drivers do, follows its waypoints
and judges its tolerance and time limit in simulated time (so a lock-step simulation ends a move at
the same simulated instant however loaded the machine is); the runner ends the motion with the
command.
"""
from __future__ import annotations

import numpy as np

from dexwm_robot.joint_group import RUNNING, GroupState, JointGroup, Motion
from dexwm_robot.joints import LOWER, UPPER

from .runner import SimRunner


class SimJointGroup(JointGroup):
    """``part`` ("arm" or "hand") of a started :class:`SimRunner`."""

    def __init__(self, runner: SimRunner, part: str):
        self.runner, self.part = runner, part
        self.names = runner.joint_names(part)
        self._slice = runner.part_slice(part)
        self.lower, self.upper = LOWER[self._slice], UPPER[self._slice]
        self._motion: Motion | None = None

    def state(self) -> GroupState | None:
        snap = self.runner.snapshot()
        if snap is None:
            return None
        sl = self._slice
        return GroupState(position=snap.position[sl], stamp=snap.stamp, velocity=snap.velocity[sl],
                          effort=snap.effort[sl])

    def commanded(self) -> np.ndarray | None:
        motion = self._motion
        if motion is not None and motion.status == RUNNING:
            return motion.target.copy()
        snap = self.runner.snapshot()
        return None if snap is None or snap.setpoint is None else snap.setpoint[self._slice].copy()

    def move(self, points, tolerance=None, time_limit: float | None = None, times=None) -> Motion:
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        t = np.zeros(len(pts)) if times is None else np.asarray(times, dtype=np.float64)
        # The runner wants segment durations: all zero (its default speed) or one per segment.
        durations = np.diff(np.r_[0.0, t]) if len(t) and np.all(t > 0) else np.zeros(len(t))
        motion = Motion(pts, tolerance, time_limit, t)
        # Judged by the runner: a tolerance of inf (a joint the goal did not name) never blocks it.
        command = self.runner.command(self.part, pts, durations, tolerance=tolerance, time_limit=time_limit,
                                      motion=motion)
        motion.points = command.points
        self._motion = motion
        return motion

    def stop(self, reason: str = "stopped by the stop service") -> str:
        self.runner.stop(self.part, reason)
        return f"{self.part} stopped; holding position"
