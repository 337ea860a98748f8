"""ROS 2 node ``sim``: the embedded MuJoCo simulation behind the camera, franka and allegro interfaces.

A thin adapter over :class:`dexwm_sim.runner.SimRunner` (which owns the physics thread). It offers
exactly the graph of the hardware nodes (docs/CONTRACT.md), so the planner cannot tell the
difference, plus the evaluation interfaces of the simulation:

- camera: ``/camera/camera/color/image_raw`` (rgb8, RELIABLE), ``/camera/camera/color/camera_info``
  (the simulated camera's real intrinsics), optional ``/camera/camera/aligned_depth_to_color/image_raw``
  (16UC1, mm);
- arm: ``/franka/joint_states``, action ``/franka/move_joints``, topic ``/franka/joint_command``
  (JointTrajectory), services ``/franka/stop``, ``/franka/recover``;
- hand: ``/allegro/joint_states``, action ``/allegro/move_joints``, topic ``/allegro/joint_command``
  (JointState positions), service ``/allegro/stop``; ``/diagnostics``;
- simulation: service ``/sim/reset`` (ResetEpisode: seeded episode + goal image), topic
  ``/sim/episode`` (EpisodeState, every control step), ``/sim/goal_image`` (transient local).

Bad commands (wrong size, unknown joint names, NaN/inf, targets outside the limits, arm steps over
``max_joint_step``, stale stamps, bad timing/tolerance/time limit) are refused with the reason
(logged, on /diagnostics, in the action result) and never reach the physics: the simulation refuses
exactly what the franka and allegro drivers refuse (same checks, dexwm_robot.command_limits and
dexwm_ros.move_joints).
"""
from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import IntegerRange, ParameterDescriptor, SetParametersResult
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dexwm_ros.action import MoveJoints
from dexwm_ros.image_conversion import numpy_to_image
from dexwm_ros.msg import EpisodeState
from dexwm_ros.ros_time import seconds
from dexwm_ros.srv import ResetEpisode
from dexwm_ros.move_joints import (COMMAND_AGE_RANGE, DEFAULT_MAX_COMMAND_AGE_S, MAX_GOAL_TOLERANCE,
                                   MAX_TIME_LIMIT_S, GoalRefused, check_command_age, check_time_limit,
                                   check_timing, check_tolerance, end_goal, is_deliberate)
from dexwm_ros.node_main import run_node
from dexwm_ros.parameter_bounds import first_problem, ranged
from dexwm_robot.command_limits import CommandRejected
from dexwm_robot.franka import JOINT_NAMES as ARM_NAMES

_R = MoveJoints.Result
_CODES = {"invalid_goal": _R.INVALID_GOAL, "invalid_joints": _R.INVALID_JOINTS}
# Live parameters with bounds (declared and checked on set); the arm's step cap has the real
# franka driver's bounds.
LIVE_BOUNDS = {
    "arm_goal_tolerance": (1e-4, MAX_GOAL_TOLERANCE),
    "hand_goal_tolerance": (1e-4, MAX_GOAL_TOLERANCE),
    "arm_time_limit_s": (0.1, MAX_TIME_LIMIT_S),
    "hand_time_limit_s": (0.1, MAX_TIME_LIMIT_S),
    "max_command_age_s": COMMAND_AGE_RANGE,
}


class CommandError(ValueError):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _order(names, expected) -> list[int]:
    """Index map from a message's joint names to the driver order (empty names: driver order)."""
    names = list(names)
    if not names:
        return list(range(len(expected)))
    if len(set(names)) != len(names):
        raise CommandError(_R.INVALID_JOINTS, "duplicate joint names")
    if sorted(names) != sorted(expected):
        raise CommandError(_R.INVALID_JOINTS, f"joint_names must be a permutation of {list(expected)}, got {names}")
    return [names.index(n) for n in expected]


def trajectory_points(traj: JointTrajectory, expected) -> tuple[np.ndarray, np.ndarray]:
    """(N, n) positions in driver order and (N,) segment durations (0 = default speed)."""
    order = _order(traj.joint_names, expected)
    if not traj.points:
        raise CommandError(_R.INVALID_GOAL, "the trajectory has no points")
    rows, times = [], []
    for k, point in enumerate(traj.points):
        if len(point.positions) != len(expected):
            raise CommandError(_R.INVALID_GOAL,
                               f"point {k} has {len(point.positions)} positions, expected {len(expected)}")
        rows.append([point.positions[i] for i in order])
        times.append(seconds(point.time_from_start))
    pts = np.asarray(rows, dtype=float)
    if not np.all(np.isfinite(pts)):
        raise CommandError(_R.INVALID_GOAL, "non-finite positions")
    try:
        t = check_timing(times)     # all zero (default speed) or strictly increasing from > 0
    except GoalRefused as exc:
        raise CommandError(exc.code, str(exc)) from None
    durations = np.diff(np.r_[0.0, t]) if np.all(t > 0) else np.zeros(len(t))
    return pts, durations


def _descriptor(text: str, **kw) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, **kw)


class SimNode(Node):
    def __init__(self):
        super().__init__("sim")
        from dexwm_robot import allegro as hand_joints
        from dexwm_ros.franka_arm import SETTING_BOUNDS, FrankaConfig
        from dexwm_sim.runner import RunnerConfig, SimRunner
        from dexwm_sim.tasks import MAX_SEED, TASKS

        self.hand_names = tuple(hand_joints.JOINT_NAMES)
        p = self.declare_parameter
        # Start-up values only (read-only): later episodes come from /sim/reset.
        p("task", "paper-grasp", _descriptor(f"episode task at start: {', '.join(TASKS)}", read_only=True))
        # dynamic_typing: a seed too large for an int64 arrives as a double, which rclpy would
        # otherwise drop in favour of the default (episode 0) without a word; it is refused below.
        p("seed", 0, _descriptor(f"episode seed at start, 0 .. {MAX_SEED}", read_only=True, dynamic_typing=True,
                                 integer_range=[IntegerRange(from_value=0, to_value=MAX_SEED, step=1)]))
        p("real_time_factor", 1.0, _descriptor("simulated seconds per wall-clock second", read_only=True))
        p("lockstep", False, _descriptor("simulated time advances only while a motion command is under way "
                                         "(the world waits for the planner, as in an in-process evaluation)",
                                         read_only=True))
        p("image_rate_hz", 10.0, _descriptor("camera image rate [Hz] (wall clock)", read_only=True))
        p("image_width", 224, _descriptor("camera image width [px] (up to 640)", read_only=True))
        p("image_height", 224, _descriptor("camera image height [px] (up to 480)", read_only=True))
        p("publish_depth", False, _descriptor("also publish aligned depth (16UC1, mm)", read_only=True))
        p("state_rate_hz", 50.0, _descriptor("joint_states rate [Hz]", read_only=True))
        p("arm_speed", 0.8, _descriptor("joint speed of arm motions without timing [rad/s]", read_only=True))
        p("hand_speed", 3.0, _descriptor("joint speed of hand motions without timing [rad/s]", read_only=True))
        p("arm_goal_tolerance", 0.01, ranged("default move_joints tolerance of the arm [rad]",
                                             *LIVE_BOUNDS["arm_goal_tolerance"]))
        p("hand_goal_tolerance", 0.03, ranged("default move_joints tolerance of the hand [rad]",
                                              *LIVE_BOUNDS["hand_goal_tolerance"]))
        p("arm_time_limit_s", 30.0, ranged("arm move_joints time limit when the goal gives none [s]",
                                           *LIVE_BOUNDS["arm_time_limit_s"]))
        p("hand_time_limit_s", 5.0, ranged("hand move_joints time limit when the goal gives none [s]",
                                           *LIVE_BOUNDS["hand_time_limit_s"]))
        p("max_command_age_s", DEFAULT_MAX_COMMAND_AGE_S,
          ranged("refuse commands whose header stamp is older than this (unstamped ones are accepted) [s]",
                 *LIVE_BOUNDS["max_command_age_s"]))
        p("max_joint_step", FrankaConfig().max_joint_step,
          ranged("largest arm joint change per command, enforced as the franka driver does [rad]",
                 *SETTING_BOUNDS["max_joint_step"], read_only=True))
        p("frame_id", "camera_color_optical_frame", _descriptor("camera frame id", read_only=True))
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        if g("task") not in TASKS:
            raise ValueError(f"unknown task {g('task')!r}; choose one of {', '.join(TASKS)}")
        seed = g("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
        for name in ("real_time_factor", "image_rate_hz", "state_rate_hz", "arm_speed", "hand_speed",
                     "arm_goal_tolerance", "hand_goal_tolerance", "arm_time_limit_s", "hand_time_limit_s"):
            v = float(g(name))
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"parameter {name} must be a positive number, got {v}")
        width, height = int(g("image_width")), int(g("image_height"))
        if not (16 <= width <= 640 and 16 <= height <= 480):
            raise ValueError(f"image size must be within 16x16 .. 640x480, got {width}x{height}")
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.frame_id = g("frame_id")

        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.image_pub = self.create_publisher(Image, "/camera/camera/color/image_raw", reliable)
        self.info_pub = self.create_publisher(CameraInfo, "/camera/camera/color/camera_info", reliable)
        self.depth_pub = None
        if g("publish_depth"):
            self.depth_pub = self.create_publisher(Image, "/camera/camera/aligned_depth_to_color/image_raw", reliable)
        self.arm_pub = self.create_publisher(JointState, "/franka/joint_states", 10)
        self.hand_pub = self.create_publisher(JointState, "/allegro/joint_states", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.episode_pub = self.create_publisher(EpisodeState, "/sim/episode", 10)
        self.goal_pub = self.create_publisher(Image, "/sim/goal_image", latched)

        self._problem = {"arm": "", "hand": ""}
        self._lock = threading.Lock()
        config = RunnerConfig(task=g("task"), seed=int(g("seed")), real_time_factor=float(g("real_time_factor")),
                              image_rate_hz=float(g("image_rate_hz")), image_size=(width, height),
                              render_depth=bool(g("publish_depth")), state_rate_hz=float(g("state_rate_hz")),
                              arm_speed=float(g("arm_speed")), hand_speed=float(g("hand_speed")),
                              goal_size=(width, height), lockstep=bool(g("lockstep")),
                              arm_max_joint_step=float(g("max_joint_step")))
        # The runner validates task, seed and rates (ValueError -> clear message in main()).
        self.runner = SimRunner(config, on_state=self._on_state, on_frame=self._on_frame,
                                on_episode=self._on_episode, on_goal=self._on_goal)
        self.camera_info = self._make_camera_info(width, height)

        group = ReentrantCallbackGroup()
        self.create_subscription(JointTrajectory, "/franka/joint_command", self._on_arm_command, 10,
                                 callback_group=group)
        self.create_subscription(JointState, "/allegro/joint_command", self._on_hand_command, 10,
                                 callback_group=group)
        self.create_service(Trigger, "/franka/stop", lambda rq, rs: self._stop("arm", rs), callback_group=group)
        self.create_service(Trigger, "/franka/recover", self._on_recover, callback_group=group)
        self.create_service(Trigger, "/allegro/stop", lambda rq, rs: self._stop("hand", rs), callback_group=group)
        # Resets block for the goal rendering (about a second): their own group keeps the rest responsive.
        self.create_service(ResetEpisode, "/sim/reset", self._on_reset,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.arm_action = ActionServer(self, MoveJoints, "/franka/move_joints",
                                       execute_callback=lambda h: self._execute("arm", h),
                                       goal_callback=lambda goal: GoalResponse.ACCEPT,
                                       cancel_callback=lambda handle: CancelResponse.ACCEPT, callback_group=group)
        self.hand_action = ActionServer(self, MoveJoints, "/allegro/move_joints",
                                        execute_callback=lambda h: self._execute("hand", h),
                                        goal_callback=lambda goal: GoalResponse.ACCEPT,
                                        cancel_callback=lambda handle: CancelResponse.ACCEPT, callback_group=group)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=group)

        start = self.runner.start()
        if not start.ok:
            self.runner.close()
            raise ValueError(start.message)
        self.get_logger().info(f"simulation running: {start.message}, real-time factor "
                               f"{config.real_time_factor:g}{' (lock-step)' if config.lockstep else ''}, camera {width}x{height} at {config.image_rate_hz:g} Hz")

    # --- parameters -------------------------------------------------------------------------------
    def _on_set_parameters(self, params):
        problem = first_problem(params, LIVE_BOUNDS)
        if problem:
            self.get_logger().warning(f"parameter change refused: {problem}")
            return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    # --- runner callbacks (physics thread) ---------------------------------------------------------
    def _stamp(self):
        return self.get_clock().now().to_msg()

    def _on_state(self, snap) -> None:
        if snap is None or not self.context.ok():
            return
        stamp = self._stamp()
        for pub, names, sl in ((self.arm_pub, ARM_NAMES, slice(0, 7)), (self.hand_pub, self.hand_names, slice(7, 23))):
            msg = JointState()
            msg.header.stamp = stamp
            msg.name = list(names)
            msg.position = snap.position[sl].tolist()
            msg.velocity = snap.velocity[sl].tolist()
            msg.effort = snap.effort[sl].tolist()
            pub.publish(msg)

    def _on_frame(self, frame) -> None:
        if not self.context.ok():
            return
        now = time.time()
        msg = numpy_to_image(frame.rgb, now, self.frame_id, "rgb8")
        stamp = msg.header.stamp
        self.image_pub.publish(msg)
        info = self.camera_info
        info.header.stamp = stamp
        self.info_pub.publish(info)
        if self.depth_pub is not None and frame.depth is not None:
            mm = np.clip(np.nan_to_num(frame.depth * 1000.0, nan=0.0, posinf=0.0), 0, 65535).astype(np.uint16)
            self.depth_pub.publish(numpy_to_image(mm, now, self.frame_id, "16UC1"))

    def _on_episode(self, status, episode) -> None:
        if not self.context.ok():
            return
        msg = EpisodeState()
        msg.header.stamp = self._stamp()
        msg.task = status.task
        msg.seed = int(status.seed)
        msg.step = int(status.step)
        msg.success_now = bool(status.success_now)
        msg.success_streak = int(status.streak)
        msg.required_streak = int(status.required_streak)
        msg.success = bool(status.success)
        msg.distance = float(status.distance) if math.isfinite(status.distance) else float("nan")
        self.episode_pub.publish(msg)

    def _on_goal(self, result) -> None:
        if self.context.ok() and result.goal_image is not None:
            self.goal_pub.publish(numpy_to_image(result.goal_image, time.time(), self.frame_id, "rgb8"))

    def _make_camera_info(self, width: int, height: int) -> CameraInfo:
        K = self.runner.env.camera.intrinsics(width, height)
        info = CameraInfo()
        info.header.frame_id = self.frame_id
        info.width, info.height = width, height
        info.distortion_model = "plumb_bob"
        info.d = [0.0] * 5
        info.k = K.reshape(-1).tolist()
        info.r = np.eye(3).reshape(-1).tolist()
        info.p = np.c_[K, np.zeros(3)].reshape(-1).tolist()
        return info

    # --- commands ---------------------------------------------------------------------------------
    def _report(self, part: str, problem: str) -> None:
        self._problem[part] = problem
        self.get_logger().warning(problem)

    def _check_age(self, stamp, what: str) -> None:
        check_command_age(seconds(stamp), self.get_clock().now().nanoseconds * 1e-9,
                          float(self.get_parameter("max_command_age_s").value), what)

    def _on_arm_command(self, msg: JointTrajectory) -> None:
        try:
            self._check_age(msg.header.stamp, "joint_command")
            pts, durations = trajectory_points(msg, ARM_NAMES)
            self.runner.command("arm", pts, durations)
            self._problem["arm"] = ""
        except ValueError as exc:
            self._report("arm", f"/franka/joint_command rejected: {exc}")

    def _on_hand_command(self, msg: JointState) -> None:
        try:
            self._check_age(msg.header.stamp, "joint_command")
            order = _order(msg.name, self.hand_names)
            if len(msg.position) != len(self.hand_names):
                raise CommandError(_R.INVALID_GOAL, f"{len(msg.position)} positions, expected {len(self.hand_names)}")
            cmd = self.runner.command("hand", [msg.position[i] for i in order])
            self._problem["hand"] = cmd.note
        except ValueError as exc:
            self._report("hand", f"/allegro/joint_command rejected: {exc}")

    def _stop(self, part: str, response):
        self.runner.stop(part)
        response.success = True
        response.message = f"{'arm' if part == 'arm' else 'hand'} stopped; holding position"
        self.get_logger().info(response.message)
        return response

    def _on_recover(self, request, response):
        # The simulated arm has no reflex errors; a recover clears reported problems and confirms.
        self._problem["arm"] = ""
        response.success = True
        response.message = "simulated arm ready (no error to recover from)"
        return response

    def _on_reset(self, request, response):
        result = self.runner.reset(request.task, int(request.seed))
        response.success = result.ok
        response.message = result.message
        if result.ok:
            response.goal_image = numpy_to_image(result.goal_image, time.time(), self.frame_id, "rgb8")
            self.get_logger().info(result.message)
        else:
            self.get_logger().warning(f"/sim/reset: {result.message}")
        return response

    def _execute(self, part: str, goal_handle):
        from dexwm_sim.runner import MOVING, PREEMPTED, REACHED, RESET, STOPPED, TIMED_OUT

        goal = goal_handle.request
        result = MoveJoints.Result()
        names = ARM_NAMES if part == "arm" else self.hand_names
        sl = slice(0, 7) if part == "arm" else slice(7, 23)
        n = len(names)

        def finish(code: int, message: str, error=None):
            result.error_code, result.message = code, message
            if error is not None:
                result.final_error = [float(e) for e in error]
            end_goal(goal_handle, code)
            if code not in (_R.SUCCESSFUL, _R.CANCELED) and not is_deliberate(code):
                self._report(part, f"{'/franka' if part == 'arm' else '/allegro'}/move_joints: {message}")
            return result

        try:
            self._check_age(goal.trajectory.header.stamp, "goal")
            pts, durations = trajectory_points(goal.trajectory, names)
            tol = check_tolerance(goal.goal_tolerance, n, float(self.get_parameter(f"{part}_goal_tolerance").value))
            limit = check_time_limit(seconds(goal.time_limit))
            if limit == 0:
                limit = float(self.get_parameter(f"{part}_time_limit_s").value)
            # The runner judges the goal in simulated time (tolerance and time limit).
            cmd = self.runner.command(part, pts, durations, tolerance=tol, time_limit=limit)
        except (CommandError, GoalRefused) as exc:
            return finish(exc.code, str(exc))
        except CommandRejected as exc:
            return finish(_CODES[exc.code], str(exc))
        except ValueError as exc:
            return finish(_R.INVALID_GOAL, str(exc))
        self._problem[part] = cmd.note
        # Backstop in wall-clock time, should the physics thread stall: the runner's own limit
        # (simulated time) normally ends the goal long before.
        deadline = time.monotonic() + 2.0 * limit / self.runner.config.real_time_factor + 5.0
        feedback = MoveJoints.Feedback()
        error = None
        while True:
            snap = self.runner.snapshot()
            if snap is not None:
                error = cmd.target - snap.position[sl]
                feedback.error = error.tolist()
                feedback.max_abs_error = float(np.max(np.abs(error)))
                goal_handle.publish_feedback(feedback)
            status = cmd.status
            if goal_handle.is_cancel_requested:
                if cmd.under_way:
                    self.runner.stop(part)
                return finish(_R.CANCELED, "canceled; holding position", error)
            if not goal_handle.is_active:
                return result
            if status == PREEMPTED:
                return finish(_R.PREEMPTED, "preempted by a newer command", error)
            if status == STOPPED:
                return finish(_R.STOPPED, "stopped by the stop service", error)
            if status == RESET:
                return finish(_R.ROBOT_ERROR, f"simulation reset: {cmd.note}", error)
            if status in (REACHED, TIMED_OUT) and cmd.final_error is not None:
                error = cmd.final_error      # the joints the verdict was based on
            if status == REACHED:
                return finish(_R.SUCCESSFUL, "target reached" + (f" ({cmd.note})" if cmd.note else ""), error)
            if status == TIMED_OUT or time.monotonic() > deadline:
                if status == MOVING:
                    self.runner.stop(part)
                worst = float(np.max(np.abs(error))) if error is not None else float("nan")
                return finish(_R.TIMEOUT, f"target not reached within {limit:.2f} s (max error {worst:.4f} rad); "
                                          "holding", error)
            time.sleep(0.02)     # feedback at 50 Hz; in lock-step the world waits regardless

    # --- diagnostics --------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        statuses = []
        faults = self.runner.faults
        for part, name in (("arm", "sim: franka arm"), ("hand", "sim: allegro hand")):
            st = DiagnosticStatus(name=name, hardware_id="mujoco")
            if not self.runner.alive:
                st.level, st.message = DiagnosticStatus.ERROR, "simulation thread stopped"
            elif self._problem[part]:
                st.level, st.message = DiagnosticStatus.WARN, self._problem[part]
            else:
                st.level, st.message = DiagnosticStatus.OK, "ok"
            statuses.append(st)
        sim = DiagnosticStatus(name="sim: physics", hardware_id="mujoco")
        status, episode = self.runner.episode_status()
        sim.level = DiagnosticStatus.WARN if faults else DiagnosticStatus.OK
        sim.message = faults[-1] if faults else "running"
        sim.values = [
            KeyValue(key="real_time_factor_target", value=f"{self.runner.config.real_time_factor:g}"),
            KeyValue(key="real_time_factor_achieved", value=f"{self.runner.achieved_rtf:.2f}"),
            KeyValue(key="physics_resets", value=str(len(faults))),
            KeyValue(key="task", value=status.task if status else ""),
            KeyValue(key="seed", value=str(status.seed) if status else ""),
        ]
        statuses.append(sim)
        msg = DiagnosticArray(status=statuses)
        msg.header.stamp = self._stamp()
        self.diag_pub.publish(msg)

    def destroy_node(self):
        if hasattr(self, "runner"):
            self.runner.close()
        super().destroy_node()


def main(args=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="[sim] %(levelname)s %(name)s: %(message)s")
    return run_node("sim", SimNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
