"""dexwm_robot: description, Jacobian and IK, the crop, and that the planner stands on it alone."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dexwm_robot import description, franka, ik
from dexwm_robot.camera import HeadCamera
from dexwm_robot.kinematics import RobotKinematics
from dexwm_robot.view import model_view, model_view_intrinsics, raw_to_view_pixels, view_geometry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kin():
    return RobotKinematics.from_description()


def test_franky_sim_fr3_ranges_are_the_data_sheet_limits():
    ranges = description.load().joint_ranges
    for name, lo, hi in zip(franka.JOINT_NAMES, franka.LOWER, franka.UPPER):
        assert ranges[name] == pytest.approx((lo, hi), abs=1e-9), name


@pytest.mark.parametrize("point", ["flange", "palm", "palm_tips"])
def test_arm_jacobian_matches_finite_differences(kin, point):
    rng = np.random.default_rng(3)
    q = rng.uniform(kin.lower, kin.upper)
    p, r, jac_pos, jac_rot = kin.arm_jacobian(q, point)
    eps = 1e-6
    for j in range(7):
        dq = np.zeros(23)
        dq[j] = eps
        p_plus, r_plus, _, _ = kin.arm_jacobian(q + dq, point)
        p_minus, r_minus, _, _ = kin.arm_jacobian(q - dq, point)
        np.testing.assert_allclose((p_plus - p_minus) / (2 * eps), jac_pos[:, j], atol=1e-6)
        omega = Rotation.from_matrix(r_plus @ r_minus.T).as_rotvec() / (2 * eps)
        np.testing.assert_allclose(omega, jac_rot[:, j], atol=1e-6)
    ee_p, ee_r = kin.ee_pose(q)
    np.testing.assert_allclose(r, ee_r, atol=1e-12)
    if point == "flange":
        np.testing.assert_allclose(p, ee_p, atol=1e-12)


def test_ik_reaches_a_pose_the_arm_can_take(kin):
    rng = np.random.default_rng(4)
    goal = np.r_[franka.HOME + rng.uniform(-0.3, 0.3, 7), np.zeros(16)]
    goal[:7] = np.clip(goal[:7], kin.arm_lower + 0.05, kin.arm_upper - 0.05)
    p, r, _, _ = kin.arm_jacobian(goal, "palm")
    start = np.r_[franka.HOME, np.zeros(16)]
    arm = ik.solve_arm_ik(kin, start, p, r, point="palm", tol=1e-4, rotation_tol=1e-3)
    assert ik.arm_ik_error(kin, np.r_[arm, np.zeros(16)], p, r) < 1e-3
    assert np.all(arm >= kin.arm_lower) and np.all(arm <= kin.arm_upper)


def test_one_crop_for_images_pixels_and_intrinsics():
    raw_hw, size = (480, 640), 224
    scale, new_w, x0 = view_geometry(raw_hw, (size, size))
    assert scale == pytest.approx(224 / 480) and new_w == 299 and x0 == 37
    with pytest.raises(ValueError, match="too narrow"):
        view_geometry((480, 200), (size, size))
    image = np.zeros((480, 640, 3), np.uint8)
    assert model_view(image, (size, size)).shape == (size, size, 3)
    cam = HeadCamera()
    K = cam.intrinsics(640, 480)
    points = np.array([[0.4, 0.1, 0.05], [0.5, -0.1, 0.2]])
    uv_raw, _, _ = cam.project(points, 640, 480)
    pc = cam.to_camera(points)
    K_view = model_view_intrinsics(K, (640, 480), size)
    uv_view = (pc @ K_view.T)[:, :2] / pc[:, 2:]
    np.testing.assert_allclose(raw_to_view_pixels(uv_raw, raw_hw, (size, size)), uv_view, atol=1e-9)


def test_the_planner_loads_neither_the_simulation_nor_mujoco():
    code = ("import sys, numpy as np\n"
            "from dexwm_planner import actions, mpc, world_model, encoders\n"
            "kin = actions.default_kinematics()\n"
            "kin.keypoints_world(np.zeros(23))\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dexwm_sim', 'mujoco', 'rclpy'))\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]


def test_orbit_camera_at_the_default_pitch_and_azimuth_is_the_default_camera():
    from dexwm_robot.camera import DEFAULT_AZIMUTH_DEG, DEFAULT_LOOK_AT, DEFAULT_PITCH_DEG, HeadCamera

    default = HeadCamera()
    assert np.allclose(HeadCamera.orbit(DEFAULT_PITCH_DEG, DEFAULT_AZIMUTH_DEG).position, default.position)
    low = HeadCamera.orbit(30.0, DEFAULT_AZIMUTH_DEG)
    assert low.pitch_deg == pytest.approx(30.0) and low.look_at == DEFAULT_LOOK_AT
    assert np.linalg.norm(np.subtract(low.position, DEFAULT_LOOK_AT)) == pytest.approx(
        np.linalg.norm(np.subtract(default.position, DEFAULT_LOOK_AT)))
    for pitch in (0.0, 90.0, float("nan")):
        with pytest.raises(ValueError, match="pitch"):
            HeadCamera.orbit(pitch, 0.0)
    assert HeadCamera.from_view(()) == default and HeadCamera.from_view((30.0, DEFAULT_AZIMUTH_DEG)) == low
    with pytest.raises(ValueError, match="pitch, azimuth"):
        HeadCamera.from_view((30.0,))
    # The command lines' "PITCH,AZIMUTH".
    assert HeadCamera.parse_view("") == () and HeadCamera.parse_view("30,25") == (30.0, 25.0)
    for bad, match in (("30", "pitch, azimuth"), ("95,0", "pitch"), ("x,1", "PITCH,AZIMUTH"), ("1,2,3", "pitch, azimuth")):
        with pytest.raises(ValueError, match=match):
            HeadCamera.parse_view(bad)
