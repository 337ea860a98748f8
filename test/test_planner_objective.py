"""Planning objective: time weights, latent and keypoint terms, orientation term."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from dexwm_planner.cem import DOF
from dexwm_planner.objective import GoalObjective, ObjectiveConfig, rotation_angle, step_weights
from test_planner_models import LinearTestModel, delta_actions


def test_step_weights_follow_the_paper():
    w = step_weights(3, 0.6)
    assert np.allclose(w, np.array([0.36, 0.6, 1.0]) / 1.96)
    assert np.isclose(w.sum(), 1.0)
    assert np.allclose(step_weights(1, 0.6), [1.0])


def test_cost_terms_match_a_hand_computation():
    model = LinearTestModel()
    rng = np.random.default_rng(0)
    q0, q_goal = rng.uniform(-0.2, 0.2, DOF), rng.uniform(-0.2, 0.2, DOF)
    goal_latent = model.encode(model.render(q_goal)[None])[0]
    context = model.encode(model.render(q0)[None])
    objective = GoalObjective(model, delta_actions, goal_latent)
    samples = q0 + rng.normal(0, 0.1, (5, 3, DOF))
    terms = objective.terms(context, q0, samples, keep_keypoints=True)

    pred = model.rollout(context, torch.as_tensor(delta_actions(np.concatenate(
        [np.broadcast_to(q0, (5, 1, DOF)), samples], axis=1))))
    per_step = ((pred - goal_latent) ** 2).mean(dim=(-2, -1)).double().numpy()      # (5, 3)
    w = np.array([0.36, 0.6, 1.0]) / 1.96
    assert np.allclose(terms.latent, per_step @ w, rtol=1e-5)
    kp_goal = model.keypoints_2d(goal_latent[None])[0][:6].numpy()
    kp_pred = model.keypoints_2d(pred).numpy()[..., :6, :]
    kp_mse = ((kp_pred - kp_goal) ** 2).mean(axis=(-2, -1))
    assert np.allclose(terms.keypoint, kp_mse @ w, rtol=1e-4)
    assert np.allclose(terms.total, terms.latent + 1e-3 * terms.keypoint, rtol=1e-6)
    assert terms.predicted_keypoints.shape == (5, 3, 12, 2)
    # the plan that goes to the goal scores (near) zero and beats every random plan
    to_goal = np.repeat(q_goal[None, None], 3, axis=1)
    assert objective(context, q0, to_goal)[0] < 0.05 * terms.total.min()


def test_later_steps_weigh_more():
    model = LinearTestModel()
    q0 = np.zeros(DOF)
    q_goal = np.full(DOF, 0.1)
    goal_latent = model.encode(model.render(q_goal)[None])[0]
    context = model.encode(model.render(q0)[None])
    objective = GoalObjective(model, delta_actions, goal_latent, ObjectiveConfig(keypoint_weight=0))
    early = np.stack([q_goal, q0, q0])[None]      # at the goal only at the first step
    late = np.stack([q0, q0, q_goal])[None]       # at the goal only at the last step
    assert objective(context, q0, late)[0] < objective(context, q0, early)[0]


def test_orientation_term():
    model = LinearTestModel()
    goal_rot = np.eye(3)

    def rotation_fn(q):  # joint 6 rotates the end effector about z (a stand-in for the FK)
        return Rotation.from_euler("z", q[:, 6:7]).as_matrix()
    q0 = np.zeros(DOF)
    context = model.encode(model.render(q0)[None])
    goal_latent = model.encode(model.render(q0)[None])[0]
    cfg = ObjectiveConfig(keypoint_weight=0, orientation_weight=2.0)
    objective = GoalObjective(model, delta_actions, goal_latent, cfg, rotation_fn=rotation_fn, goal_rotation=goal_rot)
    plan = np.zeros((1, 2, DOF))
    plan[0, -1, 6] = 0.5
    terms = objective.terms(context, q0, plan)
    assert np.isclose(terms.orientation[0], 0.25)
    assert np.isclose(terms.total[0], terms.latent[0] + 2.0 * 0.25)
    assert np.isclose(rotation_angle(Rotation.from_euler("x", 0.3).as_matrix(), np.eye(3)), 0.3)
    with pytest.raises(ValueError, match="orientation weight"):
        GoalObjective(model, delta_actions, goal_latent, cfg)


def test_planned_hand_pixel_term():
    """The planned joints' projected hand keypoints against the keypoints decoded from the goal."""
    model = LinearTestModel()
    rng = np.random.default_rng(1)
    q0 = np.zeros(DOF)
    goal_latent = model.encode(model.render(rng.uniform(-0.2, 0.2, DOF))[None])[0]
    goal_kp = model.keypoints_2d(goal_latent[None])[0][:6].numpy().astype(np.float64)
    context = model.encode(model.render(q0)[None])

    def hand_pixels_fn(q):   # a stand-in for FK + projection: joints 0..11 as six (u, v) pairs, scaled
        return 100.0 * np.asarray(q)[..., :12].reshape(q.shape[:-1] + (6, 2))
    cfg = ObjectiveConfig(keypoint_weight=0, hand_pixel_weight=0.01)
    objective = GoalObjective(model, delta_actions, goal_latent, cfg, hand_pixels_fn=hand_pixels_fn)
    samples = rng.uniform(-0.2, 0.2, (4, 3, DOF))
    terms = objective.terms(context, q0, samples)
    per_step = ((hand_pixels_fn(samples) - goal_kp) ** 2).mean(axis=(-2, -1))      # (4, 3)
    assert np.allclose(terms.hand_pixels, per_step @ step_weights(3, 0.6))
    assert np.allclose(terms.total, terms.latent + 0.01 * terms.hand_pixels)
    # a plan whose hand lands on the goal's keypoints pays nothing for this term
    on_goal = np.zeros((1, 3, DOF))
    on_goal[0, :, :12] = goal_kp.reshape(-1) / 100.0
    assert objective.terms(context, q0, on_goal).hand_pixels[0] < 1e-9
    assert np.all(GoalObjective(model, delta_actions, goal_latent, ObjectiveConfig(keypoint_weight=0)).terms(
        context, q0, samples).hand_pixels == 0)
    with pytest.raises(ValueError, match="hand pixel weight"):
        GoalObjective(model, delta_actions, goal_latent, cfg)
    with pytest.raises(ValueError, match=">= 0"):
        ObjectiveConfig(hand_pixel_weight=-1.0)
    # The wrist alone: only the first keypoint counts, so fingertips off the goal's cost nothing.
    wrist = GoalObjective(model, delta_actions, goal_latent, ObjectiveConfig(
        keypoint_weight=0, hand_pixel_weight=0.01, hand_pixel_keypoints="wrist"), hand_pixels_fn=hand_pixels_fn)
    per_step_wrist = ((hand_pixels_fn(samples)[..., :1, :] - goal_kp[:1]) ** 2).mean(axis=(-2, -1))
    assert np.allclose(wrist.terms(context, q0, samples).hand_pixels, per_step_wrist @ step_weights(3, 0.6))
    tips_off = on_goal.copy()
    tips_off[0, :, 2:12] += 0.3
    assert wrist.terms(context, q0, tips_off).hand_pixels[0] < 1e-9
    assert objective.terms(context, q0, tips_off).hand_pixels[0] > 100.0
    # Size-free: a planned hand twice the goal's size about the same wrist, same shape, pays nothing;
    # a hand turned about its wrist does.
    from dexwm_planner.objective import _sized_like
    goal_hand = np.array([[100.0, 100.0], [120, 90], [130, 100], [130, 110], [125, 120], [115, 125]])
    twice = goal_hand[0] + 2.0 * (goal_hand - goal_hand[0])
    np.testing.assert_allclose(_sized_like(twice[None, None], goal_hand)[0, 0], goal_hand)
    turned = goal_hand[0] + (goal_hand - goal_hand[0])[:, ::-1]
    assert np.abs(_sized_like(turned, goal_hand) - goal_hand).max() > 5.0
    with pytest.raises(ValueError, match="hand_pixel_keypoints"):
        ObjectiveConfig(hand_pixel_keypoints="thumb")


def test_goal_wrist_term():
    """The planned wrist's squared 3D distance to a goal wrist, weighted over time; only for goals
    that carry one."""
    model = LinearTestModel()
    rng = np.random.default_rng(2)
    q0 = np.zeros(DOF)
    goal_latent = model.encode(model.render(q0)[None])[0]
    context = model.encode(model.render(q0)[None])

    def wrist_fn(q):   # a stand-in for forward kinematics into the camera frame: joints 0..2 as metres
        return np.asarray(q)[..., :3] + np.array([0.0, 0.0, 0.8])
    goal_wrist = np.array([0.1, -0.05, 0.9])
    cfg = ObjectiveConfig(keypoint_weight=0, goal_wrist_weight=50.0)
    objective = GoalObjective(model, delta_actions, goal_latent, cfg, wrist_fn=wrist_fn, goal_wrist=goal_wrist)
    samples = rng.uniform(-0.2, 0.2, (4, 3, DOF))
    terms = objective.terms(context, q0, samples)
    per_step = ((wrist_fn(samples) - goal_wrist) ** 2).sum(-1)                     # (4, 3)
    assert np.allclose(terms.wrist, per_step @ step_weights(3, 0.6))
    assert np.allclose(terms.total, terms.latent + 50.0 * terms.wrist)
    on_goal = np.zeros((1, 3, DOF))
    on_goal[0, :, :3] = goal_wrist - [0.0, 0.0, 0.8]
    assert objective.terms(context, q0, on_goal).wrist[0] < 1e-12
    # A goal without a wrist position: no term, whatever the weight.
    assert np.all(GoalObjective(model, delta_actions, goal_latent, cfg, wrist_fn=wrist_fn).terms(
        context, q0, samples).wrist == 0)
    with pytest.raises(ValueError, match="wrist_fn"):
        GoalObjective(model, delta_actions, goal_latent, cfg, goal_wrist=goal_wrist)
    with pytest.raises(ValueError, match="3D point"):
        GoalObjective(model, delta_actions, goal_latent, cfg, wrist_fn=wrist_fn, goal_wrist=[0.1, np.nan, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        ObjectiveConfig(goal_wrist_weight=-1.0)


def test_the_planned_wrist_is_the_forward_kinematics_wrist_in_the_camera_frame():
    from dexwm_planner.actions import allegro_hand_pixels, wrist_position_projection
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics

    kin, camera = RobotKinematics.from_description(), HeadCamera()
    q = np.random.default_rng(3).uniform(kin.lower, kin.upper, (2, 5, DOF)) * 0.3
    wrist = wrist_position_projection(camera.world_to_camera, kin)(q)
    assert wrist.shape == (2, 5, 3) and np.all(wrist[..., 2] > 0)           # in front of the camera
    # Projected, it is the planned-hand term's wrist pixel.
    K = camera.intrinsics(224, 224)
    uv = wrist[..., :2] / wrist[..., 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    np.testing.assert_allclose(uv, allegro_hand_pixels(q, camera.world_to_camera, K, kinematics=kin)[..., 0, :],
                               atol=1e-6)
