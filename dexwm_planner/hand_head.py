"""Hand-consistency head: 12 keypoint heatmaps (wrist + 5 fingertips, right then left hand) read
from latents, Gaussian targets from projected keypoints, a visibility-masked MSE, and 2D keypoint
read-out (argmax with sub-pixel refinement) in the model-image pixel frame.

The head is a small ViT over the P latent tokens; each token decodes an s x s block of every
heatmap (s = ``cells_per_patch``), so the heatmap is the token grid upsampled s times.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn

from .keypoints import NUM_HEATMAPS


@dataclasses.dataclass
class HandHeadConfig:
    latent_dim: int = 64
    grid: tuple = (7, 7)           # token grid (rows, cols) of the encoder
    image_size: tuple = (224, 224) # model image (H, W)
    width: int = 96
    depth: int = 1
    heads: int = 4
    cells_per_patch: int = 8       # heatmap cells per token side: 7x7 tokens -> 56x56 maps
    sigma: float = 2.0             # Gaussian target sigma in heatmap pixels (paper: 2 px)

    def __post_init__(self):
        self.grid = tuple(int(v) for v in self.grid)
        self.image_size = tuple(int(v) for v in self.image_size)

    @property
    def heatmap_size(self):
        return self.grid[0] * self.cells_per_patch, self.grid[1] * self.cells_per_patch

    @property
    def pixels_per_cell(self):
        """Model-image pixels per heatmap cell (rows, cols)."""
        hh, hw = self.heatmap_size
        return self.image_size[0] / hh, self.image_size[1] / hw


class HandHead(nn.Module):
    def __init__(self, cfg: HandHeadConfig):
        super().__init__()
        self.cfg = cfg
        P = cfg.grid[0] * cfg.grid[1]
        self.in_proj = nn.Linear(cfg.latent_dim, cfg.width)
        self.pos = nn.Parameter(torch.randn(P, cfg.width) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 2 * cfg.width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        s = cfg.cells_per_patch
        self.out = nn.Linear(cfg.width, NUM_HEATMAPS * s * s)
        # Zero maps at start: the initial heatmap loss is small, so that with lambda = 100 the
        # head's early noise does not swamp the predictor's latent loss.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, latents, maps: slice | None = None):
        """latents (..., P, d) -> heatmaps (..., 12, Hh, Wh); with ``maps`` (a slice of the 12)
        only those maps, through only their rows of the output layer (the planner's cost reads the
        right hand's six: half the layer and half the reshaping)."""
        lead = latents.shape[:-2]
        x = self.in_proj(latents.reshape(-1, *latents.shape[-2:])) + self.pos
        x = self.norm(self.blocks(x))
        gh, gw = self.cfg.grid
        s = self.cfg.cells_per_patch
        first, stop, step = (maps or slice(None)).indices(NUM_HEATMAPS)
        if step != 1 or stop <= first:
            raise ValueError(f"maps must be a non-empty contiguous slice of the {NUM_HEATMAPS} heatmaps, got {maps}")
        count = stop - first
        rows = slice(first * s * s, stop * s * s)  # each map owns s*s consecutive output rows
        x = nn.functional.linear(x, self.out.weight[rows], self.out.bias[rows])  # (N, P, count*s*s)
        x = x.view(-1, gh, gw, count, s, s).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(*lead, count, gh * s, gw * s)

    # ---- coordinates: model-image pixels <-> heatmap cells (pixel centres align)
    def pixels_to_cells(self, uv):
        ry, rx = self.cfg.pixels_per_cell
        uv = torch.as_tensor(uv, dtype=torch.float32)
        return torch.stack([(uv[..., 0] + 0.5) / rx - 0.5, (uv[..., 1] + 0.5) / ry - 0.5], -1)

    def cells_to_pixels(self, cells):
        ry, rx = self.cfg.pixels_per_cell
        return torch.stack([(cells[..., 0] + 0.5) * rx - 0.5, (cells[..., 1] + 0.5) * ry - 0.5], -1)

    def targets(self, uv):
        """Gaussian target maps (..., 12, Hh, Wh) for keypoints uv (..., 12, 2) in model pixels."""
        hh, hw = self.cfg.heatmap_size
        c = self.pixels_to_cells(uv).to(self.pos.device)
        ys = torch.arange(hh, device=c.device, dtype=torch.float32)
        xs = torch.arange(hw, device=c.device, dtype=torch.float32)
        dx2 = (xs - c[..., 0:1]) ** 2  # (..., 12, Wh)
        dy2 = (ys - c[..., 1:2]) ** 2  # (..., 12, Hh)
        return torch.exp(-(dy2[..., :, None] + dx2[..., None, :]) / (2 * self.cfg.sigma ** 2))

    def loss(self, heatmaps, uv, visible):
        """Visibility-masked MSE. heatmaps (..., 12, Hh, Wh); uv (..., 12, 2); visible (..., 12)."""
        err = ((heatmaps.float() - self.targets(uv)) ** 2).mean((-1, -2))
        w = visible.to(err.dtype)
        return (err * w).sum() / w.sum().clamp_min(1.0)

    @torch.no_grad()
    def keypoints_2d(self, heatmaps):
        """Argmax of each map, refined to sub-cell precision by a parabola through the log values
        of the argmax and its two neighbours per axis (exact for a Gaussian peak) -> (..., 12, 2)
        (u, v) in model-image pixels."""
        hh, hw = heatmaps.shape[-2:]
        flat = heatmaps.reshape(-1, hh, hw).float()
        idx = flat.flatten(1).argmax(1)
        iy, ix = idx // hw, idx % hw
        n = torch.arange(flat.shape[0], device=flat.device)

        def offset(get, i, size):
            lo, hi = (i - 1).clamp(0, size - 1), (i + 1).clamp(0, size - 1)
            l0, lm, lp = (torch.log(get(j).clamp_min(1e-6)) for j in (i, lo, hi))
            den = lm - 2 * l0 + lp
            off = torch.where(den < -1e-6, 0.5 * (lm - lp) / den.clamp_max(-1e-6), torch.zeros_like(den))
            inside = (i > 0) & (i < size - 1)
            return torch.where(inside, off.clamp(-0.5, 0.5), torch.zeros_like(off))

        cx = ix.float() + offset(lambda j: flat[n, iy, j], ix, hw)
        cy = iy.float() + offset(lambda j: flat[n, j, ix], iy, hh)
        pix = self.cells_to_pixels(torch.stack([cx, cy], -1))
        return pix.reshape(*heatmaps.shape[:-2], 2)


def pck(pred_uv, true_uv, visible, thresholds=(2.5, 5.0, 10.0, 20.0)):
    """Fraction of visible keypoints within each pixel threshold. Returns {threshold: value}
    (NaN where nothing is visible)."""
    d = np.linalg.norm(np.asarray(pred_uv) - np.asarray(true_uv), axis=-1)
    v = np.asarray(visible, dtype=bool)
    n = v.sum()
    return {t: (float(((d <= t) & v).sum() / n) if n else float("nan")) for t in thresholds}
