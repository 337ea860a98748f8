"""ROS 2 node ``planner`` (namespace ``dexwm``): plan and act toward a goal image with DexWM.

A thin adapter over :class:`dexwm_planner.session.PlanningSession` (one Execute goal = one session:
observe -> plan -> check -> command -> wait -> judge) with the world model inside MPC/CEM
(:class:`dexwm_planner.mpc.MPCPlanner`) as its planner and the ROS graph as its robot
(:class:`dexwm_ros.planner_robot.MoveJointsRobot`). The in-process evaluation runs the same session.

Inputs: the colour image (``/camera/camera/color/image_raw``), ``/franka/joint_states`` (7) and
``/allegro/joint_states`` (16); in simulation ``/sim/episode`` tells when the task succeeded.

Interfaces:

- action ``/dexwm/execute`` (dexwm_ros/action/Execute): plan and act until success, the step budget
  or a cancel; feedback after every executed step; cancel (and node shutdown) stops both drivers
  (their ``stop`` services), so the robot holds where it is;
- service ``/dexwm/capture_goal`` (std_srvs/Trigger): the current frame and joints become the goal;
  RViz's "2D Goal Pose" (``/goal_pose``) and "Publish Point" (``/clicked_point``) tools trigger the
  same capture; the ``goal_image`` parameter loads a goal from an image file;
- service ``/dexwm/capture_sequence`` (dexwm_ros/srv/CaptureSequence): append the current frame and
  joints to a named goal sequence, list it, clear it; RViz's "2D Pose Estimate" tool
  (``/initialpose``) appends to the sequence named by the ``capture_sequence`` parameter. An Execute
  goal with several goal images or a sequence's name runs them as subgoals
  (dexwm_planner.subgoals.SubgoalSequence: one session per subgoal, advancing by the stop rule);
- publishes ``/dexwm/goal_image`` (transient local), ``/dexwm/predicted_rollout`` (the current view
  with the predicted hand keypoints of every planned step, then the goal; transient local),
  ``/dexwm/keypoints`` (MarkerArray: planned hand keypoints by forward kinematics),
  ``/dexwm/status`` (PlannerStatus, with the active subgoal of a sequence) and the planner's state on
  ``/diagnostics``; during a sequence ``/dexwm/goal_image`` shows the active subgoal.

Commands go to ``/franka/move_joints`` and ``/allegro/move_joints`` (MoveJoints actions). The
session checks every command before it leaves: finite, inside the joint limits, no joint moving more
than the per-step cap. Camera or joint data older than ``stale_timeout_s`` pause planning (the robot
holds); when they stay stale for ``stale_abort_s`` the goal aborts with reason ``stale_input``.

A goal runs on its own executor thread (reentrant callback group), so subscriptions, services and
cancel requests are served while a replan is in progress; the CEM polls the cancel flag.
"""
from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped, PoseStamped, PoseWithCovarianceStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, \
    SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import ColorRGBA
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from dexwm_robot.joints import ARM_JOINT_NAMES as ARM_NAMES, HAND_JOINT_NAMES as HAND_NAMES
from dexwm_robot.tasks import TASK_KINDS
from dexwm_planner.cem import PRESETS, CEMConfig
from dexwm_planner.mpc import MPCConfig, MPCPlanner, PlanStep
from dexwm_planner.objective import ObjectiveConfig
from dexwm_planner.session import CANCELED, CommandLimits, PlanningSession, Progress, SessionConfig, \
    WorldModelPlans
from dexwm_planner.stop_rule import REACHED, StopRule, load_fitted
from dexwm_planner.subgoals import Subgoal, SubgoalSequence, default_phases, phase_settings
from dexwm_ros.action import Execute
from dexwm_ros.image_conversion import image_to_numpy, numpy_to_image
from dexwm_robot.view import model_view
from dexwm_ros.msg import PlannerStatus
from dexwm_ros.srv import CaptureSequence
from dexwm_ros.node_main import run_node
from dexwm_ros.planner_robot import MoveJointsRobot

# A goal image whose aspect ratio differs from the camera's by more than this is refused: resizing
# it would distort the scene and the latent distance would compare different geometry.
MAX_ASPECT_MISMATCH = 0.05
# A goal image smaller than this (px per side), or less than half the camera's size in either
# direction, is refused: upscaling it invents the detail the latent distance is computed on.
MIN_GOAL_SIDE = 32
MIN_GOAL_FRACTION = 0.5
# Executed MPC steps per goal: the max_steps parameter's range, and the bound of a request's value.
MAX_STEPS_RANGE = (1, 10000)
# Captured goal sequences: the name an empty request means, and bounds that keep a stuck trigger
# (a held joystick button, a script in a loop) from filling the memory with frames.
DEFAULT_SEQUENCE = "default"
MAX_SUBGOALS = 32
MAX_SEQUENCES = 16
MAX_SEQUENCE_NAME = 64


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
class Goal:
    image: np.ndarray
    joints: np.ndarray | None
    source: str
    phase: str = ""           # a subgoal's search profile; empty = by its position in the sequence


def check_sequence_name(name: str) -> str:
    """The sequence name a request means (empty: the default); ValueError when it is unusable."""
    name = name or DEFAULT_SEQUENCE
    if len(name) > MAX_SEQUENCE_NAME or not name.isprintable() or name != name.strip():
        raise ValueError(f"sequence name {name[:MAX_SEQUENCE_NAME]!r} must be printable, without surrounding "
                         f"spaces, at most {MAX_SEQUENCE_NAME} characters")
    return name


def sequence_subgoals(goals: list[Goal]) -> list[Subgoal]:
    """Subgoals with their search profiles (named, or by position); ValueError for an unknown one."""
    by_position = default_phases(len(goals))
    return [Subgoal(g.image, phase_settings(g.phase or by_position[i]), joints=g.joints, label=g.source)
            for i, g in enumerate(goals)]


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
        self._goal: Goal | None = None
        self._busy = False
        self._state = "idle"
        self._progress = Progress()
        self._sequences: dict[str, list[Goal]] = {}
        self._phase = ""               # active subgoal's profile (status)
        self._sequence_name = ""       # captured sequence being executed (status)

        sensors = MutuallyExclusiveCallbackGroup()
        self._work = ReentrantCallbackGroup()
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.robot = MoveJointsRobot(self, ARM_NAMES, HAND_NAMES, g("image_topic"), g("arm_state_topic"),
                                     g("hand_state_topic"), sensors, self._work)
        self.create_subscription(PoseStamped, "/goal_pose", lambda _m: self._capture_from("/goal_pose"), 10,
                                 callback_group=self._work)
        self.create_subscription(PointStamped, "/clicked_point", lambda _m: self._capture_from("/clicked_point"),
                                 10, callback_group=self._work)
        self.create_subscription(PoseWithCovarianceStamped, "/initialpose", self._append_from_rviz, 10,
                                 callback_group=self._work)

        self.goal_pub = self.create_publisher(Image, "/dexwm/goal_image", latched)
        self.rollout_pub = self.create_publisher(Image, "/dexwm/predicted_rollout", latched)
        self.marker_pub = self.create_publisher(MarkerArray, "/dexwm/keypoints", 10)
        self.status_pub = self.create_publisher(PlannerStatus, "/dexwm/status", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self.create_service(Trigger, "/dexwm/capture_goal", self._on_capture, callback_group=self._work)
        self.create_service(CaptureSequence, "/dexwm/capture_sequence", self._on_capture_sequence,
                            callback_group=self._work)
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
        p("capture_sequence", DEFAULT_SEQUENCE, _descriptor(
            "goal sequence that RViz's 2D Pose Estimate tool (/initialpose) appends the current frame to"))
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
            if param.name == "capture_sequence":
                try:
                    check_sequence_name(param.value)
                except ValueError as e:
                    return SetParametersResult(successful=False, reason=str(e))
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

    def _cem_config(self) -> CEMConfig:
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        preset = g("preset")
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        cem = PRESETS[preset]
        changes = {k: g(k) for k in ("samples", "elites", "iterations", "horizon") if g(k) > 0}
        changes.update(std_arm=g("std_arm"), std_hand=g("std_hand"), max_step_arm=g("max_step_arm"),
                       max_step_hand=g("max_step_hand"))
        if "samples" in changes:
            changes["chunk"] = min(changes["samples"], max(cem.chunk, 1))
        return cem.with_(**changes)

    def _make_planner(self, task: str | None = None, seed: int | None = None) -> MPCPlanner:
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        task = task or g("task")
        cem = self._cem_config()
        # The orientation term only makes sense when grasping (keep the approach orientation).
        objective = ObjectiveConfig(keypoint_weight=g("keypoint_weight"),
                                    orientation_weight=g("orientation_weight") if task == "grasp" else 0.0)
        config = MPCConfig(cem=cem, objective=objective, context_frames=g("context_frames"))
        return MPCPlanner(self.model, self.actions_fn, self.lower, self.upper, config,
                          rotation_fn=self.rotation_fn, seed=g("seed") if seed is None else seed)

    # -------------------------------------------------------------------------------- inputs
    def _stale_inputs(self) -> list[str]:
        """Names of the inputs that are missing or older than stale_timeout_s."""
        return self.robot.stale_inputs(self.get_parameter("stale_timeout_s").value)

    # ------------------------------------------------------------------------------------ goal
    def _set_goal(self, goal: Goal):
        frame = self.robot.latest_image()
        image = fit_goal_image(goal.image, None if frame is None else frame.value.shape[:2])
        with self._lock:
            self._goal = Goal(image, goal.joints, goal.source)
        self.goal_pub.publish(rgb_to_image_msg(image, self.get_clock().now().to_msg(), "camera_color_optical_frame"))
        self.get_logger().info(f"goal set from {goal.source} ({image.shape[1]}x{image.shape[0]})")
        self._publish_status()

    def capture_goal(self, source: str) -> tuple[bool, str]:
        stale = self._stale_inputs()
        if stale:
            return False, f"cannot capture a goal: no recent {', '.join(stale)}"
        image, joints = self.robot.latest_image(), self.robot.latest_joints()
        self._set_goal(Goal(image.value.copy(), joints.value.copy(), source))
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

    # ----------------------------------------------------------------------------- sequences
    def edit_sequence(self, command: str, name: str, phase: str = "") -> tuple[bool, str, list[str]]:
        """Append the current frame to, list, or clear a named sequence: (ok, message, its phases).
        A refused request changes nothing."""
        try:
            name = check_sequence_name(name)
            if command not in (CaptureSequence.Request.APPEND, CaptureSequence.Request.LIST,
                               CaptureSequence.Request.CLEAR):
                raise ValueError(f"unknown command {command!r}: append, list or clear")
            if command == CaptureSequence.Request.APPEND and phase:
                phase_settings(phase)
        except ValueError as e:
            return False, str(e), []
        if command == CaptureSequence.Request.LIST:
            with self._lock:
                goals = list(self._sequences.get(name, []))
            return True, f"sequence {name!r}: {len(goals)} subgoal(s)", [g.phase for g in goals]
        if command == CaptureSequence.Request.CLEAR:
            with self._lock:
                removed = self._sequences.pop(name, [])
            return True, f"sequence {name!r} cleared ({len(removed)} subgoal(s) removed)", []
        stale = self._stale_inputs()
        if stale:
            return False, f"cannot append to sequence {name!r}: no recent {', '.join(stale)}", self._phases_of(name)
        image, joints = self.robot.latest_image(), self.robot.latest_joints()
        with self._lock:
            goals = self._sequences.get(name, [])
            if len(goals) >= MAX_SUBGOALS:
                return False, f"sequence {name!r} already has {MAX_SUBGOALS} subgoals (the most): clear it first", \
                    [g.phase for g in goals]
            if name not in self._sequences and len(self._sequences) >= MAX_SEQUENCES:
                return False, f"already {MAX_SEQUENCES} sequences (the most): clear one first", []
            goals = self._sequences.setdefault(name, [])
            goals.append(Goal(image.value.copy(), joints.value.copy(), f"{name}[{len(goals)}]", phase))
            phases = [g.phase for g in goals]
        return True, (f"subgoal {len(phases)} of sequence {name!r} captured from the current camera frame and "
                      f"joints ({phase or 'phase by position'})"), phases

    def _phases_of(self, name: str) -> list[str]:
        with self._lock:
            return [g.phase for g in self._sequences.get(name, [])]

    def _on_capture_sequence(self, request, response):
        response.success, response.message, response.phases = self.edit_sequence(
            request.command, request.sequence, request.phase)
        self._log_capture(response.success, f"capture_sequence {request.command}: {response.message}")
        return response

    def _append_from_rviz(self, _msg):
        ok, message, _ = self.edit_sequence(CaptureSequence.Request.APPEND,
                                            self.get_parameter("capture_sequence").value)
        self._log_capture(ok, f"/initialpose: {message}")

    def _request_sequence(self, request) -> tuple[str, list[Goal]] | None:
        """The subgoals an Execute request names (its goal images or a captured sequence), None for a
        single goal; LookupError when the named sequence is empty, ValueError for a bad request."""
        if request.goal_images and request.sequence:
            raise ValueError("give goal_images or a sequence name, not both")
        if request.phases and len(request.phases) != len(request.goal_images):
            raise ValueError(f"{len(request.phases)} phases for {len(request.goal_images)} goal images "
                             "(give one per image, or none)")
        if len(request.goal_images) > MAX_SUBGOALS:
            raise ValueError(f"{len(request.goal_images)} goal images: at most {MAX_SUBGOALS}")
        if request.sequence:
            name = check_sequence_name(request.sequence)
            with self._lock:
                goals = list(self._sequences.get(name, []))
            if not goals:
                raise LookupError(f"sequence {name!r} is empty: append frames with /dexwm/capture_sequence or "
                                  "RViz's 2D Pose Estimate tool")
            sequence_subgoals(goals)          # unknown phases fail before anything moves
            return name, goals
        if not request.goal_images:
            return None
        frame = self.robot.latest_image()
        hw = None if frame is None else frame.value.shape[:2]
        phases = list(request.phases) or [""] * len(request.goal_images)
        goals = []
        for i, (msg, phase) in enumerate(zip(request.goal_images, phases)):
            try:
                image = fit_goal_image(image_msg_to_rgb(msg), hw)
            except ValueError as e:
                raise ValueError(f"goal image {i}: {e}") from None
            goals.append(Goal(image, None, f"request[{i}]", phase))
        sequence_subgoals(goals)
        return "", goals

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
        except Exception as e:  # the session has left the robot holding; the node lives on
            self.get_logger().error(f"execution failed: {type(e).__name__}: {e}")
            self._set_state("failed")
            goal_handle.abort()
            return self._result(False, self._progress.steps, "error: " + str(e))
        finally:
            with self._lock:
                self._busy = False

    def _result(self, success: bool, steps: int, reason: str) -> Execute.Result:
        cost = self._progress.current_cost
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
            sequence = self._request_sequence(request)
        except LookupError as e:
            self.get_logger().error(str(e))
            goal_handle.abort()
            return self._result(False, 0, f"no_goal: {e}")
        except ValueError as e:
            self.get_logger().error(f"goal sequence refused: {e}")
            goal_handle.abort()
            return self._result(False, 0, f"bad_goal: {e}")
        if sequence is not None:
            return self._run_sequence(goal_handle, task, *sequence)
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

        self._task = task
        session = PlanningSession(
            self.robot, WorldModelPlans(lambda seed: self._goal_planner(task, seed)), self._session_config(stop_rule),
            on_feedback=lambda progress: self._publish_feedback(goal_handle, progress),
            on_state=self._set_state, on_plan=self._publish_plan,
            interrupt=lambda: self._interruption(goal_handle), log=self.get_logger())
        self._progress = session.progress
        self.get_logger().info(f"executing {task} toward the goal from {goal.source}, at most {max_steps} steps, "
                               f"stop below latent distance {stop_rule.done_cost:.3f}")
        result = session.run(goal.image, goal.joints, seed=g("seed"))
        if result.reason == REACHED:
            goal_handle.succeed()
        elif result.reason == CANCELED:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        return self._result(result.success, result.steps, result.reason)

    def _run_sequence(self, goal_handle, task: str, name: str, goals: list[Goal]):
        g = lambda param: self.get_parameter(param).value  # noqa: E731
        max_steps = int(goal_handle.request.max_steps) or g("max_steps")
        stop_rule = self._stop_rule(task, max_steps)
        # A done_cost parameter >= 0 applies to every subgoal; -1 takes each subgoal kind's fitted one.
        fitted = self._fitted_stop.for_kind if g("done_cost") < 0 and self._fitted_stop is not None else None
        self._task, self._sequence_name = task, name
        sequence = SubgoalSequence(
            self.robot, lambda search, held: WorldModelPlans(lambda seed: self._goal_planner(task, seed), search, held),
            self._session_config(stop_rule), fitted_done_cost=fitted, on_subgoal=self._on_subgoal,
            on_feedback=lambda progress: self._publish_feedback(goal_handle, progress),
            on_state=self._set_state, on_plan=self._publish_plan,
            interrupt=lambda: self._interruption(goal_handle), log=self.get_logger())
        self.get_logger().info(f"executing a sequence of {len(goals)} subgoals"
                               f"{f' ({name!r})' if name else ''}, at most {max_steps} steps each")
        try:
            result = sequence.run(sequence_subgoals(goals), seed=g("seed"))
        finally:
            self._sequence_name = self._phase = ""
        if result.success:
            goal_handle.succeed()
        elif result.reason == CANCELED:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        out = self._result(result.success, result.steps, result.reason)
        out.subgoal_reasons = [o.reason for o in result.subgoals]
        return out

    def _on_subgoal(self, index: int, subgoal: Subgoal, progress: Progress):
        self._phase, self._progress = subgoal.search.phase, progress
        self.goal_pub.publish(rgb_to_image_msg(subgoal.image, self.get_clock().now().to_msg(),
                                               "camera_color_optical_frame"))
        self._publish_status()

    def _goal_planner(self, task: str, seed: int) -> MPCPlanner:
        # Kept on the node: the rollout image and the status show this goal's planner.
        self.planner = self._make_planner(task, seed)
        return self.planner

    def _session_config(self, stop_rule: StopRule) -> SessionConfig:
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        duration, time_limit = self._step_timing()
        # The caps the CEM plans under: a command over them is a planner fault, refused.
        limits = CommandLimits(self.lower, self.upper, self._cem_config().max_step())
        return SessionConfig(stop_rule=stop_rule, limits=limits, move_duration_s=duration,
                             move_time_limit_s=time_limit, goal_tolerance=float(g("goal_tolerance")),
                             stale_timeout_s=float(g("stale_timeout_s")), stale_abort_s=float(g("stale_abort_s")))

    def _interruption(self, goal_handle) -> str | None:
        if goal_handle.is_cancel_requested:
            return CANCELED
        # Shutdown in the middle of a goal: no new command leaves this node.
        return None if self.context.ok() else "shutdown"

    def _publish_feedback(self, goal_handle, progress: Progress) -> None:
        self._progress = progress   # a sequence has one per subgoal
        goal_handle.publish_feedback(Execute.Feedback(step=progress.steps, subgoal=int(progress.subgoal),
                                                      subgoals=int(progress.subgoals),
                                                      current_cost=float(progress.current_cost),
                                                      best_cost=float(progress.best_cost),
                                                      planned_cost=float(progress.planned_cost),
                                                      replan_seconds=float(progress.replan_seconds)))

    def _step_timing(self) -> tuple[float, float]:
        """(move duration, MoveJoints time limit) of one executed step; 0 parameters = automatic."""
        duration = float(self.get_parameter("move_duration_s").value) or self.model_frame_step
        return duration, max(float(self.get_parameter("move_timeout_s").value), duration)

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
        progress = self._progress
        msg.step = int(progress.steps)
        msg.current_cost = float(progress.current_cost)
        msg.best_cost = float(progress.best_cost)
        msg.planned_cost = float(progress.planned_cost)
        msg.replan_seconds = float(progress.replan_seconds)
        msg.subgoal, msg.subgoals = int(progress.subgoal), int(progress.subgoals)
        msg.phase, msg.sequence = self._phase, self._sequence_name
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
        values.update({k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in asdict(self._progress).items()})
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


def main(args=None) -> int:
    # Shutdown in the middle of a goal: the session sends no new command; the drivers finish the
    # last (capped) step and hold there.
    return run_node("planner", PlannerNode, args, startup_errors=(ValueError, RuntimeError, OSError),
                    startup_exit_code=1)



if __name__ == "__main__":
    raise SystemExit(main())
