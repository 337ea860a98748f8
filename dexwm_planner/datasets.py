"""Episode readers (simulation, EgoDex, DROID), context windows with variable time gaps, and the
latent cache.

Every reader returns an ``Episode``: lazily decoded RGB frames plus, per frame, the 42 hand
keypoints (right, left; world frame), the camera pose and intrinsics. Windows turn these into
latents, 132-d actions (``actions.keypoint_actions``) and heatmap targets (2D keypoints in the
model-image pixel frame + visibility).

Formats read:
- simulation (``dexwm-collect``): one HDF5 per episode, see dexwm_sim/FORMAT.md: ``frames``
  (T, H, W, 3), ``keypoints_world`` (T, 42, 3) (or ``joints`` (T, 23) through forward kinematics),
  ``keypoints_visible`` (T, 42), ``camera/extrinsics`` (world -> camera), ``camera/intrinsics``,
  ``timestamps`` (or attribute ``control_hz``) for the frame period; ``object_poses`` (T, K, 7),
  when present, gives the objects' positions (read by the object probe, never by training).
- EgoDex: ``<task>/<k>.hdf5`` + ``<task>/<k>.mp4`` (30 Hz). HDF5: ``transforms/<joint>`` (N, 4, 4)
  world poses of ARKit joints (``camera``, ``rightHand``, ``rightThumbKnuckle`` ...),
  ``camera/intrinsic`` (3, 3), optional ``confidences/<joint>`` (N,).
- DROID (raw release): ``<episode>/trajectory.h5`` with ``observation/robot_state/
  cartesian_position`` (N, 6: xyz + Euler xyz) and ``gripper_position`` (N,), camera extrinsics
  ``observation/camera_extrinsics/<serial>_left`` (N, 6), and ``recordings/MP4/<serial>.mp4``;
  the serial of the external camera comes from ``metadata_*.json`` (``ext1_cam_serial``) or the
  first MP4. No hand loss for gripper data (the paper), so intrinsics are not needed.

Latent cache (the encoder is frozen, so each frame is encoded once): ``<cache_dir>/<key>.npz``
with ``tokens`` float16 (N, P, D) backbone patch tokens of the episode's kept frames (before the
PCA projection, which is fitted later), ``encoder`` (a string naming kind, image size and weights)
and ``num_frames``. ``key`` is the episode name with path separators replaced. A cache file whose
encoder string or frame count differs is recomputed.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
from typing import Callable, Optional

import h5py
import numpy as np
import torch

from .actions import keypoint_actions
from .keypoints import HEATMAP_KEYPOINTS, NUM_HAND_KEYPOINTS, NUM_KEYPOINTS, gripper_keypoints, project_points, \
    transform_points, two_hands

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Episode:
    name: str
    source: str                    # "sim" | "egodex" | "droid"
    load_frames: Callable[[], np.ndarray]  # -> (N, H, W, 3) uint8 (the kept frames)
    keypoints_world: np.ndarray    # (N, 42, 3)
    cam_to_world: np.ndarray       # (N, 4, 4), OpenCV camera axes
    intrinsics: np.ndarray         # (3, 3) of the raw frames
    image_hw: tuple                # raw frame (H, W)
    dt: float                      # seconds between kept frames
    hand_loss: bool = True         # False for gripper data
    visible: Optional[np.ndarray] = None  # (N, 42) bool, e.g. tracking confidence
    object_positions: Optional[np.ndarray] = None  # (N, K, 3) [m] of the scene's objects (simulation only)

    def __len__(self):
        return len(self.keypoints_world)

    def validate(self):
        n = len(self.keypoints_world)
        if self.keypoints_world.shape != (n, NUM_KEYPOINTS, 3):
            raise ValueError(f"keypoints must be (N, 42, 3), got {self.keypoints_world.shape}")
        if self.cam_to_world.shape != (n, 4, 4):
            raise ValueError(f"camera poses must be ({n}, 4, 4), got {self.cam_to_world.shape}")
        if not (np.all(np.isfinite(self.keypoints_world)) and np.all(np.isfinite(self.cam_to_world))):
            raise ValueError("non-finite keypoints or camera poses")
        if n < 2:
            raise ValueError(f"episode has {n} frame(s), at least 2 are needed")
        if not (self.dt > 0):
            raise ValueError(f"frame period must be positive, got {self.dt}")
        return self


def _subsample(n: int, period: float, target_dt: Optional[float]) -> np.ndarray:
    """Indices that keep one frame every ``target_dt`` seconds (all when None or finer)."""
    if not target_dt or target_dt <= period * 1.01:
        return np.arange(n)
    step = max(1, int(round(target_dt / period)))
    return np.arange(0, n, step)


# ------------------------------------------------------------------------------------------------
# simulation
def _first(f, names):
    for n in names:
        if n in f:
            return f[n]
    return None


def read_sim_episode(path: str, target_dt: Optional[float] = None, kinematics=None) -> Episode:
    """One episode HDF5 written by dexwm-collect (see dexwm_sim/FORMAT.md)."""
    with h5py.File(path, "r") as f:
        rgb = _first(f, ("frames", "rgb", "images"))
        if rgb is None:
            raise ValueError("no RGB frames (dataset frames)")
        n = rgb.shape[0]
        kp = _first(f, ("keypoints_world",))
        if kp is not None:
            kp = np.asarray(kp, dtype=np.float64)
        else:
            q = _first(f, ("joints",))
            if q is None:
                raise ValueError("neither keypoints_world nor joints")
            from .actions import allegro_keypoints_world
            kp = allegro_keypoints_world(np.asarray(q), kinematics)
        if kp.shape[1] == NUM_HAND_KEYPOINTS:
            kp = two_hands(kp)
        w2c = _first(f, ("camera/extrinsics",))
        if w2c is None:
            raise ValueError("no camera extrinsics (camera/extrinsics)")
        w2c = np.asarray(w2c, dtype=np.float64)
        c2w = np.linalg.inv(w2c)
        c2w = np.broadcast_to(c2w, (n, 4, 4)) if c2w.ndim == 2 else c2w
        K = _first(f, ("camera/intrinsics",))
        if K is None:
            raise ValueError("no camera intrinsics (camera/intrinsics)")
        K = np.asarray(K, dtype=np.float64)
        K = K[0] if K.ndim == 3 else K
        dt = None
        if "timestamps" in f and len(f["timestamps"]) > 1:
            dt = float(np.median(np.diff(np.asarray(f["timestamps"], dtype=np.float64))))
        elif "control_hz" in f.attrs:
            dt = 1.0 / float(f.attrs["control_hz"])
        elif "frame_dt" in f.attrs:
            dt = float(f.attrs["frame_dt"])
        if dt is None:
            raise ValueError("no frame period (dataset timestamps or attribute control_hz)")
        hw = tuple(rgb.shape[1:3])
        vis = _first(f, ("keypoints_visible",))
        vis = None if vis is None else np.asarray(vis, dtype=bool)
        obj = _first(f, ("object_poses",))
        obj = None if obj is None else np.asarray(obj[..., :3], dtype=np.float64)
    keep = _subsample(n, dt, target_dt)
    if vis is not None and vis.shape[-1] == NUM_HAND_KEYPOINTS:
        vis = np.concatenate([vis, np.zeros_like(vis)], -1)

    def load():
        with h5py.File(path, "r") as f:
            frames = np.asarray(_first(f, ("frames", "rgb", "images")))
        return frames[keep]

    return Episode(name=os.path.abspath(path), source="sim", load_frames=load, keypoints_world=kp[keep],
                   cam_to_world=np.ascontiguousarray(c2w[keep]), intrinsics=K, image_hw=hw,
                   dt=dt * (keep[1] - keep[0] if len(keep) > 1 else 1), hand_loss=True,
                   visible=None if vis is None else vis[keep],
                   object_positions=None if obj is None else obj[keep]).validate()


# ------------------------------------------------------------------------------------------------
# video
def read_video(path: str, indices: Optional[np.ndarray] = None) -> np.ndarray:
    """Decode an mp4 (imageio + ffmpeg) to (N, H, W, 3) uint8, keeping ``indices`` only."""
    import imageio.v3 as iio
    keep = None if indices is None else set(int(i) for i in indices)
    frames = []
    for i, frame in enumerate(iio.imiter(path, plugin="FFMPEG")):
        if keep is None or i in keep:
            frames.append(np.asarray(frame)[..., :3])
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    return np.stack(frames)


def _video_shape(path: str):
    import imageio.v3 as iio
    meta = iio.immeta(path, plugin="FFMPEG")
    w, h = meta["size"]
    return int(h), int(w), float(meta.get("fps", 30.0))


# ------------------------------------------------------------------------------------------------
# EgoDex
EGODEX_FINGERS = {
    "thumb": ("ThumbKnuckle", "ThumbIntermediateBase", "ThumbIntermediateTip", "ThumbTip"),
    "index": ("IndexFingerKnuckle", "IndexFingerIntermediateBase", "IndexFingerIntermediateTip", "IndexFingerTip"),
    "middle": ("MiddleFingerKnuckle", "MiddleFingerIntermediateBase", "MiddleFingerIntermediateTip", "MiddleFingerTip"),
    "ring": ("RingFingerKnuckle", "RingFingerIntermediateBase", "RingFingerIntermediateTip", "RingFingerTip"),
    "little": ("LittleFingerKnuckle", "LittleFingerIntermediateBase", "LittleFingerIntermediateTip", "LittleFingerTip"),
}


def egodex_joint_names(side: str) -> list:
    """ARKit joint names of one hand ('right' | 'left') in MANO order."""
    names = [f"{side}Hand"]
    for finger in ("thumb", "index", "middle", "ring", "little"):
        names += [side + j for j in EGODEX_FINGERS[finger]]
    return names


# ARKit cameras look along -z with y up; our camera frame is OpenCV (x right, y down, z forward).
_ARKIT_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def read_egodex_episode(hdf5_path: str, target_dt: Optional[float] = 0.2,
                        min_confidence: float = 0.0) -> Episode:
    video = os.path.splitext(hdf5_path)[0] + ".mp4"
    if not os.path.isfile(video):
        raise ValueError(f"missing video {video}")
    with h5py.File(hdf5_path, "r") as f:
        tr = f["transforms"]
        cam = np.asarray(tr["camera"], dtype=np.float64)
        n = len(cam)
        kps, conf = [], []
        for side in ("right", "left"):
            for j in egodex_joint_names(side):
                kps.append(np.asarray(tr[j], dtype=np.float64)[:, :3, 3])
                c = f.get(f"confidences/{j}")
                conf.append(np.ones(n) if c is None else np.asarray(c, dtype=np.float64))
        K = np.asarray(f["camera/intrinsic"], dtype=np.float64)
    kp = np.stack(kps, 1)
    vis = np.stack(conf, 1) > min_confidence
    h, w, fps = _video_shape(video)
    keep = _subsample(n, 1.0 / fps, target_dt)
    c2w = cam @ _ARKIT_TO_OPENCV
    return Episode(name=os.path.abspath(hdf5_path), source="egodex",
                   load_frames=lambda: read_video(video, keep), keypoints_world=kp[keep],
                   cam_to_world=c2w[keep], intrinsics=K, image_hw=(h, w),
                   dt=(keep[1] - keep[0] if len(keep) > 1 else 1) / fps, hand_loss=True,
                   visible=vis[keep]).validate()


# ------------------------------------------------------------------------------------------------
# DROID
def _pose6_to_matrix(p: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    T = np.tile(np.eye(4), (len(p), 1, 1))
    T[:, :3, :3] = Rotation.from_euler("xyz", p[:, 3:6]).as_matrix()
    T[:, :3, 3] = p[:, :3]
    return T


def read_droid_episode(episode_dir: str, target_dt: Optional[float] = 0.2, camera: str = "ext1") -> Episode:
    traj = os.path.join(episode_dir, "trajectory.h5")
    serial = None
    for meta_path in glob.glob(os.path.join(episode_dir, "metadata_*.json")):
        with open(meta_path) as fh:
            serial = str(json.load(fh).get(f"{camera}_cam_serial") or "") or None
    mp4s = sorted(p for p in glob.glob(os.path.join(episode_dir, "recordings", "MP4", "*.mp4"))
                  if "stereo" not in os.path.basename(p))
    if serial is None:
        if not mp4s:
            raise ValueError("no recordings/MP4/*.mp4")
        serial = os.path.splitext(os.path.basename(mp4s[0]))[0]
    video = os.path.join(episode_dir, "recordings", "MP4", f"{serial}.mp4")
    if not os.path.isfile(video):
        raise ValueError(f"missing video {video}")
    with h5py.File(traj, "r") as f:
        rs = f["observation/robot_state"]
        ee = np.asarray(rs["cartesian_position"], dtype=np.float64)
        grip = np.asarray(rs["gripper_position"], dtype=np.float64)
        ext = np.asarray(f[f"observation/camera_extrinsics/{serial}_left"], dtype=np.float64)
    n = len(ee)
    h, w, fps = _video_shape(video)
    keep = _subsample(n, 1.0 / fps, target_dt)
    kp = two_hands(gripper_keypoints(ee[:, :3], grip))
    K = np.array([[w / 2.0, 0, w / 2.0], [0, w / 2.0, h / 2.0], [0, 0, 1]])  # unused: no hand loss
    return Episode(name=os.path.abspath(episode_dir), source="droid",
                   load_frames=lambda: read_video(video, keep), keypoints_world=kp[keep],
                   cam_to_world=_pose6_to_matrix(ext)[keep], intrinsics=K, image_hw=(h, w),
                   dt=(keep[1] - keep[0] if len(keep) > 1 else 1) / fps, hand_loss=False).validate()


# ------------------------------------------------------------------------------------------------
def find_episodes(root: str, kind: str = "sim") -> list:
    """Episode paths under ``root`` for a reader kind."""
    if kind == "droid":
        return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", "trajectory.h5"), recursive=True))
    pats = ("*.h5", "*.hdf5") if kind == "sim" else ("*.hdf5",)
    out = []
    for pat in pats:
        out += glob.glob(os.path.join(root, "**", pat), recursive=True)
    return sorted(out)


READERS = {"sim": read_sim_episode, "egodex": read_egodex_episode, "droid": read_droid_episode}


def load_episodes(root: str, kind: str = "sim", target_dt: Optional[float] = None, limit: Optional[int] = None):
    """Read every episode under ``root``; broken ones are skipped with a warning. Returns
    (episodes, skipped_count)."""
    if kind not in READERS:
        raise ValueError(f"unknown dataset kind {kind!r}: one of {sorted(READERS)}")
    if not os.path.exists(root):
        raise FileNotFoundError(f"dataset path not found: {root}")
    paths = [root] if os.path.isfile(root) else find_episodes(root, kind)
    episodes, skipped = [], 0
    for p in paths[:limit] if limit else paths:
        try:
            kwargs = {} if target_dt is None else {"target_dt": target_dt}
            episodes.append(READERS[kind](p, **kwargs))
        except Exception as exc:  # any broken file: skip, count, keep going
            skipped += 1
            log.warning("skipping broken %s episode %s: %s", kind, p, exc)
    if skipped:
        log.warning("skipped %d broken episode(s) of %d under %s", skipped, len(paths), root)
    return episodes, skipped


# ------------------------------------------------------------------------------------------------
# latent cache
def _cache_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip("/"))[-180:]


def encoder_tag(encoder) -> str:
    c = encoder.config
    tag = f"{c.kind}|{c.image_size[0]}x{c.image_size[1]}|{c.weights or ''}"
    # Options that change the backbone tokens; the defaults add nothing, so older caches stay valid.
    if getattr(c, "crop", None) is not None:
        tag += "|crop=" + ",".join(f"{v:g}" for v in c.crop)
    if getattr(c, "zoom", None) is not None:
        tag += "|zoom=" + ",".join(f"{v:g}" for v in c.zoom)
    if getattr(c, "features", "final") != "final":
        tag += f"|features={c.features}"
    return tag


def projected_latents(episode: Episode, encoder, cache_dir: Optional[str]) -> torch.Tensor:
    """Latents (N, P, d) float32 of an episode's frames as ``encoder`` projects them, from cached
    backbone tokens when valid (``cached_tokens``)."""
    with torch.no_grad():
        return encoder.project(cached_tokens(episode, encoder, cache_dir)).float()


def cached_tokens(episode: Episode, encoder, cache_dir: Optional[str]) -> torch.Tensor:
    """Backbone tokens (N, P, D) of an episode's frames, from the cache when valid."""
    tag = encoder_tag(encoder)
    path = None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        path = os.path.join(cache_dir, _cache_key(episode.name) + ".npz")
        if os.path.isfile(path):
            try:
                with np.load(path) as z:
                    if str(z["encoder"]) == tag and int(z["num_frames"]) == len(episode):
                        return torch.from_numpy(z["tokens"].astype(np.float32))
            except Exception as exc:
                log.warning("ignoring unreadable cache file %s: %s", path, exc)
    frames = episode.load_frames()
    if len(frames) != len(episode):
        raise ValueError(f"{episode.name}: {len(frames)} frames decoded, {len(episode)} expected")
    tokens = encoder.backbone_tokens(frames)
    if path:
        tmp = path + f".tmp{os.getpid()}.npz"
        np.savez(tmp, tokens=tokens.numpy().astype(np.float16), encoder=np.array(tag), num_frames=len(episode))
        os.replace(tmp, path)
    return tokens


# ------------------------------------------------------------------------------------------------
# windows
@dataclasses.dataclass
class EncodedEpisode:
    episode: Episode
    latents: torch.Tensor          # (N, P, d) projected
    uv: np.ndarray                 # (N, 12, 2) model-image pixels
    visible: np.ndarray            # (N, 12) bool


def heatmap_targets(episode: Episode, encoder) -> tuple:
    """2D heatmap keypoints (N, 12, 2) in model pixels and their visibility (N, 12)."""
    kp = episode.keypoints_world[:, HEATMAP_KEYPOINTS]
    cam = transform_points(np.linalg.inv(episode.cam_to_world), kp)
    uv_raw, in_front = project_points(cam, episode.intrinsics)
    uv = encoder.raw_to_model_pixels(uv_raw, episode.image_hw)
    H, W = encoder.image_size
    inside = in_front & (uv[..., 0] >= 0) & (uv[..., 0] <= W - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= H - 1)
    if episode.visible is not None:
        inside &= episode.visible[:, HEATMAP_KEYPOINTS]
    # A hand that is all zeros (absent left hand of robot data) is never visible.
    present = np.any(episode.keypoints_world[:, HEATMAP_KEYPOINTS] != 0, axis=-1)
    inside &= present
    if not episode.hand_loss:
        inside[:] = False
    return uv.astype(np.float32), inside


class WindowSampler:
    """Random context windows of ``frames`` frames (``frames - 1`` transitions) with variable
    time gaps: each gap is a random number of kept frames in [1, max_gap]."""

    def __init__(self, encoded: list, frames: int = 9, max_gap: int = 1, seed: int = 0):
        self.encoded = [e for e in encoded if len(e.episode) >= frames]
        if not self.encoded:
            raise ValueError(f"no episode has the {frames} frames a window needs")
        self.frames, self.max_gap = frames, max_gap
        self.rng = np.random.default_rng(seed)
        self.weights = np.array([len(e.episode) for e in self.encoded], dtype=np.float64)
        self.weights /= self.weights.sum()

    def indices(self, n: int) -> np.ndarray:
        gaps = self.rng.integers(1, self.max_gap + 1, size=self.frames - 1)
        while gaps.sum() > n - 1:  # shrink the largest gaps until the window fits
            gaps[np.argmax(gaps)] -= 1
        start = self.rng.integers(0, n - gaps.sum())
        return start + np.concatenate([[0], np.cumsum(gaps)])

    def window(self, e: EncodedEpisode, idx: np.ndarray) -> dict:
        ep = e.episode
        return {
            "latents": e.latents[idx],
            "actions": torch.from_numpy(keypoint_actions(ep.keypoints_world[idx], ep.cam_to_world[idx])),
            "dt": torch.from_numpy((np.diff(idx) * ep.dt).astype(np.float32)),
            "uv": torch.from_numpy(e.uv[idx]),
            "visible": torch.from_numpy(e.visible[idx]),
        }

    def sample(self, batch_size: int) -> dict:
        items = []
        for k in self.rng.choice(len(self.encoded), size=batch_size, p=self.weights):
            e = self.encoded[k]
            items.append(self.window(e, self.indices(len(e.episode))))
        return {key: torch.stack([it[key] for it in items]) for key in items[0]}


def all_actions(encoded: list, max_gap: int = 1) -> np.ndarray:
    """Every consecutive-frame action (and gaps up to max_gap) of the data, for normalisation."""
    out = []
    for e in encoded:
        ep = e.episode
        for g in range(1, max_gap + 1):
            for s in range(g):
                idx = np.arange(s, len(ep), g)
                if len(idx) >= 2:
                    # Each pair in its own window: the first frame of the pair is the reference.
                    pairs = np.stack([idx[:-1], idx[1:]], 1)
                    a = keypoint_actions(ep.keypoints_world[pairs], ep.cam_to_world[pairs])
                    out.append(a.reshape(-1, a.shape[-1]))
    return np.concatenate(out) if out else np.zeros((0, 132), np.float32)
