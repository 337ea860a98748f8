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
The parameters are :class:`dexwm_ros.camera_settings.CameraSettings`; the capture thread and its
reconnect rule are :class:`dexwm_ros.camera_capture.FrameStream`.
"""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from camera_driver.sources import Frame, Intrinsics
from dexwm_ros.camera_capture import FrameStream
from dexwm_ros.camera_settings import CameraSettings
from dexwm_ros.image_conversion import numpy_to_image, to_time_msg
from dexwm_ros.image_transport import use_large_image_profile
from dexwm_ros.node_main import run_node
from dexwm_ros.node_parameters import NodeParameters

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
        s = self.settings = NodeParameters(self, CameraSettings).values
        self.source = s.make_source()
        self.color_pub = self.create_publisher(Image, "~/color/image_raw", IMAGE_QOS)
        self.info_pub = self.create_publisher(CameraInfo, "~/color/camera_info", IMAGE_QOS)
        if s.enable_depth:
            base = "~/aligned_depth_to_color" if s.align_depth else "~/depth"
            name = "image_raw" if s.align_depth else "image_rect_raw"
            self.depth_pub = self.create_publisher(Image, f"{base}/{name}", IMAGE_QOS)
            self.depth_info_pub = self.create_publisher(CameraInfo, f"{base}/camera_info", IMAGE_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.stream = FrameStream(self.source, self._publish, s.frame_timeout_s, s.reconnect_period_s,
                                  on_error=self._on_error, on_open=self._on_open, keep_running=self.context.ok)
        # Ctrl-C shuts the context down before destroy_node runs: stop publishing from then on.
        self.context.on_shutdown(self.stream.request_stop)
        self.stream.start()

    def _on_error(self, text: str):
        self.get_logger().error(text)
        self._publish_diagnostics()

    def _on_open(self, description: str):
        self.get_logger().info(f"streaming from {description}")

    def _publish(self, frame: Frame):
        stamp, frame_id = to_time_msg(frame.stamp), self.settings.frame_id
        self.color_pub.publish(numpy_to_image(frame.color, stamp, frame_id, "rgb8"))
        self.info_pub.publish(camera_info_msg(frame.intrinsics, stamp, frame_id))
        if self.settings.enable_depth and frame.depth is not None:
            self.depth_pub.publish(numpy_to_image(frame.depth, stamp, frame_id, "16UC1"))
            self.depth_info_pub.publish(camera_info_msg(frame.depth_intrinsics or frame.intrinsics, stamp, frame_id))

    def _publish_diagnostics(self):
        st = self.stream.status()
        status = DiagnosticStatus(name="camera: frames", hardware_id=self.source.describe())
        if st.error:
            status.level, status.message = DiagnosticStatus.ERROR, st.error
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"streaming at {st.rate_hz:.1f} Hz" if st.streaming else "opening"
        status.values = [KeyValue(key="source", value=self.source.describe()),
                         KeyValue(key="frames_published", value=str(st.published)),
                         KeyValue(key="rate_hz", value=f"{st.rate_hz:.2f}"),
                         KeyValue(key="reconnect_attempts", value=str(st.reconnects))]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)

    def destroy_node(self):
        if hasattr(self, "stream"):  # else the constructor failed part-way
            self.stream.stop()
        super().destroy_node()


def main(args=None) -> int:
    # Before rclpy.init: Fast DDS reads its profile when the context starts (image_transport.py says why).
    note = use_large_image_profile()
    return run_node("camera", lambda: CameraNode(note), args, num_threads=1)


if __name__ == "__main__":
    raise SystemExit(main())
