"""Teleoperation targets (ROS-free): flange jogs by the stack's one inverse kinematics solver, hand
postures, and the joints the next jog starts from."""
from __future__ import annotations

import threading
import time

import numpy as np
from scipy.spatial.transform import Rotation

from dexwm_robot.ik import solve_arm_ik
from dexwm_robot.joints import ARM_DOF

# A power-grasp hand posture inside the limits (fingers flexed, thumb opposed).
HAND_CLOSED = np.array([0.0, 1.45, 0.7, 0.4] * 3 + [0.6, 1.163, 1.4, 1.719])
# A target sent this recently is where the next jog starts (quick key repeats accumulate instead of
# each starting from joints that have not moved yet).
TARGET_MEMORY_S = 1.0


class CartesianJogger:
    """Flange jogs: the arm's inverse kinematics (``dexwm_robot.ik``) towards a nearby flange pose,
    then a cap on the joint change of one command."""

    def __init__(self, kinematics, damping: float = 0.05, max_joint_step: float = 0.2):
        self.kin = kinematics
        self.lower = np.asarray(kinematics.lower, dtype=np.float64)
        self.upper = np.asarray(kinematics.upper, dtype=np.float64)
        self.damping = damping
        self.max_joint_step = max_joint_step

    def jog(self, q: np.ndarray, translation=(0, 0, 0), rotation_vector=(0, 0, 0), iterations: int = 5) -> np.ndarray:
        """Arm joints (7,) that move the flange by ``translation`` [m] and turn it by
        ``rotation_vector`` [rad] (world frame) from joints q (23,); the hand is unchanged."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (len(self.lower),) or not np.all(np.isfinite(q)):
            raise ValueError(f"joints must be {len(self.lower)} finite values, got shape {q.shape}")
        p0, r0 = self.kin.ee_pose(q)
        target_p = p0 + np.asarray(translation, dtype=np.float64)
        target_r = Rotation.from_rotvec(np.asarray(rotation_vector, dtype=np.float64)).as_matrix() @ r0
        # A jog is a small step near the current posture: full weight on orientation, no drift of
        # the redundant joint, no per-iteration cap (the per-command cap below bounds the motion).
        arm = solve_arm_ik(self.kin, q, target_p, target_r, point="flange", iterations=iterations,
                           tol=1e-5, rotation_tol=1e-5, rotation_weight=1.0, damping=self.damping ** 2,
                           max_iteration_step=None, posture_gain=0.0, limit_margin=0.0)
        start = q[:ARM_DOF]
        step = np.clip(arm - start, -self.max_joint_step, self.max_joint_step)
        return np.clip(start + step, self.lower[:ARM_DOF], self.upper[:ARM_DOF])


class JointTargets:
    """The measured arm and hand joints and the last commanded target (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._arm = self._hand = self._target = None
        self._arm_t = self._hand_t = self._target_t = 0.0

    def measured_arm(self, q: np.ndarray) -> None:
        with self._lock:
            self._arm, self._arm_t = q, time.monotonic()

    def measured_hand(self, q: np.ndarray) -> None:
        with self._lock:
            self._hand, self._hand_t = q, time.monotonic()

    def commanded(self, target: np.ndarray | None) -> None:
        """A target was sent (None: the robot was stopped, start from the measured joints)."""
        with self._lock:
            self._target = None if target is None else np.array(target, dtype=np.float64)
            self._target_t = time.monotonic()

    def current(self, stale_timeout_s: float) -> np.ndarray | None:
        """Base joints (23,) of the next command: the last target while it is recent, else the
        measured ones; None while either group's joints are missing or older than the timeout."""
        now = time.monotonic()
        with self._lock:
            if self._arm is None or self._hand is None or max(now - self._arm_t, now - self._hand_t) > stale_timeout_s:
                return None
            if self._target is not None and now - self._target_t < TARGET_MEMORY_S:
                return self._target.copy()
            return np.r_[self._arm, self._hand]
