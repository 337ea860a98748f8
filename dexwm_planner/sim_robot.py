"""The simulation as a planning session's robot (dexwm_planner.session.JointGroupRobot), in lock-step.

It drives a ``dexwm_sim.runner.SimRunner`` whose thread is not running: ``move`` runs the physics
in the calling thread (``SimRunner.move_now``: arm and hand targets start on the same physics step,
each part ends at its tolerance or time limit in simulated time, and the runner refuses what the
real drivers refuse), ``hold`` is ``SimRunner.stop_now``, and between moves the world stands still,
as the lock-step sim node makes it wait for the planner. A frame is rendered when it is asked for,
so it shows the world as it is now; readings are stamped in simulated time.

The in-process evaluation and the session's tests use it. It uses only the runner's public methods
and imports nothing from dexwm_sim: the planner does not depend on the simulation.
"""
from __future__ import annotations

import time

from .session import FAILED_MOVE, MOVED, JointGroupRobot, MoveStatus, Reading

# How a SimRunner command with a goal ends when it was not cut short (dexwm_sim.runner's REACHED,
# TIMED_OUT); anything else (RESET: a physics fault) is a failed move.
MOVE_ENDS = ("reached", "timed_out")


class SimulatedRobot(JointGroupRobot):
    def __init__(self, runner, image_size: tuple[int, int] | None = None):
        """``runner``: a SimRunner that was not started; ``image_size``: (width, height) of the
        frames, default the environment's render size."""
        self.runner = runner
        self.image_size = tuple(image_size or runner.env.render_size)

    def latest_image(self) -> Reading:
        env = self.runner.env
        return Reading(env.render(*self.image_size), env.time, time.monotonic())

    def latest_joints(self) -> Reading:
        env = self.runner.env
        return Reading(env.joint_positions(), env.time, time.monotonic())

    def now(self) -> float:
        return self.runner.env.time

    def move(self, arm_target, hand_target, duration, time_limit, tolerance, interrupted) -> MoveStatus:
        # Runs to its end in this thread: a move is one model step of simulated time, over in
        # well under a second of wall time, so ``interrupted`` is looked at again after it.
        try:
            commands = self.runner.move_now(arm_target, hand_target, duration, time_limit, tolerance)
        except ValueError as e:
            return MoveStatus(FAILED_MOVE, f"the simulation refused the target: {e}")
        failed = [f"{part}: {cmd.status} ({cmd.note})" for part, cmd in commands.items() if cmd.status not in MOVE_ENDS]
        return MoveStatus(FAILED_MOVE, "; ".join(failed)) if failed else MoveStatus(MOVED)

    def hold(self, why: str) -> None:
        self.runner.stop_now()
