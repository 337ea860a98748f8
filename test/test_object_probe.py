"""The object-position probe (dexwm_planner.object_probe) and the open-loop evaluation's object
read-out: fit, save/load, the split, and that predicted positions come from predicted latents only."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from wm_fixtures import tiny_world_model, write_object_episodes  # noqa: E402

from dexwm_planner import eval_wm  # noqa: E402
from dexwm_planner.datasets import EncodedEpisode, load_episodes  # noqa: E402
from dexwm_planner.object_probe import ObjectProbe, fit, probe_file, probe_split  # noqa: E402

P, D = 49, 16   # the tiny checkpoint's latent: 7 x 7 patches of 16 dims


def embed(positions, rng, noise=1e-4):
    """Latents (N, P, D) that hold the object positions linearly (patch 0, first dims) plus noise."""
    n = len(positions)
    lat = rng.normal(0, noise, (n, P, D))
    flat = positions.reshape(n, -1)
    lat[:, 0, :flat.shape[1]] += flat * 10
    return lat.astype(np.float32)


def test_probe_fits_a_linear_read_out_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    eps = []
    for i in range(20):
        pos = rng.uniform(0.3, 0.7, (10, 2, 3))
        eps.append((f"ep{i}.h5", embed(pos, rng), pos))
    eps.append(("no_objects.h5", embed(pos, rng), None))       # skipped, not fitted on
    probe = fit(iter(eps), "flat")
    assert probe.num_objects == 2 and probe.latent_shape == (P, D)
    assert "no_objects.h5" not in probe.meta["fit_episodes"] and len(probe.meta["fit_episodes"]) == 20
    test_pos = rng.uniform(0.3, 0.7, (5, 2, 3))
    lat = embed(test_pos, rng)
    assert np.abs(probe(lat) - test_pos).max() < 2e-3
    path = probe_file(str(tmp_path / "model.pt"))
    assert path.name == "model.probe.npz"
    probe.save(path)
    back = ObjectProbe.load(path)
    np.testing.assert_allclose(back(lat), probe(lat), atol=1e-5)
    assert back.pooling == "flat" and back.meta == json.loads(json.dumps(probe.meta))
    with pytest.raises(ValueError, match="shape"):
        back(lat[:, :10])
    assert fit(iter(eps), "mean").weights.shape == (D, 6)


def test_change_probe_reads_motion_since_the_context_frame(tmp_path):
    rng = np.random.default_rng(2)
    eps = []
    for i in range(20):
        pos = rng.uniform(0.3, 0.7, (1, 2, 3)) + np.cumsum(rng.normal(0, 0.01, (25, 2, 3)), 0)
        eps.append((f"ep{i}.h5", embed(pos, rng), pos))
    probe = fit(iter(eps), "flat", target="change")
    assert probe.target == "change" and probe.meta["fit_rows"] > 20 * 24
    pos = eps[0][2]
    lat = eps[0][1]
    # Read from the context frame's latent and recorded positions, never from the future positions.
    read = probe.read(lat[5:], lat[4], pos[4])
    assert np.abs(read - pos[5:]).max() < 2e-3
    probe.save(tmp_path / "c.probe.npz")
    assert ObjectProbe.load(tmp_path / "c.probe.npz").target == "change"
    with pytest.raises(ValueError, match="target"):
        fit(iter(eps), "flat", target="velocity")


def test_split_is_the_training_split():
    from dexwm_planner.train import split_episodes
    items = list(range(540))
    assert probe_split(items, {"episodes": 540, "val_episodes": 27}) == split_episodes(items, 0.05, 0)
    assert len(probe_split(items, {}, fraction=0.25)[1]) == 135


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_object_episodes(tmp_path_factory.mktemp("objects"))


@pytest.fixture(scope="module")
def tiny_wm():
    return tiny_world_model(D)


@pytest.mark.parametrize("target", ["position", "change"])
def test_read_out_comes_from_predicted_latents_only(data, tiny_wm, monkeypatch, target):
    """Latents that hold the positions exactly, and a 'model' that predicts nothing moves: the
    read-out on its predictions must then err as much as "nothing moves" on the sliding object,
    while the probe on the actual latents is exact. A read-out from the true future (latents or
    positions) would score 0 here."""
    rng = np.random.default_rng(1)
    episodes, _ = load_episodes(data)
    encoded = []
    for ep in episodes:
        uv, vis = np.zeros((len(ep), 12, 2), np.float32), np.zeros((len(ep), 12), bool)
        encoded.append(EncodedEpisode(ep, torch.from_numpy(embed(ep.object_positions, rng)), uv, vis))
    probe = fit(((e.episode.name, e.latents.numpy(), e.episode.object_positions) for e in encoded), "flat",
                target=target)

    def frozen(context, actions, **kw):
        return context[-1:].repeat(actions.shape[1], 1, 1)[None]
    monkeypatch.setattr(tiny_wm, "rollout", frozen)
    res, _ = eval_wm.evaluate(tiny_wm, encoded, horizon=5, probe=probe, start_every=3)
    obj = res["object_readout"]
    assert res["rollouts"] == 8 * 3 and obj["rollouts"] == 24
    for h in range(5):
        assert obj["objects"][h] == 48 and obj["objects_moved"][h] == 24   # the sliding object, every rollout
        assert obj["true_latents_cm"][h] < 0.2
        assert obj["nothing_moves_moved_cm"][h] == pytest.approx(2.0 * (h + 1), rel=1e-6)
        assert obj["predicted_moved_cm"][h] == pytest.approx(obj["nothing_moves_moved_cm"][h], abs=0.2)
    at = eval_wm.object_readout_at(obj, 0.2)
    assert set(at) == {"0.2", "1"} and at["1"]["step"] == 5


@pytest.mark.slow
def test_fit_probe_command_and_evaluation_report(data, tiny_wm, tmp_path, capsys):
    from dexwm_ros import eval_wm as cli
    ckpt = str(tmp_path / "tiny.pt")
    tiny_wm.save(ckpt)
    cache = str(tmp_path / "cache")
    assert cli.main(["--fit-probe", ckpt, data, "--cache-dir", cache, "--split-fraction", "0.25", "--episodes", "3",
                     "--probe-target", "change", "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["fit_episodes"] == 3 and fitted["target"] == "change"
    assert cli.main(["--fit-probe", ckpt, data, "--cache-dir", cache, "--split-fraction", "0.25", "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["fit_episodes"] == 6 and fitted["held_out_episodes"] == 2
    probe = ObjectProbe.load(probe_file(ckpt))
    held_out = set(probe.meta["held_out_episodes"])
    assert not held_out & set(probe.meta["fit_episodes"])
    out = str(tmp_path / "eval")
    assert cli.main([ckpt, data, "--cache-dir", cache, "--held-out", "--split-fraction", "0.25", "--horizon", "5",
                     "--start-every", "3", "--out", out, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["episodes"] == 2 and res["object_probe"]["evaluated_on_fit_episodes"] == 0
    for key in ("predicted_cm", "predicted_moved_cm", "nothing_moves_cm", "nothing_moves_moved_cm",
                "true_latents_cm", "true_latents_moved_cm", "objects_moved"):
        assert len(res["object_readout"][key]) == 5
    assert res["object_readout_at"]["1"]["predicted_moved_cm"] > 0
    md = open(os.path.join(out, "metrics.md")).read()
    assert "nothing moves" in md and "| 1 |" in md
    # Evaluated on every episode, the report says how many the probe was fitted on.
    assert cli.main([ckpt, data, "--cache-dir", cache, "--horizon", "3", "--out", out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["object_probe"]["evaluated_on_fit_episodes"] == 6
    # Without a probe the report is as before.
    os.remove(probe_file(ckpt))
    assert cli.main([ckpt, data, "--cache-dir", cache, "--horizon", "3", "--out", out, "--json"]) == 0
    assert "object_readout" not in json.loads(capsys.readouterr().out)
