"""ROS 2 node `allegro`: thin adapter over allegro_driver.controller.HandController.

Publishes /allegro/joint_states (16 joints, names and order from dexwm_robot.allegro) and
/diagnostics; takes position targets on /allegro/joint_command (sensor_msgs/JointState, by name or
all 16 in order) and the /allegro/move_joints action (dexwm_ros.move_joints: the semantics every
driver shares, out-of-limit targets refused, never clamped); /allegro/stop (std_srvs/Trigger) holds
the current position (stop_mode "hold") or switches the torques off until the next command
("torque_off"). kp/kd can be changed live, within their bounds. In the hand's error state (encoder
silence, a wrong hand) the torques are zero, the cause goes on /diagnostics at once, and the node
recovers by itself when the encoders return.

The 333 Hz PD loop (which also follows the goals' trajectories) runs in the controller's own thread.
With can_interface:=virtual emulate_hand:=true the hand's firmware emulator runs in this process
(python-can's virtual bus only links endpoints of one process). Parameters:
:class:`dexwm_ros.allegro_settings.AllegroSettings`.
"""
from __future__ import annotations

import contextlib
import math
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from allegro_driver import report
from allegro_driver.controller import CommandRejected, HandController, State, open_bus
from allegro_driver.emulator import HandEmulator
from dexwm_robot import allegro as joints
from dexwm_ros.allegro_settings import AllegroSettings
from dexwm_ros.move_joints import GoalRefused, MoveJointsServer, check_command_age, full_points, joint_index
from dexwm_ros.node_main import run_node
from dexwm_ros.node_parameters import NodeParameters
from dexwm_ros.ros_time import seconds

_LEVELS = {report.OK: DiagnosticStatus.OK, report.WARN: DiagnosticStatus.WARN, report.ERROR: DiagnosticStatus.ERROR}


class AllegroNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__("allegro", **node_kwargs)
        self.params = NodeParameters(self, AllegroSettings, apply=self._apply_parameters)
        s = self.params.values
        self._config = s.controller_config()
        self._buses = []
        self.emulator: HandEmulator | None = None
        try:
            if s.emulate_hand:
                self._buses.append(open_bus(s.can_interface, s.can_channel, s.can_bitrate))
                self.emulator = HandEmulator(self._buses[-1], hand=s.hand, device_id=self._config.device_id).start()
                self.get_logger().info(f"hand emulator running on {s.can_interface}:{s.can_channel}")
            elif s.can_interface == "virtual":
                self.get_logger().warning(
                    "can_interface is virtual but emulate_hand is false: a virtual bus only links "
                    "endpoints of this process, so no hand will answer (set emulate_hand:=true)")
            self._buses.append(open_bus(s.can_interface, s.can_channel, s.can_bitrate))
        except Exception as exc:
            self.close()
            raise RuntimeError(f"cannot open CAN bus interface={s.can_interface!r} channel={s.can_channel!r}: "
                               f"{exc}") from exc
        self.controller = HandController(self._buses[-1], self._config)
        self.controller.start()

        self._last_warn = {}
        self._last_state = None
        self._state_pub = self.create_publisher(JointState, "/allegro/joint_states", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        timers = MutuallyExclusiveCallbackGroup()
        self.create_timer(1.0 / s.publish_rate_hz, self._publish_state, callback_group=timers)
        self.create_timer(1.0 / s.diagnostics_rate_hz, self._publish_diagnostics, callback_group=timers)
        self.create_subscription(JointState, "/allegro/joint_command", self._on_command, 10)
        self.create_service(Trigger, "/allegro/stop", self._on_stop)
        self.move_joints = MoveJointsServer(self, "/allegro/move_joints", self.controller,
                                            tolerance_param="goal_tolerance", time_limit_param="goal_time_limit_s",
                                            report=self._report, callback_group=ReentrantCallbackGroup())
        self.get_logger().info(f"allegro ({s.hand} hand) on {s.can_interface}:{s.can_channel}, PD at "
                               f"{self._config.control_rate_hz:.0f} Hz")

    def destroy_node(self):
        self.close()
        super().destroy_node()

    def close(self) -> None:
        """Controller (zero torques, streaming off, servo off), emulator, buses; copes with a
        constructor interrupted part-way (Ctrl-C during start-up, a bus that did not open)."""
        for part in (getattr(self, "controller", None), getattr(self, "emulator", None)):
            if part is not None:
                part.close()
        for bus in getattr(self, "_buses", []):
            with contextlib.suppress(Exception):  # shutting down anyway
                bus.shutdown()
        self._buses = []

    def _warn(self, text: str) -> None:
        """Log a rejected command, at most once per second per distinct reason."""
        now = time.monotonic()
        if now - self._last_warn.get(text, -math.inf) > 1.0:
            self._last_warn[text] = now
            self.get_logger().warning(text)

    def _report(self, problem: str | None, refused: bool = False) -> None:
        if problem and refused:
            self.controller.note_rejected(problem)
            self.get_logger().warning(f"rejected: {problem}")
        elif problem:
            self.get_logger().info(f"ended: {problem}")

    def _apply_parameters(self, settings: AllegroSettings, changed: set[str]) -> None:
        gains = sorted(changed & {"kp", "kd"})
        if gains:   # checked before they were accepted (AllegroSettings.problem)
            self.controller.set_gains(kp=settings.kp if "kp" in gains else None,
                                      kd=settings.kd if "kd" in gains else None)
            self.get_logger().info(f"gains changed: {', '.join(gains)}")

    def _publish_state(self) -> None:
        st = self.controller.status()
        if st.state is not self._last_state:  # log transitions (error entry/exit) once
            self._log_transition(st)
            self._last_state = st.state
        if st.stamp == 0.0:
            return  # no encoder reading yet: publish nothing rather than zeros
        msg = JointState(name=list(joints.JOINT_NAMES), position=st.position.tolist(), velocity=st.velocity.tolist(),
                         effort=st.effort.tolist())
        msg.header.stamp = self.get_clock().now().to_msg()
        self._state_pub.publish(msg)

    def _log_transition(self, st) -> None:
        # One call site per severity: rclpy raises ValueError when a call site changes severity.
        text = f"hand state {st.state.value}" + (f": {st.reason}" if st.reason else "")
        if st.state is State.ERROR:
            self.get_logger().error(text)
            self._publish_diagnostics()  # the cause goes out at once, not at the next 1 Hz tick
        elif self._last_state is State.ERROR:
            self.get_logger().info(f"{text} (recovered from the error)")
        else:
            self.get_logger().info(text)

    def _publish_diagnostics(self) -> None:
        st = self.controller.status()
        level, text = report.health(st, self.params.values.temperature_warn_c)
        values = report.status_values(st, self._config.hand, *self.controller.gains)
        status = DiagnosticStatus(level=_LEVELS[level], name="allegro: hand", message=text,
                                  hardware_id=st.serial or "allegro",
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def _on_command(self, msg: JointState) -> None:
        try:
            check_command_age(seconds(msg.header.stamp), self.get_clock().now().nanoseconds * 1e-9,
                              self.params.values.max_command_age_s, "joint_command")
            target = full_points(joint_index(msg.name, self.controller), [msg.position], self.controller)[0]
        except GoalRefused as exc:
            self.controller.note_rejected(str(exc))
            return self._warn(f"joint_command rejected, hand keeps its target: {exc}")
        try:
            self.controller.set_target(target)   # pre-empts a running goal
        except CommandRejected as exc:   # counted by the controller
            self._warn(f"joint_command rejected, hand keeps its target: {exc}")

    def _on_stop(self, request, response):
        response.message = self.controller.stop("stopped by /allegro/stop", mode=self.params.values.stop_mode)
        response.success = True
        self.get_logger().info(f"stop: {response.message}")
        return response


def main(args=None) -> int:
    return run_node("allegro", AllegroNode, args, startup_errors=(RuntimeError, ValueError), startup_exit_code=1)


if __name__ == "__main__":
    raise SystemExit(main())
