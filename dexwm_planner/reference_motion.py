"""A reference grasp motion that the grasp's CEM search starts from.

The paper's grasp planner initialises its CEM mean from a reference joint trajectory instead of the
current joints: a world model judges the samples, but the search starts where grasps happen. Ours is
defined relative to where the hand is when the grasp goal starts, so it needs no scene-specific
file: the palm moves straight down by ``depth`` with the hand as it is, the hand closes to the power
grasp (dexwm_robot.allegro.power_grasp), then the palm rises by ``lift`` with the hand closed. The
flange keeps its orientation throughout. The motion reads only the robot's own joints, never the
object's pose: it is the motion a grasp from a pre-grasp pose above the object makes (our pick
demonstrations end their approach 8 cm above the grasp, then close and lift 12 cm).

Rows are spaced so that no joint changes by more than the planner's per-step cap between rows, so
row k is a step the robot can execute k steps after the goal starts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dexwm_robot import allegro
from dexwm_robot.ik import solve_arm_ik
from dexwm_robot.joints import ARM_DOF

REFERENCES = ("none", "grasp")


@dataclass(frozen=True)
class GraspReference:
    """Down by ``depth`` [m], close, up by ``lift`` [m], in ``descend_rows`` / ``lift_rows`` IK waypoints."""

    depth: float = 0.08
    lift: float = 0.12
    descend_rows: int = 2
    lift_rows: int = 3

    def __post_init__(self):
        if not (0.0 <= self.depth <= 0.3 and 0.0 <= self.lift <= 0.3):
            raise ValueError(f"grasp reference depth and lift must be in [0, 0.3] m, got {self.depth}, {self.lift}")
        if self.descend_rows < 1 or self.lift_rows < 1:
            raise ValueError("grasp reference needs at least one descend row and one lift row")

    def joints(self, kinematics, q0: np.ndarray, max_step: np.ndarray) -> np.ndarray:
        """Joint rows (K, 23) of the motion from ``q0`` (23,), no row more than ``max_step`` (23,)
        from the one before (``q0`` before the first)."""
        q0 = np.asarray(q0, dtype=np.float64)
        if q0.shape != (len(kinematics.lower),) or not np.all(np.isfinite(q0)):
            raise ValueError(f"start joints must be {len(kinematics.lower)} finite values, got shape {q0.shape}")
        palm0 = kinematics.palm_and_tips_world(q0)[0]
        rotation = kinematics.ee_pose(q0)[1]
        down = np.array([0.0, 0.0, -1.0])
        waypoints = [q0]
        q = q0.copy()
        for i in range(1, self.descend_rows + 1):
            q = self._reach(kinematics, q, palm0 + down * self.depth * i / self.descend_rows, rotation)
            waypoints.append(q)
        q = np.r_[q[:ARM_DOF], allegro.power_grasp(q[ARM_DOF:])]
        waypoints.append(q)
        bottom = palm0 + down * self.depth
        for i in range(1, self.lift_rows + 1):
            q = self._reach(kinematics, q, bottom - down * self.lift * i / self.lift_rows, rotation)
            waypoints.append(q)
        rows = _densify(np.stack(waypoints), np.asarray(max_step, dtype=np.float64))[1:]
        return np.clip(rows, kinematics.lower, kinematics.upper)

    @staticmethod
    def _reach(kinematics, q, palm_target, rotation) -> np.ndarray:
        # No null-space drift: consecutive waypoints stay on one IK branch, close to each other.
        arm = solve_arm_ik(kinematics, q, palm_target, rotation, point="palm", posture_gain=0.0)
        return np.r_[arm, q[ARM_DOF:]]


def _densify(waypoints: np.ndarray, max_step: np.ndarray) -> np.ndarray:
    """Waypoints (N, D) with linear rows inserted so that no joint changes by more than ``max_step``
    between consecutive rows (the first waypoint kept)."""
    rows = [waypoints[0]]
    for a, b in zip(waypoints[:-1], waypoints[1:]):
        n = max(int(np.ceil(np.max(np.abs(b - a) / max_step) - 1e-9)), 1)
        rows.extend(a + (b - a) * k / n for k in range(1, n + 1))
    return np.stack(rows)


def reference_motion(name: str, kinematics, max_step: np.ndarray):
    """``q0 -> rows (K, 23)`` of the named reference (None for "none"); ValueError naming the known ones."""
    if name == "none":
        return None
    if name == "grasp":
        reference = GraspReference()
        return lambda q0: reference.joints(kinematics, q0, max_step)
    raise ValueError(f"unknown reference motion {name!r}; known: {', '.join(REFERENCES)}")
