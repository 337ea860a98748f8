import numpy as np
import pytest
from sensor_msgs.msg import Image

from dexwm_ros.image_conversion import ImageConversionError, depth_to_numpy, image_to_numpy, numpy_to_image


def test_round_trip_and_stamp():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    msg = numpy_to_image(rgb, 12.25, "cam")
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, 21, "rgb8")
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (12, 250_000_000, "cam")
    assert np.array_equal(image_to_numpy(msg), rgb)
    assert np.array_equal(image_to_numpy(numpy_to_image(rgb[:, :, ::-1].copy(), 0, "c", "bgr8")), rgb)
    depth = np.arange(35, dtype=np.uint16).reshape(5, 7) * 100
    assert np.array_equal(depth_to_numpy(numpy_to_image(depth, 0, "c", "16UC1")), depth)


def test_padded_rows_alpha_and_mono():
    rgba = np.random.default_rng(1).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    msg = Image(height=3, width=4, encoding="bgra8", step=20)
    padded = np.zeros((3, 20), np.uint8)
    padded[:, :16] = rgba.reshape(3, 16)
    msg.data = padded.tobytes()
    assert np.array_equal(image_to_numpy(msg), rgba[:, :, 2::-1])
    mono = Image(height=2, width=2, encoding="mono8", step=2, data=bytes([1, 2, 3, 4]))
    assert image_to_numpy(mono).shape == (2, 2, 3) and image_to_numpy(mono)[1, 1].tolist() == [4, 4, 4]


@pytest.mark.parametrize("msg, words", [
    (Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)), "unsupported image encoding 'yuv422'"),
    (Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(8)), "unsupported"),
    (Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(11)), "11 bytes, expected"),
    (Image(height=2, width=2, encoding="rgb8", step=5, data=bytes(10)), "step 5 is smaller"),
    (Image(height=0, width=2, encoding="rgb8", step=6, data=b""), "no pixels"),
])
def test_bad_images_raise_clear_errors(msg, words):
    with pytest.raises(ImageConversionError, match=words):
        image_to_numpy(msg)


def test_bad_arrays_raise_clear_errors():
    with pytest.raises(ImageConversionError, match="HxWx3"):
        numpy_to_image(np.zeros((4, 4), np.uint8), 0, "c")
    with pytest.raises(ImageConversionError, match="dtype uint8"):
        numpy_to_image(np.zeros((4, 4, 3), np.float32), 0, "c")
    with pytest.raises(ImageConversionError, match="unsupported"):
        numpy_to_image(np.zeros((4, 4, 3), np.uint8), 0, "c", "jpeg")
    with pytest.raises(ImageConversionError, match="stamp"):
        numpy_to_image(np.zeros((4, 4, 3), np.uint8), float("nan"), "c")
