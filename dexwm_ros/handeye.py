"""Eye-to-hand calibration of the static head camera with a ChArUco board on the hand (ROS-free core).

The camera is static and the board rides on the end effector. Each sample pairs one camera image
with the flange pose from the arm's joint positions (the robot's forward kinematics,
dexwm_robot.kinematics). OpenCV finds the board (``cv2.aruco.CharucoDetector``) and its pose in the
camera (``cv2.solvePnP`` on the ChArUco corners). Two unknowns are solved for, X = the camera's pose
in the world (robot base) frame and Y = the board's pose on the flange, from
``world_T_flange[i] @ Y = X @ camera_T_board[i]``:

1. closed form (Park & Martin): relative motions between samples give AY = YB; Y's rotation is the
   orthogonal Procrustes fit of the rotation axes, its translation linear least squares; X follows;
2. refinement: least squares over X and Y of the board corners' reprojection error in every image
   (``cv2.projectPoints``), which weighs each corner by what the camera actually measured.

``cv2.calibrateHandEye`` would do step 1, but the pinned OpenCV (5.0.0 wheels) no longer ships it
(only its enum constants remain), hence the few lines of step 1 here.

The result is written as the stack's calibration file: the 4x4 world->camera transform as a YAML
list (dexwm_robot.camera.load_extrinsics reads it). Used by ``dexwm-calibrate`` (simulation and real
robot). No rclpy here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml
from scipy.spatial.transform import Rotation

MIN_CORNERS = 8        # ChArUco corners for a usable board pose (PnP on fewer is fragile)
MIN_SAMPLES = 5        # AX = XB needs at least 3 poses with distinct rotation axes; ask for margin


@dataclass(frozen=True)
class CharucoBoard:
    """The board's layout; print it with ``image()`` at the stated square size."""

    squares_x: int = 5
    squares_y: int = 7
    square_m: float = 0.03
    marker_m: float = 0.022
    dictionary: str = "DICT_5X5_100"

    def board(self) -> cv2.aruco.CharucoBoard:
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_m, self.marker_m, d)

    @property
    def size_m(self) -> tuple[float, float]:
        return self.squares_x * self.square_m, self.squares_y * self.square_m

    def image(self, px_per_square: int = 100) -> np.ndarray:
        """RGB image of the board (no margin), px_per_square pixels per square."""
        gray = self.board().generateImage((self.squares_x * px_per_square, self.squares_y * px_per_square),
                                          marginSize=0, borderBits=1)
        return np.repeat(gray[:, :, None], 3, axis=2)


@dataclass
class BoardPose:
    camera_T_board: np.ndarray   # 4x4 board frame in the camera (OpenCV) frame
    corners: int                 # ChArUco corners used
    reprojection_px: float       # RMS reprojection error of those corners
    board_points: np.ndarray     # (N, 3) the corners in the board frame
    image_points: np.ndarray     # (N, 2) where they were detected [px]


def _homogeneous(R, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t).reshape(3)
    return T


class BoardDetector:
    def __init__(self, board: CharucoBoard, K: np.ndarray, dist: np.ndarray | None = None):
        self.spec = board
        self.board = board.board()
        self.detector = cv2.aruco.CharucoDetector(self.board)
        self.K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        self.dist = np.zeros(5) if dist is None else np.asarray(dist, dtype=np.float64).reshape(-1)

    def detect(self, image_rgb: np.ndarray) -> BoardPose | None:
        """The board's pose in the camera, or None when too few corners are seen."""
        gray = cv2.cvtColor(np.ascontiguousarray(image_rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
        corners, ids, _, _ = self.detector.detectBoard(gray)
        if ids is None or len(ids) < MIN_CORNERS:
            return None
        obj, img = self.board.matchImagePoints(corners, ids)
        if obj is None or len(obj) < MIN_CORNERS or self.board.checkCharucoCornersCollinear(ids):
            return None
        ok, rvec, tvec = cv2.solvePnP(obj, img, self.K, self.dist, flags=cv2.SOLVEPNP_IPPE)
        if not ok:
            return None
        rvec, tvec = cv2.solvePnPRefineLM(obj, img, self.K, self.dist, rvec, tvec)
        projected, _ = cv2.projectPoints(obj, rvec, tvec, self.K, self.dist)
        rms = float(np.sqrt(np.mean(np.sum((projected.reshape(-1, 2) - img.reshape(-1, 2)) ** 2, axis=1))))
        return BoardPose(_homogeneous(cv2.Rodrigues(rvec)[0], tvec), len(obj), rms,
                         obj.reshape(-1, 3).astype(np.float64), img.reshape(-1, 2).astype(np.float64))


@dataclass
class Calibration:
    world_to_camera: np.ndarray        # 4x4, the calibration file's content
    flange_T_board: np.ndarray         # 4x4, where the board sits on the hand (a by-product)
    samples: int
    reprojection_px: float             # RMS corner reprojection error over all images after refinement

    @property
    def camera_pose(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_camera)


def _procrustes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation R minimising sum ||a_k - R b_k||^2 (rows are vectors)."""
    u, _, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def solve_closed_form(world_T_flange: list, camera_T_board: list) -> tuple[np.ndarray, np.ndarray]:
    """(world_T_camera, flange_T_board) from A_i Y = X B_i (Park & Martin on all sample pairs)."""
    A, B = world_T_flange, camera_T_board
    pairs = [(i, j) for i in range(len(A)) for j in range(i + 1, len(A))]
    # X = A_i Y B_i^-1 = A_j Y B_j^-1  =>  (A_j^-1 A_i) Y = Y (B_j^-1 B_i): the flange's motion between
    # two samples, in the flange frame, equals the board's, in the board frame, seen through Y.
    rel_a = [np.linalg.inv(A[j]) @ A[i] for i, j in pairs]
    rel_b = [np.linalg.inv(B[j]) @ B[i] for i, j in pairs]
    alpha = np.array([Rotation.from_matrix(T[:3, :3]).as_rotvec() for T in rel_a])
    beta = np.array([Rotation.from_matrix(T[:3, :3]).as_rotvec() for T in rel_b])
    R_y = _procrustes(alpha, beta)
    # (R_a - I) t_y = R_y t_b - t_a, stacked over all pairs.
    lhs = np.concatenate([T[:3, :3] - np.eye(3) for T in rel_a])
    rhs = np.concatenate([R_y @ Tb[:3, 3] - Ta[:3, 3] for Ta, Tb in zip(rel_a, rel_b)])
    t_y = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    Y = _homogeneous(R_y, t_y)
    Xs = [a @ Y @ np.linalg.inv(b) for a, b in zip(A, B)]
    X = _homogeneous(Rotation.from_matrix([x[:3, :3] for x in Xs]).mean().as_matrix(),
                     np.mean([x[:3, 3] for x in Xs], axis=0))
    return X, Y


def _pose_to_vec(T: np.ndarray) -> np.ndarray:
    return np.r_[Rotation.from_matrix(T[:3, :3]).as_rotvec(), T[:3, 3]]


def _vec_to_pose(v: np.ndarray) -> np.ndarray:
    return _homogeneous(Rotation.from_rotvec(v[:3]).as_matrix(), v[3:])


@dataclass
class HandEyeCalibrator:
    """Collects (flange pose, board detection) pairs and solves for the static camera's pose."""

    detector: BoardDetector
    world_T_flange: list = field(default_factory=list)
    boards: list = field(default_factory=list)

    def add(self, image_rgb: np.ndarray, world_T_flange: np.ndarray) -> BoardPose | None:
        """Add one sample; returns the board pose, or None (sample skipped) when it is not seen."""
        pose = self.detector.detect(image_rgb)
        if pose is not None:
            self.world_T_flange.append(np.asarray(world_T_flange, dtype=np.float64))
            self.boards.append(pose)
        return pose

    def __len__(self) -> int:
        return len(self.world_T_flange)

    def _residuals(self, params: np.ndarray) -> np.ndarray:
        camera_T_world = np.linalg.inv(_vec_to_pose(params[:6]))
        Y = _vec_to_pose(params[6:])
        out = []
        for A, board in zip(self.world_T_flange, self.boards):
            T = camera_T_world @ A @ Y
            rvec = cv2.Rodrigues(T[:3, :3])[0]
            projected, _ = cv2.projectPoints(board.board_points, rvec, T[:3, 3], self.detector.K,
                                             self.detector.dist)
            out.append((projected.reshape(-1, 2) - board.image_points).ravel())
        return np.concatenate(out)

    def solve(self) -> Calibration:
        from scipy.optimize import least_squares

        if len(self) < MIN_SAMPLES:
            raise ValueError(f"need at least {MIN_SAMPLES} poses with the board in view, have {len(self)}")
        X, Y = solve_closed_form(self.world_T_flange, [b.camera_T_board for b in self.boards])
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(Y))):
            raise ValueError("hand-eye calibration failed (degenerate poses: vary the hand's orientation more)")
        fit = least_squares(self._residuals, np.r_[_pose_to_vec(X), _pose_to_vec(Y)], method="lm")
        X, Y = _vec_to_pose(fit.x[:6]), _vec_to_pose(fit.x[6:])
        rms = float(np.sqrt(np.mean(fit.fun.reshape(-1, 2) ** 2) * 2))
        return Calibration(world_to_camera=np.linalg.inv(X), flange_T_board=Y, samples=len(self),
                           reprojection_px=rms)


def pose_error(estimated_world_to_camera: np.ndarray, true_world_to_camera: np.ndarray) -> tuple[float, float]:
    """(translation error [mm] of the camera position, rotation error [deg]) between two extrinsics."""
    est, true = np.linalg.inv(estimated_world_to_camera), np.linalg.inv(true_world_to_camera)
    translation_mm = 1000 * float(np.linalg.norm(est[:3, 3] - true[:3, 3]))
    rotation_deg = float(np.degrees(Rotation.from_matrix(est[:3, :3].T @ true[:3, :3]).magnitude()))
    return translation_mm, rotation_deg


def write_calibration(path: Path, calibration: Calibration) -> None:
    """The calibration file: the 4x4 world->camera transform as a YAML list (plus a comment header)."""
    header = (f"# Hand-eye calibration (dexwm-calibrate): 4x4 world->camera transform, world = the Franka\n"
              f"# base frame, camera = OpenCV optical frame. {calibration.samples} poses, RMS corner "
              f"reprojection error {calibration.reprojection_px:.3f} px.\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(calibration.world_to_camera.tolist(), default_flow_style=None))
