"""dexwm-calibrate: hand-eye calibration of the static head camera (ChArUco board on the hand).

    dexwm-calibrate --sim [--json] [--poses N] [--seed S] [--out FILE]
    dexwm-calibrate --out calib.yaml [--min-poses N]          # real robot, poses by teleop
    dexwm-calibrate --write-board board.png                    # the board to print

Eye-to-hand: the camera stays where it is, a ChArUco board fixed to the hand is shown to it in
varied poses. Each pose pairs a camera image with the arm's joint positions; the solver
(dexwm_ros.handeye, ROS-free) returns the camera's pose in the robot base frame and writes the
calibration file the stack reads: the 4x4 world->camera transform as YAML (``extrinsics:=FILE`` of
the launch graph, ``dexwm-record --extrinsics``, ``dexwm-urdf --camera-pose``).

--sim runs in the MuJoCo simulation with a rendered board (a calibration-only scene variant,
dexwm_sim/calibration_scene.py): it moves the arm through N poses that present the board to the
head camera at varied positions and tilts (inverse kinematics, then the simulated PD control drives
the arm there), calibrates with the simulated camera's intrinsics, and reports the error against the
simulated camera's true pose (``translation_error_mm``, ``rotation_error_deg``).

On the real robot the arm is moved by teleop or hand guiding (the franka node keeps publishing
/franka/joint_states); press Enter to take a pose once the arm is still, ``s`` + Enter to solve and
write, ``q`` + Enter to quit. Images and intrinsics come from /camera/camera/color/image_raw and
camera_info (the RealSense driver's or our camera node's). Measure the printed square size: the
result's scale comes from it.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from dexwm_ros.handeye import MIN_SAMPLES, CharucoBoard, HandEyeCalibrator, BoardDetector, pose_error, write_calibration

SIM_IMAGE_SIZE = (1280, 960)
# Board centres are drawn from this box in the world frame (in front of the robot, between the table
# and the camera) and the board turned towards the camera, then tilted by up to these angles.
SIM_CENTRE = np.array([0.45, 0.0, 0.30])
SIM_CENTRE_SPREAD = np.array([0.08, 0.15, 0.08])
SIM_TILT_STD_DEG = np.array([15.0, 15.0, 25.0])   # about the board's x, y and its normal
SIM_SETTLE_S = 1.5


def _flange_pose(kinematics, q: np.ndarray) -> np.ndarray:
    """4x4 pose of the FR3 flange (the Allegro mount) in the world for 23 joint positions."""
    pos, rot = kinematics.ee_pose(q)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rot, pos
    return T


def _presenting_pose(rng, camera_position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A board centre and an orientation for the palm frame (board normal = palm +x) facing the camera."""
    from scipy.spatial.transform import Rotation

    centre = SIM_CENTRE + rng.uniform(-SIM_CENTRE_SPREAD, SIM_CENTRE_SPREAD)
    normal = camera_position - centre
    normal /= np.linalg.norm(normal)
    down = np.array([0.0, 0.0, -1.0])
    fingers = down - normal * (down @ normal)     # fingers point as far down as facing the camera allows
    fingers /= np.linalg.norm(fingers)
    facing = np.stack([normal, np.cross(fingers, normal), fingers], axis=1)
    tilt = Rotation.from_rotvec(facing @ (rng.normal(size=3) * np.radians(SIM_TILT_STD_DEG)))
    return centre, tilt.as_matrix() @ facing


def calibrate_sim(poses: int = 15, seed: int = 0, out: Path | None = None, log=print) -> dict:
    """Run the calibration in simulation; returns the report (errors against the true camera)."""
    from dexwm_robot.allegro import OPEN_POSE
    from dexwm_sim.calibration_scene import BOARD_POS, build_calibration_model
    from dexwm_robot.franka import HOME as ARM_HOME
    from dexwm_sim.scene import SimEnv

    import mujoco   # after dexwm_sim, which picks the headless GL backend before mujoco loads

    start = time.monotonic()
    board = CharucoBoard()
    env = SimEnv(scene=build_calibration_model(board.image(), board.size_m), render_size=SIM_IMAGE_SIZE)
    try:
        camera = env.camera
        calibrator = HandEyeCalibrator(BoardDetector(board, camera.intrinsics(*SIM_IMAGE_SIZE)))
        palm_site = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_SITE, "allegro_palm_center")
        board_from_site = np.asarray(BOARD_POS) - env.model.site_pos[palm_site]
        env.reset_robot(ARM_HOME, OPEN_POSE)
        rng = np.random.default_rng(seed)
        tried = 0
        while len(calibrator) < poses and tried < 3 * poses:
            tried += 1
            centre, rotation = _presenting_pose(rng, np.asarray(camera.position))
            q_arm = env.solve_arm_ik(centre - rotation @ board_from_site, rotation, q_init=ARM_HOME,
                                     hand=OPEN_POSE)
            # Move there under the simulated PD control (the path a real arm takes), then read the
            # joints the arm actually reached: those, not the targets, go into the calibration.
            env.command(arm=q_arm, hand=OPEN_POSE, duration=SIM_SETTLE_S / 2)
            env.advance(SIM_SETTLE_S)
            # mj_step leaves body poses one integration step behind qpos: recompute them so the image
            # shows the arm at exactly the joints that are read (a real camera and encoder agree too).
            mujoco.mj_forward(env.model, env.data)
            q = env.joint_positions()
            seen = calibrator.add(env.render(*SIM_IMAGE_SIZE), _flange_pose(env.kinematics, q))
            log(f"pose {tried}: " + (f"{seen.corners} corners, {seen.reprojection_px:.3f} px" if seen
                                     else "board not seen, skipped"))
        result = calibrator.solve()
    finally:
        env.close()
    translation_mm, rotation_deg = pose_error(result.world_to_camera, camera.world_to_camera)
    if out is not None:
        write_calibration(out, result)
    return {"translation_error_mm": translation_mm, "rotation_error_deg": rotation_deg,
            "poses": result.samples, "poses_tried": tried, "reprojection_px": result.reprojection_px,
            "image_size": list(SIM_IMAGE_SIZE), "seconds": time.monotonic() - start,
            "out": str(out) if out else None}


# --- real robot: a thin ROS adapter -------------------------------------------------------------------
def calibrate_ros(out: Path, min_poses: int, board: CharucoBoard, still_rad: float = 2e-3) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, JointState

    from dexwm_ros.image_conversion import image_to_numpy
    from dexwm_ros.joint_state import joint_vector
    from dexwm_ros.ros_time import seconds
    from dexwm_robot.kinematics import DOF, RobotKinematics
    from dexwm_robot.franka import JOINT_NAMES as ARM_JOINTS

    kinematics = RobotKinematics.from_description()
    latest = {}
    lock = threading.Lock()
    rclpy.init()
    node = rclpy.create_node("dexwm_calibrate")
    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)

    def keep(key):
        def store(msg):
            with lock:
                latest[key] = msg
        return store

    node.create_subscription(Image, "/camera/camera/color/image_raw", keep("image"), qos)
    node.create_subscription(CameraInfo, "/camera/camera/color/camera_info", keep("info"), qos)
    node.create_subscription(JointState, "/franka/joint_states", keep("joints"), 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def arm_joints():
        with lock:
            msg = latest.get("joints")
        return None if msg is None else joint_vector(msg, ARM_JOINTS)

    calibrator = None
    print(f"dexwm-calibrate: move the arm so that the camera sees the board, then Enter (at least "
          f"{min_poses} poses, varied tilts); 's' + Enter solves and writes {out}; 'q' + Enter quits",
          flush=True)
    try:
        for line in sys.stdin:
            command = line.strip().lower()
            if command == "q":
                return 1
            if command == "s":
                if calibrator is None or len(calibrator) < min_poses:
                    print(f"have {0 if calibrator is None else len(calibrator)} poses, need {min_poses}", flush=True)
                    continue
                result = calibrator.solve()
                write_calibration(out, result)
                print(f"wrote {out}: {result.samples} poses, RMS reprojection {result.reprojection_px:.3f} px",
                      flush=True)
                return 0
            q_before, asked = arm_joints(), time.time()
            with lock:
                info = latest.get("info")
            if q_before is None or info is None:
                print("no /franka/joint_states or camera_info yet", flush=True)
                continue
            if calibrator is None:
                calibrator = HandEyeCalibrator(BoardDetector(board, np.reshape(info.k, (3, 3)), info.d or None))
            deadline = time.time() + 2.0
            image = None
            while time.time() < deadline and image is None:   # a frame taken after the key press
                with lock:
                    msg = latest.get("image")
                if msg is not None and seconds(msg.header.stamp) >= asked:
                    image = image_to_numpy(msg)
                time.sleep(0.02)
            q_after = arm_joints()
            if image is None:
                print("no new camera image within 2 s", flush=True)
                continue
            if np.max(np.abs(q_after - q_before)) > still_rad:
                print("the arm moved while the image was taken: hold it still and press Enter again", flush=True)
                continue
            q = np.zeros(DOF)
            q[:len(ARM_JOINTS)] = q_after
            seen = calibrator.add(image, _flange_pose(kinematics, q))
            print(f"pose {len(calibrator)}: {seen.corners} corners" if seen else "board not found: pose skipped",
                  flush=True)
    finally:
        # Stop the spinning thread before the node and the context go away (else rcl aborts at exit).
        executor.shutdown(timeout_sec=2.0)
        spinner.join(timeout=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 1


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="dexwm-calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sim", action="store_true", help="calibrate in the MuJoCo simulation (no ROS)")
    parser.add_argument("--json", action="store_true", help="--sim: print the report as JSON")
    parser.add_argument("--out", type=Path, help="calibration file to write (YAML 4x4 world->camera)")
    parser.add_argument("--poses", type=int, default=15, help="--sim: poses to collect (default 15)")
    parser.add_argument("--seed", type=int, default=0, help="--sim: seed of the pose sequence")
    parser.add_argument("--min-poses", type=int, default=12, help="real robot: poses before solving (default 12)")
    parser.add_argument("--write-board", type=Path, help="write the ChArUco board image (PNG) to print, and exit")
    args = parser.parse_args(argv)
    if args.poses < MIN_SAMPLES or args.min_poses < MIN_SAMPLES:
        parser.error(f"at least {MIN_SAMPLES} poses are needed")
    if not (args.sim or args.write_board or args.out):
        parser.error("give --sim, --write-board FILE or (real robot) --out FILE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    board = CharucoBoard()
    if args.write_board:
        import cv2

        cv2.imwrite(str(args.write_board), board.image(px_per_square=354))   # 30 mm squares at 300 dpi
        print(f"wrote {args.write_board}: {board.squares_x}x{board.squares_y} squares of "
              f"{board.square_m * 1000:g} mm, markers {board.marker_m * 1000:g} mm, {board.dictionary}")
        return 0
    if args.sim:
        try:
            report = calibrate_sim(args.poses, args.seed, args.out,
                                   log=(lambda _m: None) if args.json else print)
        except ValueError as e:
            print(f"dexwm-calibrate: error: {e}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(report))
        else:
            print(f"camera pose error: {report['translation_error_mm']:.2f} mm, {report['rotation_error_deg']:.3f} deg "
                  f"({report['poses']} poses, {report['reprojection_px']:.3f} px RMS, {report['seconds']:.1f} s)")
        return 0
    return calibrate_ros(args.out, args.min_poses, board)


if __name__ == "__main__":
    sys.exit(main())
