"""ROS 2 node `joint_state_merger`: one ``/joint_states`` from the arm's and the hand's.

Thin adapter over dexwm_ros.joint_state_merge.JointStateMerger: subscribes to each topic of
``sources`` (default ``/franka/joint_states`` and ``/allegro/joint_states``, which the drivers and
the sim node publish), publishes the merged sensor_msgs/JointState on ``/joint_states`` (what
robot_state_publisher reads) on every incoming message. A malformed message is dropped with a
throttled warning naming the reason.
"""
from __future__ import annotations

import sys

from rclpy.node import Node
from sensor_msgs.msg import JointState

from dexwm_ros.joint_state_merge import JointSample, JointStateMerger, RejectedSample
from dexwm_ros.joint_state_merger_settings import JointStateMergerSettings
from dexwm_ros.node_main import run_node
from dexwm_ros.node_parameters import NodeParameters
from dexwm_ros.ros_time import seconds


class JointStateMergerNode(Node):
    def __init__(self) -> None:
        super().__init__("joint_state_merger")
        settings = NodeParameters(self, JointStateMergerSettings).values
        sources = list(settings.sources)
        self.merger = JointStateMerger(sources, settings.max_age_s)
        self.publisher = self.create_publisher(JointState, "/joint_states", 10)
        for topic in sources:
            self.create_subscription(JointState, topic, lambda msg, t=topic: self._on_state(t, msg), 10)
        self.get_logger().info(f"merging {', '.join(sources)} into /joint_states")

    def _on_state(self, topic: str, msg: JointState) -> None:
        sample = JointSample(names=tuple(msg.name), position=tuple(msg.position), velocity=tuple(msg.velocity),
                             effort=tuple(msg.effort), stamp=seconds(msg.header.stamp))
        try:
            merged = self.merger.update(topic, sample)
        except RejectedSample as exc:
            self.get_logger().warning(f"dropped a joint state: {exc}", throttle_duration_sec=5.0)
            return
        out = JointState()
        out.header.stamp = msg.header.stamp if sample.stamp == merged.stamp else self._stamp(merged.stamp)
        out.name, out.position, out.velocity, out.effort = (merged.names, merged.position, merged.velocity,
                                                            merged.effort)
        self.publisher.publish(out)

    @staticmethod
    def _stamp(t: float):
        from builtin_interfaces.msg import Time

        sec = int(t // 1)
        return Time(sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


def main(args=None) -> int:
    return run_node("joint_state_merger", JointStateMergerNode, args, num_threads=1)


if __name__ == "__main__":
    sys.exit(main())
