"""The tracking read-out (dexwm_planner.track_probe) and its place in the open-loop evaluation: the
neighbourhood it reads, a fit that learns where a marked object went, save/load, that the read-out
on predictions comes from predicted latents only, and the fit command with the report."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from wm_fixtures import frozen_rollout, tiny_world_model, write_object_episodes  # noqa: E402

from dexwm_planner import eval_wm, occupancy_probe, track_probe  # noqa: E402
from dexwm_planner.datasets import EncodedEpisode, load_episodes  # noqa: E402

D = 4
GRID = (7, 7)
CELL_M = 0.05


def test_neighbourhood_reads_the_three_by_three_cells_around_each_object():
    lat = np.arange(49, dtype=np.float32)[None, :, None].repeat(2, -1)     # cell c holds (c, c)
    cells = np.array([[24, 0, -1]])          # the centre, a corner, out of view
    got = track_probe.neighbourhood(lat, cells, GRID).reshape(1, 3, 9, 2)[..., 0]
    np.testing.assert_array_equal(got[0, 0], [16, 17, 18, 23, 24, 25, 30, 31, 32])
    np.testing.assert_array_equal(got[0, 1], [0, 0, 0, 0, 0, 1, 0, 7, 8])       # outside the grid: zeros
    np.testing.assert_array_equal(got[0, 2], np.zeros(9))


def marked(cells, rng, noise=0.05):
    """Latents (N, 49, D) whose first feature is 1 at each object's cell, plus noise."""
    lat = rng.normal(0, noise, (len(cells), 49, D)).astype(np.float32)
    for n, row in enumerate(np.asarray(cells)):
        for c in row[row >= 0]:
            lat[n, c, 0] += 1.0
    return lat


def sliding_pairs(count, rng):
    """Pairs of frames one step apart: one object per scene that stays or slides one cell (5 cm)
    left or right; the hand keypoints are noise (they say nothing here)."""
    row, col = rng.integers(0, 7, count), rng.integers(1, 6, count)
    move = rng.integers(-1, 2, count)
    c0, c1 = (row * 7 + col)[:, None], (row * 7 + col + move)[:, None]
    p0 = np.stack([col * CELL_M, row * CELL_M, np.zeros(count)], -1)[:, None].astype(np.float32)
    p1 = p0 + np.stack([move * CELL_M, np.zeros(count), np.zeros(count)], -1)[:, None].astype(np.float32)
    hands = rng.normal(100, 20, (2, count, 6, 2))
    x = track_probe.features(marked(c0, rng), marked(c1, rng), hands[0], hands[1], p0, c0, np.ones(count), GRID, 224)
    return x, p1 - p0, (marked(c0, rng), marked(c1, rng), hands, p0, c0, p1)


def test_fit_learns_where_a_marked_object_went_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x, y, _ = sliding_pairs(3000, rng)
    readout, mean, scale = track_probe.fit(x.reshape(-1, x.shape[-1]), y.reshape(-1, 3), epochs=6, hidden=32)
    probe = track_probe.TrackProbe(readout, mean, scale, GRID, 224, {"step_seconds": 0.2})
    tx, ty, (l0, l1, hands, p0, c0, p1) = sliding_pairs(300, rng)
    err = np.linalg.norm(probe.displacement(tx) - ty, axis=-1)[:, 0]
    moved = np.linalg.norm(ty, axis=-1)[:, 0] > 0.01
    assert moved.sum() > 100
    # "Nothing moves" is 5 cm off on every moved object; the read-out finds where it went.
    assert err[moved].mean() < 0.01 and err[~moved].mean() < 0.01
    # read(): one context frame, its objects' recorded positions and cells, a step later.
    got = probe.read(l1[:1], hands[1, :1], l0[0], hands[0, 0], p0[0], c0[0])
    np.testing.assert_allclose(got, p1[:1], atol=0.015)
    path = track_probe.probe_file(str(tmp_path / "model.pt"))
    assert path.name == "model.track.pt"
    probe.save(path)
    back = track_probe.TrackProbe.load(path)
    np.testing.assert_array_equal(back.displacement(tx), probe.displacement(tx))
    assert back.step_seconds == 0.2 and back.grid == GRID
    with pytest.raises(ValueError, match="features"):
        back.displacement(tx[..., :10])


def test_read_out_comes_from_predicted_latents_only(tmp_path, monkeypatch):
    """Latents that mark each object's cell, and a 'model' that predicts nothing moves: read from its
    predictions the sliding objects stay where they were (exactly the frozen-world read-out), read
    from the actual latents they are found. A read-out from the true future would score 0 here."""
    rng = np.random.default_rng(1)
    data = write_object_episodes(tmp_path)
    wm = tiny_world_model(16)
    episodes, _ = load_episodes(data)
    encoded, xs, ys = [], [], []
    for ep in episodes:
        cells = occupancy_probe.episode_cells(wm.encoder, ep).numpy()
        lat = np.concatenate([marked(cells, rng), np.zeros((len(ep), 49, 12), np.float32)], -1)
        e = EncodedEpisode(ep, torch.from_numpy(lat), np.zeros((len(ep), 12, 2), np.float32), np.zeros((len(ep), 12), bool))
        encoded.append(e)
        hand = wm.keypoints_2d(e.latents, slice(0, 6)).numpy()
        x, y = track_probe.episode_pairs(lat, hand, np.asarray(ep.object_positions, np.float32), cells, 1, GRID, 224, 5)
        xs.append(x.reshape(-1, x.shape[-1]))
        ys.append(y.reshape(-1, 3))
    readout, mean, scale = track_probe.fit(np.concatenate(xs), np.concatenate(ys), epochs=30, hidden=64)
    probe = track_probe.TrackProbe(readout, mean, scale, GRID, 224, {"step_seconds": 0.2})
    monkeypatch.setattr(wm, "rollout", frozen_rollout)
    res, _ = eval_wm.evaluate(wm, encoded, horizon=5, start_every=3, track=probe)
    trk = res["object_track"]
    assert trk["rollouts"] == 24 and "object_occupancy" not in res
    for h in range(5):
        assert trk["objects_moved"][h] > 0
        assert trk["predicted_moved_cm"][h] == pytest.approx(trk["context_latent_moved_cm"][h])
        assert trk["predicted_hand_only_moved_cm"][h] == pytest.approx(trk["context_latent_moved_cm"][h])
    # The slide is 2 cm per step, 10 cm five steps out ("nothing moves"). From the context alone the
    # read-out learns part of the fixture's steady slide; from the actual latents it finds the object.
    assert trk["nothing_moves_moved_cm"][4] == pytest.approx(10.0)
    assert trk["true_latents_moved_cm"][4] < 2.0
    assert trk["predicted_moved_cm"][4] > trk["true_latents_moved_cm"][4] + 1.5
    # Rollouts that step other than the read-out was fitted for are refused, not read wrongly.
    probe.meta["step_seconds"] = 0.6
    with pytest.raises(ValueError, match="fitted for model steps of 0.6 s"):
        eval_wm.evaluate(wm, encoded, horizon=5, track=probe)


@pytest.mark.slow
def test_fit_track_command_and_evaluation_report(tmp_path, capsys):
    from dexwm_ros import eval_wm as cli
    os.makedirs(tmp_path / "data")
    data = write_object_episodes(tmp_path / "data")
    wm = tiny_world_model(16)
    ckpt = str(tmp_path / "tiny.pt")
    wm.save(ckpt)
    cache = str(tmp_path / "cache")
    assert cli.main(["--fit-probe", ckpt, data, "--cache-dir", cache, "--split-fraction", "0.25",
                     "--probe-target", "track", "--probe-epochs", "2", "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["fit_episodes"] == 6 and fitted["held_out_episodes"] == 2 and fitted["epochs"] == 2
    assert fitted["step_seconds"] == pytest.approx(0.2) and 0 < fitted["moved_pairs_fraction"] < 1
    probe = track_probe.TrackProbe.load(track_probe.probe_file(ckpt))
    assert not set(probe.meta["held_out_episodes"]) & set(probe.meta["fit_episodes"])
    out = str(tmp_path / "eval")
    assert cli.main([ckpt, data, "--cache-dir", cache, "--held-out", "--split-fraction", "0.25", "--horizon", "5",
                     "--start-every", "3", "--out", out, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["track_probe"]["evaluated_on_fit_episodes"] == 0 and "object_readout" not in res
    for key in ("predicted_moved_cm", "context_latent_moved_cm", "nothing_moves_moved_cm", "true_latents_moved_cm",
                "predicted_hand_only_moved_cm", "predicted_latent_only_moved_cm"):
        assert len(res["object_track"][key]) == 5
    assert res["object_track_at"]["1"]["nothing_moves_moved_cm"] > 0
    md = open(os.path.join(out, "metrics.md")).read()
    assert "Tracking read-out" in md
    # Steps of 0.4 s against a read-out fitted for 0.2 s: a clear error, no report.
    assert cli.main([ckpt, data, "--cache-dir", cache, "--held-out", "--split-fraction", "0.25", "--stride", "2",
                     "--out", str(tmp_path / "eval2")]) == 1
    assert "fitted for model steps of 0.2 s" in capsys.readouterr().err
    assert cli.main(["--fit-probe", ckpt, data, "--probe-target", "track", "--probe-epochs", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err
