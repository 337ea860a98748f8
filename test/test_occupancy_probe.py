"""The identity-free object read-out (dexwm_planner.occupancy_probe) and its place in the open-loop
evaluation: cells from the episode's own camera, a detector that finds marked cells, save/load, and
that the read-out on predictions comes from predicted latents only."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from wm_fixtures import frozen_rollout, tiny_world_model, write_object_episodes  # noqa: E402

from dexwm_planner import eval_wm, occupancy_probe  # noqa: E402
from dexwm_planner.datasets import EncodedEpisode, load_episodes  # noqa: E402
from dexwm_planner.encoders import EncoderConfig, FrozenEncoder  # noqa: E402
from dexwm_planner.keypoints import project_points, transform_points  # noqa: E402

D = 16
GRID = (7, 7)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_object_episodes(tmp_path_factory.mktemp("occupancy"))


@pytest.fixture(scope="module")
def tiny_wm():
    return tiny_world_model(D)


def marked_latents(cells, rng, noise=0.05):
    """Latents (N, 49, D) whose first feature is 1 at the cells that hold an object, plus noise."""
    lat = rng.normal(0, noise, (len(cells), GRID[0] * GRID[1], D)).astype(np.float32)
    for n, row in enumerate(np.asarray(cells)):
        for c in row[row >= 0]:
            lat[n, c, 0] += 1.0
    return lat


def test_cells_follow_the_episode_camera_and_the_view(data):
    ep = load_episodes(data)[0][0]
    plain = FrozenEncoder(EncoderConfig(proj_dim=D))
    cells = occupancy_probe.episode_cells(plain, ep).numpy()
    # Without a zoom the grid is the model view: the cell is where the centre lands in model pixels.
    cam = transform_points(np.linalg.inv(ep.cam_to_world), ep.object_positions)
    uv, _ = project_points(cam, ep.intrinsics)
    model_uv = plain.raw_to_model_pixels(uv, ep.image_hw)
    step = 224 / 7
    expected = np.floor((model_uv[..., 1] + 0.5) / step) * 7 + np.floor((model_uv[..., 0] + 0.5) / step)
    inside = (model_uv >= -0.5).all(-1) & (model_uv < 223.5).all(-1)
    assert inside.any()
    np.testing.assert_array_equal(cells[inside], expected[inside].astype(int))
    assert (cells[~inside] == -1).all()
    # A zoom onto a corner of the view holds none of the objects of the fixture's scene, or other cells.
    zoomed = FrozenEncoder(EncoderConfig(proj_dim=D, zoom=(0.0, 0.0, 0.2, 0.2)))
    assert (occupancy_probe.episode_cells(zoomed, ep).numpy() == -1).all()
    behind = occupancy_probe.grid_cells(plain, np.zeros((1, 1, 2)), np.zeros((1, 1), bool), ep.image_hw)
    assert int(behind[0, 0]) == -1


def test_detector_finds_marked_cells_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    cells = torch.as_tensor(rng.integers(0, 49, (400, 3)))
    cells[::7, 2] = -1                                           # an object out of view now and then
    positions = torch.zeros(400, 3, 3)
    positions[..., 0] = (cells % 7).float() * 0.05               # each cell's place on the table
    positions[..., 1] = (cells // 7).float() * 0.05
    lat = marked_latents(cells, rng)
    probe = occupancy_probe.fit(lat, cells, positions, GRID, iterations=1500, hidden=8)
    test_cells = torch.as_tensor(rng.integers(0, 49, (50, 3)))
    test_pos = torch.zeros(50, 3, 3)
    test_pos[..., 0], test_pos[..., 1] = (test_cells % 7).float() * 0.05, (test_cells // 7).float() * 0.05
    points = probe.points(marked_latents(test_cells, rng), 3).numpy()
    assert occupancy_probe.nearest_distance(points, test_pos).max() < 1e-6
    # The prior alone cannot tell the layouts apart.
    prior = occupancy_probe.fit(lat, cells, positions, GRID, iterations=1500, prior_only=True, hidden=8)
    assert occupancy_probe.nearest_distance(prior.points(marked_latents(test_cells, rng), 3), test_pos).mean() > 0.03
    path = occupancy_probe.probe_file(str(tmp_path / "model.pt"))
    assert path.name == "model.occupancy.pt"
    probe.save(path)
    back = occupancy_probe.OccupancyProbe.load(path)
    x = marked_latents(test_cells, rng)
    torch.testing.assert_close(back.logits(x), probe.logits(x))
    with pytest.raises(ValueError, match="shape"):
        back.logits(x[:, :10])
    with pytest.raises(ValueError, match="no object"):
        occupancy_probe.fit(lat, torch.full_like(cells, -1), positions, GRID, iterations=1, hidden=8)


def test_read_out_comes_from_predicted_latents_only(data, tiny_wm, monkeypatch):
    """Latents that mark occupied cells, and a 'model' that predicts nothing moves: read from its
    predictions, the sliding object is where it was (as from the last context latent), while read
    from the actual latents it is found. A read-out from the true future would score 0 here."""
    rng = np.random.default_rng(1)
    episodes, _ = load_episodes(data)
    encoded, all_lat, all_cells, all_pos = [], [], [], []
    for ep in episodes:
        cells = occupancy_probe.episode_cells(tiny_wm.encoder, ep)
        lat = marked_latents(cells, rng)
        uv, vis = np.zeros((len(ep), 12, 2), np.float32), np.zeros((len(ep), 12), bool)
        encoded.append(EncodedEpisode(ep, torch.from_numpy(lat), uv, vis))
        all_lat.append(lat)
        all_cells.append(cells)
        all_pos.append(torch.as_tensor(ep.object_positions, dtype=torch.float32))
    probe = occupancy_probe.fit(np.concatenate(all_lat), torch.cat(all_cells), torch.cat(all_pos), GRID, 1500, hidden=8)
    monkeypatch.setattr(tiny_wm, "rollout", frozen_rollout)
    res, _ = eval_wm.evaluate(tiny_wm, encoded, horizon=5, start_every=3, occupancy=probe)
    occ = res["object_occupancy"]
    assert occ["rollouts"] == 24 and "object_readout" not in res
    for h in range(5):
        assert occ["objects_moved"][h] > 0
        assert occ["predicted_moved_cm"][h] == pytest.approx(occ["context_latent_moved_cm"][h])
        assert occ["true_latents_moved_cm"][h] <= occ["predicted_moved_cm"][h]
    # The slide is 2 cm per step: five steps out the frozen read-out is 10 cm behind, the actual
    # latents' read-out within the grid's quantisation (cells of ~10 cm in this small view).
    assert occ["predicted_moved_cm"][4] > occ["true_latents_moved_cm"][4] + 3
    at = eval_wm.object_readout_at(occ, 0.2)
    assert at["1"]["step"] == 5 and at["1"]["nothing_moves_moved_cm"] > 5


@pytest.mark.slow
def test_fit_occupancy_command_and_evaluation_report(data, tiny_wm, tmp_path, capsys):
    from dexwm_ros import eval_wm as cli
    ckpt = str(tmp_path / "tiny.pt")
    tiny_wm.save(ckpt)
    cache = str(tmp_path / "cache")
    assert cli.main(["--fit-probe", ckpt, data, "--cache-dir", cache, "--split-fraction", "0.25",
                     "--probe-target", "occupancy", "--probe-iterations", "20", "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["fit_episodes"] == 6 and fitted["held_out_episodes"] == 2 and fitted["iterations"] == 20
    probe = occupancy_probe.OccupancyProbe.load(occupancy_probe.probe_file(ckpt))
    assert not set(probe.meta["held_out_episodes"]) & set(probe.meta["fit_episodes"])
    out = str(tmp_path / "eval")
    assert cli.main([ckpt, data, "--cache-dir", cache, "--held-out", "--split-fraction", "0.25", "--horizon", "5",
                     "--start-every", "3", "--out", out, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["occupancy_probe"]["evaluated_on_fit_episodes"] == 0 and "object_readout" not in res
    for key in ("predicted_moved_cm", "context_latent_moved_cm", "nothing_moves_moved_cm", "true_latents_moved_cm"):
        assert len(res["object_occupancy"][key]) == 5
    assert res["object_occupancy_at"]["1"]["nothing_moves_moved_cm"] > 0
    md = open(os.path.join(out, "metrics.md")).read()
    assert "last context latent" in md and "Identity-free" in md
    assert cli.main(["--fit-probe", ckpt, data, "--probe-target", "occupancy", "--probe-iterations", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err
