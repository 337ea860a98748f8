"""Object tracking read-out: how far each object moved since the last context frame, read from the
latent around where it stood and from the hand in both latents.

The other read-outs ask the latent for absolute places: the position probe (``object_probe``) each
object's xyz, which needs its identity (three objects of random colours, a few pixels wide); the
occupancy probe which grid cells hold an object. Neither beat "nothing moves" even on the *actual*
future latents, so neither could say whether the predictor carries objects along
(models/README.md). This one asks what "nothing moves" itself starts from, the positions recorded
at the last context frame, plus what the latent says happened there:

* inputs, per object: the 3 x 3 cells of the latent grid around the cell its recorded position
  projects into (through the episode's camera, as ``occupancy_probe.episode_cells``), in the last
  context latent and in the latent read (predicted, actual, or the context latent itself for a
  frozen world), and their difference; the right hand's six keypoints decoded from both latents
  by the checkpoint's own hand head (``DexWM.keypoints_2d``); the recorded position, whether the
  object is in the grid, its cell's row and column; the number of model steps between the two;
* output: the object's displacement (xyz), added to its recorded position;
* model: a small MLP (two hidden layers of 256, dropout), fitted with a smooth L1 loss on pairs of
  frames 1 .. ``MAX_STEPS`` model steps apart in the checkpoint's training episodes (the split
  ``dexwm-train`` made), moved objects (> 1 cm) weighted 5x since most objects stand still.

It reads only latents and what is known at the last context frame, never a later position. A
carried object moves with the hand, so much of what it reads is the hand; the frozen-world control
(the context latent read as the future) tells how much comes from the context alone.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .keypoints import RIGHT_HAND_HEATMAPS
from .object_probe import MOVED_M, probe_episodes
from .paths import recorded_path

SUFFIX = ".track.pt"
MAX_STEPS = 7            # model steps the read-out is fitted for (4.2 s at the 0.6 s step)
OUT_SCALE = 10.0         # the network outputs decimetres: targets of order one
MOVED_WEIGHT = 5.0
_NEIGHBOURS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]


def probe_file(checkpoint: str | Path) -> Path:
    """Where a checkpoint's tracking read-out lives: beside it, ``<name>.track.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIX)


def neighbourhood(latents, cells, grid) -> np.ndarray:
    """(N, K, 9 * d): the latents (N, P, d) of the 3 x 3 cells around each object's cell (N, K),
    zeros outside the grid and for objects out of view (cell -1)."""
    latents = np.asarray(latents, dtype=np.float32)
    cells = np.asarray(cells)
    gh, gw = grid
    n, k = cells.shape
    out = np.zeros((n, k, len(_NEIGHBOURS), latents.shape[-1]), np.float32)
    row, col = cells // gw, cells % gw
    frames = np.arange(n)[:, None]
    for i, (dr, dc) in enumerate(_NEIGHBOURS):
        r, c = row + dr, col + dc
        ok = (cells >= 0) & (r >= 0) & (r < gh) & (c >= 0) & (c < gw)
        out[:, :, i] = np.where(ok[..., None], latents[frames, np.where(ok, r * gw + c, 0)], 0.0)
    return out.reshape(n, k, -1)


def features(context_latents, latents, context_hand, hand, context_positions, context_cells, steps,
             grid, image_size) -> np.ndarray:
    """(N, K, F) inputs for N pairs: latents (N, P, d) at the last context frame and at the frame
    read, the right hand's keypoints (N, 6, 2) decoded from each (model pixels), the objects'
    recorded positions (N, K, 3) and cells (N, K) at the context frame, model steps apart (N,)."""
    cells = np.asarray(context_cells)
    n, k = cells.shape
    before, after = neighbourhood(context_latents, cells, grid), neighbourhood(latents, cells, grid)
    h0 = np.asarray(context_hand, np.float32).reshape(n, -1) / image_size
    h1 = np.asarray(hand, np.float32).reshape(n, -1) / image_size
    hands = np.repeat(np.concatenate([h0, h1, h1 - h0], -1)[:, None], k, 1)
    seen = cells >= 0
    place = np.stack([seen, np.where(seen, cells // grid[1], -1) / max(grid[0] - 1, 1),
                      np.where(seen, cells % grid[1], -1) / max(grid[1] - 1, 1)], -1).astype(np.float32)
    gap = np.repeat((np.asarray(steps, np.float32) / MAX_STEPS)[:, None, None], k, 1)
    return np.concatenate([before, after, after - before, hands, np.asarray(context_positions, np.float32),
                           place, gap], -1)


class TrackReadout(torch.nn.Module):
    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.2):
        super().__init__()
        self.dim, self.hidden, self.dropout = dim, hidden, dropout
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 3))

    def forward(self, x):
        return self.net(x)


class TrackProbe:
    """A fitted tracking read-out with its input standardisation and the grid it reads."""

    def __init__(self, readout: TrackReadout, mean, scale, grid, image_size: int, meta: dict | None = None):
        self.readout = readout.eval()
        self.mean, self.scale = torch.as_tensor(mean).float(), torch.as_tensor(scale).float()
        self.grid, self.image_size = tuple(int(v) for v in grid), int(image_size)
        self.meta = dict(meta or {})

    @property
    def step_seconds(self) -> float | None:
        """The model step the read-out was fitted for (the checkpoint's frame step)."""
        return self.meta.get("step_seconds")

    @torch.no_grad()
    def displacement(self, x) -> np.ndarray:
        """(N, K, F) features -> (N, K, 3) displacements [m]."""
        x = torch.as_tensor(np.asarray(x, np.float32))
        if x.shape[-1] != len(self.mean):
            raise ValueError(f"track read-out fitted on {len(self.mean)} features, got {x.shape[-1]}")
        return (self.readout((x - self.mean) / self.scale) / OUT_SCALE).numpy()

    def read(self, latents, hand, context_latent, context_hand, context_positions, context_cells) -> np.ndarray:
        """Object positions (H, K, 3) at the frames of ``latents`` (H, P, d) with the right hand's
        keypoints ``hand`` (H, 6, 2), 1..H model steps after a context frame whose latent (P, d),
        hand keypoints (6, 2), recorded object positions (K, 3) and cells (K,) are given. Steps
        beyond ``MAX_STEPS`` are read as ``MAX_STEPS``."""
        h = len(latents)
        rep = lambda a: np.repeat(np.asarray(a)[None], h, 0)  # noqa: E731
        steps = np.minimum(np.arange(1, h + 1), MAX_STEPS)
        x = features(rep(context_latent), latents, rep(context_hand), hand, rep(context_positions),
                     rep(context_cells), steps, self.grid, self.image_size)
        return np.asarray(context_positions, np.float64)[None] + self.displacement(x)

    def save(self, path: str | Path):
        tmp = f"{path}.tmp{os.getpid()}"
        r = self.readout
        torch.save({"state": r.state_dict(), "dim": r.dim, "hidden": r.hidden, "dropout": r.dropout,
                    "mean": self.mean, "scale": self.scale, "grid": list(self.grid), "image_size": self.image_size,
                    "meta": json.dumps(self.meta)}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "TrackProbe":
        z = torch.load(path, map_location="cpu", weights_only=True)
        readout = TrackReadout(int(z["dim"]), int(z["hidden"]), float(z["dropout"]))
        readout.load_state_dict(z["state"])
        return cls(readout, z["mean"], z["scale"], z["grid"], int(z["image_size"]), json.loads(z["meta"]))


def episode_pairs(latents, hand, positions, cells, stride: int, grid, image_size, max_steps: int = MAX_STEPS):
    """(features (M, K, F), displacements (M, K, 3)) of an episode's frame pairs 1 .. max_steps
    model steps (``stride`` recorded frames each) apart: latents (N, P, d), hand (N, 6, 2),
    positions (N, K, 3), cells (N, K) per recorded frame."""
    n = len(latents)
    xs, ys = [], []
    for k in range(1, max_steps + 1):
        gap = k * stride
        if gap >= n:
            break
        t0, t1 = np.arange(n - gap), np.arange(gap, n)
        xs.append(features(latents[t0], latents[t1], hand[t0], hand[t1], positions[t0], cells[t0],
                           np.full(len(t0), k), grid, image_size))
        ys.append(positions[t1] - positions[t0])
    if not xs:
        return None
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32)


def fit(x, y, epochs: int = 8, seed: int = 0, hidden: int = 256, batch: int = 256, lr: float = 1e-3,
        weight_decay: float = 1e-2) -> tuple:
    """Fit the MLP on features (M, F) and displacements (M, 3) [m]. Returns (readout, mean, scale)."""
    torch.manual_seed(seed)
    x = torch.as_tensor(np.asarray(x, np.float32))
    y = torch.as_tensor(np.asarray(y, np.float32)) * OUT_SCALE
    mean, scale = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / scale
    weight = 1.0 + (MOVED_WEIGHT - 1.0) * (y.norm(dim=-1) > MOVED_M * OUT_SCALE).float()
    readout = TrackReadout(x.shape[1], hidden)
    opt = torch.optim.AdamW(readout.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        readout.train()
        for rows in torch.randperm(len(x)).split(batch):
            loss = torch.nn.functional.smooth_l1_loss(readout(x[rows]), y[rows], reduction="none", beta=0.1)
            loss = (loss.sum(-1) * weight[rows]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return readout.eval(), mean, scale


def model_stride(wm, episode) -> int:
    """Recorded frames per model step (the checkpoint's frame step over the episode's)."""
    return max(1, int(round(wm.config.frame_dt / episode.dt)))


def readout_errors(probe: TrackProbe, predicted, actual, hand_predicted, hand_actual, positions,
                   last_latent, last_hand, last_positions, last_cells) -> dict:
    """Per horizon step and object (H, K), in metres: the read-out on the predicted latents, on the
    actual latents (its floor) and on the last context latent taken as every future frame (a frozen
    world: what the context alone gives it), and "nothing moves"; plus which objects moved (> 1 cm).
    Hands are the right hand's keypoints decoded from each latent. Where the gain on predicted
    latents comes from: ``predicted_hand_only`` reads the context latent with the predicted hand,
    ``predicted_latent_only`` the predicted latent with the context's hand."""
    positions = np.asarray(positions, dtype=np.float64)
    h = len(positions)

    def error(latents, hand):
        return np.linalg.norm(probe.read(latents, hand, last_latent, last_hand, last_positions, last_cells)
                              - positions, axis=-1)

    frozen = np.repeat(np.asarray(last_latent)[None], h, 0)
    frozen_hand = np.repeat(np.asarray(last_hand)[None], h, 0)
    nothing_moves = np.linalg.norm(np.asarray(last_positions, np.float64)[None] - positions, axis=-1)
    return {"predicted": error(predicted, hand_predicted), "true_latents": error(actual, hand_actual),
            "context_latent": error(frozen, frozen_hand), "predicted_hand_only": error(frozen, hand_predicted),
            "predicted_latent_only": error(predicted, frozen_hand),
            "nothing_moves": nothing_moves, "moved": nothing_moves > MOVED_M}


def fit_for_checkpoint(wm, checkpoint: str, data: str, kind: str = "sim", cache_dir=None, seed: int = 0,
                       fraction: float | None = None, limit: int | None = None, epochs: int = 8) -> tuple:
    """Fit the tracking read-out of a loaded checkpoint on the training part of ``data`` (the split
    of ``object_probe.probe_split``; at most ``limit`` of those episodes). Returns (probe, held-out
    episodes); the probe's meta says what it was fitted on."""
    from .datasets import projected_latents
    from .occupancy_probe import episode_cells
    train, held_out = probe_episodes(wm, data, kind, seed, fraction)
    image_size = wm.encoder.image_size[0]
    xs, ys, names, count = [], [], [], None
    for ep in train[:limit]:
        if ep.object_positions is None or (count is not None and ep.object_positions.shape[1] != count):
            continue
        latents = projected_latents(ep, wm.encoder, cache_dir)
        hand = wm.keypoints_2d(latents, RIGHT_HAND_HEATMAPS).numpy()
        got = episode_pairs(latents.numpy(), hand, np.asarray(ep.object_positions, np.float32),
                            episode_cells(wm.encoder, ep).numpy(), model_stride(wm, ep), wm.encoder.grid, image_size)
        if got is None:
            continue
        count = ep.object_positions.shape[1]
        xs.append(got[0].reshape(-1, got[0].shape[-1]))
        ys.append(got[1].reshape(-1, 3))
        names.append(os.path.basename(ep.name))
    if not xs:
        raise ValueError(f"no training episode of {data} records object positions over a model step")
    x, y = np.concatenate(xs), np.concatenate(ys)
    readout, mean, scale = fit(x, y, epochs, seed)
    meta = {"checkpoint": os.path.basename(str(checkpoint)), "data": recorded_path(data), "kind": kind,
            "split_seed": seed, "split_fraction": fraction, "fit_episodes": names, "fit_pairs": int(len(x)),
            "epochs": epochs, "max_steps": MAX_STEPS, "step_seconds": float(wm.config.frame_dt),
            "moved_pairs_fraction": float((np.linalg.norm(y, axis=-1) > MOVED_M).mean()),
            "held_out_episodes": [os.path.basename(e.name) for e in held_out]}
    return TrackProbe(readout, mean, scale, wm.encoder.grid, image_size, meta), held_out
