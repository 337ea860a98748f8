"""What the settings of every driver node (franka, allegro, sim) share: the bounds of a MoveJoints
goal's tolerance and time limit (dexwm_ros.move_joints checks goals against them) and of the node
parameters that give their defaults, and the ``max_command_age_s`` setting. ROS-free."""
from __future__ import annotations

from dexwm_ros.node_settings import setting

# A per-joint tolerance above 1 rad would call almost any motion a success.
MAX_GOAL_TOLERANCE = 1.0
# Ten minutes: longer than any motion of these drivers; a larger value is a unit mistake.
MAX_TIME_LIMIT_S = 600.0
# Bounds of the nodes' parameters for the default tolerance [rad] and time limit [s] of a goal and
# for max_command_age_s [s].
TOLERANCE_RANGE = (1e-4, MAX_GOAL_TOLERANCE)
TIME_LIMIT_RANGE = (0.1, MAX_TIME_LIMIT_S)
COMMAND_AGE_RANGE = (0.05, 60.0)


def max_command_age_setting():
    """The ``max_command_age_s`` field of every driver node's settings."""
    return setting(2.0, "refuse commands whose header stamp is older than this (unstamped ones are accepted) [s]",
                   bounds=COMMAND_AGE_RANGE)
