"""Calibration-only variant of the scene: a ChArUco board fixed to the hand, for ``dexwm-calibrate --sim``.

The default scene (model.py) is unchanged; this one adds a textured, visual-only plane (no contacts,
no mass) in front of the Allegro palm, facing where the palm faces, with the board image as its
texture, and a larger offscreen buffer so the board's markers are rendered with enough pixels. The
board is rigid with the flange (palm and mount have no joint between them), as a board screwed to a
real hand or flange is; hand-eye calibration does not need to know where on the hand it sits.
"""
from __future__ import annotations

import numpy as np

from . import select_gl_backend

select_gl_backend()
import mujoco  # noqa: E402

from dexwm_robot.camera import HeadCamera  # noqa: E402

from .model import SceneModel, build_model, build_spec  # noqa: E402

BOARD_BODY = "allegro_palm"
# Board centre in the palm frame: 45 mm in front of the palm surface (clear of the slightly flexed
# fingers of the open pose), centred on the palm and the fingers' length; its normal is the palm's +x.
BOARD_POS = (0.045, 0.0, 0.03)
BOARD_QUAT = (np.cos(np.pi / 4), 0.0, np.sin(np.pi / 4), 0.0)   # plane +z -> palm +x
OFFSCREEN = (1280, 960)


def calibration_spec(board_rgb: np.ndarray, board_size_m: tuple[float, float],
                     camera: HeadCamera | None = None) -> mujoco.MjSpec:
    """The scene with the board image ``board_rgb`` (H, W, 3) on a plane of ``board_size_m`` (w, h)."""
    board_rgb = np.ascontiguousarray(board_rgb, dtype=np.uint8)
    if board_rgb.ndim != 3 or board_rgb.shape[2] != 3:
        raise ValueError(f"board image must be (H, W, 3), got {board_rgb.shape}")
    spec = build_spec(camera)
    h, w = board_rgb.shape[:2]
    tex = spec.add_texture(name="calibration_board", type=mujoco.mjtTexture.mjTEXTURE_2D)
    tex.width, tex.height, tex.nchannel = w, h, 3
    # As given, the image appears on the box's +z face as printed (not mirrored: a mirrored board's
    # markers would not decode); the calibration test checks it is detected.
    tex.data = board_rgb.tobytes()
    spec.add_material(name="calibration_board", textures=["", "calibration_board"], texrepeat=[1, 1],
                      texuniform=False, emission=1.0, specular=0.0, shininess=0.0)
    palm = spec.body(BOARD_BODY)
    palm.add_geom(name="calibration_board", type=mujoco.mjtGeom.mjGEOM_BOX,
                  size=[board_size_m[0] / 2, board_size_m[1] / 2, 0.001], pos=list(BOARD_POS),
                  quat=list(BOARD_QUAT), material="calibration_board", contype=0, conaffinity=0, group=1,
                  mass=0.0)
    spec.visual.global_.offwidth, spec.visual.global_.offheight = OFFSCREEN
    return spec


def build_calibration_model(board_rgb: np.ndarray, board_size_m: tuple[float, float],
                            camera: HeadCamera | None = None) -> SceneModel:
    camera = camera or HeadCamera()
    return build_model(camera, spec=calibration_spec(board_rgb, board_size_m, camera))
