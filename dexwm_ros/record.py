"""dexwm-record: record a lab (or simulated) episode for world-model fine-tuning.

    dexwm-record --out DIR (--extrinsics FILE | --sim-camera) [--duration S] [--rate HZ] [--size PX]

Subscribes to the camera (`/camera/camera/color/image_raw` + `camera_info`) and both joint states,
and at --rate Hz (5 Hz = the paper's 0.2 s steps) stores the latest frame, as the world model
sees it (resized to --size rows, centre-cropped to --size columns), with the 23 joint positions (fr3_joint1..7, then the Allegro joints in
dexwm_robot/allegro.py order). Ctrl-C or --duration ends the episode, which is written atomically
as DIR/episode_NNNNNN.h5 in the layout of dexwm_sim/FORMAT.md (frames, timestamps, joints,
camera/intrinsics, camera/extrinsics, camera/pose). Hand keypoints are not stored: the training data
reader computes them from the joints with the robot's forward kinematics. `dexwm-train` reads the
folder like simulated data (see the README, "Fine-tuning on lab data").

--extrinsics is the 4x4 world->camera transform of the hand-eye calibration (world = the Franka base
frame), as a .npy file or a YAML/JSON file holding a 4x4 list; --sim-camera takes the simulation's
head camera instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from dexwm_robot.camera import load_extrinsics
from dexwm_robot.joints import JOINT_NAMES
from dexwm_robot.view import model_view, model_view_intrinsics
# The model's frame step is the collector's control rate (5 Hz = the paper's 0.2 s): recorded and
# imported episodes use the same one.
from dexwm_sim.collect import CONTROL_HZ as FRAME_RATE_HZ

FORMAT_VERSION = 1


def next_episode_path(out: Path) -> Path:
    existing = sorted(out.glob("episode_*.h5"))
    index = int(existing[-1].stem.split("_")[1]) + 1 if existing else 0
    return out / f"episode_{index:06d}.h5"


def write_episode(path: Path, frames, stamps, joints, K: np.ndarray, world_to_camera: np.ndarray,
                  joint_names: list[str], rate_hz: float, extra_attrs: dict | None = None) -> None:
    """Write one recorded episode atomically (temporary file in the same folder, then rename).

    ``extra_attrs`` adds provenance attributes (``dexwm-import-bag`` names the source bag); the
    datasets stay those of dexwm_sim/FORMAT.md, so the training reader sees no difference.
    """
    import h5py

    frames = np.stack(frames)
    h, w = frames.shape[1:3]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("frames", data=frames, chunks=(1, h, w, 3), compression="lzf")
            f["timestamps"] = np.asarray(stamps, dtype=np.float64) - stamps[0]
            f["joints"] = np.asarray(joints, dtype=np.float64)
            cam = f.create_group("camera")
            cam["intrinsics"] = K
            cam["extrinsics"] = world_to_camera
            cam["pose"] = np.linalg.inv(world_to_camera)
            f.attrs.update(format_version=FORMAT_VERSION, kind="recorded", control_hz=rate_hz,
                           image_size=(w, h), joint_names=list(joint_names))
            f.attrs.update(extra_attrs or {})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run(args) -> int:
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, JointState

    from dexwm_robot.joints import ARM_JOINT_NAMES, HAND_JOINT_NAMES
    from dexwm_ros.image_conversion import image_to_numpy
    from dexwm_ros.joint_state import joint_vector
    from dexwm_ros.ros_time import seconds

    if args.sim_camera:
        from dexwm_robot.camera import HeadCamera

        world_to_camera = HeadCamera().world_to_camera
    else:
        world_to_camera = load_extrinsics(args.extrinsics)
    joint_names = list(JOINT_NAMES)
    args.out.mkdir(parents=True, exist_ok=True)

    lock = threading.Lock()
    latest: dict = {"image": None, "info": None, "arm": None, "hand": None}
    frames, stamps, joints = [], [], []

    rclpy.init()
    node = Node("dexwm_record")
    reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)

    def keep(key, convert=lambda msg: msg):
        def callback(msg):
            value = convert(msg)
            if value is not None:   # a malformed joint state is skipped, never recorded
                with lock:
                    latest[key] = value
        return callback

    node.create_subscription(Image, "/camera/camera/color/image_raw", keep("image"), reliable)
    node.create_subscription(CameraInfo, "/camera/camera/color/camera_info", keep("info"), 10)
    node.create_subscription(JointState, "/franka/joint_states",
                             keep("arm", lambda m: joint_vector(m, ARM_JOINT_NAMES)), 10)
    node.create_subscription(JointState, "/allegro/joint_states",
                             keep("hand", lambda m: joint_vector(m, HAND_JOINT_NAMES)), 10)
    spin = threading.Thread(target=rclpy.spin, args=(node,), daemon=True)
    spin.start()

    K = None
    last_image = None
    period = 1.0 / args.rate
    start = time.monotonic()
    next_tick = start
    print(f"dexwm-record: waiting for camera and joint states; recording at {args.rate:g} Hz "
          f"(Ctrl-C to finish)", flush=True)
    try:
        while args.duration is None or time.monotonic() - start < args.duration:
            with lock:
                image, info, arm, hand = latest["image"], latest["info"], latest["arm"], latest["hand"]
            if image is not None and info is not None and arm is not None and hand is not None \
                    and image is not last_image:
                rgb = image_to_numpy(image)
                if K is None:
                    K = model_view_intrinsics(np.array(info.k), (image.width, image.height), args.size)
                frames.append(model_view(rgb, (args.size, args.size)))
                stamps.append(seconds(image.header.stamp))
                joints.append(np.concatenate([arm, hand]))
                last_image = image
                if len(frames) % 25 == 0:
                    print(f"dexwm-record: {len(frames)} frames", flush=True)
            next_tick += period
            time.sleep(max(0.0, next_tick - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    if len(frames) < 2:
        print("dexwm-record: error: fewer than 2 frames recorded (are the camera and both joint-state "
              "topics publishing?)", file=sys.stderr)
        return 1
    path = next_episode_path(args.out)
    write_episode(path, frames, stamps, joints, K, world_to_camera, joint_names, args.rate)
    print(f"dexwm-record: wrote {path} ({len(frames)} frames)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dexwm-record", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="episode folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--extrinsics", type=Path, help="4x4 world->camera transform (.npy/.yaml/.json)")
    source.add_argument("--sim-camera", action="store_true", help="use the simulation's head camera")
    parser.add_argument("--duration", type=float, default=None, help="seconds to record (default: until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=FRAME_RATE_HZ,
                        help=f"frames per second (default {FRAME_RATE_HZ:g}, the model's frame step)")
    parser.add_argument("--size", type=int, default=224, help="stored frame size in pixels (square)")
    args = parser.parse_args(argv)
    if not (args.rate > 0 and args.size > 0):
        parser.error("--rate and --size must be positive")
    try:
        return run(args)
    except ValueError as e:
        print(f"dexwm-record: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
