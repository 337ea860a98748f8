"""Goal-hand reader: the hand keypoints (wrist + 5 fingertips, model-image pixels) read from a goal
IMAGE with the frozen backbone's full features, for the planner's planned-hand term.

Why a second reader beside the world model's heatmap head: the head reads keypoints from the
64-dim PCA latents the predictor works in, which keep the arm's large-variance directions and
little of the fingers. Read from the goal image it is off by a median 18 px (wrist 9 px) and
misjudges the hand's size (an open hand 0.88x, a closed one about 1.8x), which the planned-hand
term turns into a depth error. This reader sees the same image through the backbone's unprojected
final and stride-16 features (7x7 cells of 1280 + 4 x 112 values) and only has to read one frame,
not predicted latents. Same heatmap head class, same pixel frame (the world model's model view,
checked at load), trained on recorded frames with their forward-kinematics keypoints
(``dexwm-train-goal-hand``). It reads only the image: nothing about the
simulation, so a lab trains it on its own recordings exactly like the world model.

Checkpoint: ``format`` "dexwm-goal-hand", ``encoder`` (EncoderConfig dict), ``head``
(HandHeadConfig dict), ``feature_mean`` / ``feature_std`` (per backbone channel), ``head_state``,
``meta`` (data, steps, validation errors).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
import time
from typing import Callable

import numpy as np
import torch

from .encoders import EncoderConfig, FrozenEncoder
from .hand_head import HandHead, HandHeadConfig
from .keypoints import HEATMAP_KEYPOINTS, RIGHT_HAND_HEATMAPS

log = logging.getLogger(__name__)
FORMAT = "dexwm-goal-hand"
READER_NAME = "goal_hand_sim.pt"   # the shipped reader, beside the shipped world model in models/
HEAD = "head"                      # the reader setting that means: the world model's heatmap head


def reader_path(setting: str) -> str | None:
    """The goal-hand reader a setting names: "" = the shipped one, "head" = none (the world model's
    heatmap head reads the goal's hand), anything else = a checkpoint path."""
    if setting == HEAD:
        return None
    if setting:
        return setting
    from .world_model import shipped_model_file

    return shipped_model_file(READER_NAME)


class GoalHandReader(torch.nn.Module):
    def __init__(self, encoder: EncoderConfig, head: HandHeadConfig,
                 feature_mean: torch.Tensor | None = None, feature_std: torch.Tensor | None = None):
        super().__init__()
        self.encoder = FrozenEncoder(encoder)
        if head.latent_dim != self.encoder.backbone_dim or head.grid != tuple(self.encoder.grid):
            raise ValueError(f"head expects {head.latent_dim} features on a {head.grid} grid, the encoder "
                             f"gives {self.encoder.backbone_dim} on {tuple(self.encoder.grid)}")
        self.head = HandHead(head)
        dim = self.encoder.backbone_dim
        self.register_buffer("feature_mean", torch.zeros(dim) if feature_mean is None else feature_mean.float())
        self.register_buffer("feature_std", torch.ones(dim) if feature_std is None else feature_std.float())
        self.meta: dict = {}

    @property
    def image_size(self) -> tuple:
        return tuple(self.encoder.image_size)

    def features(self, images) -> torch.Tensor:
        """uint8 RGB (B, H, W, 3) -> backbone tokens (B, P, D), before normalisation."""
        return self.encoder(images)

    def heatmaps(self, features: torch.Tensor) -> torch.Tensor:
        return self.head((features.float() - self.feature_mean) / self.feature_std)

    @torch.no_grad()
    def read(self, images) -> np.ndarray:
        """uint8 RGB (B, H, W, 3), any size the encoder's view accepts -> right-hand wrist + 5
        fingertips (B, 6, 2), (u, v) in model-image pixels."""
        self.eval()
        kp = self.head.keypoints_2d(self.heatmaps(self.features(images)))
        return kp[:, RIGHT_HAND_HEATMAPS].cpu().numpy().astype(np.float64)

    def check_view(self, image_size, crop=None):
        """Raise if this reader's model view is not the world model's (its pixels would not be
        the planner's)."""
        if tuple(image_size) != self.image_size or crop != self.encoder.config.crop:
            raise ValueError(f"goal-hand reader sees a {self.image_size} view (crop {self.encoder.config.crop}), "
                             f"the world model {tuple(image_size)} (crop {crop}): they must be the same")

    def save(self, path: str):
        tmp = f"{path}.{os.getpid()}.tmp"
        torch.save({"format": FORMAT, "encoder": dataclasses.asdict(self.encoder.config),
                    "head": dataclasses.asdict(self.head.cfg), "feature_mean": self.feature_mean.cpu(),
                    "feature_std": self.feature_std.cpu(), "head_state": self.head.state_dict(),
                    "meta": self.meta}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "GoalHandReader":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"goal-hand reader not found: {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)   # tensors and plain values only
        except Exception as exc:
            raise ValueError(f"{path} is not a goal-hand reader checkpoint: {exc}") from exc
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise ValueError(f"{path} is not a goal-hand reader checkpoint (format {FORMAT!r})")
        reader = cls(EncoderConfig(**ckpt["encoder"]), HandHeadConfig(**ckpt["head"]),
                     ckpt["feature_mean"], ckpt["feature_std"])
        reader.head.load_state_dict(ckpt["head_state"], strict=True)
        reader.meta = dict(ckpt.get("meta", {}))
        return reader.eval()


@functools.lru_cache(maxsize=4)
def _load_cached(path: str) -> GoalHandReader:
    return GoalHandReader.load(path)


def goal_hand_reading(setting: str, model) -> Callable[[np.ndarray], np.ndarray] | None:
    """The planner's goal-hand reader a setting names (``reader_path``; one load per file per
    process), checked against the world model's view: goal image (H, W, 3) uint8 -> wrist +
    fingertips (6, 2); None for "head". The shipped reader ("") where the world model sees
    another view: None, with a warning (a named reader there is an error)."""
    path = reader_path(setting)
    if path is None:
        return None
    reader = _load_cached(os.path.abspath(path))
    encoder = getattr(model, "encoder", None)
    try:
        reader.check_view(getattr(model, "image_size", reader.image_size),
                          getattr(getattr(encoder, "config", None), "crop", None))
    except ValueError as exc:
        if setting:
            raise
        log.warning("%s; the world model's heatmap head reads the goal's hand instead "
                    "(train a reader for this view with dexwm-train-goal-hand)", exc)
        return None
    return lambda image: reader.read(np.asarray(image)[None])[0]


# ------------------------------------------------------------------------------------------------
# training on recorded episodes (dexwm-collect's format: frames + keypoints_2d + keypoints_visible)
def _episode_paths(root: str) -> list[str]:
    return sorted(os.path.join(root, n) for n in os.listdir(root) if n.startswith("episode_") and n.endswith(".h5"))


def load_frames(paths, every: int, image_size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ``every``-th frame of each episode with its 12 heatmap keypoints and visibility."""
    import h5py
    frames, uv, visible = [], [], []
    for p in paths:
        with h5py.File(p, "r") as f:
            if tuple(f["frames"].shape[1:3]) != tuple(image_size):
                raise ValueError(f"{p}: frames are {f['frames'].shape[1:3]}, the reader's view {image_size}")
            frames.append(f["frames"][::every])
            uv.append(f["keypoints_2d"][::every][:, HEATMAP_KEYPOINTS])
            visible.append(f["keypoints_visible"][::every][:, HEATMAP_KEYPOINTS])
    return np.concatenate(frames), np.concatenate(uv).astype(np.float32), np.concatenate(visible)


def encode_all(reader: GoalHandReader, frames: np.ndarray, batch: int = 32, label: str = "") -> torch.Tensor:
    from tqdm import tqdm
    out = []
    for i in tqdm(range(0, len(frames), batch), desc=f"backbone {label}", unit="batch", mininterval=10):
        out.append(reader.features(frames[i:i + batch]).half())
    return torch.cat(out)


def pixel_errors(reader: GoalHandReader, features: torch.Tensor, uv: np.ndarray, visible: np.ndarray):
    """Right-hand errors [px] of the visible keypoints: (all six, wrist)."""
    with torch.no_grad():
        pred = torch.cat([reader.head.keypoints_2d(reader.heatmaps(features[i:i + 256]))
                          for i in range(0, len(features), 256)]).numpy()
    err = np.linalg.norm(pred[:, :6] - np.asarray(uv)[:, :6], axis=-1)
    vis = np.asarray(visible)[:, :6]
    return err[vis], err[:, 0][vis[:, 0]]


def train(data: str, out: str, every: int = 5, val_episodes: int = 100, steps: int = 3000, batch: int = 64,
          lr: float = 1e-3, width: int = 192, depth: int = 2, threads: int = 1, seed: int = 0,
          limit: int | None = None, image_size=(224, 224)) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    paths = _episode_paths(data)[:limit] if limit else _episode_paths(data)
    if len(paths) <= val_episodes:
        raise ValueError(f"{data}: {len(paths)} episodes, need more than the {val_episodes} held out")
    enc = EncoderConfig(image_size=tuple(image_size), proj_dim=None, features="final+s16")
    probe = FrozenEncoder(enc)
    head = HandHeadConfig(latent_dim=probe.backbone_dim, grid=tuple(probe.grid), image_size=tuple(image_size),
                          width=width, depth=depth, cells_per_patch=8)
    reader = GoalHandReader(enc, head)
    # Held-out episodes are whole episodes (frames of one episode are near copies).
    splits = {"train": paths[:-val_episodes], "val": paths[-val_episodes:]}
    cache = {}
    for name, ps in splits.items():
        frames, uv, vis = load_frames(ps, every, image_size)
        log.info("%s: %d frames from %d episodes", name, len(frames), len(ps))
        cache[name] = (encode_all(reader, frames, label=name), torch.from_numpy(uv), torch.from_numpy(vis))
    feats, uv, vis = cache["train"]
    # Per-channel statistics in float64 over chunks (the float32 copy of all tokens would be GBs).
    total = torch.zeros(feats.shape[-1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for chunk in feats.split(1024):
        flat = chunk.double().reshape(-1, feats.shape[-1])
        total += flat.sum(0)
        total_sq += (flat ** 2).sum(0)
    count = feats.shape[0] * feats.shape[1]
    mean = total / count
    reader.feature_mean.copy_(mean.float())
    reader.feature_std.copy_((total_sq / count - mean ** 2).clamp_min(1e-6).sqrt().float().clamp_min(1e-3))
    opt = torch.optim.AdamW(reader.head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    reader.head.train()
    t0, n = time.time(), len(feats)
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch,))
        loss = reader.head.loss(reader.heatmaps(feats[idx]), uv[idx], vis[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps:
            reader.head.eval()
            errs, wrist = pixel_errors(reader, *cache["val"])
            reader.head.train()
            log.info("step %d/%d loss %.2e  val median %.1f px (wrist %.1f px)  %.0f s",
                     step, steps, loss.item(), np.median(errs), np.median(wrist), time.time() - t0)
    reader.head.eval()
    errs, wrist = pixel_errors(reader, *cache["val"])
    reader.meta = {"data": data, "episodes": {k: len(v) for k, v in splits.items()}, "every": every,
                   "steps": steps, "batch": batch, "lr": lr, "seed": seed,
                   "val_median_px": float(np.median(errs)), "val_wrist_median_px": float(np.median(wrist)),
                   "val_p90_px": float(np.percentile(errs, 90)), "minutes": (time.time() - t0) / 60}
    reader.save(out)
    return reader.meta


def main(argv=None):
    t = argparse.ArgumentParser(prog="dexwm-train-goal-hand",
                                description="Train the goal-hand reader on recorded episodes (dexwm-collect's "
                                            "format), holding out the last --val-episodes episodes.")
    t.add_argument("--data", default="data/explore", help="folder of dexwm-collect episodes")
    t.add_argument("--out", required=True)
    t.add_argument("--every", type=int, default=5, help="keep every N-th frame")
    t.add_argument("--val-episodes", type=int, default=100)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--width", type=int, default=192)
    t.add_argument("--depth", type=int, default=2)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, default=None, help="use only the first N episodes")
    args = t.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    meta = train(args.data, args.out, every=args.every, val_episodes=args.val_episodes, steps=args.steps,
                 batch=args.batch, lr=args.lr, width=args.width, depth=args.depth, threads=args.threads,
                 seed=args.seed, limit=args.limit)
    print({k: (float(f"{v:.3g}") if isinstance(v, float) else v) for k, v in meta.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
