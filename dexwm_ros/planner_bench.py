"""dexwm-bench planner: time per CEM replan of the MPC planner, and the FLOP rate behind it.

    dexwm-bench planner [--json] [--preset cpu|paper] [--checkpoint PATH] [--replans N]

Figures (one run, same process):
- ``replan_seconds_median``: wall time of one replan (encode-free: CEM sampling, forward
  kinematics to actions, batched world-model rollouts, cost), over full 3 -> 2 -> 1 horizon cycles;
  ``replan_seconds_h3_median`` only the full-horizon replans (the slowest);
- ``predictor_flops_per_s``: FLOPs of one batched rollout (counted with torch's FlopCounterMode)
  divided by its measured time;
- ``matmul_flops_per_s``: a plain float32 1024x1024 matmul in the same process, the baseline;
  ``predictor_vs_matmul`` is their ratio (how much of the machine's dense throughput the predictor
  gets).
The scene frames come from the simulation (two seeded episodes: one as the view, one as the goal).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from dexwm_planner.cem import PRESETS
from dexwm_planner.mpc import MPCConfig, MPCPlanner


def _matmul_flops_per_s(n: int = 1024, seconds: float = 1.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2.0 * n ** 3 * reps / (time.perf_counter() - t0)


def _load_model(checkpoint: str | None):
    from dexwm_planner.world_model import DexWM, default_checkpoint

    path = checkpoint or default_checkpoint()
    try:
        return DexWM.load(path), path
    except Exception as e:  # noqa: BLE001 - any unusable checkpoint falls back, and says so
        if checkpoint:
            raise
        torch.manual_seed(0)
        return DexWM(), f"randomly initialised default config ({path} not usable: {e})"


def run(preset: str = "cpu", checkpoint: str | None = None, cycles: int = 4, measure_s: float = 1.0) -> dict:
    from dexwm_planner.actions import allegro_actions, hand_pixels_projection
    from dexwm_planner.objective import ObjectiveConfig
    from dexwm_robot.camera import HeadCamera
    from dexwm_ros.planner_settings import PlannerSettings
    from dexwm_sim.scene import SimEnv

    model, model_name = _load_model(checkpoint)
    env = SimEnv(render_size=(224, 224))
    try:
        env.reset("reach-grasp", 1_000_000)
        goal = env.render()
        env.reset("reach-grasp", 1_000_001)
        view = env.render()
        q = env.joint_positions()
        kin = env.kinematics
    finally:
        env.close()
    camera = HeadCamera()
    w2c = camera.world_to_camera
    actions_fn = lambda q_seq: allegro_actions(q_seq, w2c, kinematics=kin)  # noqa: E731
    hand_pixels_fn = hand_pixels_projection(w2c, getattr(model, "image_size", (224, 224)), camera_hw=(224, 224),
                                            kinematics=kin)
    cem = PRESETS[preset]
    # The planner node's cost (config/planner.yaml's defaults), planned-hand term included.
    objective = ObjectiveConfig(hand_pixel_weight=PlannerSettings().hand_pixel_weight)
    planner = MPCPlanner(model, actions_fn, kin.lower, kin.upper, MPCConfig(cem=cem, objective=objective), seed=0,
                         hand_pixels_fn=hand_pixels_fn)
    planner.set_goal(goal)
    times, h3 = [], []
    # One warm-up replan (first-call allocations), then full horizon cycles.
    planner.observe(view, q)
    planner.step(q)
    planner.reset()
    for _ in range(cycles * cem.horizon):
        planner.observe(view, q)
        step = planner.step(q)
        times.append(step.replan_seconds)
        if step.horizon == cem.horizon:
            h3.append(step.replan_seconds)

    # Predictor FLOP rate on one CEM chunk at the full horizon.
    from torch.utils.flop_counter import FlopCounterMode

    context = planner.context[-max(model.context_frames - cem.horizon + 1, 1):]  # as MPCPlanner.step
    samples = np.repeat(q[None, None], cem.horizon, axis=1).repeat(cem.chunk, axis=0)
    actions = torch.as_tensor(actions_fn(np.concatenate([q[None, None].repeat(cem.chunk, 0), samples], 1)))
    counter = FlopCounterMode(display=False)
    with counter:
        model.rollout(context, actions)
    flops = counter.get_total_flops()
    reps, t0 = 0, time.perf_counter()
    while reps < 2 or time.perf_counter() - t0 < measure_s:
        model.rollout(context, actions)
        reps += 1
    rollout_s = (time.perf_counter() - t0) / reps
    matmul = _matmul_flops_per_s(seconds=measure_s)
    predictor = flops / rollout_s
    return {
        "replan_seconds_median": statistics.median(times),
        "replan_seconds_h3_median": statistics.median(h3),
        "replans": len(times),
        "preset": preset,
        "samples": cem.samples, "elites": cem.elites, "iterations": cem.iterations, "horizon": cem.horizon,
        "predictor_flops_per_s": predictor,
        "predictor_flops_per_rollout": flops,
        "rollout_seconds": rollout_s,
        "matmul_flops_per_s": matmul,
        "predictor_vs_matmul": predictor / matmul,
        "torch_threads": torch.get_num_threads(),
        "model": model_name,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dexwm-bench planner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    parser.add_argument("--checkpoint", default=None, help="world-model checkpoint (default: the shipped model)")
    parser.add_argument("--cycles", type=int, default=4, help="full 3 -> 2 -> 1 horizon cycles to time")
    parser.add_argument("--measure-seconds", type=float, default=1.0,
                        help="minimum time of the rollout and matmul timing loops")
    args = parser.parse_args(argv)
    if args.cycles < 1:
        parser.error("--cycles must be >= 1")
    if not args.measure_seconds > 0:
        parser.error("--measure-seconds must be positive")
    result = run(args.preset, args.checkpoint, args.cycles, args.measure_seconds)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model: {result['model']}")
        print(f"preset {args.preset}: {result['samples']} samples, {result['elites']} elites, "
              f"{result['iterations']} iterations, horizon {result['horizon']}")
        print(f"replan: {result['replan_seconds_median']:.3f} s median over {result['replans']} replans "
              f"(full horizon {result['replan_seconds_h3_median']:.3f} s); target <= 1 s")
        print(f"predictor: {result['predictor_flops_per_s'] / 1e9:.2f} GFLOP/s; plain matmul "
              f"{result['matmul_flops_per_s'] / 1e9:.2f} GFLOP/s; ratio {result['predictor_vs_matmul']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
