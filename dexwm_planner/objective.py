"""Planning cost: how far a world-model rollout of a joint plan ends from the goal image.

Terms (DexWM paper, section on planning):

* latent distance: per predicted step t, the MSE between the predicted patch latents and the goal
  image's latents, weighted by ``decay**(T-1-t)`` (later steps count more) with the weights
  normalised to sum to one;
* hand keypoints: ``keypoint_weight`` (1e-3) times the MSE [px^2] between the 2D right-hand keypoints
  decoded by the heatmap head from the predicted latents and those decoded from the goal latent,
  weighted over time like the latent term;
* optional end-effector orientation: ``orientation_weight`` times the squared rotation angle [rad^2]
  between the planned final end-effector orientation and a reference (used for grasping, where the
  palm should keep its approach orientation);
* optional planned hand keypoints: ``hand_pixel_weight`` times the MSE [px^2] between the 2D
  right-hand keypoints of the *planned joints* (forward kinematics projected into the camera: exact
  where the world model's heatmaps are noisy) and those the heatmap head decodes from the goal image,
  weighted over time like the latent term. Not the paper's (it decodes both from latents); it uses
  nothing but the goal image and the robot's own kinematics and camera calibration;
* optional goal wrist: ``goal_wrist_weight`` times the squared distance [m^2] between the planned
  wrist (forward kinematics, camera frame) and a 3D goal wrist position, weighted over time like the
  latent term. The image terms pin the hand's position in the image but hardly its depth; a 3D
  goal wrist pins both. Only where a goal carries one (a depth reading of the goal's hand; in the
  evaluation, ``dexwm-eval --goal-wrist-oracle W`` gives the goal state's own: a PRIVILEGED ceiling).

The world model is anything that follows ``WorldModelLike`` (the real ``DexWM`` or a small test
model); joint plans become 132-d keypoint-delta actions through ``actions_fn`` (forward kinematics).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from .keypoints import RIGHT_HAND_HEATMAPS

# Heatmap head outputs 12 keypoints: wrist + 5 fingertips of the right hand, then of the left hand.
RIGHT_HAND_KEYPOINTS = RIGHT_HAND_HEATMAPS


@runtime_checkable
class WorldModelLike(Protocol):
    """What the planner needs from a world model (dexwm_planner.world_model.DexWM follows it)."""

    def encode(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images (B, H, W, 3) -> latents (B, P, d)."""

    def rollout(self, context: torch.Tensor, actions: torch.Tensor, **kwargs) -> torch.Tensor:
        """context latents (C, P, d), actions (B, T, 132) -> predicted latents (B, T, P, d).

        Optional keyword ``context_actions`` (C-1, 132): the actions between the context frames."""

    def keypoints_2d(self, latents: torch.Tensor, keypoints: slice | None = None) -> torch.Tensor:
        """latents (..., P, d) -> 2D keypoints (..., 12, 2) in pixels; with ``keypoints`` only
        that slice of the 12 (..., k, 2)."""


# joint sequences (B, T+1, 23), first row the current joints -> actions (B, T, 132)
ActionsFn = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]
# joints (B, 23) -> end-effector rotation matrices (B, 3, 3)
RotationFn = Callable[[np.ndarray], np.ndarray]
# joints (..., 23) -> right-hand wrist + 5 fingertip pixels (..., 6, 2) in the model image
HandPixelsFn = Callable[[np.ndarray], np.ndarray]
# joints (..., 23) -> right-hand wrist position (..., 3) [m] in the camera frame
WristFn = Callable[[np.ndarray], np.ndarray]
# Which of the six the planned-hand term compares (ObjectiveConfig.hand_pixel_keypoints).
# "size_free": the wrist, plus the fingertips relative to it with the planned hand's size scaled to
# the goal's (the hand's shape and orientation in the image, not its size: depth is left to the rest).
HAND_PIXEL_KEYPOINTS = {"all": slice(0, 6), "wrist": slice(0, 1), "size_free": slice(0, 6)}


@dataclass(frozen=True)
class ObjectiveConfig:
    decay: float = 0.6
    keypoint_weight: float = 1e-3
    orientation_weight: float = 0.0
    hand_pixel_weight: float = 0.0
    # Keypoints the planned-hand term compares: "all" (wrist + 5 fingertips), "wrist", or
    # "size_free" (all six, the planned hand resized to the goal's). The head reads an open goal
    # hand about 12 % too small and a closed one 1.8x too large (wrist to tips), which the six-point
    # term turns partly into a depth error; the wrist alone and "size_free" carry no size.
    hand_pixel_keypoints: str = "all"
    # Weight [1/m^2] of the 3D goal wrist term (applies to goals that carry a wrist position).
    goal_wrist_weight: float = 0.0

    def __post_init__(self):
        if not (0 < self.decay <= 1):
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")
        if self.hand_pixel_keypoints not in HAND_PIXEL_KEYPOINTS:
            raise ValueError(f"hand_pixel_keypoints must be one of {', '.join(HAND_PIXEL_KEYPOINTS)}, "
                             f"got {self.hand_pixel_keypoints!r}")
        if min(self.keypoint_weight, self.orientation_weight, self.hand_pixel_weight, self.goal_wrist_weight) < 0:
            raise ValueError("cost weights must be >= 0")

    @property
    def needs_goal_keypoints(self) -> bool:
        return self.keypoint_weight > 0 or self.hand_pixel_weight > 0


def step_weights(horizon: int, decay: float) -> np.ndarray:
    """``decay**(T-1-t)`` for t = 0..T-1, normalised to sum to one."""
    w = decay ** np.arange(horizon - 1, -1, -1, dtype=np.float64)
    return w / w.sum()


def rotation_angle(r_a: np.ndarray, r_b: np.ndarray) -> np.ndarray:
    """Angle [rad] of the relative rotation between rotation matrices (..., 3, 3)."""
    rel = np.einsum("...ji,...jk->...ik", r_a, r_b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.arccos(np.clip(cos, -1.0, 1.0))


@dataclass
class CostTerms:
    total: np.ndarray          # (N,)
    latent: np.ndarray         # (N,) weighted latent MSE
    keypoint: np.ndarray       # (N,) weighted right-hand keypoint MSE [px^2] (before the weight)
    orientation: np.ndarray    # (N,) squared final orientation error [rad^2] (before the weight)
    hand_pixels: np.ndarray    # (N,) weighted planned-hand keypoint MSE [px^2] (before the weight)
    wrist: np.ndarray | None = None  # (N,) weighted squared planned-wrist distance to the goal wrist [m^2]
    predicted_keypoints: np.ndarray | None = None  # (N, T, 12, 2)


def _sized_like(hands: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Hands (..., 6, 2) (wrist first) with their fingertips' distances from the wrist rescaled so
    that their mean equals the goal hand's (6, 2): the same shape and wrist, the goal's size."""
    size = np.linalg.norm(hands[..., 1:, :] - hands[..., :1, :], axis=-1).mean(axis=-1)[..., None, None]
    goal_size = np.linalg.norm(goal[1:] - goal[:1], axis=-1).mean()
    tips = hands[..., :1, :] + (hands[..., 1:, :] - hands[..., :1, :]) * (goal_size / np.maximum(size, 1e-6))
    return np.concatenate([hands[..., :1, :], tips], axis=-2)


class GoalObjective:
    """Scores joint plans by rolling them out in the world model and comparing with the goal."""

    def __init__(self, model: WorldModelLike, actions_fn: ActionsFn, goal_latent: torch.Tensor,
                 config: ObjectiveConfig = ObjectiveConfig(), rotation_fn: RotationFn | None = None,
                 goal_rotation: np.ndarray | None = None, hand_pixels_fn: HandPixelsFn | None = None,
                 goal_hand_pixels: np.ndarray | None = None, wrist_fn: WristFn | None = None,
                 goal_wrist: np.ndarray | None = None):
        """``goal_hand_pixels`` (6, 2): the goal's wrist + fingertips in model pixels for the
        planned-hand term, read from the goal image by a goal-hand reader; without it the term
        uses the heatmap head's reading of the goal latent. ``goal_wrist`` (3,): the goal's wrist
        position [m] in the camera frame for the goal wrist term (``wrist_fn``: the planned one)."""
        self.model = model
        self.actions_fn = actions_fn
        self.config = config
        self.goal_latent = torch.as_tensor(goal_latent).detach()
        if self.goal_latent.ndim != 2:
            raise ValueError(f"goal latent must be (P, d), got shape {tuple(self.goal_latent.shape)}")
        with torch.no_grad():
            kp = (model.keypoints_2d(self.goal_latent[None], RIGHT_HAND_KEYPOINTS)[0]
                  if config.needs_goal_keypoints else None)
        self.goal_keypoints = None if kp is None else torch.as_tensor(kp).float()
        if goal_hand_pixels is not None:
            goal_hand_pixels = np.asarray(goal_hand_pixels, dtype=np.float64)
            if goal_hand_pixels.shape != (6, 2) or not np.isfinite(goal_hand_pixels).all():
                raise ValueError(f"goal_hand_pixels must be finite (6, 2), got shape {goal_hand_pixels.shape}")
        elif self.goal_keypoints is not None:
            goal_hand_pixels = self.goal_keypoints.numpy().astype(np.float64)
        self.goal_hand_pixels = goal_hand_pixels
        if config.orientation_weight > 0 and (rotation_fn is None or goal_rotation is None):
            raise ValueError("an orientation weight needs rotation_fn and goal_rotation")
        if config.hand_pixel_weight > 0 and hand_pixels_fn is None:
            raise ValueError("a hand pixel weight needs hand_pixels_fn (kinematics and camera)")
        self.hand_pixels_fn = hand_pixels_fn
        if goal_wrist is not None:
            goal_wrist = np.asarray(goal_wrist, dtype=np.float64)
            if goal_wrist.shape != (3,) or not np.isfinite(goal_wrist).all():
                raise ValueError(f"goal_wrist must be a finite 3D point, got shape {goal_wrist.shape}")
            if config.goal_wrist_weight > 0 and wrist_fn is None:
                raise ValueError("a goal wrist weight needs wrist_fn (kinematics and camera)")
        self.goal_wrist, self.wrist_fn = goal_wrist, wrist_fn
        self.rotation_fn = rotation_fn
        self.goal_rotation = None if goal_rotation is None else np.asarray(goal_rotation, dtype=np.float64)

    def __call__(self, context: torch.Tensor, q0: np.ndarray, samples: np.ndarray,
                 context_actions: torch.Tensor | None = None) -> np.ndarray:
        return self.terms(context, q0, samples, context_actions=context_actions).total

    @torch.no_grad()
    def rollout(self, context: torch.Tensor, q0: np.ndarray, samples: np.ndarray,
                context_actions: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted latents (N, T, P, d) of joint plans (N, T, 23) starting at joints q0."""
        samples = np.asarray(samples, dtype=np.float64)
        n = samples.shape[0]
        q_seq = np.concatenate([np.broadcast_to(np.asarray(q0, dtype=np.float64), (n, 1, samples.shape[-1])),
                                samples], axis=1)
        if context_actions is None:
            return self.model.rollout(context, self._actions(q_seq))
        return self.model.rollout(context, self._actions(q_seq), context_actions=context_actions)

    def _actions(self, q_seq: np.ndarray) -> torch.Tensor:
        actions = self.actions_fn(q_seq)
        actions = actions if torch.is_tensor(actions) else torch.as_tensor(np.asarray(actions))
        return actions.to(self.goal_latent.dtype)

    @torch.no_grad()
    def terms(self, context: torch.Tensor, q0: np.ndarray, samples: np.ndarray,
              keep_keypoints: bool = False, context_actions: torch.Tensor | None = None) -> CostTerms:
        cfg = self.config
        pred = self.rollout(context, q0, samples, context_actions)      # (N, T, P, d)
        n, horizon = pred.shape[:2]
        w = torch.as_tensor(step_weights(horizon, cfg.decay), dtype=torch.float64)
        goal = self.goal_latent.to(pred.dtype)
        latent_mse = ((pred - goal) ** 2).mean(dim=(-2, -1)).double()   # (N, T)
        latent = (latent_mse * w).sum(dim=1).numpy()
        keypoint = np.zeros(n)
        kp_np = None
        if cfg.keypoint_weight > 0 or keep_keypoints:
            # Both hands only when they are kept (the final plan's display); the cost reads the right.
            kp = torch.as_tensor(self.model.keypoints_2d(pred, None if keep_keypoints else RIGHT_HAND_KEYPOINTS))
            kp = kp.float()  # (N, T, 12 or 6, 2)
            kp_np = kp.numpy() if keep_keypoints else None
            if self.goal_keypoints is not None:
                right = kp[..., RIGHT_HAND_KEYPOINTS, :] if keep_keypoints else kp
                kp_mse = ((right - self.goal_keypoints) ** 2).mean(dim=(-2, -1))
                keypoint = (kp_mse.double() * w).sum(dim=1).numpy()
        orientation = np.zeros(n)
        if cfg.orientation_weight > 0:
            final = np.asarray(samples, dtype=np.float64)[:, -1]
            rotations = np.asarray(self.rotation_fn(final), dtype=np.float64).reshape(n, 3, 3)
            orientation = rotation_angle(rotations, self.goal_rotation) ** 2
        hand_pixels = np.zeros(n)
        if cfg.hand_pixel_weight > 0:
            planned = np.asarray(self.hand_pixels_fn(np.asarray(samples, dtype=np.float64)), dtype=np.float64)
            rows = HAND_PIXEL_KEYPOINTS[cfg.hand_pixel_keypoints]
            goal_px = self.goal_hand_pixels
            if cfg.hand_pixel_keypoints == "size_free":
                planned = _sized_like(planned, goal_px)
            sq = ((planned[..., rows, :] - goal_px[rows]) ** 2).mean(axis=(-2, -1))  # (N, T)
            hand_pixels = sq @ w.numpy()
        wrist = np.zeros(n)
        if cfg.goal_wrist_weight > 0 and self.goal_wrist is not None:
            planned = np.asarray(self.wrist_fn(np.asarray(samples, dtype=np.float64)), dtype=np.float64)
            wrist = ((planned - self.goal_wrist) ** 2).sum(-1) @ w.numpy()       # (N, T) -> (N,)
        total = (latent + cfg.keypoint_weight * keypoint + cfg.orientation_weight * orientation
                 + cfg.hand_pixel_weight * hand_pixels + cfg.goal_wrist_weight * wrist)
        return CostTerms(total=total, latent=latent, keypoint=keypoint, orientation=orientation,
                         hand_pixels=hand_pixels, predicted_keypoints=kp_np, wrist=wrist)
