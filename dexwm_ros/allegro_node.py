"""ROS 2 node `allegro`: thin adapter over allegro_driver.controller.HandController.

Publishes /allegro/joint_states (16 joints, names and order from dexwm_robot.allegro) and
/diagnostics; takes position targets on /allegro/joint_command (sensor_msgs/JointState, by name or
all 16 in order) and the /allegro/move_joints action; /allegro/stop (std_srvs/Trigger) holds the
current position (stop_mode "hold") or switches the torques off until the next command
("torque_off"). kp/kd are parameters that can be changed live, within their bounds.

Targets outside the joint limits, stale or badly timed goals and absurd tolerances are refused with
the reason (dexwm_ros.move_joints has the rules every driver applies), never clamped. When the hand
enters its error state (encoder silence, a wrong hand) the torques are zero, the cause goes on
/diagnostics at once, and the node recovers by itself when the encoders return.

The 333 Hz PD loop runs in the controller's own thread, never in the executor. With
can_interface:=virtual emulate_hand:=true the node starts the hand firmware emulator in-process on
the same virtual channel (python-can's virtual bus only links endpoints of one process).
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from dexwm_robot import allegro as joints
from allegro_driver.controller import (GAIN_BOUNDS, CommandRejected, ControllerConfig, HandController, State,
                                       open_bus, validate_gains)
from allegro_driver.emulator import HandEmulator
from dexwm_ros.action import MoveJoints
from dexwm_ros.move_joints import (COMMAND_AGE_RANGE, DEFAULT_MAX_COMMAND_AGE_S, MAX_GOAL_TOLERANCE,
                                   MAX_TIME_LIMIT_S, GoalRefused, check_command_age, check_time_limit,
                                   check_timing, check_tolerance, end_goal)
from dexwm_ros.parameter_bounds import first_problem, ranged
from dexwm_ros.node_main import run_node
from dexwm_ros.ros_time import seconds

N = joints.NUM_JOINTS
_LIVE_GAINS = ("kp", "kd")
# Live parameters with bounds (declared and checked on every set); gains are checked per joint.
LIVE_BOUNDS = {
    **GAIN_BOUNDS,
    "goal_tolerance": (1e-4, MAX_GOAL_TOLERANCE),
    "goal_time_limit_s": (0.1, MAX_TIME_LIMIT_S),
    "max_command_age_s": COMMAND_AGE_RANGE,
    "temperature_warn_c": (20.0, 120.0),
}


def _desc(text: str, read_only: bool = False, **kw) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, read_only=read_only, **kw)


def _positive(text: str, low: float, high: float, read_only: bool = False) -> ParameterDescriptor:
    return _desc(text, read_only, floating_point_range=[FloatingPointRange(from_value=low, to_value=high)])


class GoalError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class AllegroNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__("allegro", **node_kwargs)
        defaults = ControllerConfig()
        p = self.declare_parameter
        p("can_interface", "socketcan", _desc("python-can interface: socketcan, pcan, virtual, ...", True))
        p("can_channel", "can0", _desc("python-can channel (can0, PCAN_USBBUS1, any name for virtual)", True))
        p("can_bitrate", 1_000_000, _desc("CAN bit rate [bit/s]; the V4 hand uses 1 Mbit/s", True))
        p("device_id", 0, _desc("hand device id (low 2 bits of the CAN id), 0..3", True))
        p("emulate_hand", False, _desc("start the firmware emulator in this process on the same bus "
                                       "(tests and demos with can_interface:=virtual)", True))
        p("hand", "right", _desc("right or left; must match what the hand reports", True))
        p("control_rate_hz", defaults.control_rate_hz, _positive("PD loop rate [Hz]", 50.0, 1000.0, True))
        p("realtime_priority", 0, _desc("SCHED_FIFO priority of the PD thread (0 = normal); needs "
                                        "rtprio permission, as set up for libfranka", True))
        p("publish_rate_hz", 100.0, _positive("joint_states rate [Hz]", 1.0, 333.0, True))
        p("diagnostics_rate_hz", 1.0, _positive("/diagnostics rate [Hz]", 0.1, 10.0, True))
        p("kp", list(defaults.kp), ranged("proportional gains [Nm/rad], 16 values (live)", *LIVE_BOUNDS["kp"]))
        p("kd", list(defaults.kd), ranged("derivative gains [Nm s/rad], 16 values (live)", *LIVE_BOUNDS["kd"]))
        p("torque_limit", list(defaults.torque_limit), _desc("torque caps [Nm], 16 values", True))
        p("pwm_limit", list(defaults.pwm_limit), _desc("PWM caps, 16 values (pwm = torque x 1200)", True))
        p("encoder_direction", list(defaults.encoder_direction),
          _desc("per-joint encoder sign (+1/-1); V4 hands are calibrated in firmware: all +1", True))
        p("encoder_offset", list(defaults.encoder_offset),
          _desc("per-joint encoder offset [rad] added after scaling; V4: all 0", True))
        p("motor_direction", list(defaults.motor_direction),
          _desc("per-joint PWM sign (+1/-1); V4: all +1", True))
        p("max_joint_velocity", defaults.max_joint_velocity,
          _positive("set-point slew limit [rad/s]", 0.01, 20.0, True))
        p("encoder_timeout_s", defaults.encoder_timeout_s,
          _positive("no encoder data for this long -> zero torques, error", 0.005, 1.0, True))
        p("command_timeout_s", defaults.command_timeout_s,
          _positive("no command for this long -> flagged stale (the last target is held)", 0.01, 3600.0, True))
        p("goal_tolerance", 0.03, ranged("default MoveJoints tolerance [rad]", *LIVE_BOUNDS["goal_tolerance"]))
        p("goal_time_limit_s", 5.0, ranged("default MoveJoints time limit [s]", *LIVE_BOUNDS["goal_time_limit_s"]))
        p("max_command_age_s", DEFAULT_MAX_COMMAND_AGE_S,
          ranged("refuse commands whose header stamp is older than this (unstamped ones are accepted) [s]",
                 *LIVE_BOUNDS["max_command_age_s"]))
        p("stop_mode", "hold", _desc("what ~/stop does: hold (keep the current position) or "
                                     "torque_off (zero torques until the next command)"))
        p("temperature_warn_c", 60.0, ranged("diagnostics warn above this motor temperature",
                                             *LIVE_BOUNDS["temperature_warn_c"]))

        gp = self.get_parameter
        interface = gp("can_interface").value
        channel = gp("can_channel").value
        hand = gp("hand").value
        self._config = ControllerConfig(
            hand=hand, device_id=gp("device_id").value, control_rate_hz=gp("control_rate_hz").value,
            kp=gp("kp").value, kd=gp("kd").value, torque_limit=gp("torque_limit").value,
            pwm_limit=gp("pwm_limit").value, encoder_direction=gp("encoder_direction").value,
            encoder_offset=gp("encoder_offset").value, motor_direction=gp("motor_direction").value,
            max_joint_velocity=gp("max_joint_velocity").value,
            encoder_timeout_s=gp("encoder_timeout_s").value,
            command_timeout_s=gp("command_timeout_s").value,
            realtime_priority=gp("realtime_priority").value).validated()

        self._buses = []
        self.emulator: HandEmulator | None = None
        try:
            if gp("emulate_hand").value:
                emu_bus = open_bus(interface, channel, gp("can_bitrate").value)
                self._buses.append(emu_bus)
                self.emulator = HandEmulator(emu_bus, hand=hand, device_id=self._config.device_id).start()
                self.get_logger().info(f"hand emulator running on {interface}:{channel}")
            elif interface == "virtual":
                self.get_logger().warning(
                    "can_interface is virtual but emulate_hand is false: a virtual bus only links "
                    "endpoints of this process, so no hand will answer (set emulate_hand:=true)")
            bus = open_bus(interface, channel, gp("can_bitrate").value)
            self._buses.append(bus)
        except Exception as exc:
            self._close_buses()
            raise RuntimeError(f"cannot open CAN bus interface={interface!r} channel={channel!r}: {exc}") from exc
        self.controller = HandController(bus, self._config)
        self.controller.start()

        self._goal_lock = threading.Lock()
        self._active_goal = None
        self._preempted: dict[bytes, int] = {}  # goal id -> error code that ended it from outside

        self._state_pub = self.create_publisher(JointState, "/allegro/joint_states", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        timers = MutuallyExclusiveCallbackGroup()
        self.create_timer(1.0 / gp("publish_rate_hz").value, self._publish_state, callback_group=timers)
        self.create_timer(1.0 / gp("diagnostics_rate_hz").value, self._publish_diagnostics,
                          callback_group=timers)
        self.create_subscription(JointState, "/allegro/joint_command", self._on_command, 10)
        self.create_service(Trigger, "/allegro/stop", self._on_stop)
        self._action = ActionServer(
            self, MoveJoints, "/allegro/move_joints", execute_callback=self._execute,
            goal_callback=self._on_goal, cancel_callback=self._on_cancel,
            handle_accepted_callback=self._on_accepted, callback_group=ReentrantCallbackGroup())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._last_warn = {}
        self._last_state = None
        self.get_logger().info(f"allegro ({hand} hand) on {interface}:{channel}, PD at "
                               f"{self._config.control_rate_hz:.0f} Hz")

    # --- shutdown ------------------------------------------------------------------------------
    def destroy_node(self):
        self.close()
        super().destroy_node()

    def close(self) -> None:
        # getattr: a constructor interrupted part-way (Ctrl-C during start-up) leaves a partial node.
        controller = getattr(self, "controller", None)
        if controller is not None:
            controller.close()  # zero torques, streaming off, servo off
        if getattr(self, "emulator", None) is not None:
            self.emulator.close()
        self._close_buses()

    def _close_buses(self) -> None:
        for bus in getattr(self, "_buses", []):
            try:
                bus.shutdown()
            except Exception:  # shutting down anyway
                pass
        self._buses = []

    def _warn(self, text: str) -> None:
        """Log a rejected command, at most once per second per distinct reason."""
        now = time.monotonic()
        if now - self._last_warn.get(text, -math.inf) > 1.0:
            self._last_warn[text] = now
            self.get_logger().warning(text)

    # --- parameters ----------------------------------------------------------------------------
    def _on_set_parameters(self, params) -> SetParametersResult:
        gains = {}
        problem = first_problem([prm for prm in params if prm.name not in _LIVE_GAINS], LIVE_BOUNDS)
        if problem:
            self.get_logger().warning(f"parameter change refused: {problem}")
            return SetParametersResult(successful=False, reason=problem)
        for prm in params:
            if prm.name in _LIVE_GAINS:
                try:
                    if np.asarray(prm.value).size != N:
                        raise ValueError(f"{prm.name}: expected {N} values, got {np.asarray(prm.value).size}")
                    arr = validate_gains(prm.name, prm.value)
                except (ValueError, TypeError) as exc:
                    self.get_logger().warning(f"parameter change refused: {exc}")
                    return SetParametersResult(successful=False, reason=str(exc))
                gains[prm.name] = arr
            elif prm.name == "stop_mode" and prm.value not in ("hold", "torque_off"):
                return SetParametersResult(successful=False,
                                           reason=f"stop_mode must be 'hold' or 'torque_off', got {prm.value!r}")
        if gains:
            self.controller.set_gains(kp=gains.get("kp"), kd=gains.get("kd"))
            self.get_logger().info(f"gains changed: {', '.join(gains)}")
        return SetParametersResult(successful=True)

    # --- state out -----------------------------------------------------------------------------
    def _publish_state(self) -> None:
        st = self.controller.status()
        if st.state is not self._last_state:  # log transitions (error entry/exit) once
            self._log_transition(st)
            self._last_state = st.state
        if st.stamp == 0.0:
            return  # no encoder reading yet: publish nothing rather than zeros
        msg = JointState()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.name = list(joints.JOINT_NAMES)
        msg.position = st.position.tolist()
        msg.velocity = st.velocity.tolist()
        msg.effort = st.effort.tolist()
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
        warn_c = self.get_parameter("temperature_warn_c").value
        level, text = DiagnosticStatus.OK, st.state.value
        if st.state is State.ERROR:
            level, text = DiagnosticStatus.ERROR, st.reason
        elif st.state in (State.INIT, State.STOPPED):
            level, text = DiagnosticStatus.WARN, st.reason or st.state.value
        elif np.any(st.temperatures > warn_c):  # NaN (not yet reported) compares False
            level, text = DiagnosticStatus.WARN, f"motor temperature above {warn_c:.0f} C"
        status = DiagnosticStatus(level=level, name="allegro: hand", message=text,
                                  hardware_id=st.serial or "allegro")
        t = st.timing
        values = {
            "state": st.state.value,
            "hand": self._config.hand,
            "hand_info": (f"hw 0x{st.hand_info.hardware_version:04x} fw 0x{st.hand_info.firmware_version:04x} "
                          f"{st.hand_info.hand} servo {'on' if st.hand_info.servo_on else 'off'}"
                          if st.hand_info else "not received"),
            "encoder_age_ms": f"{st.encoder_age_s * 1e3:.1f}",
            "command_age_s": f"{st.command_age_s:.2f}" if math.isfinite(st.command_age_s) else "none",
            "command_stale": str(st.command_stale),
            "loop_period_error_ms_mean": f"{t.period_error_ms_mean:.3f}",
            "loop_period_error_ms_p99": f"{t.period_error_ms_p99:.3f}",
            "loop_period_error_ms_max": f"{t.period_error_ms_max:.3f}",
            "loop_work_ms_mean": f"{t.work_ms_mean:.3f}",
            "loop_overruns": str(t.overruns),
            "loop_scheduling": st.scheduling,
            "can_frames_ok": str(st.frames["ok"]),
            "can_frames_truncated": str(st.frames["truncated"]),
            "can_frames_unknown": str(st.frames["unknown"]),
            "can_frames_malformed": str(st.frames["malformed"]),
            "can_last_frame_error": st.last_frame_error,
            "can_tx_errors": str(st.tx_errors),
            "encoder_dropouts": str(st.encoder_dropouts),
            "commands_rejected": str(st.commands_rejected),
            "last_reject_reason": st.last_reject_reason,
        }
        kp, kd = self.controller.gains  # the gains in force, to confirm live changes
        values["kp"] = " ".join(f"{v:g}" for v in kp)
        values["kd"] = " ".join(f"{v:g}" for v in kd)
        for k, finger in enumerate(joints.FINGERS):  # hottest motor per finger, and all 16
            block = st.temperatures[4 * k:4 * k + 4]
            values[f"temperature_{finger}_max_c"] = "nan" if np.isnan(block).all() else f"{np.nanmax(block):.0f}"
        values["temperatures_c"] = " ".join("nan" if math.isnan(t) else f"{t:.0f}" for t in st.temperatures)
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self._diag_pub.publish(msg)

    # --- commands in ---------------------------------------------------------------------------
    def _on_command(self, msg: JointState) -> None:
        # under the goal lock so that a running goal cannot overwrite this target after the check
        with self._goal_lock:
            try:
                self._check_age(msg.header.stamp, "joint_command")
                self.controller.set_target(list(msg.position), list(msg.name))
            except GoalRefused as exc:
                self.controller.note_rejected(str(exc))
                self._warn(f"joint_command rejected, hand keeps its target: {exc}")
                return
            except CommandRejected as exc:
                self._warn(f"joint_command rejected, hand keeps its target: {exc}")
                return
            self._end_active_goal_locked(MoveJoints.Result.PREEMPTED)

    def _on_stop(self, request, response):
        mode = self.get_parameter("stop_mode").value
        with self._goal_lock:
            response.message = self.controller.stop(mode)
            self._end_active_goal_locked(MoveJoints.Result.STOPPED)
        response.success = True
        self.get_logger().info(f"stop: {response.message}")
        return response

    def _end_active_goal_locked(self, code: int) -> None:
        if self._active_goal is not None and self._active_goal.is_active:
            self._preempted[bytes(self._active_goal.goal_id.uuid)] = code

    # --- action --------------------------------------------------------------------------------
    def _on_goal(self, goal_request) -> GoalResponse:
        return GoalResponse.ACCEPT  # validated in execute so that the client gets a reason

    def _on_cancel(self, goal_handle) -> CancelResponse:
        return CancelResponse.ACCEPT

    def _on_accepted(self, goal_handle) -> None:
        with self._goal_lock:
            old = self._active_goal
            if old is not None and old.is_active:
                self._preempted[bytes(old.goal_id.uuid)] = MoveJoints.Result.PREEMPTED
            self._active_goal = goal_handle
        goal_handle.execute()

    def _check_age(self, stamp, what: str) -> None:
        check_command_age(seconds(stamp), self.get_clock().now().nanoseconds * 1e-9,
                          float(self.get_parameter("max_command_age_s").value), what)

    def _parse_goal(self, goal):
        """-> (list of (16 targets, t_from_start)), tolerance (16), time limit [s], note."""
        traj = goal.trajectory
        try:
            self._check_age(traj.header.stamp, "goal")
            times = check_timing(seconds(pt.time_from_start) for pt in traj.points)
        except GoalRefused as exc:
            raise GoalError(exc.code, str(exc)) from None
        names = list(traj.joint_names)
        if not traj.points:
            raise GoalError(MoveJoints.Result.INVALID_GOAL, "trajectory has no points")
        if names:
            if len(set(names)) != len(names):
                raise GoalError(MoveJoints.Result.INVALID_JOINTS, "duplicate joint names")
            unknown = [n for n in names if n not in joints.JOINT_NAMES]
            if unknown:
                raise GoalError(MoveJoints.Result.INVALID_JOINTS, f"unknown joint names {unknown}")
        width = len(names) if names else N
        base = self.controller.status().target
        points = []
        for i, pt in enumerate(traj.points):
            pos = np.asarray(pt.positions, dtype=np.float64)
            if pos.size != width:
                raise GoalError(MoveJoints.Result.INVALID_JOINTS,
                                f"point {i}: {pos.size} positions for {width} joints")
            if not np.all(np.isfinite(pos)):
                raise GoalError(MoveJoints.Result.INVALID_GOAL, f"point {i}: non-finite position")
            full = base.copy()
            if names:
                full[[joints.JOINT_NAMES.index(n) for n in names]] = pos
            else:
                full = pos.copy()
            # Out-of-limit targets are refused, never clamped (one rule for every driver).
            problem = joints.outside_limits(full)
            if problem:
                raise GoalError(MoveJoints.Result.INVALID_JOINTS, f"point {i}: {problem}")
            base = full
            points.append((full, float(times[i])))
        default_tol = float(self.get_parameter("goal_tolerance").value)
        tol = np.asarray(goal.goal_tolerance, dtype=np.float64)
        try:
            if names and tol.size == len(names) and tol.size not in (1, N):
                # one tolerance per named joint; the others keep the default
                full_tol = np.full(N, default_tol)
                full_tol[[joints.JOINT_NAMES.index(n) for n in names]] = tol
                tol = full_tol
            tol = check_tolerance(tol, N, default_tol)
            limit = check_time_limit(seconds(goal.time_limit))
        except GoalRefused as exc:
            raise GoalError(exc.code, str(exc)) from None
        if limit == 0:
            limit = float(times[-1]) + self.get_parameter("goal_time_limit_s").value
        return points, tol, limit, ""

    def _finish(self, goal_handle, code: int, message: str, target=None):
        st = self.controller.status()
        result = MoveJoints.Result(error_code=code, message=message)
        ref = st.target if target is None else target
        result.final_error = (ref - st.position).tolist()
        with self._goal_lock:
            self._preempted.pop(bytes(goal_handle.goal_id.uuid), None)
            if self._active_goal is goal_handle:
                self._active_goal = None
        end_goal(goal_handle, code)
        if code not in (MoveJoints.Result.SUCCESSFUL, MoveJoints.Result.CANCELED):
            self.get_logger().info(f"move_joints ended: {message}")
        return result

    def _execute(self, goal_handle):
        R = MoveJoints.Result
        try:
            points, tol, limit, note = self._parse_goal(goal_handle.request)
        except GoalError as exc:
            self.controller.note_rejected(str(exc))
            self.get_logger().warning(f"move_joints rejected: {exc}")
            return self._finish(goal_handle, exc.code, str(exc))
        final = points[-1][0]
        timed = points[-1][1] > 0
        start_q = self.controller.status().position
        t0 = time.monotonic()
        index = 0  # waypoint being approached (untimed mode)
        period = 0.02
        feedback = MoveJoints.Feedback()
        uid = bytes(goal_handle.goal_id.uuid)
        while True:
            elapsed = time.monotonic() - t0
            if goal_handle.is_cancel_requested:
                self.controller.hold()
                return self._finish(goal_handle, R.CANCELED, "canceled: holding the current position", final)
            st = self.controller.status()
            if st.state is State.ERROR:
                return self._finish(goal_handle, R.ROBOT_ERROR, f"hand error: {st.reason}", final)
            if timed:
                target = _interpolate(start_q, points, elapsed)
            else:
                target = points[index][0]
            with self._goal_lock:  # check and command atomically (see _on_command)
                ended = self._preempted.get(uid)
                if ended is None:
                    try:
                        self.controller.set_target(target)
                    except CommandRejected as exc:  # cannot happen after _parse_goal
                        ended = R.INVALID_GOAL
            if ended is not None:
                why = {R.PREEMPTED: "preempted by a newer command", R.STOPPED: "stopped by ~/stop"}.get(
                    ended, "target rejected")
                return self._finish(goal_handle, ended, why, final)
            err = target - st.position
            feedback.error = err.tolist()
            feedback.max_abs_error = float(np.max(np.abs(err)))
            goal_handle.publish_feedback(feedback)
            reached = bool(np.all(np.abs(err) <= tol))
            if reached and not timed and index < len(points) - 1:
                index += 1
            elif reached and (not timed or elapsed >= points[-1][1]) and np.array_equal(target, final):
                return self._finish(goal_handle, R.SUCCESSFUL, "reached" + note, final)
            if elapsed > limit:
                return self._finish(goal_handle, R.TIMEOUT,
                                    f"target not reached within {limit:.2f} s (max error "
                                    f"{feedback.max_abs_error:.3f} rad)" + note, final)
            time.sleep(period)


def _interpolate(start: np.ndarray, points, t: float) -> np.ndarray:
    """Piecewise-linear position along timed waypoints, starting at ``start`` at t = 0."""
    prev_q, prev_t = start, 0.0
    for q, tp in points:
        if t < tp:
            a = (t - prev_t) / (tp - prev_t)
            return prev_q + a * (q - prev_q)
        prev_q, prev_t = q, tp
    return points[-1][0]


def main(args=None) -> int:
    return run_node("allegro", AllegroNode, args, startup_errors=(RuntimeError, ValueError), startup_exit_code=1)


if __name__ == "__main__":
    raise SystemExit(main())
