"""The goal hand's orientation read from the goal image: the flange's rotation in the camera frame.

A reach that lands the wrist but turns the hand the wrong way cannot grasp (README, "Where the reach
ends"): the latent cost and the six read keypoints leave the hand's turn open (its fingers' joints can
mimic a turn). This reader regresses the flange orientation directly from the goal-hand reader's
frozen backbone features (dexwm_planner.goal_hand: same encoder, same feature normalisation) with a
small head: a per-cell projection, then a two-layer MLP to a 6D rotation (two columns made orthonormal,
Zhou et al. 2019), trained with the squared Frobenius distance to the true rotation.

Training frames: the robot posed across the workspace in the simulated scene (objects on the table,
arm by inverse kinematics to a random palm position and orientation around palm-down, random finger
postures between open and closed), rendered by the head camera; their rotations come from forward
kinematics. A lab trains it on its own recordings' frames and joint states in the same way
(``train`` takes frames and rotations). It reads the image only, like the goal-hand reader.

``python -m dexwm_ros.goal_readouts orientation --out models/goal_orientation_sim.pt`` renders, trains and
reports the error on held-out rendered frames and on the scripted pick-and-place goal states of the
tuning seeds (hand open above the object, and at the pre-grasp pose).
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch

from .goal_hand import GoalHandReader, reader_path
from .objective import rotation_angle

log = logging.getLogger(__name__)
FORMAT = "dexwm-goal-orientation"
READER_NAME = "goal_orientation_sim.pt"   # the shipped one, beside the goal-hand reader in models/
# Training scenes: pick-and-place episode layouts at seeds no evaluation uses (the official seeds
# start at 1,000,000, the tuning seeds at 1,000,500, the exploration data's are below 1,000,000).
SCENE_SEED = 3_000_000


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> rotation matrices (..., 3, 3): the two 3-vectors made orthonormal (Gram-Schmidt),
    the third their cross product; the columns are the rotation's axes."""
    a, b = x[..., :3], x[..., 3:]
    c1 = torch.nn.functional.normalize(a, dim=-1)
    c2 = torch.nn.functional.normalize(b - (c1 * b).sum(-1, keepdim=True) * c1, dim=-1)
    c3 = torch.cross(c1, c2, dim=-1)
    return torch.stack([c1, c2, c3], dim=-1)


def angle_deg(r_a: np.ndarray, r_b: np.ndarray) -> np.ndarray:
    """Angle [deg] of the relative rotation between rotation matrices (..., 3, 3)."""
    return np.degrees(rotation_angle(r_a, r_b))


class OrientationHead(torch.nn.Module):
    def __init__(self, cells: int, dim: int, reduced: int = 16, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.config = {"cells": cells, "dim": dim, "reduced": reduced, "hidden": hidden, "dropout": dropout}
        self.reduce = torch.nn.Linear(dim, reduced)
        self.mlp = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(cells * reduced, hidden),
                                       torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised backbone tokens (B, P, D) -> rotations (B, 3, 3)."""
        reduced = torch.relu(self.reduce(features))
        return rotation_from_6d(self.mlp(reduced.flatten(1)))


class GoalOrientationReader:
    """Goal image -> the flange's rotation (3, 3) in the camera frame, through the goal-hand reader's
    backbone (``reader``) and a trained OrientationHead."""

    def __init__(self, reader: GoalHandReader, head: OrientationHead, meta: dict | None = None):
        self.reader, self.head, self.meta = reader, head, dict(meta or {})

    def features(self, images) -> torch.Tensor:
        with torch.no_grad():
            return (self.reader.features(images).float() - self.reader.feature_mean) / self.reader.feature_std

    @torch.no_grad()
    def read(self, images) -> np.ndarray:
        """uint8 RGB (B, H, W, 3) -> rotations (B, 3, 3), camera frame (x right, y down, z forward)."""
        self.head.eval()
        return self.head(self.features(images)).cpu().numpy().astype(np.float64)

    def save(self, path: str) -> None:
        torch.save({"format": FORMAT, "head": self.head.state_dict(), "head_config": self.head.config,
                    "meta": self.meta}, path)

    @classmethod
    def load(cls, path: str, reader: GoalHandReader) -> "GoalOrientationReader":
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"{path} is not a goal-orientation reader ({FORMAT})")
        head = OrientationHead(**blob["head_config"])
        head.load_state_dict(blob["head"])
        return cls(reader, head, blob.get("meta"))


def goal_rotation_reading(world_to_camera: np.ndarray, path: str | None = None,
                          hand_reader: str = "") -> Callable[[np.ndarray], np.ndarray]:
    """The planner's goal orientation: goal image (H, W, 3) -> the goal flange's rotation (3, 3) in
    the robot base frame (the orientation term's frame), through the camera calibration
    ``world_to_camera``. ``path``: default the shipped reader; ``hand_reader``: the goal-hand reader
    setting whose backbone it reads (as goal_hand.reader_path)."""
    from .world_model import shipped_model_file

    hand_path = reader_path(hand_reader)
    if hand_path is None:
        raise ValueError("the goal orientation reader reads through the goal-hand reader's backbone (not 'head')")
    reader = GoalOrientationReader.load(path or shipped_model_file(READER_NAME), GoalHandReader.load(hand_path))
    camera_to_world = np.asarray(world_to_camera, dtype=np.float64)[:3, :3].T
    return lambda image: camera_to_world @ reader.read(np.asarray(image)[None])[0]


# --------------------------------------------------------------------------------------- training
def encode(reader: GoalHandReader, images: np.ndarray, batch: int = 32, progress: bool = True) -> torch.Tensor:
    from tqdm import tqdm

    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(images), batch), desc="backbone", disable=not progress):
            out.append((reader.features(images[i:i + batch]).float() - reader.feature_mean) / reader.feature_std)
    return torch.cat(out)


def train(features: torch.Tensor, rotations: np.ndarray, steps: int = 3000, batch: int = 64, lr: float = 1e-3,
          seed: int = 0, progress: bool = True, weight_decay: float = 1e-2,
          head_config: dict | None = None) -> OrientationHead:
    """Fit an OrientationHead to normalised backbone features (N, P, D) and rotations (N, 3, 3)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    head = OrientationHead(features.shape[1], features.shape[2], **(head_config or {}))
    target = torch.as_tensor(rotations, dtype=torch.float32)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="orientation head", disable=not progress)
    head.train()
    for _ in bar:
        idx = torch.randint(len(features), (batch,), generator=gen)
        loss = ((head(features[idx]) - target[idx]) ** 2).sum((-2, -1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return head.eval()
