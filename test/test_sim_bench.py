"""`dexwm-bench sim --json` prints one JSON object with the documented keys."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(sys.executable).parent / "dexwm-bench"


def test_bench_sim_json():
    r = subprocess.run([str(BENCH), "sim", "--json", "--seconds", "0.2"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("physics_steps_per_s", "render_fps_224", "render_fps_640x480", "fk_ms_per_1536"):
        assert out[key] > 0, key
    assert out["baseline_empty_world_steps_per_s"] > out["physics_steps_per_s"]
