"""Object-aware latents: the object-sensitivity measurement and the encoder options it chose."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from wm_fixtures import write_sim_episode  # noqa: E402

from dexwm_planner.encoders import EncoderConfig, FrozenEncoder  # noqa: E402
from dexwm_planner.world_model import DexWM, WorldModelConfig  # noqa: E402


@pytest.fixture(scope="module")
def scenes():
    from dexwm_ros.object_sensitivity import render_scenes
    return render_scenes(20, first_seed=0)


def test_scene_frames_differ_only_where_told(scenes):
    assert len(scenes) == 20 and [s.seed for s in scenes] == list(range(20))
    for s in scenes:
        obj = np.abs(s.object_moved.astype(int) - s.base).sum(-1) > 30
        arm = np.abs(s.arm_moved.astype(int) - s.base).sum(-1) > 30
        assert 5 < obj.sum() < 0.05 * obj.size       # a small object moved (two small spots)
        assert arm.sum() > 0                          # the arm moved
        assert s.object_shift >= 0.35 - 0.01          # place scenes: object >= 0.35 m from its target


def test_raw_pixels_register_the_arm_far_more_than_the_object(scenes):
    """The measurement on a known representation (pixels, 8x8 average-pooled): the arm covers far
    more of the image than the object, so the ratio is small."""
    from dexwm_ros.object_sensitivity import measure

    def pixels(images):
        x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255
        return torch.nn.functional.avg_pool2d(x, 8).flatten(2).transpose(1, 2)

    res = measure(pixels, scenes)
    assert res["scenes"] == 20 and res["object_to_arm_ratio_median"] < 0.5
    ratios = [p["ratio"] for p in res["per_scene"]]
    assert res["object_to_arm_ratio_median"] == pytest.approx(float(np.median(ratios)))


def test_object_sensitivity_command_on_a_tiny_checkpoint(tmp_path, capsys):
    from dexwm_ros import eval_wm
    torch.manual_seed(0)
    wm = DexWM(WorldModelConfig(encoder=EncoderConfig(proj_dim=16)))
    path = str(tmp_path / "tiny.pt")
    wm.save(path)
    assert eval_wm.main(["--object-sensitivity", "--checkpoint", path, "--scenes", "20", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    per = res["per_scene"]
    assert len(per) == 20 and res["scenes"] == 20 and res["task"] in ("place", "pick-place")
    for p in per:
        assert p["object_mse"] > 0 and p["arm_mse"] > 0 and p["ratio"] == pytest.approx(p["object_mse"] / p["arm_mse"])
    assert res["object_to_arm_ratio_median"] == pytest.approx(float(np.median([p["ratio"] for p in per])))
    # The encoder as the planner sees it: the checkpoint's latents of a scene frame.
    assert res["encoder"]["proj_dim"] == 16
    assert eval_wm.main(["--object-sensitivity", "--checkpoint", path, "--scenes", "5"]) == 2


@pytest.mark.slow
def test_candidate_encoder_is_fitted_on_data_and_measured(tmp_path, capsys):
    from dexwm_ros import eval_wm
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        write_sim_episode(str(data / f"ep{i}.h5"), n=8, seed=i)
    wm = DexWM(WorldModelConfig(encoder=EncoderConfig(proj_dim=16)))
    path = str(tmp_path / "tiny.pt")
    wm.save(path)
    assert eval_wm.main(["--object-sensitivity", "--checkpoint", path, "--json", "--encoder", "proj_dim=8",
                         "--encoder", "zoom=[0.08,0.36,0.76,1.0]", "--encoder", "per_position=true",
                         "--fit-data", str(data), "--cache-dir", str(tmp_path / "cache")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["encoder"]["zoom"] == [0.08, 0.36, 0.76, 1.0] and res["encoder"]["per_position"] is True
    assert res["projection_fit"]["episodes"] == 3 and np.isfinite(res["object_to_arm_ratio_median"])
    # A projected candidate without data to fit it on is refused.
    assert eval_wm.main(["--object-sensitivity", "--checkpoint", path, "--encoder", "proj_dim=8"]) == 1


def test_zoom_view_appends_features_and_crop_maps_keypoints():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    plain = FrozenEncoder(EncoderConfig(proj_dim=None))
    zoom = FrozenEncoder(EncoderConfig(proj_dim=None, zoom=(0.08, 0.36, 0.76, 1.0)))
    tp, tz = plain.backbone_tokens(images), zoom.backbone_tokens(images)
    assert tz.shape == (2, 49, 2560) and zoom.grid == plain.grid
    torch.testing.assert_close(tz[..., :1280], tp)          # the main view is unchanged
    assert not torch.allclose(tz[..., 1280:], tp)
    # crop: a bright square lands where raw_to_model_pixels says (the hand head's targets)
    crop = FrozenEncoder(EncoderConfig(proj_dim=None, crop=(0.25, 0.25, 0.75, 0.75)))
    img = np.zeros((1, 240, 320, 3), np.uint8)
    img[0, 118:122, 158:162] = 255      # centred at raw (159.5, 119.5)
    model = crop.model_images(img)[0].astype(float).sum(-1)
    ys, xs = np.nonzero(model > model.max() * 0.5)
    expect = crop.raw_to_model_pixels([159.5, 119.5], (240, 320))
    assert abs(xs.mean() - expect[0]) < 1.0 and abs(ys.mean() - expect[1]) < 1.0
    assert 6 < len(xs) ** 0.5 < 9.5     # zoomed 224/120: the 4 px square is ~7.5 px wide (3.7 unzoomed)
    with pytest.raises(ValueError, match="crop"):
        EncoderConfig(crop=(0.5, 0.2, 0.4, 0.9))
    with pytest.raises(ValueError, match="features"):
        EncoderConfig(kind="dinov2", features="final+s16")


def test_per_position_projection_standardises_and_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = EncoderConfig(proj_dim=8, per_position=True, projection="whiten")
    wm = DexWM(WorldModelConfig(encoder=cfg))
    # Tokens whose spread differs strongly between patch positions.
    tokens = torch.randn(200, 49, 1280) * torch.linspace(0.5, 5.0, 49)[None, :, None]
    tokens[:, 0] = 1.0     # a patch that never changes: not amplified without bound
    with pytest.raises(ValueError, match="whole frames"):
        wm.encoder.fit_projection(tokens.reshape(-1, 1, 1280)[:5000])
    wm.encoder.fit_projection(tokens)
    z = wm.encoder.project(tokens)
    std = z.std(0)
    assert float(std[1:].min()) > 0.8 and float(std[1:].max()) < 1.05
    pre = ((tokens - wm.encoder.proj_mean) @ wm.encoder.proj_matrix).std(0).mean()
    assert float(wm.encoder.pos_scale[0].max()) == pytest.approx(1.0 / (0.05 * float(pre)), rel=1e-3)
    path = str(tmp_path / "pp.pt")
    wm.save(path)
    wm2 = DexWM.load(path)
    # Reloaded, the same projection: equal up to float32 rounding (which depends on torch's thread count).
    torch.testing.assert_close(wm2.encoder.project(tokens[:3]), z[:3], rtol=1e-4, atol=1e-4)
    assert wm2.encoder.config.per_position and wm2.frame_step == pytest.approx(0.2)


def test_projection_fit_in_chunks_equals_the_whole_batch_fit(monkeypatch):
    """The fit accumulates mean and covariance over chunks of rows (memory): same projection as
    one float64 pass with torch.cov."""
    import dexwm_planner.encoders as encoders

    torch.manual_seed(1)
    tokens = torch.randn(60, 49, 1280) * torch.linspace(0.5, 3.0, 1280) + torch.linspace(-1, 1, 1280)
    mean, cov = encoders._mean_and_covariance(tokens.reshape(-1, 1280))
    flat = tokens.reshape(-1, 1280).double()
    torch.testing.assert_close(mean, flat.mean(0))
    torch.testing.assert_close(cov, torch.cov(flat.T))
    cfg = EncoderConfig(proj_dim=8, per_position=True)
    whole, chunked = DexWM(WorldModelConfig(encoder=cfg)).encoder, DexWM(WorldModelConfig(encoder=cfg)).encoder
    whole.fit_projection(tokens)
    monkeypatch.setattr(encoders, "_FIT_CHUNK", 500)    # 2940 rows: 6 chunks, the last one short
    chunked.fit_projection(tokens)
    for name in ("proj_mean", "pos_mean", "pos_scale"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name))
    # eigenvectors up to sign
    torch.testing.assert_close(chunked.proj_matrix.abs(), whole.proj_matrix.abs())


def test_old_checkpoints_load_with_the_default_frame_step(tmp_path):
    wm = DexWM(WorldModelConfig(encoder=EncoderConfig(proj_dim=16), frame_dt=0.5))
    path = str(tmp_path / "a.pt")
    wm.save(path)
    assert DexWM.load(path).frame_step == pytest.approx(0.5)
    ck = torch.load(path, weights_only=True)
    del ck["config"]["frame_dt"]
    for key in ("per_position", "zoom", "crop", "features", "projection"):   # written before these options
        del ck["config"]["encoder"][key]
    torch.save(ck, tmp_path / "old.pt")
    old = DexWM.load(str(tmp_path / "old.pt"))
    assert old.frame_step == pytest.approx(0.2) and not old.encoder.config.per_position


def test_grasp_sensitivity_compares_a_held_object_with_a_hand_closed_in_the_air(capsys):
    """Tuning grasp stages: the reference grasp ends with the object raised in the hand, the in-air
    motion with the hand closed at the same height and the object on the table; the command reports
    the cost of each to the goal latent and their ratio, and refuses too few stages."""
    from dexwm_ros import eval_wm
    from dexwm_ros.grasp_sensitivity import measure, render_stages

    stages = render_stages(5, seed=500, progress=False)
    assert [s.seed for s in stages] == list(range(1_000_500, 1_000_505))
    for s in stages:
        assert s.held_holds and not s.in_air_touches
        changed = np.abs(s.held.astype(int) - s.in_air).sum(-1) > 30
        assert changed.sum() > 100                      # the two end frames differ (object, fingers)
        assert np.array_equal(s.goal_rendered, s.goal)  # the static part starts from the goal image's state
        assert (np.abs(s.goal_arm_moved.astype(int) - s.goal).sum(-1) > 30).sum() > 1000

    def pixels(images):
        x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255
        return torch.nn.functional.avg_pool2d(x, 8).flatten(2).transpose(1, 2)

    res = measure(pixels, stages)
    assert res["valid_stages"] == 5
    for p in res["per_stage"]:
        assert p["in_air_to_held_ratio"] == pytest.approx(p["cost_in_air"] / p["cost_held"])
        assert p["in_hand_to_arm_ratio"] == pytest.approx(p["in_hand_mse"] / p["arm_mse"])
    assert res["in_air_to_held_ratio_median"] == pytest.approx(
        np.median([p["in_air_to_held_ratio"] for p in res["per_stage"]]))

    # The predicted part rolls out exactly the commands each motion sent, from its start joints.
    from dexwm_planner.world_model import DexWM, default_checkpoint
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics
    from dexwm_ros.grasp_sensitivity import measure_predicted

    kin = RobotKinematics.from_description()
    for s in stages:
        # Row for row (the in-air motion's descent rows hold the arm where it starts): down, close, up
        # against stay, close, up.
        assert len(s.held_plan) == len(s.in_air_plan) >= 5
        assert np.abs(s.in_air_plan[1, :7] - s.in_air_plan[0, :7]).max() < 1e-6
        assert np.abs(s.held_plan[0] - s.in_air_plan[0]).max() == 0  # the same start
        assert kin.palm_and_tips_world(s.held_plan[-1])[0][2] == pytest.approx(
            kin.palm_and_tips_world(s.in_air_plan[-1])[0][2], abs=0.01)   # ending at the same height
    model = DexWM.load(default_checkpoint())
    predicted = measure_predicted(model, stages[:2], HeadCamera().world_to_camera, kin)
    assert [p["seed"] for p in predicted["predicted_per_stage"]] == [1_000_500, 1_000_501]
    for p in predicted["predicted_per_stage"]:
        assert p["predicted_cost_held"] > 0 and p["predicted_cost_in_air"] > 0
        assert p["predicted_in_air_to_held_ratio"] == pytest.approx(p["predicted_cost_in_air"] / p["predicted_cost_held"])
    assert 0 <= predicted["predicted_held_preferred_fraction"] <= 1
    assert eval_wm.main(["--grasp-sensitivity", "--scenes", "4"]) == 2
    assert "--scenes >= 5" in capsys.readouterr().err
    assert eval_wm.main(["--grasp-sensitivity", "--camera", "30"]) == 1
    assert "--camera needs PITCH,AZIMUTH" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        eval_wm.main(["--object-sensitivity", "--camera", "30,25"])
    assert exit_info.value.code == 2 and "--camera is an option of --grasp-sensitivity" in capsys.readouterr().err


def test_grasp_sensitivity_renders_from_a_candidate_camera():
    from dexwm_ros.grasp_sensitivity import render_stages

    default, = render_stages(1, seed=500, progress=False)
    low, = render_stages(1, seed=500, progress=False, view=(30.0, 25.0))
    assert low.held_holds == default.held_holds            # the same physics, seen from elsewhere
    assert (np.abs(low.goal.astype(int) - default.goal).sum(-1) > 30).mean() > 0.2
