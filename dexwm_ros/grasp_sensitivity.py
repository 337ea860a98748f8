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
projection, as the planner sees it; or a candidate, ``--encoder KEY=VALUE`` as for
``--object-sensitivity``). Per stage: the latent cost (MSE to the goal image's latent, the
cost the planner's stop rule reads) of the start frame, of ``held`` and of ``in_air``;
``in_air_to_held_ratio`` = cost(in_air) / cost(held). Above 1 the latent prefers holding; a
planner needs well above 1 to tell them apart through a predicted rollout. Stages where ``held``
did not in fact hold the object (the strict grasp check: raised >= 3 cm and touching) or ``in_air``
touched it are reported but left out of the medians. The simulator's state is read only to judge
that, never by the motions.

The costs above mix two things: whether the latent registers the object in the hand, and how far
the motions' arm pose is from the goal's. A static part separates them, in the manner of
``--object-sensitivity``: from the goal state itself (the demonstration's solved stage), frames that
differ by one change each, rendered without a physics step: ``no_object`` puts the object back where
it rested at the stage's start (hand and arm as in the goal, fingers closed around nothing), ``arm``
turns arm joint 1 by +0.05 rad. ``in_hand_to_arm_ratio`` = MSE(z_no_object - z_goal) /
MSE(z_arm - z_goal): how much the held object counts against a small arm error at a perfect pose.
``no_object_pixels`` counts the pixels that taking the object out of the hand changes at all (sum of
the RGB differences > 30), whatever the encoder: where the hand hides the object from the camera, no
latent of that frame can tell. ``--camera PITCH,AZIMUTH`` renders everything from a candidate head
camera instead (dexwm_robot.camera.HeadCamera.orbit: same look-at point and distance), to check a
view before collecting data under it; the checkpoint's encoder was fitted on the simulation's own
view, so for another view its pixel counts are the figures to read.

The costs of the executed motions say whether the latent *can* tell; a planner sees only what the
predictor makes of a plan. With the checkpoint's own encoder, the world model also rolls out each
motion's commands (the joint rows the robot was sent, as a planner's plan) from the start frame
alone, and the predicted last frame is scored against the goal: ``predicted_in_air_to_held_ratio``
(above 1: the model predicts that the grasp which holds ends closer to the goal than the hand
closed beside the object), ``predicted_held_preferred_fraction``. A predictor that has only seen
grasps that hold will predict the object rising with any hand that rises near it.
"""
from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np

from dexwm_ros import evaluate as ev

DEFAULT_STAGES = 20
PIXEL_CHANGE = 30           # a pixel changed: sum of its absolute RGB differences above this
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
    held_plan: np.ndarray      # (T+1, 23) start joints, then each command the held motion sent
    in_air_plan: np.ndarray    # (T'+1, 23) the same for the in-air motion
    goal_no_object: np.ndarray  # the goal state with the object back where it rested
    goal_arm_moved: np.ndarray  # the goal state with arm joint 1 + ARM_JOINT1_DELTA
    goal_rendered: np.ndarray   # the goal state rendered here (equals ``goal``: a check)

    @property
    def valid(self) -> bool:
        """The stage compares what it means to: the held motion held the object, the in-air one never touched it."""
        return bool(self.held_holds and not self.in_air_touches)


def motions(depth: float = 0.08, lift: float = 0.12) -> dict:
    """The two scripted motions, ending at the same palm height (``lift - depth`` above the start)."""
    from dexwm_planner.reference_motion import GraspReference

    return {"held": GraspReference(depth=depth, lift=lift),
            "in_air": GraspReference(depth=0.0, lift=lift - depth)}


def render_stages(n: int = DEFAULT_STAGES, seed: int = 0, checkpoint: str = "", progress: bool = True,
                  view: tuple = ()) -> list:
    """Frames of the first ``n`` grasp stages from evaluation seed ``seed`` (offset like dexwm-eval's),
    seen from ``view`` = (pitch, azimuth) [deg] (default: the simulation's camera)."""
    from tqdm import tqdm

    from dexwm_robot.kinematics import RobotKinematics
    from dexwm_sim import tasks

    settings = ev.EvalSettings(protocol="paper", task="grasp", episodes=n, seed=seed, checkpoint=checkpoint,
                               hold_s=0.0, camera=view)
    settings.resolve_step()
    kinematics = RobotKinematics.from_description()
    runner = ev.make_runner(settings)
    try:
        starts, _ = ev.collect_starts(runner, settings, progress)
        out = []
        for start in tqdm(starts, desc="grasp stages", unit="stage", disable=not progress, file=sys.stderr):
            frames, checks, plans = {}, {}, {}
            for name, reference in motions().items():
                policy = RecordingReference(kinematics, settings.preset, reference)
                ev.run_episode(runner, policy, start, settings)
                frames[name] = policy.last_image
                plans[name] = np.stack(policy.sent)
                frames.setdefault("start", policy.first_image)
                episode = runner.env.episode
                checks[name] = (tasks.strict_grasp(runner.env, episode),
                                bool(runner.env.hand_touches(episode.object_kind)))
            out.append(StageFrames(start.seed, frames["start"], np.asarray(start.goal.image), frames["held"],
                                   frames["in_air"], held_holds=checks["held"][0],
                                   in_air_touches=checks["in_air"][1],
                                   held_plan=plans["held"], in_air_plan=plans["in_air"],
                                   **_goal_variants(runner.env, settings.sim_task, start)))
        return out
    finally:
        runner.env.close()


def _goal_variants(env, task: str, start) -> dict:
    """The goal state (the demonstration solved from the stage's start, as the evaluation makes its
    goal image), and it with one change each."""
    from dexwm_ros.object_sensitivity import ARM_JOINT1_DELTA
    from dexwm_sim import tasks

    tasks.solve(env, env.reset(task, start.seed))
    goal = env.get_state()
    width, height = env.render_size
    rendered = env.render(width, height)
    adr = env.scene.object_qpos_adr[env.episode.object_kind]
    no_object = dict(goal, qpos=goal["qpos"].copy())
    no_object["qpos"][adr:adr + 7] = start.state["qpos"][adr:adr + 7]
    env.set_state(no_object)
    without = env.render(width, height)
    arm = dict(goal, qpos=goal["qpos"].copy())
    arm["qpos"][env.scene.qpos_adr[0]] += ARM_JOINT1_DELTA
    env.set_state(arm)
    arm_moved = env.render(width, height)
    env.set_state(goal)
    return {"goal_no_object": without, "goal_arm_moved": arm_moved, "goal_rendered": rendered}


class RecordingReference(ev.ReferenceMotionPolicy):
    """The reference-motion baseline with a given reference, keeping the first and last frames it
    observes and the joints it started from followed by every command it sent (``sent``)."""

    name = "recording_reference"

    def __init__(self, kinematics, preset, reference):
        super().__init__(kinematics, preset)
        self.reference_fn = lambda q0: reference.joints(kinematics, q0, self.cem.max_step)
        self.first_image = self.last_image = None
        self.sent: list[np.ndarray] = []

    def plan(self, joints, should_stop):
        if not self.sent:
            self.sent.append(np.asarray(joints, dtype=np.float64).copy())
        step = super().plan(joints, should_stop)
        self.sent.append(np.asarray(step.command, dtype=np.float64).copy())
        return step

    def observe(self, image, joints) -> float:
        image = np.asarray(image).copy()
        if self.first_image is None:
            self.first_image = image
        self.last_image = image
        return float("nan")


def _changed_pixels(a: np.ndarray, b: np.ndarray) -> int:
    return int((np.abs(a.astype(np.int32) - b).sum(-1) > PIXEL_CHANGE).sum())


def _stat(rows, key, fn=np.median):
    """``fn`` of ``key`` over the per-stage rows; None when there are none (no valid stage)."""
    return float(fn([p[key] for p in rows])) if rows else None


def _quartiles(rows, key) -> list:
    """[25th, 75th] percentile of ``key`` over the per-stage rows (each None when there are none)."""
    return [_stat(rows, key, lambda v, q=q: np.percentile(v, q)) for q in (25, 75)]


def _held_preferred(rows, key):
    """Fraction of the rows whose in-air / held ratio ``key`` exceeds 1: the held end costs less."""
    return _stat(rows, key, lambda v: np.mean(np.asarray(v) > 1.0))


def measure(encode, stages) -> dict:
    """Per-stage latent costs and ratios for an encoder ``encode(uint8 (B, H, W, 3)) -> (B, P, d)``."""
    import torch

    per_stage = []
    with torch.no_grad():
        for s in stages:
            z = torch.as_tensor(encode(np.stack([s.goal, s.start, s.held, s.in_air, s.goal_no_object,
                                                 s.goal_arm_moved]))).double()
            _, start, held, in_air, in_hand, arm = (float(((z[i] - z[0]) ** 2).mean()) for i in range(6))
            per_stage.append({"seed": s.seed, "cost_start": start, "cost_held": held, "cost_in_air": in_air,
                              "in_air_to_held_ratio": in_air / held if held > 0 else float("inf"),
                              "in_hand_mse": in_hand, "arm_mse": arm,
                              "no_object_pixels": _changed_pixels(s.goal_no_object, s.goal),
                              "arm_pixels": _changed_pixels(s.goal_arm_moved, s.goal),
                              "held_vs_in_air_pixels": _changed_pixels(s.held, s.in_air),
                              "in_hand_to_arm_ratio": in_hand / arm if arm > 0 else float("inf"),
                              "held_holds": s.held_holds, "in_air_touches": s.in_air_touches,
                              "valid": s.valid})
    valid = [p for p in per_stage if p["valid"]]
    return {
        "in_hand_to_arm_ratio_median": _stat(per_stage, "in_hand_to_arm_ratio"),
        "in_hand_to_arm_ratio_quartiles": _quartiles(per_stage, "in_hand_to_arm_ratio"),
        "no_object_pixels_median": _stat(per_stage, "no_object_pixels"),
        "arm_pixels_median": _stat(per_stage, "arm_pixels"),
        "in_air_to_held_ratio_median": _stat(valid, "in_air_to_held_ratio"),
        "in_air_to_held_ratio_quartiles": _quartiles(valid, "in_air_to_held_ratio") if valid else None,
        "held_preferred_fraction": _held_preferred(valid, "in_air_to_held_ratio"),
        "held_below_start_fraction": float(np.mean([p["cost_held"] < p["cost_start"] for p in valid]))
        if valid else None,
        "cost_start_median": _stat(valid, "cost_start"),
        "cost_held_median": _stat(valid, "cost_held"),
        "cost_in_air_median": _stat(valid, "cost_in_air"),
        "stages": len(per_stage), "valid_stages": len(valid),
        "per_stage": per_stage,
    }


def measure_predicted(model, stages, world_to_camera, kinematics) -> dict:
    """Per stage, the world model's rollout of each motion's commands from the start frame alone,
    its last predicted latent scored against the goal's (the planner's latent cost, without the
    horizon weights); over the stages ``measure`` counts valid."""
    import torch

    from dexwm_planner.actions import allegro_actions

    per_stage = []
    with torch.no_grad():
        for s in stages:
            z_start, z_goal = model.encode(np.stack([s.start, s.goal])).double()
            cost = {}
            for name, plan in (("held", s.held_plan), ("in_air", s.in_air_plan)):
                actions = allegro_actions(plan[None], world_to_camera, kinematics=kinematics)
                predicted = model.rollout(z_start.float(), torch.as_tensor(actions))[0, -1].double()
                cost[name] = float(((predicted - z_goal) ** 2).mean())
            per_stage.append({"seed": s.seed, "predicted_cost_held": cost["held"],
                              "predicted_cost_in_air": cost["in_air"],
                              "predicted_in_air_to_held_ratio": cost["in_air"] / cost["held"]
                              if cost["held"] > 0 else float("inf"),
                              "valid": s.valid})
    valid = [p for p in per_stage if p["valid"]]
    ratio = "predicted_in_air_to_held_ratio"
    return {
        "predicted_in_air_to_held_ratio_median": _stat(valid, ratio),
        "predicted_in_air_to_held_ratio_quartiles": _quartiles(valid, ratio) if valid else None,
        "predicted_held_preferred_fraction": _held_preferred(valid, ratio),
        "predicted_cost_held_median": _stat(valid, "predicted_cost_held"),
        "predicted_cost_in_air_median": _stat(valid, "predicted_cost_in_air"),
        "predicted_per_stage": per_stage,
    }


def run(args) -> int:
    """``dexwm-eval-wm --grasp-sensitivity`` for its parsed arguments (dexwm_ros.eval_wm)."""
    from dexwm_planner.world_model import CheckpointError
    from dexwm_robot.camera import HeadCamera
    from dexwm_ros.object_sensitivity import ARM_JOINT1_DELTA, encoder_under_test

    if args.scenes < MIN_STAGES:
        print(f"dexwm-eval-wm: --grasp-sensitivity needs --scenes >= {MIN_STAGES}", file=sys.stderr)
        return 2
    try:
        try:
            view = HeadCamera.parse_view(args.camera)
            camera = HeadCamera.from_view(view)
        except ValueError as e:
            raise ValueError(f"--camera needs PITCH,AZIMUTH in degrees, got {args.camera!r}: {e}") from None
        encoder, record = encoder_under_test(args)
        stages = render_stages(args.scenes, args.first_seed, record["checkpoint"], progress=not args.json,
                               view=view)
        res = measure(encoder, stages)
        if not args.encoder:       # the checkpoint's own encoder: its predictor is measured too
            from dexwm_planner.world_model import DexWM
            from dexwm_robot.kinematics import RobotKinematics

            model = DexWM.load(record["checkpoint"])
            res.update(measure_predicted(model, stages, camera.world_to_camera,
                                         RobotKinematics.from_description()))
    except (CheckpointError, FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        print(f"dexwm-eval-wm: {exc}", file=sys.stderr)
        return 1
    res.update(record,
               camera=None if not view else {"pitch_deg": view[0], "azimuth_deg": view[1],
                                             "position": list(camera.position)},
               motions={k: dataclasses.asdict(v) for k, v in motions().items()})
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['stages']} paper grasp stages (evaluation seeds from {args.first_seed}), {res['valid_stages']} valid")
    print("seed      start   held  in_air  in_air/held  valid  in_hand/arm")
    for p in res["per_stage"]:
        print(f"{p['seed']:8d}  {p['cost_start']:5.3f}  {p['cost_held']:5.3f}  {p['cost_in_air']:6.3f}  "
              f"{p['in_air_to_held_ratio']:11.2f}  {'yes' if p['valid'] else 'no ':5s}  "
              f"{p['in_hand_to_arm_ratio']:11.2f}")
    print(f"in_hand_to_arm_ratio_median {res['in_hand_to_arm_ratio_median']:.3f} (the goal state without the "
          f"object in the hand against arm joint 1 + {ARM_JOINT1_DELTA} rad); pixels changed, median: "
          f"{res['no_object_pixels_median']:.0f} without the object, {res['arm_pixels_median']:.0f} by the arm")
    if res["valid_stages"]:
        print(f"in_air_to_held_ratio_median {res['in_air_to_held_ratio_median']:.3f}; held preferred in "
              f"{res['held_preferred_fraction']:.0%}, held below the start's cost in "
              f"{res['held_below_start_fraction']:.0%}")
        if res.get("predicted_in_air_to_held_ratio_median") is not None:
            print(f"predicted (the world model's rollout of each motion from the start frame): "
                  f"in_air_to_held_ratio_median {res['predicted_in_air_to_held_ratio_median']:.3f}; held preferred "
                  f"in {res['predicted_held_preferred_fraction']:.0%}")
    return 0
