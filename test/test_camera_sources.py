"""ROS-free camera sources against librealsense's own recorder/player and OpenCV's video reader."""
import numpy as np
import pytest

from camera_driver.sources import (Intrinsics, OpenCVSource, RealSenseFileSource, RealSenseSource, SourceError,
                                      parse_profile, record_realsense_file)

W, H, N = 64, 48, 6
INTR = Intrinsics(W, H, 52.0, 53.0, 31.25, 23.75, "plumb_bob", [0.1, -0.02, 0.001, 0.002, 0.003])


def frames():
    colors, depths = [], []
    for k in range(N):
        c = np.zeros((H, W, 3), np.uint8)
        c[..., 0] = 40 * k                                   # frame index in red
        c[..., 1] = np.arange(W, dtype=np.uint8)[None, :]    # column in green
        c[..., 2] = np.arange(H, dtype=np.uint8)[:, None]    # row in blue
        colors.append(c)
        depths.append(np.full((H, W), 800 + 10 * k, np.uint16))
    return colors, depths


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rs") / "clip.db3"
    colors, depths = frames()
    record_realsense_file(str(path), colors, depths, fps=30, color_intrinsics=INTR, depth_intrinsics=INTR)
    return path


def read_all(path, **kw):
    with RealSenseFileSource(str(path), loop=False, **kw) as src:
        got = []
        while (f := src.read(1.0)) is not None:
            got.append(f)
    return got


def test_recording_plays_back_pixels_and_intrinsics(recording):
    colors, _ = frames()
    got = read_all(recording, real_time=False)
    assert [int(f.color[0, 0, 0]) // 40 for f in got] == list(range(N))
    for k, f in enumerate(got):
        assert np.array_equal(f.color, colors[k])
        i = f.intrinsics
        assert (i.width, i.height, i.distortion_model) == (W, H, "plumb_bob")
        assert np.allclose([i.fx, i.fy, i.cx, i.cy], [INTR.fx, INTR.fy, INTR.cx, INTR.cy], atol=1e-4)
        assert np.allclose(i.coeffs, INTR.coeffs, atol=1e-6)


def test_recording_plays_back_aligned_depth(recording):
    colors, _ = frames()
    # librealsense's syncer may drop the first frames while it pairs colour with depth.
    got = read_all(recording, real_time=True, enable_depth=True)
    assert len(got) >= N // 2
    for f in got:
        k = int(f.color[0, 0, 0]) // 40
        assert np.array_equal(f.color, colors[k])
        # Same intrinsics and identity extrinsics: aligned depth is the recorded depth (mm, z16 units
        # 1 mm); the lens distortion leaves a few holes (0 = no data) where rs.align resamples.
        assert f.depth.dtype == np.uint16 and f.depth.shape == (H, W)
        valid = f.depth > 0
        assert valid.mean() > 0.8 and np.all(f.depth[valid] == 800 + 10 * k)


def test_missing_inputs_name_what_was_looked_for(tmp_path):
    with pytest.raises(SourceError, match="not found: .*nothing.db3"):
        RealSenseFileSource(str(tmp_path / "nothing.db3")).open()
    with pytest.raises(SourceError, match="video file not found: .*nothing.mp4"):
        OpenCVSource(str(tmp_path / "nothing.mp4")).open()
    # No RealSense is plugged into this machine: the error names the serial that was asked for.
    with pytest.raises(SourceError, match="12345678"):
        RealSenseSource(serial="12345678").open()


def test_make_source_needs_its_input():
    from camera_driver.sources import make_source
    with pytest.raises(ValueError, match="file_path"):
        make_source("file", path="")
    with pytest.raises(ValueError, match="video_device"):
        make_source("opencv", device="")
    with pytest.raises(ValueError, match="unknown camera source"):
        make_source("kinect")


@pytest.mark.parametrize("text", ["640x480", "640x480x0", "axbxc", ""])
def test_bad_profiles_are_refused(text):
    with pytest.raises(ValueError, match="WIDTHxHEIGHTxFPS"):
        parse_profile(text)
    assert parse_profile("1280x720x15") == (1280, 720, 15)


def make_video(path, n=8, w=96, h=64):
    import cv2
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
    assert out.isOpened()
    rgb = []
    for k in range(n):
        c = np.zeros((h, w, 3), np.uint8)
        c[:, : w // 2] = (200, 30 * k % 256, 50)   # RGB
        c[:, w // 2:] = (20, 120, 240)
        rgb.append(c)
        out.write(c[:, :, ::-1].copy())
    out.release()
    return rgb


def test_opencv_video_file_source(tmp_path):
    path = tmp_path / "clip.avi"
    rgb = make_video(path)
    src = OpenCVSource(str(path), loop=True, real_time=False, horizontal_fov_deg=90.0)
    with src:
        got = [src.read(1.0) for _ in range(len(rgb) + 3)]  # runs past the end: loops
    assert all(f is not None for f in got)
    for k, f in enumerate(got):
        assert f.color.shape == (64, 96, 3) and f.color.dtype == np.uint8
        # MJPG is lossy: compare with a tolerance; the colour order must be RGB.
        assert np.abs(f.color.astype(int) - rgb[k % len(rgb)]).mean() < 6
    assert got[-1].index == 2
    i = got[0].intrinsics
    assert i.fx == pytest.approx(48.0) and (i.cx, i.cy) == (47.5, 31.5)
