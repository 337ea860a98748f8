"""ROS 2 node ``planner`` (namespace ``dexwm``): plan and act toward a goal image with DexWM.

A thin adapter: an Execute goal is read by :func:`dexwm_ros.execute_request.read_request` and run
by :class:`dexwm_ros.planner_run.GoalRun` (one PlanningSession, or a SubgoalSequence, as the
in-process evaluation runs) with the world model inside MPC/CEM (:mod:`dexwm_ros.planner_setup`)
and the ROS graph as the robot (:class:`dexwm_ros.planner_robot.MoveJointsRobot`). Parameters:
:class:`dexwm_ros.planner_settings.PlannerSettings`; goals and sequences: :mod:`dexwm_ros.goal_store`.

- action ``/dexwm/execute`` (Execute): plan and act until the stop rule, a failure or a cancel;
  feedback after every executed step; a cancel (and node shutdown) stops both drivers;
- service ``/dexwm/capture_goal`` (Trigger) and RViz's ``/goal_pose``, ``/clicked_point``: the current
  frame and joints become the goal; the ``goal_image`` parameter loads one from a file;
- service ``/dexwm/capture_sequence`` (CaptureSequence) and RViz's ``/initialpose``: append to, list,
  clear a named goal sequence; an Execute goal with goal images or a sequence's name runs subgoals;
- publishes ``/dexwm/goal_image`` (the active (sub)goal), ``/dexwm/predicted_rollout`` (both transient
  local), ``/dexwm/keypoints``, ``/dexwm/status``, ``/diagnostics`` (dexwm_ros.planner_outputs).

Commands go to ``/franka/move_joints`` and ``/allegro/move_joints``, each checked by the session
(finite, inside the limits, under the per-step cap); stale inputs pause planning (the robot holds).
A goal runs on its own executor thread, so subscriptions, services and cancels are served meanwhile.
"""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped, PoseStamped, PoseWithCovarianceStamped
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from dexwm_planner.session import CANCELED, Progress
from dexwm_robot.joints import ARM_JOINT_NAMES, HAND_JOINT_NAMES
from dexwm_ros import planner_outputs as out
from dexwm_ros.action import Execute
from dexwm_ros.execute_request import Refused, read_request
from dexwm_ros.goal_images import Goal, goal_from_file
from dexwm_ros.goal_store import APPEND, GoalStore
from dexwm_ros.image_conversion import numpy_to_image
from dexwm_ros.msg import PlannerStatus
from dexwm_ros.node_main import run_node
from dexwm_ros.node_parameters import NodeParameters
from dexwm_ros.planner_robot import MoveJointsRobot
from dexwm_ros.planner_run import GoalRun, GoalSlot
from dexwm_ros.planner_settings import PlannerSettings
from dexwm_ros.planner_setup import WorldModelPlanning
from dexwm_ros.ros_logging import log_outcome
from dexwm_ros.srv import CaptureSequence

CAMERA_FRAME = "camera_color_optical_frame"


class PlannerNode(Node):
    def __init__(self, model=None, kinematics=None, **node_kwargs):
        super().__init__("planner", namespace="dexwm", **node_kwargs)
        self._pending_goal: Goal | None = None      # a goal_image file checked, to be set once accepted
        self.params = NodeParameters(self, PlannerSettings, check=self._check_change, apply=self._apply_change)
        s = self.params.values
        self.planning = WorldModelPlanning(s, model, kinematics, self.get_logger())
        self.goals = GoalStore()
        self._slot = GoalSlot()                      # one goal at a time; a cancel ends its run
        self.shown = out.PlannerState(task=s.task)     # what the status and the diagnostics report

        sensors, work = MutuallyExclusiveCallbackGroup(), ReentrantCallbackGroup()
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.robot = MoveJointsRobot(self, ARM_JOINT_NAMES, HAND_JOINT_NAMES, s.image_topic, s.arm_state_topic,
                                     s.hand_state_topic, sensors, work, depth_topic=s.depth_topic)
        self.create_subscription(PoseStamped, "/goal_pose", lambda _m: self._capture("/goal_pose"), 10,
                                 callback_group=work)
        self.create_subscription(PointStamped, "/clicked_point", lambda _m: self._capture("/clicked_point"), 10,
                                 callback_group=work)
        self.create_subscription(PoseWithCovarianceStamped, "/initialpose", self._append_from_rviz, 10,
                                 callback_group=work)
        self.goal_pub = self.create_publisher(Image, "/dexwm/goal_image", latched)
        self.rollout_pub = self.create_publisher(Image, "/dexwm/predicted_rollout", latched)
        self.marker_pub = self.create_publisher(MarkerArray, "/dexwm/keypoints", 10)
        self.status_pub = self.create_publisher(PlannerStatus, "/dexwm/status", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "/dexwm/capture_goal", self._on_capture, callback_group=work)
        self.create_service(CaptureSequence, "/dexwm/capture_sequence", self._on_capture_sequence,
                            callback_group=work)
        self._server = ActionServer(self, Execute, "/dexwm/execute", execute_callback=self._execute,
                                    goal_callback=self._on_goal_request, cancel_callback=self._on_cancel,
                                    callback_group=work)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=sensors)
        # Shutdown in the middle of a goal: no new command leaves this node.
        self.context.on_shutdown(self._on_shutdown)
        if s.goal_image:
            try:
                self._set_goal(goal_from_file(s.goal_image, None))
            except ValueError as e:
                self.get_logger().error(f"goal_image parameter: {e}")
        self._publish_status()
        self.get_logger().info(f"planner ready (preset {s.preset}, model image {self.planning.image_size})")

    # ------------------------------------------------------------------------ parameters, inputs
    def _check_change(self, settings: PlannerSettings, changed: set[str]) -> str | None:
        self._pending_goal = None
        if "goal_image" in changed and settings.goal_image:
            try:
                self._pending_goal = goal_from_file(settings.goal_image, self.robot.camera_size())
            except ValueError as e:
                return str(e)
        return None

    def _apply_change(self, settings: PlannerSettings, changed: set[str]) -> None:
        goal, self._pending_goal = self._pending_goal, None
        if goal is not None:
            self._set_goal(goal)

    def stale_inputs(self) -> list[str]:
        """Names of the inputs that are missing or older than stale_timeout_s."""
        return self.robot.stale_inputs(self.params.values.stale_timeout_s)

    def _observe(self):
        return self.robot.observe_fresh(self.params.values.stale_timeout_s)

    # ------------------------------------------------------------------------------- goals
    def _set_goal(self, goal: Goal) -> None:
        self._show_goal(self.goals.set_goal(goal, self.robot.camera_size()))

    def _show_goal(self, goal: Goal) -> None:
        self.goal_pub.publish(numpy_to_image(goal.image, self.get_clock().now().to_msg(), CAMERA_FRAME))
        self.get_logger().info(f"goal set from {goal.source} ({goal.image.shape[1]}x{goal.image.shape[0]})")
        self._publish_status()

    def capture_goal(self, source: str) -> tuple[bool, str]:
        try:
            self._show_goal(self.goals.capture(source, self._observe))
        except LookupError as e:
            return False, str(e)
        return True, f"goal captured from the current camera frame and joints ({source})"

    def _on_capture(self, _request, response):
        response.success, response.message = self.capture_goal("/dexwm/capture_goal")
        log_outcome(self.get_logger(), response.success, response.message)
        return response

    def _capture(self, topic: str):
        log_outcome(self.get_logger(), *self.capture_goal(topic))

    def _on_capture_sequence(self, request, response):
        response.success, response.message, response.phases = self.goals.edit_sequence(
            request.command, request.sequence, request.phase, self._observe)
        log_outcome(self.get_logger(), response.success, f"capture_sequence {request.command}: {response.message}")
        return response

    def _append_from_rviz(self, _msg):
        ok, message, _ = self.goals.edit_sequence(APPEND, self.params.values.capture_sequence, "", self._observe)
        log_outcome(self.get_logger(), ok, f"/initialpose: {message}")

    # ------------------------------------------------------------------------------ action
    def _on_goal_request(self, _request):
        if self._slot.take():
            return GoalResponse.ACCEPT
        self.get_logger().warning("Execute goal rejected: another goal is being executed")
        return GoalResponse.REJECT

    def _on_cancel(self, _goal_handle):
        self.get_logger().info("cancel requested")
        self._interrupt_goal(CANCELED)
        return CancelResponse.ACCEPT

    def _on_shutdown(self) -> None:
        self._interrupt_goal("shutdown")

    def _interrupt_goal(self, reason: str) -> None:
        self._slot.cancel(reason)
        self.robot.wake()          # a move under way stops waiting now

    def _execute(self, goal_handle):
        s = self.params.values
        try:
            plan = read_request(goal_handle.request, s.task, s.max_steps, self.goals, self.robot.camera_size())
            if plan.new_goal:
                self._set_goal(plan.goals[0])
            run = GoalRun(self.robot, self.planning, s, plan, camera=self.robot.camera,
                          on_feedback=lambda p: self._feedback(goal_handle, p),
                          on_state=self._set_state, on_plan=self._publish_plan, on_subgoal=self._on_subgoal,
                          interrupt=lambda: self._interruption(goal_handle), log=self.get_logger())
            self.shown.task, self.shown.sequence, self.shown.progress = plan.task, plan.name, run.progress
            self._slot.start(run)
            self.get_logger().info(f"executing {run.describe()}")
            success, steps, reason, subgoal_reasons = run.run()
        except Refused as e:
            self.get_logger().error(f"Execute goal refused: {e}")
            goal_handle.abort()
            return out.result_message(False, 0, Progress(), str(e))
        except Exception as e:  # the session has left the robot holding; the node lives on
            self.get_logger().error(f"execution failed: {type(e).__name__}: {e}")
            self._set_state("failed")
            goal_handle.abort()
            return out.result_message(False, self.shown.progress.steps, self.shown.progress, "error: " + str(e))
        finally:
            self.shown.sequence = self.shown.phase = ""
            self._slot.release()
        out.end_goal(goal_handle, success, reason)
        return out.result_message(success, steps, self.shown.progress, reason, subgoal_reasons)

    def _interruption(self, goal_handle) -> str | None:
        if goal_handle.is_cancel_requested:
            return CANCELED
        return None if self.context.ok() else "shutdown"

    def _on_subgoal(self, index: int, subgoal, progress: Progress):
        self.shown.phase, self.shown.progress = subgoal.search.phase, progress
        self.goal_pub.publish(numpy_to_image(subgoal.image, self.get_clock().now().to_msg(), CAMERA_FRAME))
        self._publish_status()

    def _feedback(self, goal_handle, progress: Progress) -> None:
        self.shown.progress = progress   # a sequence has one per subgoal
        goal_handle.publish_feedback(out.feedback_message(progress))

    # ------------------------------------------------------------------------------- outputs
    def _set_state(self, state: str):
        self.shown.state = state
        self._publish_status()

    def _publish_status(self):
        self.status_pub.publish(self.shown.status(self.get_clock().now().to_msg(), self.goals.goal is not None))

    def _publish_diagnostics(self):
        self.diag_pub.publish(self.shown.diagnostics(self.get_clock().now().to_msg(), self.stale_inputs(),
                                                     self.goals.goal is not None))

    def _publish_plan(self, image, plan):
        stamp = self.get_clock().now().to_msg()
        try:
            strip = out.rollout_image(self.planning.model, self._slot.run.planner, image, plan, self.planning.image_size)
            self.rollout_pub.publish(numpy_to_image(strip, stamp, CAMERA_FRAME))
        except Exception as e:  # visualisation must never stop the robot
            self.get_logger().warning(f"rollout image not published: {e}", throttle_duration_sec=10.0)
        self.marker_pub.publish(out.keypoint_markers(self.planning.kin.keypoints_world(plan.plan),
                                                     self.params.values.frame_id, stamp))


def main(args=None) -> int:
    # Shutdown in the middle of a goal: the session sends no new command; the drivers finish the
    # last (capped) step and hold there.
    return run_node("planner", PlannerNode, args, startup_errors=(ValueError, RuntimeError, OSError),
                    startup_exit_code=1)


if __name__ == "__main__":
    raise SystemExit(main())
