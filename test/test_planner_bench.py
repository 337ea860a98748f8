"""dexwm-bench planner --json prints one JSON object with the contract's keys (figures not judged)."""
import json
import subprocess
import sys

from rosutil import VENV_BIN


def test_planner_bench_json(tmp_path):
    import torch

    from dexwm_planner.world_model import DexWM

    torch.manual_seed(0)
    ckpt = tmp_path / "wm.pt"
    DexWM().save(str(ckpt))
    r = subprocess.run([sys.executable, str(VENV_BIN / "dexwm-bench"), "planner", "--json", "--cycles", "1", "--measure-seconds", "0.2",
                        "--checkpoint", str(ckpt)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    data = json.loads(lines[0])
    for key in ("replan_seconds_median", "predictor_flops_per_s", "matmul_flops_per_s"):
        assert data[key] > 0
    assert data["replans"] == 3 and data["model"] == str(ckpt)
