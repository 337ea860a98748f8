"""dexwm-bench planner --json prints one JSON object with the contract's keys (figures not judged)."""
import json
import subprocess
import sys

import pytest

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


def test_wm_bench_counts_every_attention_matmul():
    """The FLOP count behind `dexwm-bench wm`'s ratio includes the attention of every block (the
    CPU attention kernel is not counted by torch itself): hand count for one rollout step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import dexwm_planner.bench  # noqa: F401  (registers the CPU attention formula)
    from dexwm_planner.predictor import CDiTPredictor, PredictorConfig

    cfg = PredictorConfig(latent_dim=16, num_patches=6, width=32, depth=2, heads=2, action_dim=132)
    m = CDiTPredictor(cfg).eval()
    B, P, h, hd = 5, cfg.num_patches, cfg.heads, cfg.width // cfg.heads
    with torch.no_grad(), FlopCounterMode(display=False) as fc:   # two context frames, one step
        m.rollout(torch.randn(1, 2, P, 16), torch.zeros(1, 1, 132), torch.full((1, 1), 0.2), torch.randn(B, 1, 132),
                  torch.full((B, 1), 0.2))
    attention = sum(v for k, v in fc.get_flop_counts()["Global"].items() if "attention" in str(k))
    # Per block, each over P queries of hd: the cache of the first frame (batch 1: self-attention over
    # P keys, cross-attention over null + P), then the step (batch B: the same two).
    assert attention == cfg.depth * 4 * h * P * hd * (1 + B) * (P + 1 + P)


def test_optimiser_bench_compares_searches_at_one_budget_and_executes_their_plans(tmp_path):
    """dexwm-bench optimiser: every variant gets the same evaluations, ratios are to random shooting on
    the same scene and seed, and every plan is executed (the runs end in different places);
    a run without random shooting, the reference of every ratio, is refused."""
    # The shipped model: a freshly initialised predictor ignores its actions (zero-initialised
    # modulation), so every search would return the held start.
    bench = [sys.executable, str(VENV_BIN / "dexwm-bench"), "optimiser"]
    r = subprocess.run(bench + ["--json", "--tasks", "reach", "--scenes", "1", "--seeds", "2", "--search", "8,2,2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout)
    reach = data["tasks"]["reach"]
    assert data["evaluations_per_replan"] == 16 and len(reach["scenes"]) == 1
    variants = reach["variants"]
    assert {v["evaluations"] for v in variants.values()} == {16}
    rs = variants["rs"]
    assert rs["planned_ratio_to_rs"] == rs["realised_ratio_to_rs"] == rs["task_distance_ratio_to_rs"] == 1.0
    for v in variants.values():
        assert len(v["realised"]) == len(v["distance"]) == 2 and v["planned_ratio_to_rs"] > 0
    # Unexecuted plans would leave every run on the start frame, at one distance and one latent cost.
    assert len({round(d, 6) for v in variants.values() for d in v["distance"]}) > 1
    assert len({round(c, 6) for v in variants.values() for c in v["realised"]}) > 1
    assert -1.0 <= reach["predicted_vs_realised_spearman"] <= 1.0
    r = subprocess.run(bench + ["--variants", "cem"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "random shooting" in r.stderr


def test_every_optimiser_variant_spends_the_presets_evaluations():
    from dexwm_planner.cem import CPU
    from dexwm_ros.optimiser_bench import VARIANTS, variant_config

    configs = {v: variant_config(v, CPU) for v in VARIANTS}
    assert {c.samples * c.iterations for c in configs.values()} == {CPU.samples * CPU.iterations}
    assert configs["cem-keep"].keep_elites == CPU.elites and configs["rs"].iterations == 1
    assert (configs["cem-narrow"].std_arm, configs["cem-narrow"].std_hand) == (CPU.std_arm / 2, CPU.std_hand / 2)
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config("gradient", CPU)
