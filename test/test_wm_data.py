"""World-model data and jobs: readers on files written in each real format, windows, training,
open-loop evaluation and the benchmark's output."""
import csv
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from wm_fixtures import write_droid_episode, write_egodex_episode, write_sim_episode  # noqa: E402

from dexwm_planner.datasets import (WindowSampler, heatmap_targets, load_episodes, read_droid_episode,  # noqa: E402
                                    read_egodex_episode, read_sim_episode, EncodedEpisode)
from dexwm_planner.encoders import EncoderConfig, FrozenEncoder  # noqa: E402
from dexwm_planner.keypoints import project_points, transform_points  # noqa: E402


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    for i in range(6):
        write_sim_episode(str(d / f"ep{i:03d}.h5"), n=12, seed=i)
    (d / "broken.h5").write_bytes(b"not an hdf5 file")
    return str(d)


@pytest.fixture(scope="module")
def collected_dir(tmp_path_factory):
    """Real dexwm-collect episodes (plus one broken file), as the training runs see them."""
    from dexwm_sim import collect
    d = tmp_path_factory.mktemp("collected")
    assert collect.main(["--episodes", "4", "--steps", "12", "--out", str(d)]) == 0
    (d / "episode_999999.h5").write_bytes(b"\x89HDF\r\n truncated")
    return str(d)


def test_collector_episodes_read_and_project_like_the_simulation(collected_dir):
    import h5py
    enc = FrozenEncoder(EncoderConfig(proj_dim=None))
    episodes, skipped = load_episodes(collected_dir, "sim")
    assert len(episodes) == 4 and skipped == 1
    ep = episodes[0]
    assert len(ep) == 12 and ep.dt == pytest.approx(0.2) and ep.image_hw == (224, 224)
    uv, vis = heatmap_targets(ep, enc)
    with h5py.File(ep.name) as f:  # the simulation's own projection of the same keypoints
        uv_sim = f["keypoints_2d"][:, [0, 4, 8, 12, 16, 20]]
    np.testing.assert_allclose(uv[:, :6], uv_sim, atol=1e-3)
    assert vis[:, :6].all() == ep.visible[:, [0, 4, 8, 12, 16, 20]].all() and not vis[:, 6:].any()


def test_sim_reader_and_broken_episode_is_skipped(sim_dir, caplog):
    episodes, skipped = load_episodes(sim_dir, "sim")
    assert len(episodes) == 6 and skipped == 1
    assert any("broken" in r.message for r in caplog.records)
    ep = episodes[0]
    assert ep.load_frames().shape == (12, 120, 160, 3) and ep.keypoints_world.shape == (12, 42, 3)
    assert ep.dt == pytest.approx(0.2)
    assert np.all(ep.keypoints_world[:, 21:] == 0)  # robot: no left hand
    sub = read_sim_episode(ep.name, target_dt=0.4)
    assert len(sub) == 6 and sub.dt == pytest.approx(0.4)


def test_heatmap_targets_follow_the_rendered_wrist(sim_dir):
    enc = FrozenEncoder(EncoderConfig(proj_dim=None))
    ep = read_sim_episode(os.path.join(sim_dir, "ep000.h5"))
    uv, vis = heatmap_targets(ep, enc)
    assert uv.shape == (12, 12, 2) and vis[:, :6].any() and not vis[:, 6:].any()
    img = enc.model_images(ep.load_frames()[:1])[0].astype(int)
    # The fixture draws the wrist as a yellow disc: its centroid is where the wrist projects.
    yellow = (img[..., 0] > 180) & (img[..., 1] > 150) & (img[..., 2] < 110)
    ys, xs = np.nonzero(yellow)
    assert abs(xs.mean() - uv[0, 0, 0]) < 2.5 and abs(ys.mean() - uv[0, 0, 1]) < 2.5


def test_egodex_reader(tmp_path):
    right, left, c2w, K = write_egodex_episode(str(tmp_path / "task"), n=18, fps=30)
    ep = read_egodex_episode(str(tmp_path / "task" / "0.hdf5"), target_dt=0.1)
    assert len(ep) == 6 and ep.dt == pytest.approx(0.1)
    np.testing.assert_allclose(ep.keypoints_world[:, :21], right[::3], atol=1e-9)
    np.testing.assert_allclose(ep.keypoints_world[:, 21:], left[::3], atol=1e-9)
    # Camera converted from ARKit (-z forward) to OpenCV: the hands are in front of it.
    cam = transform_points(np.linalg.inv(ep.cam_to_world), ep.keypoints_world)
    assert np.all(cam[..., 2] > 0)
    np.testing.assert_allclose(ep.cam_to_world[0], c2w, atol=1e-9)
    assert ep.load_frames().shape == (6, 120, 160, 3) and ep.hand_loss


def test_droid_reader(tmp_path):
    ee, grip, c2w = write_droid_episode(str(tmp_path / "ep"), n=16, fps=15)
    ep = read_droid_episode(str(tmp_path / "ep"), target_dt=0.2)
    assert len(ep) == 6 and not ep.hand_loss
    np.testing.assert_allclose(ep.keypoints_world[:, 0], ee[::3])
    np.testing.assert_allclose(ep.cam_to_world[0], c2w, atol=1e-9)
    assert np.all(ep.keypoints_world[:, 21:] == 0)
    assert ep.load_frames().shape[0] == 6
    episodes, skipped = load_episodes(str(tmp_path), "droid")
    assert len(episodes) == 1 and skipped == 0


def test_windows_have_variable_gaps(sim_dir):
    ep = read_sim_episode(os.path.join(sim_dir, "ep001.h5"))
    lat = torch.randn(len(ep), 4, 8)
    uv, vis = np.zeros((len(ep), 12, 2), np.float32), np.zeros((len(ep), 12), bool)
    s = WindowSampler([EncodedEpisode(ep, lat, uv, vis)], frames=4, max_gap=3, seed=0)
    b = s.sample(64)
    assert b["latents"].shape == (64, 4, 4, 8) and b["actions"].shape == (64, 3, 132)
    gaps = np.round(b["dt"].numpy() / 0.2).astype(int)
    assert gaps.min() == 1 and gaps.max() == 3
    # Actions match keypoint deltas over the sampled gaps.
    assert torch.isfinite(b["actions"]).all()


@pytest.mark.slow
def test_short_training_loss_falls_resume_and_evaluation(collected_dir, tmp_path):
    sim_dir = collected_dir
    from dexwm_planner import train
    from dexwm_ros import eval_wm
    from dexwm_planner.world_model import DexWM
    out = str(tmp_path / "run")
    args = ["config/wm_sim.yaml", f"out={out}", f"cache_dir={tmp_path / 'cache'}",
            f"data=[{{kind: sim, path: {sim_dir}}}]", "train.batch_size=16", "train.log_every=5", "train.lr=3e-3",
            "train.ckpt_every=20", "model.encoder.proj_dim=16", "model.predictor.width=32",
            "model.predictor.depth=2", "model.hand_head.width=32", "train.context=4"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert train.main(args + ["train.steps=60"]) == 0
        with open(os.path.join(out, "metrics.csv")) as fh:
            rows = list(csv.DictReader(fh))
        losses = [float(r["loss"]) for r in rows]
        assert len(losses) == 12 and np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
        wm = DexWM.load(os.path.join(out, "model.pt"))
        assert wm.meta["skipped"] == 1 and wm.meta["step"] == 60
        assert np.any(wm.normalizer.std[:63] != 1)  # statistics fitted from the data
        # Resume: the same command with more steps continues at step 60.
        assert train.main(args + ["train.steps=65"]) == 0
        assert DexWM.load(os.path.join(out, "model.pt")).meta["step"] == 65
        with open(os.path.join(out, "metrics.csv")) as fh:
            assert [int(r["step"]) for r in csv.DictReader(fh)][-2:] == [60, 65]
        assert train.main(args + ["train.nosuchkey=1"]) == 2
        ev = str(tmp_path / "eval")
        assert eval_wm.main([os.path.join(out, "model.pt"), sim_dir, "--horizon", "5", "--out", ev,
                             "--cache-dir", str(tmp_path / "cache")]) == 0
    finally:
        os.chdir(cwd)
    res = json.load(open(os.path.join(ev, "metrics.json")))
    assert len(res["latent_error"]) == 5 and set(res["pck"]) == {"2.5", "5.0", "10.0", "20.0"}
    assert res["episodes"] == 4 and res["skipped"] == 1
    assert os.path.getsize(os.path.join(ev, "metrics.png")) > 0 and os.path.getsize(os.path.join(ev, "strip.png")) > 0


def test_bench_json_keys(capsys):
    from dexwm_planner import bench
    assert bench.main(["--json", "--batch-sizes", "2,4", "--horizon", "2", "--min-time", "0.01"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("sample_steps_per_s", "predictor_flops_per_s", "matmul_flops_per_s"):
        assert res[key] > 0


@pytest.mark.slow
def test_ablation_writes_both_runs(sim_dir, tmp_path):
    from dexwm_planner import ablation
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        rc = ablation.main(["config/wm_sim.yaml", f"cache_dir={tmp_path / 'cache'}",
                            f"data=[{{kind: sim, path: {sim_dir}}}]", "train.steps=6", "train.batch_size=4",
                            "model.encoder.proj_dim=16", "model.predictor.width=32", "model.predictor.depth=1",
                            "model.hand_head.width=32", "train.context=3",
                            "--eval-data", sim_dir, "--horizon", "3", "--out", str(tmp_path / "abl")])
    finally:
        os.chdir(cwd)
    assert rc == 0
    res = json.load(open(tmp_path / "abl" / "ablation.json"))
    for name in ("with_hc", "without_hc"):
        assert 0.0 <= res[name]["pck20_last"] <= 1.0 and res[name]["latent_error_last"] > 0
    assert (tmp_path / "abl" / "ablation.md").read_text().count("|") > 8
