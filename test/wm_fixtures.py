"""Small episode files in the real on-disk formats, written by the world-model tests."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

from dexwm_planner.datasets import egodex_joint_names
from dexwm_planner.keypoints import project_points, transform_points


def look_at_camera(position, target=(0.5, 0.0, 0.0)):
    """cam_to_world (4, 4) of an OpenCV camera at ``position`` looking at ``target`` (z up)."""
    p = np.asarray(position, float)
    fwd = np.asarray(target, float) - p
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, fwd], 1)
    T[:3, 3] = p
    return T


def hand_trajectory(n, rng, centre=(0.5, 0.0, 0.1)):
    """A right hand (21, 3) per frame that translates smoothly and opens/closes."""
    base = np.zeros((21, 3))
    for f in range(5):
        ang = -0.6 + 0.3 * f
        for k in range(4):
            r = 0.03 + 0.02 * k
            base[1 + 4 * f + k] = [r * np.cos(ang), r * np.sin(ang), 0.0]
    vel = rng.normal(0, 0.02, 3)
    kp = np.empty((n, 21, 3))
    pos = np.asarray(centre, float) + rng.normal(0, 0.05, 3)
    for t in range(n):
        pos = pos + vel
        vel = 0.8 * vel + rng.normal(0, 0.01, 3)
        pos = np.clip(pos, [0.3, -0.2, 0.0], [0.7, 0.2, 0.3])
        close = 0.5 + 0.5 * np.sin(0.5 * t)
        kp[t] = pos + base * (1 - 0.5 * close)
    return kp


def render(kp_world, cam_to_world, K, hw):
    """A plain image with a bright disc at the wrist and small dots at the fingertips."""
    H, W = hw
    img = np.full((H, W, 3), 60, np.uint8)
    uv, front = project_points(transform_points(np.linalg.inv(cam_to_world), kp_world), K)
    yy, xx = np.mgrid[:H, :W]
    order = [i for i in range(len(uv)) if i % 21 != 0] + [i for i in range(len(uv)) if i % 21 == 0]
    for i in order:  # wrists last, on top, so the disc's centroid is the wrist
        u, v = uv[i]
        if not front[i]:
            continue
        r = 10 if i == 0 else 3
        img[(xx - u) ** 2 + (yy - v) ** 2 <= r * r] = (230, 200, 40) if i == 0 else (40, 200, 230)
    return img


def object_track(n, rng, k=2):
    """Positions (n, k, 3) of k objects on the table: one slides 2 cm per frame, the others stay."""
    start = np.concatenate([rng.uniform([0.4, -0.15], [0.6, 0.15], (k, 2)), np.full((k, 1), 0.025)], 1)
    pos = np.repeat(start[None], n, 0)
    pos[:, 0, 0] += 0.02 * np.arange(n)
    return pos


def write_sim_episode(path, n=12, seed=0, hw=(120, 160), dt=0.2, objects=False):
    """A dexwm-collect-like episode; with ``objects`` also ``object_poses`` (see object_track)."""
    rng = np.random.default_rng(seed)
    c2w = look_at_camera((1.2, 0.3, 0.8))
    K = np.array([[150.0, 0, hw[1] / 2], [0, 150.0, hw[0] / 2], [0, 0, 1]])
    kp = hand_trajectory(n, rng)
    rgb = np.stack([render(k, c2w, K, hw) for k in kp])
    # The dexwm-collect layout (dexwm_sim/FORMAT.md), for reader tests that need exact keypoints.
    with h5py.File(path, "w") as f:
        f["frames"] = rgb
        f["timestamps"] = np.arange(n) * dt
        f["keypoints_world"] = np.concatenate([kp, np.zeros_like(kp)], 1).astype(np.float32)
        f["camera/extrinsics"] = np.linalg.inv(c2w)
        f["camera/pose"] = c2w
        f["camera/intrinsics"] = K
        f.attrs["control_hz"] = 1.0 / dt
        if objects:
            pos = object_track(n, rng)
            f["object_poses"] = np.concatenate([pos, np.tile([1.0, 0, 0, 0], pos.shape[:2] + (1,))], -1)
    return kp, c2w, K


def write_object_episodes(folder, count=8, n=12) -> str:
    """``count`` episodes with object poses (``write_sim_episode``, seeds 0..count-1) in ``folder``."""
    for i in range(count):
        write_sim_episode(os.path.join(str(folder), f"ep{i:03d}.h5"), n=n, seed=i, objects=True)
    return str(folder)


def frozen_rollout(context, actions, **kw):
    """A stand-in for ``DexWM.rollout`` that predicts nothing moves: the last context latent at every step."""
    return context[-1:].repeat(actions.shape[1], 1, 1)[None]


def tiny_world_model(latent_dim: int):
    """An untrained DexWM of the default sizes whose latent has ``latent_dim`` dimensions (seed 0)."""
    import torch

    from dexwm_planner.encoders import EncoderConfig
    from dexwm_planner.world_model import DexWM, WorldModelConfig
    torch.manual_seed(0)
    return DexWM(WorldModelConfig(encoder=EncoderConfig(proj_dim=latent_dim)))


def write_video(path, frames, fps):
    import imageio.v3 as iio
    iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)


def write_egodex_episode(folder, index=0, n=18, fps=30, hw=(120, 160), seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    c2w = look_at_camera((1.0, 0.0, 0.6))
    K = np.array([[140.0, 0, hw[1] / 2], [0, 140.0, hw[0] / 2], [0, 0, 1]])
    right = hand_trajectory(n, rng)
    left = hand_trajectory(n, rng, centre=(0.5, 0.2, 0.1))
    # ARKit camera convention (looks along -z, y up) as EgoDex stores it.
    arkit = c2w @ np.diag([1.0, -1.0, -1.0, 1.0])
    with h5py.File(os.path.join(folder, f"{index}.hdf5"), "w") as f:
        f["camera/intrinsic"] = K
        f["transforms/camera"] = np.repeat(arkit[None], n, 0)
        for side, kp in (("right", right), ("left", left)):
            for j, name in enumerate(egodex_joint_names(side)):
                T = np.repeat(np.eye(4)[None], n, 0)
                T[:, :3, 3] = kp[:, j]
                f[f"transforms/{name}"] = T
                f[f"confidences/{name}"] = np.ones(n)
        f["transforms/rightHand"][...]  # noqa: B018  (wrist exists in both)
    frames = np.stack([render(np.concatenate([r, l]), c2w, K, hw) for r, l in zip(right, left)])
    write_video(os.path.join(folder, f"{index}.mp4"), frames, fps)
    return right, left, c2w, K


def write_droid_episode(folder, n=16, fps=15, hw=(120, 160), serial="12345678", seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "recordings", "MP4"), exist_ok=True)
    ee = np.cumsum(rng.normal(0, 0.01, (n, 3)), 0) + [0.5, 0, 0.2]
    cart = np.concatenate([ee, np.zeros((n, 3))], 1)
    grip = np.linspace(0, 1, n)
    c2w = look_at_camera((1.0, 0.5, 0.6))
    from scipy.spatial.transform import Rotation
    ext = np.concatenate([c2w[:3, 3], Rotation.from_matrix(c2w[:3, :3]).as_euler("xyz")])
    with h5py.File(os.path.join(folder, "trajectory.h5"), "w") as f:
        f["observation/robot_state/cartesian_position"] = cart
        f["observation/robot_state/gripper_position"] = grip
        f[f"observation/camera_extrinsics/{serial}_left"] = np.repeat(ext[None], n, 0)
    with open(os.path.join(folder, "metadata_TEST.json"), "w") as fh:
        json.dump({"ext1_cam_serial": serial}, fh)
    frames = np.full((n, hw[0], hw[1], 3), 90, np.uint8)
    write_video(os.path.join(folder, "recordings", "MP4", f"{serial}.mp4"), frames, fps)
    return ee, grip, c2w
