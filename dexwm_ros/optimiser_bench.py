"""dexwm-bench optimiser: how low a cost each search finds under the same world model and budget,
and what executing its plan achieves.

    dexwm-bench optimiser [--json] [--tasks reach,grasp,place] [--scenes 8] [--seeds 3]
                          [--variants cem,cem-keep,rs|cem-narrow] [--search S,E,I] [--checkpoint PATH] [--out FILE.json]

Closed-loop success mixes the optimiser with the model's errors and the stop rule; this separates
them. On paper-protocol stage starts from the tuning seeds (1,000,500 on, never in the README's
tables), each variant plans the first replan (full horizon, no warm start) from the same frame,
joints and goal image, with the same number of world-model evaluations, under several planner
seeds; then the whole plan is executed open loop in the simulation (one model frame step per
planned step, as the evaluation moves) and the frame it ends on is encoded.

Figures per task and variant, over scenes x planner seeds:
- ``planned_ratio_to_rs``: median of its planned cost / random shooting's on the same scene and seed
  (< 1: the search finds plans the model rates better), with a bootstrap 95 % interval, and the
  fraction of scene-seeds where it is lower;
- ``realised_ratio_to_rs``: the same for the latent distance of the frame actually reached to the
  goal's (< 1: the plans are better in fact, as the camera sees it);
- ``task_distance_median``: the task's own distance after the plan (reach: hand to its pose at
  the stage's end; grasp: palm to object; place: object to target; metres), and
  ``task_distance_ratio_to_rs`` as above. A measurement for this benchmark only: no policy reads it;
- per task, over every plan of every variant: Spearman's rank correlation between the predicted
  latent distance of the plan's last step and the realised one (how well the model ranks plans).

Variants (``--search S,E,I`` sizes the CEM; default the CPU preset):
- ``cem``: the planner's CEM;
- ``cem-keep``: the same with every elite carried into the next iteration at no extra evaluation
  (``CEMConfig.keep_elites``);
- ``cem-narrow`` (not run unless named): the CEM with half the sampling std, plans nearer the
  motions the model was trained on;
- ``rs``: random shooting, one iteration of S x I samples (the evaluation's baseline).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from dexwm_robot.tasks import TASK_KINDS

VARIANTS = ("cem", "cem-keep", "cem-narrow", "rs")
DEFAULT_VARIANTS = ("cem", "cem-keep", "rs")
TUNING_SEED = 500   # dexwm-eval --seed 500: seeds 1,000,500 on, kept for tuning


def variant_config(name: str, base):
    """The CEM settings of variant ``name`` with the evaluations per replan of ``base`` (random
    shooting: the evaluation's baseline, built from the CPU preset as there)."""
    if name == "cem":
        return base
    if name == "cem-keep":
        return base.with_(keep_elites=base.elites)
    if name == "cem-narrow":   # half the sampling std: plans nearer the motions the model was trained on
        return base.with_(std_arm=base.std_arm / 2, std_hand=base.std_hand / 2)
    if name == "rs":
        from dexwm_ros.evaluate import random_shooting_changes, shipped_cem_config

        return shipped_cem_config("cpu", **random_shooting_changes(base))
    raise ValueError(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")


def _scenes(task: str, count: int):
    """The runner (not started) and the first ``count`` paper-protocol starts of ``task``."""
    from dexwm_ros.evaluate import EvalSettings, collect_starts, make_runner

    settings = EvalSettings(task=task, episodes=count, seed=TUNING_SEED, protocol="paper")
    runner = make_runner(settings)
    starts, _ = collect_starts(runner, settings, progress=False)
    return runner, starts


def _execute(runner, plan: np.ndarray, step_s: float) -> np.ndarray:
    """Move through ``plan`` (T, 23) as one command, a waypoint per model frame step (open loop: the
    evaluation would replan after the first); the frame it ends on."""
    from dexwm_robot.joints import ARM_DOF

    runner.move_now(plan[:, :ARM_DOF], plan[:, ARM_DOF:], step_s, step_s * len(plan), 0.05)
    return runner.env.render()


def _bootstrap_median(x: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float]:
    meds = np.median(x[rng.integers(0, len(x), (n, len(x)))], axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def run(tasks=TASK_KINDS, scenes: int = 8, seeds: int = 3, variants=DEFAULT_VARIANTS,
        search: tuple = (), checkpoint: str | None = None, progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    from dexwm_planner.actions import allegro_actions
    from dexwm_planner.mpc import MPCConfig, MPCPlanner
    from dexwm_planner.world_model import DexWM, default_checkpoint
    from dexwm_robot.camera import HeadCamera
    from dexwm_ros.evaluate import EvalSettings, shipped_cem_config

    if "rs" not in variants:
        raise ValueError("the figures are ratios to random shooting: keep 'rs' among the variants")
    path = checkpoint or default_checkpoint()
    model = DexWM.load(path)
    step_s = float(model.frame_step)
    # The CEM of ``dexwm-eval --search S,E,I`` (the preset's without it).
    searched = EvalSettings(protocol="paper", task="reach", search=search)
    base = shipped_cem_config("cpu", **searched.search_changes())
    configs = {v: variant_config(v, base) for v in variants}
    w2c = HeadCamera().world_to_camera
    result = {"checkpoint": path, "search": [base.samples, base.elites, base.iterations],
              "evaluations_per_replan": base.samples * base.iterations, "scene_seed": TUNING_SEED,
              "planner_seeds": seeds, "frame_step_s": step_s, "torch_threads": torch.get_num_threads(),
              "tasks": {}}
    rng = np.random.default_rng(0)
    for task in tasks:
        runner, starts = _scenes(task, scenes)
        env, kin = runner.env, runner.env.kinematics
        actions_fn = lambda q_seq: allegro_actions(q_seq, w2c, kinematics=kin)  # noqa: E731
        rotation_fn = lambda q: kin.ee_pose(q)[1]  # noqa: E731
        rows = {v: {k: [] for k in ("planned", "predicted_last", "realised", "distance", "seconds")}
                for v in variants}
        bar = tqdm(total=len(starts) * seeds * len(variants), desc=f"optimiser {task}", unit="plan",
                   disable=not progress, file=sys.stderr)
        for start in starts:
            for k in range(seeds):
                for v in variants:
                    env.restore_episode(start.episode, start.state)
                    frame, q = env.render(), env.joint_positions()
                    planner = MPCPlanner(model, actions_fn, kin.lower, kin.upper, MPCConfig(cem=configs[v]),
                                         rotation_fn=rotation_fn, seed=searched.cem_seed(start.seed, k))
                    planner.set_goal(start.goal.image)
                    planner.observe(frame, q)
                    step = planner.step(q)
                    with torch.no_grad():
                        last = planner.objective.rollout(planner.context, q, step.plan[None])[0, -1]
                        predicted_last = float(((last - planner.goal_latent) ** 2).mean())
                    planner.observe(_execute(runner, step.plan, step_s))
                    row = rows[v]
                    row["planned"].append(step.cost)
                    row["predicted_last"].append(predicted_last)
                    row["realised"].append(planner.current_cost())
                    row["distance"].append(float(env.status.distance))
                    row["seconds"].append(step.replan_seconds)
                    bar.update(1)
        bar.close()
        env.close()
        per_task = {"scenes": [s.seed for s in starts], "variants": {}}
        for v in variants:
            r, rs = {k: np.asarray(x) for k, x in rows[v].items()}, {k: np.asarray(x) for k, x in rows["rs"].items()}
            planned, realised = r["planned"] / rs["planned"], r["realised"] / rs["realised"]
            distance = r["distance"] / rs["distance"]
            per_task["variants"][v] = {
                "evaluations": configs[v].samples * configs[v].iterations,
                "planned_ratio_to_rs": float(np.median(planned)),
                "planned_ratio_to_rs_ci95": _bootstrap_median(planned, rng),
                "planned_lower_than_rs": float(np.mean(r["planned"] < rs["planned"])),
                "realised_ratio_to_rs": float(np.median(realised)),
                "realised_ratio_to_rs_ci95": _bootstrap_median(realised, rng),
                "realised_lower_than_rs": float(np.mean(r["realised"] < rs["realised"])),
                "task_distance_median": float(np.median(r["distance"])),
                "task_distance_ratio_to_rs": float(np.median(distance)),
                "task_distance_ratio_to_rs_ci95": _bootstrap_median(distance, rng),
                "task_distance_lower_than_rs": float(np.mean(r["distance"] < rs["distance"])),
                "replan_seconds_median": float(np.median(r["seconds"])),
                **{k: [float(x) for x in r[k]] for k in ("planned", "predicted_last", "realised", "distance")},
            }
        every = [rows[v] for v in variants]
        per_task["predicted_vs_realised_spearman"] = _spearman(
            np.concatenate([r["predicted_last"] for r in every]), np.concatenate([r["realised"] for r in every]))
        result["tasks"][task] = per_task
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dexwm-bench optimiser", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--tasks", default=",".join(TASK_KINDS), help="paper-protocol stages, comma-separated")
    ap.add_argument("--scenes", type=int, default=8, help="stage starts per task (tuning seeds)")
    ap.add_argument("--seeds", type=int, default=3, help="planner seeds per scene")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    ap.add_argument("--search", default="", help="S,E,I: CEM samples, elites, iterations (default: the CPU preset)")
    ap.add_argument("--checkpoint", default=None, help="world-model checkpoint (default: the shipped model)")
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args(argv)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    variants = tuple(v for v in args.variants.split(",") if v)
    bad = [t for t in tasks if t not in TASK_KINDS] + [v for v in variants if v not in VARIANTS]
    if bad or not tasks:
        ap.error(f"unknown task or variant: {', '.join(bad) or '(none given)'}")
    if args.scenes < 1 or args.seeds < 1:
        ap.error("--scenes and --seeds must be >= 1")
    try:
        search = tuple(int(v) for v in args.search.split(",")) if args.search else ()
        if search and len(search) != 3:
            raise ValueError
    except ValueError:
        ap.error(f"--search wants S,E,I (three integers), got {args.search!r}")
    try:
        res = run(tasks, args.scenes, args.seeds, variants, search, args.checkpoint, progress=not args.json)
    except ValueError as e:
        ap.error(str(e))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    if args.json:
        print(json.dumps(res))
        return 0
    s, e, i = res["search"]
    print(f"model: {res['checkpoint']}; CEM {s} / {e} / {i} ({res['evaluations_per_replan']} evaluations per "
          f"replan); {args.scenes} scenes x {res['planner_seeds']} planner seeds per task; "
          f"{res['torch_threads']} threads")
    for task, t in res["tasks"].items():
        print(f"  {task}: predicted vs realised latent distance, Spearman {t['predicted_vs_realised_spearman']:.2f}")
        for v, r in t["variants"].items():
            (plo, phi), (rlo, rhi) = r["planned_ratio_to_rs_ci95"], r["realised_ratio_to_rs_ci95"]
            dlo, dhi = r["task_distance_ratio_to_rs_ci95"]
            print(f"    {v:<10} / random shooting: planned {r['planned_ratio_to_rs']:.3f} [{plo:.3f}-{phi:.3f}], "
                  f"realised {r['realised_ratio_to_rs']:.3f} [{rlo:.3f}-{rhi:.3f}], task distance "
                  f"{r['task_distance_ratio_to_rs']:.3f} [{dlo:.3f}-{dhi:.3f}] ({r['task_distance_median']:.3f} m); "
                  f"replan {r['replan_seconds_median']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
