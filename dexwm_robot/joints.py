"""The robot's full joint vector: the 7 FR3 joints, then the 16 Allegro joints (index-first).

This 23-vector is what the planner searches over, what the simulation steps, what the recorder and
the collector store, and what forward kinematics reads.
"""
from __future__ import annotations

import numpy as np

from . import allegro, franka

ARM_DOF = franka.NUM_JOINTS
HAND_DOF = allegro.NUM_JOINTS
DOF = ARM_DOF + HAND_DOF

ARM_JOINT_NAMES = franka.JOINT_NAMES
HAND_JOINT_NAMES = allegro.JOINT_NAMES
JOINT_NAMES = ARM_JOINT_NAMES + HAND_JOINT_NAMES

LOWER = np.concatenate([franka.LOWER, allegro.LOWER])
UPPER = np.concatenate([franka.UPPER, allegro.UPPER])
LOWER.setflags(write=False)
UPPER.setflags(write=False)
