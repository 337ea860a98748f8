"""ROS 2 node ``sim``: the embedded MuJoCo simulation behind the camera, franka and allegro interfaces.

A thin adapter over :class:`dexwm_sim.runner.SimRunner` (which owns the physics thread) and its arm
and hand as joint groups (dexwm_sim.joint_groups). It offers exactly the graph of the hardware nodes
(docs/CONTRACT.md), so the planner cannot tell the difference, plus the evaluation interfaces of the
simulation:

- camera: ``/camera/camera/color/image_raw`` (rgb8, RELIABLE), ``/camera/camera/color/camera_info``
  (the simulated camera's real intrinsics), optional ``/camera/camera/aligned_depth_to_color/image_raw``
  (16UC1, mm);
- arm: ``/franka/joint_states``, action ``/franka/move_joints``, topic ``/franka/joint_command``
  (JointTrajectory), services ``/franka/stop``, ``/franka/recover``;
- hand: ``/allegro/joint_states``, action ``/allegro/move_joints``, topic ``/allegro/joint_command``
  (JointState positions), service ``/allegro/stop``; ``/diagnostics``;
- simulation: services ``/sim/reset`` (ResetEpisode: seeded episode + goal image) and ``/sim/hold``
  (HoldEpisode: simulated time passes with the last targets kept; did the success rule hold), topic
  ``/sim/episode`` (EpisodeState, every control step), ``/sim/goal_image`` (transient local).

Both MoveJoints actions are the one server of dexwm_ros.move_joints (tolerances and time limits in
simulated time); the runner refuses exactly what the franka and allegro drivers refuse
(dexwm_robot.command_limits). Refusals are logged and shown on /diagnostics. Parameters:
:class:`dexwm_ros.sim_settings.SimSettings`.
"""
from __future__ import annotations

import logging

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dexwm_ros.move_joints import MoveJointsServer, check_command_age, check_timing, full_points, joint_index
from dexwm_ros.node_main import run_node
from dexwm_ros.node_parameters import NodeParameters
from dexwm_ros.ros_time import seconds
from dexwm_ros.sim_publishers import SimPublishers
from dexwm_ros.sim_settings import SimSettings
from dexwm_ros.srv import HoldEpisode, ResetEpisode
from dexwm_sim.joint_groups import SimJointGroup
from dexwm_sim.runner import SimRunner

# part -> (driver namespace, diagnostics name)
PARTS = {"arm": ("/franka", "sim: franka arm"), "hand": ("/allegro", "sim: allegro hand")}


class SimNode(Node):
    def __init__(self):
        super().__init__("sim")
        # Live changes (tolerances, time limits, command age) are read when a command comes.
        self.params = NodeParameters(self, SimSettings)
        s = self.params.values
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self._problem = {"arm": "", "hand": ""}
        config = s.runner_config()
        # The runner validates task, seed and rates (ValueError -> clear message in main()).
        self.runner = SimRunner(config)
        self.topics = SimPublishers(self, s.frame_id, self.runner.env.camera.intrinsics(*config.image_size),
                                    *config.image_size, s.publish_depth)
        t = self.topics
        self.runner.on_state, self.runner.on_frame, self.runner.on_episode, self.runner.on_goal = (
            t.on_state, t.on_frame, t.on_episode, t.on_goal)
        self.groups = {part: SimJointGroup(self.runner, part) for part in PARTS}

        group = ReentrantCallbackGroup()
        # Each command stream applies one message at a time, in the order sent (in a reentrant group
        # an older command could overtake and pre-empt a newer one).
        self.create_subscription(JointTrajectory, "/franka/joint_command", lambda m: self._on_command(
            "arm", m.header.stamp, m.joint_names, [pt.positions for pt in m.points],
            [seconds(pt.time_from_start) for pt in m.points]), 10, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_subscription(JointState, "/allegro/joint_command", lambda m: self._on_command(
            "hand", m.header.stamp, m.name, [m.position], [0.0]), 10, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(Trigger, "/franka/recover", self._on_recover, callback_group=group)
        # Resets block for the goal rendering (about a second): their own group keeps the rest responsive.
        self.create_service(ResetEpisode, "/sim/reset", self._on_reset, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(HoldEpisode, "/sim/hold", self._on_hold, callback_group=MutuallyExclusiveCallbackGroup())
        self.servers = []
        for part, (ns, _) in PARTS.items():
            self.create_service(Trigger, f"{ns}/stop", lambda rq, rs, part=part: self._stop(part, rs),
                                callback_group=group)
            self.servers.append(MoveJointsServer(
                self, f"{ns}/move_joints", self.groups[part], tolerance_param=f"{part}_goal_tolerance",
                time_limit_param=f"{part}_time_limit_s", callback_group=group,
                report=lambda problem, refused, part=part: self._report(part, problem),
                wall_time_factor=1.0 / config.real_time_factor))
        self.create_timer(1.0, self._publish_diagnostics, callback_group=group)

        start = self.runner.start()
        if not start.ok:
            self.runner.close()
            raise ValueError(start.message)
        self.get_logger().info(f"simulation running: {start.message}, real-time factor {config.real_time_factor:g}"
                               f"{' (lock-step)' if config.lockstep else ''}, camera {s.image_width}x"
                               f"{s.image_height} at {config.image_rate_hz:g} Hz")

    # --- commands ---------------------------------------------------------------------------------
    def _report(self, part: str, problem: str | None) -> None:
        self._problem[part] = problem or ""
        if problem:
            self.get_logger().warning(problem)

    def _on_command(self, part: str, stamp, names, rows, times) -> None:
        group = self.groups[part]
        try:
            check_command_age(seconds(stamp), self.get_clock().now().nanoseconds * 1e-9,
                              self.params.values.max_command_age_s, "joint_command")
            group.move(full_points(joint_index(names, group), rows, group), times=check_timing(times))
            self._problem[part] = ""
        except ValueError as exc:   # GoalRefused, CommandRejected and the runner's checks
            self._report(part, f"{PARTS[part][0]}/joint_command rejected: {exc}")

    def _stop(self, part: str, response):
        response.message = self.groups[part].stop()
        response.success = True
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
        response.success, response.message = result.ok, result.message
        if result.ok:
            response.goal_image = self.topics.image(result.goal_image)
            self.get_logger().info(result.message)
        else:
            self.get_logger().warning(f"/sim/reset: {result.message}")
        return response

    def _on_hold(self, request, response):
        result = self.runner.hold(float(request.duration_s))
        response.success, response.message = result.ok, result.message
        response.control_steps, response.held, response.distance = result.control_steps, result.held, result.distance
        if not result.ok:
            self.get_logger().warning(f"/sim/hold: {result.message}")
        return response

    def _publish_diagnostics(self) -> None:
        statuses = []
        faults = self.runner.faults
        for part, (_, name) in PARTS.items():
            st = DiagnosticStatus(name=name, hardware_id="mujoco")
            if not self.runner.alive:
                st.level, st.message = DiagnosticStatus.ERROR, "simulation thread stopped"
            elif self._problem[part]:
                st.level, st.message = DiagnosticStatus.WARN, self._problem[part]
            else:
                st.level, st.message = DiagnosticStatus.OK, "ok"
            statuses.append(st)
        status, _ = self.runner.episode_status()
        statuses.append(DiagnosticStatus(
            name="sim: physics", hardware_id="mujoco", level=DiagnosticStatus.WARN if faults else DiagnosticStatus.OK,
            message=faults[-1] if faults else "running", values=[
                KeyValue(key="real_time_factor_target", value=f"{self.runner.config.real_time_factor:g}"),
                KeyValue(key="real_time_factor_achieved", value=f"{self.runner.achieved_rtf:.2f}"),
                KeyValue(key="physics_resets", value=str(len(faults))),
                KeyValue(key="task", value=status.task if status else ""),
                KeyValue(key="seed", value=str(status.seed) if status else "")]))
        msg = DiagnosticArray(status=statuses)
        msg.header.stamp = self.get_clock().now().to_msg()
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
