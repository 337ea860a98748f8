"""ROS 2 node ``franka``: a thin adapter over :class:`franka_driver.arm.FrankaArm` (franky).

- publishes ``/franka/joint_states`` (fr3_joint1..7) at ``rate_hz`` and ``/diagnostics``
  (connection, robot mode, last error) once a second;
- action ``/franka/move_joints``: the one MoveJoints server (dexwm_ros.move_joints), shared semantics;
- topic ``/franka/joint_command`` (JointTrajectory), fire-and-forget, checked as a goal is: a
  streaming sender must send at least every ``watchdog_timeout_s`` while the arm should keep moving;
- services ``/franka/stop`` and ``/franka/recover`` (std_srvs/Trigger).

Refusals and failures are logged and shown on /diagnostics; losing the robot aborts the running goal
with ROBOT_ERROR, the node stays up and reconnects every ``reconnect_period_s``. Panda (FER) arms
need franky built against libfranka 0.9.x (see franka_driver.arm). Parameters:
:class:`dexwm_ros.franka_settings.FrankaSettings` (a live change is checked, then applied).
"""
from __future__ import annotations

import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dexwm_robot.franka import JOINT_NAMES
from dexwm_robot.joint_group import RUNNING, TIMED_OUT
from dexwm_ros.franka_settings import FrankaSettings
from dexwm_ros.move_joints import (GoalRefused, MoveJointsServer, check_command_age, check_timing, full_points,
                                   joint_index)
from dexwm_ros.node_main import run_node
from dexwm_ros.node_parameters import NodeParameters
from dexwm_ros.ros_time import seconds
from franka_driver.arm import CommandRejected, FrankaArm, RobotUnavailable

# Live settings the arm core reads from its configuration at its next use.
_ARM_LIMITS = ("max_joint_step", "watchdog_timeout_s", "reconnect_period_s")


class FrankaNode(Node):
    def __init__(self):
        super().__init__("franka")
        self.params = NodeParameters(self, FrankaSettings, apply=self._apply_parameters)
        self.config = self.params.values.arm_config()
        self.arm = FrankaArm(self.config)

        self.state_pub = self.create_publisher(JointState, "~/joint_states", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        group = ReentrantCallbackGroup()
        self.create_timer(1.0, self._publish_diagnostics, callback_group=group)
        # Commands of a stream apply one at a time, in the order sent: in the reentrant group two
        # could run at once, and an older one could pre-empt the newer.
        self.create_subscription(JointTrajectory, "~/joint_command", self._on_joint_command, 10,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(Trigger, "~/stop", self._on_stop, callback_group=group)
        self.create_service(Trigger, "~/recover", self._on_recover, callback_group=group)
        self.move_joints = MoveJointsServer(self, "~/move_joints", self.arm, tolerance_param="goal_tolerance",
                                            time_limit_param="default_time_limit_s", report=self._report,
                                            callback_group=group, move_kwargs={"source": "move_joints"})
        self._problem = ""  # last rejected command / failure, shown on /diagnostics until the next success
        self._logged_error = ""
        self._reported_watchdog = 0   # id of the last topic motion whose watchdog stop was reported
        # State reads and supervision run in their own thread on an absolute schedule: an rclpy timer
        # in a busy executor on a small machine loses ticks (measured about 50 of 100 Hz here). It also
        # connects (at once, then every reconnect_period_s): a connect to an unreachable host blocks
        # for about a minute and must not hold up the node's start.
        self._stopping = threading.Event()
        # Ctrl-C shuts the context down before destroy_node runs: stop publishing from then on.
        self.context.on_shutdown(self._stopping.set)
        self._state_thread = threading.Thread(target=self._state_loop, name="franka_state", daemon=True)
        self._state_thread.start()

    def _state_loop(self):
        period = 1.0 / self.params.values.rate_hz
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            try:
                self._on_state_tick()
            except Exception as exc:  # never let a surprise kill the state stream
                if self._stopping.is_set() or not self.context.ok():
                    break  # shutting down
                self.get_logger().error(f"state update failed: {exc!r}")
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay < -period:  # fell far behind (e.g. a blocking reconnect): do not burst
                next_tick, delay = time.monotonic(), 0.0
            self._stopping.wait(max(0.0, delay))   # a shutdown ends the wait at once

    def _apply_parameters(self, settings: FrankaSettings, changed: set[str]) -> None:
        for name in changed.intersection(_ARM_LIMITS):
            setattr(self.config, name, getattr(settings, name))
        if "relative_dynamics_factor" in changed:
            try:
                self.arm.set_relative_dynamics_factor(settings.relative_dynamics_factor)
            except Exception as exc:  # a lost robot: the core keeps the factor for the next connection
                self.get_logger().warning(f"relative_dynamics_factor not passed to the robot now: {exc}")

    def _on_state_tick(self):
        was_connected = self.arm.connected
        state = self.arm.update()
        if state is None:
            if self.arm.last_error and self.arm.last_error != self._logged_error:
                self._logged_error = self.arm.last_error
                # Each attempt blocks until libfranka gives up (about a minute for an unreachable
                # host): say so, rather than promise a retry every reconnect_period_s.
                self.get_logger().error(f"{self.arm.last_error}; retrying {self.config.reconnect_period_s:g} s "
                                        "after each failed attempt (an attempt to an unreachable host "
                                        "blocks for about 60 s)")
                self._publish_diagnostics()
            return
        if not was_connected:
            self._logged_error = ""
            self.get_logger().info(f"connected to the Franka at {self.config.robot_ip}")
        msg = JointState(name=list(JOINT_NAMES), position=state.position.tolist(),
                         velocity=state.velocity.tolist(), effort=state.effort.tolist())
        msg.header.stamp = self.get_clock().now().to_msg()
        self.state_pub.publish(msg)
        cmd = self.arm.command
        if cmd is not None and cmd.source == "joint_command" and cmd.status == TIMED_OUT \
                and cmd.id != self._reported_watchdog:
            self._reported_watchdog = cmd.id
            self._report(f"no new command for {cmd.time_limit:.2f} s while moving: stopped and holding")

    def _report(self, problem: str | None, refused: bool = False):
        """A refusal or failure (logged, on /diagnostics), or None: a command started, all clear."""
        self._problem = problem or ""
        if problem:
            self.get_logger().warning(problem)
            self._publish_diagnostics()

    def _publish_diagnostics(self):
        status = DiagnosticStatus(name="franka: arm", hardware_id=self.config.robot_ip)
        state = self.arm.last_state
        cmd = self.arm.command
        if not self.arm.connected:
            status.level = DiagnosticStatus.ERROR
            status.message = self.arm.last_error or f"connecting to the Franka at {self.config.robot_ip}"
        elif state is not None and state.robot_mode not in ("Idle", "Move"):
            status.level = DiagnosticStatus.ERROR
            status.message = f"robot mode {state.robot_mode}; call /franka/recover"
        elif self._problem:
            status.level, status.message = DiagnosticStatus.WARN, self._problem
        else:
            status.level = DiagnosticStatus.OK
            status.message = "moving" if cmd is not None and cmd.status == RUNNING else "holding"
        status.values = [
            KeyValue(key="connected", value=str(self.arm.connected)),
            KeyValue(key="robot_mode", value=state.robot_mode if state else "unknown"),
            KeyValue(key="command", value=f"{cmd.id} {cmd.source} {cmd.status}" if cmd else "none"),
            KeyValue(key="last_error", value=self.arm.last_error),
            KeyValue(key="relative_dynamics_factor", value=f"{self.config.relative_dynamics_factor:g}"),
        ]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)

    def _on_joint_command(self, msg: JointTrajectory):
        try:
            check_command_age(seconds(msg.header.stamp), self.get_clock().now().nanoseconds * 1e-9,
                              self.params.values.max_command_age_s, "joint_command")
            check_timing(seconds(p.time_from_start) for p in msg.points)
            points = full_points(joint_index(msg.joint_names, self.arm), (p.positions for p in msg.points), self.arm)
            self.arm.move(points, source="joint_command")
            self._report(None)
        except (CommandRejected, GoalRefused, RobotUnavailable) as exc:
            self._report(f"joint_command rejected: {exc}")

    def _on_stop(self, request, response):
        try:
            response.message = self.arm.stop("stopped by /franka/stop")
            response.success = True
        except RobotUnavailable as exc:
            response.success, response.message = False, str(exc)
        self.get_logger().info(f"stop: {response.message}")
        return response

    def _on_recover(self, request, response):
        response.success, response.message = self.arm.recover()
        if response.success:
            self._problem = ""
        self.get_logger().info(f"recover: {response.message}")
        self._publish_diagnostics()
        return response

    def destroy_node(self):
        if not hasattr(self, "_stopping"):  # the constructor failed part-way
            return super().destroy_node()
        self._stopping.set()
        self._state_thread.join(timeout=2.0)  # may sit in a blocking connect: it is a daemon
        self.arm.close()
        super().destroy_node()


def main(args=None) -> int:
    return run_node("franka", FrankaNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
