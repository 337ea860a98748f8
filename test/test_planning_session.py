"""The planning session (dexwm_planner.session) over the simulated robot (dexwm_planner.sim_robot):
stop-rule reasons, the stale-input rule (pause, resume, abort), the command-safety check (nothing
sent), cancel and shutdown, the world-model planner as its plan provider. No ROS."""
from __future__ import annotations

import time

import numpy as np
import pytest

from dexwm_planner.mpc import PlanStep
from dexwm_planner.session import PAUSED, CommandLimits, PlanningSession, Reading, SessionConfig, WorldModelPlans
from dexwm_planner.sim_robot import SimulatedRobot
from dexwm_planner.stop_rule import StopRule

CAP = np.r_[np.full(7, 0.25), np.full(16, 0.3)]


class RecordingRobot(SimulatedRobot):
    """The simulated robot, counting what the session asks of it."""

    def __init__(self, runner):
        super().__init__(runner, image_size=(64, 48))
        self.moves: list[np.ndarray] = []
        self.holds: list[str] = []

    def move(self, arm_target, hand_target, *args, **kwargs):
        self.moves.append(np.r_[arm_target, hand_target])
        return super().move(arm_target, hand_target, *args, **kwargs)

    def hold(self, why):
        self.holds.append(why)
        super().hold(why)


class ScriptedPlans:
    """A plan provider with scripted costs; each command moves one joint (the first) by ``delta``."""

    name = "scripted"

    def __init__(self, costs, delta=0.02, lower=None, upper=None, joint=0):
        self.costs, self.delta, self.joint = list(costs), delta, joint
        self.lower, self.upper = lower, upper
        self.observed = 0

    def start(self, goal_image, goal_joints, seed):
        self.seed = seed

    def observe(self, image, joints) -> float:
        assert image.dtype == np.uint8 and image.shape == (48, 64, 3) and joints.shape == (23,)
        self.observed += 1
        return self.costs[min(self.observed, len(self.costs)) - 1]

    def verdict(self, joints):
        return None

    def plan(self, joints, should_stop):
        command = np.asarray(joints, dtype=np.float64).copy()
        command[self.joint] += self.delta
        if self.lower is not None:
            command = np.clip(command, self.lower, self.upper)
        return PlanStep(command=command, plan=command[None], cost=0.0, current_cost=float("nan"), horizon=1,
                        replan_seconds=0.001)


@pytest.fixture(scope="module")
def runner():
    from dexwm_sim.runner import RunnerConfig, SimRunner
    from dexwm_sim.scene import SimEnv

    env = SimEnv(render_size=(64, 48))
    yield SimRunner(RunnerConfig(task="reach", lockstep=True, image_size=(64, 48)), env=env)
    env.close()


@pytest.fixture
def robot(runner):
    runner.env.reset("reach", 7)
    return RecordingRobot(runner)


def config(robot, **changes) -> SessionConfig:
    env = robot.runner.env
    values = dict(stop_rule=StopRule(max_steps=3), limits=CommandLimits(env.lower, env.upper, CAP),
                  move_duration_s=0.2, move_time_limit_s=0.2, goal_tolerance=0.05, stale_timeout_s=0.2,
                  stale_abort_s=0.5)
    values.update(changes)
    return SessionConfig(**values)


def scripted(robot, costs, delta=0.02):
    env = robot.runner.env
    return ScriptedPlans(costs, delta, env.lower, env.upper)


def goal(robot):
    return robot.latest_image().value


class DepthReadingPlans(ScriptedPlans):
    """A provider that, as the world model's, takes a goal depth image."""

    def start(self, goal_image, goal_joints, seed, goal_depth=None):
        self.goal_depth = goal_depth


def test_a_goal_depth_reaches_the_provider_and_providers_without_depth_still_run(robot):
    depth = np.full((48, 64), 0.8)
    reading = DepthReadingPlans([0.5], 0.02, robot.runner.env.lower, robot.runner.env.upper)
    PlanningSession(robot, reading, config(robot, stop_rule=StopRule(max_steps=1))).run(goal(robot), goal_depth=depth)
    assert reading.goal_depth is depth
    plain = scripted(robot, [0.5])          # its start takes no depth: none is passed without one
    result = PlanningSession(robot, plain, config(robot, stop_rule=StopRule(max_steps=1))).run(goal(robot), seed=3)
    assert result.reason == "budget" and plain.seed == 3


@pytest.mark.parametrize("rule, costs, expected", [
    (StopRule(done_cost=0.05, max_steps=10), [0.5, 0.4, 0.01], ("reached", 2, True)),
    (StopRule(plateau_steps=2, max_steps=10), [0.5, 0.5, 0.5, 0.5], ("plateau", 2, False)),
    (StopRule(done_cost=0.05, plateau_steps=2, max_steps=3), [0.5, 0.4, 0.3, 0.2], ("budget", 3, False)),
])
def test_stop_rule_ends_the_session(robot, rule, costs, expected):
    feedback, states = [], []
    session = PlanningSession(robot, scripted(robot, costs), config(robot, stop_rule=rule),
                              on_feedback=lambda p: feedback.append((p.steps, p.current_cost)),
                              on_state=states.append)
    q0 = robot.latest_joints().value
    t0 = robot.now()
    result = session.run(goal(robot), seed=11)
    assert (result.reason, result.steps, result.success) == expected
    assert result.costs == costs[:expected[1] + 1] and result.final_cost == costs[expected[1]]
    assert [s for s, _ in feedback] == list(range(1, expected[1] + 1))
    assert len(robot.moves) == expected[1] and robot.holds == []   # a stop by the rule keeps the last targets
    n = expected[1]
    assert t0 + 0.19 * n <= robot.now() <= t0 + 0.21 * n + 1e-9        # each step took one move
    assert (robot.latest_joints().value[0] > q0[0] + 0.01) == (n > 0)
    assert states[-1] == ("succeeded" if expected[2] else "failed") and "executing" in states


@pytest.mark.parametrize("bad", ["over the cap", "outside the limits", "nan"])
def test_unsafe_command_is_refused_and_nothing_is_sent(robot, bad):
    env = robot.runner.env
    plans = scripted(robot, [0.5], delta=0.3)            # over the 0.25 rad arm cap
    if bad != "over the cap":
        plain = plans.plan

        def plan(joints, should_stop):
            step = plain(joints, should_stop)
            step.command[3] = env.upper[3] + 0.01 if bad == "outside the limits" else np.nan
            step.command[0] = joints[0]
            return step
        plans.plan = plan
    q0, t0 = robot.latest_joints().value, robot.now()
    result = PlanningSession(robot, plans, config(robot)).run(goal(robot))
    assert result.reason.startswith("unsafe_command") and result.steps == 0 and not result.success
    assert {"over the cap": "per-step cap", "outside the limits": "outside", "nan": "NaN"}[bad] in result.reason
    assert robot.moves == [] and robot.holds == ["unsafe command"]
    assert robot.now() == t0 and np.array_equal(robot.latest_joints().value, q0)


def test_a_target_the_robot_refuses_ends_the_session_as_a_driver_error(robot):
    """Limits wider than the simulation's pass the session's check; the simulation refuses the
    target (as a real driver would) and the session ends holding."""
    env = robot.runner.env
    wide = CommandLimits(env.lower - 1.0, env.upper + 1.0, np.full(23, 2.0))
    q = robot.latest_joints().value
    joint = 7 + int(np.argmin(env.upper[7:] - q[7:]))          # a finger: the hand has no step cap of its own
    plans = ScriptedPlans([0.5], delta=float(env.upper[joint] + 0.05 - q[joint]), joint=joint)
    result = PlanningSession(robot, plans, config(robot, limits=wide)).run(goal(robot))
    assert result.reason.startswith("driver_error: the simulation refused the target") and result.steps == 0
    assert len(robot.moves) == 1 and robot.holds == ["driver error"]


class FrozenCamera(RecordingRobot):
    """A camera that stops delivering frames after the first move (``frozen_for`` seconds, or for
    good), or one whose stamps lag the robot's clock by ``lag`` seconds from then on."""

    def __init__(self, runner, frozen_for=None, lag=0.0):
        super().__init__(runner)
        self.frozen_for, self.lag = frozen_for, lag
        self.frozen: Reading | None = None
        self.frozen_at = None

    def move(self, *args, **kwargs):
        first = self.frozen is None
        if first:
            self.frozen = super().latest_image()     # the frame before it
        status = super().move(*args, **kwargs)
        if first:
            # Frozen from the move's end: a busy machine may take longer than frozen_for to move.
            self.frozen_at = time.monotonic()
        return status

    def latest_image(self):
        fresh = super().latest_image()
        if self.lag:
            return Reading(fresh.value, fresh.stamp - self.lag if self.moves else fresh.stamp, fresh.received)
        if self.frozen is None or (self.frozen_for is not None and self.frozen_at is not None
                                       and time.monotonic() - self.frozen_at > self.frozen_for):
            return fresh
        return self.frozen


def test_a_camera_that_stops_pauses_the_session_then_aborts_it(runner):
    runner.env.reset("reach", 7)
    robot = FrozenCamera(runner)
    states = []
    result = PlanningSession(robot, scripted(robot, [0.5] * 5), config(robot), on_state=states.append).run(goal(robot))
    assert result.reason.startswith("stale_input: camera image") and result.steps == 1
    assert PAUSED in states and len(robot.moves) == 1        # nothing planned from the old frame
    assert robot.holds == ["stale input", "stale input"]     # at the pause, and at the end


def test_a_camera_that_comes_back_resumes_the_session(runner):
    runner.env.reset("reach", 7)
    robot = FrozenCamera(runner, frozen_for=0.3)
    states = []
    result = PlanningSession(robot, scripted(robot, [0.5] * 5), config(robot, stale_abort_s=5.0),
                             on_state=states.append).run(goal(robot))
    assert (result.reason, result.steps) == ("budget", 3)
    assert states.count(PAUSED) == 1 and robot.holds == ["stale input"]


def test_frames_stamped_before_the_last_move_are_not_planned_from(runner):
    runner.env.reset("reach", 7)
    robot = FrozenCamera(runner, lag=0.1)
    result = PlanningSession(robot, scripted(robot, [0.5] * 5), config(robot)).run(goal(robot))
    assert result.reason.startswith("stale_input") and "check the clocks" in result.reason
    assert result.steps == 1 and len(robot.moves) == 1


def test_cancel_ends_the_session_and_the_robot_holds(robot):
    session = PlanningSession(robot, scripted(robot, [0.5] * 9), config(robot, stop_rule=StopRule(max_steps=9)))
    session.on_feedback = lambda progress: session.cancel()
    result = session.run(goal(robot))
    assert (result.reason, result.steps, result.success) == ("canceled", 1, False)
    assert len(robot.moves) == 1 and robot.holds == ["canceled"]


def test_an_interruption_reason_ends_the_session_with_that_reason(robot):
    steps = []
    session = PlanningSession(robot, scripted(robot, [0.5] * 9), config(robot, stop_rule=StopRule(max_steps=9)),
                              on_feedback=lambda progress: steps.append(progress.steps),
                              interrupt=lambda: "shutdown" if steps else None)
    result = session.run(goal(robot))
    assert (result.reason, result.steps) == ("shutdown", 1) and robot.holds == ["shutdown"]
    with pytest.raises(RuntimeError, match="runs once"):
        session.run(goal(robot))


def test_the_world_model_plans_within_the_limits_and_stops_at_its_goal(robot):
    """The planner node's provider (MPC/CEM with a random DexWM): the current frame as the goal
    stops at once as reached; another goal runs to the budget with every command inside the checks."""
    torch = pytest.importorskip("torch")
    from dexwm_planner.cem import CPU
    from dexwm_planner.mpc import MPCConfig, MPCPlanner
    from dexwm_planner.world_model import DexWM
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics
    from dexwm_planner.actions import allegro_actions

    torch.manual_seed(0)
    model, kin, w2c = DexWM(), RobotKinematics.from_description(), HeadCamera().world_to_camera
    mpc = MPCConfig(cem=CPU.with_(samples=8, elites=2, iterations=1, chunk=8, max_step_arm=0.25))

    def make_planner(seed):
        return MPCPlanner(model, lambda q: allegro_actions(q, w2c, kinematics=kin), kin.lower, kin.upper, mpc,
                          seed=seed)
    here = goal(robot)
    result = PlanningSession(robot, WorldModelPlans(make_planner),
                             config(robot, stop_rule=StopRule(done_cost=1e-6, max_steps=2))).run(here, seed=0)
    assert (result.reason, result.steps, robot.moves) == ("reached", 0, [])
    limits = CommandLimits(kin.lower, kin.upper, mpc.cem.max_step())
    other = here[::-1].copy()
    result = PlanningSession(robot, WorldModelPlans(make_planner),
                             config(robot, limits=limits, stop_rule=StopRule(max_steps=2))).run(other, seed=0)
    assert (result.reason, result.steps, len(robot.moves)) == ("budget", 2, 2)
    assert len(result.costs) == 3 and all(np.isfinite(result.costs)) and len(result.replan_seconds) == 2
