"""What the simulation shows the graph: joint states, camera frames, episode state and goal images.

The sim node hands these callbacks to its SimRunner, which calls them from the physics thread.
"""
from __future__ import annotations

import math
import time

import numpy as np
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState

from camera_driver.sources import Intrinsics
from dexwm_robot.joints import ARM_DOF, ARM_JOINT_NAMES, HAND_JOINT_NAMES
from dexwm_ros.camera_node import camera_info_msg
from dexwm_ros.image_conversion import numpy_to_image
from dexwm_ros.msg import EpisodeState


class SimPublishers:
    """The camera (realsense-ros layout), /franka and /allegro joint states, /sim/episode, /sim/goal_image."""

    def __init__(self, node, frame_id: str, K: np.ndarray, width: int, height: int, depth: bool):
        self.node, self.frame_id = node, frame_id
        self.intrinsics = Intrinsics(width, height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.image_pub = node.create_publisher(Image, "/camera/camera/color/image_raw", reliable)
        self.info_pub = node.create_publisher(CameraInfo, "/camera/camera/color/camera_info", reliable)
        self.depth_pub = None
        if depth:
            self.depth_pub = node.create_publisher(Image, "/camera/camera/aligned_depth_to_color/image_raw", reliable)
        self.joint_pubs = ((node.create_publisher(JointState, "/franka/joint_states", 10), ARM_JOINT_NAMES,
                            slice(0, ARM_DOF)),
                           (node.create_publisher(JointState, "/allegro/joint_states", 10), HAND_JOINT_NAMES,
                            slice(ARM_DOF, None)))
        self.episode_pub = node.create_publisher(EpisodeState, "/sim/episode", 10)
        self.goal_pub = node.create_publisher(Image, "/sim/goal_image", latched)

    def _live(self) -> bool:
        return self.node.context.ok()   # Ctrl-C shut the context down: the physics thread runs on briefly

    def image(self, rgb: np.ndarray) -> Image:
        return numpy_to_image(rgb, time.time(), self.frame_id, "rgb8")

    def on_state(self, snap) -> None:
        if snap is None or not self._live():
            return
        stamp = self.node.get_clock().now().to_msg()
        for pub, names, sl in self.joint_pubs:
            msg = JointState(name=list(names), position=snap.position[sl].tolist(),
                             velocity=snap.velocity[sl].tolist(), effort=snap.effort[sl].tolist())
            msg.header.stamp = stamp
            pub.publish(msg)

    def on_frame(self, frame) -> None:
        if not self._live():
            return
        now = time.time()
        self.image_pub.publish(numpy_to_image(frame.rgb, now, self.frame_id, "rgb8"))
        self.info_pub.publish(camera_info_msg(self.intrinsics, now, self.frame_id))
        if self.depth_pub is not None and frame.depth is not None:
            mm = np.clip(np.nan_to_num(frame.depth * 1000.0, nan=0.0, posinf=0.0), 0, 65535).astype(np.uint16)
            self.depth_pub.publish(numpy_to_image(mm, now, self.frame_id, "16UC1"))

    def on_episode(self, status, episode) -> None:
        if not self._live():
            return
        msg = EpisodeState(task=status.task, seed=int(status.seed), step=int(status.step),
                           success_now=bool(status.success_now), success_streak=int(status.streak),
                           required_streak=int(status.required_streak), success=bool(status.success),
                           distance=float(status.distance) if math.isfinite(status.distance) else float("nan"))
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.episode_pub.publish(msg)

    def on_goal(self, result) -> None:
        if self._live() and result.goal_image is not None:
            self.goal_pub.publish(self.image(result.goal_image))
