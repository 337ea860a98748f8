"""dexwm-train under torchrun: 2 CPU ranks (gloo) train together, stay identical, and learn."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from wm_fixtures import write_sim_episode  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_identical_weights_and_loss_falls(tmp_path):
    from dexwm_planner.world_model import DexWM
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        write_sim_episode(str(data / f"ep{i:03d}.h5"), n=12, seed=i)
    out = tmp_path / "run"
    # PYTHONPATH: the checkout under test, not an older installed copy of the package.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    cmd = [os.path.join(BIN, "torchrun"), "--nproc_per_node", "2", "--standalone",
           os.path.join(BIN, "dexwm-train"), "config/wm_sim.yaml", f"out={out}", f"cache_dir={tmp_path / 'cache'}",
           f"data=[{{kind: sim, path: {data}}}]", "train.steps=40", "train.batch_size=8", "train.lr=3e-3",
           "train.log_every=5", "train.ckpt_every=40", "train.threads=1", "train.context=4",
           "model.encoder.proj_dim=16", "model.predictor.width=32", "model.predictor.depth=1",
           "model.hand_head.width=32"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wm = DexWM.load(str(out / "model.pt"))
    # Both ranks' final weights were gathered and compared inside the run.
    assert wm.meta["ddp_world_size"] == 2
    assert wm.meta["ddp_max_weight_diff"] == 0.0, wm.meta
    assert wm.meta["step"] == 40 and wm.frame_step == pytest.approx(0.2)
    with open(out / "metrics.csv") as fh:
        losses = [float(row["loss"]) for row in csv.DictReader(fh)]
    assert len(losses) == 8 and np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
