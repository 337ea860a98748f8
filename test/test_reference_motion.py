"""The grasp reference motion (dexwm_planner.reference_motion) and the MPC search that starts from it."""
import numpy as np
import pytest

from dexwm_planner.mpc import MPCConfig, MPCPlanner
from dexwm_planner.cem import CEMConfig
from dexwm_planner.reference_motion import GraspReference, reference_motion
from dexwm_robot import allegro
from dexwm_robot.joints import ARM_DOF, DOF
from dexwm_robot.kinematics import RobotKinematics

MAX_STEP = np.r_[np.full(ARM_DOF, 0.25), np.full(DOF - ARM_DOF, 0.3)]


@pytest.fixture(scope="module")
def kin():
    return RobotKinematics.from_description()


def pregrasp_joints(kin):
    """The hand 15 cm above the table in front of the robot (IK from home)."""
    from dexwm_robot.franka import HOME
    from dexwm_robot.ik import solve_arm_ik

    q = np.r_[HOME, allegro.OPEN_POSE]
    q[:ARM_DOF] = solve_arm_ik(kin, q, np.array([0.55, 0.0, 0.15]))
    return q


def test_the_grasp_reference_goes_down_closes_and_lifts_under_the_step_cap(kin):
    q0 = pregrasp_joints(kin)
    rows = GraspReference().joints(kin, q0, MAX_STEP)
    palm = kin.palm_and_tips_world(rows)[:, 0]
    start = kin.palm_and_tips_world(q0)[0]
    # No row moves a joint further than the cap from the one before (the start before the first).
    steps = np.abs(np.diff(np.vstack([q0, rows]), axis=0))
    assert np.all(steps <= MAX_STEP + 1e-9)
    lowest = int(np.argmin(palm[:, 2]))
    assert palm[lowest, 2] == pytest.approx(start[2] - 0.08, abs=5e-3)
    # The hand is open while going down and closed to the power grasp from the bottom on.
    np.testing.assert_allclose(rows[:lowest + 1, ARM_DOF:], np.repeat(q0[None, ARM_DOF:], lowest + 1, 0))
    np.testing.assert_allclose(rows[-1, ARM_DOF:], allegro.power_grasp(q0[ARM_DOF:]))
    assert palm[-1, 2] == pytest.approx(start[2] - 0.08 + 0.12, abs=5e-3)
    # Straight down and up: the palm stays above the start, the flange keeps its orientation.
    np.testing.assert_allclose(palm[:, :2], np.repeat(start[None, :2], len(rows), 0), atol=5e-3)
    rotations = kin.ee_pose(rows)[1]
    assert np.abs(rotations - kin.ee_pose(q0)[1]).max() < 0.03
    assert np.all(rows >= kin.lower) and np.all(rows <= kin.upper)


def test_the_reference_is_refused_for_bad_input(kin):
    with pytest.raises(ValueError, match="finite"):
        GraspReference().joints(kin, np.full(DOF, np.nan), MAX_STEP)
    with pytest.raises(ValueError, match="depth and lift"):
        GraspReference(depth=1.0)
    with pytest.raises(ValueError, match="unknown reference motion 'wave'"):
        reference_motion("wave", kin, MAX_STEP)
    assert reference_motion("none", kin, MAX_STEP) is None
    with pytest.raises(ValueError, match="reference must be one of"):
        MPCConfig(reference="wave")


def test_the_mpc_search_starts_from_the_reference_rows_and_follows_them():
    """With a sampling std too small to leave it, the executed commands are the reference's rows, step
    after step, across horizon restarts (the warm start carries them between), then its last row."""
    from test_planner_models import LinearTestModel, delta_actions

    model = LinearTestModel()
    lower, upper = np.full(DOF, -1.0), np.full(DOF, 1.0)
    rows = np.linspace(0.0, 0.5, 8)[1:, None] * np.ones((1, DOF))
    calls = []

    def reference_fn(q):
        calls.append(np.array(q))
        return rows
    cem = CEMConfig(samples=4, elites=2, iterations=1, horizon=3, std_arm=1e-4, std_hand=1e-4, min_std=0.0,
                    max_step_arm=0.25, max_step_hand=0.25)
    flat = MPCConfig(cem=cem, reference="grasp")
    planner = MPCPlanner(model, delta_actions, lower, upper, flat, seed=0, reference_fn=reference_fn)
    planner.set_goal(model.render(np.zeros(DOF)))
    q = np.zeros(DOF)
    executed = []
    for _ in range(len(rows) + 2):
        planner.observe(model.render(q), q)
        q = planner.step(q).command
        executed.append(q[0])
    assert len(calls) == 1                       # made once, from the joints at the first replan
    np.testing.assert_allclose(executed[:len(rows)], rows[:, 0], atol=1e-2)
    np.testing.assert_allclose(executed[len(rows):], rows[-1, 0], atol=1e-2)   # its last row held
    # A new goal makes a new reference from the joints then.
    planner.set_goal(model.render(np.zeros(DOF)))
    assert planner.reference_rows is None
    with pytest.raises(ValueError, match="needs reference_fn"):
        MPCPlanner(model, delta_actions, lower, upper, flat)



def lift_by_reference(env, kin, seed: int, max_step: np.ndarray) -> float:
    """Height [m] the grasp stage's object rises when the reference motion runs from the stage's
    start, every command capped from the measured joints (as the planning session checks it)."""
    episode = env.reset("paper-grasp", seed)
    rows = GraspReference().joints(kin, env.joint_positions(), max_step)
    start = env.object_position(episode.object_kind)[2]
    for row in list(rows) + [rows[-1]] * 5:
        measured = env.joint_positions()
        command = np.clip(row, measured - max_step, measured + max_step)
        env.command(command[:ARM_DOF], command[ARM_DOF:], duration=0.2)
        env.advance(0.2)
    return float(env.object_position(episode.object_kind)[2] - start)


def test_under_the_shipped_caps_the_reference_grasp_lifts_the_object_and_under_0_3_rad_it_cannot(kin):
    """The shipped hand cap lets the fingers be commanded far enough past contact to squeeze; the
    old 0.3 rad cap kept every grasp from holding (README, "Grasp")."""
    from dexwm_ros.evaluate import shipped_cem_config
    from dexwm_sim.scene import SimEnv

    shipped = shipped_cem_config("cpu").max_step()
    old = shipped.copy()
    old[ARM_DOF:] = 0.3
    env = SimEnv()
    try:
        assert lift_by_reference(env, kin, 1_000_500, shipped) > 0.10
        assert lift_by_reference(env, kin, 1_000_500, old) < 0.01
    finally:
        env.close()


def test_the_reference_motion_baseline_executes_the_rows_under_the_planners_caps(kin):
    """dexwm-eval's ``reference_motion`` baseline: the reference's rows one per step while the robot
    follows, each command within the shipped per-step cap of the measured joints and inside the
    joint limits when the robot lags, and "reached" once the rows are spent."""
    from dexwm_ros.evaluate import ReferenceMotionPolicy, shipped_cem_config

    cap = shipped_cem_config("cpu").max_step()
    policy = ReferenceMotionPolicy(kin)
    q0 = pregrasp_joints(kin)
    policy.start(None, None, 0)
    rows = GraspReference().joints(kin, q0, cap)
    q, executed = q0, []
    for _ in range(len(rows)):
        assert policy.verdict(q) is None
        q = policy.plan(q, lambda: False).command
        executed.append(q)
    np.testing.assert_allclose(executed, rows, atol=1e-9)
    assert policy.verdict(q) == "reached"
    # A robot that lags: the next command stays within the cap of where it is, and within the limits.
    policy.start(None, None, 0)
    policy.plan(q0, lambda: False)
    lagging = q0.copy()
    lagging[ARM_DOF:] = kin.lower[ARM_DOF:]
    command = policy.plan(lagging, lambda: False).command
    assert np.all(np.abs(command - lagging) <= cap + 1e-9)
    assert np.all(command >= kin.lower - 1e-9) and np.all(command <= kin.upper + 1e-9)
