"""ROS 2 node ``planner`` (namespace ``dexwm``): plan and act toward a goal image with DexWM.

A thin adapter over :class:`dexwm_planner.mpc.MPCPlanner` (CEM inside receding-horizon MPC).

Inputs: the colour image (``/camera/camera/color/image_raw``), ``/franka/joint_states`` (7) and
``/allegro/joint_states`` (16); in simulation ``/sim/episode`` tells when the task succeeded.

Interfaces:

- action ``/dexwm/execute`` (dexwm_ros/action/Execute): plan and act until success, the step budget
  or a cancel; feedback after every executed step; cancel (and node shutdown) stops both drivers
  (their ``stop`` services), so the robot holds where it is;
- service ``/dexwm/capture_goal`` (std_srvs/Trigger): the current frame and joints become the goal;
  RViz's "2D Goal Pose" (``/goal_pose``) and "Publish Point" (``/clicked_point``) tools trigger the
  same capture; the ``goal_image`` parameter loads a goal from an image file;
- publishes ``/dexwm/goal_image`` (transient local), ``/dexwm/predicted_rollout`` (the current view
  with the predicted hand keypoints of every planned step, then the goal; transient local),
  ``/dexwm/keypoints`` (MarkerArray: planned hand keypoints by forward kinematics),
  ``/dexwm/status`` (PlannerStatus) and the planner's state on ``/diagnostics``.

Commands go to ``/franka/move_joints`` and ``/allegro/move_joints`` (MoveJoints actions). Every
command is checked before it leaves: finite, inside the joint limits, no joint moving more than the
per-step cap. Camera or joint data older than ``stale_timeout_s`` pause planning (the robot holds);
when they stay stale for ``stale_abort_s`` the goal aborts with reason ``stale_input``.

The optimisation runs on a dedicated planning thread, so subscriptions, services and cancel
requests are served while a replan is in progress.
"""
from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped, PoseStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, \
    SetParametersResult
from rclpy.action import ActionClient, ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import ColorRGBA
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectoryPoint
from visualization_msgs.msg import Marker, MarkerArray

from dexwm_robot.joints import ARM_JOINT_NAMES as ARM_NAMES, HAND_JOINT_NAMES as HAND_NAMES
from dexwm_robot.tasks import TASK_KINDS
from dexwm_planner.cem import PRESETS
from dexwm_planner.mpc import MPCConfig, MPCPlanner, PlanStep
from dexwm_planner.objective import ObjectiveConfig
from dexwm_planner.stop_rule import REACHED, StopRule, load_fitted
from dexwm_ros.action import Execute, MoveJoints
from dexwm_ros.image_conversion import image_to_numpy, numpy_to_image
from dexwm_robot.view import model_view
from dexwm_ros.msg import PlannerStatus
from dexwm_ros.ros_time import seconds
from dexwm_ros.joint_state import joint_vector
from dexwm_ros.node_main import run_node

# A goal image whose aspect ratio differs from the camera's by more than this is refused: resizing
# it would distort the scene and the latent distance would compare different geometry.
MAX_ASPECT_MISMATCH = 0.05
# A goal image smaller than this (px per side), or less than half the camera's size in either
# direction, is refused: upscaling it invents the detail the latent distance is computed on.
MIN_GOAL_SIDE = 32
MIN_GOAL_FRACTION = 0.5
# Executed MPC steps per goal: the max_steps parameter's range, and the bound of a request's value.
MAX_STEPS_RANGE = (1, 10000)


# ---------------------------------------------------------------------------- ROS-free helpers
def image_msg_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> RGB uint8 (H, W, 3); ValueError with the reason when it cannot be read."""
    return image_to_numpy(msg)


def rgb_to_image_msg(image: np.ndarray, stamp=None, frame_id: str = "") -> Image:
    return numpy_to_image(np.ascontiguousarray(image, dtype=np.uint8), stamp if stamp is not None else 0.0, frame_id)


def fit_goal_image(goal: np.ndarray, reference_hw: tuple[int, int] | None) -> np.ndarray:
    """Bring a goal image to the camera's size; ValueError when the aspect ratios differ or the goal
    is too small to stand for a camera frame."""
    import cv2

    gh, gw = goal.shape[:2]
    if min(gh, gw) < MIN_GOAL_SIDE:
        raise ValueError(f"goal image {gw}x{gh} is too small: at least {MIN_GOAL_SIDE} px per side")
    if reference_hw is None or tuple(goal.shape[:2]) == tuple(reference_hw):
        return goal
    h, w = reference_hw
    aspect_goal = goal.shape[1] / goal.shape[0]
    aspect_cam = w / h
    if abs(aspect_goal / aspect_cam - 1.0) > MAX_ASPECT_MISMATCH:
        raise ValueError(f"goal image {goal.shape[1]}x{goal.shape[0]} has aspect ratio {aspect_goal:.3f}, the "
                         f"camera's {w}x{h} has {aspect_cam:.3f}: refusing to distort it")
    if gh < MIN_GOAL_FRACTION * h or gw < MIN_GOAL_FRACTION * w:
        raise ValueError(f"goal image {gw}x{gh} is too small for the camera's {w}x{h}: at least "
                         f"{MIN_GOAL_FRACTION:g} x its size, so that resizing does not invent detail")
    interp = cv2.INTER_AREA if goal.shape[0] > h else cv2.INTER_LINEAR
    return cv2.resize(goal, (w, h), interpolation=interp)


def load_goal_file(path: str) -> np.ndarray:
    import cv2

    if not Path(path).is_file():
        raise ValueError(f"goal image file not found: {path}")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read {path} as an image (PNG/JPEG expected)")
    return np.ascontiguousarray(bgr[..., ::-1])


def check_command(command: np.ndarray, q: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                  max_step: np.ndarray) -> str | None:
    """The reason a joint command must not be sent, or None when it is safe."""
    command = np.asarray(command, dtype=np.float64)
    if command.shape != q.shape:
        return f"command has {command.shape} entries, expected {q.shape}"
    if not np.all(np.isfinite(command)):
        return "command contains NaN/inf"
    inside = (command >= lower - 1e-9) & (command <= upper + 1e-9)
    # A joint already past a limit may only move back towards it (see cem.project).
    towards = np.abs(np.clip(command, lower, upper) - command) <= np.abs(np.clip(q, lower, upper) - q) + 1e-9
    if not np.all(inside | towards):
        bad = int(np.flatnonzero(~(inside | towards))[0])
        return f"joint {bad} target {command[bad]:.4f} outside [{lower[bad]:.4f}, {upper[bad]:.4f}]"
    step = np.abs(command - q)
    if np.any(step > max_step + 1e-9):
        bad = int(np.argmax(step - max_step))
        return f"joint {bad} would move {step[bad]:.4f} rad, above the per-step cap {max_step[bad]:.4f}"
    return None


def rollout_strip(current: np.ndarray, goal: np.ndarray, keypoints: np.ndarray | None,
                  goal_keypoints: np.ndarray | None, image_size: tuple[int, int]) -> np.ndarray:
    """Current view | one panel per planned step with its predicted keypoints | the goal."""
    import cv2

    base = model_view(current, image_size)
    panels = [base]
    colours = [(255, 255, 0), (255, 80, 80), (80, 255, 80), (80, 160, 255), (255, 80, 255), (255, 200, 80)]

    def draw(img, kps):
        img = img.copy()
        for k, (u, v) in enumerate(np.asarray(kps)[:6]):
            if np.isfinite(u) and np.isfinite(v):
                cv2.circle(img, (int(round(u)), int(round(v))), 3, colours[k], -1)
        return img
    for t in range(0 if keypoints is None else len(keypoints)):
        panels.append(draw(base, keypoints[t]))
    goal_view = model_view(goal, image_size)
    panels.append(draw(goal_view, goal_keypoints) if goal_keypoints is not None else goal_view)
    sep = np.full((image_size[0], 4, 3), 255, np.uint8)
    out = []
    for p in panels:
        out += [p, sep]
    return np.concatenate(out[:-1], axis=1)


@dataclass
class Stamped:
    value: np.ndarray
    received: float          # time.monotonic() when it arrived
    stamp: float = 0.0       # header stamp [s, ROS clock]; 0 = not stamped


@dataclass
class Goal:
    image: np.ndarray
    joints: np.ndarray | None
    source: str


def _descriptor(description: str, read_only: bool = False, **ranges) -> ParameterDescriptor:
    d = ParameterDescriptor(description=description, read_only=read_only)
    if "float_range" in ranges:
        lo, hi = ranges["float_range"]
        d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi)]
    if "int_range" in ranges:
        lo, hi = ranges["int_range"]
        d.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=1)]
    return d


def load_world_model(checkpoint: str):
    """The DexWM world model from a checkpoint (empty: the shipped simulation model)."""
    from dexwm_planner import world_model

    path = checkpoint or None
    if path is None:
        finder = getattr(world_model, "default_checkpoint", None)
        if finder is None:
            raise RuntimeError("no checkpoint given and dexwm_planner.world_model has no default_checkpoint()")
        path = finder()
    return world_model.DexWM.load(str(path))


# ------------------------------------------------------------------------------------------- node
class PlannerNode(Node):
    def __init__(self, model=None, kinematics=None, **node_kwargs):
        super().__init__("planner", namespace="dexwm", **node_kwargs)
        self._declare_parameters()
        g = lambda name: self.get_parameter(name).value  # noqa: E731

        from dexwm_robot.camera import HeadCamera
        from dexwm_robot.kinematics import RobotKinematics
        from dexwm_planner.actions import allegro_actions

        self.kin = kinematics if kinematics is not None else RobotKinematics.from_description()
        self.lower = np.asarray(self.kin.lower, dtype=np.float64)
        self.upper = np.asarray(self.kin.upper, dtype=np.float64)
        w2c = list(g("world_to_camera"))
        if w2c:
            if len(w2c) != 16:
                raise ValueError(f"world_to_camera needs 16 values (row-major 4x4), got {len(w2c)}")
            self.world_to_camera = np.asarray(w2c, dtype=np.float64).reshape(4, 4)
        else:
            self.world_to_camera = HeadCamera().world_to_camera
        self.model = model if model is not None else load_world_model(g("checkpoint"))
        self._fitted_stop = self._load_fitted_stop(g("checkpoint") or (None if model is not None else ""))
        self.image_size = tuple(getattr(self.model, "image_size", (224, 224)))
        self.model_frame_step = float(getattr(self.model, "frame_step", 0.2))
        kin, w2c_matrix = self.kin, self.world_to_camera
        self.actions_fn = lambda q_seq: allegro_actions(q_seq, w2c_matrix, kinematics=kin)
        self.rotation_fn = lambda q: kin.ee_pose(q)[1]

        self._lock = threading.Lock()
        self._image: Stamped | None = None
        self._arm: Stamped | None = None
        self._hand: Stamped | None = None
        self._goal: Goal | None = None
        self._busy = False
        self._state = "idle"
        self._last: dict = {"step": 0, "current_cost": float("nan"), "best_cost": float("nan"),
                            "planned_cost": float("nan"),
                            "replan_seconds": float("nan")}
        self._plan_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dexwm-plan")
        self._move_handles: list = []

        sensors = MutuallyExclusiveCallbackGroup()
        self._work = ReentrantCallbackGroup()
        image_qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(Image, g("image_topic"), self._on_image, image_qos, callback_group=sensors)
        self.create_subscription(JointState, g("arm_state_topic"), self._on_arm, 10, callback_group=sensors)
        self.create_subscription(JointState, g("hand_state_topic"), self._on_hand, 10, callback_group=sensors)
        self.create_subscription(PoseStamped, "/goal_pose", lambda _m: self._capture_from("/goal_pose"), 10,
                                 callback_group=self._work)
        self.create_subscription(PointStamped, "/clicked_point", lambda _m: self._capture_from("/clicked_point"),
                                 10, callback_group=self._work)

        self.goal_pub = self.create_publisher(Image, "/dexwm/goal_image", latched)
        self.rollout_pub = self.create_publisher(Image, "/dexwm/predicted_rollout", latched)
        self.marker_pub = self.create_publisher(MarkerArray, "/dexwm/keypoints", 10)
        self.status_pub = self.create_publisher(PlannerStatus, "/dexwm/status", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.create_service(Trigger, "/dexwm/capture_goal", self._on_capture, callback_group=self._work)
        self.arm_client = ActionClient(self, MoveJoints, "/franka/move_joints", callback_group=self._work)
        self.hand_client = ActionClient(self, MoveJoints, "/allegro/move_joints", callback_group=self._work)
        self.arm_stop = self.create_client(Trigger, "/franka/stop", callback_group=self._work)
        self.hand_stop = self.create_client(Trigger, "/allegro/stop", callback_group=self._work)
        self._server = ActionServer(self, Execute, "/dexwm/execute", execute_callback=self._execute,
                                    goal_callback=self._on_goal_request, cancel_callback=self._on_cancel,
                                    callback_group=self._work)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=sensors)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.planner = self._make_planner()
        if g("goal_image"):
            try:
                self._set_goal(Goal(load_goal_file(g("goal_image")), None, f"file {g('goal_image')}"))
            except ValueError as e:
                self.get_logger().error(f"goal_image parameter: {e}")
        self._publish_status()
        self.get_logger().info(f"planner ready (preset {g('preset')}, model image {self.image_size})")

    # ------------------------------------------------------------------------------ parameters
    def _declare_parameters(self):
        p = self.declare_parameter
        S = ParameterType
        p("task", "grasp", _descriptor("task for bookkeeping and task-specific cost terms (reach|grasp|place)"))
        p("checkpoint", "", _descriptor("world-model checkpoint (.pt); empty = the shipped simulation model",
                                        read_only=True))
        p("goal_image", "", _descriptor("goal image file (PNG/JPEG) loaded at start and when changed"))
        p("preset", "cpu", _descriptor("CEM preset: cpu (about 1 s per replan here) or paper (512/10/10)"))
        p("samples", 0, _descriptor("CEM samples per iteration; 0 = preset", int_range=(0, 8192)))
        p("elites", 0, _descriptor("CEM elites; 0 = preset", int_range=(0, 1024)))
        p("iterations", 0, _descriptor("CEM iterations; 0 = preset", int_range=(0, 100)))
        p("horizon", 0, _descriptor("planning horizon (world-model steps); 0 = preset", int_range=(0, 16)))
        p("std_arm", 0.3, _descriptor("initial CEM std of the arm joints [rad]", float_range=(1e-4, 2.0)))
        p("std_hand", 0.1, _descriptor("initial CEM std of the hand joints [rad]", float_range=(1e-4, 2.0)))
        p("max_step_arm", 0.25, _descriptor("per-step cap on an arm joint change [rad]", float_range=(1e-3, 0.5)))
        p("max_step_hand", 0.3, _descriptor("per-step cap on a hand joint change [rad]", float_range=(1e-3, 1.0)))
        p("keypoint_weight", 1e-3, _descriptor("weight of the 2D right-hand keypoint term", float_range=(0.0, 1.0)))
        p("orientation_weight", 0.0, _descriptor(
            "weight of the end-effector orientation term, grasp task only; 0 off", float_range=(0.0, 100.0)))
        p("context_frames", 8, _descriptor("observed frames kept as world-model context", int_range=(1, 32)))
        p("seed", 0, _descriptor("CEM random seed (per Execute goal)", int_range=(0, 2**31 - 1)))
        p("max_steps", 40, _descriptor("executed MPC steps per goal when the request gives 0",
                                       int_range=MAX_STEPS_RANGE))
        # 0 = the world model's frame step: the executed step is the step the model learned (a ramp
        # to the target over one frame step, the next frame one frame step later).
        p("move_duration_s", 0.0, _descriptor("time given to the drivers to reach each step's targets [s]; "
                                              "0 = the world model's frame step", float_range=(0.0, 30.0)))
        p("move_timeout_s", 0.0, _descriptor("MoveJoints time limit per step, then the next frame is planned from "
                                             "wherever the joints are [s]; 0 = move_duration_s",
                                             float_range=(0.0, 60.0)))
        p("goal_tolerance", 0.05, _descriptor("MoveJoints per-joint tolerance [rad]", float_range=(1e-4, 1.0)))
        p("stale_timeout_s", 1.0, _descriptor("camera/joint data older than this pause planning [s]",
                                              float_range=(0.05, 60.0)))
        p("stale_abort_s", 10.0, _descriptor("abort a goal when inputs stay stale this long [s]",
                                             float_range=(0.1, 600.0)))
        # The stop rule (dexwm_planner.stop_rule): the planner decides itself when it is done, from
        # the camera, as on hardware; nothing reads the simulator's success.
        p("done_cost", -1.0, _descriptor(
            "stop as reached when the latent distance to the goal drops below this; -1 = the threshold fitted "
            "for the checkpoint and task (<checkpoint>.stop.json, 0 when there is none); 0 off",
            float_range=(-1.0, 1e3)))
        p("plateau_steps", 5, _descriptor("stop when the best latent distance did not improve (by plateau_rel) "
                                          "over this many executed steps; 0 off", int_range=(0, 1000)))
        p("plateau_rel", 0.02, _descriptor("relative improvement that counts as progress for plateau_steps",
                                           float_range=(0.0, 0.99)))
        p("image_topic", "/camera/camera/color/image_raw", _descriptor("colour image topic", read_only=True))
        p("arm_state_topic", "/franka/joint_states", _descriptor("arm JointState topic", read_only=True))
        p("hand_state_topic", "/allegro/joint_states", _descriptor("hand JointState topic", read_only=True))
        p("frame_id", "world", _descriptor("frame of the keypoint markers (robot base / world)"))
        p("world_to_camera", [0.0] * 0, ParameterDescriptor(
            type=S.PARAMETER_DOUBLE_ARRAY, read_only=True,
            description="camera extrinsic world->camera, 16 values row-major (OpenCV axes); empty = sim head camera"))

    def _on_set_parameters(self, params):
        problem = next((f"{p.name} must be finite, got {p.value}" for p in params
                        if isinstance(p.value, float) and not math.isfinite(p.value)), None)
        problem = problem or self._cem_problem(params)
        if problem:
            self.get_logger().warning(f"parameter change refused: {problem}")
            return SetParametersResult(successful=False, reason=problem)
        for param in params:
            if param.name == "preset" and param.value not in PRESETS:
                return SetParametersResult(successful=False, reason=f"preset must be one of {', '.join(PRESETS)}")
            if param.name == "task" and param.value not in TASK_KINDS:
                return SetParametersResult(successful=False, reason="task must be reach, grasp or place")
            if param.name == "goal_image" and param.value and hasattr(self, "planner"):
                try:
                    self._set_goal(Goal(load_goal_file(param.value), None, f"file {param.value}"))
                except ValueError as e:
                    return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _cem_problem(self, params) -> str | None:
        """Why the CEM settings after this change would be unusable (refused now, not at the next goal)."""
        new = {p.name: p.value for p in params}
        value = lambda name: new.get(name, self.get_parameter(name).value)  # noqa: E731
        preset = PRESETS.get(value("preset"))
        if preset is None:
            return None   # reported by the preset check
        samples = value("samples") or preset.samples
        elites = value("elites") or preset.elites
        if elites > samples:
            return f"elites ({elites}) must not exceed samples ({samples})"
        return None

    def _make_planner(self, task: str | None = None) -> MPCPlanner:
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        task = task or g("task")
        preset = g("preset")
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        cem = PRESETS[preset]
        changes = {k: g(k) for k in ("samples", "elites", "iterations", "horizon") if g(k) > 0}
        changes.update(std_arm=g("std_arm"), std_hand=g("std_hand"), max_step_arm=g("max_step_arm"),
                       max_step_hand=g("max_step_hand"))
        if "samples" in changes:
            changes["chunk"] = min(changes["samples"], max(cem.chunk, 1))
        cem = cem.with_(**changes)
        # The orientation term only makes sense when grasping (keep the approach orientation).
        objective = ObjectiveConfig(keypoint_weight=g("keypoint_weight"),
                                    orientation_weight=g("orientation_weight") if task == "grasp" else 0.0)
        config = MPCConfig(cem=cem, objective=objective, context_frames=g("context_frames"))
        return MPCPlanner(self.model, self.actions_fn, self.lower, self.upper, config,
                          rotation_fn=self.rotation_fn, seed=g("seed"))

    # -------------------------------------------------------------------------------- inputs
    def _on_image(self, msg: Image):
        try:
            image = image_msg_to_rgb(msg)
        except ValueError as e:
            self.get_logger().warning(f"camera image ignored: {e}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self._image = Stamped(image, time.monotonic(), seconds(msg.header.stamp))

    def _joint_vector(self, msg: JointState, names: tuple[str, ...]) -> np.ndarray | None:
        q = joint_vector(msg, names)
        if q is None:
            self.get_logger().warning(f"joint state without finite positions of {list(names)} ignored",
                                      throttle_duration_sec=5.0)
        return q

    def _on_arm(self, msg: JointState):
        q = self._joint_vector(msg, ARM_NAMES)
        if q is not None:
            with self._lock:
                self._arm = Stamped(q, time.monotonic(), seconds(msg.header.stamp))

    def _on_hand(self, msg: JointState):
        q = self._joint_vector(msg, HAND_NAMES)
        if q is not None:
            with self._lock:
                self._hand = Stamped(q, time.monotonic(), seconds(msg.header.stamp))

    def _stale_inputs(self) -> list[str]:
        """Names of the inputs that are missing or older than stale_timeout_s."""
        limit = self.get_parameter("stale_timeout_s").value
        now = time.monotonic()
        with self._lock:
            items = {"camera image": self._image, "arm joint state": self._arm, "hand joint state": self._hand}
        return [name for name, s in items.items() if s is None or now - s.received > limit]

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray, float]:
        with self._lock:
            return self._image.value, np.r_[self._arm.value, self._hand.value], self._image.received

    # ------------------------------------------------------------------------------------ goal
    def _set_goal(self, goal: Goal):
        reference = None
        with self._lock:
            if self._image is not None:
                reference = self._image.value.shape[:2]
        image = fit_goal_image(goal.image, reference)
        with self._lock:
            self._goal = Goal(image, goal.joints, goal.source)
        self.goal_pub.publish(rgb_to_image_msg(image, self.get_clock().now().to_msg(), "camera_color_optical_frame"))
        self.get_logger().info(f"goal set from {goal.source} ({image.shape[1]}x{image.shape[0]})")
        self._publish_status()

    def capture_goal(self, source: str) -> tuple[bool, str]:
        stale = self._stale_inputs()
        if stale:
            return False, f"cannot capture a goal: no recent {', '.join(stale)}"
        image, q, _ = self._snapshot()
        self._set_goal(Goal(image.copy(), q.copy(), source))
        return True, f"goal captured from the current camera frame and joints ({source})"

    def _on_capture(self, request, response):
        response.success, response.message = self.capture_goal("/dexwm/capture_goal")
        self._log_capture(response.success, response.message)
        return response

    def _capture_from(self, topic: str):
        ok, message = self.capture_goal(topic)
        self._log_capture(ok, message)

    def _log_capture(self, ok: bool, message: str):
        # One call site per severity: rclpy raises ValueError when a call site changes severity.
        if ok:
            self.get_logger().info(message)
        else:
            self.get_logger().warning(message)

    def _resolve_goal(self, request) -> Goal:
        if request.goal_image.height > 0 and not request.use_captured_goal:
            goal = Goal(image_msg_to_rgb(request.goal_image), None, "the Execute request")
            self._set_goal(goal)
        with self._lock:
            goal = self._goal
        if goal is None:
            raise LookupError("no goal: send a goal image, call /dexwm/capture_goal, use the RViz tools or set "
                              "the goal_image parameter")
        return goal

    # ---------------------------------------------------------------------------------- action
    def _on_goal_request(self, request):
        with self._lock:
            if self._busy:
                self.get_logger().warning("Execute goal rejected: another goal is being executed")
                return GoalResponse.REJECT
            self._busy = True
        return GoalResponse.ACCEPT

    def _on_cancel(self, _goal_handle):
        self.get_logger().info("cancel requested")
        return CancelResponse.ACCEPT

    def _refusal(self, request) -> str | None:
        """Why an Execute request is refused before anything is planned (None: go ahead)."""
        low, high = MAX_STEPS_RANGE
        if request.max_steps != 0 and not low <= request.max_steps <= high:
            return (f"bad_goal: max_steps {request.max_steps} is outside {low}..{high} "
                    "(0 uses the max_steps parameter)")
        return None

    def _execute(self, goal_handle):
        refusal = self._refusal(goal_handle.request)
        if refusal is not None:
            self.get_logger().error(f"Execute goal refused: {refusal}")
            with self._lock:
                self._busy = False
            goal_handle.abort()
            return self._result(False, 0, refusal)
        try:
            return self._run_goal(goal_handle)
        except Exception as e:  # never leave the robot moving on an unexpected error
            self.get_logger().error(f"execution failed: {type(e).__name__}: {e}")
            self._hold("error")
            self._set_state("failed")
            goal_handle.abort()
            return self._result(False, self._last["step"], "error: " + str(e))
        finally:
            with self._lock:
                self._busy = False

    def _result(self, success: bool, steps: int, reason: str) -> Execute.Result:
        cost = self._last.get("current_cost", float("nan"))
        return Execute.Result(success=success, steps=int(steps), final_cost=float(cost), reason=reason)

    def _load_fitted_stop(self, checkpoint):
        """The stop thresholds fitted for the checkpoint (``dexwm-eval --fit-stop``), or None."""
        if checkpoint is None:          # a model object without a file: nothing fitted
            return None
        from dexwm_planner import world_model

        path = checkpoint or world_model.default_checkpoint()
        try:
            fitted = load_fitted(path)
        except (OSError, ValueError) as e:
            self.get_logger().error(f"stop thresholds of {path} unusable ({e}): stopping only at plateau or budget")
            return None
        if fitted is None:
            self.get_logger().warning(f"no fitted stop thresholds beside {path} (dexwm-eval --fit-stop): "
                                      "stopping only at plateau or budget unless done_cost is set")
        return fitted

    def _stop_rule(self, task: str, max_steps: int) -> StopRule:
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        done = float(g("done_cost"))
        if done < 0:
            done = self._fitted_stop.for_kind(task) if self._fitted_stop is not None else 0.0
        return StopRule(done_cost=done, plateau_steps=int(g("plateau_steps")), plateau_rel=float(g("plateau_rel")),
                        max_steps=int(max_steps))

    def _run_goal(self, goal_handle):
        request = goal_handle.request
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        if request.task and request.task not in TASK_KINDS:
            goal_handle.abort()
            return self._result(False, 0, f"bad_goal: unknown task {request.task!r}")
        task = request.task or g("task")
        try:
            goal = self._resolve_goal(request)
        except LookupError as e:
            self.get_logger().error(str(e))
            goal_handle.abort()
            return self._result(False, 0, f"no_goal: {e}")
        except ValueError as e:
            self.get_logger().error(f"goal image refused: {e}")
            goal_handle.abort()
            return self._result(False, 0, f"bad_goal: {e}")
        max_steps = int(request.max_steps) or g("max_steps")
        stop_rule = self._stop_rule(task, max_steps)

        self.planner = self._make_planner(task)
        try:
            self.planner.set_goal(goal.image, goal_joints=goal.joints)
        except ValueError as e:   # e.g. an image the encoder cannot crop to its input size
            self.get_logger().error(f"goal image refused by the world model: {e}")
            goal_handle.abort()
            return self._result(False, 0, f"bad_goal: {e}")
        self._task = task
        self._last = {"step": 0, "current_cost": float("nan"), "best_cost": float("nan"),
                      "planned_cost": float("nan"),
                      "replan_seconds": float("nan")}
        self.get_logger().info(f"executing {task} toward the goal from {goal.source}, at most {max_steps} steps, "
                               f"stop below latent distance {stop_rule.done_cost:.3f}")
        step = 0
        costs: list[float] = []
        # Plan from data taken after the goal arrived (not, say, the previous episode's end).
        last_frame, moved_at = -1.0, self.get_clock().now().nanoseconds * 1e-9
        while True:
            if goal_handle.is_cancel_requested:
                return self._finish_canceled(goal_handle, step)
            if not self.context.ok():
                self._hold("shutdown")
                goal_handle.abort()
                return self._result(False, step, "shutdown")
            # Fresh inputs, and a frame that shows the result of the last executed step.
            wait = self._wait_for_inputs(goal_handle, newer_than=last_frame, taken_after=moved_at)
            if wait == "canceled":
                return self._finish_canceled(goal_handle, step)
            if wait != "ok":
                self._hold("stale input")
                self._set_state("failed")
                goal_handle.abort()
                return self._result(False, step, wait)
            image, q, _ = self._snapshot()
            self.planner.observe(image, q)
            cost = self.planner.current_cost()
            costs.append(cost)
            best = float(np.nanmin([self._last["best_cost"], cost]))
            self._last.update(current_cost=cost, best_cost=best)
            # Done? The robot then holds its last targets (the drivers keep them).
            why = stop_rule.decide(costs, step)
            if why == REACHED:
                self.get_logger().info(f"goal reached after {step} steps: latent distance {cost:.4f}")
                self._set_state("succeeded")
                goal_handle.succeed()
                return self._result(True, step, why)
            if why is not None:
                self.get_logger().info(f"stopped after {step} steps ({why}): latent distance {cost:.4f}")
                self._set_state("failed")
                goal_handle.abort()
                return self._result(False, step, why)
            self._set_state("planning")
            future = self._plan_pool.submit(self.planner.step, q, lambda: goal_handle.is_cancel_requested)
            plan = self._wait_future(future, goal_handle)
            if plan is None:
                return self._finish_canceled(goal_handle, step)
            self._last.update(step=step + 1, planned_cost=plan.cost, replan_seconds=plan.replan_seconds)
            reason = check_command(plan.command, q, self.lower, self.upper, self.planner.cem.max_step)
            if reason is not None:  # never expected: the optimizer projects every sample
                self.get_logger().error(f"planned command refused: {reason}")
                self._hold("unsafe command")
                self._set_state("failed")
                goal_handle.abort()
                return self._result(False, step, f"unsafe_command: {reason}")
            self._publish_plan(image, plan)
            self._set_state("executing")
            moved = self._move(plan.command, goal_handle)
            if moved == "canceled":
                return self._finish_canceled(goal_handle, step)
            if moved != "ok":
                self._hold("driver error")
                self._set_state("failed")
                goal_handle.abort()
                return self._result(False, step, f"driver_error: {moved}")
            # The next plan must see the result of this move: only frames that arrive from now on
            # and were taken from now on (a frame of the motion's last moments may still be on its
            # way when the drivers report the move's end).
            last_frame = time.monotonic()
            moved_at = self.get_clock().now().nanoseconds * 1e-9
            step += 1
            goal_handle.publish_feedback(Execute.Feedback(step=step, current_cost=float(plan.current_cost),
                                                          best_cost=float(self._last["best_cost"]),
                                                          planned_cost=float(plan.cost),
                                                          replan_seconds=float(plan.replan_seconds)))
            self.get_logger().info(f"step {step}: cost {plan.current_cost:.4f} (plan {plan.cost:.4f}), "
                                   f"replan {plan.replan_seconds:.2f} s, horizon {plan.horizon}")

    def _finish_canceled(self, goal_handle, step):
        self._hold("canceled")
        self._set_state("canceled")
        goal_handle.canceled()
        return self._result(False, step, "canceled")

    def _wait_for_inputs(self, goal_handle, newer_than: float, taken_after: float = 0.0) -> str:
        """'ok' once all inputs are fresh, a frame arrived after ``newer_than`` (monotonic), and the
        frame and both joint states carry header stamps not before ``taken_after`` (ROS clock;
        unstamped messages count by arrival only)."""
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        paused_since = None
        deadline_new_frame = time.monotonic() + g("stale_timeout_s")
        while True:
            if goal_handle.is_cancel_requested:
                return "canceled"
            stale = self._stale_inputs()
            if not stale:
                with self._lock:
                    inputs = {"camera image": self._image, "arm joints": self._arm, "hand joints": self._hand}
                arrived = inputs["camera image"].received > newer_than
                early = [name for name, x in inputs.items() if 0.0 < x.stamp < taken_after]
                if arrived and not early:
                    if paused_since is not None:
                        self.get_logger().info("inputs fresh again: resuming")
                    return "ok"
                if time.monotonic() > deadline_new_frame:
                    stale = [f"{', '.join(early)} (nothing stamped after the last move: check the clocks)"
                             if arrived and early else "camera image (no new frame)"]
            if stale:
                if paused_since is None:
                    paused_since = time.monotonic()
                    self.get_logger().warning(f"pausing: stale {', '.join(stale)}; the robot holds")
                    self._hold("stale input")
                    self._set_state("paused_stale_input")
                elif time.monotonic() - paused_since > g("stale_abort_s"):
                    return f"stale_input: {', '.join(stale)} for {g('stale_abort_s'):.1f} s"
            time.sleep(0.02)

    def _wait_future(self, future, goal_handle) -> PlanStep | None:
        """Result of the planning thread, or None when the goal was canceled meanwhile."""
        while True:
            try:
                plan = future.result(timeout=0.05)
                return None if plan.stopped or goal_handle.is_cancel_requested else plan
            except concurrent.futures.TimeoutError:
                if goal_handle.is_cancel_requested:
                    # The CEM polls the same flag and stops after its current iteration.
                    future.result()
                    return None

    # -------------------------------------------------------------------------------- commands
    def _move(self, command: np.ndarray, goal_handle) -> str:
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        for client, name in ((self.arm_client, "/franka/move_joints"), (self.hand_client, "/allegro/move_joints")):
            if not client.wait_for_server(timeout_sec=2.0):
                return f"{name} is not available"
        duration, time_limit = self._step_timing()
        goals = []
        # Stamped: a driver refuses a goal older than its max_command_age_s, so a step that reaches
        # it late (a stalled process, a congested network) is never executed out of its context.
        stamp = self.get_clock().now().to_msg()
        for client, names, target in ((self.arm_client, ARM_NAMES, command[:7]),
                                      (self.hand_client, HAND_NAMES, command[7:])):
            goal = MoveJoints.Goal()
            goal.trajectory.header.stamp = stamp
            goal.trajectory.joint_names = list(names)
            goal.trajectory.points = [JointTrajectoryPoint(positions=[float(v) for v in target],
                                                           time_from_start=_duration(duration))]
            goal.goal_tolerance = [float(g("goal_tolerance"))]
            goal.time_limit = _duration(time_limit)
            goals.append(client.send_goal_async(goal))
        handles = self._move_handles = []   # _hold cancels whatever was accepted so far
        for name, fut in zip(("arm", "hand"), goals):
            if not _wait(fut, 5.0, goal_handle):
                self._cancel_when_accepted(goals, handles)
                return "canceled" if goal_handle.is_cancel_requested else f"{name} driver did not answer"
            handle = fut.result()
            if not handle.accepted:
                self._cancel_when_accepted(goals, handles)
                return f"{name} driver rejected the target"
            handles.append(handle)
        results = [h.get_result_async() for h in handles]
        for name, fut in zip(("arm", "hand"), results):
            if not _wait(fut, time_limit + 5.0, goal_handle):
                if goal_handle.is_cancel_requested:
                    return "canceled"
                return f"{name} driver gave no result within {time_limit + 5.0:.1f} s"
            res = fut.result().result
            # TIMEOUT is normal when a finger closes on an object and cannot reach its target.
            if res.error_code not in (MoveJoints.Result.SUCCESSFUL, MoveJoints.Result.TIMEOUT):
                return f"{name}: error {res.error_code} ({res.message})"
        self._move_handles = []
        return "ok"

    def _step_timing(self) -> tuple[float, float]:
        """(move duration, MoveJoints time limit) of one executed step; 0 parameters = automatic."""
        duration = float(self.get_parameter("move_duration_s").value) or self.model_frame_step
        return duration, max(float(self.get_parameter("move_timeout_s").value), duration)

    def _cancel_when_accepted(self, futures, handled) -> None:
        """The planner gave up on these goals: cancel each one a driver accepts, now or later.

        A driver that stalls (a paused process) may accept a goal long after the planner stopped
        waiting; without this it would then execute a step computed for a world that has moved on.
        Goals in ``handled`` were accepted in time: _hold cancels those.
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
            self.get_logger().warning("a MoveJoints goal was accepted after the planner gave up on it: canceling it")
            handle.cancel_goal_async()

    def _hold(self, why: str):
        """Leave the robot holding: cancel running moves and ask both drivers to stop."""
        for handle in list(self._move_handles):
            try:
                handle.cancel_goal_async()
            except Exception:  # the goal may have finished in between
                pass
        self._move_handles = []
        futures = []
        for client in (self.arm_stop, self.hand_stop):
            if client.service_is_ready():
                futures.append(client.call_async(Trigger.Request()))
        deadline = time.monotonic() + 2.0
        for fut in futures:
            while not fut.done() and time.monotonic() < deadline:
                time.sleep(0.01)
        self.get_logger().info(f"holding ({why}): asked {len(futures)} driver(s) to stop")

    # ------------------------------------------------------------------------------- outputs
    def _set_state(self, state: str):
        self._state = state
        self._publish_status()

    def _publish_status(self):
        msg = PlannerStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.state = self._state
        msg.task = getattr(self, "_task", self.get_parameter("task").value)
        with self._lock:
            msg.has_goal = self._goal is not None
        msg.step = int(self._last["step"])
        msg.current_cost = float(self._last["current_cost"])
        msg.best_cost = float(self._last["best_cost"])
        msg.planned_cost = float(self._last["planned_cost"])
        msg.replan_seconds = float(self._last["replan_seconds"])
        self.status_pub.publish(msg)

    def _publish_diagnostics(self):
        status = DiagnosticStatus(name="dexwm/planner", hardware_id="dexwm")
        stale = self._stale_inputs()
        if self._state in ("failed",):
            status.level, status.message = DiagnosticStatus.ERROR, "last goal failed"
        elif stale and self._state != "idle":
            status.level, status.message = DiagnosticStatus.WARN, f"stale: {', '.join(stale)}"
        else:
            status.level, status.message = DiagnosticStatus.OK, self._state
        with self._lock:
            has_goal = self._goal is not None
        values = {"state": self._state, "has_goal": str(has_goal), "stale_inputs": ", ".join(stale) or "none"}
        values.update({k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in self._last.items()})
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self.diag_pub.publish(msg)

    def _publish_plan(self, image: np.ndarray, plan: PlanStep):
        stamp = self.get_clock().now().to_msg()
        goal_kp = None
        try:
            import torch
            with torch.no_grad():
                goal_kp = np.asarray(self.model.keypoints_2d(self.planner.goal_latent[None]))[0]
            strip = rollout_strip(image, self.planner.goal_image, plan.predicted_keypoints, goal_kp, self.image_size)
            self.rollout_pub.publish(rgb_to_image_msg(strip, stamp, "camera_color_optical_frame"))
        except Exception as e:  # visualisation must never stop the robot
            self.get_logger().warning(f"rollout image not published: {e}", throttle_duration_sec=10.0)
        self.marker_pub.publish(self._markers(plan.plan, stamp))

    def _markers(self, plan: np.ndarray, stamp) -> MarkerArray:
        keypoints = self.kin.keypoints_world(plan)                 # (T, 21, 3)
        frame = self.get_parameter("frame_id").value
        out = MarkerArray()
        out.markers.append(Marker(action=Marker.DELETEALL))
        horizon = len(keypoints)
        for t, kps in enumerate(keypoints):
            m = Marker()
            m.header.stamp, m.header.frame_id = stamp, frame
            m.ns, m.id, m.type, m.action = "dexwm_planned_keypoints", t, Marker.SPHERE_LIST, Marker.ADD
            m.pose.orientation.w = 1.0
            m.scale.x = m.scale.y = m.scale.z = 0.015
            shade = (t + 1) / horizon   # later planned steps are brighter
            m.color = ColorRGBA(r=1.0 * shade, g=0.4, b=1.0 - 0.7 * shade, a=0.9)
            m.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in kps]
            out.markers.append(m)
        return out

    def destroy_node(self):
        pool = getattr(self, "_plan_pool", None)   # None: the constructor was interrupted before it
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        super().destroy_node()


def _duration(seconds: float) -> Duration:
    sec = int(math.floor(seconds))
    return Duration(sec=sec, nanosec=int(round((seconds - sec) * 1e9)))


def _wait(future, timeout: float, goal_handle) -> bool:
    """Wait for an rclpy future from a worker thread (the executor completes it); False on timeout
    or as soon as the Execute goal is asked to cancel."""
    deadline = time.monotonic() + timeout
    while not future.done():
        if time.monotonic() > deadline or goal_handle.is_cancel_requested:
            return False
        time.sleep(0.005)
    return True


def main(args=None) -> int:
    # Shutdown in the middle of a goal: no new command leaves this node; the drivers finish the
    # last (capped) step and hold there.
    return run_node("planner", PlannerNode, args, startup_errors=(ValueError, RuntimeError, OSError),
                    startup_exit_code=1)



if __name__ == "__main__":
    raise SystemExit(main())
