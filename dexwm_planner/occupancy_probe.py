"""Identity-free object read-out: which cells of the latent's grid hold an object, whichever object.

The position probe (``object_probe``) reads each object's own xyz, which asks a latent for the
object's identity as well as its place. The simulation's three objects differ only in shape (their
colours are drawn anew per scene) and are a few pixels wide, so that probe fails even on raw pixels
(models/README.md, "Read-outs that see many layouts"). This read-out asks only where objects are:

* cells: the encoder's patch grid over the zoom view (the workspace, magnified) when the encoder
  has one, else over the model view; an object's cell is where its centre projects through the
  episode's own camera (so any camera, including ``--camera`` views, labels correctly);
* detector: a per-cell prior plus one small convolutional net over the grid of latents (1 x 1,
  3 x 3, 1 x 1: the same detector at every cell), a logit per cell, fitted with a binary
  cross-entropy on the checkpoint's training frames (the split ``dexwm-train`` made);
* positions: each cell's table (x, y) is the mean of the fitted objects it held, so the K best
  cells of a frame (K = the scene's object count) are K points on the table;
* score: each object in view, its distance (table x, y) to the nearest of those K points. "Nothing
  moves" is scored the same way, identity-free: the distance to the nearest of the K positions
  recorded at the last context frame. The detector on the last context latent (what a read-out of
  a frozen world gives) and on the actual future latents (the read-out's floor) stand beside it.

The open-loop evaluation (``eval_wm``) reads the probe from ``<checkpoint stem>.occupancy.pt``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .object_probe import MOVED_M
from .paths import recorded_path

SUFFIX = ".occupancy.pt"


def probe_file(checkpoint: str | Path) -> Path:
    """Where a checkpoint's occupancy probe lives: beside it, ``<name>.occupancy.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIX)


def grid_box(encoder, raw_hw) -> tuple:
    """Raw-pixel box (x0, y0, x1, y1) that the encoder's patch grid covers: the zoom view when it
    has one, else the model view."""
    box = encoder.crop_box(raw_hw, encoder.config.zoom)   # zoom None: the crop, when the encoder has one
    if box is not None:
        return box
    scale, xoff = encoder.crop_geometry(raw_hw)   # the standard view: resize to height, centre crop
    H, W = encoder.image_size
    return (xoff / scale, 0.0, (xoff + W) / scale, H / scale)


def grid_cells(encoder, uv, visible, raw_hw) -> torch.Tensor:
    """(..., K) grid cell (row * width + col) into which each projected object centre ``uv``
    (raw pixels, (..., K, 2)) falls, -1 where it is not visible or outside the grid."""
    uv = np.asarray(uv, dtype=np.float64)
    x0, y0, x1, y1 = grid_box(encoder, raw_hw)
    gh, gw = encoder.grid
    col = np.floor((uv[..., 0] + 0.5 - x0) / (x1 - x0) * gw).astype(int)
    row = np.floor((uv[..., 1] + 0.5 - y0) / (y1 - y0) * gh).astype(int)
    inside = np.asarray(visible, bool) & (col >= 0) & (col < gw) & (row >= 0) & (row < gh)
    return torch.as_tensor(np.where(inside, row * gw + col, -1))


def episode_cells(encoder, episode) -> torch.Tensor:
    """(N, K) grid cells of an episode's objects, projected through its own camera per frame."""
    from .keypoints import project_points, transform_points
    world_to_cam = np.linalg.inv(episode.cam_to_world)
    cam = transform_points(world_to_cam, np.asarray(episode.object_positions, dtype=np.float64))
    uv, in_front = project_points(cam, episode.intrinsics)
    return grid_cells(encoder, uv, in_front, episode.image_hw)


def occupancy(cells: torch.Tensor, patches: int) -> torch.Tensor:
    """(N, P) 1.0 where some object's centre lies in the cell."""
    target = torch.zeros(len(cells), patches + 1)
    target.scatter_(1, cells.clamp(min=-1) % (patches + 1), 1.0)   # -1 lands in the spare last column
    return target[:, :patches]


def cell_centres(cells: torch.Tensor, positions: torch.Tensor, patches: int) -> torch.Tensor:
    """(P, 2) table (x, y) of each cell: the mean of the fitted objects it held (unheld cells: the
    mean of all)."""
    flat_cells, flat_xy = cells.reshape(-1), positions[..., :2].reshape(-1, 2)
    inside = flat_cells >= 0
    centres = flat_xy[inside].mean(0).repeat(patches, 1)
    for c in range(patches):
        held = flat_cells == c
        if held.any():
            centres[c] = flat_xy[held].mean(0)
    return centres


class OccupancyReadout(torch.nn.Module):
    """Logit per grid cell: a per-cell prior plus (unless ``prior_only``) one small convolutional
    detector run over the grid of patch features."""

    def __init__(self, dim: int, grid: tuple[int, int], prior_only: bool, hidden: int = 64):
        super().__init__()
        self.grid, self.hidden = tuple(grid), hidden
        self.prior = torch.nn.Parameter(torch.zeros(grid[0] * grid[1]))
        self.net = None if prior_only else torch.nn.Sequential(
            torch.nn.Conv2d(dim, hidden, 1), torch.nn.GELU(), torch.nn.Conv2d(hidden, hidden, 3, padding=1),
            torch.nn.GELU(), torch.nn.Conv2d(hidden, 1, 1))

    def forward(self, tokens):
        if self.net is None:
            return self.prior.expand(len(tokens), -1)
        x = tokens.transpose(1, 2).reshape(len(tokens), -1, *self.grid)
        return self.net(x).reshape(len(tokens), -1) + self.prior


def train_adam(model, latents, loss_of, iterations: int, batch: int, lr: float, weight_decay: float,
               eps: float = 0.0):
    """Adam on ``loss_of(model(standardised latents[rows]), rows)`` over random batches. Returns the
    input standardisation (mean, scale per feature) the model was fitted under."""
    mean, scale = latents.mean((0, 1)), latents.std((0, 1)) + eps
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    x = (latents - mean) / scale
    for _ in range(iterations):
        rows = torch.randint(0, len(x), (batch,))
        loss = loss_of(model(x[rows]), rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mean, scale


class OccupancyProbe:
    """A fitted detector with its input standardisation and cell positions."""

    def __init__(self, readout: OccupancyReadout, mean, scale, centres, meta: dict | None = None):
        self.readout = readout.eval()
        self.mean, self.scale = torch.as_tensor(mean).float(), torch.as_tensor(scale).float()
        self.centres = torch.as_tensor(centres).float()
        self.meta = dict(meta or {})

    @property
    def patches(self) -> int:
        return len(self.centres)

    @torch.no_grad()
    def logits(self, latents) -> torch.Tensor:
        """(N, P, d) latents -> (N, P) cell logits."""
        latents = torch.as_tensor(np.asarray(latents, dtype=np.float32))
        if latents.shape[1] != self.patches or latents.shape[2] != len(self.mean):
            raise ValueError(f"occupancy probe fitted on latents of shape {(self.patches, len(self.mean))}, "
                             f"got {tuple(latents.shape[1:])}")
        return self.readout((latents - self.mean) / self.scale)

    def points(self, latents, count: int) -> torch.Tensor:
        """(N, count, 2) table (x, y) of the ``count`` most likely occupied cells of each frame."""
        return self.centres[self.logits(latents).topk(count, dim=1).indices]

    def save(self, path: str | Path):
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save({"state": self.readout.state_dict(), "grid": list(self.readout.grid),
                    "dim": len(self.mean), "prior_only": self.readout.net is None, "hidden": self.readout.hidden,
                    "mean": self.mean, "scale": self.scale, "centres": self.centres,
                    "meta": json.dumps(self.meta)}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "OccupancyProbe":
        z = torch.load(path, map_location="cpu", weights_only=True)
        readout = OccupancyReadout(int(z["dim"]), tuple(z["grid"]), bool(z["prior_only"]), int(z["hidden"]))
        readout.load_state_dict(z["state"])
        return cls(readout, z["mean"], z["scale"], z["centres"], json.loads(z["meta"]))


def fit(latents, cells, positions, grid, iterations: int = 2000, seed: int = 0,
        prior_only: bool = False, hidden: int = 64) -> OccupancyProbe:
    """Fit a detector (``hidden`` channels) on frames: ``latents`` (N, P, d), ``cells`` (N, K)
    from ``grid_cells``, ``positions`` (N, K, 3) for the cells' table positions."""
    latents = torch.as_tensor(latents).float()
    cells = torch.as_tensor(cells)
    positions = torch.as_tensor(positions).float()
    patches = grid[0] * grid[1]
    if latents.shape[1] != patches:
        raise ValueError(f"latents have {latents.shape[1]} patches, the grid {grid} has {patches}")
    if not bool((cells >= 0).any()):
        raise ValueError("no object lies inside the grid in any fitted frame")
    torch.manual_seed(seed)
    target = occupancy(cells, patches)
    model = OccupancyReadout(latents.shape[2], grid, prior_only, hidden)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    mean, scale = train_adam(model, latents, lambda out, rows: loss_fn(out, target[rows]), iterations,
                             batch=128, lr=1e-3, weight_decay=1e-4, eps=1e-6)
    meta = {"iterations": iterations, "hidden": hidden, "seed": seed, "fit_frames": len(latents),
            "objects_in_view_fraction": float((cells >= 0).float().mean())}
    return OccupancyProbe(model, mean, scale, cell_centres(cells, positions, patches), meta)


def nearest_distance(points, positions) -> np.ndarray:
    """(..., K) distance [m] of each object's table (x, y) in ``positions`` (..., K, 3) to the
    nearest of ``points`` (..., M, 2)."""
    points = np.asarray(points, dtype=np.float64)
    xy = np.asarray(positions, dtype=np.float64)[..., :2]
    return np.linalg.norm(xy[..., :, None, :] - points[..., None, :, :], axis=-1).min(-1)


def readout_errors(probe: OccupancyProbe, predicted, actual, positions, cells, last_latent,
                   last_positions) -> dict:
    """Per horizon step and object (H, K), in metres, each object's distance to the nearest of K
    read points: the detector on the predicted latents, on the actual latents (its floor) and on the
    last context latent (a frozen world read the same way), and "nothing moves" (the K positions
    recorded at the last context frame); plus which objects moved (> 1 cm since then) and which are
    in the grid (only those count: an object outside the view cannot be read)."""
    positions = np.asarray(positions, dtype=np.float64)
    k = positions.shape[1]
    last_positions = np.asarray(last_positions, dtype=np.float64)
    frozen = np.repeat(probe.points(np.asarray(last_latent)[None], k).numpy(), len(positions), 0)
    still = np.broadcast_to(last_positions[None, :, :2], (len(positions), k, 2))
    return {"predicted": nearest_distance(probe.points(predicted, k).numpy(), positions),
            "true_latents": nearest_distance(probe.points(actual, k).numpy(), positions),
            "context_latent": nearest_distance(frozen, positions),
            "nothing_moves": nearest_distance(still, positions),
            "moved": np.linalg.norm(positions - last_positions[None], axis=-1) > MOVED_M,
            "in_view": np.asarray(cells) >= 0}


def fit_for_checkpoint(wm, checkpoint: str, data: str, kind: str = "sim", cache_dir=None, seed: int = 0,
                       fraction: float | None = None, limit: int | None = None,
                       iterations: int = 2000) -> tuple:
    """Fit the occupancy probe of a loaded checkpoint on the training part of ``data`` (the split
    of ``object_probe.probe_split``; at most ``limit`` of those episodes). Returns (probe,
    held-out episodes); the probe's meta says what it was fitted on."""
    from .datasets import projected_latents
    from .object_probe import probe_episodes
    train, held_out = probe_episodes(wm, data, kind, seed, fraction)
    latents, cells, positions, names = [], [], [], []
    for ep in train[:limit]:
        if ep.object_positions is None or (positions and ep.object_positions.shape[1] != positions[0].shape[1]):
            continue
        latents.append(projected_latents(ep, wm.encoder, cache_dir))
        cells.append(episode_cells(wm.encoder, ep))
        positions.append(torch.as_tensor(np.asarray(ep.object_positions), dtype=torch.float32))
        names.append(os.path.basename(ep.name))
    if not latents:
        raise ValueError(f"no training episode of {data} records object positions")
    probe = fit(torch.cat(latents), torch.cat(cells), torch.cat(positions), wm.encoder.grid, iterations, seed)
    probe.meta.update(checkpoint=os.path.basename(str(checkpoint)), data=recorded_path(data), kind=kind,
                      split_seed=seed, split_fraction=fraction, fit_episodes=names,
                      held_out_episodes=[os.path.basename(e.name) for e in held_out])
    return probe, held_out
