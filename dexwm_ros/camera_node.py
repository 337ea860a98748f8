"""ROS 2 node ``camera`` (namespace ``camera``): publishes frames of a :mod:`camera_driver.sources`
source with the realsense-ros topic layout, so a stock RealSense driver can stand in for it:

- ``/camera/camera/color/image_raw`` (sensor_msgs/Image rgb8) and ``.../color/camera_info``;
- with ``enable_depth``: ``/camera/camera/aligned_depth_to_color/image_raw`` (16UC1, mm) and its
  ``camera_info`` when ``align_depth`` (default), else ``.../depth/image_rect_raw``;
- ``/diagnostics``: source, frame rate, errors, reconnect attempts.

Images use RELIABLE QoS (best effort loses most 640x480 frames) and carry the capture time. The
process loads config/fastdds_large_images.xml (a shared-memory segment large enough for whole
frames; unless ``FASTDDS_DEFAULT_PROFILES_FILE`` names the user's own profile): 640x480 frames then
reach another process in about 3 ms instead of 13 (``dexwm-bench camera``).
Sources (parameter ``source``): ``realsense`` (``serial``, ``color_profile``/``depth_profile``
"WxHxFPS"), ``file`` (``file_path``: a librealsense .db3/.bag recording) and ``opencv``
(``video_device``: a video file or webcam index). Frames run in a capture thread; when they stop
for ``frame_timeout_s`` the node reports an error and reopens the source every
``reconnect_period_s`` (a missing device or file is reported by name); it never exits on its own.
"""
from __future__ import annotations

import threading
import time


from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import ParameterDescriptor
from sensor_msgs.msg import CameraInfo, Image

from camera_driver.sources import Intrinsics, SourceError, make_source, parse_profile
from dexwm_ros.image_conversion import numpy_to_image, to_time_msg
from dexwm_ros.image_transport import use_large_image_profile
from dexwm_ros.node_main import run_node

IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)


def camera_info_msg(intr: Intrinsics, stamp, frame_id: str) -> CameraInfo:
    msg = CameraInfo()
    msg.header.stamp = to_time_msg(stamp)
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(intr.width), int(intr.height)
    msg.distortion_model = intr.distortion_model
    msg.d = [float(c) for c in intr.coeffs]
    msg.k = [float(intr.fx), 0.0, float(intr.cx), 0.0, float(intr.fy), float(intr.cy), 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [float(intr.fx), 0.0, float(intr.cx), 0.0, 0.0, float(intr.fy), float(intr.cy), 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


class CameraNode(Node):
    def __init__(self, transport_note: str = ""):
        super().__init__("camera")
        if transport_note:
            self.get_logger().info(transport_note)
        d = lambda text, **kw: ParameterDescriptor(description=text, read_only=True, **kw)  # noqa: E731
        p = self.declare_parameter
        p("source", "realsense", d("frame source: realsense, file (RealSense recording) or opencv"))
        p("serial", "", d("RealSense serial number; empty takes the first device found"))
        p("color_profile", "640x480x30", d("RealSense colour stream WIDTHxHEIGHTxFPS"))
        p("depth_profile", "640x480x30", d("RealSense depth stream WIDTHxHEIGHTxFPS"))
        p("enable_depth", False, d("publish depth (16UC1, millimetres)"))
        p("align_depth", True, d("align depth to the colour image (aligned_depth_to_color topics)"))
        p("file_path", "", d("RealSense recording (.db3 / .bag) for source:=file"))
        p("video_device", "", d("video file path or webcam index for source:=opencv"))
        p("loop", True, d("restart a recording / video file at its end"))
        p("real_time", True, d("play recordings at their recorded rate (false: as fast as possible)"))
        p("horizontal_fov_deg", 69.4, d("opencv source: assumed horizontal field of view for camera_info"))
        p("frame_id", "camera_color_optical_frame", d("frame_id of the published images"))
        p("frame_timeout_s", 2.0, d("no frame for this long -> error on /diagnostics and reconnect [s]"))
        p("reconnect_period_s", 2.0, d("seconds between attempts to (re)open the source"))

        g = lambda name: self.get_parameter(name).value  # noqa: E731
        self.kind = g("source")
        parse_profile(g("color_profile"))  # fail early on a malformed profile, naming it
        parse_profile(g("depth_profile"))
        self.enable_depth, self.align_depth = bool(g("enable_depth")), bool(g("align_depth"))
        self.source = make_source(
            self.kind, serial=g("serial"), color_profile=g("color_profile"), depth_profile=g("depth_profile"),
            enable_depth=self.enable_depth, align_depth=self.align_depth, path=g("file_path"),
            device=g("video_device"), loop=g("loop"), real_time=g("real_time"),
            horizontal_fov_deg=g("horizontal_fov_deg"))
        self.frame_id = g("frame_id")
        self.frame_timeout_s = float(g("frame_timeout_s"))
        self.reconnect_period_s = float(g("reconnect_period_s"))
        if not (self.frame_timeout_s > 0 and self.reconnect_period_s > 0):
            raise ValueError("frame_timeout_s and reconnect_period_s must be positive")

        self.color_pub = self.create_publisher(Image, "~/color/image_raw", IMAGE_QOS)
        self.info_pub = self.create_publisher(CameraInfo, "~/color/camera_info", IMAGE_QOS)
        if self.enable_depth:
            base = "~/aligned_depth_to_color" if self.align_depth else "~/depth"
            name = "image_raw" if self.align_depth else "image_rect_raw"
            self.depth_pub = self.create_publisher(Image, f"{base}/{name}", IMAGE_QOS)
            self.depth_info_pub = self.create_publisher(CameraInfo, f"{base}/camera_info", IMAGE_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)

        self._lock = threading.Lock()
        self._error = ""
        self._open = False
        self._published = 0
        self._rate_window: list[float] = []
        self._reconnects = 0
        self._running = threading.Event()
        self._running.set()
        # Ctrl-C shuts the context down before destroy_node runs: stop publishing from then on.
        self.context.on_shutdown(self._running.clear)
        self._thread = threading.Thread(target=self._capture_loop, name="camera_capture", daemon=True)
        self._thread.start()

    # ---- capture ---------------------------------------------------------------------------------
    def _set_error(self, text: str):
        with self._lock:
            changed = text != self._error
            self._error = text
        if changed and text:
            self.get_logger().error(text)
            self._publish_diagnostics()

    def _capture_loop(self):
        try:
            self._capture()
        except Exception as exc:
            if self._running.is_set() and self.context.ok():
                raise
            # publishing raced with shutdown: nothing to report
            del exc

    def _capture(self):
        next_attempt = 0.0
        last_frame = time.monotonic()
        while self._running.is_set():
            now = time.monotonic()
            if not self._open:
                if now < next_attempt:
                    time.sleep(min(0.05, next_attempt - now))
                    continue
                try:
                    self.source.open()
                except (SourceError, ValueError, RuntimeError) as exc:
                    self._set_error(f"{exc}; retrying every {self.reconnect_period_s:g} s")
                    next_attempt = now + self.reconnect_period_s
                    self._reconnects += 1
                    continue
                self._open = True
                last_frame = time.monotonic()
                self.get_logger().info(f"streaming from {self.source.describe()}")
            try:
                frame = self.source.read(timeout_s=min(0.5, self.frame_timeout_s))
            except (SourceError, RuntimeError) as exc:
                frame = None
                self._set_error(f"{self.source.describe()} failed: {exc}")
                last_frame = -float("inf")
            if frame is None:
                silent = time.monotonic() - last_frame
                if silent > self.frame_timeout_s:
                    if last_frame != -float("inf"):
                        self._set_error(f"no frames from {self.source.describe()} for {silent:.1f} s; reconnecting")
                    self.source.close()
                    self._open = False
                    next_attempt = time.monotonic() + self.reconnect_period_s
                    self._reconnects += 1
                continue
            last_frame = time.monotonic()
            self._publish(frame)
            with self._lock:
                self._error = ""

    def _publish(self, frame):
        stamp = to_time_msg(frame.stamp)
        image = numpy_to_image(frame.color, stamp, self.frame_id, "rgb8")
        self.color_pub.publish(image)
        self.info_pub.publish(camera_info_msg(frame.intrinsics, stamp, self.frame_id))
        if self.enable_depth and frame.depth is not None:
            self.depth_pub.publish(numpy_to_image(frame.depth, stamp, self.frame_id, "16UC1"))
            self.depth_info_pub.publish(camera_info_msg(frame.depth_intrinsics or frame.intrinsics, stamp,
                                                        self.frame_id))
        with self._lock:
            self._published += 1
            t = time.monotonic()
            self._rate_window = [x for x in self._rate_window if t - x < 2.0] + [t]

    def _publish_diagnostics(self):
        with self._lock:
            error, published, window = self._error, self._published, list(self._rate_window)
        rate = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 and window[-1] > window[0] else 0.0
        status = DiagnosticStatus(name="camera: frames", hardware_id=self.source.describe())
        if error:
            status.level, status.message = DiagnosticStatus.ERROR, error
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"streaming at {rate:.1f} Hz" if self._open else "opening"
        status.values = [KeyValue(key="source", value=self.source.describe()),
                         KeyValue(key="frames_published", value=str(published)),
                         KeyValue(key="rate_hz", value=f"{rate:.2f}"),
                         KeyValue(key="reconnect_attempts", value=str(self._reconnects))]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)

    def destroy_node(self):
        if not hasattr(self, "_running"):  # the constructor failed part-way
            return super().destroy_node()
        self._running.clear()
        self._thread.join(timeout=5.0)
        self.source.close()
        super().destroy_node()


def main(args=None) -> int:
    # Before rclpy.init: Fast DDS reads its profile when the context starts (image_transport.py says why).
    note = use_large_image_profile()
    return run_node("camera", lambda: CameraNode(note), args, num_threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
