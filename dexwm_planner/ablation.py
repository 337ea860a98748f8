"""Hand-consistency ablation: the same training with and without the heatmap loss, then the same
open-loop evaluation of both.

    .venv/bin/python -m dexwm_planner.ablation config/wm_sim.yaml --eval-data data/sim_val \
        --out runs/ablation [key=value ...]

Writes ``<out>/ablation.json`` ({"with_hc": {...}, "without_hc": {...}}, each with
``pck20_last`` and ``latent_error_last`` plus the per-step curves), ``ablation.md`` (table) and
``ablation.png``. Without the loss the heatmap head is still trained, on detached predictions, so
PCK measures how much hand information the predicted latents carry.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import eval_wm, train
from .datasets import load_episodes
from .world_model import DexWM


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dexwm-ablation", description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--eval-data", required=True, help="held-out episodes for the open-loop evaluation")
    ap.add_argument("--kind", default="sim")
    ap.add_argument("--horizon", type=int, default=20)
    ap.add_argument("--out", default="runs/ablation")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    episodes, _ = load_episodes(args.eval_data, args.kind)
    if not episodes:
        print(f"dexwm-ablation: no readable episodes in {args.eval_data}", file=sys.stderr)
        return 1
    results = {}
    for name, hc in (("with_hc", True), ("without_hc", False)):
        run_dir = os.path.join(args.out, name)
        rc = train.main([args.config, *args.overrides, f"out={run_dir}", f"train.hc={str(hc).lower()}",
                         "train.export=null"])
        if rc != 0:
            return rc
        wm = DexWM.load(os.path.join(run_dir, "model.pt"))
        cache = train.load_config(args.config, args.overrides)["cache_dir"]
        res, _ = eval_wm.evaluate(wm, eval_wm.encode_episodes(wm, episodes, cache), args.horizon)
        results[name] = res
    with open(os.path.join(args.out, "ablation.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    lines = ["| run | latent error (last step) | PCK@20 (last step) | PCK@10 (last step) |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['latent_error_last']:.4f} | {r['pck20_last']:.3f} | {r['pck']['10.0'][-1]:.3f} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "ablation.md"), "w") as fh:
        fh.write(table + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r in results.items():
        ax[0].plot(range(1, r["horizon"] + 1), r["latent_error"], "o-", label=name)
        ax[1].plot(range(1, r["horizon"] + 1), r["pck"]["20.0"], "o-", label=name)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("latent error")
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("PCK@20px")
    ax[1].set_ylim(0, 1)
    for a in ax:
        a.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "ablation.png"), dpi=100)
    plt.close(fig)
    print(table)
    print(json.dumps({k: {"pck20_last": v["pck20_last"], "latent_error_last": v["latent_error_last"]}
                      for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
