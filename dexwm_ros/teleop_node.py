"""ROS 2 node ``teleop``: jog the end-effector and open/close the hand to pose the robot for a goal.

Keyboard (in the terminal that runs the node, via termios) and ``sensor_msgs/Joy`` (``/joy``, when a
joystick driver publishes it). Each key press moves the Franka flange by ``step_m`` in the world
(robot base) frame, or turns it by ``step_rad``; the arm joints come from the stack's one inverse
kinematics solver (``dexwm_robot.ik``, damped least squares).
Targets go to ``/franka/move_joints`` and ``/allegro/move_joints`` (MoveJoints actions), clamped to
the joint limits and to a per-command joint-change cap. ``g`` (or a Joy button) calls
``/dexwm/capture_goal`` so the pose becomes the planner's goal; ``n`` (or Joy button 4) appends it
to the goal sequence named by the ``sequence`` parameter (``/dexwm/capture_sequence``), ``l`` lists
that sequence, ``x`` clears it.

    w/s  +x/-x      a/d  +y/-y      r/f  +z/-z      q/e  yaw +/-      t/y  pitch +/-
    o    open hand  c    close hand g    capture goal  space  stop both drivers   h  help
    n    append to sequence         l    list sequence               x    clear sequence
"""
from __future__ import annotations

import math
import os
import select
import sys
import threading
import time

import numpy as np

from builtin_interfaces.msg import Duration
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.action import ActionClient
from rclpy.node import Node
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import JointState, Joy
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectoryPoint

from dexwm_robot import allegro as hand_joints
from dexwm_robot.ik import solve_arm_ik
from dexwm_robot.joints import ARM_DOF, ARM_JOINT_NAMES as ARM_NAMES, HAND_JOINT_NAMES as HAND_NAMES
from dexwm_ros.action import MoveJoints
from dexwm_ros.srv import CaptureSequence
from dexwm_ros.joint_state import joint_vector
from dexwm_ros.node_main import run_node

# A power-grasp hand posture inside the limits (fingers flexed, thumb opposed).
HAND_CLOSED = np.array([0.0, 1.45, 0.7, 0.4] * 3 + [0.6, 1.163, 1.4, 1.719])

# key -> (translation direction (3,), rotation axis (3,) in the world frame)
KEY_JOGS = {
    "w": ((1, 0, 0), None), "s": ((-1, 0, 0), None),
    "a": ((0, 1, 0), None), "d": ((0, -1, 0), None),
    "r": ((0, 0, 1), None), "f": ((0, 0, -1), None),
    "q": (None, (0, 0, 1)), "e": (None, (0, 0, -1)),
    "t": (None, (0, 1, 0)), "y": (None, (0, -1, 0)),
}
KEY_ACTIONS = {"o": "open", "c": "close", "g": "capture", " ": "stop", "h": "help",
               "n": "append", "l": "list", "x": "clear"}
SEQUENCE_COMMANDS = {"append": CaptureSequence.Request.APPEND, "list": CaptureSequence.Request.LIST,
                     "clear": CaptureSequence.Request.CLEAR}


class CartesianJogger:
    """Flange jogs: the arm's inverse kinematics (``dexwm_robot.ik``) towards a nearby flange pose,
    then a cap on the joint change of one command."""

    def __init__(self, kinematics, damping: float = 0.05, max_joint_step: float = 0.2):
        self.kin = kinematics
        self.lower = np.asarray(kinematics.lower, dtype=np.float64)
        self.upper = np.asarray(kinematics.upper, dtype=np.float64)
        self.damping = damping
        self.max_joint_step = max_joint_step

    def jog(self, q: np.ndarray, translation=(0, 0, 0), rotation_vector=(0, 0, 0), iterations: int = 5) -> np.ndarray:
        """Arm joints (7,) that move the flange by ``translation`` [m] and turn it by
        ``rotation_vector`` [rad] (world frame) from joints q (23,); the hand is unchanged."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (len(self.lower),) or not np.all(np.isfinite(q)):
            raise ValueError(f"joints must be {len(self.lower)} finite values, got shape {q.shape}")
        p0, r0 = self.kin.ee_pose(q)
        target_p = p0 + np.asarray(translation, dtype=np.float64)
        target_r = Rotation.from_rotvec(np.asarray(rotation_vector, dtype=np.float64)).as_matrix() @ r0
        # A jog is a small step near the current posture: full weight on orientation, no drift of
        # the redundant joint, no per-iteration cap (the per-command cap below bounds the motion).
        arm = solve_arm_ik(self.kin, q, target_p, target_r, point="flange", iterations=iterations,
                           tol=1e-5, rotation_tol=1e-5, rotation_weight=1.0, damping=self.damping ** 2,
                           max_iteration_step=None, posture_gain=0.0, limit_margin=0.0)
        start = q[:ARM_DOF]
        step = np.clip(arm - start, -self.max_joint_step, self.max_joint_step)
        return np.clip(start + step, self.lower[:ARM_DOF], self.upper[:ARM_DOF])


class KeyboardReader:
    """Non-blocking single-key reads from a terminal in cbreak mode (restored on close)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdin
        self.fd = None
        self._saved = None
        if self.stream.isatty():
            import termios
            import tty

            self.fd = self.stream.fileno()
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)

    @property
    def active(self) -> bool:
        return self.fd is not None

    def read(self) -> list[str]:
        if self.fd is None:
            return []
        keys = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 32)
            if not data:
                break
            keys.extend(data.decode(errors="ignore"))
        return keys

    def close(self):
        if self.fd is not None and self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self.fd = None


def _float(description: str, lo: float, hi: float) -> ParameterDescriptor:
    return ParameterDescriptor(description=description,
                               floating_point_range=[FloatingPointRange(from_value=lo, to_value=hi)])


class TeleopNode(Node):
    def __init__(self, kinematics=None, keyboard: bool | None = None, **node_kwargs):
        super().__init__("teleop", **node_kwargs)
        p = self.declare_parameter
        p("step_m", 0.01, _float("Cartesian step per key press [m]", 1e-4, 0.1))
        p("step_rad", 0.05, _float("rotation step per key press [rad]", 1e-3, 0.5))
        p("max_joint_step", 0.2, _float("largest arm joint change in one command [rad]", 1e-3, 0.5))
        p("damping", 0.05, _float("damped least-squares damping", 1e-4, 1.0))
        p("move_duration_s", 0.3, _float("time given to reach each jog target [s]", 0.01, 10.0))
        p("rate_hz", 20.0, _float("keyboard poll and joystick jog rate [Hz]", 1.0, 200.0))
        p("joy_deadzone", 0.15, _float("joystick axis dead zone", 0.0, 0.9))
        p("joy_topic", "/joy", ParameterDescriptor(description="sensor_msgs/Joy topic", read_only=True))
        p("keyboard", True, ParameterDescriptor(description="read keys from the terminal when it is one"))
        p("stale_timeout_s", 1.0, _float("joint states older than this block jogging [s]", 0.05, 60.0))
        p("sequence", "default", ParameterDescriptor(description="goal sequence that n/l/x append to, list, clear"))
        g = lambda name: self.get_parameter(name).value  # noqa: E731

        if kinematics is None:
            from dexwm_robot.kinematics import RobotKinematics
            kinematics = RobotKinematics.from_description()
        self.jogger = CartesianJogger(kinematics, damping=g("damping"), max_joint_step=g("max_joint_step"))
        self.lower, self.upper = self.jogger.lower, self.jogger.upper
        self._lock = threading.Lock()
        self._arm = self._hand = None
        self._arm_t = self._hand_t = 0.0
        self._target = None            # last commanded (23,), so quick key repeats accumulate
        self._target_t = 0.0
        self._joy = None
        self.sent: list[tuple[str, np.ndarray]] = []

        self.create_subscription(JointState, "/franka/joint_states", self._on_arm, 10)
        self.create_subscription(JointState, "/allegro/joint_states", self._on_hand, 10)
        self.create_subscription(Joy, g("joy_topic"), self._on_joy, 10)
        self.arm_client = ActionClient(self, MoveJoints, "/franka/move_joints")
        self.hand_client = ActionClient(self, MoveJoints, "/allegro/move_joints")
        self.capture_client = self.create_client(Trigger, "/dexwm/capture_goal")
        self.sequence_client = self.create_client(CaptureSequence, "/dexwm/capture_sequence")
        self.stop_clients = [self.create_client(Trigger, "/franka/stop"), self.create_client(Trigger, "/allegro/stop")]
        use_keyboard = g("keyboard") if keyboard is None else keyboard
        self.keyboard = KeyboardReader() if use_keyboard else None
        self.create_timer(1.0 / g("rate_hz"), self._tick)
        if self.keyboard is not None and self.keyboard.active:
            print(__doc__.split("\n\n")[-1], flush=True)
        else:
            self.get_logger().info("no terminal keyboard: listening to Joy messages only")

    # ------------------------------------------------------------------------------ inputs
    def _on_arm(self, msg: JointState):
        q = joint_vector(msg, ARM_NAMES)
        if q is not None:
            with self._lock:
                self._arm, self._arm_t = q, time.monotonic()

    def _on_hand(self, msg: JointState):
        q = joint_vector(msg, HAND_NAMES)
        if q is not None:
            with self._lock:
                self._hand, self._hand_t = q, time.monotonic()

    def _on_joy(self, msg: Joy):
        with self._lock:
            previous = self._joy
            self._joy = msg
        pressed = [i for i, b in enumerate(msg.buttons) if b and (previous is None or i >= len(previous.buttons)
                                                                 or not previous.buttons[i])]
        for button, action in ((0, "close"), (1, "open"), (2, "capture"), (3, "stop"), (4, "append")):
            if button in pressed:
                self.handle_action(action)

    def current(self) -> np.ndarray | None:
        """Base joints for the next jog: the last target while it is recent, else the measured ones."""
        limit = self.get_parameter("stale_timeout_s").value
        now = time.monotonic()
        with self._lock:
            if self._arm is None or self._hand is None or now - self._arm_t > limit or now - self._hand_t > limit:
                return None
            if self._target is not None and now - self._target_t < 1.0:
                return self._target.copy()
            return np.r_[self._arm, self._hand]

    # ------------------------------------------------------------------------------ actions
    def _tick(self):
        if self.keyboard is not None:
            for key in self.keyboard.read():
                self.handle_key(key)
        with self._lock:
            joy = self._joy
        if joy is not None and len(joy.axes) >= 3:
            dz = self.get_parameter("joy_deadzone").value
            axes = [a if abs(a) > dz else 0.0 for a in list(joy.axes)[:4]] + [0.0] * 4
            if any(axes[:4]):
                step = self.get_parameter("step_m").value
                # left stick: x forward / y left, right stick vertical: z; axis 3 (right horizontal): yaw
                self.jog(translation=step * np.array([axes[1], axes[0], axes[2]]),
                         rotation=self.get_parameter("step_rad").value * np.array([0, 0, axes[3]]))

    def handle_key(self, key: str):
        key = key.lower()
        if key in KEY_JOGS:
            direction, axis = KEY_JOGS[key]
            if direction is not None:
                self.jog(translation=self.get_parameter("step_m").value * np.asarray(direction, float))
            else:
                self.jog(rotation=self.get_parameter("step_rad").value * np.asarray(axis, float))
        elif key in KEY_ACTIONS:
            self.handle_action(KEY_ACTIONS[key])

    def handle_action(self, action: str):
        if action in ("open", "close"):
            q = self.current()
            if q is None:
                self.get_logger().warning("no recent joint states: not moving the hand")
                return
            q[7:] = hand_joints.clamp(hand_joints.OPEN_POSE if action == "open" else HAND_CLOSED)
            self._send(q, arm=False)
        elif action == "capture":
            if not self.capture_client.service_is_ready():
                self.get_logger().warning("/dexwm/capture_goal is not available (is the planner running?)")
                return
            future = self.capture_client.call_async(Trigger.Request())
            future.add_done_callback(lambda f: self.get_logger().info(f"capture_goal: {f.result().message}"))
        elif action in SEQUENCE_COMMANDS:
            if not self.sequence_client.service_is_ready():
                self.get_logger().warning("/dexwm/capture_sequence is not available (is the planner running?)")
                return
            request = CaptureSequence.Request(command=SEQUENCE_COMMANDS[action],
                                              sequence=self.get_parameter("sequence").value)
            future = self.sequence_client.call_async(request)
            future.add_done_callback(self._on_sequence_answer)
        elif action == "stop":
            for client in self.stop_clients:
                if client.service_is_ready():
                    client.call_async(Trigger.Request())
            with self._lock:
                self._target = None
            self.get_logger().info("stop requested")
        elif action == "help":
            print(__doc__.split("\n\n")[-1], flush=True)

    def _on_sequence_answer(self, future):
        answer = future.result()
        phases = ", ".join(p or "by position" for p in answer.phases)
        text = f"capture_sequence: {answer.message}" + (f" [{phases}]" if phases else "")
        # One call site per severity: rclpy refuses a call site whose severity changes.
        if answer.success:
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)

    def jog(self, translation=(0.0, 0.0, 0.0), rotation=(0.0, 0.0, 0.0)) -> bool:
        q = self.current()
        if q is None:
            self.get_logger().warning("no recent joint states: not jogging", throttle_duration_sec=2.0)
            return False
        target = q.copy()
        target[:7] = self.jogger.jog(q, translation, rotation)
        self._send(target, hand=False)
        return True

    def _send(self, target: np.ndarray, arm: bool = True, hand: bool = True):
        duration = self.get_parameter("move_duration_s").value
        with self._lock:
            self._target, self._target_t = target.copy(), time.monotonic()
        for enabled, client, names, values, label in ((arm, self.arm_client, ARM_NAMES, target[:7], "arm"),
                                                      (hand, self.hand_client, HAND_NAMES, target[7:], "hand")):
            if not enabled:
                continue
            if not client.server_is_ready():
                self.get_logger().warning(f"{label} driver action is not available", throttle_duration_sec=2.0)
                continue
            goal = MoveJoints.Goal()
            goal.trajectory.joint_names = list(names)
            sec = int(math.floor(duration))
            goal.trajectory.points = [JointTrajectoryPoint(
                positions=[float(v) for v in values],
                time_from_start=Duration(sec=sec, nanosec=int((duration - sec) * 1e9)))]
            client.send_goal_async(goal)   # a newer jog pre-empts this one in the driver
            self.sent.append((label, np.asarray(values, dtype=np.float64).copy()))

    def destroy_node(self):
        if self.keyboard is not None:
            self.keyboard.close()
        super().destroy_node()


def main(args=None) -> int:
    return run_node("teleop", TeleopNode, args, num_threads=1)



if __name__ == "__main__":
    raise SystemExit(main())
