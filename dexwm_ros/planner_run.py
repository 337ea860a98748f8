"""One Execute goal's run (ROS-free): a PlanningSession toward a single goal, or a SubgoalSequence
through several, over any JointGroupRobot, with the stop rule, session configuration and MPC
planners made from the planner's settings. The node runs it on the goal's thread and cancels it
from the action's cancel callback; a test can run it against the simulation."""
from __future__ import annotations

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
                 plan: ExecutePlan, *, on_feedback: Callable[[Progress], None], on_state: Callable[[str], None],
                 on_plan: Callable[[np.ndarray, PlanStep], None],
                 on_subgoal: Callable[[int, Subgoal, Progress], None],
                 interrupt: Callable[[], str | None], log):
        """Callbacks as PlanningSession's and SubgoalSequence's (``on_subgoal``: sequences only)."""
        self.plan, self.settings, self.planning = plan, settings, planning
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
        result = self.runner.run(goal.image, goal.joints, seed=seed)
        return result.success, result.steps, result.reason, []

    def _make_planner(self, seed: int | None) -> MPCPlanner:
        self.planner = self.planning.planner(self.settings, self.plan.task, seed)
        return self.planner
