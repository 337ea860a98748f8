"""ROS 2 node ``franka``: a thin adapter over :class:`dexwm_ros.franka_arm.FrankaArm` (franky).

Interfaces (node name ``franka`` at the root namespace):

- publishes ``/franka/joint_states`` (sensor_msgs/JointState, fr3_joint1..7) at ``rate_hz`` and
  ``/diagnostics`` (connection, robot mode, last error) once a second;
- action ``/franka/move_joints`` (dexwm_ros/action/MoveJoints): one point is a target, several are
  waypoints; a new goal or topic command pre-empts the running goal (result PREEMPTED);
- topic ``/franka/joint_command`` (trajectory_msgs/JointTrajectory), fire-and-forget: a streaming
  sender must send at least every ``watchdog_timeout_s`` while the arm should keep moving;
- services ``/franka/stop`` and ``/franka/recover`` (std_srvs/Trigger).

Commands outside the joint limits, with NaN/inf, of the wrong size or moving a joint more than
``max_joint_step`` are rejected with the reason (logged, on /diagnostics and in the action result)
and never reach the robot; so are goals and commands stamped more than ``max_command_age_s`` ago and
goals with bad timing, tolerance or time limit (dexwm_ros.move_joints). Losing the robot (network,
simulator killed) aborts the running goal with ROBOT_ERROR; the node stays up and reconnects every
``reconnect_period_s``.

Panda (FER) arms need franky built against libfranka 0.9.x (see dexwm_ros.franka_arm).
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rcl_interfaces.msg import ParameterDescriptor
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dexwm_ros.action import MoveJoints
from dexwm_robot.franka import FR3_JOINT_LIMITS, JOINT_NAMES, NUM_JOINTS as N_JOINTS
from dexwm_ros.franka_arm import (DONE, ERROR, MOVING, PREEMPTED, SETTING_BOUNDS, STOPPED, WATCHDOG, CommandRejected,
                                  FrankaArm, FrankaConfig, RobotUnavailable)
from dexwm_ros.move_joints import (COMMAND_AGE_RANGE, DEFAULT_MAX_COMMAND_AGE_S, MAX_GOAL_TOLERANCE,
                                   MAX_TIME_LIMIT_S, GoalRefused, check_command_age, check_time_limit,
                                   check_timing, check_tolerance, end_goal, is_deliberate)
from dexwm_ros.parameter_bounds import first_problem, ranged
from dexwm_ros.ros_time import seconds
from dexwm_ros.node_main import run_node

_R = MoveJoints.Result
_CODES = {"invalid_goal": _R.INVALID_GOAL, "invalid_joints": _R.INVALID_JOINTS}
# Every live parameter that bounds a motion, with its allowed range (declared and checked on set).
LIVE_BOUNDS = {
    **SETTING_BOUNDS,
    "goal_tolerance": (1e-4, MAX_GOAL_TOLERANCE),
    "default_time_limit_s": (0.1, MAX_TIME_LIMIT_S),
    "max_command_age_s": COMMAND_AGE_RANGE,
}


def trajectory_to_points(traj: JointTrajectory) -> np.ndarray:
    """(N, 7) positions in fr3_joint1..7 order from a JointTrajectory; CommandRejected if malformed."""
    names = list(traj.joint_names)
    if names:
        if sorted(names) != sorted(JOINT_NAMES):
            raise CommandRejected(f"joint_names must be a permutation of {list(JOINT_NAMES)}, got {names}",
                                  code="invalid_joints")
        order = [names.index(n) for n in JOINT_NAMES]
    else:
        order = list(range(N_JOINTS))
    if not traj.points:
        raise CommandRejected("the trajectory has no points")
    rows = []
    for k, point in enumerate(traj.points):
        if len(point.positions) != N_JOINTS:
            raise CommandRejected(f"point {k} has {len(point.positions)} positions, expected {N_JOINTS}")
        rows.append([point.positions[i] for i in order])
    return np.asarray(rows, dtype=float)


def _descriptor(text: str, **kw) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, **kw)


class FrankaNode(Node):
    def __init__(self):
        super().__init__("franka")
        d = FrankaConfig()
        p = self.declare_parameter
        p("robot_ip", d.robot_ip, _descriptor("Franka control-box (FCI) address; 127.x.y.z for franky-sim",
                                               read_only=True))
        p("rate_hz", 100.0, _descriptor("joint_states publishing rate [Hz]", read_only=True))
        p("relative_dynamics_factor", d.relative_dynamics_factor,
          ranged("scales franky's max velocity/acceleration/jerk; slow by default",
                 *LIVE_BOUNDS["relative_dynamics_factor"]))
        p("lower_torque_thresholds", list(d.lower_torque_thresholds),
          _descriptor("collision behaviour: lower joint torque thresholds [Nm] (7)", read_only=True))
        p("upper_torque_thresholds", list(d.upper_torque_thresholds),
          _descriptor("collision behaviour: upper joint torque thresholds [Nm] (7)", read_only=True))
        p("lower_force_thresholds", list(d.lower_force_thresholds),
          _descriptor("collision behaviour: lower Cartesian force/torque thresholds [N, Nm] (6)", read_only=True))
        p("upper_force_thresholds", list(d.upper_force_thresholds),
          _descriptor("collision behaviour: upper Cartesian force/torque thresholds [N, Nm] (6)", read_only=True))
        p("joint_lower_limits", list(FR3_JOINT_LIMITS[0]), _descriptor("lower joint limits [rad] (7)", read_only=True))
        p("joint_upper_limits", list(FR3_JOINT_LIMITS[1]), _descriptor("upper joint limits [rad] (7)", read_only=True))
        p("max_joint_step", d.max_joint_step,
          ranged("largest joint change per command (current -> first point, between points) [rad]",
                 *LIVE_BOUNDS["max_joint_step"]))
        p("watchdog_timeout_s", d.watchdog_timeout_s,
          ranged("stop and hold when a topic-commanded motion gets no new command for this long [s]",
                 *LIVE_BOUNDS["watchdog_timeout_s"]))
        p("reconnect_period_s", d.reconnect_period_s,
          ranged("seconds between reconnect attempts", *LIVE_BOUNDS["reconnect_period_s"]))
        p("enforce_realtime", d.enforce_realtime,
          _descriptor("require a realtime kernel (libfranka RealtimeConfig.Enforce)", read_only=True))
        p("goal_tolerance", 0.01, ranged("default per-joint goal tolerance of move_joints [rad]",
                                         *LIVE_BOUNDS["goal_tolerance"]))
        p("default_time_limit_s", 30.0, ranged("move_joints time limit when the goal gives none [s]",
                                               *LIVE_BOUNDS["default_time_limit_s"]))
        p("max_command_age_s", DEFAULT_MAX_COMMAND_AGE_S,
          ranged("refuse commands whose header stamp is older than this (unstamped ones are accepted) [s]",
                 *LIVE_BOUNDS["max_command_age_s"]))

        g = self.get_parameter
        self.config = FrankaConfig(
            robot_ip=g("robot_ip").value,
            relative_dynamics_factor=g("relative_dynamics_factor").value,
            lower_torque_thresholds=list(g("lower_torque_thresholds").value),
            upper_torque_thresholds=list(g("upper_torque_thresholds").value),
            lower_force_thresholds=list(g("lower_force_thresholds").value),
            upper_force_thresholds=list(g("upper_force_thresholds").value),
            joint_lower_limits=list(g("joint_lower_limits").value),
            joint_upper_limits=list(g("joint_upper_limits").value),
            max_joint_step=g("max_joint_step").value,
            watchdog_timeout_s=g("watchdog_timeout_s").value,
            reconnect_period_s=g("reconnect_period_s").value,
            enforce_realtime=g("enforce_realtime").value,
        )
        self.rate_hz = float(g("rate_hz").value)
        value = float(g("rate_hz").value)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"parameter rate_hz must be a positive number, got {value}")
        self.arm = FrankaArm(self.config)  # validates the configuration
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.state_pub = self.create_publisher(JointState, "~/joint_states", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._cmd_group = ReentrantCallbackGroup()
        self.create_timer(1.0, self._publish_diagnostics, callback_group=self._cmd_group)
        self.create_subscription(JointTrajectory, "~/joint_command", self._on_joint_command, 10,
                                 callback_group=self._cmd_group)
        self.create_service(Trigger, "~/stop", self._on_stop, callback_group=self._cmd_group)
        self.create_service(Trigger, "~/recover", self._on_recover, callback_group=self._cmd_group)
        self.action_server = ActionServer(
            self, MoveJoints, "~/move_joints", execute_callback=self._execute,
            goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda handle: CancelResponse.ACCEPT, callback_group=self._cmd_group)
        self._problem = ""  # last rejected command / failure, shown on /diagnostics until the next success

        self._logged_error = ""
        # The state thread connects (at once, then every reconnect_period_s): a connect to an
        # unreachable host blocks for about a minute and must not hold up the node's start.
        # State reads and supervision run in their own thread on an absolute schedule: an rclpy timer
        # in a busy executor on a small machine loses ticks (measured about 50 of 100 Hz here).
        self._running = threading.Event()
        self._running.set()
        # Ctrl-C shuts the context down before destroy_node runs: stop publishing from then on.
        self.context.on_shutdown(self._running.clear)
        self._state_thread = threading.Thread(target=self._state_loop, name="franka_state", daemon=True)
        self._state_thread.start()

    def _state_loop(self):
        period = 1.0 / self.rate_hz
        next_tick = time.monotonic()
        while self._running.is_set():
            try:
                self._on_state_timer()
            except Exception as exc:  # never let a surprise kill the state stream
                if not (self._running.is_set() and self.context.ok()):
                    break  # shutting down
                self.get_logger().error(f"state update failed: {exc!r}")
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay < -period:  # fell far behind (e.g. a blocking reconnect): do not burst
                next_tick = time.monotonic()
            else:
                time.sleep(max(0.0, delay))

    # ---- parameters -----------------------------------------------------------------------------
    def _on_set_parameters(self, params):
        from rcl_interfaces.msg import SetParametersResult

        problem = first_problem(params, LIVE_BOUNDS)
        if problem:
            self.get_logger().warning(f"parameter change refused: {problem}")
            return SetParametersResult(successful=False, reason=problem)
        for param in params:
            if param.name == "relative_dynamics_factor":
                try:
                    self.arm.set_relative_dynamics_factor(param.value)
                except Exception as exc:  # lost robot: keep the old value and say why
                    return SetParametersResult(successful=False, reason=str(exc))
            elif hasattr(self.config, param.name):
                setattr(self.config, param.name, param.value)
        return SetParametersResult(successful=True)

    # ---- state ---------------------------------------------------------------------------------
    def _on_state_timer(self):
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
        msg = JointState()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.name = list(JOINT_NAMES)
        msg.position = state.position.tolist()
        msg.velocity = state.velocity.tolist()
        msg.effort = state.effort.tolist()
        self.state_pub.publish(msg)
        cmd = self.arm.command
        if cmd is not None and cmd.status == WATCHDOG and not getattr(cmd, "_reported", False):
            cmd._reported = True
            self._report(cmd.message)

    def _report(self, problem: str):
        self._problem = problem
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
            status.level = DiagnosticStatus.WARN
            status.message = self._problem
        else:
            status.level = DiagnosticStatus.OK
            status.message = "moving" if cmd is not None and cmd.status == MOVING else "holding"
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

    # ---- commands ------------------------------------------------------------------------------
    def _check_age(self, traj: JointTrajectory, what: str) -> None:
        check_command_age(seconds(traj.header.stamp), self.get_clock().now().nanoseconds * 1e-9,
                          float(self.get_parameter("max_command_age_s").value), what)

    def _on_joint_command(self, msg: JointTrajectory):
        try:
            self._check_age(msg, "joint_command")
            check_timing(seconds(p.time_from_start) for p in msg.points)
            points = trajectory_to_points(msg)
            self.arm.move(points, source="joint_command")
            self._problem = ""
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

    def _execute(self, goal_handle):
        goal = goal_handle.request
        result = MoveJoints.Result()

        def finish(code: int, message: str, error=None):
            result.error_code, result.message = code, message
            if error is not None:
                result.final_error = [float(e) for e in error]
            end_goal(goal_handle, code)
            if code not in (_R.SUCCESSFUL, _R.CANCELED) and not is_deliberate(code):
                self._report(f"move_joints: {message}")
            return result

        try:
            self._check_age(goal.trajectory, "goal")
            points = trajectory_to_points(goal.trajectory)
            # franky times the motion itself (relative_dynamics_factor); the timing fields are still
            # checked so that every driver refuses the same goals.
            check_timing(seconds(p.time_from_start) for p in goal.trajectory.points)
            tol = check_tolerance(goal.goal_tolerance, N_JOINTS, float(self.get_parameter("goal_tolerance").value))
            limit = check_time_limit(seconds(goal.time_limit))
        except CommandRejected as exc:
            return finish(_CODES[exc.code], str(exc))
        except GoalRefused as exc:
            return finish(exc.code, str(exc))
        if limit == 0:
            limit = float(self.get_parameter("default_time_limit_s").value)
        try:
            # The goal's own time limit is its watchdog: its client is waiting on the result.
            cmd = self.arm.move(points, source="move_joints", keepalive_s=limit)
        except CommandRejected as exc:
            return finish(_CODES[exc.code], str(exc))
        except RobotUnavailable as exc:
            return finish(_R.ROBOT_ERROR, str(exc))
        self._problem = ""
        deadline = time.monotonic() + limit
        feedback = MoveJoints.Feedback()
        error = None
        while True:
            state = self.arm.last_state
            if state is not None:
                error = cmd.target - state.position
                feedback.error = error.tolist()
                feedback.max_abs_error = float(np.max(np.abs(error)))
                goal_handle.publish_feedback(feedback)
            if goal_handle.is_cancel_requested:
                if cmd.status == MOVING:
                    try:
                        self.arm.stop("move_joints goal canceled")
                    except RobotUnavailable:
                        pass
                return finish(_R.CANCELED, "canceled; the arm stopped and holds", error)
            if not goal_handle.is_active:
                return result
            if cmd.status == PREEMPTED:
                return finish(_R.PREEMPTED, cmd.message, error)
            if cmd.status == STOPPED:
                return finish(_R.STOPPED, cmd.message, error)
            if cmd.status == ERROR:
                return finish(_R.ROBOT_ERROR, cmd.message, error)
            if cmd.status == WATCHDOG:
                return finish(_R.TIMEOUT, f"target not reached within {limit:.2f} s; stopped and holding", error)
            # franky ends the motion when its trajectory ends; the arm settles onto the target after.
            if cmd.status == DONE and error is not None and np.all(np.abs(error) <= tol):
                return finish(_R.SUCCESSFUL, "target reached", error)
            if time.monotonic() > deadline:
                if cmd.status == MOVING:
                    try:
                        self.arm.stop("move_joints time limit")
                    except RobotUnavailable:
                        pass
                worst = float(np.max(np.abs(error))) if error is not None else float("nan")
                return finish(_R.TIMEOUT, f"target not reached within {limit:.2f} s "
                                          f"(max error {worst:.4f} rad); stopped and holding", error)
            time.sleep(0.02)

    def destroy_node(self):
        if not hasattr(self, "_running"):  # the constructor failed part-way
            return super().destroy_node()
        self._running.clear()
        self._state_thread.join(timeout=2.0)  # may sit in a blocking connect: it is a daemon
        self.arm.close()
        super().destroy_node()


def main(args=None) -> int:
    return run_node("franka", FrankaNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
