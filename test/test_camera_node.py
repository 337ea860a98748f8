"""The real `camera` node playing a librealsense recording and an OpenCV video, seen by a ROS subscriber."""
from __future__ import annotations

import time

import numpy as np
import pytest
from rosutil import SpinThread, node_command, process, wait_for

from camera_driver.sources import Intrinsics, record_realsense_file

pytestmark = pytest.mark.timeout(120)

W, H, N = 160, 120, 8
INTR = Intrinsics(W, H, 130.0, 131.0, 79.5, 60.25, "plumb_bob", [0.0] * 5)


def recorded_frames():
    colors = []
    for k in range(N):
        c = np.zeros((H, W, 3), np.uint8)
        c[..., 0] = 30 * k
        c[..., 1] = np.arange(W, dtype=np.uint8)[None, :]
        c[..., 2] = np.arange(H, dtype=np.uint8)[:, None]
        colors.append(c)
    depths = [np.full((H, W), 500 + k, np.uint16) for k in range(N)]
    return colors, depths


class Listener:
    def __init__(self, context, depth: bool = False):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CameraInfo, Image

        from dexwm_ros.camera_node import IMAGE_QOS

        self.node = rclpy.create_node("camera_test_listener", context=context)
        self.images, self.infos, self.depths, self.diagnostics = [], [], [], []
        self.arrival: list[float] = []

        def on_image(msg):
            self.arrival.append(time.time())
            self.images.append(msg)

        self.node.create_subscription(Image, "/camera/camera/color/image_raw", on_image, IMAGE_QOS)
        self.node.create_subscription(CameraInfo, "/camera/camera/color/camera_info", self.infos.append, IMAGE_QOS)
        if depth:
            self.node.create_subscription(Image, "/camera/camera/aligned_depth_to_color/image_raw",
                                          self.depths.append, IMAGE_QOS)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.spin = SpinThread(SingleThreadedExecutor(context=context), self.node)

    def diag_messages(self, level=None):
        return [s.message for d in list(self.diagnostics) for s in d.status
                if s.name.startswith("camera") and (level is None or s.level == level)]

    def close(self):
        self.spin.close()


@pytest.fixture
def listener_factory(rclpy_context):
    made = []

    def make(**kw):
        made.append(Listener(rclpy_context, **kw))
        return made[-1]
    yield make
    for item in made:
        item.close()


def test_recording_played_by_the_node(tmp_path, node_env, listener_factory):
    from dexwm_ros.image_conversion import depth_to_numpy, image_to_numpy

    colors, depths = recorded_frames()
    path = tmp_path / "clip.db3"
    record_realsense_file(str(path), colors, depths, fps=30, color_intrinsics=INTR, depth_intrinsics=INTR)
    listener = listener_factory(depth=True)
    cmd = node_command("camera", "-r", "__ns:=/camera", "-p", "source:=file", "-p", f"file_path:={path}",
                       "-p", "enable_depth:=true")
    with process(cmd, node_env, tmp_path / "camera.log") as proc:
        wait_for(lambda: len(listener.images) >= 12 and len(listener.depths) >= 6, 30, what="played-back frames")
        assert proc.poll() is None
    assert proc.returncode == 0, (tmp_path / "camera.log").read_text()[-2000:]
    for msg, arrived in zip(listener.images, listener.arrival):
        rgb = image_to_numpy(msg)
        k = int(rgb[0, 0, 0]) // 30
        assert msg.encoding == "rgb8" and msg.header.frame_id == "camera_color_optical_frame"
        assert np.array_equal(rgb, colors[k]), f"pixels of frame {k} differ"
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        assert 0 <= arrived - stamp < 2.0  # stamped with the (wall-clock) capture time
    info = listener.infos[-1]
    assert (info.width, info.height, info.distortion_model) == (W, H, "plumb_bob")
    assert np.allclose(np.array(info.k).reshape(3, 3), INTR.K, atol=1e-4)
    assert np.allclose(info.p[:3], [INTR.fx, 0, INTR.cx], atol=1e-4)
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in listener.images}
    assert (info.header.stamp.sec, info.header.stamp.nanosec) in stamps
    for msg in listener.depths:
        z = depth_to_numpy(msg)
        assert msg.encoding == "16UC1" and z.shape == (H, W)
        assert 500 <= int(np.median(z)) < 500 + N


def make_video(path, n=15, w=96, h=64):
    import cv2
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
    for k in range(n):
        c = np.zeros((h, w, 3), np.uint8)
        c[:, :] = (220, 16 * k, 40)  # RGB
        out.write(c[:, :, ::-1].copy())
    out.release()


def test_video_node_reports_stopped_frames_and_reconnects(tmp_path, node_env, listener_factory):
    from diagnostic_msgs.msg import DiagnosticStatus

    from dexwm_ros.image_conversion import image_to_numpy

    path = tmp_path / "clip.avi"
    make_video(path)
    listener = listener_factory()
    # loop:=false: the video ends after 0.5 s, frames stop, the node reports it and reopens the file.
    cmd = node_command("camera", "-r", "__ns:=/camera", "-p", "source:=opencv", "-p", f"video_device:={path}",
                       "-p", "loop:=false", "-p", "frame_timeout_s:=0.5", "-p", "reconnect_period_s:=0.5",
                       "-p", "horizontal_fov_deg:=90.0")
    with process(cmd, node_env, tmp_path / "camera.log") as proc:
        wait_for(lambda: listener.images, 30, what="video frames")
        wait_for(lambda: any("no frames from video file" in m and str(path) in m
                             for m in listener.diag_messages(DiagnosticStatus.ERROR)), 10, what="ERROR diagnostics")
        n = len(listener.images)
        wait_for(lambda: len(listener.images) > n + 3, 10, what="frames after the reconnect")
        assert proc.poll() is None
    assert proc.returncode == 0
    rgb = image_to_numpy(listener.images[0])
    assert rgb.shape == (64, 96, 3) and abs(int(rgb[10, 10, 0]) - 220) < 12  # red channel is red
    assert listener.infos[-1].k[0] == pytest.approx(48.0)


def test_missing_recording_is_reported_and_node_stays_up(tmp_path, node_env, listener_factory):
    from diagnostic_msgs.msg import DiagnosticStatus

    listener = listener_factory()
    missing = tmp_path / "no_such_recording.db3"
    cmd = node_command("camera", "-r", "__ns:=/camera", "-p", "source:=file", "-p", f"file_path:={missing}",
                       "-p", "reconnect_period_s:=0.5")
    with process(cmd, node_env, tmp_path / "camera.log") as proc:
        wait_for(lambda: any(str(missing) in m and "not found" in m
                             for m in listener.diag_messages(DiagnosticStatus.ERROR)), 20, what="ERROR naming the file")
        time.sleep(1.0)
        assert proc.poll() is None
    assert proc.returncode == 0
    assert not listener.images
