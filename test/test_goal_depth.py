"""The goal's wrist read from its depth image (dexwm_planner.goal_depth), and its way to the planner."""
import json

import numpy as np
import pytest

from dexwm_planner.goal_depth import (GoalWristFromDepth, back_project, fit_surface_offset, load_surface_offset,
                                      nearest_surface)


def test_back_projection_inverts_the_pinhole_projection():
    from dexwm_robot.camera import HeadCamera

    camera = HeadCamera()
    K = camera.intrinsics(224, 224)
    point = np.array([0.07, -0.04, 0.81])
    uv = (K @ point)[:2] / point[2]
    np.testing.assert_allclose(back_project(uv, point[2], K), point, atol=1e-12)


def test_the_nearest_surface_skips_holes_and_refuses_what_it_cannot_read():
    depth = np.full((20, 30), 1.2)
    depth[8:13, 10:15] = np.array([[0.0, np.nan, np.inf, 0.9, 0.95]] * 5)     # holes beside the hand
    assert nearest_surface(depth, np.array([12.0, 10.0])) == 0.9
    assert nearest_surface(depth, np.array([0.4, 0.4])) == 1.2                 # the window clipped at a corner
    with pytest.raises(ValueError, match="outside"):
        nearest_surface(depth, np.array([31.0, 5.0]))
    holes = np.zeros((20, 30))
    with pytest.raises(ValueError, match="no valid depth"):
        nearest_surface(holes, np.array([5.0, 5.0]))


def test_the_fitted_offset_is_the_median_gap_behind_the_surface(tmp_path):
    K = np.array([[200.0, 0, 111.5], [0, 200.0, 111.5], [0, 0, 1]])
    rng = np.random.default_rng(0)
    wrists = np.c_[rng.uniform(-0.1, 0.1, (9, 2)), rng.uniform(0.6, 0.9, 9)]
    pixels = (wrists @ K.T)[:, :2] / wrists[:, 2:]
    depths = []
    for w in wrists:
        d = np.full((224, 224), 2.0)
        d[:, :] = np.where(np.ones((224, 224), bool), w[2] - 0.05, 2.0)          # the hand's surface 5 cm nearer
        depths.append(d)
    fit = fit_surface_offset(pixels, depths, wrists)
    assert fit["surface_offset_m"] == pytest.approx(0.05) and fit["frames"] == 9
    reader = GoalWristFromDepth(lambda image: np.r_[pixels[3:4], np.zeros((5, 2))], K, fit["surface_offset_m"])
    np.testing.assert_allclose(reader(np.zeros((224, 224, 3), np.uint8), depths[3]), wrists[3], atol=1e-9)
    with pytest.raises(ValueError, match="aligned"):
        reader(np.zeros((224, 224, 3), np.uint8), depths[3][:100])
    stored = tmp_path / "fit.json"
    stored.write_text(json.dumps({"surface_offset_m": 0.05}))
    assert load_surface_offset(str(stored)) == 0.05
    stored.write_text(json.dumps({"surface_offset_m": -0.3}))
    with pytest.raises(ValueError, match="must lie"):
        load_surface_offset(str(stored))
    with pytest.raises(ValueError, match="no fitted"):
        load_surface_offset(str(tmp_path / "missing.json"))


def test_the_shipped_offset_puts_a_rendered_goal_wrist_within_a_centimetre_and_a_half():
    """On a rendered goal (the simulation's depth image, the head camera's intrinsics) the wrist pixel
    back-projected with the shipped offset lands near the forward-kinematics wrist: the true pixel
    here, so this checks the depth, the intrinsics and the offset, not the reader."""
    from dexwm_planner.actions import hand_pixels_projection, wrist_position_projection
    from dexwm_robot.camera import HeadCamera
    from dexwm_sim import tasks
    from dexwm_sim.scene import SimEnv

    camera, size = HeadCamera(), (224, 224)
    env = SimEnv(render_size=size)
    episode = env.reset("paper-reach", 1_000_501)
    goal = tasks.make_goal(env, episode, sizes=(size,), depth=True)
    assert goal.depth.shape == size and np.isfinite(goal.depth).all()
    pixels = hand_pixels_projection(camera.world_to_camera, size)(goal.joints[None])[0]
    reader = GoalWristFromDepth(lambda image: pixels, camera.intrinsics(*size), load_surface_offset())
    true = wrist_position_projection(camera.world_to_camera)(goal.joints[None])[0]
    assert np.linalg.norm(reader(goal.image, goal.depth) - true) < 0.015
    # Without the offset the point sits on the back of the hand, centimetres nearer.
    bare = GoalWristFromDepth(lambda image: pixels, camera.intrinsics(*size), 0.0)
    assert true[2] - bare(goal.image, goal.depth)[2] > 0.02


def test_the_planner_reads_the_goal_wrist_from_depth_only_when_its_term_is_on(random_checkpoint):
    from dataclasses import replace

    from dexwm_planner.actions import allegro_actions, wrist_position_projection
    from dexwm_planner.mpc import MPCConfig, MPCPlanner
    from dexwm_planner.objective import ObjectiveConfig
    from dexwm_planner.world_model import DexWM
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics

    model, kin, camera = DexWM.load(str(random_checkpoint)), RobotKinematics.from_description(), HeadCamera()
    seen = []

    def from_depth(image, depth):
        seen.append(depth)
        if not np.isfinite(depth).any():
            raise ValueError("no valid depth around the goal's wrist pixel")
        return np.array([0.0, 0.1, 0.8])

    def planner(weight):
        config = MPCConfig(objective=ObjectiveConfig(goal_wrist_weight=weight))
        return MPCPlanner(model, lambda q: allegro_actions(q, camera.world_to_camera, kinematics=kin), kin.lower,
                          kin.upper, config, wrist_fn=wrist_position_projection(camera.world_to_camera, kin),
                          goal_wrist_from_depth=from_depth)

    image, depth = np.zeros((224, 224, 3), np.uint8), np.full((224, 224), 0.8)
    on = planner(100.0)
    on.set_goal(image, goal_depth=depth)
    np.testing.assert_allclose(on.objective.goal_wrist, [0.0, 0.1, 0.8])
    # A depth image the wrist cannot be read from: a clear error, the goal before stays.
    before = on.objective
    with pytest.raises(ValueError, match="no valid depth"):
        on.set_goal(image, goal_depth=np.full((224, 224), np.nan))
    assert on.objective is before
    # A given wrist wins; the term off reads nothing.
    on.set_goal(image, goal_wrist=np.array([0.0, 0.0, 0.7]), goal_depth=depth)
    np.testing.assert_allclose(on.objective.goal_wrist, [0.0, 0.0, 0.7])
    seen.clear()
    off = planner(0.0)
    off.set_goal(image, goal_depth=depth)
    assert off.objective.goal_wrist is None and not seen
    assert replace(off.config.objective).goal_wrist_weight == 0.0


def test_a_camera_sized_goal_is_read_in_the_cameras_own_pixels_and_intrinsics():
    """The planner node's goals come at the camera's size (here twice the model's, 448 x 448 to a
    224 view): the reader's model-image pixel is mapped back to the camera's pixels, the depth window
    covers the same part of the scene, the camera's intrinsics back-project it."""
    from dexwm_robot.view import raw_to_view_pixels

    K_raw = np.array([[400.0, 0, 223.5], [0, 400.0, 223.5], [0, 0, 1]])
    wrist = np.array([0.05, -0.03, 0.7])
    raw_pixel = (K_raw @ wrist)[:2] / wrist[2]
    to_model = lambda uv: raw_to_view_pixels(uv, (448, 448), (224, 224))  # noqa: E731
    model_pixel = to_model(raw_pixel)
    reader = GoalWristFromDepth.for_camera(lambda image: np.r_[model_pixel[None], np.zeros((5, 2))], to_model,
                                           K_raw, 0.05)
    assert reader.window_half == 4
    depth = np.full((448, 448), 1.5)
    u, v = np.round(raw_pixel).astype(int)
    depth[v - 3, u + 3] = wrist[2] - 0.05                       # the hand's surface 3 px off the wrist pixel
    np.testing.assert_allclose(reader(np.zeros((448, 448, 3), np.uint8), depth), wrist, atol=1e-9)
    with pytest.raises(ValueError, match="positive scale"):
        GoalWristFromDepth.for_camera(lambda image: model_pixel, lambda uv: np.zeros(2), K_raw, 0.05)


def test_the_planner_nodes_planning_reads_a_goal_wrist_from_depth_where_its_weight_asks(random_checkpoint):
    """WorldModelPlanning (the node's planner factory): goal_wrist_depth_weight > 0 gives its planners
    the goal wrist from the goal's depth, with the camera's size and intrinsics; 0 reads nothing."""
    from dexwm_planner.actions import hand_pixels_projection, wrist_position_projection
    from dexwm_robot.camera import HeadCamera
    from dexwm_ros.planner_settings import PlannerSettings
    from dexwm_ros.planner_setup import WorldModelPlanning
    from dexwm_sim import tasks
    from dexwm_sim.scene import SimEnv

    camera, size = HeadCamera(), (224, 224)
    env = SimEnv(render_size=size)
    goal = tasks.make_goal(env, env.reset("paper-reach", 1_000_501), sizes=(size,), depth=True)
    env.close()
    settings = PlannerSettings(checkpoint=str(random_checkpoint), goal_wrist_depth_weight=100.0)
    planning = WorldModelPlanning(settings)
    # The goal-hand reader stands in for by the true pixels: this checks the node's plumbing.
    planning.goal_hand_reader = lambda image: hand_pixels_projection(camera.world_to_camera, size)(goal.joints[None])[0]
    true = wrist_position_projection(camera.world_to_camera)(goal.joints[None])[0]
    planner = planning.planner(settings, "place", camera=lambda: (size, camera.intrinsics(*size)))
    planner.set_goal(goal.image, goal_depth=goal.depth)
    assert np.linalg.norm(planner.objective.goal_wrist - true) < 0.015
    planner.set_goal(goal.image)                                  # a goal without depth: no goal wrist
    assert planner.objective.goal_wrist is None
    off = planning.planner(PlannerSettings(checkpoint=str(random_checkpoint)), "place")
    off.set_goal(goal.image, goal_depth=goal.depth)
    assert off.objective.goal_wrist is None and off.goal_wrist_from_depth is None
