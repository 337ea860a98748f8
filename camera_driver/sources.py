"""ROS-free camera frame sources behind one small interface: ``open()``, ``read(timeout_s)``, ``close()``.

- :class:`RealSenseSource`: a live RealSense through pyrealsense2 (serial number, colour/depth
  profiles "WxHxFPS", depth aligned to colour, intrinsics from the device).
- :class:`RealSenseFileSource`: a recording made by librealsense (``rs.recorder`` / realsense-viewer:
  rosbag2 ``.db3`` or ROS 1 ``.bag``), played back through a pipeline with
  ``config.enable_device_from_file``: the same code path as the live camera.
- :class:`OpenCVSource`: a video file or a webcam (device index) through OpenCV; its intrinsics are
  unknown, so a pinhole model from a horizontal field of view stands in (documented per parameter).

Frames are RGB uint8 (H, W, 3); depth is uint16 millimetres (REP 118, the realsense-ros convention).
``Frame.stamp`` is the capture time in seconds since the epoch: the device's global/system
timestamp when the camera provides one, otherwise the host time at which the frame arrived.
"""
from __future__ import annotations

import abc
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


class SourceError(RuntimeError):
    """The source cannot deliver frames (missing device/file, failed open); the message says what was looked for."""


@dataclass
class Intrinsics:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    coeffs: list = field(default_factory=lambda: [0.0] * 5)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    @staticmethod
    def from_fov(width: int, height: int, horizontal_fov_deg: float) -> "Intrinsics":
        """Square-pixel pinhole camera with the principal point at the image centre."""
        f = (width / 2.0) / math.tan(math.radians(horizontal_fov_deg) / 2.0)
        return Intrinsics(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0)


@dataclass
class Frame:
    color: np.ndarray                # (H, W, 3) uint8 RGB
    stamp: float                     # capture time, seconds since the epoch
    intrinsics: Intrinsics           # of the colour image
    depth: Optional[np.ndarray] = None  # (H, W) uint16 millimetres, aligned to colour when asked
    depth_intrinsics: Optional[Intrinsics] = None
    index: int = 0                   # frame number reported by the source


class FrameSource(abc.ABC):
    """open() -> read(timeout) ... -> close(). read() returns None when no frame came in time."""

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def read(self, timeout_s: float = 1.0) -> Optional[Frame]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def describe(self) -> str: ...

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


_PROFILE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_profile(text: str) -> tuple[int, int, int]:
    """'640x480x30' -> (640, 480, 30); ValueError naming the expected form otherwise."""
    m = _PROFILE.match(text or "")
    if not m or min(int(g) for g in m.groups()) <= 0:
        raise ValueError(f"stream profile must look like WIDTHxHEIGHTxFPS (e.g. 640x480x30), got {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


# ------------------------------------------------------------------------------------------------
# RealSense (live device and recorded file share the pipeline code)


def _rs():
    import pyrealsense2 as rs
    return rs


def _intrinsics_from_rs(profile) -> Intrinsics:
    rs = _rs()
    i = profile.as_video_stream_profile().get_intrinsics()
    # librealsense's Brown-Conrady / inverse Brown-Conrady both carry k1 k2 p1 p2 k3 like plumb_bob.
    model = "plumb_bob" if i.model in (rs.distortion.brown_conrady, rs.distortion.inverse_brown_conrady,
                                       rs.distortion.modified_brown_conrady, rs.distortion.none) else "equidistant"
    return Intrinsics(i.width, i.height, i.fx, i.fy, i.ppx, i.ppy, model, list(i.coeffs))


class _RealSensePipelineSource(FrameSource):
    def __init__(self, enable_depth: bool = False, align_depth: bool = True):
        self.enable_depth = enable_depth
        self.align_depth = align_depth
        self._pipeline = None
        self._align = None
        self._color_intr: Optional[Intrinsics] = None
        self._depth_intr: Optional[Intrinsics] = None
        self._depth_scale_mm = 1.0
        self._live = True

    def _configure(self, config) -> None:
        raise NotImplementedError

    def _before_start(self, config, pipeline) -> None:
        pass

    def open(self) -> None:
        rs = _rs()
        self.close()
        config = rs.config()
        self._configure(config)
        pipeline = rs.pipeline()
        try:
            self._before_start(config, pipeline)
            profile = pipeline.start(config)
        except RuntimeError as exc:
            raise SourceError(f"cannot start {self.describe()}: {exc}") from exc
        try:
            self._color_intr = _intrinsics_from_rs(profile.get_stream(rs.stream.color))
            if self.enable_depth:
                depth_profile = profile.get_stream(rs.stream.depth)
                self._depth_intr = self._color_intr if self.align_depth else _intrinsics_from_rs(depth_profile)
                scale = profile.get_device().first_depth_sensor().get_depth_scale()  # metres per unit
                self._depth_scale_mm = float(scale) * 1000.0
                self._align = rs.align(rs.stream.color) if self.align_depth else None
        except RuntimeError as exc:
            pipeline.stop()
            raise SourceError(f"{self.describe()} has no usable colour{'/depth' if self.enable_depth else ''} "
                              f"stream: {exc}") from exc
        self._pipeline = pipeline

    def read(self, timeout_s: float = 1.0) -> Optional[Frame]:
        rs = _rs()
        if self._pipeline is None:
            raise SourceError(f"{self.describe()} is not open")
        ok, frames = self._pipeline.try_wait_for_frames(max(1, int(timeout_s * 1000)))
        arrived = time.time()
        if not ok:
            return None
        if self._align is not None:
            frames = self._align.process(frames)
        color = frames.get_color_frame()
        if not color:
            return None
        image = np.asanyarray(color.get_data())
        fmt = color.get_profile().format()
        if fmt == rs.format.bgr8:
            image = image[:, :, ::-1]
        elif fmt in (rs.format.rgba8, rs.format.bgra8):
            image = image[:, :, :3] if fmt == rs.format.rgba8 else image[:, :, 2::-1]
        elif fmt != rs.format.rgb8:
            raise SourceError(f"{self.describe()}: unsupported colour format {fmt}")
        stamp = arrived
        if self._live and color.get_frame_timestamp_domain() in (rs.timestamp_domain.global_time,
                                                                  rs.timestamp_domain.system_time):
            stamp = color.get_timestamp() / 1000.0
        frame = Frame(np.ascontiguousarray(image), stamp, self._color_intr, index=color.get_frame_number())
        if self.enable_depth:
            depth = frames.get_depth_frame()
            if depth:
                z = np.asanyarray(depth.get_data())
                if abs(self._depth_scale_mm - 1.0) > 1e-6:
                    z = np.clip(np.rint(z * self._depth_scale_mm), 0, 65535).astype(np.uint16)
                frame.depth = np.ascontiguousarray(z, dtype=np.uint16)
                frame.depth_intrinsics = self._depth_intr
        return frame

    def close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError:
                pass  # already stopped (device unplugged)
            self._pipeline = None


class RealSenseSource(_RealSensePipelineSource):
    """A live RealSense camera; ``serial`` empty takes the first device found."""

    def __init__(self, serial: str = "", color_profile: str = "640x480x30", depth_profile: str = "640x480x30",
                 enable_depth: bool = False, align_depth: bool = True):
        super().__init__(enable_depth, align_depth)
        self.serial = serial
        self.color_profile = parse_profile(color_profile)
        self.depth_profile = parse_profile(depth_profile)

    def describe(self) -> str:
        return f"RealSense camera {'serial ' + self.serial if self.serial else '(first device found)'}"

    def _configure(self, config) -> None:
        rs = _rs()
        found = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
        if not found:
            raise SourceError(f"no RealSense device found while looking for {self.describe()} "
                              "(check the USB 3 cable and udev rules)")
        if self.serial and self.serial not in found:
            raise SourceError(f"RealSense serial {self.serial} not found; connected: {', '.join(found)}")
        if self.serial:
            config.enable_device(self.serial)
        w, h, fps = self.color_profile
        config.enable_stream(rs.stream.color, w, h, rs.format.rgb8, fps)
        if self.enable_depth:
            w, h, fps = self.depth_profile
            config.enable_stream(rs.stream.depth, w, h, rs.format.z16, fps)


class RealSenseFileSource(_RealSensePipelineSource):
    """Playback of a librealsense recording (.db3 rosbag2 or .bag), at the recorded rate by default."""

    def __init__(self, path: str, loop: bool = True, real_time: bool = True, enable_depth: bool = False,
                 align_depth: bool = True):
        super().__init__(enable_depth, align_depth)
        self.path = str(path)
        self.loop = loop
        self.real_time = real_time
        self._live = False  # recorded device timestamps are not wall-clock times

    def describe(self) -> str:
        return f"RealSense recording {self.path}"

    def _configure(self, config) -> None:
        rs = _rs()
        if not os.path.isfile(self.path):
            raise SourceError(f"RealSense recording not found: {os.path.abspath(self.path)}")
        config.enable_device_from_file(self.path, repeat_playback=self.loop)
        config.enable_stream(rs.stream.color)
        if self.enable_depth:
            config.enable_stream(rs.stream.depth)

    def _before_start(self, config, pipeline) -> None:
        # The playback mode must be set before streaming starts: set after pipeline.start, a busy
        # machine has already played (and dropped) the first frame in real time. The pipeline starts
        # the device the config resolved here (librealsense caches the resolved profile).
        device = config.resolve(_rs().pipeline_wrapper(pipeline)).get_device()
        device.as_playback().set_real_time(self.real_time)


# ------------------------------------------------------------------------------------------------
# OpenCV: video files and webcams


class OpenCVSource(FrameSource):
    """A video file (path) or webcam (integer index / '/dev/videoN') through OpenCV.

    OpenCV cannot report a lens model: the intrinsics come from ``horizontal_fov_deg`` (default
    69.4 deg, a RealSense D435's colour camera) unless ``intrinsics`` is given. Video files play at
    their own frame rate (``real_time``) and start over at the end when ``loop`` is true.
    """

    def __init__(self, device: str, width: int = 0, height: int = 0, fps: float = 0.0, loop: bool = True,
                 real_time: bool = True, horizontal_fov_deg: float = 69.4,
                 intrinsics: Optional[Intrinsics] = None):
        self.device = str(device)
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.loop, self.real_time = loop, real_time
        if not 1.0 < horizontal_fov_deg < 179.0:
            raise ValueError(f"horizontal_fov_deg must be in (1, 179), got {horizontal_fov_deg}")
        self.horizontal_fov_deg = horizontal_fov_deg
        self._given_intrinsics = intrinsics
        self._cap = None
        self._is_file = not (self.device.isdigit() or self.device.startswith("/dev/video"))
        self._period = 0.0
        self._next_time = 0.0
        self._intr: Optional[Intrinsics] = None

    def describe(self) -> str:
        return f"video file {self.device}" if self._is_file else f"webcam {self.device}"

    def open(self) -> None:
        import cv2

        self.close()
        if self._is_file and not os.path.isfile(self.device):
            raise SourceError(f"video file not found: {os.path.abspath(self.device)}")
        cap = cv2.VideoCapture(int(self.device) if self.device.isdigit() else self.device)
        if not cap.isOpened():
            raise SourceError(f"OpenCV cannot open {self.describe()}")
        if not self._is_file:
            if self.width and self.height:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
        fps = self.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0
        self._period = 1.0 / fps if (self._is_file and self.real_time) else 0.0
        self._next_time = time.monotonic()
        self._cap = cap
        self._intr = self._given_intrinsics

    def read(self, timeout_s: float = 1.0) -> Optional[Frame]:
        import cv2

        if self._cap is None:
            raise SourceError(f"{self.describe()} is not open")
        if self._period:
            delay = self._next_time - time.monotonic()
            if delay > timeout_s:
                time.sleep(timeout_s)
                return None
            if delay > 0:
                time.sleep(delay)
            self._next_time = max(self._next_time + self._period, time.monotonic() - self._period)
        ok, bgr = self._cap.read()
        if not ok and self._is_file and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if not ok:
            return None
        stamp = time.time()
        index = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES)) - 1
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        if self._is_file and self.width and self.height and (bgr.shape[1], bgr.shape[0]) != (self.width, self.height):
            bgr = cv2.resize(bgr, (self.width, self.height), interpolation=cv2.INTER_AREA)
        h, w = bgr.shape[:2]
        if self._intr is None or (self._intr.width, self._intr.height) != (w, h):
            self._intr = Intrinsics.from_fov(w, h, self.horizontal_fov_deg)
        return Frame(np.ascontiguousarray(bgr[:, :, ::-1]), stamp, self._intr, index=index)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def make_source(kind: str, **kw) -> FrameSource:
    """Build a source by name: 'realsense', 'file' (RealSense recording) or 'opencv'."""
    if kind == "realsense":
        return RealSenseSource(kw.get("serial", ""), kw.get("color_profile", "640x480x30"),
                               kw.get("depth_profile", "640x480x30"), kw.get("enable_depth", False),
                               kw.get("align_depth", True))
    if kind == "file":
        if not kw.get("path"):
            raise ValueError("source 'file' needs file_path (a librealsense .db3/.bag recording)")
        return RealSenseFileSource(kw["path"], kw.get("loop", True), kw.get("real_time", True),
                                   kw.get("enable_depth", False), kw.get("align_depth", True))
    if kind == "opencv":
        if str(kw.get("device", "")) == "":
            raise ValueError("source 'opencv' needs video_device (a video file path or a webcam index)")
        return OpenCVSource(kw["device"], kw.get("width", 0), kw.get("height", 0), kw.get("fps", 0.0),
                            kw.get("loop", True), kw.get("real_time", True), kw.get("horizontal_fov_deg", 69.4))
    raise ValueError(f"unknown camera source {kind!r} (choose realsense, file or opencv)")


# ------------------------------------------------------------------------------------------------
# Recording with librealsense itself (test fixtures, demos without a camera)


def record_realsense_file(path: str, colors: list, depths: Optional[list] = None, fps: int = 30,
                          color_intrinsics: Optional[Intrinsics] = None,
                          depth_intrinsics: Optional[Intrinsics] = None, depth_units: float = 0.001) -> None:
    """Write a RealSense recording of the given RGB (and z16 depth) frames with ``rs.software_device``
    + ``rs.recorder``: the file librealsense itself writes, so playback exercises the real reader."""
    rs = _rs()
    h, w = colors[0].shape[:2]
    ci = color_intrinsics or Intrinsics.from_fov(w, h, 69.4)
    di = depth_intrinsics or ci

    def rs_intr(i: Intrinsics):
        r = rs.intrinsics()
        r.width, r.height, r.fx, r.fy, r.ppx, r.ppy = i.width, i.height, i.fx, i.fy, i.cx, i.cy
        r.model, r.coeffs = rs.distortion.brown_conrady, list(i.coeffs)
        return r

    device = rs.software_device()
    color_sensor = device.add_sensor("RGB Camera")
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp = rs.stream.color, 0, 0, w, h, fps, 3
    vs.fmt, vs.intrinsics = rs.format.rgb8, rs_intr(ci)
    color_profile = color_sensor.add_video_stream(vs)
    sensors = [(color_sensor, color_profile)]
    depth_profile = None
    if depths is not None:
        depth_sensor = device.add_sensor("Stereo Module")
        ds = rs.video_stream()
        ds.type, ds.index, ds.uid, ds.width, ds.height, ds.fps, ds.bpp = (rs.stream.depth, 0, 1, depths[0].shape[1],
                                                                          depths[0].shape[0], fps, 2)
        ds.fmt, ds.intrinsics = rs.format.z16, rs_intr(di)
        depth_profile = depth_sensor.add_video_stream(ds)
        depth_sensor.add_read_only_option(rs.option.depth_units, depth_units)
        ext = rs.extrinsics()
        ext.rotation, ext.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
        depth_profile.register_extrinsics_to(color_profile, ext)
        color_profile.register_extrinsics_to(depth_profile, ext)
        sensors.append((depth_sensor, depth_profile))
    recorder = rs.recorder(str(path), device)
    queue = rs.frame_queue(len(colors) * 2 + 4)
    for sensor, profile in sensors:
        sensor.open(profile)
        sensor.start(queue)
    for k, rgb in enumerate(colors):
        ts = k * 1000.0 / fps
        f = rs.software_video_frame()
        f.pixels, f.stride, f.bpp = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes(), w * 3, 3
        f.timestamp, f.domain, f.frame_number = ts, rs.timestamp_domain.hardware_clock, k
        f.profile = color_profile.as_video_stream_profile()
        color_sensor.on_video_frame(f)
        if depth_profile is not None:
            z = np.ascontiguousarray(depths[k], dtype=np.uint16)
            g = rs.software_video_frame()
            g.pixels, g.stride, g.bpp = z.tobytes(), z.shape[1] * 2, 2
            g.timestamp, g.domain, g.frame_number = ts, rs.timestamp_domain.hardware_clock, k
            g.profile, g.depth_units = depth_profile.as_video_stream_profile(), depth_units
            sensors[1][0].on_video_frame(g)
        time.sleep(1.0 / fps)  # the recorder stamps by arrival; keep the recorded rate real
    for sensor, _ in sensors:
        sensor.stop()
        sensor.close()
    del recorder  # the recorder writes the file when destroyed
