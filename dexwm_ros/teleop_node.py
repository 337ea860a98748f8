"""ROS 2 node ``teleop``: jog the end-effector and open/close the hand to pose the robot for a goal.

Keyboard (in the terminal that runs the node, via termios) and ``sensor_msgs/Joy`` (``/joy``, when a
joystick driver publishes it). Each key press moves the Franka flange by ``step_m`` in the world
(robot base) frame, or turns it by ``step_rad``; the arm joints come from the stack's one inverse
kinematics solver (``dexwm_robot.ik``, damped least squares; :mod:`dexwm_ros.cartesian_jog`).
Targets go to ``/franka/move_joints`` and ``/allegro/move_joints`` (MoveJoints actions), clamped to
the joint limits and to a per-command joint-change cap. ``g`` (or a Joy button) calls
``/dexwm/capture_goal`` so the pose becomes the planner's goal; ``n`` (or Joy button 4) appends it
to the goal sequence named by the ``sequence`` parameter (``/dexwm/capture_sequence``), ``l`` lists
that sequence, ``x`` clears it. Parameters: :class:`dexwm_ros.teleop_settings.TeleopSettings`.

    w/s  +x/-x      a/d  +y/-y      r/f  +z/-z      q/e  yaw +/-      t/y  pitch +/-
    o    open hand  c    close hand g    capture goal  space  stop both drivers   h  help
    n    append to sequence         l    list sequence               x    clear sequence
"""
from __future__ import annotations

import numpy as np
from rclpy.action import ActionClient
from rclpy.node import Node
from sensor_msgs.msg import JointState, Joy
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectoryPoint

from dexwm_robot import allegro as hand_joints
from dexwm_robot.joints import ARM_DOF, ARM_JOINT_NAMES, HAND_JOINT_NAMES
from dexwm_ros.action import MoveJoints
from dexwm_ros.cartesian_jog import HAND_CLOSED, CartesianJogger, JointTargets
from dexwm_ros.goal_store import APPEND, CLEAR, LIST
from dexwm_ros.joint_state import joint_vector
from dexwm_ros.node_main import run_node
from dexwm_ros.node_parameters import NodeParameters
from dexwm_ros.ros_logging import log_outcome
from dexwm_ros.ros_time import duration
from dexwm_ros.srv import CaptureSequence
from dexwm_ros.teleop_input import KEY_ACTIONS, KeyboardReader, joy_jog, key_jog, pressed_buttons
from dexwm_ros.teleop_settings import TeleopSettings

SEQUENCE_COMMANDS = {"append": APPEND, "list": LIST, "clear": CLEAR}
HELP = __doc__.split("\n\n")[-1]


class TeleopNode(Node):
    def __init__(self, kinematics=None, keyboard: bool | None = None, **node_kwargs):
        super().__init__("teleop", **node_kwargs)
        self.params = NodeParameters(self, TeleopSettings, apply=self._apply)
        s = self.params.values
        if kinematics is None:
            from dexwm_robot.kinematics import RobotKinematics
            kinematics = RobotKinematics.from_description()
        self.jogger = CartesianJogger(kinematics, damping=s.damping, max_joint_step=s.max_joint_step)
        self.joints = JointTargets()
        self._joy_buttons = None
        self._joy_axes = []
        self.sent: list[tuple[str, np.ndarray]] = []

        self.create_subscription(JointState, "/franka/joint_states", self._on_arm, 10)
        self.create_subscription(JointState, "/allegro/joint_states", self._on_hand, 10)
        self.create_subscription(Joy, s.joy_topic, self._on_joy, 10)
        self.arm_client = ActionClient(self, MoveJoints, "/franka/move_joints")
        self.hand_client = ActionClient(self, MoveJoints, "/allegro/move_joints")
        self.capture_client = self.create_client(Trigger, "/dexwm/capture_goal")
        self.sequence_client = self.create_client(CaptureSequence, "/dexwm/capture_sequence")
        self.stop_clients = [self.create_client(Trigger, "/franka/stop"), self.create_client(Trigger, "/allegro/stop")]
        self.keyboard = KeyboardReader() if (s.keyboard if keyboard is None else keyboard) else None
        self.timer = self.create_timer(1.0 / s.rate_hz, self._tick)
        if self.keyboard is not None and self.keyboard.active:
            print(HELP, flush=True)
        else:
            self.get_logger().info("no terminal keyboard: listening to Joy messages only")

    def _apply(self, s: TeleopSettings, changed: set[str]) -> None:
        self.jogger.damping, self.jogger.max_joint_step = s.damping, s.max_joint_step
        if "rate_hz" in changed:
            self.timer.timer_period_ns = int(1e9 / s.rate_hz)
        if "keyboard" in changed and (self.keyboard is not None) != s.keyboard:
            if self.keyboard is not None:
                self.keyboard.close()
            self.keyboard = KeyboardReader() if s.keyboard else None

    # ------------------------------------------------------------------------------ inputs
    def _on_arm(self, msg: JointState):
        q = joint_vector(msg, ARM_JOINT_NAMES)
        if q is not None:
            self.joints.measured_arm(q)

    def _on_hand(self, msg: JointState):
        q = joint_vector(msg, HAND_JOINT_NAMES)
        if q is not None:
            self.joints.measured_hand(q)

    def _on_joy(self, msg: Joy):
        previous, self._joy_buttons, self._joy_axes = self._joy_buttons, list(msg.buttons), list(msg.axes)
        for action in pressed_buttons(msg.buttons, previous):
            self.handle_action(action)

    def current(self) -> np.ndarray | None:
        """Base joints for the next jog: the last target while it is recent, else the measured ones."""
        return self.joints.current(self.params.values.stale_timeout_s)

    def _tick(self):
        if self.keyboard is not None:
            for key in self.keyboard.read():
                self.handle_key(key)
        s = self.params.values
        jog = joy_jog(self._joy_axes, s.joy_deadzone, s.step_m, s.step_rad)
        if jog is not None:
            self.jog(*jog)

    # ------------------------------------------------------------------------------ actions
    def handle_key(self, key: str):
        s = self.params.values
        jog = key_jog(key, s.step_m, s.step_rad)
        if jog is not None:
            self.jog(*jog)
        elif key.lower() in KEY_ACTIONS:
            self.handle_action(KEY_ACTIONS[key.lower()])

    def handle_action(self, action: str):
        if action in ("open", "close"):
            q = self.current()
            if q is None:
                self.get_logger().warning("no recent joint states: not moving the hand")
                return
            q[ARM_DOF:] = hand_joints.clamp(hand_joints.OPEN_POSE if action == "open" else HAND_CLOSED)
            self._send(q, arm=False)
        elif action == "capture":
            self._call(self.capture_client, Trigger.Request(), self._on_capture_answer)
        elif action in SEQUENCE_COMMANDS:
            command, values = SEQUENCE_COMMANDS[action], self.params.values
            request = CaptureSequence.Request(command=command, sequence=values.sequence,
                                              phase=values.sequence_phase if command == CaptureSequence.Request.APPEND
                                              else "")
            self._call(self.sequence_client, request, self._on_sequence_answer)
        elif action == "stop":
            for client in self.stop_clients:
                if client.service_is_ready():
                    client.call_async(Trigger.Request())
            self.joints.commanded(None)
            self.get_logger().info("stop requested")
        elif action == "help":
            print(HELP, flush=True)

    def _call(self, client, request, on_answer):
        if not client.service_is_ready():
            self.get_logger().warning(f"{client.srv_name} is not available (is the planner running?)")
            return
        client.call_async(request).add_done_callback(on_answer)

    def _on_capture_answer(self, future):
        log_outcome(self.get_logger(), future.result().success, f"capture_goal: {future.result().message}")

    def _on_sequence_answer(self, future):
        answer = future.result()
        phases = ", ".join(p or "by position" for p in answer.phases)
        log_outcome(self.get_logger(), answer.success, f"capture_sequence: {answer.message}" + (f" [{phases}]" if phases else ""))

    def jog(self, translation=(0.0, 0.0, 0.0), rotation=(0.0, 0.0, 0.0)) -> bool:
        q = self.current()
        if q is None:
            self.get_logger().warning("no recent joint states: not jogging", throttle_duration_sec=2.0)
            return False
        target = q.copy()
        target[:ARM_DOF] = self.jogger.jog(q, translation, rotation)
        self._send(target, hand=False)
        return True

    def _send(self, target: np.ndarray, arm: bool = True, hand: bool = True):
        self.joints.commanded(target)
        point_time = duration(self.params.values.move_duration_s)
        for enabled, client, names, values, label in (
                (arm, self.arm_client, ARM_JOINT_NAMES, target[:ARM_DOF], "arm"),
                (hand, self.hand_client, HAND_JOINT_NAMES, target[ARM_DOF:], "hand")):
            if not enabled:
                continue
            if not client.server_is_ready():
                self.get_logger().warning(f"{label} driver action is not available", throttle_duration_sec=2.0)
                continue
            goal = MoveJoints.Goal()
            goal.trajectory.joint_names = list(names)
            goal.trajectory.points = [JointTrajectoryPoint(positions=[float(v) for v in values],
                                                           time_from_start=point_time)]
            # A newer jog pre-empts this one in the driver; a refusal is reported when it comes.
            client.send_goal_async(goal).add_done_callback(lambda f, label=label: self._on_goal_answer(f, label))
            self.sent.append((label, np.asarray(values, dtype=np.float64).copy()))

    def _on_goal_answer(self, future, label: str):
        if future.exception() is None and not future.result().accepted:
            self.get_logger().warning(f"the {label} driver refused the jog target", throttle_duration_sec=2.0)

    def destroy_node(self):
        if getattr(self, "keyboard", None) is not None:
            self.keyboard.close()
        super().destroy_node()


def main(args=None) -> int:
    return run_node("teleop", TeleopNode, args, num_threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
