"""Goal images: read from a file or a message, brought to the camera's size or refused with the
reason (ROS-free)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

# A goal image whose aspect ratio differs from the camera's by more than this is refused: resizing
# it would distort the scene and the latent distance would compare different geometry.
MAX_ASPECT_MISMATCH = 0.05
# A goal image smaller than this (px per side), or less than half the camera's size in either
# direction, is refused: upscaling it invents the detail the latent distance is computed on.
MIN_GOAL_SIDE = 32
MIN_GOAL_FRACTION = 0.5


@dataclass(frozen=True)
class Goal:
    image: np.ndarray                 # RGB uint8 (H, W, 3), the camera's size
    joints: np.ndarray | None         # the joints it was captured at (23,), None for an image alone
    source: str                       # where it came from (logs, tests)
    phase: str = ""                   # a subgoal's search profile; empty = by its position in the sequence
    # The depth image aligned with ``image`` (H, W) float32 [m], 0 = no reading; None where none was
    # captured. It lets the planner read the goal's wrist in 3D (dexwm_planner.goal_depth).
    depth: np.ndarray | None = None

    def fitted(self, camera_hw: tuple[int, int] | None) -> "Goal":
        """This goal brought to the camera's size (its depth with it); ValueError: refused."""
        image = fit_goal_image(self.image, camera_hw)
        depth = None if self.depth is None else fit_goal_depth(self.depth, image.shape[:2])
        return replace(self, image=image, depth=depth)


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


def fit_goal_depth(depth: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """A goal's aligned depth image (uint16 [mm], as 16UC1 carries it, or float [m]) as float32 [m]
    at its colour image's size ``image_hw``: holes (0, nan, inf, negative) as 0, resized by nearest
    neighbour (averaging would invent surfaces between the hand and the table behind it);
    ValueError when it is not a 2D image of the colour image's aspect ratio."""
    import cv2

    depth = np.asarray(depth)
    if depth.ndim != 2 or min(depth.shape) < 1:
        raise ValueError(f"a goal's depth image must be a 2D image, got shape {depth.shape}")
    h, w = int(image_hw[0]), int(image_hw[1])
    if abs((depth.shape[1] / depth.shape[0]) / (w / h) - 1.0) > MAX_ASPECT_MISMATCH:
        raise ValueError(f"the goal's depth image {depth.shape[1]}x{depth.shape[0]} is not aligned with its "
                         f"{w}x{h} colour image (aspect ratios differ)")
    metres = depth.astype(np.float32) * (0.001 if depth.dtype == np.uint16 else 1.0)
    metres[~np.isfinite(metres) | (metres < 0)] = 0.0
    if metres.shape != (h, w):
        metres = cv2.resize(metres, (w, h), interpolation=cv2.INTER_NEAREST)
    return metres


def load_goal_file(path: str) -> np.ndarray:
    """RGB uint8 image of a PNG/JPEG file; ValueError when it is missing or not an image."""
    import cv2

    if not Path(path).is_file():
        raise ValueError(f"goal image file not found: {path}")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read {path} as an image (PNG/JPEG expected)")
    return np.ascontiguousarray(bgr[..., ::-1])


def goal_from_file(path: str, camera_hw: tuple[int, int] | None) -> Goal:
    """The goal of an image file (the goal_image parameter), at the camera's size; ValueError."""
    return Goal(fit_goal_image(load_goal_file(path), camera_hw), None, f"file {path}")
