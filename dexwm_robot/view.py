"""The world model's view of a camera frame: resize to the model height, centre-crop the model width
(the paper's preprocessing), and what that does to pixel coordinates and intrinsics.

The one definition of the crop: the encoder (``dexwm_planner.encoders``, on tensors), the planner
node, the recorder (``dexwm-record``) and the bag importer (``dexwm-import-bag``) all use
``view_geometry``, so recorded, imported and live frames match pixel for pixel.
"""
from __future__ import annotations

import numpy as np


def view_geometry(raw_hw, image_size) -> tuple[float, int, int]:
    """(scale, resized width, x offset of the crop) of resize-to-height + centre-crop.

    ``raw_hw``: (height, width) of the frame; ``image_size``: (H, W) of the view. A frame too narrow
    to fill W after the resize is refused (stretching it would distort what the model sees).
    """
    H, W = int(image_size[0]), int(image_size[1])
    h, w = int(raw_hw[0]), int(raw_hw[1])
    scale = H / h
    new_w = int(round(w * scale))
    if new_w < W:
        raise ValueError(
            f"image of size {h}x{w} is too narrow: resized to height {H} it is {new_w} px wide, "
            f"the model needs at least {W} (aspect ratio >= {W / H:.3f})")
    return scale, new_w, (new_w - W) // 2


def model_view(image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The encoder's view of an (h, w, 3) frame as an (H, W, 3) image."""
    import cv2

    H, W = image_size
    _, new_w, x0 = view_geometry(image.shape[:2], image_size)
    resized = cv2.resize(image, (new_w, H), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(resized[:, x0:x0 + W])


def raw_to_view_pixels(uv, raw_hw, image_size) -> np.ndarray:
    """Pixel coordinates (..., 2) of a frame mapped into its view (pixel centres at integers)."""
    scale, _, x0 = view_geometry(raw_hw, image_size)
    out = (np.asarray(uv, dtype=np.float64) + 0.5) * scale - 0.5
    out[..., 0] -= x0
    return out


def model_view_intrinsics(K: np.ndarray, src_wh: tuple[int, int], size) -> np.ndarray:
    """Intrinsics of ``model_view``'s output for a view of a src_wh frame: ``size`` is the side of
    a square view or its (H, W)."""
    w, h = src_wh
    view_hw = (size, size) if np.isscalar(size) else tuple(size)
    scale, _, x0 = view_geometry((h, w), view_hw)
    K = np.array(K, dtype=np.float64).reshape(3, 3)
    K[:2] *= scale
    K[:2, 2] += 0.5 * scale - 0.5   # pixel centres sit at integer coordinates
    K[0, 2] -= x0
    K[2] = (0.0, 0.0, 1.0)
    return K
