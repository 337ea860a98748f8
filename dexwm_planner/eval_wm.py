"""Open-loop rollouts of the world model against recorded episodes (the ``dexwm-eval-wm`` command's
main mode; the command itself is ``dexwm_ros.eval_wm``).

For every episode: context = the first ``--context`` frames, then ``--horizon`` steps (paper: 20
steps of 0.2 s) predicted autoregressively from the recorded actions. Per horizon step it reports
the latent error (mean squared error per latent element, next to the error of simply repeating
the last context frame) and PCK@{2.5, 5, 10, 20} px of the 12 hand keypoints read from the
predicted latents (and, as the head's upper bound, from the actual latents), in model-image pixels.
Writes ``metrics.json``, ``metrics.png`` and ``strip.png`` (top: actual frames with the true
keypoints, bottom: the same frames with the keypoints decoded from the *predicted* latents).
"""
from __future__ import annotations

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


def open_loop(args) -> int:
    """The open-loop evaluation for the parsed arguments of ``dexwm-eval-wm`` (dexwm_ros.eval_wm):
    checkpoint, data, kind, episodes, cache_dir, horizon, context, stride, out, json."""
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
