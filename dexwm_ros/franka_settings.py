"""The franka node's parameters as one ROS-free dataclass (declared by dexwm_ros.node_parameters):
start-up settings of the arm (read-only) and the live ones that bound a motion. Defaults come from
the driver core's :class:`franka_driver.arm.FrankaConfig`, bounds from its ``SETTING_BOUNDS``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dexwm_ros.driver_settings import TIME_LIMIT_RANGE, TOLERANCE_RANGE, max_command_age_setting
from dexwm_ros.node_settings import positive_problem, setting
from franka_driver.arm import SETTING_BOUNDS, FrankaConfig

_d = FrankaConfig()


@dataclass(frozen=True)
class FrankaSettings:
    robot_ip: str = setting(_d.robot_ip, "Franka control-box (FCI) address; 127.x.y.z for franky-sim", read_only=True)
    lower_torque_thresholds: tuple = setting(
        _d.lower_torque_thresholds, "collision behaviour: lower joint torque thresholds [Nm] (7)", read_only=True)
    upper_torque_thresholds: tuple = setting(
        _d.upper_torque_thresholds, "collision behaviour: upper joint torque thresholds [Nm] (7)", read_only=True)
    lower_force_thresholds: tuple = setting(
        _d.lower_force_thresholds, "collision behaviour: lower Cartesian force/torque thresholds [N, Nm] (6)",
        read_only=True)
    upper_force_thresholds: tuple = setting(
        _d.upper_force_thresholds, "collision behaviour: upper Cartesian force/torque thresholds [N, Nm] (6)",
        read_only=True)
    joint_lower_limits: tuple = setting(_d.joint_lower_limits, "lower joint limits [rad] (7)", read_only=True)
    joint_upper_limits: tuple = setting(_d.joint_upper_limits, "upper joint limits [rad] (7)", read_only=True)
    enforce_realtime: bool = setting(_d.enforce_realtime,
                                     "require a realtime kernel (libfranka RealtimeConfig.Enforce)", read_only=True)
    rate_hz: float = setting(100.0, "joint_states publishing rate [Hz]", read_only=True)
    relative_dynamics_factor: float = setting(
        _d.relative_dynamics_factor, "scales franky's max velocity/acceleration/jerk; slow by default",
        bounds=SETTING_BOUNDS["relative_dynamics_factor"])
    max_joint_step: float = setting(
        _d.max_joint_step, "largest joint change per command (current -> first point, between points) [rad]",
        bounds=SETTING_BOUNDS["max_joint_step"])
    watchdog_timeout_s: float = setting(
        _d.watchdog_timeout_s, "stop and hold when a topic-commanded motion gets no new command for this long [s]",
        bounds=SETTING_BOUNDS["watchdog_timeout_s"])
    reconnect_period_s: float = setting(_d.reconnect_period_s, "seconds between reconnect attempts",
                                        bounds=SETTING_BOUNDS["reconnect_period_s"])
    goal_tolerance: float = setting(0.01, "default per-joint goal tolerance of move_joints [rad]",
                                    bounds=TOLERANCE_RANGE)
    default_time_limit_s: float = setting(30.0, "move_joints time limit when the goal gives none [s]",
                                          bounds=TIME_LIMIT_RANGE)
    max_command_age_s: float = max_command_age_setting()

    def problem(self) -> str | None:
        try:
            self.arm_config().validate()
        except ValueError as e:
            return str(e)
        return positive_problem(self, ("rate_hz",))

    def arm_config(self) -> FrankaConfig:
        """The driver core's configuration (a new, mutable object) from these settings."""
        names = {f.name for f in dataclasses.fields(FrankaConfig)}
        return FrankaConfig(**{name: getattr(self, name) for name in names})
