"""The planner's goals (ROS-free): the current goal and the named goal sequences captured for it,
with the limits that keep a stuck trigger (a held joystick button, a script in a loop) from filling
the memory with frames. Thread-safe: services, RViz tools and Execute goals use it concurrently.

A capture takes its frame and joints from ``observe()``, which returns (image, joints, depth) or
raises LookupError saying what is missing; ``depth`` is the depth image aligned with the frame [m],
None where the camera sends none (the goal then has no 3D wrist: dexwm_planner.goal_depth). A
refused request changes nothing.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from dexwm_planner.subgoals import Subgoal, default_phases, phase_settings
from dexwm_ros.goal_images import Goal
from dexwm_ros.srv import CaptureSequence

APPEND, LIST, CLEAR = CaptureSequence.Request.APPEND, CaptureSequence.Request.LIST, CaptureSequence.Request.CLEAR
# The sequence an empty name means, and the limits of what is stored.
DEFAULT_SEQUENCE = "default"
MAX_SUBGOALS = 32
MAX_SEQUENCES = 16
MAX_SEQUENCE_NAME = 64

Observe = Callable[[], "tuple[np.ndarray, np.ndarray, np.ndarray | None]"]


def check_sequence_name(name: str) -> str:
    """The sequence name a request means (empty: the default); ValueError when it is unusable."""
    name = name or DEFAULT_SEQUENCE
    if len(name) > MAX_SEQUENCE_NAME or not name.isprintable() or name != name.strip():
        raise ValueError(f"sequence name {name[:MAX_SEQUENCE_NAME]!r} must be printable, without surrounding "
                         f"spaces, at most {MAX_SEQUENCE_NAME} characters")
    return name


def sequence_subgoals(goals: list[Goal]) -> list[Subgoal]:
    """Subgoals with their search profiles (named, or by position); ValueError for an unknown one."""
    by_position = default_phases(len(goals))
    return [Subgoal(g.image, phase_settings(g.phase or by_position[i]), joints=g.joints, label=g.source,
                    depth=g.depth) for i, g in enumerate(goals)]


class GoalStore:
    def __init__(self):
        self._lock = threading.Lock()
        self._goal: Goal | None = None
        self._sequences: dict[str, list[Goal]] = {}

    @property
    def goal(self) -> Goal | None:
        with self._lock:
            return self._goal

    def set_goal(self, goal: Goal, camera_hw: tuple[int, int] | None) -> Goal:
        """Store ``goal`` fitted to the camera's size (ValueError: refused, nothing changes)."""
        goal = goal.fitted(camera_hw)
        with self._lock:
            self._goal = goal
        return goal

    def capture(self, source: str, observe: Observe) -> Goal:
        """The current frame and joints become the goal; LookupError saying why not."""
        try:
            image, joints, depth = observe()
        except LookupError as e:
            raise LookupError(f"cannot capture a goal: {e}") from None
        return self.set_goal(Goal(image, joints, source, depth=depth), None)

    def sequence(self, name: str) -> list[Goal]:
        with self._lock:
            return list(self._sequences.get(name, []))

    def phases(self, name: str) -> list[str]:
        return [g.phase for g in self.sequence(name)]

    def edit_sequence(self, command: str, name: str, phase: str, observe: Observe) -> tuple[bool, str, list[str]]:
        """Append the current frame to, list, or clear a named sequence: (ok, message, its phases)."""
        try:
            name = check_sequence_name(name)
            if command not in (APPEND, LIST, CLEAR):
                raise ValueError(f"unknown command {command!r}: append, list or clear")
            if command == APPEND and phase:
                phase_settings(phase)
        except ValueError as e:
            return False, str(e), []
        if command == LIST:
            phases = self.phases(name)
            return True, f"sequence {name!r}: {len(phases)} subgoal(s)", phases
        if command == CLEAR:
            with self._lock:
                removed = self._sequences.pop(name, [])
            return True, f"sequence {name!r} cleared ({len(removed)} subgoal(s) removed)", []
        try:
            image, joints, depth = observe()
        except LookupError as e:
            return False, f"cannot append to sequence {name!r}: {e}", self.phases(name)
        with self._lock:
            goals = self._sequences.get(name, [])
            if len(goals) >= MAX_SUBGOALS:
                return False, f"sequence {name!r} already has {MAX_SUBGOALS} subgoals (the most): clear it first", \
                    [g.phase for g in goals]
            if name not in self._sequences and len(self._sequences) >= MAX_SEQUENCES:
                return False, f"already {MAX_SEQUENCES} sequences (the most): clear one first", []
            goals = self._sequences.setdefault(name, [])
            goals.append(Goal(image, joints, f"{name}[{len(goals)}]", phase, depth))
            phases = [g.phase for g in goals]
        return True, (f"subgoal {len(phases)} of sequence {name!r} captured from the current camera frame and "
                      f"joints ({phase or 'phase by position'})"), phases
