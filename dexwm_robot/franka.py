"""The one place that defines the Franka arm's joint names, order and limits.

Order (published JointState, action targets, the first 7 entries of the planner's 23-vector):
fr3_joint1 (base) .. fr3_joint7 (flange). The kinematic chain itself comes from the FR3 MJCF of the
installed franky-sim package (see dexwm_robot.description); a test checks that its joint ranges are
the data-sheet limits below.
"""
from __future__ import annotations

import numpy as np

NUM_JOINTS = 7
JOINT_NAMES = tuple(f"fr3_joint{i}" for i in range(1, NUM_JOINTS + 1))

# Joint position limits [rad] from Franka's data sheets: FR3 (the default), and Panda (FER) for
# franky builds against libfranka 0.9.x.
FR3_JOINT_LIMITS = (
    (-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159),
    (2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159),
)
PANDA_JOINT_LIMITS = (
    (-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973),
    (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973),
)
LOWER = np.array(FR3_JOINT_LIMITS[0], dtype=np.float64)
UPPER = np.array(FR3_JOINT_LIMITS[1], dtype=np.float64)
LOWER.setflags(write=False)
UPPER.setflags(write=False)

# FR3 data sheet: joint speed [rad/s] and torque [N m] limits.
VELOCITY_LIMITS = np.array([2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26])
TORQUE_LIMITS = np.array([87, 87, 87, 87, 12, 12, 12], dtype=float)

# A comfortable start posture above the table (hand pointing down, in front of the base).
HOME = np.array([0.0, -0.35, 0.0, -2.2, 0.0, 1.85, 0.785])
HOME.setflags(write=False)
