"""dexwm-import-bag: turn rosbag2 recordings (``ros2 bag record``) into training episodes.

    dexwm-import-bag BAG [BAG ...] --out DIR (--extrinsics FILE | --sim-camera)
                     [--intrinsics FILE] [--rate HZ] [--size PX] [--max-gap S] [--min-frames N]

A bag is a rosbag2 folder (``metadata.yaml`` + ``.db3`` sqlite3 or ``.mcap`` files) holding the
camera image (``/camera/camera/color/image_raw``, sensor_msgs/Image), ``/franka/joint_states`` and
``/allegro/joint_states`` (sensor_msgs/JointState); ``/camera/camera/color/camera_info`` gives the
intrinsics when it was recorded (else ``--intrinsics`` or ``--sim-camera``). It is read with the
``rosbags`` library: no ROS installation is needed, and nothing here imports rclpy.

Output: the episodes ``dexwm-record`` writes (same writer, dexwm_sim/FORMAT.md layout, ``DIR/
episode_NNNNNN.h5``, numbered after those already there), which ``dexwm-train`` and
``dexwm_planner.datasets.read_sim_episode`` read. Each stores frames at the model's frame step
(``--rate``, default the collector's 5 Hz = 0.2 s), as the world model sees them (resized to
``--size`` rows, centre-cropped to ``--size`` columns, ``dexwm_robot.view``), and the 23 joint
positions at each frame's time (fr3_joint1..7, then the Allegro joints by name in
dexwm_robot/allegro.py order).

Resampling. Times are the messages' header stamps (the capture time; the bag's receive time only
where a stamp is zero), so the order in which messages were written does not matter: each stream
is sorted by stamp, and a repeated stamp keeps its first message. Ticks every 1/rate s run over
the span all three streams cover, from its first camera frame; a tick takes the camera frame
nearest to it (within a quarter step, each frame used once), and the joint positions are
interpolated linearly to that frame's stamp between the two neighbouring joint-state messages, so
image and joints belong together. The stored timestamps are the ticks: the episode is evenly spaced,
as the training reader expects (it takes the frame step from their median difference).

Gaps and dropped topics. A topic missing from the bag (or without messages) is an error naming it
and listing what the bag holds; nothing is written. A stream that starts late or stops early
limits the import to the span all streams cover; a gap inside (no frame within a quarter step of a
tick, or joint states further apart than ``--max-gap`` around a frame) ends the episode there and
the next one starts after it: that bag imports as several episodes, each of at least
``--min-frames`` frames, and the summary names every skipped stretch and why.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from dexwm_robot.camera import load_extrinsics
from dexwm_robot.joints import ARM_JOINT_NAMES as ARM_JOINTS, HAND_JOINT_NAMES as HAND_JOINTS
from dexwm_robot.view import model_view, model_view_intrinsics
from dexwm_ros.image_conversion import ImageConversionError, image_to_numpy
from dexwm_ros.joint_state import joint_vector
from dexwm_ros.record import FRAME_RATE_HZ, next_episode_path, write_episode

IMAGE_TOPIC = "/camera/camera/color/image_raw"
INFO_TOPIC = "/camera/camera/color/camera_info"
ARM_TOPIC = "/franka/joint_states"
HAND_TOPIC = "/allegro/joint_states"
IMAGE_TYPE = "sensor_msgs/msg/Image"
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
NS = 1_000_000_000


class BagImportError(ValueError):
    """A bag that cannot be imported, with the reason in words."""


@dataclasses.dataclass
class Topics:
    image: str = IMAGE_TOPIC
    info: str = INFO_TOPIC
    arm: str = ARM_TOPIC
    hand: str = HAND_TOPIC


@dataclasses.dataclass
class JointStream:
    topic: str
    stamps: np.ndarray      # (n,) int64 ns, sorted, unique
    positions: np.ndarray   # (n, k)
    skipped: int            # messages without every joint or with non-finite positions

    def at(self, t: int, max_gap_ns: int) -> np.ndarray | None:
        """Positions interpolated to ``t``; None when no sample on both sides within ``max_gap_ns``."""
        i = int(np.searchsorted(self.stamps, t, side="left"))
        if i < len(self.stamps) and self.stamps[i] == t:
            return self.positions[i]
        if i == 0 or i == len(self.stamps):
            return None
        t0, t1 = int(self.stamps[i - 1]), int(self.stamps[i])
        if t1 - t0 > max_gap_ns:
            return None
        w = (t - t0) / (t1 - t0)
        return (1.0 - w) * self.positions[i - 1] + w * self.positions[i]


@dataclasses.dataclass
class ImportResult:
    bag: Path
    episodes: list[Path]
    frames: list[int]                 # per episode
    span_s: tuple[float, float]       # covered by all streams, seconds from the bag's first stamp
    skipped: list[str]                # human-readable gaps and dropped messages

    def summary(self) -> str:
        lines = [f"{self.bag}: {len(self.episodes)} episode(s), frames {self.frames}, "
                 f"span {self.span_s[0]:.2f}-{self.span_s[1]:.2f} s"]
        lines += [f"  wrote {p}" for p in self.episodes]
        lines += [f"  skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


def _stamp_ns(msg, log_time_ns: int) -> int:
    stamp = msg.header.stamp
    ns = int(stamp.sec) * NS + int(stamp.nanosec)
    return ns if ns > 0 else int(log_time_ns)


def _connections(reader, topic: str, msgtype: str, required: bool):
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns or sum(c.msgcount for c in conns) == 0:
        if not required:
            return []
        held = sorted({f"{c.topic} ({c.msgtype}, {c.msgcount})" for c in reader.connections if c.msgcount})
        raise BagImportError(f"the bag has no messages on {topic} (dropped or not recorded); it holds: "
                             f"{', '.join(held) or 'nothing'}")
    wrong = sorted({c.msgtype for c in conns if c.msgtype != msgtype})
    if wrong:
        raise BagImportError(f"{topic} has type {', '.join(wrong)}, expected {msgtype}")
    return conns


def _joint_stream(reader, conns, names) -> JointStream:
    stamps, rows, skipped = [], [], 0
    for conn, log_time, raw in reader.messages(connections=conns):
        msg = reader.deserialize(raw, conn.msgtype)
        q = joint_vector(msg, names)
        if q is None:
            skipped += 1
            continue
        stamps.append(_stamp_ns(msg, log_time))
        rows.append(q)
    topic = conns[0].topic
    if not rows:
        raise BagImportError(f"no usable message on {topic}: each lacks one of the joints {', '.join(names)} "
                             "or has non-finite positions")
    stamps = np.asarray(stamps, dtype=np.int64)
    order = np.argsort(stamps, kind="stable")
    stamps, rows = stamps[order], np.asarray(rows, dtype=np.float64)[order]
    keep = np.r_[True, np.diff(stamps) > 0]   # a repeated stamp keeps its first message
    return JointStream(topic, stamps[keep], rows[keep], skipped)


def _image_stamps(reader, conns) -> np.ndarray:
    stamps = [_stamp_ns(reader.deserialize(raw, conn.msgtype), log_time)
              for conn, log_time, raw in reader.messages(connections=conns)]
    return np.unique(np.asarray(stamps, dtype=np.int64))   # sorted, a repeated stamp once


def _intrinsics(reader, conns, intrinsics: np.ndarray | None) -> tuple[np.ndarray | None, tuple[int, int] | None]:
    """K and (width, height) of the first camera_info message; ``intrinsics`` when given wins."""
    if intrinsics is not None or not conns:
        return intrinsics, None
    for conn, _, raw in reader.messages(connections=conns):
        msg = reader.deserialize(raw, conn.msgtype)
        K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
        if np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0:
            return K, (int(msg.width), int(msg.height))
    return None, None


def plan_frames(image_stamps: np.ndarray, arm: JointStream, hand: JointStream, step_ns: int, max_gap_ns: int):
    """The resampling: per tick over the common span, the chosen frame stamp and joints, or the reason it
    is unusable. Returns (ticks, frame_stamps (or -1), joints (or None), reasons (or ''), span)."""
    # Ticks start on the first frame inside the span all streams cover, so that a camera whose rate is
    # a multiple of the model's gives exactly its own frames.
    joints_from = max(int(arm.stamps[0]), int(hand.stamps[0]))
    end = min(int(image_stamps[-1]), int(arm.stamps[-1]), int(hand.stamps[-1]))
    first = int(np.searchsorted(image_stamps, joints_from))
    start = int(image_stamps[first]) if first < len(image_stamps) else joints_from
    if end - start < step_ns:
        raise BagImportError(
            f"the camera and joint-state streams overlap for {max(0, end - start) / NS:.3f} s, less than one "
            f"frame step ({step_ns / NS:g} s): nothing to import")
    ticks = np.arange(start, end + 1, step_ns, dtype=np.int64)
    # A frame further than a quarter step from its tick would stretch or shrink that step (and the
    # action the model learns from it) by more than 25 %: such a tick counts as a camera gap.
    tolerance = step_ns // 4
    chosen, joints, reasons = [], [], []
    used = set()

    def take(stamp: int, q, reason: str = ""):
        chosen.append(stamp)
        joints.append(q)
        reasons.append(reason)

    for t in ticks:
        j = int(np.searchsorted(image_stamps, t))
        candidates = [k for k in (j - 1, j) if 0 <= k < len(image_stamps)]
        k = min(candidates, key=lambda c: abs(int(image_stamps[c]) - int(t)))
        ts = int(image_stamps[k])
        if abs(ts - int(t)) > tolerance or k in used:
            take(-1, None, f"no camera frame within {tolerance / NS:g} s")
            continue
        q_arm, q_hand = arm.at(ts, max_gap_ns), hand.at(ts, max_gap_ns)
        if q_arm is None or q_hand is None:
            missing = " and ".join(s.topic for s, q in ((arm, q_arm), (hand, q_hand)) if q is None)
            take(-1, None, f"no {missing} within {max_gap_ns / NS:g} s")
            continue
        used.add(k)
        take(ts, np.concatenate([q_arm, q_hand]))
    return ticks, np.asarray(chosen, dtype=np.int64), joints, reasons, (start, end)


def _runs(usable: list[bool]) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive True values."""
    runs, begin = [], None
    for i, ok in enumerate(list(usable) + [False]):
        if ok and begin is None:
            begin = i
        elif not ok and begin is not None:
            runs.append((begin, i))
            begin = None
    return runs


def import_bag(bag: Path, out: Path, world_to_camera: np.ndarray, *, rate_hz: float = FRAME_RATE_HZ,
               size: int = 224, intrinsics: np.ndarray | None = None, sim_camera: bool = False,
               max_gap_s: float = 0.1, min_frames: int = 2, topics: Topics = Topics()) -> ImportResult:
    """Import one rosbag2 folder into ``out`` (see the module docstring). Raises BagImportError."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore


    bag = Path(bag)
    if bag.is_file() and (bag.parent / "metadata.yaml").is_file():
        bag = bag.parent   # a .db3/.mcap inside its bag folder
    if not bag.is_dir() or not (bag / "metadata.yaml").is_file():
        raise BagImportError(f"{bag}: not a rosbag2 folder (no metadata.yaml; `ros2 bag reindex` rebuilds it)")
    if not (rate_hz > 0 and size > 0 and max_gap_s > 0 and min_frames >= 2):
        raise BagImportError("rate, size and max gap must be positive and min frames at least 2")
    step_ns = int(round(NS / rate_hz))
    max_gap_ns = int(round(max_gap_s * NS))
    skipped: list[str] = []
    try:
        # Bags from `ros2 bag record` carry their message definitions; the default store covers older ones.
        reader = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
    except Exception as exc:  # rosbags raises its own error types per storage plugin
        raise BagImportError(f"{bag}: cannot open the bag: {exc}") from exc
    try:
        image_conns = _connections(reader, topics.image, IMAGE_TYPE, required=True)
        arm_conns = _connections(reader, topics.arm, JOINT_STATE_TYPE, required=True)
        hand_conns = _connections(reader, topics.hand, JOINT_STATE_TYPE, required=True)
        info_conns = _connections(reader, topics.info, INFO_TYPE, required=False)
        arm = _joint_stream(reader, arm_conns, ARM_JOINTS)
        hand = _joint_stream(reader, hand_conns, HAND_JOINTS)
        for stream in (arm, hand):
            if stream.skipped:
                skipped.append(f"{stream.skipped} message(s) on {stream.topic} without every joint or with "
                               "non-finite positions")
        image_stamps = _image_stamps(reader, image_conns)
        K, info_wh = _intrinsics(reader, info_conns, intrinsics)

        ticks, chosen, joints, reasons, (start, end) = plan_frames(image_stamps, arm, hand, step_ns, max_gap_ns)
        origin = min(int(image_stamps[0]), int(arm.stamps[0]), int(hand.stamps[0]))
        last = max(int(image_stamps[-1]), int(arm.stamps[-1]), int(hand.stamps[-1]))
        rel = lambda ns: (ns - origin) / NS  # noqa: E731
        for topic, stamps in ((topics.image, image_stamps), (arm.topic, arm.stamps), (hand.topic, hand.stamps)):
            if stamps[0] - origin > step_ns // 2:
                skipped.append(f"{rel(origin):.2f}-{rel(int(stamps[0])):.2f} s: {topic} starts late")
            if last - stamps[-1] > step_ns // 2:
                skipped.append(f"{rel(int(stamps[-1])):.2f}-{rel(last):.2f} s: {topic} stops early")
        runs = _runs([c >= 0 for c in chosen])
        i = 0
        for begin, stop in runs + [(len(ticks), len(ticks))]:
            if begin > i:
                why = sorted({r for r in reasons[i:begin] if r})
                skipped.append(f"{rel(int(ticks[i])):.2f}-{rel(int(ticks[begin - 1])):.2f} s: {'; '.join(why)}")
            i = stop
        short = [(b, s) for b, s in runs if s - b < min_frames]
        for b, s in short:
            skipped.append(f"{rel(int(ticks[b])):.2f}-{rel(int(ticks[s - 1])):.2f} s: only {s - b} frame(s) "
                           f"between gaps (--min-frames {min_frames})")
        runs = [(b, s) for b, s in runs if s - b >= min_frames]
        if not runs:
            raise BagImportError(f"{bag}: no stretch of at least {min_frames} frames with camera and both joint "
                                 "states; " + "; ".join(skipped))

        # Second pass: decode only the chosen frames, straight to the model's view (a bag of 640x480
        # frames would not fit in memory whole).
        wanted = {int(chosen[k]): k for b, s in runs for k in range(b, s)}
        views: dict[int, np.ndarray] = {}
        raw_wh = None
        for conn, log_time, raw in reader.messages(connections=image_conns):
            msg = reader.deserialize(raw, conn.msgtype)
            ts = _stamp_ns(msg, log_time)
            k = wanted.get(ts)
            if k is None or k in views:
                continue
            try:
                rgb = image_to_numpy(msg)
            except ImageConversionError as exc:
                raise BagImportError(f"{topics.image} at {rel(ts):.2f} s: {exc}") from exc
            if raw_wh is None:
                raw_wh = (rgb.shape[1], rgb.shape[0])
            elif raw_wh != (rgb.shape[1], rgb.shape[0]):
                raise BagImportError(f"{topics.image}: the image size changes from {raw_wh[0]}x{raw_wh[1]} to "
                                     f"{rgb.shape[1]}x{rgb.shape[0]} at {rel(ts):.2f} s")
            views[k] = model_view(rgb, (size, size))
    finally:
        reader.close()

    if K is None:
        if not sim_camera:
            raise BagImportError(f"no intrinsics: the bag has no {topics.info}; give --intrinsics FILE (3x3)")
        from dexwm_robot.camera import HeadCamera

        K = HeadCamera().intrinsics(*raw_wh)
    elif info_wh is not None and info_wh != raw_wh:
        raise BagImportError(f"{topics.info} is for {info_wh[0]}x{info_wh[1]} images, the frames are "
                             f"{raw_wh[0]}x{raw_wh[1]}")
    K_view = model_view_intrinsics(K, raw_wh, size)

    out.mkdir(parents=True, exist_ok=True)
    paths, counts = [], []
    for b, s in runs:
        path = next_episode_path(out)
        write_episode(path, [views[k] for k in range(b, s)], [ticks[k] / NS for k in range(b, s)],
                      [joints[k] for k in range(b, s)], K_view, world_to_camera,
                      list(ARM_JOINTS) + list(HAND_JOINTS), rate_hz,
                      extra_attrs={"source": f"rosbag2:{bag.name}", "source_start_s": rel(int(chosen[b]))})
        paths.append(path)
        counts.append(s - b)
    return ImportResult(bag=bag, episodes=paths, frames=counts, span_s=(rel(start), rel(end)), skipped=skipped)


def _load_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if not path.is_file():
        raise BagImportError(f"file not found: {path}")
    if path.suffix == ".npy":
        M = np.load(path)
    else:
        import yaml

        M = yaml.safe_load(path.read_text())
    M = np.asarray(M, dtype=np.float64)
    if M.shape != shape or not np.all(np.isfinite(M)):
        raise BagImportError(f"{path}: expected a finite {shape[0]}x{shape[1]} matrix, got shape {M.shape}")
    return M


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dexwm-import-bag", description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring (resampling, gaps) and the README.")
    parser.add_argument("bags", type=Path, nargs="+", metavar="BAG", help="rosbag2 folder(s) (.db3 or .mcap)")
    parser.add_argument("--out", type=Path, required=True, help="episode folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--extrinsics", type=Path, help="4x4 world->camera transform (.npy/.yaml/.json)")
    source.add_argument("--sim-camera", action="store_true", help="the simulation's head camera (extrinsics, "
                        "and intrinsics when the bag has no camera_info)")
    parser.add_argument("--intrinsics", type=Path, help="3x3 K of the raw images (.npy/.yaml/.json); default: "
                        "the bag's camera_info")
    parser.add_argument("--rate", type=float, default=FRAME_RATE_HZ,
                        help=f"frames per second (default {FRAME_RATE_HZ:g}, the model's frame step)")
    parser.add_argument("--size", type=int, default=224, help="stored frame size in pixels (square)")
    parser.add_argument("--max-gap", type=float, default=0.1,
                        help="longest interval between joint-state messages to interpolate across [s]")
    parser.add_argument("--min-frames", type=int, default=2, help="shortest episode written")
    parser.add_argument("--image-topic", default=IMAGE_TOPIC)
    parser.add_argument("--info-topic", default=INFO_TOPIC)
    parser.add_argument("--arm-topic", default=ARM_TOPIC)
    parser.add_argument("--hand-topic", default=HAND_TOPIC)
    args = parser.parse_args(argv)
    try:
        if args.sim_camera:
            from dexwm_robot.camera import HeadCamera

            world_to_camera = HeadCamera().world_to_camera
        else:
            world_to_camera = load_extrinsics(args.extrinsics)
        K = _load_matrix(args.intrinsics, (3, 3)) if args.intrinsics else None
        topics = Topics(args.image_topic, args.info_topic, args.arm_topic, args.hand_topic)
        for bag in args.bags:
            result = import_bag(bag, args.out, world_to_camera, rate_hz=args.rate, size=args.size, intrinsics=K,
                                sim_camera=args.sim_camera, max_gap_s=args.max_gap, min_frames=args.min_frames,
                                topics=topics)
            print(result.summary(), flush=True)
    except ValueError as exc:   # BagImportError and the extrinsics checks
        print(f"dexwm-import-bag: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
