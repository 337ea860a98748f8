"""dexwm-bench wm [--json]: world-model predictor throughput for planning-sized batches.

Measures autoregressive rollouts (one shared context frame, horizon 3, the CEM's sample counts)
of the predictor at the default (shipped) size, counts their FLOPs with torch's FlopCounterMode,
and measures a plain float32 matmul in the same run as the hardware baseline:
``predictor_flops_per_s / matmul_flops_per_s`` is the fraction of attainable matmul speed reached.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from .predictor import CDiTPredictor, PredictorConfig

# Torch counts its CUDA attention kernels but not the CPU one that scaled_dot_product_attention
# runs here, which left every attention matmul of the predictor out of the count: same formula.
_CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


if _CPU_ATTENTION not in flop_counter.flop_registry:
    flop_counter.register_flop_formula(_CPU_ATTENTION)(_cpu_attention_flops)


def _time(fn, min_time=1.0, min_reps=2):
    fn()  # warm-up
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < min_time:
        fn()
        reps += 1
    return (time.perf_counter() - t0) / reps


def matmul_flops_per_s(n=1024, min_time=1.0):
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / _time(lambda: a @ b, min_time)


def predictor_config() -> PredictorConfig:
    """The shipped checkpoint's predictor size when present, else the library default."""
    from .world_model import DexWM, default_checkpoint
    path = default_checkpoint()
    if os.path.isfile(path):
        try:
            cfg = DexWM.read_checkpoint(path)["config"]["predictor"]
            return PredictorConfig(**cfg)
        except Exception:
            pass
    return PredictorConfig()


@torch.no_grad()
def run(batch_sizes=(64, 512), horizon=3, min_time=1.0) -> dict:
    torch.manual_seed(0)
    cfg = predictor_config()
    model = CDiTPredictor(cfg).eval()
    ctx = torch.randn(1, 1, cfg.num_patches, cfg.latent_dim)
    out = {"predictor": {k: getattr(cfg, k) for k in ("width", "depth", "heads", "num_patches", "latent_dim")},
           "horizon": horizon, "threads": torch.get_num_threads(), "per_batch": {}}
    for B in batch_sizes:
        acts = torch.randn(B, horizon, cfg.action_dim)
        dt = torch.full((B, horizon), 0.2)
        fn = lambda: model.rollout(ctx, acts[:, :0], dt[:, :0][:1], acts, dt)  # noqa: E731
        with FlopCounterMode(display=False) as fc:
            fn()
        flops = fc.get_total_flops()
        sec = _time(fn, min_time)
        out["per_batch"][str(B)] = {"seconds_per_rollout": sec, "sample_steps_per_s": B * horizon / sec,
                                    "flops_per_rollout": flops, "flops_per_s": flops / sec}
    big = out["per_batch"][str(max(batch_sizes))]
    out["sample_steps_per_s"] = big["sample_steps_per_s"]
    out["predictor_flops_per_s"] = big["flops_per_s"]
    out["matmul_flops_per_s"] = matmul_flops_per_s(min_time=min_time)
    out["predictor_vs_matmul"] = out["predictor_flops_per_s"] / out["matmul_flops_per_s"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dexwm-bench wm", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--batch-sizes", default="64,512")
    ap.add_argument("--horizon", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    args = ap.parse_args(argv)
    res = run(tuple(int(b) for b in args.batch_sizes.split(",")), args.horizon, args.min_time)
    if args.json:
        print(json.dumps(res))
        return 0
    p = res["predictor"]
    print(f"CDiT predictor width {p['width']} depth {p['depth']} heads {p['heads']}, "
          f"{p['num_patches']} tokens x {p['latent_dim']}, horizon {res['horizon']}, {res['threads']} threads")
    for B, r in res["per_batch"].items():
        print(f"  batch {B:>4}: {r['seconds_per_rollout'] * 1e3:8.1f} ms/rollout  "
              f"{r['sample_steps_per_s']:9.1f} sample-steps/s  {r['flops_per_s'] / 1e9:7.2f} GFLOP/s")
    print(f"  plain matmul (1024^3 fp32): {res['matmul_flops_per_s'] / 1e9:.2f} GFLOP/s; "
          f"predictor reaches {res['predictor_vs_matmul']:.2f} of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
