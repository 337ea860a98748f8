"""dexwm-calibrate: the hand-eye solver on exact poses, the simulated calibration (rendered ChArUco
board) within 5 mm / 0.5 degrees of the simulated camera, and the real-robot path over ROS topics."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dexwm_ros.handeye import (MIN_SAMPLES, BoardDetector, CharucoBoard, HandEyeCalibrator, pose_error,
                               solve_closed_form)
from dexwm_robot.camera import HeadCamera, load_extrinsics
from rosutil import SpinThread

CALIBRATE = [sys.executable, str(Path(sys.prefix) / "bin" / "dexwm-calibrate")]


def _pose(rng, spread=0.3):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rng.normal(size=3) * 0.6).as_matrix()
    T[:3, 3] = rng.normal(size=3) * spread
    return T


def test_closed_form_recovers_exact_poses():
    rng = np.random.default_rng(3)
    X, Y = _pose(rng, 1.0), _pose(rng, 0.1)
    A = [_pose(rng) for _ in range(8)]
    B = [np.linalg.inv(X) @ a @ Y for a in A]
    X_est, Y_est = solve_closed_form(A, B)
    np.testing.assert_allclose(X_est, X, atol=1e-9)
    np.testing.assert_allclose(Y_est, Y, atol=1e-9)


def test_solver_needs_enough_poses():
    calibrator = HandEyeCalibrator(BoardDetector(CharucoBoard(), HeadCamera().intrinsics(640, 480)))
    with pytest.raises(ValueError, match=f"at least {MIN_SAMPLES}"):
        calibrator.solve()


def test_printed_board_is_detected_and_a_blank_image_is_not():
    board = CharucoBoard()
    image = board.image(px_per_square=60)
    canvas = np.full((image.shape[0] + 80, image.shape[1] + 80, 3), 255, np.uint8)
    canvas[40:-40, 40:-40] = image
    K = np.array([[500.0, 0, canvas.shape[1] / 2], [0, 500.0, canvas.shape[0] / 2], [0, 0, 1]])
    detector = BoardDetector(board, K)
    seen = detector.detect(canvas)
    inner = (board.squares_x - 1) * (board.squares_y - 1)
    assert seen is not None and seen.corners == inner and seen.reprojection_px < 0.5
    assert detector.detect(np.full_like(canvas, 128)) is None


def test_default_scene_has_no_board():
    import mujoco

    from dexwm_sim.model import build_model

    assert mujoco.mj_name2id(build_model().model, mujoco.mjtObj.mjOBJ_GEOM, "calibration_board") < 0


def test_sim_calibration_meets_the_bounds_and_writes_the_stacks_file(tmp_path):
    out = tmp_path / "calib.yaml"
    t0 = time.monotonic()
    r = subprocess.run(CALIBRATE + ["--sim", "--json", "--out", str(out)], capture_output=True, text=True,
                       timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    print("dexwm-calibrate --sim --json:", report)
    assert report["translation_error_mm"] < 5.0
    assert report["rotation_error_deg"] < 0.5
    assert report["poses"] >= 10
    assert elapsed < 60
    # The file is what dexwm-record --extrinsics, dexwm-urdf and the launch graph read.
    written = load_extrinsics(out)
    assert pose_error(written, HeadCamera().world_to_camera)[0] == pytest.approx(report["translation_error_mm"])


def test_write_board_gives_a_printable_board(tmp_path):
    png = tmp_path / "board.png"
    r = subprocess.run(CALIBRATE + ["--write-board", str(png)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "30 mm" in r.stdout
    image = cv2.imread(str(png))
    board = CharucoBoard()
    assert image.shape[:2] == (board.squares_y * 354, board.squares_x * 354)


def test_real_robot_mode_takes_poses_from_ros_topics(node_env, rclpy_context, tmp_path):
    """The ROS adapter: images, camera_info and /franka/joint_states come over DDS (published here
    from the calibration scene), poses are taken on Enter, 's' solves and writes the file."""
    import mujoco
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, JointState

    from dexwm_robot.allegro import OPEN_POSE
    from dexwm_ros.calibrate import SIM_IMAGE_SIZE, _presenting_pose
    from dexwm_ros.image_conversion import numpy_to_image
    from dexwm_sim.calibration_scene import BOARD_POS, build_calibration_model
    from dexwm_robot.franka import HOME as ARM_HOME, JOINT_NAMES as ARM_JOINTS
    from dexwm_sim.scene import SimEnv

    board = CharucoBoard()
    env = SimEnv(scene=build_calibration_model(board.image(), board.size_m), render_size=SIM_IMAGE_SIZE)
    camera = env.camera
    site = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_SITE, "allegro_palm_center")
    offset = np.asarray(BOARD_POS) - env.model.site_pos[site]
    rng = np.random.default_rng(5)
    poses = []
    while len(poses) < 6:
        centre, rotation = _presenting_pose(rng, np.asarray(camera.position))
        q = env.solve_arm_ik(centre - rotation @ offset, rotation, q_init=ARM_HOME, hand=OPEN_POSE)
        env.reset_robot(q, OPEN_POSE)
        frame = env.render(*SIM_IMAGE_SIZE)
        if BoardDetector(board, camera.intrinsics(*SIM_IMAGE_SIZE)).detect(frame) is not None:
            poses.append((q, frame))
    env.close()

    node = rclpy.create_node("calibration_feed", context=rclpy_context)
    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(Image, "/camera/camera/color/image_raw", qos)
    info_pub = node.create_publisher(CameraInfo, "/camera/camera/color/camera_info", qos)
    joints_pub = node.create_publisher(JointState, "/franka/joint_states", 10)
    current = {"k": 0}

    def publish():
        q, frame = poses[current["k"]]
        stamp = node.get_clock().now().to_msg()
        image_pub.publish(numpy_to_image(frame, time.time(), "camera_color_optical_frame", "rgb8"))
        info = CameraInfo(width=SIM_IMAGE_SIZE[0], height=SIM_IMAGE_SIZE[1])
        info.k = camera.intrinsics(*SIM_IMAGE_SIZE).ravel().tolist()
        info.header.stamp = stamp
        info_pub.publish(info)
        joints = JointState(name=list(ARM_JOINTS), position=q.tolist())
        joints.header.stamp = stamp
        joints_pub.publish(joints)

    node.create_timer(0.1, publish)
    spin = SpinThread(SingleThreadedExecutor(context=rclpy_context), node)

    out = tmp_path / "calib.yaml"
    proc = subprocess.Popen(CALIBRATE + ["--out", str(out), "--min-poses", str(len(poses))], env=node_env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def expect(text, timeout=30.0):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(line)
            if text in line:
                return line
        pytest.fail(f"no {text!r} from dexwm-calibrate; got: {''.join(seen)}")

    try:
        expect("then Enter", timeout=60)
        for k in range(len(poses)):
            current["k"] = k
            time.sleep(0.5)   # the new pose's frames and joints are on the wire
            for _attempt in range(20):
                proc.stdin.write("\n")
                proc.stdin.flush()
                line = lines.get(timeout=30)
                if line.startswith(f"pose {k + 1}:"):
                    break
                # Until DDS has matched all three topics the tool says what it still waits for.
                if not ("yet" in line or "no new camera image" in line):
                    pytest.fail(line)
                time.sleep(0.5)
            else:
                pytest.fail(f"pose {k + 1} was never taken")
        proc.stdin.write("s\n")
        proc.stdin.flush()
        expect("wrote")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        spin.close()
    translation_mm, rotation_deg = pose_error(load_extrinsics(out), camera.world_to_camera)
    assert translation_mm < 5.0 and rotation_deg < 0.5
