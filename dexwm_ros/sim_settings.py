"""The sim node's parameters as one ROS-free dataclass (declared by dexwm_ros.node_parameters): the
first episode and the simulation's rates, sizes and speeds at start (read-only; later episodes come
from /sim/reset), the MoveJoints defaults of the simulated arm and hand live. The arm's step cap
has the franka driver's default and bounds, so the simulation refuses what the robot refuses."""
from __future__ import annotations

from dataclasses import dataclass

from dexwm_ros.driver_settings import TIME_LIMIT_RANGE, TOLERANCE_RANGE, max_command_age_setting
from dexwm_ros.node_settings import positive_problem, setting
from dexwm_sim.runner import RunnerConfig
from dexwm_sim.tasks import MAX_SEED, TASKS
from franka_driver.arm import SETTING_BOUNDS, FrankaConfig

# Image size bounds [px]: up to a RealSense colour stream.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = (16, 16), (640, 480)


@dataclass(frozen=True)
class SimSettings:
    task: str = setting("paper-grasp", f"episode task at start: {', '.join(TASKS)}", read_only=True)
    # any_type: a seed too large for an int64 arrives as a double, which rclpy would otherwise drop
    # in favour of the default (episode 0) without a word; settings_problem refuses it.
    seed: int = setting(0, "episode seed at start", bounds=(0, MAX_SEED), read_only=True, any_type=True)
    real_time_factor: float = setting(1.0, "simulated seconds per wall-clock second", read_only=True)
    lockstep: bool = setting(False, "simulated time advances only while a motion command is under way (the world "
                             "waits for the planner, as in an in-process evaluation)", read_only=True)
    image_rate_hz: float = setting(10.0, "camera image rate [Hz] (wall clock)", read_only=True)
    image_width: int = setting(224, "camera image width [px] (up to 640)", read_only=True)
    image_height: int = setting(224, "camera image height [px] (up to 480)", read_only=True)
    publish_depth: bool = setting(False, "also publish aligned depth (16UC1, mm)", read_only=True)
    state_rate_hz: float = setting(50.0, "joint_states rate [Hz]", read_only=True)
    arm_speed: float = setting(0.8, "joint speed of arm motions without timing [rad/s]", read_only=True)
    hand_speed: float = setting(3.0, "joint speed of hand motions without timing [rad/s]", read_only=True)
    arm_goal_tolerance: float = setting(0.01, "default move_joints tolerance of the arm [rad]", bounds=TOLERANCE_RANGE)
    hand_goal_tolerance: float = setting(0.03, "default move_joints tolerance of the hand [rad]",
                                         bounds=TOLERANCE_RANGE)
    arm_time_limit_s: float = setting(30.0, "arm move_joints time limit when the goal gives none [s]",
                                      bounds=TIME_LIMIT_RANGE)
    hand_time_limit_s: float = setting(5.0, "hand move_joints time limit when the goal gives none [s]",
                                       bounds=TIME_LIMIT_RANGE)
    max_command_age_s: float = max_command_age_setting()
    max_joint_step: float = setting(FrankaConfig().max_joint_step, "largest arm joint change per command, enforced "
                                    "as the franka driver does [rad]", bounds=SETTING_BOUNDS["max_joint_step"],
                                    read_only=True)
    frame_id: str = setting("camera_color_optical_frame", "camera frame id", read_only=True)

    def problem(self) -> str | None:
        if self.task not in TASKS:
            return f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}"
        size = (self.image_width, self.image_height)
        if not all(low <= v <= high for low, v, high in zip(MIN_IMAGE_SIZE, size, MAX_IMAGE_SIZE)):
            return (f"image size must be within {MIN_IMAGE_SIZE[0]}x{MIN_IMAGE_SIZE[1]} .. "
                    f"{MAX_IMAGE_SIZE[0]}x{MAX_IMAGE_SIZE[1]}, got {size[0]}x{size[1]}")
        return positive_problem(self, ("real_time_factor", "image_rate_hz", "state_rate_hz", "arm_speed",
                                       "hand_speed"))

    def runner_config(self) -> RunnerConfig:
        size = (self.image_width, self.image_height)
        return RunnerConfig(task=self.task, seed=self.seed, real_time_factor=self.real_time_factor,
                            image_rate_hz=self.image_rate_hz, image_size=size, render_depth=self.publish_depth,
                            state_rate_hz=self.state_rate_hz, arm_speed=self.arm_speed, hand_speed=self.hand_speed,
                            goal_size=size, lockstep=self.lockstep, arm_max_joint_step=self.max_joint_step)
