"""A short run of `dexwm-bench camera --json`: one JSON object with the documented keys, the camera
path loading the large-image Fast DDS profile and the bare publisher not."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(150)


def test_camera_bench_json():
    exe = Path(sys.executable).parent / "dexwm-bench"
    out = subprocess.run([str(exe), "camera", "--json", "--seconds", "1", "--rounds", "1"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for prefix in ("", "bare_"):
        assert result[prefix + "published"] == 30
        assert 0 < result[prefix + "delivered"] <= 30
        assert result[prefix + "dropped"] == 30 - result[prefix + "delivered"]
        assert 0 < result[prefix + "latency_ms_p50"] <= result[prefix + "latency_ms_p99"] < 1000
        assert result[prefix + "conversion_ms_p50"] > 0 and result[prefix + "publish_call_ms_p50"] > 0
    assert result["bare_over_camera_p50"] == pytest.approx(result["bare_latency_ms_p50"] / result["latency_ms_p50"],
                                                           abs=0.01)
    assert "fastdds_large_images.xml" in result["fastdds_profile"]
    assert result["cpus"] >= 1 and result["load_average_1min"] >= 0


def test_camera_bench_rejects_bad_arguments():
    from dexwm_ros.camera_bench import main
    assert main(["--seconds", "0"]) == 2
    assert main(["--rounds", "0"]) == 2
    assert main(["--bare-env", "NO_VALUE"]) == 2


def test_the_large_image_profile_is_loaded_unless_the_user_has_one():
    import xml.etree.ElementTree as ET

    from dexwm_ros.image_transport import large_image_profile, use_large_image_profile

    env = {}
    note = use_large_image_profile(env)
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(large_image_profile()) and "16 MB" in note
    # The profile is valid XML that gives the shared-memory transport a segment larger than a frame.
    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(large_image_profile()).getroot()
    segment = int(root.find(".//d:transport_descriptor[d:type='SHM']/d:segment_size", ns).text)
    assert segment >= 4 * 640 * 480 * 3
    assert root.find(".//d:participant[@is_default_profile='true']", ns) is not None

    own = {"FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/my_profile.xml"}
    assert "the user's" in use_large_image_profile(own)
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in own
