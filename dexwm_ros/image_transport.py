"""Fast DDS settings of processes that publish camera images (ROS-free: only the environment).

A 640x480 rgb8 frame (921 KB) does not fit into Fast DDS's default 512 KB shared-memory segment,
and such frames took about 10 ms longer to arrive than images below 512 KB, whatever the builtin
transport choice (see config/fastdds_large_images.xml and the README's "Image transport"). The shipped profile gives the publishing
participant a 16 MB segment. Fast DDS reads the profile when the ROS context starts, so
:func:`use_large_image_profile` must run before ``rclpy.init``.
"""
from __future__ import annotations

import os
from pathlib import Path

PROFILE_FILE = "fastdds_large_images.xml"
# Fast DDS 3 reads the first; the second is the Fast DDS 2 name, which it still honours.
PROFILE_ENV = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def large_image_profile() -> Path:
    """The shipped profile (installed config/ or the checkout's)."""
    from dexwm_ros.graph import config_dir

    return config_dir() / PROFILE_FILE


def use_large_image_profile(environ=os.environ) -> str:
    """Load the large-image profile in this process unless the user set a Fast DDS profile of their own
    (theirs wins). Returns a line for the log saying which profile applies."""
    for name in PROFILE_ENV:
        if environ.get(name):
            return f"Fast DDS profile from {name}={environ[name]} (the user's; large-image profile not loaded)"
    path = large_image_profile()
    if not path.is_file():
        return f"Fast DDS large-image profile {path} not found: default transports (about 10 ms more per 640x480 frame)"
    environ[PROFILE_ENV[0]] = str(path)
    return f"Fast DDS profile {path} (16 MB shared-memory segment for large images)"
