"""One Execute goal's run (ROS-free): a PlanningSession toward a single goal, or a SubgoalSequence
through several, over any JointGroupRobot, with the stop rule, session configuration and MPC
planners made from the planner's settings. The node runs it on the goal's thread and cancels it
from the action's cancel callback; a test can run it against the simulation. :class:`GoalSlot` keeps
the single-goal rule of the node's Execute server."""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from dexwm_planner.mpc import MPCPlanner, PlanStep
from dexwm_planner.session import JointGroupRobot, PlanningSession, Progress, WorldModelPlans
from dexwm_planner.subgoals import Subgoal, SubgoalSequence
from dexwm_ros.execute_request import ExecutePlan
from dexwm_ros.goal_store import sequence_subgoals
from dexwm_ros.planner_settings import PlannerSettings
from dexwm_ros.planner_setup import WorldModelPlanning


class GoalRun:
    def __init__(self, robot: JointGroupRobot, planning: WorldModelPlanning, settings: PlannerSettings,
                 plan: ExecutePlan, *, camera: Callable[[], tuple] | None = None,
                 on_feedback: Callable[[Progress], None], on_state: Callable[[str], None],
                 on_plan: Callable[[np.ndarray, PlanStep], None],
                 on_subgoal: Callable[[int, Subgoal, Progress], None],
                 interrupt: Callable[[], str | None], log):
        """Callbacks as PlanningSession's and SubgoalSequence's (``on_subgoal``: sequences only);
        ``camera()``: the colour frames' (height, width) and intrinsics now (the robot's ``camera``),
        read when the planned-hand term first projects; None: the simulated camera at the model's size."""
        self.plan, self.settings, self.planning, self.camera = plan, settings, planning, camera
        self.planner: MPCPlanner | None = None          # the MPC planner in use (the rollout image)
        self.stop_rule = planning.stop_rule(settings, plan.task, plan.max_steps)
        config = settings.session(self.stop_rule, planning.lower, planning.upper, planning.frame_step)
        callbacks = dict(on_feedback=on_feedback, on_state=on_state, on_plan=on_plan, interrupt=interrupt, log=log)
        if plan.sequence:
            self.runner = SubgoalSequence(
                robot, lambda search, held: WorldModelPlans(self._make_planner, search, held), config,
                fitted_done_cost=planning.fitted_done_cost(settings), on_subgoal=on_subgoal, **callbacks)
        else:
            self.runner = PlanningSession(robot, WorldModelPlans(self._make_planner), config, **callbacks)

    @property
    def progress(self) -> Progress:
        """The active session's progress."""
        return self.runner.progress

    def describe(self) -> str:
        plan = self.plan
        what = (f"a sequence of {len(plan.goals)} subgoals{f' ({plan.name!r})' if plan.name else ''}" if plan.sequence
                else f"{plan.task} toward the goal from {plan.goals[0].source}")
        return (f"{what}, at most {plan.max_steps} steps each, stop below latent distance "
                f"{self.stop_rule.done_cost:.3f}")

    def cancel(self, reason: str) -> None:
        """End the run as soon as possible (any thread); the robot holds."""
        self.runner.cancel(reason)

    def run(self) -> tuple[bool, int, str, list[str]]:
        """(success, executed steps, reason, each subgoal's reason (a sequence))."""
        seed = self.settings.seed
        if self.plan.sequence:
            result = self.runner.run(sequence_subgoals(self.plan.goals), seed=seed)
            return result.success, result.steps, result.reason, [o.reason for o in result.subgoals]
        goal = self.plan.goals[0]
        result = self.runner.run(goal.image, goal.joints, seed=seed, goal_depth=goal.depth)
        return result.success, result.steps, result.reason, []

    def _make_planner(self, seed: int | None) -> MPCPlanner:
        self.planner = self.planning.planner(self.settings, self.plan.task, seed, self.camera)
        return self.planner


class GoalSlot:
    """At most one run at a time: taken when a goal is accepted, holding the run under way (so that a
    cancel or a shutdown from another thread can end it), free again when the goal has ended."""

    def __init__(self):
        self._lock = threading.Lock()
        self._taken = False
        self._run: GoalRun | None = None

    def take(self) -> bool:
        """Whether the slot was free (it is now taken)."""
        with self._lock:
            taken, self._taken = self._taken, True
            return not taken

    def start(self, run: GoalRun) -> None:
        with self._lock:
            self._run = run

    @property
    def run(self) -> GoalRun | None:
        """The run under way, None between goals."""
        with self._lock:
            return self._run

    def cancel(self, reason: str) -> None:
        """End the run under way, if any (any thread)."""
        run = self.run
        if run is not None:
            run.cancel(reason)

    def release(self) -> None:
        with self._lock:
            self._taken, self._run = False, None
