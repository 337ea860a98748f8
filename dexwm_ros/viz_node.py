"""ROS 2 node ``dexwm_viz`` behind ``dexwm-viz live``: subscribes to the graph's topics and hands
their content, as arrays, to :class:`dexwm_ros.viz.ViewerLog` (rerun). Topic names and types are
those of docs/CONTRACT.md; the goal image and the rollout are latched (transient local) by the
planner, so a viewer started later still gets the current ones."""
from __future__ import annotations

import time

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from visualization_msgs.msg import Marker, MarkerArray

from dexwm_ros.camera_node import IMAGE_QOS
from dexwm_ros.image_conversion import ImageConversionError, image_to_numpy
from dexwm_ros.msg import PlannerStatus
from dexwm_ros.node_main import run_node
from dexwm_ros.ros_time import seconds

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class VizNode(Node):
    def __init__(self, view, camera_hz: float = 10.0, joints_hz: float = 30.0):
        super().__init__("dexwm_viz")
        self.view = view
        self.camera_period = 1.0 / camera_hz
        self.joints_period = 1.0 / joints_hz
        self._last_shown: dict[str, float] = {}   # stream -> monotonic time it was last shown
        self._last_state = ""
        self.create_subscription(Image, "/camera/camera/color/image_raw", self._on_camera, IMAGE_QOS)
        self.create_subscription(Image, "/dexwm/goal_image", self._image_logger("planner/goal"), LATCHED)
        self.create_subscription(Image, "/dexwm/predicted_rollout", self._image_logger("planner/predicted_rollout"),
                                 LATCHED)
        self.create_subscription(MarkerArray, "/dexwm/keypoints", self._on_keypoints, 10)
        self.create_subscription(JointState, "/franka/joint_states", self._joint_logger("arm"), 10)
        self.create_subscription(JointState, "/allegro/joint_states", self._joint_logger("hand"), 10)
        self.create_subscription(PlannerStatus, "/dexwm/status", self._on_status, 10)

    def _image(self, path: str, msg: Image, jpeg_quality: int | None = None) -> None:
        try:
            rgb = image_to_numpy(msg)
        except ImageConversionError as exc:
            self.get_logger().warning(f"{path}: image not shown: {exc}", throttle_duration_sec=10.0)
            return
        self.view.time(seconds(msg.header.stamp))
        self.view.image(path, rgb, jpeg_quality)

    def _due(self, stream: str, period: float) -> bool:
        """Whether ``stream`` was last shown at least ``period`` seconds ago (and is shown now)."""
        now = time.monotonic()
        if now - self._last_shown.get(stream, -float("inf")) < period:
            return False
        self._last_shown[stream] = now
        return True

    def _on_camera(self, msg: Image) -> None:
        # The camera runs at 30 Hz; a few frames a second are enough to watch, and keep the viewer light.
        if self._due("camera", self.camera_period):
            self._image("camera", msg, jpeg_quality=85)

    def _image_logger(self, path: str):
        return lambda msg: self._image(path, msg)

    def _joint_logger(self, group: str):
        def on_joints(msg: JointState) -> None:
            # The Franka publishes at up to 1 kHz and the Allegro at 333 Hz: a plot needs far fewer.
            if len(msg.name) != len(msg.position) or not self._due(group, self.joints_period):
                return
            self.view.time(seconds(msg.header.stamp))
            self.view.joints(group, msg.name, msg.position)
        return on_joints

    def _on_keypoints(self, msg: MarkerArray) -> None:
        # One time for the whole array: the planner's DELETEALL marker carries no stamp, and a clear
        # logged later than the new points would hide them.
        stamps = [seconds(m.header.stamp) for m in msg.markers if m.action == Marker.ADD]
        self.view.time(max(stamps) if stamps else None)
        for m in msg.markers:
            if m.action == Marker.DELETEALL:
                self.view.clear("world/planned")
            elif m.action == Marker.ADD and m.points:
                pts = np.array([(p.x, p.y, p.z) for p in m.points], dtype=np.float32)
                colour = tuple(int(round(255 * c)) for c in (m.color.r, m.color.g, m.color.b))
                self.view.keypoints(f"world/planned/step_{m.id}", pts, colour, radius=max(m.scale.x / 2, 0.002))

    def _on_status(self, msg: PlannerStatus) -> None:
        self.view.time(seconds(msg.header.stamp), mpc_step=msg.step)
        self.view.scalar("planner/cost/current", msg.current_cost)
        self.view.scalar("planner/cost/best", msg.best_cost)
        self.view.scalar("planner/cost/planned", msg.planned_cost)
        self.view.scalar("planner/replan_seconds", msg.replan_seconds)
        if msg.state != self._last_state:
            self._last_state = msg.state
            self.view.text("planner/log", f"{msg.task or 'planner'}: {msg.state} (step {msg.step})",
                           level="WARN" if msg.state in ("failed", "paused_stale_input") else "INFO")


def run(view, camera_hz: float = 10.0, joints_hz: float = 30.0) -> int:
    return run_node("dexwm_viz", lambda: VizNode(view, camera_hz, joints_hz), num_threads=1)
