"""Planner node (in-process, with a real randomly initialised DexWM) against a small test robot:
joint states + camera images from a test publisher, MoveJoints servers and stop services that
record what the planner sends. Covers goal capture through every trigger, the Execute action
(budget, cancel, no goal, bad goal images), stale-input pausing and the command safety limits."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PointStamped, PoseStamped  # noqa: E402
from rclpy.action import ActionClient, ActionServer, CancelResponse  # noqa: E402
from rclpy.callback_groups import ReentrantCallbackGroup  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from dexwm_robot import allegro as hand_joints  # noqa: E402
from dexwm_robot.franka import HOME as ARM_HOME  # noqa: E402
from dexwm_ros.action import Execute, MoveJoints  # noqa: E402
from dexwm_ros.msg import PlannerStatus  # noqa: E402
from dexwm_robot.joints import ARM_JOINT_NAMES as ARM_NAMES, HAND_JOINT_NAMES as HAND_NAMES  # noqa: E402
from dexwm_ros.image_conversion import numpy_to_image  # noqa: E402
from dexwm_ros.planner_node import PlannerNode  # noqa: E402
from dexwm_ros.ros_time import seconds  # noqa: E402
from rosutil import SpinThread, wait_for  # noqa: E402


def rgb_to_image_msg(image: np.ndarray, stamp=0.0) -> Image:
    return numpy_to_image(np.ascontiguousarray(image, dtype=np.uint8), stamp, "")



class RobotDouble(Node):
    """Publishes joints and a camera image that depends on them; executes MoveJoints instantly
    (or slowly, to leave time for a cancel); counts stop-service calls."""

    def __init__(self, context, move_seconds=0.05):
        super().__init__("test_robot", context=context)
        self.q = np.r_[ARM_HOME, hand_joints.OPEN_POSE]
        self.move_seconds = move_seconds
        self.publish_images = True
        self.last_image_stamp: float | None = None   # stamp of the last image published [s]
        self.image_clock_offset = 0.0     # seconds added to image stamps (a camera on another clock)
        self.targets: list[tuple[str, np.ndarray, np.ndarray]] = []   # (driver, q before, target)
        self.stamps: list[float] = []        # trajectory header stamps of the goals received [s]
        self.accept_delay = 0.0              # seconds a driver takes to accept a goal (a stalled driver)
        self.feedback = True                 # feedback while moving, as the real drivers send (False: a hung one)
        self.canceled = 0                    # goals that ended canceled before moving
        self.stops = {"arm": 0, "hand": 0}
        self.lock = threading.Lock()
        group = ReentrantCallbackGroup()
        self.arm_pub = self.create_publisher(JointState, "/franka/joint_states", 10)
        self.hand_pub = self.create_publisher(JointState, "/allegro/joint_states", 10)
        self.image_pub = self.create_publisher(Image, "/camera/camera/color/image_raw",
                                               QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE))
        self.info_pub = self.create_publisher(CameraInfo, "/camera/camera/color/camera_info", 10)
        # The aligned depth of each frame, as a RealSense sends it (16UC1 [mm], the frame's stamp).
        self.publish_depth = True
        self.depth_pub = self.create_publisher(Image, "/camera/camera/aligned_depth_to_color/image_raw",
                                               QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE))
        self.K = np.array([[110.0, 0.0, 63.5], [0.0, 110.0, 47.5], [0.0, 0.0, 1.0]])   # of the 128x96 frames
        self.create_timer(0.05, self._publish, callback_group=group)
        for name, sl in (("arm", slice(0, 7)), ("hand", slice(7, 23))):
            prefix = "/franka" if name == "arm" else "/allegro"
            ActionServer(self, MoveJoints, f"{prefix}/move_joints", self._mover(name, sl),
                         goal_callback=self._accept, cancel_callback=lambda _g: CancelResponse.ACCEPT,
                         callback_group=group)
            self.create_service(Trigger, f"{prefix}/stop", self._stopper(name), callback_group=group)

    def image(self) -> np.ndarray:
        with self.lock:
            q = self.q.copy()
        img = np.zeros((96, 128, 3), np.uint8)
        # the "hand" is a blob whose place and size follow the joints
        cx = int(64 + 30 * np.tanh(q[0])); cy = int(48 + 20 * np.tanh(q[1] + 0.35))
        r = int(6 + 4 * np.tanh(q[7:].mean()))
        img[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] = (200, 120, 60)
        return img

    def _publish(self):
        stamp = self.get_clock().now().to_msg()
        with self.lock:
            q = self.q.copy()
        arm = JointState(name=list(ARM_NAMES), position=q[:7].tolist())
        hand = JointState(name=list(HAND_NAMES), position=q[7:].tolist())
        arm.header.stamp = hand.header.stamp = stamp
        self.arm_pub.publish(arm)
        self.hand_pub.publish(hand)
        if self.publish_images:
            image_stamp = stamp
            if self.image_clock_offset:
                image_stamp = self.get_clock().now().nanoseconds * 1e-9 + self.image_clock_offset
            msg = rgb_to_image_msg(self.image(), image_stamp)
            self.image_pub.publish(msg)
            self.info_pub.publish(CameraInfo(header=msg.header, width=128, height=96, k=self.K.ravel().tolist()))
            if self.publish_depth:
                self.depth_pub.publish(numpy_to_image(np.full((96, 128), 800, np.uint16), msg.header.stamp, "",
                                                      "16UC1"))
            self.last_image_stamp = seconds(msg.header.stamp)

    def _accept(self, goal):
        from rclpy.action import GoalResponse

        time.sleep(self.accept_delay)
        with self.lock:
            self.stamps.append(goal.trajectory.header.stamp.sec + goal.trajectory.header.stamp.nanosec * 1e-9)
        return GoalResponse.ACCEPT

    def _mover(self, name, sl):
        def execute(goal_handle):
            if goal_handle.is_cancel_requested:     # canceled while it was being accepted
                with self.lock:
                    self.canceled += 1
                goal_handle.canceled()
                return MoveJoints.Result(error_code=MoveJoints.Result.CANCELED, message="canceled")
            # A cancel right after the acceptance is still in time (the planner sends it from the
            # acceptance's done callback: one round trip, which took over 1 s once on a busy machine).
            grace = time.monotonic() + (3.0 if self.accept_delay else 0.1)
            while time.monotonic() < grace and not goal_handle.is_cancel_requested:
                time.sleep(0.02)
            if goal_handle.is_cancel_requested:
                with self.lock:
                    self.canceled += 1
                goal_handle.canceled()
                return MoveJoints.Result(error_code=MoveJoints.Result.CANCELED, message="canceled")
            goal = goal_handle.request
            names = list(goal.trajectory.joint_names)
            order = ARM_NAMES if name == "arm" else HAND_NAMES
            target = np.array([goal.trajectory.points[-1].positions[names.index(n)] for n in order])
            with self.lock:
                self.targets.append((name, self.q[sl].copy(), target))
            deadline = time.monotonic() + self.move_seconds
            next_feedback = time.monotonic()
            while time.monotonic() < deadline:
                if goal_handle.is_cancel_requested:
                    goal_handle.canceled()
                    return MoveJoints.Result(error_code=MoveJoints.Result.CANCELED, message="canceled")
                if self.feedback and time.monotonic() >= next_feedback:
                    goal_handle.publish_feedback(MoveJoints.Feedback(max_abs_error=0.1))
                    next_feedback += 0.1
                time.sleep(0.01)
            with self.lock:
                self.q[sl] = target
            goal_handle.succeed()
            return MoveJoints.Result(error_code=MoveJoints.Result.SUCCESSFUL)
        return execute

    def _stopper(self, name):
        def stop(_req, resp):
            self.stops[name] += 1
            resp.success, resp.message = True, "stopped"
            return resp
        return stop


class Client(Node):
    def __init__(self, context):
        super().__init__("test_client", context=context)
        self.statuses: list[PlannerStatus] = []
        self.goal_images: list[Image] = []
        self.rollouts: list[Image] = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(PlannerStatus, "/dexwm/status", self.statuses.append, 50)
        self.create_subscription(Image, "/dexwm/goal_image", self.goal_images.append, latched)
        self.create_subscription(Image, "/dexwm/predicted_rollout", self.rollouts.append, latched)
        self.capture = self.create_client(Trigger, "/dexwm/capture_goal")
        self.execute = ActionClient(self, Execute, "/dexwm/execute")
        self.pose_pub = self.create_publisher(PoseStamped, "/goal_pose", 10)
        self.point_pub = self.create_publisher(PointStamped, "/clicked_point", 10)


@pytest.fixture
def graph(rclpy_context):
    from dexwm_planner.world_model import DexWM

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    robot = RobotDouble(rclpy_context)
    client = Client(rclpy_context)
    planner = PlannerNode(model=DexWM(), context=rclpy_context, parameter_overrides=[
        rclpy.parameter.Parameter("samples", value=8), rclpy.parameter.Parameter("elites", value=2),
        rclpy.parameter.Parameter("iterations", value=1), rclpy.parameter.Parameter("stale_timeout_s", value=0.5),
        rclpy.parameter.Parameter("stale_abort_s", value=30.0),
        rclpy.parameter.Parameter("move_duration_s", value=0.05)])
    spin = SpinThread(MultiThreadedExecutor(num_threads=6, context=rclpy_context), robot, client, planner)
    wait_for(lambda: planner.stale_inputs() == [], 10, what="planner inputs")
    wait_for(lambda: client.execute.server_is_ready() and client.capture.service_is_ready(), 10,
             what="planner interfaces")
    yield robot, client, planner
    spin.close()


def _stop_images(robot, planner, what="the image to go stale"):
    """The camera stops; waits until the planner has taken in the last frame published and calls it
    stale (a frame still queued in the executor would otherwise arrive after the check, fresh)."""
    robot.publish_images = False

    def stale_and_last_taken_in():
        image = planner.robot.latest_image()
        return ("camera image" in planner.stale_inputs() and image is not None
                and image.stamp == robot.last_image_stamp)
    wait_for(stale_and_last_taken_in, 5, what=what)


def _call(future, timeout=20.0):
    wait_for(future.done, timeout, what="a response")
    return future.result()


def send_goal(client, goal, feedback=None):
    handle = _call(client.execute.send_goal_async(goal, feedback_callback=feedback))
    assert handle.accepted
    return handle


def test_goal_capture_through_each_trigger(graph):
    robot, client, planner = graph
    assert planner.goals.goal is None
    resp = _call(client.capture.call_async(Trigger.Request()))
    assert resp.success, resp.message
    wait_for(lambda: len(client.goal_images) == 1, 5, what="goal image after the service call")
    assert planner.goals.goal.source == "/dexwm/capture_goal" and planner.goals.goal.joints.shape == (23,)
    client.pose_pub.publish(PoseStamped())
    wait_for(lambda: len(client.goal_images) == 2, 5, what="goal image after /goal_pose")
    assert planner.goals.goal.source == "/goal_pose"
    client.point_pub.publish(PointStamped())
    wait_for(lambda: len(client.goal_images) == 3, 5, what="goal image after /clicked_point")
    assert planner.goals.goal.source == "/clicked_point"
    img = client.goal_images[-1]
    assert (img.height, img.width, img.encoding) == (96, 128, "rgb8")
    assert np.array_equal(np.frombuffer(bytes(img.data), np.uint8).reshape(96, 128, 3), planner.goals.goal.image)


def test_capture_fails_clearly_without_camera(graph):
    robot, client, planner = graph
    _stop_images(robot, planner)
    resp = _call(client.capture.call_async(Trigger.Request()))
    assert not resp.success and "camera image" in resp.message
    assert planner.goals.goal is None


def test_execute_without_goal_fails_with_reason(graph):
    robot, client, planner = graph
    handle = send_goal(client, Execute.Goal(use_captured_goal=True, task="grasp", max_steps=3))
    result = _call(handle.get_result_async()).result
    assert not result.success and result.reason.startswith("no_goal")
    assert robot.targets == []


def test_bad_goal_images_are_refused_or_resized(graph):
    robot, client, planner = graph
    bad = Image(height=4, width=4, encoding="32FC1", step=16, data=bytes(64))
    result = _call(send_goal(client, Execute.Goal(goal_image=bad, max_steps=1)).get_result_async()).result
    assert result.reason.startswith("bad_goal") and "encoding" in result.reason
    tall = rgb_to_image_msg(np.zeros((200, 50, 3), np.uint8))
    result = _call(send_goal(client, Execute.Goal(goal_image=tall, max_steps=1)).get_result_async()).result
    assert result.reason.startswith("bad_goal") and "aspect ratio" in result.reason
    assert robot.targets == []
    # same aspect ratio, twice the size: resized to the camera's 128x96 and used
    big = rgb_to_image_msg(np.full((192, 256, 3), 90, np.uint8))
    result = _call(send_goal(client, Execute.Goal(goal_image=big, max_steps=1)).get_result_async()).result
    assert result.reason == "budget" and result.steps == 1
    assert planner.goals.goal.image.shape == (96, 128, 3)


def test_goal_captured_from_the_current_frame_stops_at_once_without_moving(graph):
    """The stop rule, not a simulator flag: the current frame is the goal, so the latent distance
    is 0, below any threshold, and the planner ends as reached before planning or moving."""
    robot, client, planner = graph
    resp = _call(client.capture.call_async(Trigger.Request()))
    assert resp.success, resp.message
    planner.set_parameters([rclpy.parameter.Parameter("done_cost", value=0.01)])
    handle = send_goal(client, Execute.Goal(use_captured_goal=True, task="grasp", max_steps=5))
    result = _call(handle.get_result_async(), 60).result
    assert (result.success, result.steps, result.reason) == (True, 0, "reached")
    assert result.final_cost == pytest.approx(0.0, abs=1e-6)
    assert robot.targets == []
    # Off (0): the same goal is planned toward, so the threshold is what stopped it.
    planner.set_parameters([rclpy.parameter.Parameter("done_cost", value=0.0)])
    result = _call(send_goal(client, Execute.Goal(use_captured_goal=True, task="grasp", max_steps=1))
                   .get_result_async(), 60).result
    assert (result.steps, result.reason) == (1, "budget") and robot.targets


def test_planner_reads_no_simulator_ground_truth(graph):
    """Nothing the planner subscribes to comes from the simulation (no /sim/* topic)."""
    robot, client, planner = graph
    subscribed = [sub.topic_name for sub in planner.subscriptions]
    assert subscribed and not [t for t in subscribed if t.startswith("/sim")], subscribed
    assert set(subscribed) <= {"/camera/camera/color/image_raw", "/camera/camera/color/camera_info",
                               "/camera/camera/aligned_depth_to_color/image_raw",
                               "/franka/joint_states", "/allegro/joint_states", "/goal_pose", "/clicked_point",
                               "/initialpose", "/parameter_events"}
    # The camera's intrinsics come from its camera_info (the planned-hand term projects with them).
    wait_for(lambda: planner.robot.camera()[1] is not None, 10.0, what="the camera_info")
    hw, K = planner.robot.camera()
    assert hw == (96, 128)
    np.testing.assert_array_equal(K, robot.K)


def test_execute_runs_to_budget_within_limits_and_cap(graph):
    robot, client, planner = graph
    goal_img = rgb_to_image_msg(robot.image()[::-1].copy())   # some other view of the scene
    feedback = []
    handle = send_goal(client, Execute.Goal(goal_image=goal_img, task="reach", max_steps=3),
                       lambda fb: feedback.append(fb.feedback))
    result = _call(handle.get_result_async(), 60).result
    assert (result.success, result.steps, result.reason) == (False, 3, "budget")
    assert [f.step for f in feedback] == [1, 2, 3]
    assert all(f.replan_seconds > 0 for f in feedback)
    assert len(robot.targets) == 6 and client.rollouts
    cap = {"arm": 0.25, "hand": 0.3}
    for name, before, target in robot.targets:
        sl = slice(0, 7) if name == "arm" else slice(7, 23)
        assert np.all(np.abs(target - before) <= cap[name] + 1e-6)
        assert np.all(target >= planner.planning.lower[sl] - 1e-9) and np.all(target <= planner.planning.upper[sl] + 1e-9)
    assert any(s.state == "executing" for s in client.statuses)


def test_execute_runs_the_planning_session(graph, monkeypatch):
    """An Execute goal is one run of the PlanningSession that the in-process evaluation runs
    (test_planner_eval.py checks that side), over the MoveJoints-backed robot."""
    from dexwm_planner import session
    from dexwm_planner.sim_robot import SimulatedRobot
    from dexwm_ros import evaluate
    from dexwm_ros.planner_robot import MoveJointsRobot

    robot, client, planner = graph
    runs = []
    run = session.PlanningSession.run

    def spy(self, *args, **kwargs):
        result = run(self, *args, **kwargs)
        runs.append((type(self.robot), type(self.provider), result.reason, result.steps))
        return result
    monkeypatch.setattr(session.PlanningSession, "run", spy)
    goal_img = rgb_to_image_msg(robot.image()[::-1].copy())
    result = _call(send_goal(client, Execute.Goal(goal_image=goal_img, max_steps=1)).get_result_async(), 60).result
    assert (result.reason, result.steps) == ("budget", 1)
    assert runs == [(MoveJointsRobot, session.WorldModelPlans, "budget", 1)]
    assert issubclass(MoveJointsRobot, session.JointGroupRobot) and issubclass(SimulatedRobot, session.JointGroupRobot)
    assert isinstance(evaluate.WorldModelPolicy(None, planner.planning.kin, planner.planning.world_to_camera).plans,
                      session.WorldModelPlans)


def test_cancel_stops_the_robot(graph):
    robot, client, planner = graph
    robot.move_seconds = 30.0       # a move that only ends when canceled
    goal_img = rgb_to_image_msg(robot.image()[:, ::-1].copy())
    handle = send_goal(client, Execute.Goal(goal_image=goal_img, max_steps=50))
    wait_for(lambda: len(robot.targets) >= 2, 20, what="the first targets")
    t0 = time.monotonic()
    _call(handle.cancel_goal_async())
    result = _call(handle.get_result_async(), 20).result
    assert result.reason == "canceled" and not result.success
    assert time.monotonic() - t0 < 5.0
    assert robot.stops == {"arm": 1, "hand": 1}
    sent = len(robot.targets)
    time.sleep(0.5)
    assert len(robot.targets) == sent   # nothing sent after the cancel
    wait_for(lambda: client.statuses and client.statuses[-1].state == "canceled", 5, what="canceled status")


@pytest.mark.parametrize("feedback", [True, False])
def test_a_slow_driver_is_waited_for_while_its_feedback_comes(graph, monkeypatch, feedback):
    """A move that outlasts its time limit plus the grace: a driver that still sends feedback (a
    simulation slower than the wall clock) is waited for; a silent one fails the move and the robot holds."""
    from dexwm_ros import planner_robot

    robot, client, planner = graph
    monkeypatch.setattr(planner_robot, "RESULT_GRACE_S", 0.3)
    robot.move_seconds, robot.feedback = 2.5, feedback   # the time limit is the 0.05 s move duration
    goal_img = rgb_to_image_msg(robot.image()[::-1].copy())
    result = _call(send_goal(client, Execute.Goal(goal_image=goal_img, max_steps=1)).get_result_async(), 60).result
    if feedback:
        assert (result.reason, result.steps) == ("budget", 1)
    else:
        assert result.reason.startswith("driver_error: arm driver gave no result within") and result.steps == 0
        assert "last feedback" in result.reason
        assert robot.stops["arm"] >= 1 and robot.stops["hand"] >= 1


def test_stale_camera_pauses_and_holds_then_resumes(graph):
    robot, client, planner = graph
    goal_img = rgb_to_image_msg(robot.image()[::-1].copy())
    handle = send_goal(client, Execute.Goal(goal_image=goal_img, max_steps=4))
    wait_for(lambda: len(robot.targets) >= 2, 20, what="the first targets")
    robot.publish_images = False
    wait_for(lambda: any(s.state == "paused_stale_input" for s in client.statuses), 10, what="pause")
    sent = len(robot.targets)
    assert robot.stops["arm"] >= 1 and robot.stops["hand"] >= 1
    time.sleep(1.0)
    assert len(robot.targets) <= sent + 2   # at most the step already under way
    paused = len(robot.targets)
    time.sleep(0.5)
    assert len(robot.targets) == paused
    robot.publish_images = True
    result = _call(handle.get_result_async(), 60).result
    assert result.reason == "budget" and result.steps == 4


def test_frames_stamped_before_the_last_move_are_not_planned_from(graph):
    """A camera whose stamps lag the host clock: every frame looks older than the last move, so the
    planner pauses (the robot holds) instead of planning from what may be a frame of the motion."""
    robot, client, planner = graph
    goal_img = rgb_to_image_msg(robot.image()[::-1].copy())
    handle = send_goal(client, Execute.Goal(goal_image=goal_img, max_steps=3))
    wait_for(lambda: len(robot.targets) >= 2, 20, what="the first targets")
    robot.image_clock_offset = -5.0
    wait_for(lambda: any(s.state == "paused_stale_input" for s in client.statuses), 10, what="pause")
    assert robot.stops["arm"] >= 1 and robot.stops["hand"] >= 1
    paused = len(robot.targets)
    time.sleep(1.0)
    assert len(robot.targets) == paused
    robot.image_clock_offset = 0.0
    result = _call(handle.get_result_async(), 60).result
    assert result.reason == "budget" and result.steps == 3


def test_a_failed_capture_then_a_good_one_does_not_kill_the_planner(graph):
    """Capture logged at two severities from one call site crashed rclpy (issue: logger severity)."""
    robot, client, planner = graph
    _stop_images(robot, planner)
    assert not _call(client.capture.call_async(Trigger.Request())).success
    client.pose_pub.publish(PoseStamped())                 # the RViz tools' path fails too
    time.sleep(0.3)
    robot.publish_images = True
    wait_for(lambda: planner.stale_inputs() == [], 5, what="fresh inputs")
    assert _call(client.capture.call_async(Trigger.Request())).success
    client.point_pub.publish(PointStamped())
    wait_for(lambda: planner.goals.goal is not None and planner.goals.goal.source == "/clicked_point", 5,
             what="capture from /clicked_point")
    _stop_images(robot, planner, "the image to go stale again")
    assert not _call(client.capture.call_async(Trigger.Request())).success   # still serving


def test_degenerate_requests_are_refused_with_a_reason(graph):
    robot, client, planner = graph
    tiny = rgb_to_image_msg(np.zeros((1, 1, 3), np.uint8))
    result = _call(send_goal(client, Execute.Goal(goal_image=tiny, max_steps=1)).get_result_async()).result
    assert result.reason.startswith("bad_goal") and "too small" in result.reason
    small = rgb_to_image_msg(np.zeros((36, 48, 3), np.uint8))      # camera 128x96: under half its size
    result = _call(send_goal(client, Execute.Goal(goal_image=small, max_steps=1)).get_result_async()).result
    assert result.reason.startswith("bad_goal") and "too small for the camera" in result.reason
    ok_img = rgb_to_image_msg(robot.image()[::-1].copy())
    result = _call(send_goal(client, Execute.Goal(goal_image=ok_img, max_steps=4294967295)).get_result_async()).result
    assert result.reason.startswith("bad_goal") and "max_steps 4294967295" in result.reason
    assert robot.targets == []
    from rcl_interfaces.msg import Parameter as P, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    params = client.create_client(SetParameters, "/dexwm/planner/set_parameters")
    assert params.wait_for_service(timeout_sec=5.0)
    def set_int(name, value):
        req = SetParameters.Request(parameters=[
            P(name=name, value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value))])
        return _call(params.call_async(req)).results[0]

    res = set_int("elites", 100)
    assert not res.successful and "elites (100) must not exceed samples (8)" in res.reason
    res = set_int("samples", 1)
    assert not res.successful and "elites (2) must not exceed samples (1)" in res.reason
    assert planner.get_parameter("elites").value == 2 and planner.get_parameter("samples").value == 8


def test_goals_are_stamped_and_one_accepted_after_the_planner_gave_up_is_canceled(graph):
    robot, client, planner = graph
    goal_img = rgb_to_image_msg(robot.image()[::-1].copy())
    before = planner.get_clock().now().nanoseconds * 1e-9
    result = _call(send_goal(client, Execute.Goal(goal_image=goal_img, max_steps=1)).get_result_async(), 60).result
    assert result.reason == "budget"
    assert len(robot.stamps) == 2 and all(before <= t <= before + 60 for t in robot.stamps)
    # a driver that takes longer to accept than the planner waits (5 s): the planner aborts, and
    # cancels the goal the moment it is accepted, so the late step never runs
    robot.accept_delay = 6.0
    moved = len(robot.targets)
    result = _call(send_goal(client, Execute.Goal(goal_image=goal_img, max_steps=1)).get_result_async(), 60).result
    assert result.reason.startswith("driver_error") and "did not answer" in result.reason
    wait_for(lambda: robot.canceled >= 2, 30, what="both late goals canceled")
    assert len(robot.targets) == moved


# ------------------------------------------------------------------------ ROS-free helpers
def test_check_command_refuses_unsafe_targets():
    from dexwm_planner.session import check_command

    lower, upper, cap = np.full(3, -1.0), np.full(3, 1.0), np.full(3, 0.2)
    q = np.zeros(3)
    assert check_command(np.array([0.1, -0.2, 0.0]), q, lower, upper, cap) is None
    assert "per-step cap" in check_command(np.array([0.3, 0.0, 0.0]), q, lower, upper, cap)
    assert "outside" in check_command(np.array([0.0, 0.0, 1.1]), np.array([0.0, 0.0, 0.95]), lower, upper, cap)
    assert "NaN" in check_command(np.array([np.nan, 0.0, 0.0]), q, lower, upper, cap)
    assert "entries" in check_command(np.zeros(2), q, lower, upper, cap)
    # a joint measured past its limit may move back towards it, not further out
    past = np.array([1.1, 0.0, 0.0])
    assert check_command(np.array([1.05, 0.0, 0.0]), past, lower, upper, cap) is None
    assert check_command(np.array([1.15, 0.0, 0.0]), past, lower, upper, cap) is not None


def test_goal_image_fitting_and_rollout_strip():
    from dexwm_robot.view import model_view
    from dexwm_ros.goal_images import fit_goal_image
    from dexwm_ros.planner_outputs import rollout_strip

    goal = np.zeros((240, 320, 3), np.uint8)
    assert fit_goal_image(goal, (480, 640)).shape == (480, 640, 3)
    assert fit_goal_image(goal, None) is goal
    with pytest.raises(ValueError, match="aspect ratio"):
        fit_goal_image(np.zeros((100, 300, 3), np.uint8), (480, 640))
    view = model_view(np.zeros((480, 640, 3), np.uint8), (224, 224))
    assert view.shape == (224, 224, 3)
    kps = np.full((3, 12, 2), 100.0)
    strip = rollout_strip(np.zeros((480, 640, 3), np.uint8), goal, kps, kps[0], (224, 224))
    assert strip.shape == (224, 5 * 224 + 4 * 4, 3)          # current | 3 steps | goal
    assert strip[100, 224 + 4 + 100].any()                    # a keypoint drawn on step 1


def test_goal_image_parameter_loads_a_file_or_refuses(graph, tmp_path):
    import cv2
    from rclpy.parameter import Parameter

    robot, client, planner = graph
    path = tmp_path / "goal.png"
    cv2.imwrite(str(path), np.full((48, 64, 3), (10, 20, 30), np.uint8))    # BGR on disk
    result = planner.set_parameters([Parameter("goal_image", value=str(path))])[0]
    assert result.successful, result.reason
    assert planner.goals.goal.image.shape == (96, 128, 3)                          # resized to the camera
    assert tuple(planner.goals.goal.image[0, 0]) == (30, 20, 10)                   # RGB
    wait_for(lambda: client.goal_images, 5, what="the goal image topic")
    result = planner.set_parameters([Parameter("goal_image", value=str(tmp_path / "missing.png"))])[0]
    assert not result.successful and "not found" in result.reason
