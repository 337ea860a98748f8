"""Open-loop rollouts of the world model against recorded episodes (the ``dexwm-eval-wm`` command's
main mode; the command itself is ``dexwm_ros.eval_wm``).

For every episode: context = the first ``--context`` frames, then ``--horizon`` steps (paper: 20
steps of 0.2 s) predicted autoregressively from the recorded actions. Per horizon step it reports
the latent error (mean squared error per latent element, next to the error of simply repeating
the last context frame) and PCK@{2.5, 5, 10, 20} px of the 12 hand keypoints read from the
predicted latents (and, as the head's upper bound, from the actual latents), in model-image pixels.
When the checkpoint has an object-position probe (``object_probe``, ``<checkpoint>.probe.npz``) it
also reports where the objects are read from the predicted latents, in cm, next to "nothing
moves" and the probe on the actual latents (``object_readout``; ``object_readout_at`` at 0.2 / 1 /
2 / 4 s). When it has an occupancy probe (``occupancy_probe``, ``<checkpoint>.occupancy.pt``) it
reports the identity-free read-out as well: each object's distance to the nearest of the cells
the detector finds on the predicted latents, next to "nothing moves" scored the same way
(``object_occupancy``; ``object_occupancy_at``). When it has a tracking read-out (``track_probe``,
``<checkpoint>.track.pt``) it reports how far each object moved since the last context frame, read
from the latent around it and the hand, added to its recorded position, next to "nothing moves" and
the same read-out on the actual latents and on the context latent (``object_track``;
``object_track_at``). Writes ``metrics.json``, ``metrics.md`` (those
horizons), ``metrics.png`` and ``strip.png`` (top: actual frames with the true keypoints, bottom:
the same frames with the keypoints decoded from the *predicted* latents).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

from . import occupancy_probe, track_probe
from .actions import keypoint_actions
from .datasets import EncodedEpisode, heatmap_targets, load_episodes, projected_latents
from .hand_head import pck
from .keypoints import RIGHT_HAND_HEATMAPS
from .object_probe import ObjectProbe, probe_file, probe_split, readout_errors
from .occupancy_probe import OccupancyProbe
from .track_probe import TrackProbe
from .paths import recorded_path, same_file
from .world_model import CheckpointError, DexWM

THRESHOLDS = (2.5, 5.0, 10.0, 20.0)
# Horizons [s] of the markdown table and the object read-out summary (issue 11).
REPORT_SECONDS = (0.2, 1.0, 2.0, 4.0)


def encode_episodes(wm: DexWM, episodes, cache_dir=None):
    out = []
    for ep in episodes:
        uv, vis = heatmap_targets(ep, wm.encoder)
        out.append(EncodedEpisode(ep, projected_latents(ep, wm.encoder, cache_dir), uv, vis))
    return out


def rollout_starts(n: int, context: int, horizon: int, stride: int, every: int) -> list:
    """First frames of the rollouts in an n-frame episode: 0 (as far as the episode reaches), and
    with ``every`` > 0 also every ``every`` frames while a whole horizon still fits, so rollouts
    also start mid-episode, where objects are carried and pushed."""
    span = (context + horizon - 1) * stride
    starts = [0]
    if every > 0:
        starts += list(range(every, n - span, every))
    return starts


@torch.no_grad()
def evaluate(wm: DexWM, encoded, horizon: int = 20, context: int = 1, stride: int = 1, probe=None,
             start_every: int = 0, occupancy=None, track=None):
    """Returns per-step arrays and the rollouts needed for the strip. With an object ``probe``
    (``object_probe.ObjectProbe``) also the object read-out errors per step, with an ``occupancy``
    probe (``occupancy_probe.OccupancyProbe``) the identity-free read-out's, with a ``track``
    read-out (``track_probe.TrackProbe``) the tracking read-out's."""
    steps = []
    for e in encoded:
        n = len(e.episode)
        if n < context + 1:
            continue
        # The objects' grid cells, projected once per episode (every rollout start reads its rows).
        cells = (occupancy_probe.episode_cells(wm.encoder, e.episode).numpy()
                 if (occupancy is not None or track is not None) and e.episode.object_positions is not None
                 else None)
        for start in rollout_starts(n, context, horizon, stride, start_every):
            idx = start + np.arange(0, context + horizon) * stride
            idx = idx[idx < n]
            H = len(idx) - context
            if H < 1:
                continue
            step = _rollout(wm, e, idx, context, probe, occupancy, cells, track)
            step.update(episode=e, idx=idx)
            steps.append(step)
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
    if probe is not None:
        res["object_readout"] = object_readout_per_step([s.get("objects") for s in steps], Hmax)
    if occupancy is not None:
        res["object_occupancy"] = object_readout_per_step([s.get("occupancy") for s in steps], Hmax,
                                                          OCCUPANCY_KINDS, counted="in_view")
    if track is not None:
        res["object_track"] = object_readout_per_step([s.get("track") for s in steps], Hmax, TRACK_KINDS)
    res["horizon"] = Hmax
    res["episodes"] = len({id(s["episode"]) for s in steps})
    res["rollouts"] = len(steps)
    res["latent_error_last"] = res["latent_error"][-1]
    res["pck20_last"] = res["pck"]["20.0"][-1]
    return res, steps


def _rollout(wm: DexWM, e, idx, context: int, probe, occupancy=None, cells=None, track=None) -> dict:
    """One open-loop rollout over the frames ``idx`` of an encoded episode: errors per step
    (``cells``: the episode's object grid cells per frame, for the ``occupancy`` and ``track``
    read-outs)."""
    ep = e.episode
    acts = keypoint_actions(ep.keypoints_world[idx], ep.cam_to_world[idx])
    dt = float(ep.dt * (idx[1] - idx[0]))
    pred = wm.rollout(e.latents[idx[:context]], acts[None, context - 1:], context_actions=acts[:context - 1],
                      dt=dt, context_dt=dt)[0]
    true = e.latents[idx[context:]]
    out = dict(err=((pred - true) ** 2).mean((-1, -2)).numpy(),
               copy=((e.latents[idx[context - 1]][None] - true) ** 2).mean((-1, -2)).numpy(),
               kp_pred=wm.keypoints_2d(pred).numpy(), kp_act=wm.keypoints_2d(true).numpy(),
               uv=e.uv[idx[context:]], vis=e.visible[idx[context:]])
    pos = ep.object_positions
    if probe is not None and pos is not None and pos.shape[1] == probe.num_objects:
        # The probe reads latents (the predicted ones; the actual ones for its floor) and, at most, what
        # is known at the last context frame: never the future positions.
        out["objects"] = readout_errors(probe, pred.numpy(), true.numpy(), pos[idx[context:]],
                                        e.latents[idx[context - 1]].numpy(), pos[idx[context - 1]])
    if occupancy is not None and pos is not None:
        out["occupancy"] = occupancy_probe.readout_errors(occupancy, pred.numpy(), true.numpy(), pos[idx[context:]],
                                                          cells[idx[context:]], e.latents[idx[context - 1]].numpy(),
                                                          pos[idx[context - 1]])
    if track is not None and pos is not None:
        if track.step_seconds is not None and abs(dt - track.step_seconds) > 1e-3:
            raise ValueError(f"the tracking read-out was fitted for model steps of {track.step_seconds:g} s; these "
                             f"rollouts step {dt:g} s (choose --stride so that they match)")
        last = idx[context - 1]
        hand = RIGHT_HAND_HEATMAPS
        out["track"] = track_probe.readout_errors(
            track, pred.numpy(), true.numpy(), out["kp_pred"][:, hand], out["kp_act"][:, hand], pos[idx[context:]],
            e.latents[last].numpy(), wm.keypoints_2d(e.latents[last], hand).numpy(), pos[last], cells[last])
    return out


READOUT_KINDS = ("predicted", "true_latents", "nothing_moves")
OCCUPANCY_KINDS = ("predicted", "true_latents", "context_latent", "nothing_moves")
TRACK_KINDS = OCCUPANCY_KINDS + ("predicted_hand_only", "predicted_latent_only")


def object_readout_per_step(per_rollout, horizon: int, kinds=READOUT_KINDS, counted: str | None = None) -> dict:
    """Mean object position error [cm] per horizon step over all objects and over the objects that
    moved, for each of ``kinds`` (the probe on predicted latents, on actual latents, "nothing
    moves" ...); with ``counted`` (e.g. ``in_view``) only over the objects that mask marks."""
    out = {"rollouts": 0, "objects_moved": [], "objects": []}
    for k in kinds:
        out[f"{k}_cm"], out[f"{k}_moved_cm"] = [], []
    have = [r for r in per_rollout if r is not None]
    out["rollouts"] = len(have)
    for h in range(horizon):
        at = [r for r in have if len(r["moved"]) > h]
        moved = np.concatenate([r["moved"][h] for r in at]) if at else np.zeros(0, bool)
        keep = np.concatenate([r[counted][h] for r in at]) if at and counted else np.ones(moved.size, bool)
        moved = moved[keep]
        out["objects"].append(int(moved.size))
        out["objects_moved"].append(int(moved.sum()))
        for k in kinds:
            e = np.concatenate([r[k][h] for r in at])[keep] * 100 if at else np.zeros(0)
            out[f"{k}_cm"].append(float(e.mean()) if e.size else None)
            out[f"{k}_moved_cm"].append(float(e[moved].mean()) if moved.any() else None)
    return out


def horizon_index(seconds: float, dt: float) -> int:
    """Index of the rollout step that lands ``seconds`` ahead (step 1 is index 0)."""
    return int(round(seconds / dt)) - 1


def object_readout_at(readout: dict, dt: float, seconds=REPORT_SECONDS) -> dict:
    """The read-out errors at the reported horizons (0.2 / 1 / 2 / 4 s), keyed by seconds."""
    out = {}
    for t in seconds:
        h = horizon_index(t, dt)
        if 0 <= h < len(readout["objects"]):
            out[f"{t:g}"] = {"step": h + 1, **{k: v[h] for k, v in readout.items() if isinstance(v, list)}}
    return out


def plot_metrics(res: dict, path: str, dt: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = (np.arange(res["horizon"]) + 1) * dt
    obj, occ, trk = res.get("object_readout"), res.get("object_occupancy"), res.get("object_track")
    panels = 2 + bool(obj) + bool(occ) + bool(trk)
    fig, ax = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
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
    panels = [(obj, ("probe on predicted latents", "probe on actual latents", None),
               "object position error [cm] (moved objects)"),
              (occ, ("cells read from predicted latents", "from actual latents", "from the last context latent"),
               "distance to nearest read point [cm] (moved)"),
              (trk, ("tracked on predicted latents", "on actual latents", "on the last context latent"),
               "object position error [cm] (moved, tracked)")]
    for axis, (readout, labels, ylabel) in zip(ax[2:], [p for p in panels if p[0]]):
        for key, style, label in zip(("predicted", "true_latents", "context_latent", "nothing_moves"),
                                     ("o-", ":", "-.", "--"), (*labels, "nothing moves")):
            if label is not None:
                axis.plot(t, [np.nan if v is None else v for v in readout[f"{key}_moved_cm"]], style, label=label)
        axis.set_xlabel("prediction horizon [s]")
        axis.set_ylabel(ylabel)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_markdown(res: dict, path: str, dt: float) -> str:
    """metrics.md: the evaluation at 0.2 / 1 / 2 / 4 s, object read-out beside latent error and PCK.
    Returns the text written."""
    f = _cell

    lines = [f"{res['episodes']} episodes, {res['rollouts']} rollouts, {res['context']} context frame(s), "
             f"steps of {dt:.2f} s; checkpoint `{os.path.basename(res['checkpoint'])}`", ""]
    obj = res.get("object_readout_at")
    head = "| horizon (s) | latent error | repeat last frame | PCK@10 | PCK@20 |"
    if obj is not None:
        head += (" objects moved / all | object error moved (cm): predicted | actual latents | nothing moves "
                 "| all objects (cm): predicted | actual latents | nothing moves |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for t in REPORT_SECONDS:
        h = horizon_index(t, dt)
        if not 0 <= h < res["horizon"]:
            continue
        row = (f"| {t:g} | {res['latent_error'][h]:.3f} | {res['latent_error_copy_baseline'][h]:.3f} "
               f"| {res['pck']['10.0'][h]:.3f} | {res['pck']['20.0'][h]:.3f} |")
        o = (obj or {}).get(f"{t:g}")
        if o is not None:
            row += (f" {o['objects_moved']} / {o['objects']} | {f(o['predicted_moved_cm'])} "
                    f"| {f(o['true_latents_moved_cm'])} | {f(o['nothing_moves_moved_cm'])} "
                    f"| {f(o['predicted_cm'])} | {f(o['true_latents_cm'])} | {f(o['nothing_moves_cm'])} |")
        elif obj is not None:
            row += " - |" * 7
        lines.append(row)
    if obj is not None:
        lines += ["", f"Object error: the object-position probe (`<checkpoint>.probe.npz`, {res['object_probe']['target']} "
                  "read-out) on the predicted "
                  "latents, on the actual future latents (the probe's floor), and \"nothing moves\" (the positions "
                  "at the last context frame), against the recorded positions; moved: > 1 cm from there."]
    lines += _moved_table(res.get("object_occupancy_at"), "objects in view: moved / all", "all in view (cm)", (), [
        "Identity-free read-out (`<checkpoint>.occupancy.pt`): each object in the grid, its table (x, y) distance to the "
        "nearest of the K cells the detector scores highest (K = the scene's objects) on the predicted latents, the "
        "actual future latents (the read-out's floor) and the last context latent (a frozen world read the same way), "
        "and to the nearest of the K positions recorded at the last context frame (\"nothing moves\"); moved: > 1 cm "
        "from there."])
    lines += _moved_table(res.get("object_track_at"), "objects moved / all", "all (cm)",
                          (("predicted hand only", "predicted_hand_only"), ("predicted latent only", "predicted_latent_only")), [
        "Tracking read-out (`<checkpoint>.track.pt`): each object's recorded position at the last context frame plus "
        "the displacement read from the latent around it and the hand decoded from both latents, on the predicted "
        "latents, the actual future latents (the read-out's floor) and the last context latent (a frozen world read the "
        "same way), against the recorded positions; \"nothing moves\": the positions at the last context frame; moved: "
        "> 1 cm from there. Predicted hand only: the context latent read with the hand decoded from the predicted "
        "latent; predicted latent only: the predicted latent with the context's hand."])
    text = "\n".join(lines) + "\n"
    with open(path, "w") as fh:
        fh.write(text)
    return text


def _cell(v) -> str:
    """A markdown table cell of a figure that may be missing (None)."""
    return "-" if v is None else f"{v:.2f}"


def _moved_table(at: dict | None, count_label: str, all_label: str, extra, caption) -> list:
    """Markdown lines of a read-out that stands beside a frozen world (``object_occupancy_at``,
    ``object_track_at``): moved objects' errors on predicted, actual and context latents, "nothing
    moves" and its ratio to the prediction, ``extra`` (header, key) columns, then all objects."""
    if at is None:
        return []
    f = _cell
    head = (f"| horizon (s) | {count_label} | moved (cm): predicted | actual latents | last context latent "
            f"| nothing moves | nothing moves / predicted |" + "".join(f" {h} |" for h, _ in extra)
            + f" {all_label}: predicted | nothing moves |")
    lines = ["", head, "|" + "---|" * (head.count("|") - 1)]
    for t in REPORT_SECONDS:
        o = at.get(f"{t:g}")
        if o is None:
            continue
        p, still = o["predicted_moved_cm"], o["nothing_moves_moved_cm"]
        lines.append(f"| {t:g} | {o['objects_moved']} / {o['objects']} | {f(p)} | {f(o['true_latents_moved_cm'])} "
                     f"| {f(o['context_latent_moved_cm'])} | {f(still)} | {f(still / p if p and still is not None else None)} |"
                     + "".join(f" {f(o[f'{key}_moved_cm'])} |" for _, key in extra)
                     + f" {f(o['predicted_cm'])} | {f(o['nothing_moves_cm'])} |")
    return lines + ["", *caption]


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


def select_episodes(args, wm: DexWM):
    """The episodes of ``args.data`` to evaluate: with ``args.held_out`` only those the probe split
    (``object_probe.probe_split``) keeps out of training, else the first ones; at most
    ``args.episodes``."""
    held_out = getattr(args, "held_out", False)
    episodes, skipped = load_episodes(args.data, args.kind, limit=None if held_out else args.episodes)
    if held_out:
        episodes = probe_split(episodes, wm.meta, getattr(args, "split_seed", 0),
                               getattr(args, "split_fraction", None))[1][:args.episodes]
    if not episodes:
        raise ValueError(f"no readable episodes in {args.data} ({skipped} broken)")
    return episodes, skipped


def _load_beside(given: str | None, beside: str, load, kind: str):
    """(loaded, path) of the file ``given``, else of ``beside`` (the checkpoint's own) when it exists,
    else (None, None); a given file that does not exist is an error."""
    path = given or beside
    if not os.path.isfile(path):
        if given:
            raise FileNotFoundError(f"{kind} not found: {path}")
        return None, None
    return load(path), str(path)


def load_probe(args):
    """``args.probe``, else the checkpoint's ``<name>.probe.npz`` when it exists, else None."""
    return _load_beside(getattr(args, "probe", None), probe_file(args.checkpoint), ObjectProbe.load, "probe")


def load_occupancy_probe(args):
    """``args.occupancy_probe``, else the checkpoint's ``<name>.occupancy.pt`` when it exists, else None."""
    return _load_beside(getattr(args, "occupancy_probe", None), occupancy_probe.probe_file(args.checkpoint),
                        OccupancyProbe.load, "occupancy probe")


def load_track_probe(args):
    """``args.track_probe``, else the checkpoint's ``<name>.track.pt`` when it exists, else None."""
    return _load_beside(getattr(args, "track_probe", None), track_probe.probe_file(args.checkpoint),
                        TrackProbe.load, "tracking read-out")


def evaluated_on_fit_episodes(meta: dict, data, encoded) -> int:
    """How many of the evaluated episodes a probe was fitted on. Episode names are file names: they
    identify episodes only within the data the probe was fitted on."""
    if not same_file(meta.get("data"), data):
        return 0
    fitted = set(meta.get("fit_episodes", ()))
    return sum(os.path.basename(e.episode.name) in fitted for e in encoded)


def open_loop(args) -> int:
    """The open-loop evaluation for the parsed arguments of ``dexwm-eval-wm`` (dexwm_ros.eval_wm):
    checkpoint, data, kind, episodes, cache_dir, horizon, context, stride, out, json; optional
    probe, held_out, split_fraction, split_seed, start_every."""
    try:
        wm = DexWM.load(args.checkpoint)
        probe, probe_path = load_probe(args)
        occupancy, occupancy_path = load_occupancy_probe(args)
        track, track_path = load_track_probe(args)
        episodes, skipped = select_episodes(args, wm)
        encoded = encode_episodes(wm, episodes, args.cache_dir)
        res, rollouts = evaluate(wm, encoded, args.horizon, args.context, args.stride, probe,
                                 getattr(args, "start_every", 0), occupancy, track)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"dexwm-eval-wm: {exc}", file=sys.stderr)
        return 1
    dt = float(np.median([e.episode.dt for e in encoded])) * args.stride
    res.update(checkpoint=recorded_path(args.checkpoint), data=recorded_path(args.data), dt=dt,
               context=args.context, skipped=skipped)
    if probe is not None:
        res["object_probe"] = {"path": recorded_path(probe_path), "pooling": probe.pooling, "target": probe.target,
                               "alpha": probe.meta.get("alpha"),
                               "fit_episodes": len(probe.meta.get("fit_episodes", ())),
                               "evaluated_on_fit_episodes": evaluated_on_fit_episodes(probe.meta, args.data, encoded)}
        res["object_readout_at"] = object_readout_at(res["object_readout"], dt)
    if occupancy is not None:
        res["occupancy_probe"] = {"path": recorded_path(occupancy_path),
                                  **{k: occupancy.meta.get(k) for k in ("iterations", "fit_frames", "checkpoint")},
                                  "fit_episodes": len(occupancy.meta.get("fit_episodes", ())),
                                  "evaluated_on_fit_episodes": evaluated_on_fit_episodes(occupancy.meta, args.data,
                                                                                         encoded)}
        res["object_occupancy_at"] = object_readout_at(res["object_occupancy"], dt)
    if track is not None:
        res["track_probe"] = {"path": recorded_path(track_path),
                              **{k: track.meta.get(k) for k in ("epochs", "fit_pairs", "step_seconds", "checkpoint")},
                              "fit_episodes": len(track.meta.get("fit_episodes", ())),
                              "evaluated_on_fit_episodes": evaluated_on_fit_episodes(track.meta, args.data, encoded)}
        res["object_track_at"] = object_readout_at(res["object_track"], dt)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "metrics.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    plot_metrics(res, os.path.join(args.out, "metrics.png"), dt)
    table = write_markdown(res, os.path.join(args.out, "metrics.md"), dt)
    draw_strip(wm, max(rollouts, key=lambda r: len(r["err"])), os.path.join(args.out, "strip.png"))
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['episodes']} episodes, {res['rollouts']} rollouts, horizon {res['horizon']} x {dt:.2f} s")
        print("step  latent_err  copy_base  " + "  ".join(f"PCK@{t}" for t in THRESHOLDS))
        for h in range(res["horizon"]):
            print(f"{h + 1:4d}  {res['latent_error'][h]:10.4f}  {res['latent_error_copy_baseline'][h]:9.4f}  "
                  + "  ".join(f"{res['pck'][str(t)][h]:7.3f}" for t in THRESHOLDS))
        print(table)
        print(f"wrote {args.out}/metrics.json, metrics.md, metrics.png, strip.png")
    return 0
