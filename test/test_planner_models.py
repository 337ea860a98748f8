"""A small deterministic world model for planner tests: linear latent dynamics over joint angles.

Images are rendered from joints (pixels = 128 + 60 * B q), the encoder reads them back as patch
latents, and the rollout adds B * (joint change) per step, so the model is exact up to the uint8
rounding of the images. The planner is exercised against it exactly as against DexWM.
"""
from __future__ import annotations

import numpy as np
import torch

from dexwm_planner.cem import DOF

IMAGE_SIZE = (8, 8)
PATCHES, PATCH_DIM = 4, 48
SCALE = 60.0


class LinearTestModel:
    image_size = IMAGE_SIZE

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.B = rng.normal(0.0, 0.15, (IMAGE_SIZE[0] * IMAGE_SIZE[1] * 3, DOF))
        self.K = torch.as_tensor(rng.normal(0.0, 3.0, (PATCHES * PATCH_DIM, 24)), dtype=torch.float32)
        self.rollout_calls = 0

    # the "world": joints -> camera image
    def render(self, q: np.ndarray) -> np.ndarray:
        pixels = 128.0 + SCALE * (self.B @ np.asarray(q, dtype=np.float64))
        return np.clip(np.round(pixels), 0, 255).astype(np.uint8).reshape(*IMAGE_SIZE, 3)

    def encode(self, images: np.ndarray) -> torch.Tensor:
        x = (np.asarray(images, dtype=np.float32) - 128.0) / SCALE          # (B, 8, 8, 3)
        b = x.shape[0]
        patches = x.reshape(b, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, PATCHES, PATCH_DIM)
        return torch.as_tensor(np.ascontiguousarray(patches))

    def _to_latent(self, flat_pixels: torch.Tensor) -> torch.Tensor:
        lead = flat_pixels.shape[:-1]
        x = flat_pixels.reshape(*lead, 2, 4, 2, 4, 3)
        n = len(lead)
        perm = list(range(n)) + [n, n + 2, n + 1, n + 3, n + 4]
        return x.permute(*perm).reshape(*lead, PATCHES, PATCH_DIM)

    def rollout(self, context: torch.Tensor, actions: torch.Tensor, context_actions=None) -> torch.Tensor:
        self.rollout_calls += 1
        dq = actions[..., :DOF].double()                                     # (B, T, 23)
        delta = self._to_latent((dq @ torch.as_tensor(self.B).T).float())    # (B, T, P, d)
        return context[-1] + torch.cumsum(delta, dim=1)

    def keypoints_2d(self, latents: torch.Tensor, keypoints: slice | None = None) -> torch.Tensor:
        flat = latents.reshape(*latents.shape[:-2], PATCHES * PATCH_DIM).float()
        return (flat @ self.K).reshape(*latents.shape[:-2], 12, 2)[..., keypoints or slice(None), :]


def delta_actions(q_seq: np.ndarray) -> np.ndarray:
    """Joint changes as 'actions' (the first 23 of 132 dims), like FK keypoint deltas would be."""
    dq = np.diff(np.asarray(q_seq, dtype=np.float64), axis=1)
    out = np.zeros(dq.shape[:2] + (132,))
    out[..., :DOF] = dq
    return out


def test_linear_model_predicts_its_own_renders():
    model = LinearTestModel()
    rng = np.random.default_rng(1)
    q0, q1, q2 = (rng.uniform(-0.3, 0.3, DOF) for _ in range(3))
    context = model.encode(model.render(q0)[None])
    pred = model.rollout(context, torch.as_tensor(delta_actions(np.stack([q0, q1, q2])[None])))
    truth = model.encode(np.stack([model.render(q1), model.render(q2)]))
    assert pred.shape == (1, 2, PATCHES, PATCH_DIM)
    # exact up to the rounding of uint8 pixels (1/SCALE per pixel, twice)
    assert float((pred[0] - truth).abs().max()) < 2.5 / SCALE
    assert model.keypoints_2d(pred).shape == (1, 2, 12, 2)
