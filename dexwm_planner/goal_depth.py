"""The goal hand's wrist in 3D from the goal image and its aligned depth image.

The goal-hand reader (dexwm_planner.goal_hand) finds the goal's wrist pixel; the depth image says how
far the nearest surface around it is; back-projecting through the camera's intrinsics gives a point on
the visible back of the hand. The wrist keypoint sits inside the hand, behind that surface: a constant
``surface_offset_m`` along the optical axis, fitted on frames whose wrist is known from forward
kinematics (``fit_surface_offset``; ``python -m dexwm_ros.goal_readouts depth`` fits it on the simulation's
tuning seeds). The result feeds the planner's goal wrist term (ObjectiveConfig.goal_wrist_weight), in
the camera frame the term's planned wrist uses (x right, y down, z forward).

A RealSense gives the depth image aligned to the colour frame; the simulation renders it. Nothing here
reads a simulator's state: the reader sees the image, the depth image is a sensor's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Half the side of the square of depth pixels around the read wrist pixel whose nearest surface is
# taken: the reader lands about 2 px from the true wrist pixel (224 px image), so a 5 x 5 window holds
# the hand even where the pixel falls just off its edge onto the table.
WINDOW_HALF = 2

FIT_NAME = "goal_wrist_depth.json"     # the shipped fit, beside the shipped goal-hand reader in models/


@dataclass(frozen=True)
class GoalWristFromDepth:
    """Goal image + aligned depth image -> the goal's wrist (3,) [m], camera frame.

    ``read_hand``: image -> wrist + fingertips (6, 2) in the image's pixels (the goal-hand reader,
    whose pixels are the model image's: ``for_camera`` maps them to a camera's frames);
    ``camera_matrix``: the intrinsics of those images (the depth image must have their size)."""

    read_hand: Callable[[np.ndarray], np.ndarray]
    camera_matrix: np.ndarray
    surface_offset_m: float
    window_half: int = WINDOW_HALF

    @classmethod
    def for_camera(cls, read_hand: Callable[[np.ndarray], np.ndarray],
                   raw_to_model: Callable[[np.ndarray], np.ndarray], camera_matrix: np.ndarray,
                   surface_offset_m: float) -> "GoalWristFromDepth":
        """The reader for goals at a camera's own size (a robot's colour frames and their aligned
        depth, intrinsics ``camera_matrix`` from camera_info): ``read_hand`` answers in model-image
        pixels, ``raw_to_model`` maps the camera's pixels there (the encoder's view: a resize and a
        crop, an axis-aligned scale and shift, inverted here). The depth window covers the same part
        of the scene as at the model's size."""
        origin = np.asarray(raw_to_model(np.zeros(2)), dtype=np.float64)
        scale = np.asarray(raw_to_model(np.ones(2)), dtype=np.float64) - origin
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ValueError(f"the model view must be a positive scale of the camera's pixels, got {scale}")
        in_camera = lambda image: (np.asarray(read_hand(image), dtype=np.float64) - origin) / scale  # noqa: E731
        return cls(in_camera, camera_matrix, surface_offset_m,
                   window_half=max(WINDOW_HALF, int(round(WINDOW_HALF / float(scale.min())))))

    def __call__(self, image: np.ndarray, depth: np.ndarray) -> np.ndarray:
        image, depth = np.asarray(image), np.asarray(depth, dtype=np.float64)
        if depth.shape != image.shape[:2]:
            raise ValueError(f"the goal's depth image {depth.shape} must be aligned with its colour image "
                             f"{image.shape[:2]}")
        wrist_pixel = np.asarray(self.read_hand(image), dtype=np.float64)[0]
        surface = nearest_surface(depth, wrist_pixel, self.window_half)
        return back_project(wrist_pixel, surface + self.surface_offset_m, self.camera_matrix)


def nearest_surface(depth: np.ndarray, pixel: np.ndarray, half: int = WINDOW_HALF) -> float:
    """The smallest valid depth [m] in the (2 half + 1)^2 window around ``pixel`` (u, v); ValueError
    when the pixel is outside the image or the window holds no valid depth (0, nan and inf are holes,
    as a RealSense reports them)."""
    h, w = depth.shape
    u, v = (int(round(c)) for c in pixel)
    if not (0 <= u < w and 0 <= v < h):
        raise ValueError(f"the goal's wrist pixel ({pixel[0]:.1f}, {pixel[1]:.1f}) is outside the {w}x{h} depth image")
    window = depth[max(v - half, 0):v + half + 1, max(u - half, 0):u + half + 1]
    valid = window[np.isfinite(window) & (window > 0)]
    if valid.size == 0:
        raise ValueError(f"no valid depth around the goal's wrist pixel ({u}, {v})")
    return float(valid.min())


def back_project(pixel: np.ndarray, z: float, camera_matrix: np.ndarray) -> np.ndarray:
    """The camera-frame point (3,) at depth ``z`` (along the optical axis) seen at ``pixel`` (u, v)."""
    ray = np.linalg.solve(np.asarray(camera_matrix, dtype=np.float64), np.r_[pixel[0], pixel[1], 1.0])
    return z * ray / ray[2]


def fit_surface_offset(wrist_pixels: np.ndarray, depths: list, wrists_camera: np.ndarray) -> dict:
    """The wrist's depth behind the nearest surface around its read pixel: median over frames of
    (true wrist depth - nearest surface), with its spread. ``wrist_pixels`` (N, 2) as the reader reads
    them, ``depths`` N aligned depth images, ``wrists_camera`` (N, 3) the true wrists (camera frame)."""
    gaps = np.array([w[2] - nearest_surface(d, p) for p, d, w in zip(wrist_pixels, depths, wrists_camera)])
    if gaps.size == 0:
        raise ValueError("no frames to fit the surface offset on")
    return {"surface_offset_m": float(np.median(gaps)), "spread_m": float(np.std(gaps)), "frames": int(gaps.size)}


def load_surface_offset(path: str | None = None) -> float:
    """The fitted offset stored by ``python -m dexwm_ros.goal_readouts depth --out`` (default: the shipped
    fit); ValueError otherwise."""
    if path is None:
        from .world_model import shipped_model_file

        path = shipped_model_file(FIT_NAME)
    try:
        with open(path) as f:
            offset = float(json.load(f)["surface_offset_m"])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"no fitted wrist surface offset in {path}: {exc}") from None
    if not (np.isfinite(offset) and 0.0 <= offset <= 0.2):
        raise ValueError(f"the wrist surface offset in {path} must lie in [0, 0.2] m, got {offset}")
    return offset
