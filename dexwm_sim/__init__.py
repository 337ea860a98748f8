"""dexwm_sim: the embedded MuJoCo simulation (scene, tasks, data collection).

The robot itself (joints, limits, kinematic description, FK/IK, camera model) is dexwm_robot's.

No rclpy here. Importing this package picks a headless OpenGL backend for MuJoCo *before* mujoco is
imported anywhere (MuJoCo reads ``MUJOCO_GL`` once, at import): EGL when an EGL display can be
initialised, otherwise OSMesa. A value the user has set is kept.
"""
from __future__ import annotations

import ctypes
import os


def _egl_works() -> bool:
    """True when an EGL device display initialises, the way MuJoCo's EGL backend opens one."""
    try:
        egl = ctypes.CDLL("libEGL.so.1")
        egl.eglGetProcAddress.restype = ctypes.c_void_p
        egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
        query = egl.eglGetProcAddress(b"eglQueryDevicesEXT")
        get_display = egl.eglGetProcAddress(b"eglGetPlatformDisplayEXT")
        if not query or not get_display:
            return False
        query_devices = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                                         ctypes.POINTER(ctypes.c_int))(query)
        platform_display = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p,
                                            ctypes.c_void_p)(get_display)
        egl.eglInitialize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        egl.eglTerminate.argtypes = [ctypes.c_void_p]
        devices = (ctypes.c_void_p * 8)()
        count = ctypes.c_int()
        if not query_devices(8, devices, ctypes.byref(count)):
            return False
        for i in range(count.value):
            display = platform_display(0x313F, devices[i], None)  # EGL_PLATFORM_DEVICE_EXT
            if display and egl.eglInitialize(display, None, None):
                egl.eglTerminate(display)
                return True
        return False
    except (OSError, AttributeError):
        return False


def select_gl_backend() -> str:
    """Set MUJOCO_GL (egl, falling back to osmesa) unless the user chose one; return the choice."""
    if not os.environ.get("MUJOCO_GL"):
        os.environ["MUJOCO_GL"] = "egl" if _egl_works() else "osmesa"
        if os.environ["MUJOCO_GL"] == "osmesa":
            os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    return os.environ["MUJOCO_GL"]


select_gl_backend()
