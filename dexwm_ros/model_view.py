"""The world model's view of a camera frame, ROS-free: resize to the model height, centre-crop the
model width (the paper's preprocessing), and the intrinsics of that view.

The recorder (``dexwm-record``), the bag importer (``dexwm-import-bag``) and the planner node store
or feed frames exactly this way, so recorded, imported and live frames match pixel for pixel.
"""
from __future__ import annotations

import numpy as np


def model_view(image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The encoder's view of a frame: resize to the model height, centre-crop the model width."""
    import cv2

    H, W = image_size
    scale = H / image.shape[0]
    new_w = max(W, int(round(image.shape[1] * scale)))
    resized = cv2.resize(image, (new_w, H), interpolation=cv2.INTER_AREA)
    x0 = (new_w - W) // 2
    return np.ascontiguousarray(resized[:, x0:x0 + W])


def model_view_intrinsics(K: np.ndarray, src_wh: tuple[int, int], size: int) -> np.ndarray:
    """Intrinsics of ``model_view``'s output: resize to ``size`` rows, centre-crop ``size`` columns."""
    w, h = src_wh
    scale = size / h
    new_w = max(size, int(round(w * scale)))
    x0 = (new_w - size) // 2
    K = np.array(K, dtype=np.float64).reshape(3, 3)
    K[:2] *= scale
    K[:2, 2] += 0.5 * scale - 0.5   # pixel centres sit at integer coordinates
    K[0, 2] -= x0
    K[2] = (0.0, 0.0, 1.0)
    return K
