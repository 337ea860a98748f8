"""``dexwm-collect``: exploratory (not task-specific) Franka + Allegro episodes for fine-tuning.

    dexwm-collect --out DIR --hours H --seed S [--episodes N] [--workers W] [--steps T] [--size 224]
                  [--camera PITCH,AZIMUTH] [--mix objects|fumbles]

The paper fine-tunes on about 4 h of simulated exploration of three kinds (object interaction,
random reaching, hand opening/closing). Episode kinds here, chosen per episode index by the
repeating pattern of the chosen mix (``MIXES``; the default ``objects``, 20 episodes: 10 carry, 5 push,
2 poke, 2 reach, 1 hand; ``fumbles``, 10 episodes: 5 fumble, 2 carry, 1 push, 1 reach, 1 hand):
  carry  grasp-lift-carry-lower-release: the scripted power grasp of tasks.py on a random object,
         lifted 6-20 cm, carried to a random place on the table, lowered and released; repeated
         with another object until the episode is full
  push   the hand as a paddle (fingers straight down, palm facing the motion) set down behind an
         object and swept 10-25 cm past its centre towards a random point of the table; repeated
  poke   the same with a short stroke (the palm stops between 1 cm short of and 4 cm past the
         object's centre): nudges of a few cm
  reach  the hand driven to random 3D targets with random orientations
  hand   the arm near a random pose while the hand opens and closes (per-finger amounts random)
  lift   (older data, not in MIX) noisy exploration around a grasp-and-lift
  fumble (mix "fumbles" only) grasps that go wrong the ways a planner's do, then lift and carry
         anyway: the palm set down 3-7 cm off the object, the hand closed only part of the way,
         the lift started while the hand is still closing, or no closing at all; so that a world
         model sees a hand rise *without* the object as well as with it (the carry kind alone
         shows only grasps that hold)
Objects move (more than 1 cm between consecutive frames) in the carry/push/poke kinds; the run
prints that fraction of frames (``moving_fraction``) and the fraction of frames with an object
displaced more than 1 cm from where it started (``displaced_fraction``).

Control and stored frames at 5 Hz (0.2 s steps, the paper's timing; stored as the attribute
``frame_dt``, the world model's frame step). One HDF5 file per episode,
``episode_000123.h5``, in the layout documented in ``dexwm_sim/FORMAT.md`` (summary):

  frames             (T, H, W, 3) uint8   head-camera RGB at the world-model size
  timestamps         (T,) float64         seconds since the episode start
  joints             (T, 23) float64      fr3_joint1..7 then Allegro (dexwm_robot.allegro order) [rad]
  targets            (T, 23) float64      commanded joint targets of the step that follows the frame
  keypoints_world    (T, 42, 3) float32   21 right-hand MANO keypoints, then 21 left (zeros) [m]
  keypoints_camera   (T, 42, 3) float32   the same in the OpenCV camera frame
  keypoints_2d       (T, 42, 2) float32   pixels at the stored frame size
  keypoints_visible  (T, 42) bool         in front of the camera and inside the image (left: False)
  object_poses       (T, K, 7) float64    per object: position, quaternion (w, x, y, z)
  camera/intrinsics  (3, 3)               K for the stored frame size
  camera/extrinsics  (4, 4)               world -> camera (static camera)
  camera/pose        (4, 4)               camera -> world
  attrs: format_version, kind, mix, episode_index, seed, control_hz, frame_dt, image_size, joint_names,
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
from functools import partial
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
KINDS = ("carry", "push", "poke", "reach", "hand", "lift", "fumble")
# Episode kind by index (repeating pattern of 20): objects are handled in 17 of 20 episodes (carry,
# the kind in which objects move most, in half); reaching and hand motion keep the hand's own
# dynamics covered (the paper's three kinds).
MIX = ("carry", "push", "carry", "reach", "carry", "push", "carry", "poke", "carry", "hand",
       "carry", "push", "carry", "reach", "carry", "push", "carry", "poke", "carry", "push")
# Failed grasps beside the successful ones they differ from: fine-tuning data for a world model
# that must tell a hand rising with the object from one rising without it (models/README.md).
FUMBLE_MIX = ("fumble", "carry", "fumble", "push", "fumble", "carry", "fumble", "reach", "fumble", "hand")
MIXES = {"objects": MIX, "fumbles": FUMBLE_MIX}
DEFAULT_MIX = "objects"
CONTROL_HZ = 5.0
FRAME_DT = 1.0 / CONTROL_HZ   # seconds between stored frames (the world model's step)
DEFAULT_STEPS = 50            # 10 s per episode
MOVING_THRESHOLD = 0.01       # m: an object "moves" in a frame when it moved more than this since the last

log = logging.getLogger("dexwm_sim.collect")

_ENV, _ENV_KEY = None, None


def _env(size: int, camera: tuple = ()):
    """The worker's simulation at frame size ``size``, seen from the default head camera or from
    ``camera`` = (pitch, azimuth) in degrees (dexwm_robot.camera.HeadCamera.from_view)."""
    global _ENV, _ENV_KEY
    if _ENV is None or _ENV_KEY != (size, camera):
        from dexwm_robot.camera import HeadCamera

        from .scene import SimEnv
        logging.getLogger("dexwm_sim").setLevel(logging.ERROR)   # clamping notes are expected here
        if _ENV is not None:
            _ENV.close()
        _ENV = SimEnv(render_size=(size, size), control_hz=CONTROL_HZ, camera=HeadCamera.from_view(camera))
        _ENV_KEY = (size, camera)
    return _ENV


def camera_pose_of(path: Path) -> np.ndarray:
    """The camera -> world pose an episode file was recorded with."""
    import h5py

    with h5py.File(path, "r") as f:
        return f["camera/pose"][:]


def mix_of(path: Path) -> str:
    """The mix an episode file was recorded with (files from before ``--mix``: the default)."""
    import h5py

    with h5py.File(path, "r") as f:
        return str(f.attrs.get("mix", DEFAULT_MIX))


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
        self.rows.append(self.snapshot())

    def snapshot(self) -> dict:
        """What is recorded of the current state (one row)."""
        env = self.env
        kp = env.keypoints()
        poses = env.object_poses()
        return {
            "frame": env.render(),
            "time": env.time,
            "joints": env.joint_positions(),
            "kp_world": kp.world, "kp_camera": kp.camera, "kp_2d": kp.uv, "kp_visible": kp.visible,
            "objects": np.stack([poses[k] for k in sorted(poses)]),
        }

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


class _Full(Exception):
    """The episode has all its frames: ends a scripted motion in the middle."""


class _RecordingEnv:
    """SimEnv as the scripted motions of tasks.py see it, with every control step recorded.

    ``tasks._move`` / ``tasks._drive`` call ``env.step()``; here each such step is one recorded
    frame (targets stored first), and a full recorder stops the motion (``_Full``)."""

    def __init__(self, env, rec: _Recorder):
        self._env, self._rec = env, rec

    def __getattr__(self, name):
        return getattr(self._env, name)

    def step(self, arm=None, hand=None):
        if self._rec.full:
            raise _Full
        env = self._env
        if arm is not None or hand is not None:
            env.command(None if arm is None else np.clip(arm, env.lower[:7], env.upper[:7]),
                        None if hand is None else np.clip(hand, env.lower[7:], env.upper[7:]))
        self._rec.rows[-1]["targets"] = env.targets()
        env.advance(env.control_dt)
        self._rec._record()
        return env.status


def _line(renv, palm_target, rot, hand, steps: int) -> None:
    """Move the palm centre along a straight line in ``steps`` control steps, one IK waypoint per
    step, orientation held at ``rot``. (tasks._move gives every waypoint at least two steps, a
    jump and a rest, so a carried object would move on every other frame only.)"""
    from . import tasks

    env = renv._env
    start, _ = tasks._palm_pose(env)
    q = env.joint_positions()[:7]
    for k in range(1, steps + 1):
        q = env.solve_arm_ik(start + k / steps * (np.asarray(palm_target) - start), rot, q_init=q, hand=hand)
        renv.step(q, hand)


# Scene generator of the object episodes: the grasp task's (three objects spread over the table).
# tasks.py renames its tasks ('grasp' -> 'reach-grasp'); whichever it defines is used.
SCENE_TASKS = ("reach-grasp", "grasp")


def _scene_task() -> str:
    from . import tasks
    return next(t for t in SCENE_TASKS if t in tasks.TASKS)


def _object_scene(env, seed: int, rng: np.random.Generator):
    """A seeded scene with the three objects spread over the table, target marker hidden, and the
    hand starting at rest 20-35 cm above a random point of the table: the frames go to moving
    objects, not to the long first approach from the home posture (reach episodes cover that)."""
    from . import tasks
    episode = tasks.make_episode(_scene_task(), seed, env.kinematics)
    env.apply_episode(episode)
    env.hide_target()
    yaw = rng.uniform(-np.pi, np.pi)
    rot = tasks.palm_rotation((np.cos(yaw), np.sin(yaw)), palm_down=True)
    q, _ = env.solve_arm_ik_global(_table_point(rng, rng.uniform(0.2, 0.35)), rot, hand=tasks.HAND_OPEN)
    env.reset_robot(q, tasks.HAND_OPEN)
    return episode


def _table_point(rng, z: float = 0.0) -> np.ndarray:
    from . import tasks
    return np.array([rng.uniform(*tasks.AREA_X), rng.uniform(*tasks.AREA_Y), z])


def _clear_table(renv, height: float = 0.28) -> None:
    """Raise the palm straight up to ``height`` when it is low (before swinging the arm)."""
    from . import tasks
    here, rot = tasks._palm_pose(renv)
    if here[2] < height - 0.02:
        tasks._move(renv, np.r_[here[:2], height], rot, None, 3, segments=1)


def _above_next_object(env, renv, rec: _Recorder, episode, rng: np.random.Generator, first: bool):
    """Pick a random object of the scene, plan its power grasp and bring the open hand 0.2 m above
    it: the first pick of an episode starts there at rest (frames go to moving objects), a later one
    clears the table and drives there. Returns (object kind, its position, the grasp plan)."""
    import dataclasses

    from . import tasks
    from .model import OBJECT_KINDS

    kind = str(rng.choice(OBJECT_KINDS))
    obj = env.object_position(kind)
    plan = tasks.plan_grasp(env, dataclasses.replace(episode, object_kind=kind))
    if first:
        env.reset_robot(plan.q_high, plan.pregrasp)
        rec.rows[-1] = rec.snapshot()
    else:
        _clear_table(renv)
        need = int(np.ceil(np.abs(plan.q_high - env.joint_positions()[:7]).max()
                           / (env.max_speed[0] * env.control_dt)))
        tasks._drive(renv, plan.q_high, plan.pregrasp, need + 1)
    return kind, obj, plan


def _attempts_until_full(env, rng: np.random.Generator, seed: int, steps: int, attempt):
    """The frame every object kind shares: a seeded scene (``_object_scene``), then
    ``attempt(env, rng, renv, rec, episode, taken)`` again and again until the recorder holds ``steps``
    frames; the motion under way is cut there (``_Full``). An attempt names itself in ``taken``
    before it moves, so the cut one is named too. Returns (rows, the names joined by commas)."""
    episode = _object_scene(env, seed, rng)
    rec = _Recorder(env, steps)
    renv = _RecordingEnv(env, rec)
    taken: list[str] = []
    try:
        while True:
            attempt(env, rng, renv, rec, episode, taken)
    except _Full:
        pass
    return rec.rows, ",".join(taken)


def _carry(env, rng: np.random.Generator, seed: int, steps: int):
    return _attempts_until_full(env, rng, seed, steps, _carry_attempt)


def _carry_attempt(env, rng, renv, rec, episode, taken) -> None:
    """Grasp a random object, lift it, carry it at least 10 cm, set it down, release, rise."""
    from . import tasks

    kind, obj, plan = _above_next_object(env, renv, rec, episode, rng, first=not taken)
    taken.append(kind)
    # Straight down onto the object (the fingers are straight: nothing to knock over).
    _line(renv, plan.palm_target(obj), plan.rot, plan.pregrasp, 3)
    tasks._drive(renv, None, plan.closed, 2)
    lift = rng.uniform(0.06, 0.2)
    _line(renv, plan.palm_target(obj + [0, 0, lift]), plan.rot, plan.closed, int(rng.integers(3, 6)))
    dest = _table_point(rng, obj[2])
    for _ in range(20):        # somewhere else: at least 10 cm away
        if np.linalg.norm(dest[:2] - obj[:2]) > 0.1:
            break
        dest = _table_point(rng, obj[2])
    _line(renv, plan.palm_target(dest + [0, 0, lift]), plan.rot, plan.closed, int(rng.integers(6, 13)))
    _line(renv, plan.palm_target(dest + [0, 0, 0.01]), plan.rot, plan.closed, int(rng.integers(3, 6)))
    tasks._drive(renv, None, plan.pregrasp, 2, duration=0.6)   # slow release: no flick
    here, _ = tasks._palm_pose(renv)
    tasks._move(renv, here + [0, 0, 0.1], plan.rot, plan.pregrasp, 2, segments=1)


# How a fumble episode's grasp attempt goes wrong (one chosen per attempt).
FUMBLES = ("offset", "partial", "early", "open")


def _fumble(env, rng: np.random.Generator, seed: int, steps: int):
    """Grasp attempts that go wrong (``FUMBLES``), each followed by the lift and a short carry a
    grasp that held would make: the object stays behind, is dragged, or slips out."""
    return _attempts_until_full(env, rng, seed, steps, _fumble_attempt)


def _fumble_attempt(env, rng, renv, rec, episode, taken) -> None:
    from . import tasks

    kind, obj, plan = _above_next_object(env, renv, rec, episode, rng, first=not taken)
    how = str(rng.choice(FUMBLES))
    taken.append(f"{kind}:{how}")
    aim = obj.copy()
    if how == "offset":
        angle = rng.uniform(-np.pi, np.pi)
        aim[:2] += rng.uniform(0.03, 0.07) * np.array([np.cos(angle), np.sin(angle)])
    _line(renv, plan.palm_target(aim), plan.rot, plan.pregrasp, 3)
    part = plan.pregrasp + rng.uniform(0.2, 0.7) * (plan.closed - plan.pregrasp)
    if how == "offset":
        lift_hand = plan.closed
        tasks._drive(renv, None, plan.closed, 2)
    elif how == "partial":
        lift_hand = part
        tasks._drive(renv, None, part, 2)
    elif how == "early":
        lift_hand = plan.closed              # still closing while it rises
        tasks._drive(renv, None, part, 1)
    else:
        lift_hand = plan.pregrasp
    lift = rng.uniform(0.06, 0.2)
    _line(renv, plan.palm_target(aim + [0, 0, lift]), plan.rot, lift_hand, int(rng.integers(3, 6)))
    dest = _table_point(rng, obj[2])
    _line(renv, plan.palm_target(dest + [0, 0, lift]), plan.rot, lift_hand, int(rng.integers(3, 7)))
    tasks._drive(renv, None, plan.pregrasp, 2, duration=0.6)
    here, _ = tasks._palm_pose(renv)
    tasks._move(renv, here + [0, 0, 0.1], plan.rot, plan.pregrasp, 2, segments=1)


# Palm-centre height of the paddle hand: straight fingers reach 0.18 m below it.
PADDLE_PALM_HEIGHT = 0.195


def _sweep(renv, rng, kind: str, reach: float, back: float) -> None:
    """Set the hand down ``back`` m behind object ``kind`` and sweep it until the palm is ``reach``
    m past the object's centre, towards a random point of the table (objects stay on it); lift.

    The hand is a paddle: fingers straight and pointing down (tips 1.5-3 cm above the table), palm
    facing the sweep direction."""
    from . import tasks

    env = renv._env
    obj = env.object_position(kind)
    goal = _table_point(rng)
    d = goal - obj
    d[2] = 0.0
    d = d / np.linalg.norm(d) if np.linalg.norm(d) > 0.02 else np.array([1.0, 0.0, 0.0])
    rot = tasks.palm_rotation(d[:2], palm_down=False)
    hand = np.r_[tasks.FINGERS_STRAIGHT + rng.normal(0, 0.03, 12), tasks.HAND_OPEN[12:]]
    height = PADDLE_PALM_HEIGHT + rng.uniform(0.0, 0.015)
    start = obj - (0.035 + back) * d
    end = obj + reach * d
    start[2] = end[2] = height
    # The hand is 20 cm or more above the table here (episode start, or lifted after a sweep): the
    # paddle's tips clear the objects on the way. The pose 6 cm above the start comes from several
    # IK seeds (a good wrist branch), then straight lines from there.
    q, _ = env.solve_arm_ik_global(start + [0, 0, 0.06], rot, hand=hand)
    need = int(np.ceil(np.abs(q - env.joint_positions()[:7]).max() / (env.max_speed[0] * env.control_dt)))
    tasks._drive(renv, q, hand, need + 1)
    _line(renv, start, rot, hand, 1)
    _line(renv, end, rot, hand, int(rng.integers(6, 14)))
    _line(renv, end + [0, 0, 0.08], rot, hand, 1)


def _push(env, rng: np.random.Generator, seed: int, steps: int):
    # The palm stops 10-25 cm past the object's centre: the object travels.
    return _attempts_until_full(env, rng, seed, steps, partial(_sweep_attempt, past=(0.1, 0.25), back=(0.0, 0.06)))


def _poke(env, rng: np.random.Generator, seed: int, steps: int):
    # The palm stops between just before and 4 cm past the object's centre: a nudge.
    return _attempts_until_full(env, rng, seed, steps, partial(_sweep_attempt, past=(-0.01, 0.04), back=(0.0, 0.03)))


def _sweep_attempt(env, rng, renv, rec, episode, taken, *, past: tuple[float, float],
                   back: tuple[float, float]) -> None:
    """``_sweep`` past a random object, its two distances drawn uniformly from ``past`` and ``back``."""
    from .model import OBJECT_KINDS
    _sweep(renv, rng, str(rng.choice(OBJECT_KINDS)), rng.uniform(*past), rng.uniform(*back))


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


POLICIES = {"carry": _carry, "push": _push, "poke": _poke, "reach": _reach, "hand": _hand, "lift": _lift,
            "fumble": _fumble}


def moving_frames(object_poses: np.ndarray, threshold: float = MOVING_THRESHOLD) -> tuple:
    """(moving, displaced) bool arrays over the T frames of one episode: some object moved more
    than ``threshold`` m since the previous frame / is more than that from its first-frame place.
    The first frame never counts as moving."""
    pos = np.asarray(object_poses)[..., :3]
    step = np.linalg.norm(np.diff(pos, axis=0), axis=-1).max(-1) if len(pos) > 1 else np.zeros(0)
    moving = np.r_[False, step > threshold]
    displaced = np.linalg.norm(pos - pos[:1], axis=-1).max(-1) > threshold
    return moving, displaced


# --- files ----------------------------------------------------------------------------------------
def write_episode(path: Path, rows: list[dict], env, attrs: dict) -> None:
    """Write one episode atomically (temporary file in the same folder, then rename)."""
    import h5py

    from dexwm_robot.joints import DOF
    from dexwm_robot.joints import JOINT_NAMES as ALL_JOINTS

    from .model import OBJECT_KINDS

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
            f.attrs["frame_dt"] = FRAME_DT
            f.attrs["image_size"] = (w, h)
            f.attrs["joint_names"] = list(ALL_JOINTS)
            f.attrs["object_kinds"] = sorted(OBJECT_KINDS)
            assert f["joints"].shape == (T, DOF)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def collect_episode(task: tuple) -> str:
    """Worker entry: (out, index, seed, steps, size[, camera[, mix]]) -> the file written; camera:
    (pitch, azimuth) in degrees, () or absent for the default view; mix: a name of ``MIXES``."""
    out, index, seed, steps, size, *rest = task
    camera = rest[0] if rest else ()
    mix = rest[1] if len(rest) > 1 else DEFAULT_MIX
    path = episode_path(Path(out), index)
    if path.exists():
        return str(path)
    env = _env(size, camera)
    pattern = MIXES[mix]
    kind = pattern[index % len(pattern)]
    episode_seed = (seed * 1_000_003 + index) % (2 ** 32)
    rng = np.random.default_rng([seed, index])
    faults_before = len(env.faults)
    rows, task_object = POLICIES[kind](env, rng, episode_seed, steps)
    write_episode(path, rows[:steps], env, {"kind": kind, "mix": mix, "episode_index": index, "seed": seed,
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
    ap.add_argument("--camera", default="", metavar="PITCH,AZIMUTH",
                    help="record from a candidate head camera (degrees down, degrees from +x toward +y, same "
                         "look-at point and distance as the default; default: the simulation's view)")
    ap.add_argument("--mix", choices=tuple(MIXES), default=DEFAULT_MIX,
                    help="pattern of episode kinds (module docstring): objects (default) or fumbles (failed "
                         "grasps beside successful ones)")
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
    from dexwm_robot.camera import HeadCamera

    try:
        camera = HeadCamera.parse_view(args.camera)
        wanted = HeadCamera.from_view(camera).camera_pose
    except ValueError as e:
        ap.error(f"--camera needs PITCH,AZIMUTH in degrees: {e}")
    args.out.mkdir(parents=True, exist_ok=True)
    present = [i for i in range(count) if episode_path(args.out, i).exists()]
    pending = sorted(set(range(count)) - set(present))
    done = len(present)
    # A folder is one view: resuming it from another camera would mix views in one training set.
    if present and not np.allclose(camera_pose_of(episode_path(args.out, present[0])), wanted, atol=1e-6):
        ap.error(f"{episode_path(args.out, present[0])} was recorded from another camera than --camera "
                 f"{args.camera or '(default)'} asks for")
    # ... and one mix: the episode kinds by index would otherwise change half-way.
    recorded_mix = mix_of(episode_path(args.out, present[0])) if present else args.mix
    if recorded_mix != args.mix:
        ap.error(f"{episode_path(args.out, present[0])} was recorded with --mix {recorded_mix}, not {args.mix}")
    from tqdm import tqdm

    jobs = [(str(args.out), i, args.seed, args.steps, args.size, camera, args.mix) for i in pending]
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
    stats = moving_stats([episode_path(args.out, i) for i in range(count)])
    print(f"moving_fraction {stats['moving_fraction']:.3f} (frames in which some object moved more than "
          f"{MOVING_THRESHOLD * 100:.0f} cm since the previous frame, {stats['frames']} frames); "
          f"displaced_fraction {stats['displaced_fraction']:.3f}; by kind: "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(stats["moving_by_kind"].items())))
    return 0


def moving_stats(paths) -> dict:
    """Moving / displaced frame fractions over episode files (overall and per episode kind)."""
    import h5py

    moving, displaced, by_kind = 0, 0, {}
    frames = 0
    for p in paths:
        with h5py.File(p, "r") as f:
            m, d = moving_frames(f["object_poses"][:])
            kind = str(f.attrs.get("kind", ""))
        frames += len(m)
        moving += int(m.sum())
        displaced += int(d.sum())
        k = by_kind.setdefault(kind, [0, 0])
        k[0] += int(m.sum())
        k[1] += len(m)
    return {"frames": frames, "moving_fraction": moving / max(frames, 1),
            "displaced_fraction": displaced / max(frames, 1),
            "moving_by_kind": {k: v[0] / max(v[1], 1) for k, v in by_kind.items()}}


if __name__ == "__main__":
    raise SystemExit(main())
