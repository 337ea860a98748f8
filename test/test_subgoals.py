"""Subgoal sequences (dexwm_planner.subgoals) over the simulated robot with scripted plan providers:
the advance rule (reached, plateau and budget advance; anything else ends the sequence), per-subgoal
stop rules and thresholds, the held hand, cancel, states; the CEM's held joints; the world model as
the provider of a sequence with per-subgoal settings. No ROS."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dexwm_planner.cem import CEM, CPU
from dexwm_planner.session import CommandLimits, SessionConfig
from dexwm_planner.sim_robot import SimulatedRobot
from dexwm_planner.stop_rule import StopRule
from dexwm_planner.subgoals import PHASES, PICK_PLACE, SearchSettings, Subgoal, SubgoalSequence, default_phases, \
    phase_settings

# The simulated robot and its fixtures are the planning session tests' own.
from test_planning_session import CAP, RecordingRobot, ScriptedPlans, robot, runner  # noqa: F401


def config(robot, rule=StopRule(done_cost=0.05, plateau_steps=2, max_steps=4)) -> SessionConfig:
    env = robot.runner.env
    return SessionConfig(stop_rule=rule, limits=CommandLimits(env.lower, env.upper, CAP), move_duration_s=0.2,
                         move_time_limit_s=0.2, goal_tolerance=0.05, stale_timeout_s=0.2, stale_abort_s=0.5)


class Providers:
    """One scripted provider per subgoal, in order; records what the sequence asked for."""

    def __init__(self, robot, scripts, delta=0.02):
        self.robot, self.scripts, self.delta = robot, list(scripts), delta
        self.asked: list[tuple[SearchSettings, np.ndarray | None]] = []

    def __call__(self, search, held_hand):
        self.asked.append((search, None if held_hand is None else held_hand.copy()))
        env = self.robot.runner.env
        return ScriptedPlans(self.scripts[len(self.asked) - 1], self.delta, env.lower, env.upper)


def subgoals(robot, phases):
    image = robot.latest_image().value
    return [Subgoal(image, PHASES[p] if isinstance(p, str) else p, label=f"#{i}") for i, p in enumerate(phases)]


def test_reached_plateau_and_budget_each_advance_and_the_result_says_which(robot):
    scripts = [[0.5, 0.3, 0.01],            # reached after 2 steps
               [0.5, 0.5, 0.5, 0.5],        # plateau after 2 steps (no progress)
               [0.5, 0.4, 0.3, 0.2, 0.1],   # budget: 4 steps, still improving
               [0.5, 0.02]]                 # reached after 1 step
    providers = Providers(robot, scripts)
    active, states, feedback = [], [], []
    sequence = SubgoalSequence(robot, providers, config(robot), on_subgoal=lambda i, sg, p: active.append((i, sg.label, p.subgoal)),
                               on_state=states.append,
                               on_feedback=lambda p: feedback.append((p.subgoal, p.subgoals, p.steps)))
    result = sequence.run(subgoals(robot, ["reach", "reach", "reach", "reach"]), seed=3)
    assert [(o.reason, o.steps) for o in result.subgoals] == [("reached", 2), ("plateau", 2), ("budget", 4),
                                                             ("reached", 1)]
    assert result.success and result.completed and result.budget_ends == 1
    assert result.steps == 9 == len(robot.moves) and robot.holds == []   # advancing never stops the robot
    assert result.reason == "reached" and result.final_cost == 0.02
    assert result.costs == scripts[0] + scripts[1][:3] + scripts[2] + scripts[3] and len(result.replan_seconds) == 9
    assert active == [(0, "#0", 0), (1, "#1", 1), (2, "#2", 2), (3, "#3", 3)]
    assert feedback[0] == (0, 4, 1) and feedback[-1] == (3, 4, 1)       # steps count per subgoal
    # The end of a subgoal is not the sequence's: one final state, at the end.
    assert states.count("succeeded") == 1 and states[-1] == "succeeded" and "failed" not in states


def test_a_sequence_whose_last_subgoal_is_not_reached_completes_without_success(robot):
    result = SubgoalSequence(robot, Providers(robot, [[0.01], [0.5] * 9]), config(robot)).run(
        subgoals(robot, ["reach", "reach"]))
    assert result.completed and not result.success and result.reason == "plateau"


def test_a_failed_subgoal_ends_the_sequence_and_later_ones_never_start(robot):
    providers = Providers(robot, [[0.01], [0.5] * 9, [0.01]], delta=0.3)    # over the 0.25 rad arm cap
    states = []
    result = SubgoalSequence(robot, providers, config(robot), on_state=states.append).run(
        subgoals(robot, ["reach", "reach", "reach"]))
    assert [o.reason.split(":")[0] for o in result.subgoals] == ["reached", "unsafe_command"]
    assert len(providers.asked) == 2 and not result.success and not result.completed
    assert robot.moves == [] and robot.holds == ["unsafe command"] and states[-1] == "failed"


def test_cancel_during_a_subgoal_ends_the_sequence_holding(robot):
    holder = {}
    providers = Providers(robot, [[0.01], [0.5] * 9, [0.01]])
    sequence = SubgoalSequence(robot, providers, config(robot, StopRule(max_steps=9)),
                               on_feedback=lambda p: holder["seq"].cancel() if p.subgoal == 1 else None)
    holder["seq"] = sequence
    states = []
    sequence.on_state = states.append
    result = sequence.run(subgoals(robot, [SearchSettings(done_cost=0.05), "reach", "reach"]))
    assert [(o.reason, o.steps) for o in result.subgoals] == [("reached", 0), ("canceled", 1)]
    assert result.reason == "canceled" and robot.holds == ["canceled"] and states[-1] == "canceled"
    with pytest.raises(RuntimeError, match="runs once"):
        sequence.run(subgoals(robot, ["reach"]))


def test_each_subgoal_has_its_own_budget_plateau_and_threshold(robot):
    own = [SearchSettings(phase="a", max_steps=1), SearchSettings(phase="b", kind="grasp", plateau_steps=0),
           SearchSettings(phase="c", done_cost=0.45)]
    fitted = {"reach": 0.05, "grasp": 0.2, "place": 0.0}
    providers = Providers(robot, [[0.5, 0.4, 0.3], [0.5, 0.5, 0.5, 0.15], [0.5, 0.4]])
    result = SubgoalSequence(robot, providers, config(robot), fitted_done_cost=fitted.__getitem__).run(
        subgoals(robot, own))
    # a: budget of 1 step; b: no plateau rule, the grasp threshold 0.2 after 3 steps; c: its own 0.45.
    assert [(o.phase, o.reason, o.steps) for o in result.subgoals] == [("a", "budget", 1), ("b", "reached", 3),
                                                                       ("c", "reached", 1)]
    assert [s for s, _ in providers.asked] == own


def test_the_hand_is_held_at_the_last_commanded_targets(robot):
    providers = Providers(robot, [[0.5, 0.01], [0.5, 0.01]])
    result = SubgoalSequence(robot, providers, config(robot)).run(subgoals(robot, ["grasp", "carry"]))
    (_, first_held), (carry, held) = providers.asked
    assert first_held is None and carry.hold_hand
    grasp_moves = result.subgoals[0].steps
    assert np.array_equal(held, robot.moves[grasp_moves - 1][7:])  # the hand targets of the grasp's last command


def test_search_settings_are_checked_and_applied():
    with pytest.raises(ValueError, match="std_hand"):
        SearchSettings(std_hand=0.0)
    with pytest.raises(ValueError, match="kind"):
        SearchSettings(kind="juggle")
    with pytest.raises(ValueError, match="max_steps"):
        SearchSettings(max_steps=0)
    with pytest.raises(ValueError, match="unknown subgoal phase"):
        phase_settings("dance")
    from dexwm_planner.mpc import MPCConfig

    base = MPCConfig(cem=CPU)
    place = PHASES["place"].mpc_config(base)
    assert place.cem.std_hand == 0.01 and place.cem.std_arm == CPU.std_arm and place.cem.samples == CPU.samples
    assert PHASES["grasp"].mpc_config(base).objective.orientation_weight == 0.4
    assert PHASES["grasp"].mpc_config(base).reference == "grasp" and place.reference == "none"
    # The grasp follows its reference closely, executes the CEM's mean and runs to its budget.
    grasp = PHASES["grasp"].mpc_config(base)
    assert (grasp.cem.std_arm, grasp.cem.std_hand, grasp.execute, place.execute) == (0.01, 0.01, "mean", "best")
    rule = PHASES["grasp"].stop_rule(StopRule(done_cost=0.3, plateau_steps=0, max_steps=12), lambda kind: 0.3)
    assert (rule.done_cost, rule.max_steps) == (0.0, 20)
    from dexwm_planner.reference_motion import GuardedGrasp

    longest = GuardedGrasp()
    assert round(longest.max_depth / longest.step) + longest.close_steps + longest.lift_rows < rule.max_steps
    with pytest.raises(ValueError, match="reference"):
        SearchSettings(reference="wave")
    with pytest.raises(ValueError, match="execute"):
        SearchSettings(execute="worst")
    rule = PHASES["release"].stop_rule(StopRule(done_cost=0.1, plateau_steps=5, max_steps=12))
    assert (rule.done_cost, rule.plateau_steps, rule.max_steps) == (0.1, 5, 12)
    assert default_phases(5) == PICK_PLACE == ("reach", "grasp", "lift", "carry", "release")
    assert default_phases(4) == ("reach", "grasp", "carry", "release") and default_phases(2) == ("reach", "reach")
    assert PHASES["lift"].hold_hand and PHASES["lift"].kind == "grasp"
    # The approach to a grasp leans on the goal-pose terms the planner has (none stays none).
    from dexwm_planner.objective import ObjectiveConfig

    posed = MPCConfig(cem=CPU, objective=ObjectiveConfig(goal_wrist_weight=100.0, orientation_weight=2.0))
    approach = PHASES["approach"].mpc_config(posed).objective
    assert (approach.goal_wrist_weight, approach.orientation_weight) == (500.0, 10.0)
    assert PHASES["approach"].mpc_config(base).objective.goal_wrist_weight == 0.0
    assert PHASES["reach"].mpc_config(posed).objective == posed.objective
    with pytest.raises(ValueError, match="pose_weight_scale"):
        SearchSettings(pose_weight_scale=-1.0)


def test_held_joints_are_targeted_within_the_step_cap():
    lower, upper = np.full(23, -2.0), np.full(23, 2.0)
    cem = CEM(CPU.with_(max_step_hand=0.3), lower, upper)
    q0 = np.zeros(23)
    hold = np.r_[np.full(7, np.nan), np.full(16, 0.5)]       # held beyond one step's reach

    def cost(samples):                                      # wants every joint at -1
        return ((samples + 1.0) ** 2).sum(axis=(1, 2))
    result = cem.optimize(cost, q0, horizon=3, hold=hold, rng=np.random.default_rng(0))
    assert np.allclose(result.plan[:, 7:], [[0.3], [0.5], [0.5]])   # capped first step, then the hold
    assert result.plan[0, :7].mean() < -0.1                       # the arm is still searched
    with pytest.raises(ValueError, match="hold"):
        cem.optimize(cost, q0, hold=np.zeros(5))


def test_the_world_model_runs_a_sequence_with_per_subgoal_settings(robot):
    """The planner node's provider per subgoal (WorldModelPlans with the subgoal's settings, random
    DexWM): every command passes the checks, and the carry subgoal never moves the hand."""
    torch = pytest.importorskip("torch")
    from dexwm_planner.actions import allegro_actions
    from dexwm_planner.mpc import MPCConfig, MPCPlanner
    from dexwm_planner.reference_motion import reference_motion
    from dexwm_planner.session import WorldModelPlans
    from dexwm_planner.world_model import DexWM
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics

    torch.manual_seed(0)
    model, kin, w2c = DexWM(), RobotKinematics.from_description(), HeadCamera().world_to_camera
    mpc = MPCConfig(cem=CPU.with_(samples=8, elites=2, iterations=1, chunk=8, max_step_arm=0.25))
    planners = []

    reference = reference_motion("grasp", kin)

    def make_planner(seed):
        planners.append(MPCPlanner(model, lambda q: allegro_actions(q, w2c, kinematics=kin), kin.lower, kin.upper,
                                   mpc, rotation_fn=lambda q: kin.ee_pose(q)[1], seed=seed, reference_fn=reference))
        return planners[-1]
    env = robot.runner.env
    limits = CommandLimits(kin.lower, kin.upper, mpc.cem.max_step())
    cfg = SessionConfig(stop_rule=StopRule(max_steps=2), limits=limits, move_duration_s=0.2, move_time_limit_s=0.2,
                        goal_tolerance=0.05)
    here = robot.latest_image().value
    # The grasp's own 10-step budget cut to the session's 2 (the reference's first rows suffice here).
    goals = [Subgoal(here[::-1].copy(), replace(PHASES["grasp"], max_steps=2)),
             Subgoal(here[:, ::-1].copy(), PHASES["carry"])]
    result = SubgoalSequence(robot, lambda search, held: WorldModelPlans(make_planner, search, held), cfg).run(
        goals, seed=0)
    assert [(o.reason, o.steps) for o in result.subgoals] == [("budget", 2), ("budget", 2)]
    assert planners[0].config.objective.orientation_weight == 0.4 and planners[1].config.cem.std_hand == CPU.std_hand
    # The grasp subgoal's search started from the reference grasp motion; the carry's from the joints.
    assert planners[0].config.reference == "grasp" and planners[0].reference_rows is not None
    assert planners[1].config.reference == "none" and planners[1].reference_rows is None
    assert np.array_equal(robot.moves[2][7:], robot.moves[1][7:]) and np.array_equal(robot.moves[3][7:],
                                                                                   robot.moves[1][7:])
    assert env is robot.runner.env
