"""``dexwm-collect``: exploratory (not task-specific) Franka + Allegro episodes for fine-tuning.

    dexwm-collect --out DIR --hours H --seed S [--episodes N] [--workers W] [--steps T] [--size 224]

The paper fine-tunes on about 4 h of simulated exploration of three kinds, cycled here per episode:
  lift   noisy exploration around a grasp-and-lift of one of the objects
  reach  the hand driven to random 3D targets with random orientations
  hand   the arm near a random pose while the hand opens and closes (per-finger amounts random)

Control and stored frames at 5 Hz (0.2 s steps, the paper's timing). One HDF5 file per episode,
``episode_000123.h5``, in the layout documented in ``dexwm_sim/FORMAT.md`` (summary):

  frames             (T, H, W, 3) uint8   head-camera RGB at the world-model size
  timestamps         (T,) float64         seconds since the episode start
  joints             (T, 23) float64      fr3_joint1..7 then Allegro (allegro_driver order) [rad]
  targets            (T, 23) float64      commanded joint targets of the step that follows the frame
  keypoints_world    (T, 42, 3) float32   21 right-hand MANO keypoints, then 21 left (zeros) [m]
  keypoints_camera   (T, 42, 3) float32   the same in the OpenCV camera frame
  keypoints_2d       (T, 42, 2) float32   pixels at the stored frame size
  keypoints_visible  (T, 42) bool         in front of the camera and inside the image (left: False)
  object_poses       (T, K, 7) float64    per object: position, quaternion (w, x, y, z)
  camera/intrinsics  (3, 3)               K for the stored frame size
  camera/extrinsics  (4, 4)               world -> camera (static camera)
  camera/pose        (4, 4)               camera -> world
  attrs: format_version, kind, episode_index, seed, control_hz, image_size, joint_names,
         object_kinds, task_object

Resumable: finished episodes are skipped; each file is written to a temporary name in the same
folder and renamed when complete, so an interrupted run never leaves a truncated episode behind.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
KINDS = ("lift", "reach", "hand")
CONTROL_HZ = 5.0
DEFAULT_STEPS = 50            # 10 s per episode

log = logging.getLogger("dexwm_sim.collect")

_ENV = None


def _env(size: int):
    global _ENV
    if _ENV is None or _ENV.render_size != (size, size):
        from .scene import SimEnv
        logging.getLogger("dexwm_sim").setLevel(logging.ERROR)   # clamping notes are expected here
        _ENV = SimEnv(render_size=(size, size), control_hz=CONTROL_HZ)
    return _ENV


def episode_path(out: Path, index: int) -> Path:
    return out / f"episode_{index:06d}.h5"


# --- exploration policies -------------------------------------------------------------------------
class _Recorder:
    """Runs control steps and records what the world model needs after each one."""

    def __init__(self, env, steps: int):
        self.env = env
        self.steps = steps
        self.rows: list[dict] = []
        self._record()

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.steps

    def _record(self) -> None:
        env = self.env
        kp = env.keypoints()
        poses = env.object_poses()
        self.rows.append({
            "frame": env.render(),
            "time": env.time,
            "joints": env.joint_positions(),
            "kp_world": kp.world, "kp_camera": kp.camera, "kp_2d": kp.uv, "kp_visible": kp.visible,
            "objects": np.stack([poses[k] for k in sorted(poses)]),
        })

    def step(self, arm, hand) -> None:
        if self.full:
            return
        env = self.env
        arm = None if arm is None else np.clip(arm, env.lower[:7], env.upper[:7])
        hand = None if hand is None else np.clip(hand, env.lower[7:], env.upper[7:])
        env.command(arm, hand)
        self.rows[-1]["targets"] = env.targets()
        env.advance(env.control_dt)
        self._record()


def _lift(env, rng: np.random.Generator, seed: int, steps: int):
    from . import tasks

    episode = tasks.make_episode("reach-grasp", seed, env.kinematics)
    env.apply_episode(episode)
    rec = _Recorder(env, steps)
    plan = tasks.plan_grasp(env, episode)
    obj = env.object_position(episode.object_kind)
    noise_arm, noise_hand = rng.uniform(0.01, 0.06), rng.uniform(0.02, 0.15)
    offset = rng.normal(0, 0.03, 3)            # aim off the object, sometimes a lot
    phases = [(plan.q_high, plan.pregrasp, 8), (obj + [0, 0, 0.08] + offset, plan.pregrasp, 5),
              (obj + offset * [1, 1, 0.3], plan.pregrasp, 4), (None, plan.closed, 4),
              (obj + offset + [0, 0, rng.uniform(0.08, 0.2)], plan.closed, 6)]
    q = env.joint_positions()[:7]
    for where, hand, n in phases:
        if where is not None and np.shape(where) == (3,):
            q = env.solve_arm_ik(plan.palm_target(where), plan.rot, q_init=q, hand=hand)
        elif where is not None:
            q = np.asarray(where)
        for _ in range(n):
            rec.step(q + rng.normal(0, noise_arm, 7), hand + rng.normal(0, noise_hand, 16))
    while not rec.full:                         # wander with the object (or without it)
        q = q + rng.normal(0, 0.05, 7)
        rec.step(q, plan.closed + rng.normal(0, noise_hand, 16))
    return rec.rows, episode.object_kind


def _reach(env, rng: np.random.Generator, seed: int, steps: int):
    from . import tasks

    env.apply_episode(tasks.make_episode("reach", seed, env.kinematics))
    env.hide_target()
    rec = _Recorder(env, steps)
    q = env.joint_positions()[:7]
    hand = env.joint_positions()[7:]
    while not rec.full:
        target = np.array([rng.uniform(0.3, 0.7), rng.uniform(-0.3, 0.3), rng.uniform(0.12, 0.45)])
        yaw = rng.uniform(-np.pi, np.pi)
        rot = tasks.palm_rotation((np.cos(yaw), np.sin(yaw)), palm_down=bool(rng.integers(2)))
        q = env.solve_arm_ik(target, rot, q_init=q, hand=hand, iterations=100)
        hand_goal = rng.uniform(env.lower[7:], env.upper[7:]) * 0.5 + hand * 0.5
        for _ in range(int(rng.integers(3, 9))):
            hand = hand + 0.3 * (hand_goal - hand)
            rec.step(q, hand)
    return rec.rows, ""


def _hand(env, rng: np.random.Generator, seed: int, steps: int):
    from . import tasks

    env.apply_episode(tasks.make_episode("reach", seed, env.kinematics))
    env.hide_target()
    rec = _Recorder(env, steps)
    q = env.joint_positions()[:7] + rng.uniform(-0.3, 0.3, 7)
    lo, hi = env.lower[7:], env.upper[7:]
    opened = np.asarray(tasks.HAND_OPEN)
    closing = True
    while not rec.full:
        amount = rng.uniform(0.3, 1.0, 16)      # how far each joint closes this cycle
        goal = opened + amount * (np.r_[[0.0, 1.5, 1.5, 1.4] * 3, [1.3, 1.0, 1.4, 1.5]] - opened) if closing else \
            opened + rng.normal(0, 0.05, 16)
        goal[[0, 4, 8]] = rng.uniform(-0.3, 0.3, 3)   # finger abduction
        for _ in range(int(rng.integers(3, 7))):
            q = q + rng.normal(0, 0.02, 7)
            rec.step(q, np.clip(goal, lo, hi))
        closing = not closing
    return rec.rows, ""


POLICIES = {"lift": _lift, "reach": _reach, "hand": _hand}


# --- files ----------------------------------------------------------------------------------------
def write_episode(path: Path, rows: list[dict], env, attrs: dict) -> None:
    """Write one episode atomically (temporary file in the same folder, then rename)."""
    import h5py

    from .kinematics import DOF
    from .model import ALL_JOINTS, OBJECT_KINDS

    T = len(rows)
    w, h = env.render_size
    kp = lambda key, shape, dtype: np.concatenate(   # noqa: E731  right hand, then zeros for the left
        [np.stack([r[key] for r in rows]).astype(dtype), np.zeros((T, 21, *shape), dtype=dtype)], axis=1)
    # The last frame has no following step: it repeats the previous target (its joints if alone).
    targets, last = [], rows[0]["joints"]
    for r in rows:
        last = r.get("targets", last)
        targets.append(last)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("frames", data=np.stack([r["frame"] for r in rows]), chunks=(1, h, w, 3),
                             compression="lzf")
            f["timestamps"] = np.array([r["time"] for r in rows], dtype=np.float64)
            f["joints"] = np.stack([r["joints"] for r in rows]).astype(np.float64)
            f["targets"] = np.stack(targets).astype(np.float64)
            f["keypoints_world"] = kp("kp_world", (3,), np.float32)
            f["keypoints_camera"] = kp("kp_camera", (3,), np.float32)
            f["keypoints_2d"] = kp("kp_2d", (2,), np.float32)
            f["keypoints_visible"] = kp("kp_visible", (), bool)
            f["object_poses"] = np.stack([r["objects"] for r in rows]).astype(np.float64)
            cam = f.create_group("camera")
            cam["intrinsics"] = env.camera.intrinsics(w, h)
            cam["extrinsics"] = env.camera.world_to_camera
            cam["pose"] = env.camera.camera_pose
            f.attrs.update(attrs)
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["control_hz"] = CONTROL_HZ
            f.attrs["image_size"] = (w, h)
            f.attrs["joint_names"] = list(ALL_JOINTS)
            f.attrs["object_kinds"] = sorted(OBJECT_KINDS)
            assert f["joints"].shape == (T, DOF)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def collect_episode(task: tuple) -> str:
    """Worker entry: (out, index, seed, steps, size) -> the file written."""
    out, index, seed, steps, size = task
    path = episode_path(Path(out), index)
    if path.exists():
        return str(path)
    env = _env(size)
    kind = KINDS[index % len(KINDS)]
    episode_seed = (seed * 1_000_003 + index) % (2 ** 32)
    rng = np.random.default_rng([seed, index])
    faults_before = len(env.faults)
    rows, task_object = POLICIES[kind](env, rng, episode_seed, steps)
    write_episode(path, rows[:steps], env, {"kind": kind, "episode_index": index, "seed": seed,
                                                "episode_seed": episode_seed, "task_object": task_object,
                                                "faults": len(env.faults) - faults_before})
    return str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="dexwm-collect", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (created)")
    ap.add_argument("--hours", type=float, default=None, help="amount of data, in hours of episodes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=None, help="number of episodes (instead of --hours)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="frames per episode (5 Hz)")
    ap.add_argument("--size", type=int, default=224, help="stored frame size (square)")
    args = ap.parse_args(argv)
    if args.episodes is None and args.hours is None:
        ap.error("give --hours or --episodes")
    if args.steps < 2 or args.size < 16 or args.workers < 1 or args.seed < 0:
        ap.error("--steps >= 2, --size >= 16, --workers >= 1 and --seed >= 0 are required")
    if args.episodes is not None:
        count = args.episodes
    else:
        if args.hours <= 0:
            ap.error("--hours must be positive")
        count = math.ceil(args.hours * 3600.0 / (args.steps / CONTROL_HZ))
    if count < 1:
        ap.error("nothing to collect")
    args.out.mkdir(parents=True, exist_ok=True)
    pending = [i for i in range(count) if not episode_path(args.out, i).exists()]
    done = count - len(pending)
    from tqdm import tqdm

    jobs = [(str(args.out), i, args.seed, args.steps, args.size) for i in pending]
    if args.workers == 1 or len(jobs) <= 1:
        with tqdm(total=count, initial=done, unit="episode", desc="collect", file=sys.stderr) as bar:
            for job in jobs:
                collect_episode(job)
                bar.update(1)
    else:
        import multiprocessing as mp

        # fork, not spawn: spawned children would re-run the dexwm-collect entry script. The parent has
        # no MuJoCo model or GL context at this point (the EGL probe terminates its display), and each
        # worker builds its own. The pool is made before tqdm starts its monitor thread.
        with mp.get_context("fork").Pool(min(args.workers, len(jobs))) as pool:
            with tqdm(total=count, initial=done, unit="episode", desc="collect", file=sys.stderr) as bar:
                for _ in pool.imap_unordered(collect_episode, jobs):
                    bar.update(1)
    print(f"{count} episodes in {args.out} ({done} were already there)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
