"""The camera node's parameters as one ROS-free dataclass (declared by dexwm_ros.node_parameters;
read-only: a source is opened with them once), and the frame source they describe."""
from __future__ import annotations

import math
from dataclasses import dataclass

from camera_driver.sources import FrameSource, make_source, parse_profile
from dexwm_ros.node_settings import setting


@dataclass(frozen=True)
class CameraSettings:
    source: str = setting("realsense", "frame source: realsense, file (RealSense recording) or opencv", read_only=True)
    serial: str = setting("", "RealSense serial number; empty takes the first device found", read_only=True)
    color_profile: str = setting("640x480x30", "RealSense colour stream WIDTHxHEIGHTxFPS", read_only=True)
    depth_profile: str = setting("640x480x30", "RealSense depth stream WIDTHxHEIGHTxFPS", read_only=True)
    enable_depth: bool = setting(False, "publish depth (16UC1, millimetres)", read_only=True)
    align_depth: bool = setting(True, "align depth to the colour image (aligned_depth_to_color topics)",
                                read_only=True)
    file_path: str = setting("", "RealSense recording (.db3 / .bag) for source:=file", read_only=True)
    video_device: str = setting("", "video file path or webcam index for source:=opencv", read_only=True)
    loop: bool = setting(True, "restart a recording / video file at its end", read_only=True)
    real_time: bool = setting(True, "play recordings at their recorded rate (false: as fast as possible)",
                              read_only=True)
    horizontal_fov_deg: float = setting(69.4, "opencv source: assumed horizontal field of view for camera_info",
                                        read_only=True)
    frame_id: str = setting("camera_color_optical_frame", "frame_id of the published images", read_only=True)
    frame_timeout_s: float = setting(2.0, "no frame for this long -> error on /diagnostics and reconnect [s]",
                                     read_only=True)
    reconnect_period_s: float = setting(2.0, "seconds between attempts to (re)open the source", read_only=True)

    def problem(self) -> str | None:
        for name in ("color_profile", "depth_profile"):
            try:
                parse_profile(getattr(self, name))
            except ValueError as e:
                return f"{name}: {e}"
        if not (self.frame_timeout_s > 0 and self.reconnect_period_s > 0):
            return "frame_timeout_s and reconnect_period_s must be positive"
        if not (math.isfinite(self.horizontal_fov_deg) and 0 < self.horizontal_fov_deg < 180):
            return f"horizontal_fov_deg must be within (0, 180), got {self.horizontal_fov_deg:g}"
        return None

    def make_source(self) -> FrameSource:
        """The frame source these settings describe; ValueError for an unusable one."""
        return make_source(self.source, serial=self.serial, color_profile=self.color_profile,
                           depth_profile=self.depth_profile, enable_depth=self.enable_depth,
                           align_depth=self.align_depth, path=self.file_path, device=self.video_device,
                           loop=self.loop, real_time=self.real_time, horizontal_fov_deg=self.horizontal_fov_deg)
