"""Hand keypoint layout (MANO order) and the mappings of each embodiment onto it.

21 keypoints per hand: wrist, then thumb, index, middle, ring, little, four points each from the
knuckle out to the tip. Actions and keypoint arrays hold the right hand first, then the left hand
(42 points). The hand-consistency heatmaps use 6 points per hand: wrist + the 5 fingertips.
"""
from __future__ import annotations

import numpy as np

FINGERS = ("thumb", "index", "middle", "ring", "little")
NUM_HAND_KEYPOINTS = 21
NUM_KEYPOINTS = 2 * NUM_HAND_KEYPOINTS  # right hand, then left hand
WRIST = 0
FINGERTIPS = tuple(1 + 4 * f + 3 for f in range(5))  # 4, 8, 12, 16, 20
KEYPOINT_NAMES = ("wrist",) + tuple(f"{finger}_{k}" for finger in FINGERS for k in range(4))

# Indices (into the 42-point right+left array) of the 12 heatmap keypoints: wrist + 5 tips per hand.
HEATMAP_KEYPOINTS = np.array(
    [WRIST, *FINGERTIPS] + [NUM_HAND_KEYPOINTS + i for i in (WRIST, *FINGERTIPS)], dtype=np.int64)
NUM_HEATMAPS = len(HEATMAP_KEYPOINTS)  # 12
RIGHT_HAND_HEATMAPS = slice(0, 6)

# Parallel-gripper dummy hand (DROID): 4 horizontal circles of 5 points around the end effector.
GRIPPER_RADII_OPEN = np.array([0.03, 0.04, 0.05, 0.06])
GRIPPER_RADII_CLOSED = np.array([0.03, 0.04, 0.035, 0.03])


def gripper_keypoints(ee_position: np.ndarray, gripper_closed: np.ndarray) -> np.ndarray:
    """Dummy right-hand keypoints for a parallel gripper.

    ee_position (..., 3) in the world frame (z up); gripper_closed (...) in [0, 1] (0 open,
    1 closed; DROID's gripper_position). Returns (..., 21, 3): wrist = end effector; finger f,
    joint k sits on circle k (radius interpolated between the open and closed radii) at the angle
    2 pi f / 5, so closing the gripper moves the outer rings inwards like closing fingers.
    """
    ee = np.asarray(ee_position, dtype=np.float64)
    c = np.clip(np.asarray(gripper_closed, dtype=np.float64), 0.0, 1.0)[..., None]
    radii = (1.0 - c) * GRIPPER_RADII_OPEN + c * GRIPPER_RADII_CLOSED  # (..., 4)
    angles = 2.0 * np.pi * np.arange(5) / 5.0
    offsets = np.zeros(ee.shape[:-1] + (5, 4, 3))
    offsets[..., 0] = np.cos(angles)[:, None] * radii[..., None, :]
    offsets[..., 1] = np.sin(angles)[:, None] * radii[..., None, :]
    out = np.empty(ee.shape[:-1] + (NUM_HAND_KEYPOINTS, 3))
    out[..., 0, :] = ee
    out[..., 1:, :] = ee[..., None, :] + offsets.reshape(ee.shape[:-1] + (20, 3))
    return out


def two_hands(right: np.ndarray, left: np.ndarray | None = None) -> np.ndarray:
    """Stack (..., 21, 3) right and left keypoints into (..., 42, 3); a missing left hand is zeros
    (robot data: the paper sets the absent hand to zero)."""
    right = np.asarray(right)
    if left is None:
        left = np.zeros_like(right)
    return np.concatenate([right, np.asarray(left, dtype=right.dtype)], axis=-2)


def project_points(points_cam: np.ndarray, intrinsics: np.ndarray):
    """Pinhole projection of camera-frame points (..., 3) (x right, y down, z forward, OpenCV).

    Returns (uv (..., 2) pixels, in_front (...) bool)."""
    p = np.asarray(points_cam, dtype=np.float64)
    z = p[..., 2]
    in_front = z > 1e-6
    zs = np.where(in_front, z, 1.0)
    K = np.asarray(intrinsics, dtype=np.float64)
    u = K[0, 0] * p[..., 0] / zs + K[0, 2]
    v = K[1, 1] * p[..., 1] / zs + K[1, 2]
    return np.stack([u, v], axis=-1), in_front


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply homogeneous transform(s) T (..., 4, 4) to points (..., N, 3)."""
    T = np.asarray(T, dtype=np.float64)
    return np.einsum("...ij,...nj->...ni", T[..., :3, :3], points) + T[..., None, :3, 3]
