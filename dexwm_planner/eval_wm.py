"""dexwm-eval-wm CHECKPOINT DATA: open-loop rollouts of the world model against recorded episodes.

    dexwm-eval-wm --object-sensitivity [--checkpoint C] [--scenes N] [--json]
    dexwm-eval-wm --object-sensitivity --encoder crop=[...] --encoder projection=whiten \
        --fit-data DIR [--cache-dir D] [--json]

``--object-sensitivity`` measures instead how much the checkpoint's latent (encoder + projection,
as the planner sees it) registers objects: over N >= 20 seeded place scenes, the median of
latent-MSE(object moved to its place target) / latent-MSE(arm joint 1 + 0.05 rad); see
``object_sensitivity``. With ``--encoder KEY=VALUE`` it measures a candidate representation
instead: the checkpoint's (or the default) encoder config with these overrides, its projection
fitted on the episodes of ``--fit-data`` exactly as ``dexwm-train`` fits it.

For every episode: context = the first ``--context`` frames, then ``--horizon`` steps (paper: 20
steps of 0.2 s) predicted autoregressively from the recorded actions. Per horizon step it reports
the latent error (mean squared error per latent element, next to the error of simply repeating
the last context frame) and PCK@{2.5, 5, 10, 20} px of the 12 hand keypoints read from the
predicted latents (and, as the head's upper bound, from the actual latents), in model-image pixels.
Writes ``metrics.json``, ``metrics.png`` and ``strip.png`` (top: actual frames with the true
keypoints, bottom: the same frames with the keypoints decoded from the *predicted* latents).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from .actions import keypoint_actions
from .datasets import EncodedEpisode, cached_tokens, heatmap_targets, load_episodes
from .hand_head import pck
from .world_model import CheckpointError, DexWM

THRESHOLDS = (2.5, 5.0, 10.0, 20.0)


def encode_episodes(wm: DexWM, episodes, cache_dir=None):
    out = []
    for ep in episodes:
        tok = cached_tokens(ep, wm.encoder, cache_dir)
        lat = wm.encoder.project(tok)
        uv, vis = heatmap_targets(ep, wm.encoder)
        out.append(EncodedEpisode(ep, lat.float(), uv, vis))
    return out


@torch.no_grad()
def evaluate(wm: DexWM, encoded, horizon: int = 20, context: int = 1, stride: int = 1):
    """Returns per-step arrays and the rollouts needed for the strip."""
    steps = []
    for e in encoded:
        need = context + horizon
        n = len(e.episode)
        if n < context + 1:
            continue
        H = min(horizon, n - context)
        idx = np.arange(0, context + H) * stride
        idx = idx[idx < n]
        H = len(idx) - context
        if H < 1:
            continue
        ep = e.episode
        acts = keypoint_actions(ep.keypoints_world[idx], ep.cam_to_world[idx])
        dt = float(ep.dt * stride)
        pred = wm.rollout(e.latents[idx[:context]], acts[None, context - 1:], context_actions=acts[:context - 1],
                          dt=dt, context_dt=dt)[0]
        true = e.latents[idx[context:]]
        err = ((pred - true) ** 2).mean((-1, -2)).numpy()
        copy = ((e.latents[idx[context - 1]][None] - true) ** 2).mean((-1, -2)).numpy()
        kp_pred = wm.keypoints_2d(pred).numpy()
        kp_act = wm.keypoints_2d(true).numpy()
        steps.append(dict(err=err, copy=copy, kp_pred=kp_pred, kp_act=kp_act, uv=e.uv[idx[context:]],
                          vis=e.visible[idx[context:]], episode=e, idx=idx, need=need))
    if not steps:
        raise ValueError(f"no episode has the {context + 1} frames an evaluation needs")
    Hmax = max(len(s["err"]) for s in steps)
    res = {"latent_error": [], "latent_error_copy_baseline": [], "rollouts_per_step": [],
           "pck": {str(t): [] for t in THRESHOLDS}, "pck_actual_latents": {str(t): [] for t in THRESHOLDS}}
    for h in range(Hmax):
        at = [s for s in steps if len(s["err"]) > h]
        res["rollouts_per_step"].append(len(at))
        res["latent_error"].append(float(np.mean([s["err"][h] for s in at])))
        res["latent_error_copy_baseline"].append(float(np.mean([s["copy"][h] for s in at])))
        uv = np.stack([s["uv"][h] for s in at])
        vis = np.stack([s["vis"][h] for s in at])
        for key, name in (("kp_pred", "pck"), ("kp_act", "pck_actual_latents")):
            p = pck(np.stack([s[key][h] for s in at]), uv, vis, THRESHOLDS)
            for t in THRESHOLDS:
                res[name][str(t)].append(p[t])
    res["horizon"] = Hmax
    res["episodes"] = len(steps)
    res["latent_error_last"] = res["latent_error"][-1]
    res["pck20_last"] = res["pck"]["20.0"][-1]
    return res, steps


def plot_metrics(res: dict, path: str, dt: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = (np.arange(res["horizon"]) + 1) * dt
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(t, res["latent_error"], "o-", label="world model")
    ax[0].plot(t, res["latent_error_copy_baseline"], "--", label="repeat last frame")
    ax[0].set_xlabel("prediction horizon [s]")
    ax[0].set_ylabel("latent error (MSE)")
    ax[0].legend()
    for thr, vals in res["pck"].items():
        ax[1].plot(t, vals, "o-", label=f"PCK@{thr}px")
    ax[1].set_xlabel("prediction horizon [s]")
    ax[1].set_ylabel("PCK (predicted latents)")
    ax[1].set_ylim(0, 1)
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_strip(wm: DexWM, rollout: dict, path: str, max_frames: int = 8):
    import cv2
    e = rollout["episode"]
    frames = e.episode.load_frames()[rollout["idx"][-len(rollout["err"]):]][:max_frames]
    imgs = wm.encoder.model_images(frames)
    rows = [[], []]
    for k, img in enumerate(imgs):
        top, bottom = img.copy(), (img * 0.6).astype(np.uint8)
        for j in range(12):
            if rollout["vis"][k][j]:
                cv2.circle(top, tuple(int(round(v)) for v in rollout["uv"][k][j]), 3, (0, 255, 0), -1)
            if j < 6 or rollout["vis"][k][j]:  # the right hand always (the planner's), the left if seen
                cv2.circle(bottom, tuple(int(round(v)) for v in rollout["kp_pred"][k][j]), 3, (255, 40, 40), -1)
        cv2.putText(top, f"t+{k + 1}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
        rows[0].append(top)
        rows[1].append(bottom)
    strip = np.concatenate([np.concatenate(r, 1) for r in rows], 0)
    cv2.imwrite(path, cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))


def object_sensitivity_main(args) -> int:
    import dataclasses

    import yaml

    from . import object_sensitivity as osens
    from .encoders import EncoderConfig, FrozenEncoder
    from .world_model import default_checkpoint
    if args.scenes < MIN_SENSITIVITY_SCENES:
        print(f"dexwm-eval-wm: --scenes must be >= {MIN_SENSITIVITY_SCENES}", file=sys.stderr)
        return 2
    checkpoint = args.checkpoint_opt or args.checkpoint or default_checkpoint()
    try:
        wm = DexWM.load(checkpoint)
        encoder, fit = wm.encoder, None
        if args.encoder:
            fields = dataclasses.asdict(wm.encoder.config)
            for item in args.encoder:
                key, sep, value = item.partition("=")
                if not sep or key not in fields:
                    raise ValueError(f"--encoder {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
                fields[key] = yaml.safe_load(value)
            encoder = FrozenEncoder(EncoderConfig(**fields))
            if encoder.config.proj_dim:
                if not args.fit_data:
                    raise ValueError("a projected candidate encoder needs --fit-data (episodes to fit it on)")
                from .train import fit_encoder_projection
                episodes, _ = load_episodes(args.fit_data, args.kind, limit=args.episodes)
                if not episodes:
                    raise ValueError(f"no readable episodes in {args.fit_data}")
                fit_encoder_projection(encoder, [cached_tokens(ep, encoder, args.cache_dir) for ep in episodes])
                fit = {"data": os.path.abspath(args.fit_data), "episodes": len(episodes)}
        scenes = osens.render_scenes(args.scenes, args.first_seed)
        res = osens.measure(encoder, scenes)
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"dexwm-eval-wm: {exc}", file=sys.stderr)
        return 1
    res.update(checkpoint=os.path.abspath(checkpoint), first_seed=args.first_seed,
               encoder=dataclasses.asdict(encoder.config), projection_fit=fit)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['scenes']} {res['task']} scenes (seeds {args.first_seed}..{args.first_seed + res['scenes'] - 1})")
        print("seed  object_mse  arm_mse   ratio")
        for p in res["per_scene"]:
            print(f"{p['seed']:4d}  {p['object_mse']:10.4f}  {p['arm_mse']:7.4f}  {p['ratio']:6.3f}")
        print(f"object_to_arm_ratio_median {res['object_to_arm_ratio_median']:.3f} "
              f"(object_mse median {res['object_mse_median']:.4f}, arm_mse median {res['arm_mse_median']:.4f})")
    return 0


MIN_SENSITIVITY_SCENES = 20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dexwm-eval-wm", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", nargs="?", help="DexWM checkpoint (default: the shipped one for "
                    "--object-sensitivity)")
    ap.add_argument("data", nargs="?", help="episode file or folder")
    ap.add_argument("--checkpoint", dest="checkpoint_opt", default=None, help="same as the positional CHECKPOINT")
    ap.add_argument("--kind", default="sim", choices=("sim", "egodex", "droid"))
    ap.add_argument("--horizon", type=int, default=20)
    ap.add_argument("--context", type=int, default=1)
    ap.add_argument("--stride", type=int, default=1, help="kept frames per step")
    ap.add_argument("--episodes", type=int, default=None, help="at most this many episodes")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default="runs/eval_wm")
    ap.add_argument("--json", action="store_true", help="print the metrics JSON on stdout")
    ap.add_argument("--object-sensitivity", action="store_true",
                    help="measure object vs arm sensitivity of the latent on seeded place scenes")
    ap.add_argument("--scenes", type=int, default=MIN_SENSITIVITY_SCENES, help="place scenes (>= 20)")
    ap.add_argument("--first-seed", type=int, default=0, help="seed of the first place scene")
    ap.add_argument("--encoder", action="append", default=[], metavar="KEY=VALUE",
                    help="measure a candidate encoder: the checkpoint's encoder config with this override")
    ap.add_argument("--fit-data", default=None, help="episodes to fit a candidate encoder's projection on")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.object_sensitivity:
        return object_sensitivity_main(args)
    if args.checkpoint_opt:
        if args.checkpoint and not args.data:   # `--checkpoint C DATA`
            args.data = args.checkpoint
        args.checkpoint = args.checkpoint_opt
    if not args.checkpoint or not args.data:
        ap.error("CHECKPOINT and DATA are required (unless --object-sensitivity)")
    try:
        wm = DexWM.load(args.checkpoint)
        episodes, skipped = load_episodes(args.data, args.kind, limit=args.episodes)
        if not episodes:
            raise ValueError(f"no readable episodes in {args.data} ({skipped} broken)")
        encoded = encode_episodes(wm, episodes, args.cache_dir)
        res, rollouts = evaluate(wm, encoded, args.horizon, args.context, args.stride)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"dexwm-eval-wm: {exc}", file=sys.stderr)
        return 1
    dt = float(np.median([e.episode.dt for e in encoded])) * args.stride
    res.update(checkpoint=os.path.abspath(args.checkpoint), data=os.path.abspath(args.data), dt=dt,
               context=args.context, skipped=skipped)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    plot_metrics(res, os.path.join(args.out, "metrics.png"), dt)
    draw_strip(wm, max(rollouts, key=lambda r: len(r["err"])), os.path.join(args.out, "strip.png"))
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['episodes']} episodes, horizon {res['horizon']} x {dt:.2f} s")
        print("step  latent_err  copy_base  " + "  ".join(f"PCK@{t}" for t in THRESHOLDS))
        for h in range(res["horizon"]):
            print(f"{h + 1:4d}  {res['latent_error'][h]:10.4f}  {res['latent_error_copy_baseline'][h]:9.4f}  "
                  + "  ".join(f"{res['pck'][str(t)][h]:7.3f}" for t in THRESHOLDS))
        print(f"wrote {args.out}/metrics.json, metrics.png, strip.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
