"""The planner node's parameters as one ROS-free dataclass, and the planning configurations they
make (CEM, objective, MPC, stop rule, session). :class:`dexwm_ros.node_parameters.NodeParameters`
declares them on the node; a refused combination (elites over samples, a bad sequence name) is
refused when it is set, not at the next goal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dexwm_planner.cem import PRESETS, CEMConfig
from dexwm_planner.mpc import EXECUTE, MPCConfig
from dexwm_planner.objective import ObjectiveConfig
from dexwm_planner.reference_motion import REFERENCES
from dexwm_planner.session import CommandLimits, SessionConfig
from dexwm_planner.stop_rule import StopRule
from dexwm_robot.tasks import TASK_KINDS
from dexwm_ros.goal_store import DEFAULT_SEQUENCE, check_sequence_name
from dexwm_ros.node_settings import setting

# Executed MPC steps per goal: the max_steps parameter's range, and the bound of a request's value.
MAX_STEPS_RANGE = (1, 10000)


@dataclass(frozen=True)
class PlannerSettings:
    task: str = setting("grasp", "task for bookkeeping and task-specific cost terms", choices=TASK_KINDS)
    checkpoint: str = setting("", "world-model checkpoint (.pt); empty = the shipped simulation model",
                              read_only=True)
    goal_hand_reader: str = setting("", "goal-hand reader (dexwm-train-goal-hand) that reads the goal image's hand "
                                    "for the planned-hand term: empty = the shipped one (the world model's head "
                                    "where its view differs), 'head' = the world model's heatmap head, else a "
                                    "checkpoint path", read_only=True)
    goal_image: str = setting("", "goal image file (PNG/JPEG) loaded at start and when changed")
    preset: str = setting("cpu", "CEM preset: cpu (96/8/4, under 1 s per replan on 2 cores) or paper (512/10/10)",
                          choices=tuple(PRESETS))
    samples: int = setting(0, "CEM samples per iteration; 0 = preset", bounds=(0, 8192))
    elites: int = setting(0, "CEM elites; 0 = preset", bounds=(0, 1024))
    iterations: int = setting(0, "CEM iterations; 0 = preset", bounds=(0, 100))
    horizon: int = setting(0, "planning horizon (world-model steps); 0 = preset", bounds=(0, 16))
    std_arm: float = setting(0.3, "initial CEM std of the arm joints [rad]", bounds=(1e-4, 2.0))
    std_hand: float = setting(0.1, "initial CEM std of the hand joints [rad]", bounds=(1e-4, 2.0))
    max_step_arm: float = setting(0.25, "per-step cap on an arm joint change [rad]", bounds=(1e-3, 0.5))
    max_step_hand: float = setting(0.5, "per-step cap on a hand joint change [rad]", bounds=(1e-3, 1.0))
    keypoint_weight: float = setting(1e-3, "weight of the 2D right-hand keypoint term", bounds=(0.0, 1.0))
    orientation_weight: float = setting(0.0, "weight of the end-effector orientation term, grasp task only; 0 off",
                                        bounds=(0.0, 100.0))
    goal_orientation_weight: float = setting(0.0, "weight of the orientation term referenced to the goal hand's "
                                             "orientation read from the goal image (goal_orientation_reader), every "
                                             "goal but a grasp [1/rad^2]; 0 off", bounds=(0.0, 100.0))
    goal_orientation_reader: str = setting("", "reads the goal hand's orientation from the goal image "
                                           "(dexwm_planner.goal_orientation): empty = the shipped one, else a "
                                           "checkpoint path", read_only=True)
    goal_wrist_depth_weight: float = setting(0.0, "weight of the goal wrist term: the planned wrist against the goal "
                                             "hand's wrist read in 3D from the goal's aligned depth image (goals "
                                             "captured or sent with one; dexwm_planner.goal_depth) [1/m^2]; 0 off",
                                             bounds=(0.0, 1000.0))
    grasp_reference: str = setting("none", "motion the grasp task's CEM search follows: grasp = down from where the hand "
                                   "is when the goal starts until it meets something (read from the joints), close "
                                   "to the power grasp, up 12 cm (dexwm_planner.reference_motion); none = the "
                                   "current joints",
                                   choices=REFERENCES)
    execute: str = setting("best", "what each replan executes: best = the lowest-cost plan the CEM scored, mean = "
                           "its final sampling mean (the elites' average, as the paper's planner)", choices=EXECUTE)
    hand_pixel_weight: float = setting(1e-3, "weight of the planned-hand keypoint term: the plan's hand (forward "
                                       "kinematics into the camera) against the hand the heatmap head sees in the "
                                       "goal image [1/px^2]; 0 off", bounds=(0.0, 1.0))
    context_frames: int = setting(8, "observed frames kept as world-model context", bounds=(1, 32))
    seed: int = setting(0, "CEM random seed (per Execute goal)", bounds=(0, 2**31 - 1))
    max_steps: int = setting(40, "executed MPC steps per goal when the request gives 0", bounds=MAX_STEPS_RANGE)
    # 0 = the world model's frame step: the executed step is the step the model learned (a ramp to
    # the target over one frame step, the next frame one frame step later).
    move_duration_s: float = setting(0.0, "time given to the drivers to reach each step's targets [s]; 0 = the "
                                     "world model's frame step", bounds=(0.0, 30.0))
    move_timeout_s: float = setting(0.0, "MoveJoints time limit per step, then the next frame is planned from "
                                    "wherever the joints are [s]; 0 = move_duration_s", bounds=(0.0, 60.0))
    goal_tolerance: float = setting(0.05, "MoveJoints per-joint tolerance [rad]", bounds=(1e-4, 1.0))
    stale_timeout_s: float = setting(1.0, "camera/joint data older than this pause planning [s]",
                                     bounds=(0.05, 60.0))
    stale_abort_s: float = setting(10.0, "abort a goal when inputs stay stale this long [s]", bounds=(0.1, 600.0))
    # The stop rule (dexwm_planner.stop_rule): the planner decides itself when it is done, from the
    # camera, as on hardware; nothing reads the simulator's success.
    done_cost: float = setting(-1.0, "stop as reached when the latent distance to the goal drops below this; -1 = "
                               "the threshold fitted for the checkpoint and task (<checkpoint>.stop.json, 0 when "
                               "there is none); 0 off", bounds=(-1.0, 1e3))
    # Off by default: the latent distance jumps from frame to frame, so its best value comes early
    # and a plateau stop cut reaches short (README, "Stop rule").
    plateau_steps: int = setting(0, "stop when the best latent distance did not improve (by plateau_rel) over "
                                 "this many executed steps; 0 off", bounds=(0, 1000))
    plateau_rel: float = setting(0.02, "relative improvement that counts as progress for plateau_steps",
                                 bounds=(0.0, 0.99))
    capture_sequence: str = setting(DEFAULT_SEQUENCE, "goal sequence that RViz's 2D Pose Estimate tool "
                                    "(/initialpose) appends the current frame to")
    image_topic: str = setting("/camera/camera/color/image_raw", "colour image topic", read_only=True)
    depth_topic: str = setting("/camera/camera/aligned_depth_to_color/image_raw", "depth image aligned with the "
                               "colour frames (16UC1 mm or 32FC1 m), captured with each goal; empty = none",
                               read_only=True)
    arm_state_topic: str = setting("/franka/joint_states", "arm JointState topic", read_only=True)
    hand_state_topic: str = setting("/allegro/joint_states", "hand JointState topic", read_only=True)
    frame_id: str = setting("world", "frame of the keypoint markers (robot base / world)")
    world_to_camera: tuple = setting((), "camera extrinsic world->camera, 16 values row-major (OpenCV axes); "
                                     "empty = sim head camera", read_only=True, any_type=True)

    def problem(self) -> str | None:
        """What is wrong with this combination of values (None: nothing)."""
        samples = self.samples or PRESETS[self.preset].samples
        elites = self.elites or PRESETS[self.preset].elites
        if elites > samples:
            return f"elites ({elites}) must not exceed samples ({samples})"
        try:
            check_sequence_name(self.capture_sequence)
        except ValueError as e:
            return str(e)
        w2c = self.world_to_camera
        if w2c and (len(w2c) != 16 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in w2c)):
            return f"world_to_camera needs 16 finite numbers (row-major 4x4), got {len(w2c)} values"
        return None

    def camera_extrinsic(self) -> np.ndarray | None:
        """world->camera (4, 4) from world_to_camera, None when it is empty."""
        return np.asarray(self.world_to_camera, dtype=np.float64).reshape(4, 4) if self.world_to_camera else None

    def cem(self) -> CEMConfig:
        cem = PRESETS[self.preset]
        changes = {k: getattr(self, k) for k in ("samples", "elites", "iterations", "horizon") if getattr(self, k) > 0}
        changes.update(std_arm=self.std_arm, std_hand=self.std_hand, max_step_arm=self.max_step_arm,
                       max_step_hand=self.max_step_hand)
        if "samples" in changes:
            changes["chunk"] = min(changes["samples"], max(cem.chunk, 1))
        return cem.with_(**changes)

    def mpc(self, task: str) -> MPCConfig:
        # The orientation term only makes sense when grasping (keep the approach orientation).
        # Other goals may turn the hand as the goal image shows it (goal_orientation_weight).
        from_goal = task != "grasp" and self.goal_orientation_weight > 0
        orientation = self.orientation_weight if task == "grasp" else self.goal_orientation_weight
        objective = ObjectiveConfig(keypoint_weight=self.keypoint_weight, orientation_weight=orientation,
                                    hand_pixel_weight=self.hand_pixel_weight,
                                    goal_wrist_weight=self.goal_wrist_depth_weight)
        return MPCConfig(cem=self.cem(), objective=objective, context_frames=self.context_frames,
                         reference=self.grasp_reference if task == "grasp" else "none", execute=self.execute,
                         orientation_reference="goal_image" if from_goal else "start")

    def stop_rule(self, max_steps: int, fitted_done_cost: float | None) -> StopRule:
        """The stop rule of a goal; done_cost -1 takes ``fitted_done_cost`` (0, off, when None)."""
        done = self.done_cost if self.done_cost >= 0 else (fitted_done_cost or 0.0)
        return StopRule(done_cost=done, plateau_steps=self.plateau_steps, plateau_rel=self.plateau_rel,
                        max_steps=int(max_steps))

    def session(self, stop_rule: StopRule, lower: np.ndarray, upper: np.ndarray, frame_step: float) -> SessionConfig:
        """A session's configuration; 0 timings are automatic (the model's frame step)."""
        duration = self.move_duration_s or frame_step
        # The caps the CEM plans under: a command over them is a planner fault, refused.
        limits = CommandLimits(lower, upper, self.cem().max_step())
        return SessionConfig(stop_rule=stop_rule, limits=limits, move_duration_s=duration,
                             move_time_limit_s=max(self.move_timeout_s, duration), goal_tolerance=self.goal_tolerance,
                             stale_timeout_s=self.stale_timeout_s, stale_abort_s=self.stale_abort_s)

