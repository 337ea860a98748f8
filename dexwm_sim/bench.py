"""``dexwm-bench sim [--json]``: physics and rendering throughput of the simulation on this machine.

Figures: physics steps/s of the full scene while the arm and hand track moving targets (contacts
included), and head-camera render frames/s at the world-model size (224x224) and at the camera
topic size (640x480), and the batched forward kinematics the planner uses (1536 joint vectors).
Baselines measured in the same run: physics of an empty MuJoCo world (one free body), and MuJoCo's
mj_kinematics called once per joint vector for the same 1536 vectors.
"""
from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np


def _rate(fn, min_seconds: float, min_reps: int = 3) -> float:
    """Calls per second of ``fn`` measured over at least ``min_seconds`` (after one warm-up call)."""
    fn()
    reps, start = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and reps >= min_reps:
            return reps / elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dexwm-bench sim", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum time per measurement")
    args = ap.parse_args(argv)
    logging.getLogger("dexwm_sim").setLevel(logging.ERROR)

    from .scene import SimEnv
    import mujoco

    env = SimEnv()
    env.reset("reach-grasp", 0)
    rng = np.random.default_rng(0)
    q = env.joint_positions()

    # Physics: 50 steps (one 10 Hz control period) per call, with fresh targets each call.
    def physics():
        nonlocal q
        q = np.clip(q + rng.uniform(-0.05, 0.05, q.shape), env.lower, env.upper)
        env.command(q[:7], q[7:])
        env.advance(env.control_dt)

    steps_per_call = int(round(env.control_dt / env.physics_dt))
    physics_rate = _rate(physics, args.seconds) * steps_per_call

    empty = mujoco.MjModel.from_xml_string(
        "<mujoco><worldbody><body><freejoint/><geom size='0.05'/></body></worldbody></mujoco>")
    empty_data = mujoco.MjData(empty)

    def empty_physics():
        for _ in range(steps_per_call):
            mujoco.mj_step(empty, empty_data)

    empty_rate = _rate(empty_physics, min(args.seconds, 1.0)) * steps_per_call
    # Batched forward kinematics (the planner's use: 512 samples x horizon 3 per CEM iteration)
    # against MuJoCo's own mj_kinematics called once per joint vector.
    kin = env.kinematics
    batch = rng.uniform(kin.lower, kin.upper, size=(1536, 23))
    fk_ms = 1000.0 / _rate(lambda: kin.keypoints_world(batch), min(args.seconds, 1.0))
    scratch = mujoco.MjData(env.model)

    def mujoco_fk():
        for qv in batch:
            scratch.qpos[env.scene.qpos_adr] = qv
            mujoco.mj_kinematics(env.model, scratch)

    fk_mujoco_ms = 1000.0 / _rate(mujoco_fk, min(args.seconds, 1.0))
    fps_224 = _rate(lambda: env.render(224, 224), args.seconds)
    fps_640 = _rate(lambda: env.render(640, 480), args.seconds)
    env.close()

    result = {
        "physics_steps_per_s": round(physics_rate, 1),
        "physics_real_time_factor": round(physics_rate * env.physics_dt, 2),
        "render_fps_224": round(fps_224, 1),
        "render_fps_640x480": round(fps_640, 1),
        "baseline_empty_world_steps_per_s": round(empty_rate, 1),
        "ratio_scene_to_empty_world": round(physics_rate / empty_rate, 4),
        "fk_ms_per_1536": round(fk_ms, 3),
        "fk_mujoco_loop_ms_per_1536": round(fk_mujoco_ms, 3),
        "fk_speedup_vs_mujoco_loop": round(fk_mujoco_ms / fk_ms, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"physics      {result['physics_steps_per_s']:>10.0f} steps/s  "
              f"({result['physics_real_time_factor']:.1f}x real time at {1 / env.physics_dt:.0f} Hz)")
        print(f"  baseline   {empty_rate:>10.0f} steps/s  empty world (ratio {result['ratio_scene_to_empty_world']:.3f})")
        print(f"render 224   {fps_224:>10.1f} frames/s")
        print(f"render 640   {fps_640:>10.1f} frames/s (640x480)")
        print(f"FK 1536 q    {fk_ms:>10.2f} ms batched  (mj_kinematics loop {fk_mujoco_ms:.1f} ms, "
              f"{result['fk_speedup_vs_mujoco_loop']:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
