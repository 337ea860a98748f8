"""What the planner node plans with (ROS-free): the DexWM world model, the robot's kinematics and
camera extrinsic, the stop thresholds fitted for the checkpoint; it makes each goal's MPC planner and
stop rule from the node's settings (dexwm_ros.planner_settings)."""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from dexwm_planner.mpc import MPCPlanner
from dexwm_planner.stop_rule import FittedStop, StopRule, load_fitted
from dexwm_ros.planner_settings import PlannerSettings


def load_world_model(checkpoint: str):
    """The DexWM world model from a checkpoint (empty: the shipped simulation model)."""
    from dexwm_planner import world_model

    return world_model.DexWM.load(str(checkpoint or world_model.default_checkpoint()))


def load_fitted_stop(checkpoint: str, log) -> FittedStop | None:
    """The stop thresholds fitted for the checkpoint (``dexwm-eval --fit-stop``), or None."""
    from dexwm_planner import world_model

    path = checkpoint or world_model.default_checkpoint()
    try:
        fitted = load_fitted(path)
    except (OSError, ValueError) as e:
        log.error(f"stop thresholds of {path} unusable ({e}): stopping only at plateau or budget")
        return None
    if fitted is None:
        log.warning(f"no fitted stop thresholds beside {path} (dexwm-eval --fit-stop): "
                    "stopping only at plateau or budget unless done_cost is set")
    return fitted


class _LazyHandPixels:
    """The planned-hand projection of one goal, made at its first use from the camera then."""

    def __init__(self, planning: "WorldModelPlanning", camera: Callable[[], tuple]):
        self.planning, self.camera, self._fn = planning, camera, None

    def __call__(self, q):
        if self._fn is None:
            hw, K = self.camera()
            if hw is None:
                raise RuntimeError("no camera frame yet: cannot project the planned hand")
            if K is None:
                self.planning.log.warning("no usable camera_info: the planned hand is projected with the simulated "
                                          "camera's intrinsics")
            self._fn = self.planning.hand_pixels_fn(hw, K)
        return self._fn(q)


class _LazyGoalWrist:
    """The goal wrist from a goal's depth image (dexwm_planner.goal_depth), made for the colour
    frames' size and intrinsics when the first goal with depth is set (ValueError where it cannot be
    read: the goal is refused as a bad goal, the robot holding)."""

    def __init__(self, planning: "WorldModelPlanning", camera: Callable[[], tuple]):
        self.planning, self.camera, self._fn = planning, camera, None

    def __call__(self, image, depth):
        if self._fn is None:
            self._fn = self.planning.goal_wrist_from_depth(*self.camera())
        return self._fn(image, depth)


class WorldModelPlanning:
    def __init__(self, settings: PlannerSettings, model=None, kinematics=None, log=None):
        """``model``: a world model object (tests), else the settings' checkpoint is loaded; a model
        object without a checkpoint has no file, so no fitted thresholds."""
        from dexwm_planner.actions import allegro_actions, wrist_position_projection
        from dexwm_robot.camera import HeadCamera
        from dexwm_robot.kinematics import RobotKinematics

        log = log if log is not None else logging.getLogger("dexwm_ros.planner")
        self.kin = kinematics if kinematics is not None else RobotKinematics.from_description()
        self.lower = np.asarray(self.kin.lower, dtype=np.float64)
        self.upper = np.asarray(self.kin.upper, dtype=np.float64)
        extrinsic = settings.camera_extrinsic()
        self.world_to_camera = extrinsic if extrinsic is not None else HeadCamera().world_to_camera
        self.model = model if model is not None else load_world_model(settings.checkpoint)
        self.fitted_stop = (None if model is not None and not settings.checkpoint
                            else load_fitted_stop(settings.checkpoint, log))
        self.image_size = tuple(getattr(self.model, "image_size", (224, 224)))
        from dexwm_planner.goal_hand import goal_hand_reading

        self.goal_hand_reader = goal_hand_reading(settings.goal_hand_reader, self.model)
        self._goal_hand_reader_setting = settings.goal_hand_reader
        self._goal_orientation_reader_path = settings.goal_orientation_reader
        self._goal_rotation_reader = None     # loaded when a goal first asks for it
        self.frame_step = float(getattr(self.model, "frame_step", 0.2))
        self.log = log
        kin, w2c = self.kin, self.world_to_camera
        self._actions = lambda q_seq: allegro_actions(q_seq, w2c, kinematics=kin)
        self._rotation = lambda q: kin.ee_pose(q)[1]
        self._wrist = wrist_position_projection(w2c, kin)

    def hand_pixels_fn(self, camera_hw: tuple[int, int], camera_matrix: np.ndarray | None = None):
        """joints (..., 23) -> the right hand's wrist + fingertip pixels (..., 6, 2) in the model image,
        for colour frames of size ``camera_hw`` with intrinsics ``camera_matrix`` (their camera_info;
        None: the simulated head camera's)."""
        from dexwm_planner.actions import hand_pixels_projection

        return hand_pixels_projection(self.world_to_camera, self.image_size, camera_hw, camera_matrix,
                                      kinematics=self.kin)

    def goal_wrist_from_depth(self, camera_hw: tuple[int, int] | None, camera_matrix: np.ndarray | None):
        """goal image, its aligned depth [m] -> the goal hand's wrist (3,) in the camera frame, for
        colour frames of size ``camera_hw`` with intrinsics ``camera_matrix`` (None: the simulated
        head camera's at that size). ValueError when it cannot be read (no goal-hand reader, no frame)."""
        from dexwm_planner.goal_depth import GoalWristFromDepth, load_surface_offset
        from dexwm_robot.camera import HeadCamera
        from dexwm_robot.view import raw_to_view_pixels

        if self.goal_hand_reader is None:
            raise ValueError("reading the goal wrist from depth needs a goal-hand reader (goal_hand_reader is 'head' "
                             "or does not match the world model's view)")
        if camera_hw is None:
            raise ValueError("no camera frame yet: the goal wrist's pixels cannot be mapped")
        h, w = camera_hw
        if camera_matrix is None:
            self.log.warning("no usable camera_info: the goal wrist is back-projected with the simulated camera's "
                             "intrinsics")
            camera_matrix = HeadCamera().intrinsics(w, h)
        encoder = getattr(self.model, "encoder", None)
        if hasattr(encoder, "raw_to_model_pixels"):
            to_model = lambda uv: encoder.raw_to_model_pixels(uv, camera_hw)  # noqa: E731
        else:
            to_model = lambda uv: raw_to_view_pixels(uv, camera_hw, self.image_size)  # noqa: E731
        return GoalWristFromDepth.for_camera(self.goal_hand_reader, to_model, camera_matrix, load_surface_offset())

    def goal_rotation_reader(self):
        """The goal image's hand orientation in the robot base frame (dexwm_planner.goal_orientation),
        loaded once; ValueError when it cannot be."""
        if self._goal_rotation_reader is None:
            from dexwm_planner.goal_orientation import goal_rotation_reading

            self._goal_rotation_reader = goal_rotation_reading(self.world_to_camera,
                                                               self._goal_orientation_reader_path or None,
                                                               self._goal_hand_reader_setting)
        return self._goal_rotation_reader

    def planner(self, settings: PlannerSettings, task: str, seed: int | None = None,
                camera: Callable[[], tuple] | None = None) -> MPCPlanner:
        """The MPC planner of a goal. ``camera()``: the colour frames' (height, width) and intrinsics
        (camera_info, or None), asked when the planned-hand term first projects, which is after the
        first frame was observed (a goal may be accepted before any frame arrived); None: frames of
        the simulated camera at the model's image size."""
        from dexwm_planner.reference_motion import reference_motion

        camera = camera if camera is not None else (lambda: (tuple(self.image_size), None))
        config = settings.mpc(task)
        return MPCPlanner(self.model, self._actions, self.lower, self.upper, config,
                          rotation_fn=self._rotation, seed=settings.seed if seed is None else seed,
                          hand_pixels_fn=_LazyHandPixels(self, camera), goal_hand_reader=self.goal_hand_reader,
                          reference_fn=reference_motion("grasp", self.kin), wrist_fn=self._wrist,
                          goal_wrist_from_depth=(_LazyGoalWrist(self, camera)
                                                 if config.objective.goal_wrist_weight > 0 else None),
                          goal_rotation_reader=(self.goal_rotation_reader()
                                                if config.orientation_reference == "goal_image" else None))

    def fitted_done_cost(self, settings: PlannerSettings):
        """Per subgoal kind, the fitted threshold (a done_cost parameter >= 0 applies to every subgoal
        instead: None)."""
        return self.fitted_stop.for_kind if settings.done_cost < 0 and self.fitted_stop is not None else None

    def stop_rule(self, settings: PlannerSettings, task: str, max_steps: int) -> StopRule:
        fitted = self.fitted_stop.for_kind(task) if self.fitted_stop is not None else None
        return settings.stop_rule(max_steps, fitted)
