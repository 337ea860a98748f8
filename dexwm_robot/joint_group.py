"""One group of joints (the arm, the hand, either of them simulated) behind one small interface.

The Franka core (franka_driver.arm), the Allegro controller (allegro_driver.controller) and the
simulation (dexwm_sim.runner) implement :class:`JointGroup`; the one MoveJoints action server
(dexwm_ros.move_joints) serves any of them. ROS-free, numpy only.

- ``state()``: the newest measured positions (velocities where known) and their stamp;
- ``move(points, tolerance, time_limit, times)`` -> :class:`Motion`: refuses bad input at once
  (:class:`~dexwm_robot.command_limits.CommandRejected`, nothing changes) or starts the motion,
  pre-empting the one under way; :class:`GroupUnavailable` when the hardware cannot be reached;
- ``stop()``: end the motion under way; the group holds where it is.

A :class:`Motion` is running until it ends, once, as one of: reached (the trajectory is done and
every judged joint is within its tolerance), timed out (not reached within the time limit; a group
still under way is stopped there, one that finished its trajectory off target, such as a finger on
an object, keeps its target), stopped (``stop()``), pre-empted (a newer motion), failed (the reason
says why: a lost connection, a hand error, a simulation reset). ``wait()`` blocks until then.
"""
from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np

RUNNING, REACHED, TIMED_OUT = "running", "reached", "timed_out"
STOPPED, PREEMPTED, FAILED = "stopped", "preempted", "failed"
ENDS = (REACHED, TIMED_OUT, STOPPED, PREEMPTED, FAILED)


class GroupUnavailable(RuntimeError):
    """The group cannot move now (not connected, connection lost, robot in an error state)."""


@dataclass(frozen=True)
class GroupState:
    position: np.ndarray                    # (n,) rad
    stamp: float                            # when it was measured [s]: the group's clock
    velocity: Optional[np.ndarray] = None   # (n,) rad/s, None where the group does not know it
    effort: Optional[np.ndarray] = None     # (n,) Nm, None where the group does not know it


class Motion:
    """A started motion to ``points[-1]``; ended by its group, exactly once, and waitable."""

    def __init__(self, points: np.ndarray, tolerance: Optional[np.ndarray] = None,
                 time_limit: Optional[float] = None, times: Optional[np.ndarray] = None, started: float = 0.0):
        self.points = np.asarray(points, dtype=np.float64)
        # Per joint [rad]; inf = not judged (a joint the goal did not name); None = reached when the
        # trajectory is done, wherever the joints are.
        self.tolerance = None if tolerance is None else np.asarray(tolerance, dtype=np.float64)
        self.time_limit = time_limit
        self.times = np.zeros(len(self.points)) if times is None else np.asarray(times, dtype=np.float64)
        self.started = started
        self.status = RUNNING
        self.reason = ""
        self.final_error: Optional[np.ndarray] = None   # target - position when it ended (when known)
        self._ended = threading.Event()
        self._lock = threading.Lock()

    @property
    def target(self) -> np.ndarray:
        return self.points[-1]

    @property
    def done(self) -> bool:
        return self._ended.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the motion ended (True) or ``timeout`` seconds passed (False)."""
        return self._ended.wait(timeout)

    def within_tolerance(self, position) -> bool:
        if self.tolerance is None:
            return True
        return bool(np.all(np.abs(self.target - np.asarray(position)) <= self.tolerance))

    def end(self, status: str, reason: str = "", position=None) -> bool:
        """End the motion (the first end wins); False when it had ended already."""
        assert status in ENDS, status
        with self._lock:
            if self._ended.is_set():
                return False
            self.status, self.reason = status, reason
            if position is not None:
                self.final_error = self.target - np.asarray(position, dtype=np.float64)
            self._ended.set()
            return True


class JointGroup(abc.ABC):
    """A group of joints that reports its state, moves to targets and stops."""

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray

    @abc.abstractmethod
    def state(self) -> Optional[GroupState]:
        """The newest measurement, None before the first one (or while the group is unreachable)."""

    @abc.abstractmethod
    def commanded(self) -> Optional[np.ndarray]:
        """The position the group is commanded to now (the running motion's target, or where it
        holds): what joints a goal does not name keep. None while unknown."""

    @abc.abstractmethod
    def move(self, points, tolerance=None, time_limit: Optional[float] = None, times=None) -> Motion:
        """Start a motion through ``points`` ((N, n) in ``names`` order), pre-empting the one under
        way. ``times``: (N,) time_from_start [s], all zero for the group's own speed. Raises
        CommandRejected (nothing changes) or GroupUnavailable."""

    @abc.abstractmethod
    def stop(self, reason: str = "stop requested") -> str:
        """End the motion under way (STOPPED); the group holds where it is. Returns what happened."""
