"""The grasp reference motion (dexwm_planner.reference_motion) and the MPC search that starts from it."""
import numpy as np
import pytest

from dexwm_planner.mpc import MPCConfig, MPCPlanner
from dexwm_planner.cem import CEMConfig
from dexwm_planner.reference_motion import GraspReference, GuardedGrasp, GuardedGraspMotion, reference_motion
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
        reference_motion("wave", kin)
    assert reference_motion("none", kin) is None
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



def test_a_reference_with_feedback_gives_the_mean_of_every_replan_from_the_measured_joints():
    """A reference motion with feedback (``next_rows``, the guarded grasp) is asked once per replan,
    with the joints measured then, also where a warm start exists; the search executes its rows."""
    from test_planner_models import LinearTestModel, delta_actions

    model = LinearTestModel()
    lower, upper = np.full(DOF, -1.0), np.full(DOF, 1.0)
    asked = []

    class Feedback:
        def next_rows(self, q, horizon, sent=None):
            asked.append((np.array(q), horizon, None if sent is None else np.array(sent)))
            return np.repeat(np.asarray(q)[None] + 0.1, horizon, axis=0)   # always 0.1 rad ahead of the robot

    cem = CEMConfig(samples=4, elites=2, iterations=1, horizon=3, std_arm=1e-4, std_hand=1e-4, min_std=0.0,
                    max_step_arm=0.25, max_step_hand=0.25)
    planner = MPCPlanner(model, delta_actions, lower, upper, MPCConfig(cem=cem, reference="grasp"), seed=0,
                         reference_fn=lambda q: Feedback())
    planner.set_goal(model.render(np.zeros(DOF)))
    q = np.zeros(DOF)
    sent = None
    for step in range(5):
        measured = q - 0.02                         # the robot lags what it was sent
        planner.observe(model.render(measured), measured)
        q = planner.step(measured).command
        assert len(asked) == step + 1
        np.testing.assert_allclose(asked[-1][0], measured)
        # ... and it is told what was sent last (the search may move off its rows)
        assert (asked[-1][2] is None) if sent is None else np.allclose(asked[-1][2], sent)
        np.testing.assert_allclose(q, measured + 0.1, atol=1e-2)
        sent = q
    assert [horizon for _, horizon, _ in asked] == [3, 2, 1, 3, 2]


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


def _stopped_at(kin, command, floor):
    """Joints of an arm sent to ``command`` whose palm cannot go below the height ``floor``."""
    from dexwm_robot.ik import solve_arm_ik

    palm = kin.palm_and_tips_world(command)[0]
    if palm[2] >= floor:
        return command.copy()
    q = command.copy()
    q[:ARM_DOF] = solve_arm_ik(kin, command, np.r_[palm[:2], floor], kin.ee_pose(command)[1], point="palm",
                               posture_gain=0.0)
    return q


def solve_arm_ik_up(kin, q, up):
    """Arm joints with the palm ``up`` [m] above where ``q`` has it, orientation kept."""
    from dexwm_robot.ik import solve_arm_ik

    return solve_arm_ik(kin, q, kin.palm_and_tips_world(q)[0] + np.array([0.0, 0.0, up]), kin.ee_pose(q)[1],
                        point="palm", posture_gain=0.0)


def _run_guarded(kin, q0, floor=-np.inf, steps=20):
    motion = GuardedGraspMotion(kin, q0)
    q, executed = q0, []
    for _ in range(steps):
        if motion.done:
            break
        command = motion.next_rows(q, 3)[0]
        executed.append(command)
        q = _stopped_at(kin, command, floor)
    return motion, np.array(executed)


def preshaped_joints(kin):
    """pregrasp_joints with the hand in the power grasp's open posture."""
    q = pregrasp_joints(kin)
    q[ARM_DOF:] = allegro.POWER_GRASP_PRESHAPE
    return q


def test_the_guarded_grasp_goes_down_until_the_hand_meets_something_then_closes_there_and_lifts(kin):
    q0 = preshaped_joints(kin)
    start = kin.palm_and_tips_world(q0)[0]
    cfg = GuardedGrasp()
    # In free space: down to its greatest depth in 2 cm steps, close, up 12 cm.
    motion, rows = _run_guarded(kin, q0)
    palm = kin.palm_and_tips_world(rows)[:, 0]
    down = int(round(cfg.max_depth / cfg.step))
    np.testing.assert_allclose(palm[:down, 2], start[2] - cfg.step * np.arange(1, down + 1), atol=3e-3)
    np.testing.assert_allclose(rows[:down, ARM_DOF:], np.repeat(q0[None, ARM_DOF:], down, 0))
    closing = rows[down:down + cfg.close_steps]
    np.testing.assert_allclose(closing[:, :ARM_DOF], np.repeat(rows[down - 1:down, :ARM_DOF], cfg.close_steps, 0))
    np.testing.assert_allclose(closing[:, ARM_DOF:], np.repeat(allegro.power_grasp(q0[ARM_DOF:])[None], cfg.close_steps, 0))
    assert motion.closed_hand == pytest.approx(allegro.power_grasp(allegro.POWER_GRASP_PRESHAPE))
    assert palm[-1, 2] == pytest.approx(start[2] - cfg.max_depth + cfg.lift, abs=5e-3)
    assert motion.done and motion.contact_depth is None and len(rows) == down + cfg.close_steps + cfg.lift_rows
    # Something 5 cm below the palm: it stops there (the first step that could not be followed), closes
    # where the arm stopped, and lifts from there.
    motion, rows = _run_guarded(kin, q0, floor=start[2] - 0.05)
    palm = kin.palm_and_tips_world(rows)[:, 0]
    assert motion.contact_depth == pytest.approx(0.05, abs=3e-3)
    first_close = int(np.argmax(np.all(np.isclose(rows[:, ARM_DOF:], allegro.power_grasp(q0[ARM_DOF:])), axis=1)))
    assert first_close == 3                      # sent to -2, -4, -6 cm; at -6 the palm stayed at -5
    assert kin.palm_and_tips_world(rows[first_close])[0][2] == pytest.approx(start[2] - 0.05, abs=3e-3)
    assert palm[-1, 2] == pytest.approx(start[2] - 0.05 + cfg.lift, abs=5e-3)
    assert np.all(rows >= kin.lower) and np.all(rows <= kin.upper)
    # Contact is judged against what was sent: a search that sent the hand 1.5 cm above the row it
    # was given, followed exactly, is no contact.
    motion = GuardedGraspMotion(kin, q0)
    q = q0
    for _ in range(3):
        row = motion.next_rows(q, 1, sent=None if q is q0 else sent)[0]
        sent = _stopped_at(kin, row, -np.inf)
        sent[:ARM_DOF] = solve_arm_ik_up(kin, row, 0.015)
        q = sent.copy()
    assert motion.state[0] == "descend" and motion.contact_depth is None
    with pytest.raises(ValueError, match="finite"):
        GuardedGraspMotion(kin, np.full(DOF, np.nan))
    with pytest.raises(ValueError, match="guarded grasp"):
        GuardedGrasp(step=0.5)



def test_the_guarded_grasp_first_opens_the_hand_to_the_grasp_posture_where_the_arm_is(kin):
    """From a hand far from the open grasp posture (the relaxed open pose: the thumb 1.6 rad off), the
    first rows keep the arm and send the hand there; a hand held back by a per-step cap takes as many
    steps as the cap needs, then the descent starts with the open posture and closes from it."""
    q0 = pregrasp_joints(kin)
    cap = 0.5
    motion, q, rows = GuardedGraspMotion(kin, q0), q0, []
    for _ in range(12):
        row = motion.next_rows(q, 3)[0]
        rows.append(row)
        q = np.r_[row[:ARM_DOF], q[ARM_DOF:] + np.clip(row[ARM_DOF:] - q[ARM_DOF:], -cap, cap)]
    rows = np.array(rows)
    needed = int(np.ceil(np.abs(allegro.POWER_GRASP_PRESHAPE - q0[ARM_DOF:]).max() / cap - 0.15 / cap))
    assert needed >= 3
    np.testing.assert_allclose(rows[:needed, :ARM_DOF], np.repeat(q0[None, :ARM_DOF], needed, 0))
    np.testing.assert_allclose(rows[:needed + 1, ARM_DOF:],
                               np.repeat(allegro.POWER_GRASP_PRESHAPE[None], needed + 1, 0))
    palm = kin.palm_and_tips_world(rows)[:, 0]
    start = kin.palm_and_tips_world(q0)[0]
    assert palm[needed, 2] == pytest.approx(start[2] - GuardedGrasp().step, abs=3e-3)   # then down
    assert motion.closed_hand == pytest.approx(allegro.power_grasp(allegro.POWER_GRASP_PRESHAPE))
    # Without the preshape it goes down at once with the hand it has, and closes from that.
    plain = GuardedGraspMotion(kin, q0, GuardedGrasp(preshape=False))
    first = plain.next_rows(q0, 1)[0]
    assert kin.palm_and_tips_world(first)[0][2] == pytest.approx(start[2] - GuardedGrasp().step, abs=3e-3)
    np.testing.assert_allclose(first[ARM_DOF:], q0[ARM_DOF:])
    # A hand that never gets there (held): the descent starts after preshape_steps anyway.
    stuck = GuardedGraspMotion(kin, q0, GuardedGrasp(preshape_steps=2))
    for _ in range(3):
        row = stuck.next_rows(q0, 1)[0]
    assert stuck.state[0] == "descend" and kin.palm_and_tips_world(row)[0][2] < start[2] - 0.01
    with pytest.raises(ValueError, match="preshape"):
        GuardedGrasp(preshape_steps=0)

def test_from_a_pre_grasp_pose_3_cm_too_high_the_guarded_grasp_lifts_the_object_and_the_fixed_one_does_not(kin):
    """The fixed reference goes down a set 8 cm and closes above the object; the guarded one goes on
    until the hand meets it (read from the measured joints), and lifts it."""
    from dexwm_ros.evaluate import shipped_cem_config
    from dexwm_sim.scene import SimEnv

    cap = shipped_cem_config("cpu").max_step()
    env = SimEnv()
    try:
        def raised_start():
            episode = env.reset("paper-grasp", 1_000_500)
            q = env.joint_positions()
            arm = env.solve_arm_ik(env.palm_and_tips()[0] + np.array([0.0, 0.0, 0.03]), env.kinematics.ee_pose(q)[1])
            env.command(arm, q[ARM_DOF:], duration=1.0)
            env.advance(1.5)
            return episode, env.object_position(episode.object_kind)[2]

        def run(next_row, steps=20):
            for _ in range(steps):
                measured = env.joint_positions()
                command = np.clip(next_row(measured), measured - cap, measured + cap)
                env.command(command[:ARM_DOF], command[ARM_DOF:], duration=0.6)
                env.advance(0.6)

        episode, z0 = raised_start()
        rows = GraspReference().joints(kin, env.joint_positions(), cap)
        it = iter(list(rows) + [rows[-1]] * 20)
        run(lambda measured: next(it))
        fixed_lift = env.object_position(episode.object_kind)[2] - z0
        episode, z0 = raised_start()
        motion = GuardedGraspMotion(kin, env.joint_positions())
        run(lambda measured: motion.next_rows(measured, 1)[0])
        guarded_lift = env.object_position(episode.object_kind)[2] - z0
    finally:
        env.close()
    assert motion.done and motion.contact_depth is not None
    assert fixed_lift < 0.02 and guarded_lift > 0.08


def test_the_reference_motion_baseline_follows_the_guarded_grasp_under_the_planners_caps(kin):
    """dexwm-eval's ``reference_motion`` baseline: the guarded grasp's rows one per step, read with
    the measured joints, each command within the shipped per-step cap of them and inside the joint
    limits when the robot lags, and "reached" once the motion is over."""
    from dexwm_ros.evaluate import ReferenceMotionPolicy, shipped_cem_config

    cap = shipped_cem_config("cpu").max_step()
    policy = ReferenceMotionPolicy(kin)
    q0 = pregrasp_joints(kin)
    policy.start(None, None, 0)
    expected = GuardedGraspMotion(kin, q0)
    q = q0
    for _ in range(30):
        if policy.verdict(q) is not None:
            break
        row = expected.next_rows(q, 1)[0]
        command = policy.plan(q, lambda: False).command
        np.testing.assert_allclose(command, np.clip(row, q - cap, q + cap), atol=1e-9)
        q = command
    assert expected.done and policy.verdict(q) == "reached"
    # A robot that lags: the next command stays within the cap of where it is, and within the limits.
    policy.start(None, None, 0)
    policy.plan(q0, lambda: False)
    lagging = q0.copy()
    lagging[ARM_DOF:] = kin.lower[ARM_DOF:]
    command = policy.plan(lagging, lambda: False).command
    assert np.all(np.abs(command - lagging) <= cap + 1e-9)
    assert np.all(command >= kin.lower - 1e-9) and np.all(command <= kin.upper + 1e-9)
