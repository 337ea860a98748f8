"""FrameStream, the camera node's capture thread, on a real OpenCV video source: frames delivered
with a rate, the end of a non-looping video reported and the file reopened, a missing file reported
by name and retried, and a stop that ends the thread at once."""
from __future__ import annotations

import threading
import time

from rosutil import wait_for
from test_camera_node import make_video

from dexwm_ros.camera_capture import FrameStream
from camera_driver.sources import make_source


def stream_of(path, frames, errors, **kw):
    source = make_source("opencv", device=str(path), loop=False, real_time=True)
    return FrameStream(source, frames.append, 0.5, 0.3, on_error=errors.append, on_open=lambda _d: None, **kw)


def test_frames_flow_then_stop_and_the_source_is_reopened(tmp_path):
    path = tmp_path / "clip.avi"
    make_video(path, n=10)
    frames, errors = [], []
    stream = stream_of(path, frames, errors)
    stream.start()
    try:
        wait_for(lambda: len(frames) >= 5, 20, what="frames")
        assert stream.status().rate_hz > 5 and stream.status().streaming
        wait_for(lambda: any("no frames from video file" in e for e in errors), 10, what="the end reported")
        n = len(frames)
        wait_for(lambda: len(frames) > n + 3, 10, what="frames after the reopen")
        status = stream.status()
        assert status.reconnects >= 1 and status.error == "" and status.published == len(frames)
    finally:
        t0 = time.monotonic()
        stream.stop()
        assert time.monotonic() - t0 < 2.0
    assert not stream._thread.is_alive()


def test_a_missing_file_is_reported_by_name_and_retried_until_stopped(tmp_path):
    missing = tmp_path / "missing.avi"
    frames, errors = [], []
    stream = stream_of(missing, frames, errors)
    stream.start()
    wait_for(lambda: stream.status().reconnects >= 2, 10, what="retries")
    assert str(missing) in stream.status().error and len(errors) == 1     # reported once while it lasts
    stream.request_stop()
    wait_for(lambda: not stream._thread.is_alive(), 2, what="the thread to end at once")
    assert frames == []


def test_a_delivery_error_after_the_consumer_went_away_is_not_raised(tmp_path):
    path = tmp_path / "clip.avi"
    make_video(path, n=10)
    going = threading.Event()

    def deliver(_frame):
        going.set()
        raise RuntimeError("publisher destroyed")
    stream = FrameStream(make_source("opencv", device=str(path)), deliver, 0.5, 0.3, on_error=lambda _e: None,
                         on_open=lambda _d: None, keep_running=lambda: not going.is_set())
    stream.start()
    wait_for(lambda: going.is_set() and not stream._thread.is_alive(), 10, what="the thread to end quietly")
    stream.stop()
