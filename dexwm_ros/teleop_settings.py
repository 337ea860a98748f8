"""The teleop node's parameters as one ROS-free dataclass (declared by dexwm_ros.node_parameters)."""
from __future__ import annotations

from dataclasses import dataclass

from dexwm_planner.subgoals import PHASES
from dexwm_ros.goal_store import check_sequence_name
from dexwm_ros.node_settings import setting


@dataclass(frozen=True)
class TeleopSettings:
    step_m: float = setting(0.01, "Cartesian step per key press [m]", bounds=(1e-4, 0.1))
    step_rad: float = setting(0.05, "rotation step per key press [rad]", bounds=(1e-3, 0.5))
    max_joint_step: float = setting(0.2, "largest arm joint change in one command [rad]", bounds=(1e-3, 0.5))
    damping: float = setting(0.05, "damped least-squares damping", bounds=(1e-4, 1.0))
    move_duration_s: float = setting(0.3, "time given to reach each jog target [s]", bounds=(0.01, 10.0))
    rate_hz: float = setting(20.0, "keyboard poll and joystick jog rate [Hz]", bounds=(1.0, 200.0))
    joy_deadzone: float = setting(0.15, "joystick axis dead zone", bounds=(0.0, 0.9))
    joy_topic: str = setting("/joy", "sensor_msgs/Joy topic", read_only=True)
    keyboard: bool = setting(True, "read keys from the terminal when it is one")
    stale_timeout_s: float = setting(1.0, "joint states older than this block jogging [s]", bounds=(0.05, 60.0))
    sequence: str = setting("default", "goal sequence that n/l/x append to, list, clear")
    sequence_phase: str = setting("", "search profile of the frames n appends (reach, approach, grasp, lift, carry, "
                                  "place, release: dexwm_planner.subgoals); empty = by position",
                                  choices=("",) + tuple(PHASES))

    def problem(self) -> str | None:
        try:
            check_sequence_name(self.sequence)
        except ValueError as e:
            return str(e)
        return None
