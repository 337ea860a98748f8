"""dexwm-eval-wm CHECKPOINT DATA: open-loop rollouts of the world model against recorded episodes.

    dexwm-eval-wm CHECKPOINT DATA [--held-out] [--start-every K] [--episodes N] [--cache-dir D]
    dexwm-eval-wm --fit-probe CHECKPOINT DATA [--cache-dir D] [--pooling flat|mean] [--probe-target position|change]
    dexwm-eval-wm --fit-probe CHECKPOINT DATA --probe-target occupancy [--cache-dir D] [--probe-iterations N]
    dexwm-eval-wm --fit-probe CHECKPOINT DATA --probe-target track [--cache-dir D] [--probe-epochs N]

    dexwm-eval-wm --object-sensitivity [--checkpoint C] [--scenes N] [--json]
    dexwm-eval-wm --grasp-sensitivity [--checkpoint C] [--scenes N] [--first-seed S] [--camera P,A] [--json]
    dexwm-eval-wm --object-sensitivity --encoder crop=[...] --encoder projection=whiten \
        --fit-data DIR [--cache-dir D] [--json]

The open-loop evaluation is the planner's (``dexwm_planner.eval_wm``, whose docstring says what it
measures and writes). ``--object-sensitivity`` measures instead how much the checkpoint's latent
(encoder + projection, as the planner sees it) registers objects: over N >= 20 seeded place scenes,
the median of latent-MSE(object moved to its place target) / latent-MSE(arm joint 1 + 0.05 rad); see
``dexwm_ros.object_sensitivity``. ``--grasp-sensitivity`` asks whether that latent scores a held
object closer to a grasp goal than a hand closed beside it, and whether the world model's rollouts
of the two motions do (``dexwm_ros.grasp_sensitivity``). With
``--encoder KEY=VALUE`` either measures a candidate representation instead: the checkpoint's (or
the default) encoder config with these overrides, its projection fitted on the episodes of
``--fit-data`` exactly as ``dexwm-train`` fits it. The command lives here, above the planner and the
simulation, because those modes render simulation scenes.
``--fit-probe`` fits the checkpoint's object-position probe (``dexwm_planner.object_probe``) on the
training part of DATA and writes ``<checkpoint>.probe.npz``, which the open-loop evaluation then
reads; ``--probe-target occupancy`` fits the identity-free read-out instead (which grid cells hold
an object, ``dexwm_planner.occupancy_probe``) and writes ``<checkpoint>.occupancy.pt``, which the
evaluation reads beside the position probe; ``--probe-target track`` fits the tracking read-out (how
far each object moved since the last context frame, ``dexwm_planner.track_probe``) and writes
``<checkpoint>.track.pt``, read likewise; ``--held-out`` evaluates on the episodes of DATA that
split keeps out (never trained on).
"""
from __future__ import annotations

import argparse
import sys

from dexwm_ros.object_sensitivity import MIN_SCENES


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(prog="dexwm-eval-wm", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", nargs="?", help="DexWM checkpoint (default: the shipped one for "
                    "--object-sensitivity)")
    ap.add_argument("data", nargs="?", help="episode file or folder")
    ap.add_argument("--checkpoint", dest="checkpoint_opt", default=None, help="same as the positional CHECKPOINT")
    ap.add_argument("--kind", default="sim", choices=("sim", "egodex", "droid"))
    ap.add_argument("--horizon", type=int, default=20)
    ap.add_argument("--context", type=int, default=1)
    ap.add_argument("--stride", type=int, default=1, help="kept frames per step")
    ap.add_argument("--episodes", type=int, default=None,
                    help="at most this many episodes (--fit-probe: training episodes fitted on)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default="runs/eval_wm")
    ap.add_argument("--json", action="store_true", help="print the metrics JSON on stdout")
    ap.add_argument("--object-sensitivity", action="store_true",
                    help="measure object vs arm sensitivity of the latent on seeded place scenes")
    ap.add_argument("--grasp-sensitivity", action="store_true",
                    help="measure whether the latent prefers a held object to a hand closed beside it, on "
                         "the paper protocol's grasp stages")
    ap.add_argument("--camera", default="", metavar="PITCH,AZIMUTH",
                    help="--grasp-sensitivity: render from a candidate head camera (degrees down, degrees "
                         "from +x toward +y; default: the simulation's, 60,25)")
    ap.add_argument("--scenes", type=int, default=MIN_SCENES,
                    help=f"place scenes (>= {MIN_SCENES}); --grasp-sensitivity: grasp stages")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seed of the first place scene; --grasp-sensitivity: first evaluation seed "
                         "(as dexwm-eval --seed)")
    ap.add_argument("--encoder", action="append", default=[], metavar="KEY=VALUE",
                    help="measure a candidate encoder: the checkpoint's encoder config with this override")
    ap.add_argument("--fit-data", default=None, help="episodes to fit a candidate encoder's projection on")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--fit-probe", action="store_true",
                    help="fit the object-position probe on DATA's training episodes, write <checkpoint>.probe.npz")
    ap.add_argument("--pooling", default="flat", choices=("flat", "mean"), help="probe input (--fit-probe)")
    ap.add_argument("--probe-target", default="position", choices=("position", "change", "occupancy", "track"),
                    help="probe reads object positions, their change since the last context frame, which grid "
                         "cells hold an object, or how far each object moved, read around it (--fit-probe)")
    ap.add_argument("--probe", default=None, help="probe file (default: <checkpoint>.probe.npz when present)")
    ap.add_argument("--occupancy-probe", default=None,
                    help="occupancy probe file (default: <checkpoint>.occupancy.pt when present)")
    ap.add_argument("--probe-iterations", type=int, default=2000,
                    help="Adam steps of the occupancy probe's fit (--fit-probe --probe-target occupancy)")
    ap.add_argument("--track-probe", default=None,
                    help="tracking read-out file (default: <checkpoint>.track.pt when present)")
    ap.add_argument("--probe-epochs", type=int, default=8,
                    help="passes over the frame pairs of the tracking read-out's fit (--fit-probe --probe-target track)")
    ap.add_argument("--held-out", action="store_true",
                    help="evaluate only the episodes of DATA kept out of training (the probe's split)")
    ap.add_argument("--split-fraction", type=float, default=None,
                    help="held-out fraction of the split (default: the checkpoint's val_episodes / episodes)")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the split (dexwm-train's train.seed)")
    ap.add_argument("--start-every", type=int, default=0,
                    help="also start rollouts every K frames within an episode (0: from its first frame only)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.camera and not args.grasp_sensitivity:
        ap.error("--camera is an option of --grasp-sensitivity")
    if args.object_sensitivity:
        from dexwm_ros.object_sensitivity import run

        return run(args)
    if args.grasp_sensitivity:
        from dexwm_ros.grasp_sensitivity import run

        return run(args)
    if args.checkpoint_opt:
        if args.checkpoint and not args.data:   # `--checkpoint C DATA`
            args.data = args.checkpoint
        args.checkpoint = args.checkpoint_opt
    if not args.checkpoint or not args.data:
        ap.error("CHECKPOINT and DATA are required (unless --object-sensitivity or --grasp-sensitivity)")
    if args.fit_probe:
        fitters = {"occupancy": fit_occupancy_probe, "track": fit_track_probe}
        return fitters.get(args.probe_target, fit_probe)(args)
    from dexwm_planner.eval_wm import open_loop

    return open_loop(args)


def fit_probe(args) -> int:
    import json

    from dexwm_planner.object_probe import fit_for_checkpoint, probe_file
    from dexwm_planner.paths import recorded_path
    from dexwm_planner.world_model import CheckpointError, DexWM

    try:
        wm = DexWM.load(args.checkpoint)
        probe, held_out = fit_for_checkpoint(wm, args.checkpoint, args.data, args.kind, args.cache_dir,
                                             args.pooling, args.split_seed, args.split_fraction, args.episodes,
                                             args.probe_target)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"dexwm-eval-wm: {exc}", file=sys.stderr)
        return 1
    path = args.probe or str(probe_file(args.checkpoint))
    probe.save(path)
    summary = {"probe": recorded_path(path), "pooling": probe.pooling, "target": probe.target,
               "alpha": probe.meta["alpha"],
               "tuning_error_cm": probe.meta["tuning_error_cm"], "fit_episodes": len(probe.meta["fit_episodes"]),
               "fit_rows": probe.meta["fit_rows"], "held_out_episodes": len(held_out)}
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


def fit_occupancy_probe(args) -> int:
    from dexwm_planner import occupancy_probe

    return fit_learned_probe(args, occupancy_probe, "occupancy_probe", "--probe-iterations", args.probe_iterations,
                             ("iterations", "fit_frames", "objects_in_view_fraction"))


def fit_track_probe(args) -> int:
    from dexwm_planner import track_probe

    return fit_learned_probe(args, track_probe, "track_probe", "--probe-epochs", args.probe_epochs,
                             ("epochs", "fit_pairs", "moved_pairs_fraction", "step_seconds"))


def fit_learned_probe(args, module, name: str, count_option: str, count: int, reported) -> int:
    """Fit a read-out trained by gradient steps (``module``: ``occupancy_probe`` or ``track_probe``,
    ``count`` iterations or epochs) on DATA's training episodes and write it to ``args.<name>`` or
    beside the checkpoint; print what it was fitted on (the ``reported`` meta keys)."""
    import json

    from dexwm_planner.paths import recorded_path
    from dexwm_planner.world_model import CheckpointError, DexWM

    if count < 1:
        print(f"dexwm-eval-wm: {count_option} must be at least 1", file=sys.stderr)
        return 1
    try:
        wm = DexWM.load(args.checkpoint)
        probe, held_out = module.fit_for_checkpoint(wm, args.checkpoint, args.data, args.kind, args.cache_dir,
                                                    args.split_seed, args.split_fraction, args.episodes, count)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"dexwm-eval-wm: {exc}", file=sys.stderr)
        return 1
    path = getattr(args, name) or str(module.probe_file(args.checkpoint))
    probe.save(path)
    summary = {name: recorded_path(path), **{k: probe.meta[k] for k in reported},
               "fit_episodes": len(probe.meta["fit_episodes"]), "held_out_episodes": len(held_out)}
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
