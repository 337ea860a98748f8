"""rosbag2 bags written with the `rosbags` library (no ROS) as `ros2 bag record` would store them.

The content is known in closed form so that an import can be checked exactly: the camera frame
with index i is a solid colour (R = i, G = 100, B = 200), and every joint moves linearly in time,
so linear interpolation between joint-state messages is exact.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dexwm_robot.allegro import JOINT_NAMES as HAND_JOINTS, to_thumb_first
from dexwm_robot.franka import JOINT_NAMES as ARM_JOINTS

T0_NS = 1_700_000_000 * 10**9   # an epoch time, as a real recording has
NS = 10**9


def arm_q(t: float) -> np.ndarray:
    """Arm joints [rad] at ``t`` seconds after the start (inside the FR3 limits for t in 0..10 s)."""
    return np.array([0.0, -0.5, 0.0, -2.2, 0.0, 1.8, 0.8]) + 0.02 * t * np.arange(1, 8) / 7


def hand_q(t: float) -> np.ndarray:
    """Allegro joints [rad], allegro_driver (index-first) order, inside the hand's limits for t in 0..10 s."""
    q = np.full(16, 0.2)
    q[12] = 0.5   # thumb j0 has a positive lower limit
    return q + 0.01 * t * np.linspace(0.5, 1.0, 16)


def frame_index(rgb_value: float) -> int:
    return int(round(rgb_value))


def write_bag(path: Path, storage: str = "sqlite3", seconds: float = 3.0, camera_hz: float = 15.0,
              joint_hz: float = 100.0, image_wh: tuple[int, int] = (320, 240), topics=None,
              camera_info: bool = True, gaps: dict | None = None, unsorted: bool = False, seed: int = 0) -> Path:
    """Write a bag folder at ``path``; returns it.

    ``topics``: subset of {"image", "arm", "hand"} to record (default all). ``gaps``: topic key -> (from_s,
    to_s) with no messages of that stream. ``unsorted``: messages are written in random order with receive
    times that disagree with their header stamps (as a loaded recorder writes them).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    Image, Info, JointState = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CameraInfo"], T["sensor_msgs/msg/JointState"]
    RoI = T["sensor_msgs/msg/RegionOfInterest"]
    topics = set(topics or ("image", "arm", "hand"))
    gaps = gaps or {}
    rng = np.random.default_rng(seed)
    w, h = image_wh

    def header(t_ns: int, frame: str):
        return Header(stamp=Time(sec=t_ns // NS, nanosec=t_ns % NS), frame_id=frame)

    def in_gap(key: str, t: float) -> bool:
        return key in gaps and gaps[key][0] <= t < gaps[key][1]

    records = []   # (topic key, receive time ns, message)
    if "image" in topics:
        for i in range(int(seconds * camera_hz)):
            t = i / camera_hz
            if in_gap("image", t):
                continue
            t_ns = T0_NS + round(t * NS)
            pixels = np.empty((h, w, 3), np.uint8)
            pixels[...] = (i % 256, 100, 200)
            records.append(("image", t_ns, Image(header=header(t_ns, "camera_color_optical_frame"), height=h, width=w,
                                                 encoding="rgb8", is_bigendian=0, step=3 * w, data=pixels.reshape(-1))))
            if camera_info:
                f = 0.9 * w
                records.append(("info", t_ns, Info(
                    header=header(t_ns, "camera_color_optical_frame"), height=h, width=w, distortion_model="plumb_bob",
                    d=np.zeros(5), k=np.array([f, 0, (w - 1) / 2, 0, f, (h - 1) / 2, 0, 0, 1.0]),
                    r=np.eye(3).reshape(-1), p=np.array([f, 0, (w - 1) / 2, 0, 0, f, (h - 1) / 2, 0, 0, 0, 1, 0.0]),
                    binning_x=0, binning_y=0, roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))))
    for key, names, q in (("arm", list(ARM_JOINTS), arm_q), ("hand", None, hand_q)):
        if key not in topics:
            continue
        for i in range(int(seconds * joint_hz) + 1):
            t = i / joint_hz
            if in_gap(key, t):
                continue
            t_ns = T0_NS + round(t * NS)
            pos = q(t)
            if names is None:
                # The hand's message lists its joints thumb first: the import must go by name.
                names_msg, pos = list(to_thumb_first(np.array(HAND_JOINTS))), to_thumb_first(pos)
            else:
                names_msg = names
            records.append((key, t_ns, JointState(header=header(t_ns, ""), name=names_msg, position=np.asarray(pos),
                                                  velocity=np.zeros(0), effort=np.zeros(0))))

    # Receive times trail the stamps (transport); unsorted: by up to 80 ms at random, in random write order.
    delays = rng.uniform(0.0, 0.08 if unsorted else 0.002, len(records))
    order = rng.permutation(len(records)) if unsorted else np.argsort([r[1] for r in records], kind="stable")
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    names = {"image": ("/camera/camera/color/image_raw", "sensor_msgs/msg/Image"),
             "info": ("/camera/camera/color/camera_info", "sensor_msgs/msg/CameraInfo"),
             "arm": ("/franka/joint_states", "sensor_msgs/msg/JointState"),
             "hand": ("/allegro/joint_states", "sensor_msgs/msg/JointState")}
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {key: writer.add_connection(topic, msgtype, typestore=ts)
                 for key, (topic, msgtype) in names.items() if any(r[0] == key for r in records)}
        for i in order:
            key, t_ns, msg = records[i]
            writer.write(conns[key], t_ns + int(delays[i] * NS), ts.serialize_cdr(msg, names[key][1]))
    return path
