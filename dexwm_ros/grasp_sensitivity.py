"""Grasp sensitivity of a latent space: is a held object closer to a grasp goal than a hand closed beside it?

A planner can only grasp toward a goal image ("the object lifted in the closed hand") if its cost
scores the end of a grasp that holds the object below the end of one that does not. Over the
paper protocol's grasp stages (start: the open hand 8 cm above the object; goal image: the object
lifted in the closed hand), two scripted motions are executed in the simulation from the stage's
start, under the planner's per-step caps and model step (the evaluation's own episode loop):

  held     the reference grasp (dexwm_planner.reference_motion.GraspReference): down 8 cm, close to
           the power grasp, up 12 cm; it ends with the object in the hand, 4 cm above the start
  in_air   the same hand closed where it starts, then raised 4 cm: the same palm height and hand
           posture at the end, the object still on the table

and the last frame each motion's policy observed is encoded by the checkpoint's encoder (backbone +
projection, as the planner sees it). Per stage: the latent cost (MSE to the goal image's latent, the
cost the planner's stop rule reads) of the start frame, of ``held`` and of ``in_air``;
``in_air_to_held_ratio`` = cost(in_air) / cost(held). Above 1 the latent prefers holding; a
planner needs well above 1 to tell them apart through a predicted rollout. Stages where ``held``
did not in fact hold the object (the strict grasp check: raised >= 3 cm and touching) or ``in_air``
touched it are reported but left out of the medians. The simulator's state is read only to judge
that, never by the motions.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

from dexwm_ros import evaluate as ev

DEFAULT_STAGES = 20
MIN_STAGES = 5


@dataclasses.dataclass
class StageFrames:
    seed: int
    start: np.ndarray          # (H, W, 3) uint8, the frame the planner starts from
    goal: np.ndarray
    held: np.ndarray
    in_air: np.ndarray
    held_holds: bool           # the strict grasp check after the held motion
    in_air_touches: bool       # the hand touches the object after the in-air motion


def motions(depth: float = 0.08, lift: float = 0.12) -> dict:
    """The two scripted motions, ending at the same palm height (``lift - depth`` above the start)."""
    from dexwm_planner.reference_motion import GraspReference

    return {"held": GraspReference(depth=depth, lift=lift),
            "in_air": GraspReference(depth=0.0, lift=lift - depth)}


def render_stages(n: int = DEFAULT_STAGES, seed: int = 0, checkpoint: str = "", progress: bool = True) -> list:
    """Frames of the first ``n`` grasp stages from evaluation seed ``seed`` (offset like dexwm-eval's)."""
    from tqdm import tqdm

    from dexwm_robot.kinematics import RobotKinematics
    from dexwm_sim import tasks

    settings = ev.EvalSettings(protocol="paper", task="grasp", episodes=n, seed=seed, checkpoint=checkpoint,
                               hold_s=0.0)
    settings.resolve_step()
    kinematics = RobotKinematics.from_description()
    runner = ev.make_runner(settings)
    try:
        starts, _ = ev.collect_starts(runner, settings, progress)
        out = []
        for start in tqdm(starts, desc="grasp stages", unit="stage", disable=not progress, file=sys.stderr):
            frames, checks = {}, {}
            for name, reference in motions().items():
                policy = RecordingReference(kinematics, settings.preset, reference)
                ev.run_episode(runner, policy, start, settings)
                frames[name] = policy.last_image
                frames.setdefault("start", policy.first_image)
                episode = runner.env.episode
                checks[name] = (tasks.strict_grasp(runner.env, episode),
                                bool(runner.env.hand_touches(episode.object_kind)))
            out.append(StageFrames(start.seed, frames["start"], np.asarray(start.goal.image), frames["held"],
                                   frames["in_air"], held_holds=checks["held"][0],
                                   in_air_touches=checks["in_air"][1]))
        return out
    finally:
        runner.env.close()


class RecordingReference(ev.ReferenceMotionPolicy):
    """The reference-motion baseline with a given reference, keeping the first and last frames it observes."""

    name = "recording_reference"

    def __init__(self, kinematics, preset, reference):
        super().__init__(kinematics, preset)
        self.reference_fn = lambda q0: reference.joints(kinematics, q0, self.cem.max_step)
        self.first_image = self.last_image = None

    def observe(self, image, joints) -> float:
        image = np.asarray(image).copy()
        if self.first_image is None:
            self.first_image = image
        self.last_image = image
        return float("nan")


def measure(encode, stages) -> dict:
    """Per-stage latent costs and ratios for an encoder ``encode(uint8 (B, H, W, 3)) -> (B, P, d)``."""
    import torch

    per_stage = []
    with torch.no_grad():
        for s in stages:
            z = torch.as_tensor(encode(np.stack([s.goal, s.start, s.held, s.in_air]))).double()
            goal, start, held, in_air = (float(((z[i] - z[0]) ** 2).mean()) for i in range(4))
            per_stage.append({"seed": s.seed, "cost_start": start, "cost_held": held, "cost_in_air": in_air,
                              "in_air_to_held_ratio": in_air / held if held > 0 else float("inf"),
                              "held_holds": s.held_holds, "in_air_touches": s.in_air_touches,
                              "valid": bool(s.held_holds and not s.in_air_touches)})
    valid = [p for p in per_stage if p["valid"]]
    ratios = np.array([p["in_air_to_held_ratio"] for p in valid])
    return {
        "in_air_to_held_ratio_median": float(np.median(ratios)) if len(valid) else None,
        "in_air_to_held_ratio_quartiles": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))]
        if len(valid) else None,
        "held_preferred_fraction": float(np.mean(ratios > 1.0)) if len(valid) else None,
        "held_below_start_fraction": float(np.mean([p["cost_held"] < p["cost_start"] for p in valid]))
        if len(valid) else None,
        "cost_start_median": float(np.median([p["cost_start"] for p in valid])) if len(valid) else None,
        "cost_held_median": float(np.median([p["cost_held"] for p in valid])) if len(valid) else None,
        "cost_in_air_median": float(np.median([p["cost_in_air"] for p in valid])) if len(valid) else None,
        "stages": len(per_stage), "valid_stages": len(valid),
        "per_stage": per_stage,
    }


def run(args) -> int:
    """``dexwm-eval-wm --grasp-sensitivity`` for its parsed arguments (dexwm_ros.eval_wm)."""
    from dexwm_planner.world_model import CheckpointError, DexWM, default_checkpoint

    if args.scenes < MIN_STAGES:
        print(f"dexwm-eval-wm: --grasp-sensitivity needs --scenes >= {MIN_STAGES}", file=sys.stderr)
        return 2
    checkpoint = args.checkpoint_opt or args.checkpoint or default_checkpoint()
    try:
        wm = DexWM.load(checkpoint)
        stages = render_stages(args.scenes, args.first_seed, checkpoint, progress=not args.json)
        res = measure(wm.encode, stages)
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"dexwm-eval-wm: {exc}", file=sys.stderr)
        return 1
    res.update(checkpoint=os.path.abspath(checkpoint), first_seed=args.first_seed,
               motions={k: dataclasses.asdict(v) for k, v in motions().items()})
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['stages']} paper grasp stages (evaluation seeds from {args.first_seed}), {res['valid_stages']} valid")
    print("seed      start   held  in_air  in_air/held  valid")
    for p in res["per_stage"]:
        print(f"{p['seed']:8d}  {p['cost_start']:5.3f}  {p['cost_held']:5.3f}  {p['cost_in_air']:6.3f}  "
              f"{p['in_air_to_held_ratio']:11.2f}  {'yes' if p['valid'] else 'no'}")
    if res["valid_stages"]:
        print(f"in_air_to_held_ratio_median {res['in_air_to_held_ratio_median']:.3f}; held preferred in "
              f"{res['held_preferred_fraction']:.0%}, held below the start's cost in {res['held_below_start_fraction']:.0%}")
    return 0
