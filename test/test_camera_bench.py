"""A short run of `dexwm-bench camera --json`: one JSON object with the documented keys."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def test_camera_bench_json():
    exe = Path(sys.executable).parent / "dexwm-bench"
    out = subprocess.run([str(exe), "camera", "--json", "--seconds", "1", "--no-baseline"], capture_output=True,
                         text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["published"] == 30
    assert 0 < result["delivered"] <= 30 and result["dropped"] == 30 - result["delivered"]
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p99"] < 1000


def test_camera_bench_rejects_bad_arguments():
    from dexwm_ros.camera_bench import main
    assert main(["--seconds", "0"]) == 2
