"""Joints estimated from the goal image's hand keypoints (the CEM's proposal): they put the robot's
own hand where the keypoints say, inside the joint limits; the planner offers them once per goal."""
import numpy as np
import pytest

from dexwm_planner.actions import hand_pixels_projection
from dexwm_planner.hand_proposal import estimate_goal_joints
from dexwm_robot.camera import HeadCamera
from dexwm_robot.franka import HOME
from dexwm_robot.kinematics import RobotKinematics


@pytest.fixture(scope="module")
def setup():
    kin, cam = RobotKinematics.from_description(), HeadCamera()
    return kin, hand_pixels_projection(cam.world_to_camera, (224, 224), kinematics=kin)


def _pair(kin, rng):
    lower, upper = np.asarray(kin.lower), np.asarray(kin.upper)
    q0 = lower + rng.uniform(0.3, 0.7, len(lower)) * (upper - lower)
    q0[:7] = HOME + rng.uniform(-0.2, 0.2, 7)
    goal = q0.copy()
    goal[:7] += rng.uniform(-0.3, 0.3, 7)
    return q0, np.clip(goal, lower, upper)


def test_exact_keypoints_give_the_goal_hand(setup):
    """Six exact keypoints: the estimated hand (palm + 4 tips) ends at most half as far from the goal's as
    the start is, and its keypoints land within a few pixels (the pull toward the start trades a little)."""
    kin, pixels = setup
    rng = np.random.default_rng(0)
    for _ in range(4):
        q0, goal = _pair(kin, rng)
        est = estimate_goal_joints(pixels, pixels(goal), q0, kin.lower, kin.upper)
        assert np.all(est >= np.asarray(kin.lower)) and np.all(est <= np.asarray(kin.upper))
        assert np.abs(pixels(est) - pixels(goal)).max() < 3.0
        start = np.linalg.norm(kin.palm_and_tips_world(q0) - kin.palm_and_tips_world(goal), axis=1).mean()
        end = np.linalg.norm(kin.palm_and_tips_world(est) - kin.palm_and_tips_world(goal), axis=1).mean()
        assert end < 0.5 * start, (start, end)


def test_the_current_hand_stays_and_bad_input_is_refused(setup):
    kin, pixels = setup
    q0, _ = _pair(kin, np.random.default_rng(1))
    np.testing.assert_allclose(estimate_goal_joints(pixels, pixels(q0), q0, kin.lower, kin.upper), q0, atol=1e-6)
    bad = pixels(q0).copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        estimate_goal_joints(pixels, bad, q0, kin.lower, kin.upper)


def test_the_planner_offers_the_estimate_once_per_goal(setup):
    """MPCConfig.hand_proposal: the estimate is made at the goal's first replan from the joints
    then, kept for the goal's later replans and made again for a new goal."""
    from dexwm_planner.cem import CEMConfig
    from dexwm_planner.mpc import MPCConfig, MPCPlanner
    from dexwm_planner.objective import ObjectiveConfig
    from test_planner_models import IMAGE_SIZE, LinearTestModel, delta_actions

    kin, pixels = setup
    model = LinearTestModel()
    config = MPCConfig(cem=CEMConfig(samples=8, elites=2, iterations=1), hand_proposal=True,
                       objective=ObjectiveConfig(hand_pixel_weight=1e-3))
    planner = MPCPlanner(model, delta_actions, kin.lower, kin.upper, config, seed=0, hand_pixels_fn=pixels)
    image = np.zeros((*IMAGE_SIZE, 3), np.uint8)
    q0, _ = _pair(kin, np.random.default_rng(2))
    planner.set_goal(image)
    assert planner.goal_joints_estimate is None
    planner.observe(image, q0)
    planner.step(q0)
    first = planner.goal_joints_estimate.copy()
    goal_pixels = planner.objective.goal_keypoints.numpy()
    np.testing.assert_allclose(first, estimate_goal_joints(pixels, goal_pixels, q0, kin.lower, kin.upper))
    planner.observe(image, q0 + 0.01)
    planner.step(q0 + 0.01)
    np.testing.assert_array_equal(planner.goal_joints_estimate, first)
    planner.set_goal(image)
    assert planner.goal_joints_estimate is None


def test_a_hand_proposal_without_the_projection_is_refused(setup):
    from dexwm_planner.mpc import MPCConfig, MPCPlanner
    from test_planner_models import LinearTestModel, delta_actions

    kin, _ = setup
    with pytest.raises(ValueError, match="hand_pixels_fn"):
        MPCPlanner(LinearTestModel(), delta_actions, kin.lower, kin.upper, MPCConfig(hand_proposal=True))
