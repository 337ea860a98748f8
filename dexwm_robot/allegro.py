"""The one place that defines the Allegro Hand V4 joint order, names and limits.

Order used everywhere in this stack (published JointState, action targets, the planner's 16-d hand
vector, the simulation): the firmware/CAN order of the V4 hand, *index-first*:

    0-3   index  (j0 abduction, j1 proximal, j2 middle, j3 distal flexion)
    4-7   middle
    8-11  ring
    12-15 thumb  (j0 base rotation towards the palm, j1 abduction/twist, j2, j3 flexion)

CAN finger block k (FINGER_POSE 0x20+k and SET_TORQUE 0x60+k, 4 x int16 each) carries joints
4k..4k+3 of this order: block 0 = index, 1 = middle, 2 = ring, 3 = thumb.

Some Allegro software generations (and the MANO keypoint layout of DexWM) list the thumb first.
Never re-index by hand: convert with ``to_thumb_first`` / ``from_thumb_first``.
"""
from __future__ import annotations

import numpy as np

FINGERS = ("index", "middle", "ring", "thumb")
NUM_JOINTS = 16

# Published joint names, in the order above; the hand's links and frames carry the same prefix.
NAME_PREFIX = "allegro_"
JOINT_NAMES = tuple(f"{NAME_PREFIX}{finger}_{j}" for finger in FINGERS for j in range(4))

# Joint limits [rad] of the V4 hand (docs/BACKGROUND.md, Allegro V4 facts).
_FINGER_LOWER = (-0.47, -0.196, -0.174, -0.227)
_FINGER_UPPER = (0.47, 1.61, 1.709, 1.618)
_THUMB_LOWER = (0.263, -0.105, -0.189, -0.162)
_THUMB_UPPER = (1.396, 1.163, 1.644, 1.719)
LOWER = np.array(_FINGER_LOWER * 3 + _THUMB_LOWER, dtype=np.float64)
UPPER = np.array(_FINGER_UPPER * 3 + _THUMB_UPPER, dtype=np.float64)
LOWER.setflags(write=False)
UPPER.setflags(write=False)

# A relaxed open-hand posture inside the limits (thumb rotated towards the palm so it can oppose).
OPEN_POSE = np.array([0.0, 0.1, 0.1, 0.1] * 3 + [0.5, 0.2, 0.1, 0.1], dtype=np.float64)
OPEN_POSE.setflags(write=False)

# Power grasp (the simulation's scripted grasps and the planner's grasp reference): index, middle
# and ring hooked (medial joints at their limit, distal bent, so the fingertips stay above a table
# under a palm-down hand), the thumb pressing from where it stands with this much more flexion of its
# last two joints. The posture lies beyond contact on purpose: the torque-limited PD then squeezes.
POWER_GRASP_FINGERS = np.array([0.0, 0.75, _FINGER_UPPER[2], 1.4] * 3, dtype=np.float64)
POWER_GRASP_THUMB_PRESS = np.array([0.0, 0.0, 0.15, 0.15], dtype=np.float64)
POWER_GRASP_FINGERS.setflags(write=False)
POWER_GRASP_THUMB_PRESS.setflags(write=False)
# The open hand a power grasp starts from: fingers straight, the thumb turned under the palm as a
# post the object is pressed against. The thumb is the posture the scripted grasps of the simulated
# task set choose for 55 of 60 objects (dexwm_sim.tasks.plan_grasp, 4-6 cm objects).
STRAIGHT_FINGERS = np.array([0.0, 0.05, 0.05, 0.0] * 3, dtype=np.float64)
POWER_GRASP_PRESHAPE = np.r_[STRAIGHT_FINGERS, [0.263, 1.163, 1.414875, 1.719]]
STRAIGHT_FINGERS.setflags(write=False)
POWER_GRASP_PRESHAPE.setflags(write=False)


def power_grasp(hand: np.ndarray) -> np.ndarray:
    """The power grasp's closing posture (16,) from the hand posture ``hand`` (16,): the fingers
    hooked, the thumb pressed further from where it stands (within its limits)."""
    hand = np.asarray(hand, dtype=np.float64)
    if hand.shape != (NUM_JOINTS,):
        raise ValueError(f"hand posture must have {NUM_JOINTS} joints, got shape {hand.shape}")
    return np.r_[POWER_GRASP_FINGERS, np.minimum(hand[12:] + POWER_GRASP_THUMB_PRESS, UPPER[12:])]


# index-first (this stack) -> thumb-first (thumb, index, middle, ring)
FINGERS_THUMB_FIRST = FINGERS[-1:] + FINGERS[:-1]
THUMB_FIRST_PERMUTATION = np.r_[12:16, 0:12]


def to_thumb_first(q: np.ndarray) -> np.ndarray:
    """Reorder the last axis (16 joints, index-first) to thumb, index, middle, ring."""
    return np.asarray(q)[..., THUMB_FIRST_PERMUTATION]


def from_thumb_first(q: np.ndarray) -> np.ndarray:
    """Inverse of ``to_thumb_first``."""
    out = np.empty_like(np.asarray(q))
    out[..., THUMB_FIRST_PERMUTATION] = q
    return out


def clamp(q: np.ndarray) -> np.ndarray:
    """Clamp joint positions (last axis, 16 joints) to the hand's limits."""
    return np.clip(q, LOWER, UPPER)


def outside_limits(q: np.ndarray, eps: float = 1e-9) -> str | None:
    """Why a 16-joint target must be refused (the first joint outside its limits), or None."""
    q = np.asarray(q, dtype=np.float64)
    bad = np.flatnonzero((q < LOWER - eps) | (q > UPPER + eps))
    if bad.size == 0:
        return None
    j = int(bad[0])
    return (f"{JOINT_NAMES[j]} = {q[j]:.4f} rad is outside its limits [{LOWER[j]:.4f}, {UPPER[j]:.4f}]"
            + (f" ({bad.size} joints outside)" if bad.size > 1 else ""))
