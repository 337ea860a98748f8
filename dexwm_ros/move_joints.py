"""What the three MoveJoints servers (franka, allegro, sim) share."""
from __future__ import annotations

from dexwm_ros.action import MoveJoints


def end_goal(goal_handle, code: int) -> None:
    """Put a MoveJoints goal in the terminal state its result code means."""
    if code == MoveJoints.Result.SUCCESSFUL:
        goal_handle.succeed()
    elif code == MoveJoints.Result.CANCELED:
        goal_handle.canceled()
    else:
        goal_handle.abort()


def is_deliberate(code: int) -> bool:
    """Pre-emption and stop are someone's choice, not faults worth a diagnostics report."""
    return code in (MoveJoints.Result.PREEMPTED, MoveJoints.Result.STOPPED)
