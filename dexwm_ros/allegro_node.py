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
(python-can's virtual bus only links endpoints of one process).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import numpy as np

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from allegro_driver import report
from allegro_driver.controller import (GAIN_BOUNDS, CommandRejected, ControllerConfig, HandController, State,
                                       open_bus, validate_gains)
from allegro_driver.emulator import HandEmulator
from dexwm_robot import allegro as joints
from dexwm_ros.move_joints import (COMMAND_AGE_RANGE, MAX_COMMAND_AGE_PARAMETER, TIME_LIMIT_RANGE, TOLERANCE_RANGE,
                                   GoalRefused, MoveJointsServer, check_command_age, full_points, joint_index)
from dexwm_ros.node_main import run_node
from dexwm_ros.parameter_bounds import first_problem, ranged
from dexwm_ros.ros_time import seconds

_LIVE_GAINS = ("kp", "kd")
# Live parameters with bounds (declared and checked on every set); gains are checked per joint.
LIVE_BOUNDS = {
    **GAIN_BOUNDS,
    "goal_tolerance": TOLERANCE_RANGE,
    "goal_time_limit_s": TIME_LIMIT_RANGE,
    "max_command_age_s": COMMAND_AGE_RANGE,
    "temperature_warn_c": (20.0, 120.0),
}
_LEVELS = {report.OK: DiagnosticStatus.OK, report.WARN: DiagnosticStatus.WARN, report.ERROR: DiagnosticStatus.ERROR}
_d = ControllerConfig()
# Start-up settings (read-only): name -> (default, description[, (low, high)]).
FIXED = {
    "can_interface": ("socketcan", "python-can interface: socketcan, pcan, virtual, ..."),
    "can_channel": ("can0", "python-can channel (can0, PCAN_USBBUS1, any name for virtual)"),
    "can_bitrate": (1_000_000, "CAN bit rate [bit/s]; the V4 hand uses 1 Mbit/s"),
    "device_id": (0, "hand device id (low 2 bits of the CAN id), 0..3"),
    "emulate_hand": (False, "start the firmware emulator in this process on the same bus (can_interface:=virtual)"),
    "hand": ("right", "right or left; must match what the hand reports"),
    "control_rate_hz": (_d.control_rate_hz, "PD loop rate [Hz]", (50.0, 1000.0)),
    "realtime_priority": (0, "SCHED_FIFO priority of the PD thread (0 = normal); needs rtprio permission"),
    "publish_rate_hz": (100.0, "joint_states rate [Hz]", (1.0, 333.0)),
    "diagnostics_rate_hz": (1.0, "/diagnostics rate [Hz]", (0.1, 10.0)),
    "torque_limit": (list(_d.torque_limit), "torque caps [Nm], 16 values"),
    "pwm_limit": (list(_d.pwm_limit), "PWM caps, 16 values (pwm = torque x 1200)"),
    "encoder_direction": (list(_d.encoder_direction), "per-joint encoder sign (+1/-1); V4 (calibrated): all +1"),
    "encoder_offset": (list(_d.encoder_offset), "per-joint encoder offset [rad] added after scaling; V4: all 0"),
    "motor_direction": (list(_d.motor_direction), "per-joint PWM sign (+1/-1); V4: all +1"),
    "max_joint_velocity": (_d.max_joint_velocity, "set-point slew limit [rad/s]", (0.01, 20.0)),
    "encoder_timeout_s": (_d.encoder_timeout_s, "no encoder data for this long -> zero torques, error", (0.005, 1.0)),
    "command_timeout_s": (_d.command_timeout_s, "no command for this long -> flagged stale (the last target is held)",
                          (0.01, 3600.0)),
}
# Live settings: name -> (default, description) (bounds in LIVE_BOUNDS).
LIVE = {
    "kp": (list(_d.kp), "proportional gains [Nm/rad], 16 values (live)"),
    "kd": (list(_d.kd), "derivative gains [Nm s/rad], 16 values (live)"),
    "goal_tolerance": (0.03, "default MoveJoints tolerance [rad]"),
    "goal_time_limit_s": (5.0, "default MoveJoints time limit [s]"),
    "max_command_age_s": MAX_COMMAND_AGE_PARAMETER,
    "temperature_warn_c": (60.0, "diagnostics warn above this motor temperature"),
}
STOP_MODE = "what ~/stop does: hold (keep the current position) or torque_off (zero torques until the next command)"
_CONTROLLER = {f.name for f in dataclasses.fields(ControllerConfig)} & {*FIXED, *LIVE, "hand"}


def _fixed(text: str, bounds=None) -> ParameterDescriptor:
    ranges = [FloatingPointRange(from_value=bounds[0], to_value=bounds[1])] if bounds else []
    return ParameterDescriptor(description=text, read_only=True, floating_point_range=ranges)


class AllegroNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__("allegro", **node_kwargs)
        for name, (default, text, *bounds) in FIXED.items():
            self.declare_parameter(name, default, _fixed(text, *bounds))
        for name, (default, text) in LIVE.items():
            self.declare_parameter(name, default, ranged(text, *LIVE_BOUNDS[name]))
        self.declare_parameter("stop_mode", "hold", ParameterDescriptor(description=STOP_MODE))
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        interface, channel, hand = g("can_interface"), g("can_channel"), g("hand")
        self._config = ControllerConfig(**{name: g(name) for name in _CONTROLLER}).validated()
        self._buses = []
        self.emulator: HandEmulator | None = None
        try:
            if g("emulate_hand"):
                self._buses.append(open_bus(interface, channel, g("can_bitrate")))
                self.emulator = HandEmulator(self._buses[-1], hand=hand, device_id=self._config.device_id).start()
                self.get_logger().info(f"hand emulator running on {interface}:{channel}")
            elif interface == "virtual":
                self.get_logger().warning(
                    "can_interface is virtual but emulate_hand is false: a virtual bus only links "
                    "endpoints of this process, so no hand will answer (set emulate_hand:=true)")
            self._buses.append(open_bus(interface, channel, g("can_bitrate")))
        except Exception as exc:
            self.close()
            raise RuntimeError(f"cannot open CAN bus interface={interface!r} channel={channel!r}: {exc}") from exc
        self.controller = HandController(self._buses[-1], self._config)
        self.controller.start()

        self._last_warn = {}
        self._last_state = None
        self._state_pub = self.create_publisher(JointState, "/allegro/joint_states", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        timers = MutuallyExclusiveCallbackGroup()
        self.create_timer(1.0 / g("publish_rate_hz"), self._publish_state, callback_group=timers)
        self.create_timer(1.0 / g("diagnostics_rate_hz"), self._publish_diagnostics, callback_group=timers)
        self.create_subscription(JointState, "/allegro/joint_command", self._on_command, 10)
        self.create_service(Trigger, "/allegro/stop", self._on_stop)
        self.move_joints = MoveJointsServer(self, "/allegro/move_joints", self.controller,
                                            tolerance_param="goal_tolerance", time_limit_param="goal_time_limit_s",
                                            report=self._report, callback_group=ReentrantCallbackGroup())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(f"allegro ({hand} hand) on {interface}:{channel}, PD at "
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

    def _on_set_parameters(self, params) -> SetParametersResult:
        gains = {}
        problem = first_problem([prm for prm in params if prm.name not in _LIVE_GAINS], LIVE_BOUNDS)
        for prm in params:
            if problem:
                break
            if prm.name in _LIVE_GAINS:
                try:
                    if np.asarray(prm.value).size != joints.NUM_JOINTS:
                        raise ValueError(f"{prm.name}: expected {joints.NUM_JOINTS} values, "
                                         f"got {np.asarray(prm.value).size}")
                    gains[prm.name] = validate_gains(prm.name, prm.value)
                except (ValueError, TypeError) as exc:
                    problem = str(exc)
            elif prm.name == "stop_mode" and prm.value not in ("hold", "torque_off"):
                problem = f"stop_mode must be 'hold' or 'torque_off', got {prm.value!r}"
        if problem:
            self.get_logger().warning(f"parameter change refused: {problem}")
            return SetParametersResult(successful=False, reason=problem)
        if gains:
            self.controller.set_gains(kp=gains.get("kp"), kd=gains.get("kd"))
            self.get_logger().info(f"gains changed: {', '.join(gains)}")
        return SetParametersResult(successful=True)

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
        level, text = report.health(st, self.get_parameter("temperature_warn_c").value)
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
                              float(self.get_parameter("max_command_age_s").value), "joint_command")
            target = full_points(joint_index(msg.name, self.controller), [msg.position], self.controller)[0]
        except GoalRefused as exc:
            self.controller.note_rejected(str(exc))
            return self._warn(f"joint_command rejected, hand keeps its target: {exc}")
        try:
            self.controller.set_target(target)   # pre-empts a running goal
        except CommandRejected as exc:   # counted by the controller
            self._warn(f"joint_command rejected, hand keeps its target: {exc}")

    def _on_stop(self, request, response):
        response.message = self.controller.stop("stopped by /allegro/stop", mode=self.get_parameter("stop_mode").value)
        response.success = True
        self.get_logger().info(f"stop: {response.message}")
        return response


def main(args=None) -> int:
    return run_node("allegro", AllegroNode, args, startup_errors=(RuntimeError, ValueError), startup_exit_code=1)


if __name__ == "__main__":
    raise SystemExit(main())
