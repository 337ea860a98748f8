"""The generated URDF (dexwm_sim/urdf.py): parsed by urdfdom (through Pinocchio, the C++ parser that
robot_state_publisher also uses), its forward kinematics equals the planner's, the camera frame sits
at the calibration, and the CLI writes it."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pinocchio as pin
import pytest
import yaml

from dexwm_robot import allegro as hand_joints
from dexwm_robot.camera import HeadCamera
from dexwm_robot.kinematics import MANO_FINGERS, RobotKinematics
from dexwm_robot.joints import JOINT_NAMES as ALL_JOINTS
from dexwm_sim.model import build_model
from dexwm_sim.urdf import CAMERA_FRAME, robot_urdf

ROOT = Path(__file__).resolve().parents[1]
DEXWM_URDF = [sys.executable, str(Path(sys.prefix) / "bin" / "dexwm-urdf")]
# The frames the planner's keypoints are made of, in RobotKinematics' MANO order (palm, then per
# finger 3 joint frames and the tip); the little finger repeats the ring finger.
POINT_FRAMES = ["allegro_palm_center"] + [f"allegro_{f}_{p}" for f in MANO_FINGERS
                                          for p in ("proximal", "medial", "distal", "tip")]


@pytest.fixture(scope="module")
def scene():
    return build_model()


@pytest.fixture(scope="module")
def urdf_model(scene):
    return pin.buildModelFromXML(robot_urdf(scene))


def _pin_q(model, q):
    out = pin.neutral(model)
    for name, value in zip(ALL_JOINTS, q):
        out[model.joints[model.getJointId(name)].idx_q] = value
    return out


def test_joints_names_and_limits_come_from_the_scene(scene, urdf_model):
    model = urdf_model
    assert model.nq == 23
    assert set(model.names[1:]) == set(ALL_JOINTS)
    for name, lo, hi in zip(ALL_JOINTS, scene.lower, scene.upper):
        j = model.joints[model.getJointId(name)].idx_q
        assert model.lowerPositionLimit[j] == pytest.approx(lo, abs=1e-12)
        assert model.upperPositionLimit[j] == pytest.approx(hi, abs=1e-12)
    # The hand's limits are the driver's (dexwm_robot/allegro.py), through the scene.
    hand = [model.joints[model.getJointId(n)].idx_q for n in hand_joints.JOINT_NAMES]
    np.testing.assert_allclose(model.upperPositionLimit[hand], hand_joints.UPPER, atol=1e-12)
    assert model.effortLimit[model.joints[model.getJointId("fr3_joint1")].idx_v] == pytest.approx(87.0)


def test_forward_kinematics_equals_the_planners(scene, urdf_model):
    model, data = urdf_model, urdf_model.createData()
    kin = RobotKinematics.from_description()
    rng = np.random.default_rng(7)
    worst = 0.0
    for q in rng.uniform(scene.lower, scene.upper, size=(50, 23)):
        pin.framesForwardKinematics(model, data, _pin_q(model, q))
        urdf_points = np.array([data.oMf[model.getFrameId(n)].translation for n in POINT_FRAMES])
        planner = kin.keypoints_world(q)
        worst = max(worst, np.abs(urdf_points - planner[:17]).max())
        pos, rot = kin.ee_pose(q)
        mount = data.oMf[model.getFrameId("allegro_mount")]
        np.testing.assert_allclose(mount.translation, pos, atol=1e-6)
        np.testing.assert_allclose(mount.rotation, rot, atol=1e-6)
    assert worst < 1e-6, worst


def test_camera_frame_is_the_calibration(scene, tmp_path):
    default = pin.buildModelFromXML(robot_urdf(scene))
    data = default.createData()
    pin.framesForwardKinematics(default, data, pin.neutral(default))
    np.testing.assert_allclose(data.oMf[default.getFrameId(CAMERA_FRAME)].homogeneous,
                               HeadCamera().camera_pose, atol=1e-9)

    moved = HeadCamera(position=(1.0, -0.4, 0.7), look_at=(0.3, 0.1, 0.0))
    model = pin.buildModelFromXML(robot_urdf(scene, world_to_camera=moved.world_to_camera))
    data = model.createData()
    pin.framesForwardKinematics(model, data, pin.neutral(model))
    np.testing.assert_allclose(data.oMf[model.getFrameId(CAMERA_FRAME)].homogeneous, moved.camera_pose,
                               atol=1e-9)
    assert not pin.buildModelFromXML(robot_urdf(scene, camera=False)).existFrame(CAMERA_FRAME)


def test_meshes_resolve_to_files_and_the_hand_is_drawn(scene):
    root = ET.fromstring(robot_urdf(scene).split("\n", 2)[2])
    meshes = [m.get("filename") for m in root.iter("mesh")]
    assert meshes, "the FR3 links should keep franky-sim's meshes"
    for uri in meshes:
        assert Path(unquote(urlparse(uri).path)).is_file(), uri
    palm = root.find("link[@name='allegro_palm']")
    assert palm.find("visual/geometry/box") is not None


def test_cli_writes_the_urdf_with_a_calibration_file(tmp_path, scene):
    moved = HeadCamera(position=(0.9, 0.5, 0.8))
    calib = tmp_path / "calib.yaml"
    calib.write_text(yaml.safe_dump(moved.world_to_camera.tolist()))
    out = tmp_path / "robot.urdf"
    r = subprocess.run(DEXWM_URDF + ["--out", str(out), "--camera-pose", str(calib)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    model = pin.buildModelFromXML(out.read_text())
    data = model.createData()
    pin.framesForwardKinematics(model, data, pin.neutral(model))
    np.testing.assert_allclose(data.oMf[model.getFrameId(CAMERA_FRAME)].homogeneous, moved.camera_pose, atol=1e-9)

    bad = tmp_path / "bad.yaml"
    bad.write_text("[[1, 0], [0, 1]]")
    r = subprocess.run(DEXWM_URDF + ["--camera-pose", str(bad)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "4x4" in r.stderr
