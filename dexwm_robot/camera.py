"""The static "head" camera of the simulation: pose, pinhole intrinsics and projection.

Conventions (the ones ROS CameraInfo and OpenCV use): camera frame x right, y down, z forward
(optical axis); ``world_to_camera`` maps homogeneous world points into that frame; ``K`` maps camera
points to pixels whose centres sit at integer coordinates (pixel (0, 0) covers [-0.5, 0.5]^2).

MuJoCo renders with a vertical field of view ``fovy`` and square pixels, its camera looks along -z
with y up; ``mujoco_xyaxes`` gives the MJCF ``xyaxes`` of the same pose so the rendered image and
the projections here agree (checked in test_sim_kinematics.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The paper's view: a head-mounted camera about 1.6 m above the floor, pitched about 60 degrees down
# at the workspace. The world origin is the robot base on the table top (table height 0.75 m), so
# 1.6 m above the floor is z = 0.85. The camera stands across the table from the robot, a little to
# its left, so that the arm never hides the hand from it.
TABLE_HEIGHT = 0.75
DEFAULT_LOOK_AT = (0.42, 0.0, 0.12)
DEFAULT_PITCH_DEG = 60.0
DEFAULT_AZIMUTH_DEG = 25.0   # direction from the look-at point to the camera, from +x towards +y
DEFAULT_HEIGHT = 1.6 - TABLE_HEIGHT
DEFAULT_FOVY_DEG = 58.0


def _default_position() -> tuple[float, float, float]:
    look = np.asarray(DEFAULT_LOOK_AT)
    dz = DEFAULT_HEIGHT - look[2]
    horizontal = dz / np.tan(np.radians(DEFAULT_PITCH_DEG))
    az = np.radians(DEFAULT_AZIMUTH_DEG)
    pos = look + np.array([horizontal * np.cos(az), horizontal * np.sin(az), dz])
    return tuple(float(v) for v in pos)


@dataclass(frozen=True)
class HeadCamera:
    """A pinhole camera at ``position`` looking at ``look_at`` (world z up), with vertical FOV."""

    position: tuple[float, float, float] = field(default_factory=_default_position)
    look_at: tuple[float, float, float] = DEFAULT_LOOK_AT
    fovy_deg: float = DEFAULT_FOVY_DEG

    @classmethod
    def orbit(cls, pitch_deg: float, azimuth_deg: float, distance: float | None = None) -> "HeadCamera":
        """A camera looking at the default look-at point from ``pitch_deg`` down and ``azimuth_deg``
        (from +x towards +y), ``distance`` metres away (default: the default camera's distance);
        ``orbit(DEFAULT_PITCH_DEG, DEFAULT_AZIMUTH_DEG)`` is the default camera."""
        look = np.asarray(DEFAULT_LOOK_AT, dtype=np.float64)
        if distance is None:
            distance = float(np.linalg.norm(np.asarray(_default_position()) - look))
        if not (0.0 < pitch_deg < 90.0 and np.isfinite(azimuth_deg) and distance > 0):
            raise ValueError(f"camera pitch must be in (0, 90) degrees and distance positive, got pitch "
                             f"{pitch_deg}, azimuth {azimuth_deg}, distance {distance}")
        p, a = np.radians(pitch_deg), np.radians(azimuth_deg)
        position = look + distance * np.array([np.cos(p) * np.cos(a), np.cos(p) * np.sin(a), np.sin(p)])
        return cls(position=tuple(float(v) for v in position), look_at=DEFAULT_LOOK_AT)

    @classmethod
    def from_view(cls, view: tuple = ()) -> "HeadCamera":
        """The default camera, or with ``view`` = (pitch, azimuth) [deg] ``orbit(*view)``."""
        if not view:
            return cls()
        if len(view) != 2:
            raise ValueError(f"a camera view is (pitch, azimuth) in degrees, got {tuple(view)}")
        return cls.orbit(*view)

    @classmethod
    def parse_view(cls, text: str) -> tuple:
        """A view as the command lines give it, "PITCH,AZIMUTH" in degrees ('' = the default camera):
        the (pitch, azimuth) pair ``from_view`` takes; ValueError for text that is not a view."""
        if not text:
            return ()
        try:
            view = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"a camera view is PITCH,AZIMUTH in degrees, got {text!r}") from None
        cls.from_view(view)
        return view

    # --- extrinsics -------------------------------------------------------------------------------
    @property
    def rotation_world_from_camera(self) -> np.ndarray:
        """3x3 rotation whose columns are the camera's x (right), y (down), z (forward) in world."""
        pos = np.asarray(self.position, dtype=np.float64)
        forward = np.asarray(self.look_at, dtype=np.float64) - pos
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
        norm = np.linalg.norm(right)
        if norm < 1e-9:
            raise ValueError("camera looks straight up or down: its roll is undefined")
        right /= norm
        down = np.cross(forward, right)
        return np.stack([right, down, forward], axis=1)

    @property
    def camera_pose(self) -> np.ndarray:
        """4x4 camera-to-world transform (the camera's pose in the world)."""
        T = np.eye(4)
        T[:3, :3] = self.rotation_world_from_camera
        T[:3, 3] = self.position
        return T

    @property
    def world_to_camera(self) -> np.ndarray:
        """4x4 world-to-camera transform (extrinsics)."""
        R = self.rotation_world_from_camera
        T = np.eye(4)
        T[:3, :3] = R.T
        T[:3, 3] = -R.T @ np.asarray(self.position, dtype=np.float64)
        return T

    @property
    def pitch_deg(self) -> float:
        """Angle of the optical axis below the horizontal."""
        f = self.rotation_world_from_camera[:, 2]
        return float(np.degrees(np.arcsin(-f[2])))

    @property
    def mujoco_xyaxes(self) -> tuple[float, ...]:
        """MJCF ``xyaxes`` of this pose (MuJoCo cameras: x right, y up, looking along -z)."""
        R = self.rotation_world_from_camera
        return tuple(float(v) for v in np.concatenate([R[:, 0], -R[:, 1]]))

    # --- intrinsics -------------------------------------------------------------------------------
    def intrinsics(self, width: int, height: int) -> np.ndarray:
        """3x3 K for an image of ``width`` x ``height`` pixels rendered with this camera."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        f = 0.5 * height / np.tan(np.radians(self.fovy_deg) / 2.0)
        return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])

    # --- projection -------------------------------------------------------------------------------
    def to_camera(self, points_world: np.ndarray) -> np.ndarray:
        """World points (..., 3) in the camera frame (..., 3)."""
        p = np.asarray(points_world, dtype=np.float64)
        T = self.world_to_camera
        return p @ T[:3, :3].T + T[:3, 3]

    def project(self, points_world: np.ndarray, width: int = 640, height: int = 480):
        """Project world points (..., 3).

        Returns ``uv`` (..., 2) pixel coordinates, ``depth`` (...) along the optical axis and
        ``visible`` (...) bool: in front of the camera and inside the image. Occlusion is not
        checked here (the simulation can refine visibility with its depth image).
        """
        pc = self.to_camera(points_world)
        K = self.intrinsics(width, height)
        depth = pc[..., 2]
        safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
        u = K[0, 0] * pc[..., 0] / safe + K[0, 2]
        v = K[1, 1] * pc[..., 1] / safe + K[1, 2]
        uv = np.stack([u, v], axis=-1)
        visible = (depth > 1e-3) & (u >= -0.5) & (u <= width - 0.5) & (v >= -0.5) & (v <= height - 0.5)
        return uv, depth, visible


def load_extrinsics(path: Path) -> np.ndarray:
    """A 4x4 world->camera transform (the hand-eye calibration file) from .npy, .yaml or .json.

    The format ``dexwm-calibrate`` writes and ``dexwm-record --extrinsics``, ``dexwm-urdf`` and the
    launch graph read; a clear ValueError otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"extrinsics file not found: {path}")
    if path.suffix == ".npy":
        T = np.load(path)
    else:
        import yaml

        T = np.asarray(yaml.safe_load(path.read_text()), dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)) or not np.allclose(T[3], [0, 0, 0, 1]):
        raise ValueError(f"{path}: extrinsics must be a finite 4x4 homogeneous transform, got shape {T.shape}")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-4):
        raise ValueError(f"{path}: the rotation part of the extrinsics is not orthonormal")
    return T
