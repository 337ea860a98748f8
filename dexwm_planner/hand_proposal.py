"""Joints whose hand matches the goal image's hand: a proposal for the CEM, not a command.

The heatmap head reads the right hand's wrist and fingertips from the goal image (model-image
pixels). The joints that put the robot's own hand there, by forward kinematics projected into the
camera, solve a small least-squares problem: the six keypoints' pixel error, plus a pull toward the
current joints that settles what six 2D points leave open (the arm's redundancy, the hand's depth
along the camera ray). The planner offers the plan that heads straight for these joints as one
candidate of every CEM iteration; the world model's cost decides whether it is taken. It uses only
what a robot has: the goal image, its own kinematics and its camera calibration.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.optimize import least_squares

# Pull toward the current joints [px per rad]: a joint moved 0.1 rad weighs like one keypoint
# coordinate 2 px off, little against the heatmap head's 9-24 px reading error, so the keypoints
# decide where they can. Chosen on the goal images of 12 reach stages of the tuning seeds, read by
# the heatmap head: the estimate's hand scores a median 0.128 m by the reach rule's distance (palm +
# 4 tips to their mean at the goal; the goal pose itself scores 0.097 m, its points' spread),
# 0.140 m at 5 and 0.134 m at 40 px/rad, from 0.378 m at the start. Read by the goal-hand reader
# (about 2 px off instead of 9-24) it scores 0.110 m.
PULL_PX_PER_RAD = 20.0
FD_STEP = 1e-4        # finite-difference step of the Jacobian [rad]


def estimate_goal_joints(hand_pixels_fn: Callable[[np.ndarray], np.ndarray], goal_pixels: np.ndarray,
                         q0: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                         pull_px_per_rad: float = PULL_PX_PER_RAD, max_evaluations: int = 60) -> np.ndarray:
    """Joints (23,) inside [lower, upper] whose projected wrist + fingertips (``hand_pixels_fn``:
    joints (..., 23) -> (..., 6, 2)) come closest to ``goal_pixels`` (6, 2), starting from ``q0``."""
    goal = np.asarray(goal_pixels, dtype=np.float64).reshape(-1)
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    q0 = np.clip(np.asarray(q0, dtype=np.float64), lower, upper)
    if not (np.all(np.isfinite(goal)) and np.all(np.isfinite(q0))):
        raise ValueError("goal keypoints and current joints must be finite")
    dof = len(q0)

    def pixels(q):                                     # (..., 23) -> (..., 12)
        uv = np.asarray(hand_pixels_fn(q), dtype=np.float64)
        return uv.reshape(*uv.shape[:-2], -1)

    def residuals(q):
        return np.r_[pixels(q) - goal, pull_px_per_rad * (q - q0)]

    def jacobian(q):
        # One batched forward-kinematics call for all 23 perturbations (kinematics is vectorised).
        forward = np.minimum(q + FD_STEP, upper)
        steps = forward - q
        backward = steps <= 0                          # at the upper limit: step down instead
        steps = np.where(backward, -FD_STEP, steps)
        perturbed = q[None] + np.diag(steps)
        d_pixels = (pixels(perturbed) - pixels(q)[None]) / steps[:, None]   # (23, 12)
        return np.vstack([d_pixels.T, pull_px_per_rad * np.eye(dof)])

    inside = np.clip(q0, lower + 1e-9, upper - 1e-9)
    result = least_squares(residuals, inside, jac=jacobian, bounds=(lower, upper), max_nfev=max_evaluations)
    return np.clip(result.x, lower, upper)
