"""The 132-d DexWM action: hand keypoint deltas + camera motion, and its normalisation.

Layout (44 x 3 = 132): 42 keypoint deltas (right hand 21, then left hand 21, MANO order), each the
difference between two timesteps expressed in the camera frame of the *first context frame*;
then the camera translation delta (3, same frame) and the camera rotation delta (3, Euler xyz of
the relative rotation R_t^T R_{t+1}, via scipy).
"""
from __future__ import annotations

import functools

import numpy as np
from scipy.spatial.transform import Rotation

from dexwm_robot.joints import DOF as DECISION_DIM

from .keypoints import (HEATMAP_KEYPOINTS, NUM_HAND_KEYPOINTS, NUM_KEYPOINTS, RIGHT_HAND_HEATMAPS, project_points,
                        transform_points)

ACTION_DIM = 3 * NUM_KEYPOINTS + 6  # 132
CAM_TRANSLATION = slice(3 * NUM_KEYPOINTS, 3 * NUM_KEYPOINTS + 3)
CAM_ROTATION = slice(3 * NUM_KEYPOINTS + 3, ACTION_DIM)


def keypoint_actions(keypoints_world: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    """Actions between consecutive frames of one window.

    keypoints_world (..., T+1, 42, 3), cam_to_world (..., T+1, 4, 4) -> (..., T, 132). The
    reference frame is the camera of frame 0 of the window (the first context frame)."""
    kp = np.asarray(keypoints_world, dtype=np.float64)
    T_cw = np.asarray(cam_to_world, dtype=np.float64)
    if kp.shape[-2:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must be (..., T+1, {NUM_KEYPOINTS}, 3), got {kp.shape}")
    if T_cw.shape[-2:] != (4, 4) or T_cw.shape[:-2] != kp.shape[:-2]:
        raise ValueError(f"cam_to_world must be {kp.shape[:-2] + (4, 4)}, got {T_cw.shape}")
    if kp.shape[-3] < 2:
        raise ValueError("need at least two frames to form an action")
    R0 = T_cw[..., :1, :3, :3]  # (..., 1, 3, 3)
    # Differences of points are free vectors: only the rotation of the reference frame applies.
    d_kp = kp[..., 1:, :, :] - kp[..., :-1, :, :]
    d_kp_cam = np.einsum("...ji,...nj->...ni", R0, d_kp)  # R0^T d
    p = T_cw[..., :3, 3]
    d_p = np.einsum("...ji,...tj->...ti", R0[..., 0, :, :], p[..., 1:, :] - p[..., :-1, :])
    R = T_cw[..., :3, :3]
    rel = np.einsum("...ji,...jk->...ik", R[..., :-1, :, :], R[..., 1:, :, :])  # R_t^T R_{t+1}
    euler = Rotation.from_matrix(rel.reshape(-1, 3, 3)).as_euler("xyz").reshape(rel.shape[:-2] + (3,))
    out = np.concatenate([d_kp_cam.reshape(d_kp_cam.shape[:-2] + (-1,)), d_p, euler], axis=-1)
    return out.astype(np.float32)


@functools.lru_cache(maxsize=1)
def default_kinematics():
    """The robot's forward kinematics (Franka FR3 + Allegro), built once per process."""
    from dexwm_robot.kinematics import RobotKinematics

    return RobotKinematics.from_description()


def allegro_keypoints_world(q: np.ndarray, kinematics=None) -> np.ndarray:
    """Right-hand keypoints (..., 21, 3) of the Franka+Allegro for joint vectors q (..., 23)."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != DECISION_DIM:
        raise ValueError(f"joint vectors must have {DECISION_DIM} entries (7 arm + 16 hand), got {q.shape}")
    kin = kinematics if kinematics is not None else default_kinematics()
    kp = np.asarray(kin.keypoints_world(q), dtype=np.float64)
    if kp.shape != q.shape[:-1] + (NUM_HAND_KEYPOINTS, 3):
        raise ValueError(f"kinematics returned {kp.shape}, expected {q.shape[:-1] + (21, 3)}")
    return kp


def static_camera_actions(right_keypoints_world: np.ndarray, world_to_camera: np.ndarray) -> np.ndarray:
    """Actions for a static camera and a right hand only (robot): (..., T+1, 21, 3) -> (..., T, 132).

    Left hand and camera motion are zero, as the paper sets them for the Allegro robot."""
    kp = np.asarray(right_keypoints_world, dtype=np.float64)
    R_wc = np.asarray(world_to_camera, dtype=np.float64)[:3, :3]
    d = np.einsum("ij,...nj->...ni", R_wc, kp[..., 1:, :, :] - kp[..., :-1, :, :])
    out = np.zeros(d.shape[:-2] + (ACTION_DIM,), dtype=np.float32)
    out[..., : 3 * NUM_HAND_KEYPOINTS] = d.reshape(d.shape[:-2] + (-1,))
    return out


def allegro_actions(q_seq: np.ndarray, world_to_camera: np.ndarray, kinematics=None) -> np.ndarray:
    """Planner helper: joint sequences (B, T+1, 23) -> actions (B, T, 132), vectorised over B and T.

    world_to_camera (4, 4) is the static camera's extrinsic (OpenCV camera axes)."""
    q = np.asarray(q_seq, dtype=np.float64)
    if q.ndim < 2 or q.shape[-1] != DECISION_DIM:
        raise ValueError(f"q_seq must be (..., T+1, {DECISION_DIM}), got {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError("q_seq contains non-finite joint values")
    W = np.asarray(world_to_camera, dtype=np.float64)
    if W.shape != (4, 4):
        raise ValueError(f"world_to_camera must be (4, 4), got {W.shape}")
    return static_camera_actions(allegro_keypoints_world(q, kinematics), W)


def allegro_hand_pixels(q: np.ndarray, world_to_camera: np.ndarray, intrinsics: np.ndarray,
                        kinematics=None) -> np.ndarray:
    """Right-hand wrist + 5 fingertip pixels (..., 6, 2) of joint vectors q (..., 23): forward
    kinematics projected into the camera (``intrinsics``: K of the model image, see
    ``dexwm_robot.view.model_view_intrinsics``), in the heatmap head's keypoint order."""
    kp = allegro_keypoints_world(q, kinematics)[..., HEATMAP_KEYPOINTS[RIGHT_HAND_HEATMAPS], :]
    uv, _ = project_points(transform_points(np.asarray(world_to_camera, dtype=np.float64), kp), intrinsics)
    return uv


def hand_pixels_projection(world_to_camera: np.ndarray, model_hw: tuple[int, int], camera_hw=None,
                           camera_matrix: np.ndarray | None = None, kinematics=None):
    """The planner's planned-hand projection: joints (..., 23) -> right-hand wrist + fingertip pixels
    (..., 6, 2) in the model image (``model_hw``: its (H, W)), for colour frames of size ``camera_hw``
    (None: the model image's, as the simulation renders) with intrinsics ``camera_matrix`` (their
    camera_info; None: the simulated head camera's at that size)."""
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.view import model_view_intrinsics

    model_hw = (int(model_hw[0]), int(model_hw[1]))
    h, w = model_hw if camera_hw is None else (int(camera_hw[0]), int(camera_hw[1]))
    K_frames = camera_matrix if camera_matrix is not None else HeadCamera().intrinsics(w, h)
    K = model_view_intrinsics(K_frames, (w, h), model_hw)
    w2c = np.asarray(world_to_camera, dtype=np.float64)
    return lambda q: allegro_hand_pixels(q, w2c, K, kinematics=kinematics)


def wrist_position_projection(world_to_camera: np.ndarray, kinematics=None):
    """The planner's planned-wrist position: joints (..., 23) -> the right-hand wrist keypoint
    (..., 3) [m] in the camera frame (forward kinematics; the goal wrist term's frame)."""
    w2c = np.asarray(world_to_camera, dtype=np.float64)
    wrist = HEATMAP_KEYPOINTS[RIGHT_HAND_HEATMAPS][0]
    return lambda q: transform_points(w2c, allegro_keypoints_world(q, kinematics)[..., wrist, :])


class ActionNormalizer:
    """Per-dimension standardisation, statistics fitted on training actions.

    Dimensions that never vary in the data (e.g. the left hand and camera for robot-only data) get
    std 1 so that the planner's candidates there are not blown up by a near-zero divisor."""

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None):
        self.mean = np.zeros(ACTION_DIM, np.float32) if mean is None else np.asarray(mean, np.float32)
        self.std = np.ones(ACTION_DIM, np.float32) if std is None else np.asarray(std, np.float32)
        if self.mean.shape != (ACTION_DIM,) or self.std.shape != (ACTION_DIM,):
            raise ValueError(f"normalisation stats must be ({ACTION_DIM},)")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std)) and np.all(self.std > 0)):
            raise ValueError("normalisation stats must be finite with positive std")

    @classmethod
    def fit(cls, actions: np.ndarray, min_std: float = 1e-6) -> "ActionNormalizer":
        a = np.asarray(actions, dtype=np.float64).reshape(-1, ACTION_DIM)
        if len(a) == 0:
            raise ValueError("no actions to fit normalisation statistics on")
        mean, std = a.mean(0), a.std(0)
        constant = std < min_std
        std[constant] = 1.0
        mean[constant] = 0.0 if np.all(np.abs(mean[constant]) < min_std) else mean[constant]
        return cls(mean, std)

    def normalize(self, actions):
        import torch
        if isinstance(actions, torch.Tensor):
            m = torch.as_tensor(self.mean, device=actions.device, dtype=actions.dtype)
            s = torch.as_tensor(self.std, device=actions.device, dtype=actions.dtype)
            return (actions - m) / s
        return (np.asarray(actions, np.float32) - self.mean) / self.std

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state_dict(cls, d: dict) -> "ActionNormalizer":
        return cls(np.asarray(d["mean"]), np.asarray(d["std"]))
