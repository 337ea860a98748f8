"""The planned-hand keypoint term's projection: forward kinematics into the model image's pixels,
the pixel frame the heatmap head decodes goal images in, for any colour frame size."""
import types

import numpy as np

from dexwm_planner.actions import allegro_hand_pixels
from dexwm_planner.keypoints import HEATMAP_KEYPOINTS
from dexwm_robot.camera import HeadCamera
from dexwm_robot.franka import HOME
from dexwm_robot.kinematics import RobotKinematics
from dexwm_ros.planner_settings import PlannerSettings
from dexwm_ros.planner_setup import WorldModelPlanning


def _poses(kin, n=5, seed=0):
    """Joint vectors around the arm's home pose (the hand in front of the camera), hand joints anywhere."""
    rng = np.random.default_rng(seed)
    lower, upper = np.asarray(kin.lower), np.asarray(kin.upper)
    q = lower + rng.uniform(0.2, 0.8, (n, len(lower))) * (upper - lower)
    q[:, :7] = HOME + rng.uniform(-0.3, 0.3, (n, 7))
    return q


def test_hand_pixels_are_the_heatmap_keypoints_projected():
    kin, cam = RobotKinematics.from_description(), HeadCamera()
    q = _poses(kin)
    uv = allegro_hand_pixels(q, cam.world_to_camera, cam.intrinsics(224, 224), kinematics=kin)
    wrist_and_tips = np.asarray(kin.keypoints_world(q))[:, HEATMAP_KEYPOINTS[:6]]
    expected, _, _ = cam.project(wrist_and_tips, 224, 224)
    assert uv.shape == (5, 6, 2)
    np.testing.assert_allclose(uv, expected, atol=1e-6)


def test_planner_projects_into_the_model_view_of_any_frame_size():
    """A 640x480 frame of the sim camera, resized to height 224 and centre-cropped, shows the hand
    where a 224x224 render does (to the third of a pixel the crop rounds to); the frames' own
    intrinsics (their camera_info) give the same as the default."""
    kin, cam = RobotKinematics.from_description(), HeadCamera()
    model = types.SimpleNamespace(image_size=(224, 224), frame_step=0.2)
    planning = WorldModelPlanning(PlannerSettings(), model=model, kinematics=kin)
    q = _poses(kin, seed=1)
    square = planning.hand_pixels_fn((224, 224))(q)
    wide = planning.hand_pixels_fn((480, 640))(q)
    np.testing.assert_allclose(wide, square, atol=0.34)
    given = planning.hand_pixels_fn((480, 640), cam.intrinsics(640, 480))(q)
    np.testing.assert_allclose(given, wide, atol=1e-9)
    shifted = cam.intrinsics(640, 480)
    shifted[0, 2] += 10.0                      # another camera's principal point: 10 px * 224/480 further right
    moved = planning.hand_pixels_fn((480, 640), shifted)(q)
    np.testing.assert_allclose(moved[..., 0] - wide[..., 0], 10.0 * 224 / 480, atol=1e-6)


def test_a_wide_model_view_projects_like_a_wide_render():
    """A non-square model image (the paper's 224x392): a 1280x720 frame resized to height 224 and
    centre-cropped to 392 wide shows the hand where a 392x224 render of the same camera does."""
    kin, cam = RobotKinematics.from_description(), HeadCamera()
    planning = WorldModelPlanning(PlannerSettings(), model=types.SimpleNamespace(image_size=(224, 392)),
                                  kinematics=kin)
    q = _poses(kin, seed=3)
    wide = planning.hand_pixels_fn((720, 1280))(q)
    direct = allegro_hand_pixels(q, cam.world_to_camera, cam.intrinsics(392, 224), kinematics=kin)
    np.testing.assert_allclose(wide, direct, atol=0.34)


def test_a_goals_planner_asks_for_the_camera_when_it_first_projects():
    """A goal can be accepted before the first frame arrives: the planner reads the frames' size and
    intrinsics at its first projection (after a frame was observed), once per goal."""
    import pytest

    kin, cam = RobotKinematics.from_description(), HeadCamera()
    model = types.SimpleNamespace(image_size=(224, 224), frame_step=0.2)
    planning = WorldModelPlanning(PlannerSettings(), model=model, kinematics=kin)
    q = _poses(kin, seed=2)
    asked = []
    seen = {"camera": ((None, None))}

    def camera():
        asked.append(seen["camera"])
        return seen["camera"]
    planner = planning.planner(PlannerSettings(), "reach", camera=camera)
    assert planner.config.objective.hand_pixel_weight == 1e-3 and asked == []
    with pytest.raises(RuntimeError, match="no camera frame"):
        planner.hand_pixels_fn(q)
    seen["camera"] = ((480, 640), cam.intrinsics(640, 480))
    np.testing.assert_allclose(planner.hand_pixels_fn(q), planning.hand_pixels_fn((480, 640))(q), atol=1e-9)
    planner.hand_pixels_fn(q)
    assert len(asked) == 2                                  # the failed try and the first projection
    # Without a camera source: the simulated camera at the model's image size.
    default = planning.planner(PlannerSettings(), "reach")
    np.testing.assert_allclose(default.hand_pixels_fn(q), planning.hand_pixels_fn((224, 224))(q), atol=1e-9)


def test_camera_info_gives_the_planner_its_intrinsics():
    from sensor_msgs.msg import CameraInfo

    from dexwm_ros.planner_robot import camera_info_topic, camera_matrix_of

    assert camera_info_topic("/camera/camera/color/image_raw") == "/camera/camera/color/camera_info"
    msg = CameraInfo(width=640, height=480, k=list(HeadCamera().intrinsics(640, 480).ravel()))
    np.testing.assert_array_equal(camera_matrix_of(msg), HeadCamera().intrinsics(640, 480))
    assert camera_matrix_of(CameraInfo(width=640, height=480)) is None      # uncalibrated: all zeros


def test_the_evaluation_and_the_benchmark_project_as_the_planner_node_does():
    """One projection for the planner node, dexwm-eval's policy and dexwm-bench planner: with frames
    rendered at the model's size (the simulation), each equals the simulated camera at that size."""
    from dexwm_planner.actions import hand_pixels_projection
    from dexwm_ros.evaluate import WorldModelPolicy

    kin, cam = RobotKinematics.from_description(), HeadCamera()
    model = types.SimpleNamespace(image_size=(224, 392), frame_step=0.2)
    q = _poses(kin, seed=4)
    direct = allegro_hand_pixels(q, cam.world_to_camera, cam.intrinsics(392, 224), kinematics=kin)
    node = WorldModelPlanning(PlannerSettings(), model=model, kinematics=kin).hand_pixels_fn((224, 392))(q)
    policy = WorldModelPolicy(model, kin, cam.world_to_camera).hand_pixels_fn(q)
    np.testing.assert_allclose(node, direct, atol=1e-6)
    np.testing.assert_allclose(policy, direct, atol=1e-6)
    # Frames of another size than the model's (the benchmark renders 224x224) go through the model view.
    square = allegro_hand_pixels(q, cam.world_to_camera, cam.intrinsics(224, 224), kinematics=kin)
    large_frames = hand_pixels_projection(cam.world_to_camera, (224, 224), camera_hw=(448, 448), kinematics=kin)(q)
    np.testing.assert_allclose(large_frames, square, atol=0.5)
    assert np.abs(large_frames - 2 * square).max() > 10.0
