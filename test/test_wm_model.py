"""World-model library: actions, keypoints, encoders, CDiT predictor, hand head, checkpoints."""
import os

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from dexwm_planner.actions import ACTION_DIM, ActionNormalizer, allegro_actions, keypoint_actions
from dexwm_planner.encoders import EncoderConfig, FrozenEncoder
from dexwm_planner.hand_head import HandHead, HandHeadConfig
from dexwm_planner.keypoints import GRIPPER_RADII_CLOSED, GRIPPER_RADII_OPEN, HEATMAP_KEYPOINTS, gripper_keypoints
from dexwm_planner.predictor import CDiTPredictor, PredictorConfig
from dexwm_planner.world_model import CheckpointError, DexWM, WorldModelConfig

SMALL = PredictorConfig(latent_dim=16, num_patches=6, width=32, depth=2, heads=2, max_frames=8)


def randomised(cfg=SMALL, seed=0):
    """A predictor whose zero-initialised parts are randomised, so every path carries signal."""
    torch.manual_seed(seed)
    m = CDiTPredictor(cfg)
    for name, p in m.named_parameters():
        if "ada" in name or name.startswith("out"):
            torch.nn.init.normal_(p, 0, 0.05)
    return m.eval()


# ---------------------------------------------------------------------------------------- actions
def test_action_hand_computed_example():
    # Camera 0 is the world frame rotated 90 deg about z: world +x is camera -y.
    R0 = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    T0 = np.eye(4)
    T0[:3, :3] = R0
    T1 = T0.copy()
    T1[:3, 3] = [0.0, 0.2, 0.0]                                  # camera moves +0.2 along world y
    T1[:3, :3] = R0 @ Rotation.from_euler("x", 0.1).as_matrix()  # and pitches 0.1 rad about its own x
    kp = np.zeros((2, 42, 3))
    kp[1, 0] = [0.1, 0.0, 0.0]   # right wrist moves +0.1 along world x
    kp[1, 21] = [0.0, 0.0, 0.3]  # left wrist moves +0.3 along world z
    a = keypoint_actions(kp, np.stack([T0, T1]))
    assert a.shape == (1, ACTION_DIM)
    np.testing.assert_allclose(a[0, 0:3], [0.0, -0.1, 0.0], atol=1e-6)      # R0^T [0.1, 0, 0]
    np.testing.assert_allclose(a[0, 63:66], [0.0, 0.0, 0.3], atol=1e-6)     # z is unchanged by Rz
    np.testing.assert_allclose(a[0, 126:129], [0.2, 0.0, 0.0], atol=1e-6)   # R0^T [0, 0.2, 0]
    np.testing.assert_allclose(a[0, 129:132], [0.1, 0.0, 0.0], atol=1e-6)   # Euler xyz of R_0^T R_1
    assert np.all(a[0, 3:63] == 0) and np.all(a[0, 66:126] == 0)


def test_actions_use_the_first_context_frame():
    # Three frames; camera turns between frames 1 and 2: both deltas are expressed in frame 0.
    T = np.tile(np.eye(4), (3, 1, 1))
    T[2, :3, :3] = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    kp = np.zeros((3, 42, 3))
    kp[1, 0] = [0.1, 0, 0]
    kp[2, 0] = [0.2, 0, 0]
    a = keypoint_actions(kp, T)
    np.testing.assert_allclose(a[:, :3], [[0.1, 0, 0], [0.1, 0, 0]], atol=1e-6)
    with pytest.raises(ValueError):
        keypoint_actions(kp[:, :21], T)


def test_gripper_dummy_keypoints():
    ee = np.array([0.4, -0.1, 0.3])
    for closed, radii in ((0.0, GRIPPER_RADII_OPEN), (1.0, GRIPPER_RADII_CLOSED)):
        kp = gripper_keypoints(ee, closed)
        assert kp.shape == (21, 3)
        np.testing.assert_allclose(kp[0], ee)
        ring = kp[1:].reshape(5, 4, 3)  # finger f, point k -> circle k
        np.testing.assert_allclose(ring[..., 2], ee[2])                       # horizontal circles
        np.testing.assert_allclose(np.linalg.norm(ring[..., :2] - ee[:2], axis=-1), np.tile(radii, (5, 1)), atol=1e-12)


def test_normalizer_keeps_constant_dims_unscaled():
    rng = np.random.default_rng(0)
    a = np.zeros((100, ACTION_DIM))
    a[:, :63] = rng.normal(0.01, 0.02, (100, 63))
    n = ActionNormalizer.fit(a)
    assert np.all(n.std[63:] == 1) and np.all(n.mean[63:] == 0)
    out = n.normalize(a)
    np.testing.assert_allclose(out[:, :63].std(0), 1, atol=1e-3)
    with pytest.raises(ValueError):
        ActionNormalizer(std=np.zeros(ACTION_DIM))


def test_allegro_actions_match_forward_kinematics():
    from dexwm_robot.kinematics import RobotKinematics
    kin = RobotKinematics.from_description()
    rng = np.random.default_rng(1)
    q0 = (kin.lower + kin.upper) / 2
    q = q0 + rng.normal(0, 0.05, (4, 3, 23))  # (B, T+1, 23)
    W = np.eye(4)
    W[:3, :3] = Rotation.from_euler("xyz", [0.3, -0.2, 1.0]).as_matrix()
    a = allegro_actions(q, W, kin)
    assert a.shape == (4, 2, ACTION_DIM)
    kp = kin.keypoints_world(q)
    expect = np.einsum("ij,...nj->...ni", W[:3, :3], kp[:, 1:] - kp[:, :-1]).reshape(4, 2, 63)
    np.testing.assert_allclose(a[..., :63], expect, atol=1e-5)
    assert np.all(a[..., 63:] == 0)
    np.testing.assert_allclose(allegro_actions(np.repeat(q[:, :1], 3, 1), W, kin), 0, atol=1e-7)
    with pytest.raises(ValueError):
        allegro_actions(q[..., :22], W, kin)
    with pytest.raises(ValueError):
        allegro_actions(np.full((1, 2, 23), np.nan), W, kin)


# -------------------------------------------------------------------------------------- predictor
def test_predictor_shapes_and_identity_at_init():
    m = CDiTPredictor(SMALL)
    gates = [b.ada[1] for b in m.blocks] + [m.ada_out[1]]
    assert all(torch.count_nonzero(g.weight) == 0 and torch.count_nonzero(g.bias) == 0 for g in gates)
    z = torch.randn(2, 5, 6, 16)
    out = m(z, torch.randn(2, 5, ACTION_DIM), torch.full((2, 5), 0.2))
    assert out.shape == (2, 5, 6, 16)
    # Zero adaLN gates make every block the identity, and the zero output layer predicts "no change".
    torch.testing.assert_close(out, z)
    x = torch.randn(2, 5, 6, 32)
    c = torch.randn(2, 5, 32)
    torch.testing.assert_close(m.blocks[0](x, c, m.causal_mask(5, 6)), x)


def test_causal_mask_and_no_attention_to_the_future():
    mask = CDiTPredictor.causal_mask(3, 2)
    assert mask.shape == (6, 7) and mask[:, 0].all()           # null token always visible
    assert not mask[0:2, 1:].any()                              # frame 0 sees no frame
    assert mask[2:4, 1:3].all() and not mask[2:4, 3:].any()     # frame 1 sees frame 0 only
    m = randomised()
    z, a, dt = torch.randn(1, 6, 6, 16), torch.randn(1, 6, ACTION_DIM), torch.full((1, 6), 0.2)
    base = m(z, a, dt)
    z2, a2 = z.clone(), a.clone()
    z2[:, 3] += 1.0
    a2[:, 3] += 1.0
    out = m(z2, a2, dt)
    torch.testing.assert_close(out[:, :3], base[:, :3])          # earlier frames unaffected
    assert (out[:, 3:] - base[:, 3:]).abs().amax(dim=(-1, -2)).min() > 1e-4  # later ones change


def test_incremental_rollout_equals_teacher_forcing_and_shares_context():
    m = randomised()
    B, C = 3, 4
    z = torch.randn(1, C, 6, 16)
    ca = torch.randn(1, C - 1, ACTION_DIM)
    acts = torch.randn(B, 1, ACTION_DIM)
    dt = torch.full((B, 1), 0.2)
    with torch.no_grad():
        pred = m.rollout(z, ca, torch.full((1, C - 1), 0.2), acts, dt)   # context broadcast, not copied
        full = m(z.expand(B, -1, -1, -1), torch.cat([ca.expand(B, -1, -1), acts], 1), torch.full((B, C), 0.2))
    torch.testing.assert_close(pred[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
    # Several steps: each step's keys come from the cache, the last step keeps none; teacher forcing
    # on the context plus the rollout's own predictions gives the same frames.
    acts3, dt3 = torch.randn(B, 3, ACTION_DIM), torch.full((B, 3), 0.2)
    with torch.no_grad():
        pred3 = m.rollout(z, ca, torch.full((1, C - 1), 0.2), acts3, dt3)
        frames = torch.cat([z.expand(B, -1, -1, -1), pred3[:, :2]], 1)
        full3 = m(frames, torch.cat([ca.expand(B, -1, -1), acts3], 1), torch.full((B, C + 2), 0.2))
    torch.testing.assert_close(pred3, full3[:, -3:], atol=1e-5, rtol=1e-5)
    # Long rollouts slide the 8-frame window and stay finite; per-sample contexts work too.
    with torch.no_grad():
        long = m.rollout(z.expand(B, -1, -1, -1), ca.expand(B, -1, -1), torch.full((B, C - 1), 0.2),
                         torch.randn(B, 10, ACTION_DIM), torch.full((B, 10), 0.2))
    assert long.shape == (B, 10, 6, 16) and torch.isfinite(long).all()


def test_shared_context_attention_is_the_same_folded_copied_out_or_broadcast(monkeypatch):
    """CPU inference attends to a shared (batch-1) context with the batch folded into one long query
    sequence, merged with the per-sample keys by log-sum-exp; without that kernel small caches are
    copied out to the batch for one fused attention call, large ones read by broadcast
    (MATERIALISE_BYTES): all three give the same rollout."""
    import dexwm_planner.predictor as predictor

    m = randomised()
    z, ca = torch.randn(1, 3, 6, 16), torch.randn(1, 2, ACTION_DIM)
    acts, dt = torch.randn(4, 5, ACTION_DIM), torch.full((4, 5), 0.2)
    folded_calls, broadcast_calls = [], []
    monkeypatch.setattr(predictor, "_attend_folded",
                        lambda *a, f=predictor._attend_folded: folded_calls.append(1) or f(*a))
    monkeypatch.setattr(predictor, "_attend_broadcast",
                        lambda *a, f=predictor._attend_broadcast: broadcast_calls.append(1) or f(*a))
    with torch.no_grad():
        folded = m.rollout(z, ca, torch.full((1, 2), 0.2), acts, dt)
        assert folded_calls and not broadcast_calls
        monkeypatch.setattr(predictor, "_FLASH_CPU", None)
        folded_calls.clear()
        fused = m.rollout(z, ca, torch.full((1, 2), 0.2), acts, dt)
        assert not folded_calls and not broadcast_calls
        monkeypatch.setattr(predictor, "MATERIALISE_BYTES", 0)
        broadcast = m.rollout(z, ca, torch.full((1, 2), 0.2), acts, dt)
        assert broadcast_calls and not folded_calls
    torch.testing.assert_close(folded, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, broadcast, atol=1e-5, rtol=1e-5)


def test_paper_preset_size():
    cfg = PredictorConfig.paper()
    assert (cfg.width, cfg.depth, cfg.heads) == (1024, 32, 16)


# -------------------------------------------------------------------------------------- hand head
def test_heatmap_targets_peak_at_keypoints_and_readout():
    head = HandHead(HandHeadConfig(latent_dim=16, grid=(7, 7), image_size=(224, 224)))
    uv = torch.tensor([[[10.0, 20.0], [100.3, 50.7], [200.0, 8.0]] + [[112.0, 112.0]] * 9])
    maps = head.targets(uv)
    assert maps.shape == (1, 12, 56, 56)
    peak = maps[0, 1].flatten().argmax()
    cell = head.pixels_to_cells(uv[0, 1])
    assert (int(peak // 56), int(peak % 56)) == (round(float(cell[1])), round(float(cell[0])))
    torch.testing.assert_close(head.keypoints_2d(maps), uv, atol=0.05, rtol=0)
    # Visibility mask: a wrong map for an invisible keypoint does not change the loss.
    vis = torch.ones(1, 12, dtype=torch.bool)
    vis[0, 5] = False
    bad = maps.clone()
    bad[0, 5] = 1.0
    assert head.loss(bad, uv, vis) == pytest.approx(0.0, abs=1e-9)
    assert head.loss(bad, uv, torch.ones_like(vis)) > 0.01


def test_hand_head_decodes_a_slice_of_its_maps_alone():
    """The planner's cost decodes only the right hand's six maps: the same maps as the full head's."""
    torch.manual_seed(0)
    head = HandHead(HandHeadConfig(latent_dim=16, grid=(7, 7), image_size=(224, 224))).eval()
    torch.nn.init.normal_(head.out.weight, std=0.1)
    latents = torch.randn(2, 3, 49, 16)
    with torch.no_grad():
        full = head(latents)
        for maps in (slice(0, 6), slice(6, 12), slice(3, 4)):
            torch.testing.assert_close(head(latents, maps), full[..., maps, :, :], atol=1e-6, rtol=1e-5)
    for bad in (slice(0, 12, 2), slice(5, 5)):
        with pytest.raises(ValueError, match="contiguous slice"):
            head(latents, bad)


# ------------------------------------------------------------------------------- encoders and DexWM
@pytest.fixture(scope="module")
def wm():
    return DexWM(WorldModelConfig(encoder=EncoderConfig(proj_dim=16)))


def test_encoder_geometry_maps_raw_pixels_to_model_pixels(wm):
    img = np.zeros((1, 120, 200, 3), np.uint8)
    img[0, 30:34, 150:154] = 255  # a bright square centred at raw (151.5, 31.5)
    model_img = wm.encoder.model_images(img)[0].astype(float).sum(-1)
    assert model_img.shape == (224, 224)
    ys, xs = np.nonzero(model_img > model_img.max() * 0.5)
    expect = wm.encoder.raw_to_model_pixels([151.5, 31.5], (120, 200))
    assert abs(xs.mean() - expect[0]) < 1.0 and abs(ys.mean() - expect[1]) < 1.0


def test_encode_and_input_validation(wm):
    z = wm.encode(np.zeros((2, 240, 320, 3), np.uint8))
    assert z.shape == (2, 49, 16) and wm.image_size == (224, 224)
    with pytest.raises(ValueError, match="uint8"):
        wm.encode(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        wm.encode(np.zeros((1, 224, 224), np.uint8))
    with pytest.raises(ValueError, match="too narrow"):
        wm.encode(np.zeros((1, 400, 200, 3), np.uint8))
    ctx = torch.zeros(1, 49, 16)
    with pytest.raises(ValueError, match="non-finite"):
        wm.rollout(ctx, np.full((2, 3, ACTION_DIM), np.nan))
    with pytest.raises(ValueError, match="132"):
        wm.rollout(ctx, np.zeros((2, 3, 131)))
    with pytest.raises(ValueError, match="context"):
        wm.rollout(torch.zeros(1, 48, 16), np.zeros((2, 3, ACTION_DIM)))
    out = wm.rollout(ctx, np.zeros((5, 3, ACTION_DIM)))
    assert out.shape == (5, 3, 49, 16)
    torch.testing.assert_close(wm.rollout(ctx[0], np.zeros((5, 3, ACTION_DIM))), out)  # one frame as (P, d)
    assert wm.keypoints_2d(out).shape == (5, 3, 12, 2)


def test_checkpoint_round_trip_and_errors(wm, tmp_path):
    for p in wm.predictor.parameters():  # make the weights non-trivial
        torch.nn.init.normal_(p, 0, 0.02)
    path = str(tmp_path / "wm.pt")
    wm.save(path, meta={"note": "test"})
    wm2 = DexWM.load(path)
    ctx = torch.randn(2, 49, 16)
    acts = np.random.default_rng(0).normal(0, 0.01, (3, 2, ACTION_DIM))
    torch.testing.assert_close(wm2.rollout(ctx, acts), wm.rollout(ctx, acts))
    assert wm2.meta["note"] == "test" and wm2.meta["code_version"]

    with pytest.raises(CheckpointError, match="not found"):
        DexWM.load(str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(open(path, "rb").read()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        DexWM.load(str(corrupt))
    ck = torch.load(path, weights_only=True)
    other = dict(ck)
    del other["normalizer"]
    torch.save(other, tmp_path / "nokeys.pt")
    with pytest.raises(CheckpointError, match="normalizer"):
        DexWM.load(str(tmp_path / "nokeys.pt"))
    other = dict(ck)
    other["config"] = {**ck["config"], "predictor": {**ck["config"]["predictor"], "width": 64}}
    torch.save(other, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        DexWM.load(str(tmp_path / "mismatch.pt"))
    torch.save({"a": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a DexWM checkpoint"):
        DexWM.load(str(tmp_path / "foreign.pt"))
    # all-NaN (or one inf) weights: refused at load with one line naming the entry
    nan = dict(ck)
    nan["predictor"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                        for k, v in ck["predictor"].items()}
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="predictor has NaN/inf") as err:
        DexWM.load(str(tmp_path / "nan.pt"))
    assert "\n" not in str(err.value)
    inf = dict(ck)
    key = next(k for k, v in ck["hand_head"].items() if v.is_floating_point())
    inf["hand_head"] = {**ck["hand_head"], key: ck["hand_head"][key].clone().fill_(float("inf"))}
    torch.save(inf, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match=f"hand_head has NaN/inf values \\(first in {key}\\)"):
        DexWM.load(str(tmp_path / "inf.pt"))


def test_dinov2_encoder_from_local_directory(tmp_path):
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=56)
    Dinov2Model(cfg).save_pretrained(tmp_path / "dino")
    enc = FrozenEncoder(EncoderConfig(kind="dinov2", weights=str(tmp_path / "dino"), image_size=(28, 42),
                                      proj_dim=None))
    tok = enc(np.random.default_rng(0).integers(0, 255, (2, 60, 100, 3), dtype=np.uint8))
    assert tok.shape == (2, 2 * 3, 32) and enc.grid == (2, 3)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="huggingface-cli download") as err:
        FrozenEncoder(EncoderConfig(kind="dinov2", weights=missing, image_size=(28, 42)))
    assert missing in str(err.value)
    with pytest.raises(ValueError, match="multiples of 14"):
        EncoderConfig(kind="dinov2", weights=missing, image_size=(30, 42))


def test_rollout_mode_of_forward_matches_rollout():
    m = randomised()
    z, a, dt = torch.randn(2, 5, 6, 16), torch.randn(2, 5, ACTION_DIM), torch.full((2, 5), 0.2)
    out = m(z[:, :2], a, dt, rollout_from=2)
    ref = m.rollout(z[:, :2], a[:, :1], dt[:, :1], a[:, 1:], dt[:, 1:])
    assert out.shape == (2, 4, 6, 16)
    torch.testing.assert_close(out, ref)
    out.sum().backward()  # differentiable: multistep training backpropagates through the rollout
    assert m.blocks[0].qkv.weight.grad is not None
