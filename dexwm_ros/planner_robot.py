"""The robot of the planner node as a planning session sees it (dexwm_planner.session.JointGroupRobot):
the camera and joint-state subscriptions, the drivers' MoveJoints actions and their stop services.

The node creates it with its own callback groups; the session (on the Execute goal's thread) calls
``move`` and ``hold`` while the executor completes the futures those wait for. A wait sleeps on an
event that the future's done callback sets, or :meth:`MoveJointsRobot.wake` (the node calls it when
a goal is canceled or the node shuts down, after it made the session's interruption visible).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

import numpy as np
from rclpy.action import ActionClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectoryPoint

from dexwm_planner.session import FAILED_MOVE, INTERRUPTED, MOVED, JointGroupRobot, MoveStatus, Reading
from dexwm_ros.action import MoveJoints
from dexwm_ros.goal_images import fit_goal_depth
from dexwm_ros.image_conversion import depth_to_numpy, image_to_numpy
from dexwm_ros.joint_state import joint_vector
from dexwm_ros.ros_time import duration as duration_msg, seconds

# How long a driver has to accept a goal, and to report a result after the goal's time limit.
ACCEPT_TIMEOUT_S = 5.0
RESULT_GRACE_S = 5.0
# A driver whose goal feedback is younger than this is still working on the goal: the wait for its
# result goes on past the grace (a simulation that runs slower than the wall clock on a loaded host),
# up to LIVE_DRIVER_LIMIT_S beyond it: a driver that never ends a goal is a failed move all the same.
LIVE_FEEDBACK_S = 1.0
LIVE_DRIVER_LIMIT_S = 20.0
# How long hold() waits for the drivers' stop services to answer.
STOP_TIMEOUT_S = 2.0
# A depth image belongs to a colour frame when their stamps are this close (a RealSense stamps an
# aligned pair alike); the newest few are kept because the pair's two messages arrive apart.
DEPTH_STAMP_TOLERANCE_S = 0.005
DEPTH_FRAMES_KEPT = 4


def camera_info_topic(image_topic: str) -> str:
    """The CameraInfo topic beside an image topic (the image_transport convention)."""
    return image_topic.rsplit("/", 1)[0] + "/camera_info"


def camera_matrix_of(msg: CameraInfo) -> np.ndarray | None:
    """K (3, 3) of a CameraInfo message, None when it is not a pinhole matrix (an uncalibrated
    camera publishes zeros)."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    ok = (np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0 and K[0, 1] == 0 and K[1, 0] == 0
          and np.array_equal(K[2], [0.0, 0.0, 1.0]))
    return K if ok else None


class MoveJointsRobot(JointGroupRobot):
    def __init__(self, node, arm_names, hand_names, image_topic: str, arm_state_topic: str, hand_state_topic: str,
                 sensors_group, work_group, arm_prefix: str = "/franka", hand_prefix: str = "/allegro",
                 depth_topic: str = ""):
        """``depth_topic``: the depth image aligned with the colour frames, captured with each goal
        (empty: none)."""
        self.node = node
        self.arm_names, self.hand_names = tuple(arm_names), tuple(hand_names)
        self._lock = threading.Lock()
        self._image: Reading | None = None
        self._arm: Reading | None = None
        self._hand: Reading | None = None
        self._camera_info: tuple[np.ndarray, tuple[int, int]] | None = None   # K and the (h, w) it is for
        self._depths: deque[Reading] = deque(maxlen=DEPTH_FRAMES_KEPT)          # newest aligned depth images, as sent
        self._move_handles: list = []
        self._last_feedback: list[float] = []    # per request of the move under way: monotonic time
        self._waiting: set[threading.Event] = set()    # the events the waits in progress sleep on
        image_qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(Image, image_topic, self._on_image, image_qos, callback_group=sensors_group)
        node.create_subscription(CameraInfo, camera_info_topic(image_topic), self._on_camera_info, 10,
                                 callback_group=sensors_group)
        if depth_topic:
            node.create_subscription(Image, depth_topic, self._on_depth, image_qos, callback_group=sensors_group)
        node.create_subscription(JointState, arm_state_topic, self._on_arm, 10, callback_group=sensors_group)
        node.create_subscription(JointState, hand_state_topic, self._on_hand, 10, callback_group=sensors_group)
        self.arm_action, self.hand_action = f"{arm_prefix}/move_joints", f"{hand_prefix}/move_joints"
        self.arm_client = ActionClient(node, MoveJoints, self.arm_action, callback_group=work_group)
        self.hand_client = ActionClient(node, MoveJoints, self.hand_action, callback_group=work_group)
        self.arm_stop = node.create_client(Trigger, f"{arm_prefix}/stop", callback_group=work_group)
        self.hand_stop = node.create_client(Trigger, f"{hand_prefix}/stop", callback_group=work_group)

    # ---------------------------------------------------------------------------------- inputs
    def _on_image(self, msg: Image):
        try:
            image = image_to_numpy(msg)
        except ValueError as e:
            self.node.get_logger().warning(f"camera image ignored: {e}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._image = Reading(image, seconds(msg.header.stamp), time.monotonic())

    def _on_depth(self, msg: Image):
        try:
            depth = depth_to_numpy(msg)      # converted to metres only when a capture takes it
        except ValueError as e:
            self.node.get_logger().warning(f"depth image ignored: {e}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._depths.append(Reading(depth, seconds(msg.header.stamp), time.monotonic()))

    def depth_for(self, image: Reading) -> np.ndarray | None:
        """The depth image [m] taken with the colour frame ``image`` (the same stamp, within
        DEPTH_STAMP_TOLERANCE_S, at its size), None where none arrived with it."""
        with self._lock:
            depths = list(self._depths)
        for depth in reversed(depths):
            if (abs(depth.stamp - image.stamp) <= DEPTH_STAMP_TOLERANCE_S
                    and depth.value.shape == image.value.shape[:2]):
                return fit_goal_depth(depth.value, depth.value.shape)
        return None

    def _on_camera_info(self, msg: CameraInfo):
        K = camera_matrix_of(msg)
        if K is None:
            self.node.get_logger().warning("camera_info without a pinhole matrix ignored", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._camera_info = (K, (int(msg.height), int(msg.width)))

    def camera(self) -> tuple[tuple[int, int] | None, np.ndarray | None]:
        """(height, width) of the newest colour frame (None before one arrived) and its intrinsics K
        from camera_info (None before one arrived, or when it describes another frame size)."""
        with self._lock:
            info, image = self._camera_info, self._image
        hw = None if image is None else tuple(image.value.shape[:2])
        if info is None or hw is None:
            return hw, None
        if hw != info[1]:
            self.node.get_logger().warning(f"camera_info is for {info[1][1]}x{info[1][0]} frames, the frames are "
                                           f"{hw[1]}x{hw[0]}: ignored", throttle_duration_sec=5.0)
            return hw, None
        return hw, info[0]

    def _joint_reading(self, msg: JointState, names: tuple[str, ...]) -> Reading | None:
        q = joint_vector(msg, names)
        if q is None:
            self.node.get_logger().warning(f"joint state without finite positions of {list(names)} ignored",
                                           throttle_duration_sec=5.0)
            return None
        return Reading(q, seconds(msg.header.stamp), time.monotonic())

    def _on_arm(self, msg: JointState):
        reading = self._joint_reading(msg, self.arm_names)
        if reading is not None:
            with self._lock:
                self._arm = reading

    def _on_hand(self, msg: JointState):
        reading = self._joint_reading(msg, self.hand_names)
        if reading is not None:
            with self._lock:
                self._hand = reading

    def latest_image(self) -> Reading | None:
        with self._lock:
            return self._image

    def latest_joints(self) -> Reading | None:
        """Arm then hand; as old as the older of the two (its arrival and its stamp)."""
        with self._lock:
            arm, hand = self._arm, self._hand
        if arm is None or hand is None:
            return None
        stamps = [s for s in (arm.stamp, hand.stamp) if s > 0.0]
        return Reading(np.r_[arm.value, hand.value], min(stamps) if stamps else 0.0, min(arm.received, hand.received))

    def stale_inputs(self, limit_s: float) -> list[str]:
        """Names of the inputs that are missing or arrived more than ``limit_s`` ago."""
        now = time.monotonic()
        with self._lock:
            items = {"camera image": self._image, "arm joint state": self._arm, "hand joint state": self._hand}
        return [name for name, r in items.items() if r is None or now - r.received > limit_s]

    def camera_size(self) -> tuple[int, int] | None:
        """(height, width) of the camera's frames, None before the first one."""
        image = self.latest_image()
        return None if image is None else image.value.shape[:2]

    def observe_fresh(self, limit_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Copies of the newest frame, joints and the frame's aligned depth image [m] (None where
        none came with it) for a goal capture; LookupError naming the inputs that are missing or
        older than ``limit_s``."""
        stale = self.stale_inputs(limit_s)
        if stale:
            raise LookupError(f"no recent {', '.join(stale)}")
        image = self.latest_image()
        return image.value.copy(), self.latest_joints().value.copy(), self.depth_for(image)

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    # -------------------------------------------------------------------------------- commands
    def move(self, arm_target, hand_target, duration, time_limit, tolerance,
             interrupted: Callable[[], bool]) -> MoveStatus:
        for client, name in ((self.arm_client, self.arm_action), (self.hand_client, self.hand_action)):
            if not client.wait_for_server(timeout_sec=2.0):
                return MoveStatus(FAILED_MOVE, f"{name} is not available")
        # Stamped: a driver refuses a goal older than its max_command_age_s, so a step that reaches
        # it late (a stalled process, a congested network) is never executed out of its context.
        stamp = self.node.get_clock().now().to_msg()
        requests = []
        self._last_feedback = [time.monotonic()] * 2   # arm, hand: counted from the sending
        for index, (client, names, target) in enumerate(((self.arm_client, self.arm_names, arm_target),
                                                         (self.hand_client, self.hand_names, hand_target))):
            goal = MoveJoints.Goal()
            goal.trajectory.header.stamp = stamp
            goal.trajectory.joint_names = list(names)
            goal.trajectory.points = [JointTrajectoryPoint(positions=[float(v) for v in target],
                                                           time_from_start=duration_msg(duration))]
            goal.goal_tolerance = [float(tolerance)]
            goal.time_limit = duration_msg(time_limit)
            requests.append(client.send_goal_async(goal, feedback_callback=lambda _fb, i=index: self._heard(i)))
        handles = self._move_handles = []   # hold() cancels whatever was accepted so far
        for name, fut in zip(("arm", "hand"), requests):
            if not self._wait(fut, ACCEPT_TIMEOUT_S, interrupted):
                self._cancel_when_accepted(requests, handles)
                if interrupted():
                    return MoveStatus(INTERRUPTED)
                return MoveStatus(FAILED_MOVE, f"{name} driver did not answer")
            handle = fut.result()
            if not handle.accepted:
                self._cancel_when_accepted(requests, handles)
                return MoveStatus(FAILED_MOVE, f"{name} driver rejected the target")
            handles.append(handle)
        results = [h.get_result_async() for h in handles]
        for index, (name, fut) in enumerate(zip(("arm", "hand"), results)):
            started = time.monotonic()
            if not self._wait_while_live(fut, index, time_limit + RESULT_GRACE_S, interrupted):
                if interrupted():
                    return MoveStatus(INTERRUPTED)
                silent = time.monotonic() - self._last_feedback[index]
                return MoveStatus(FAILED_MOVE, f"{name} driver gave no result within "
                                               f"{time.monotonic() - started:.1f} s (its last feedback "
                                               f"{silent:.1f} s ago)")
            res = fut.result().result
            # TIMEOUT is normal when a finger closes on an object and cannot reach its target.
            if res.error_code not in (MoveJoints.Result.SUCCESSFUL, MoveJoints.Result.TIMEOUT):
                return MoveStatus(FAILED_MOVE, f"{name}: error {res.error_code} ({res.message})")
        self._move_handles = []
        return MoveStatus(MOVED)

    def _heard(self, index: int) -> None:
        """Feedback from the driver of request ``index``: it is alive and working on the goal."""
        self._last_feedback[index] = time.monotonic()

    def _wait_while_live(self, future, index: int, timeout: float, interrupted: Callable[[], bool]) -> bool:
        """Wait for a driver's result: ``timeout``, extended while its feedback keeps coming (each
        feedback gives it LIVE_FEEDBACK_S more) up to LIVE_DRIVER_LIMIT_S beyond ``timeout``."""
        started = time.monotonic()

        def deadline() -> float:
            live = max(started + timeout, self._last_feedback[index] + LIVE_FEEDBACK_S)
            return min(live, started + timeout + LIVE_DRIVER_LIMIT_S)
        while not self._wait(future, deadline() - time.monotonic(), interrupted):
            if interrupted() or time.monotonic() >= deadline():
                return False
        return True

    def _cancel_when_accepted(self, futures, handled) -> None:
        """The planner gave up on these goals: cancel each one a driver accepts, now or later.

        A driver that stalls (a paused process) may accept a goal long after the planner stopped
        waiting; without this it would then execute a step computed for a world that has moved on.
        Goals in ``handled`` were accepted in time: hold() cancels those.
        """
        for fut in futures:
            if fut.done() and fut.exception() is None and any(fut.result() is h for h in handled):
                continue
            fut.add_done_callback(self._cancel_late_goal)

    def _cancel_late_goal(self, fut) -> None:
        try:
            handle = fut.result()
        except Exception:  # the request failed: nothing was accepted
            return
        if handle is not None and handle.accepted:
            self.node.get_logger().warning("a MoveJoints goal was accepted after the planner gave up on it: "
                                           "canceling it")
            handle.cancel_goal_async()

    def hold(self, why: str) -> None:
        """Cancel running moves and ask both drivers to stop."""
        for handle in list(self._move_handles):
            try:
                handle.cancel_goal_async()
            except Exception:  # the goal may have finished in between
                pass
        self._move_handles = []
        calls = [client.call_async(Trigger.Request()) for client in (self.arm_stop, self.hand_stop)
                 if client.service_is_ready()]
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for fut in calls:
            if not fut.done():
                _done_event(fut).wait(max(deadline - time.monotonic(), 0.0))
        self.node.get_logger().info(f"holding ({why}): asked {len(calls)} driver(s) to stop")

    def wake(self) -> None:
        """Wake every wait in progress, so that it looks at its ``interrupted()`` now."""
        with self._lock:
            waiting = list(self._waiting)
        for event in waiting:
            event.set()

    def _wait(self, future, timeout: float, interrupted: Callable[[], bool]) -> bool:
        """Wait for an rclpy future from a worker thread (the executor completes it); False on
        timeout or when ``interrupted()`` (looked at when the wait starts and at each wake())."""
        event = _done_event(future)
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiting.add(event)
        try:
            while not future.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or interrupted():
                    return False
                event.wait(remaining)
                event.clear()       # a wake() without an interruption: wait on (done is checked first)
            return True
        finally:
            with self._lock:
                self._waiting.discard(event)


def _done_event(future) -> threading.Event:
    """An event set when the rclpy ``future`` is done (at once when it already is)."""
    event = threading.Event()
    future.add_done_callback(lambda _f: event.set())
    return event
