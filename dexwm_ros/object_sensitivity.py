"""Object sensitivity of a latent space: does moving an object change the latent as much as the arm?

Over seeded place scenes of the simulation (``dexwm_sim.tasks.make_episode``), three head-camera
frames are rendered from the exact same physics state except for one change each:

  base     the episode's start state
  object   the task object moved (x, y) onto its place target; height, orientation, robot unchanged
  arm      arm joint 1 turned by +0.05 rad; objects and all other joints unchanged

and encoded by the encoder under test (for a checkpoint: its frozen backbone + latent projection,
exactly as the planner sees it). Per scene: object_mse = mean((z_object - z_base)^2),
arm_mse = mean((z_arm - z_base)^2) over all patches and latent dims, ratio = object_mse / arm_mse.
``object_to_arm_ratio_median`` is the median ratio over the scenes. The state is set directly
(no physics step in between), so nothing but the named change differs between the frames.

arm_mse is reported as well: a representation that reaches a high ratio by no longer seeing the
arm would be useless to the planner. For projected latents (unit mean per-dimension variance on
the data the projection was fitted on) it is in comparable units across representations.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import Callable, Sequence

import numpy as np
import torch

from dexwm_planner.paths import recorded_path

# The place task is being renamed ('place' -> 'pick-place'); accept whichever tasks.py defines.
PLACE_TASK_NAMES = ("pick-place", "place")
ARM_JOINT1_DELTA = 0.05     # rad
DEFAULT_SCENES = 20
MIN_SCENES = DEFAULT_SCENES  # dexwm-eval-wm refuses fewer
RENDER_SIZE = 224           # the sim camera's world-model frames (config/sim.yaml) are 224x224


def place_task_name() -> str:
    from dexwm_sim import tasks
    for name in PLACE_TASK_NAMES:
        if name in tasks.TASKS:
            return name
    raise ValueError(f"dexwm_sim.tasks defines none of the place tasks {PLACE_TASK_NAMES} (has {tasks.TASKS})")


@dataclasses.dataclass
class SceneFrames:
    seed: int
    object_kind: str
    object_shift: float        # metres the object was moved
    base: np.ndarray           # (H, W, 3) uint8
    object_moved: np.ndarray
    arm_moved: np.ndarray


def render_scenes(n: int = DEFAULT_SCENES, first_seed: int = 0, size: int = RENDER_SIZE, env=None) -> list:
    """The (base, object moved, arm moved) frames of ``n`` place scenes, seeds first_seed.. ."""
    from dexwm_sim import tasks
    if env is None:
        from dexwm_sim.scene import SimEnv
        env = SimEnv(render_size=(size, size))
    task = place_task_name()
    out = []
    for seed in range(first_seed, first_seed + n):
        episode = tasks.make_episode(task, seed, env.kinematics)
        env.apply_episode(episode)
        state = env.get_state()
        base = env.render(size, size)
        qpos = state["qpos"]

        adr = env.scene.object_qpos_adr[episode.object_kind]
        moved = dict(state, qpos=qpos.copy())
        moved["qpos"][adr:adr + 2] = episode.target[:2]
        shift = float(np.linalg.norm(moved["qpos"][adr:adr + 2] - qpos[adr:adr + 2]))
        env.set_state(moved)
        object_moved = env.render(size, size)

        arm = dict(state, qpos=qpos.copy())
        arm["qpos"][env.scene.qpos_adr[0]] += ARM_JOINT1_DELTA
        env.set_state(arm)
        arm_moved = env.render(size, size)
        env.set_state(state)
        out.append(SceneFrames(seed, episode.object_kind, shift, base, object_moved, arm_moved))
    return out


@torch.no_grad()
def measure(encode: Callable[[np.ndarray], torch.Tensor], scenes: Sequence[SceneFrames]) -> dict:
    """Per-scene latent MSEs and ratios for an encoder ``encode(uint8 (B, H, W, 3)) -> (B, P, d)``."""
    per_scene = []
    for s in scenes:
        z = torch.as_tensor(encode(np.stack([s.base, s.object_moved, s.arm_moved]))).double()
        obj = float(((z[1] - z[0]) ** 2).mean())
        arm = float(((z[2] - z[0]) ** 2).mean())
        per_scene.append({"seed": s.seed, "object_kind": s.object_kind, "object_shift_m": round(s.object_shift, 4),
                          "object_mse": obj, "arm_mse": arm, "ratio": obj / arm if arm > 0 else float("inf")})
    ratios = np.array([p["ratio"] for p in per_scene])
    return {
        "object_to_arm_ratio_median": float(np.median(ratios)),
        "object_to_arm_ratio_quartiles": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
        "object_mse_median": float(np.median([p["object_mse"] for p in per_scene])),
        "arm_mse_median": float(np.median([p["arm_mse"] for p in per_scene])),
        "scenes": len(per_scene),
        "task": place_task_name(),
        "arm_joint1_delta_rad": ARM_JOINT1_DELTA,
        "per_scene": per_scene,
    }


def encoder_under_test(args):
    """The checkpoint's encoder (``--checkpoint``, default: the shipped one), or with ``--encoder
    KEY=VALUE`` a candidate: the checkpoint's encoder config with these overrides, its projection (if
    any) fitted on ``--fit-data`` as dexwm-train fits it. Returns (encoder, record): the record says
    which checkpoint, encoder and projection fit were measured, for the result."""
    from dexwm_planner.world_model import DexWM, default_checkpoint

    checkpoint = args.checkpoint_opt or args.checkpoint or default_checkpoint()
    encoder, fit = _candidate_encoder(DexWM.load(checkpoint), args)
    return encoder, {"checkpoint": recorded_path(checkpoint), "first_seed": args.first_seed,
                     "encoder": dataclasses.asdict(encoder.config), "projection_fit": fit}


def _candidate_encoder(wm, args):
    import yaml

    from dexwm_planner.datasets import cached_tokens, load_episodes
    from dexwm_planner.encoders import EncoderConfig, FrozenEncoder

    if not args.encoder:
        return wm.encoder, None
    fields = dataclasses.asdict(wm.encoder.config)
    for item in args.encoder:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--encoder {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        fields[key] = yaml.safe_load(value)
    encoder = FrozenEncoder(EncoderConfig(**fields))
    if not encoder.config.proj_dim:
        return encoder, None
    if not args.fit_data:
        raise ValueError("a projected candidate encoder needs --fit-data (episodes to fit it on)")
    from dexwm_planner.train import fit_encoder_projection

    episodes, _ = load_episodes(args.fit_data, args.kind, limit=args.episodes)
    if not episodes:
        raise ValueError(f"no readable episodes in {args.fit_data}")
    fit_encoder_projection(encoder, [cached_tokens(ep, encoder, args.cache_dir) for ep in episodes])
    return encoder, {"data": recorded_path(args.fit_data), "episodes": len(episodes)}


def run(args) -> int:
    """``dexwm-eval-wm --object-sensitivity`` for its parsed arguments (dexwm_ros.eval_wm)."""
    from dexwm_planner.world_model import CheckpointError

    if args.scenes < MIN_SCENES:
        print(f"dexwm-eval-wm: --scenes must be >= {MIN_SCENES}", file=sys.stderr)
        return 2
    try:
        encoder, record = encoder_under_test(args)
        scenes = render_scenes(args.scenes, args.first_seed)
        res = measure(encoder, scenes)
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"dexwm-eval-wm: {exc}", file=sys.stderr)
        return 1
    res.update(record)
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
