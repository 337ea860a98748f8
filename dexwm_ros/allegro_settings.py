"""The allegro node's parameters as one ROS-free dataclass (declared by dexwm_ros.node_parameters):
the CAN transport and the hand's calibration and caps at start (read-only), gains, goal defaults,
the stop mode and the temperature warning live. Defaults and gain bounds come from the driver core
(:class:`allegro_driver.controller.ControllerConfig`, ``GAIN_BOUNDS``); every 16-value list is in
the joint order of dexwm_robot.allegro."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from allegro_driver.controller import GAIN_BOUNDS, ControllerConfig
from dexwm_robot.allegro import NUM_JOINTS
from dexwm_ros.driver_settings import TIME_LIMIT_RANGE, TOLERANCE_RANGE, max_command_age_setting
from dexwm_ros.node_settings import setting

_d = ControllerConfig()
STOP_MODES = ("hold", "torque_off")


@dataclass(frozen=True)
class AllegroSettings:
    can_interface: str = setting("socketcan", "python-can interface: socketcan, pcan, virtual, ...", read_only=True)
    can_channel: str = setting("can0", "python-can channel (can0, PCAN_USBBUS1, any name for virtual)",
                               read_only=True)
    can_bitrate: int = setting(1_000_000, "CAN bit rate [bit/s]; the V4 hand uses 1 Mbit/s", read_only=True)
    device_id: int = setting(0, "hand device id (low 2 bits of the CAN id), 0..3", read_only=True)
    emulate_hand: bool = setting(False, "start the firmware emulator in this process on the same bus "
                                 "(can_interface:=virtual)", read_only=True)
    hand: str = setting("right", "right or left; must match what the hand reports", read_only=True)
    control_rate_hz: float = setting(_d.control_rate_hz, "PD loop rate [Hz]", bounds=(50.0, 1000.0), read_only=True)
    realtime_priority: int = setting(0, "SCHED_FIFO priority of the PD thread (0 = normal); needs rtprio permission",
                                     read_only=True)
    publish_rate_hz: float = setting(100.0, "joint_states rate [Hz]", bounds=(1.0, 333.0), read_only=True)
    diagnostics_rate_hz: float = setting(1.0, "/diagnostics rate [Hz]", bounds=(0.1, 10.0), read_only=True)
    torque_limit: tuple = setting(_d.torque_limit, "torque caps [Nm], 16 values", read_only=True)
    pwm_limit: tuple = setting(_d.pwm_limit, "PWM caps, 16 values (pwm = torque x 1200)", read_only=True)
    encoder_direction: tuple = setting(_d.encoder_direction,
                                       "per-joint encoder sign (+1/-1); V4 (calibrated): all +1", read_only=True)
    encoder_offset: tuple = setting(_d.encoder_offset, "per-joint encoder offset [rad] added after scaling; V4: all 0",
                                    read_only=True)
    motor_direction: tuple = setting(_d.motor_direction, "per-joint PWM sign (+1/-1); V4: all +1", read_only=True)
    max_joint_velocity: float = setting(_d.max_joint_velocity, "set-point slew limit [rad/s]", bounds=(0.01, 20.0),
                                        read_only=True)
    encoder_timeout_s: float = setting(_d.encoder_timeout_s, "no encoder data for this long -> zero torques, error",
                                       bounds=(0.005, 1.0), read_only=True)
    command_timeout_s: float = setting(_d.command_timeout_s,
                                       "no command for this long -> flagged stale (the last target is held)",
                                       bounds=(0.01, 3600.0), read_only=True)
    kp: tuple = setting(_d.kp, "proportional gains [Nm/rad], 16 values (live)", bounds=GAIN_BOUNDS["kp"])
    kd: tuple = setting(_d.kd, "derivative gains [Nm s/rad], 16 values (live)", bounds=GAIN_BOUNDS["kd"])
    goal_tolerance: float = setting(0.03, "default MoveJoints tolerance [rad]", bounds=TOLERANCE_RANGE)
    goal_time_limit_s: float = setting(5.0, "default MoveJoints time limit [s]", bounds=TIME_LIMIT_RANGE)
    max_command_age_s: float = max_command_age_setting()
    temperature_warn_c: float = setting(60.0, "diagnostics warn above this motor temperature", bounds=(20.0, 120.0))
    stop_mode: str = setting("hold", "what ~/stop does: hold (keep the current position) or torque_off (zero "
                             "torques until the next command)", choices=STOP_MODES)

    def problem(self) -> str | None:
        for name in ("kp", "kd"):
            if len(getattr(self, name)) != NUM_JOINTS:
                return f"{name}: expected {NUM_JOINTS} values, got {len(getattr(self, name))}"
        try:
            self.controller_config()
        except ValueError as e:
            return str(e)
        return None

    def controller_config(self) -> ControllerConfig:
        """The PD controller's configuration, checked (ValueError with the reason)."""
        names = {f.name for f in dataclasses.fields(ControllerConfig)} & {f.name for f in dataclasses.fields(self)}
        return ControllerConfig(**{name: getattr(self, name) for name in names}).validated()
