"""Evaluation tasks in simulation: seeded episodes, success rules, scripted solutions, goal images.

Two families of tasks, named so that they cannot be confused:

* **Paper protocol** (``paper-reach``, ``paper-grasp``, ``paper-place``): the stages of one scripted
  pick-and-place demonstration, cut as the DexWM paper's simulation evaluation cuts its
  demonstrations. The demonstration is a seeded pick-place scene (object >= 0.35 m from its target,
  palm >= 0.45 m from the object at the start) solved by the scripted power grasp:
    reach  episode start -> end of the approach (hand open, palm at the pre-grasp pose 8 cm above
           the object); success: mean distance of palm + 4 fingertips to their mean position at the
           stage's end < 0.15 m
    grasp  pre-grasp pose -> end of the grasp (hand closed, object lifted 12 cm); success: palm
           within 0.20 m of the object and the hand in contact with it
    place  0.5 s into the carry (object held and lifted) -> end of the carry (object lowered onto
           its target, still held); success: object within 0.10 m of the target
  (The paper starts place 20 recorded frames into the transport stage; its recording rate differs.)
  The start state is the demonstration's state at the stage's start; the goal image is rendered at
  the stage's end. A seed whose demonstration fails (the scripted grasp slips) has no stage
  episodes: ``StageUnavailable`` (the evaluation skips it and says so, as the paper hand-picks 50
  successful demonstrations).
* **Composite** (``reach``, ``reach-grasp``, ``pick-place``): whole tasks from a random start,
  harder than anything the paper reports. Difficulty: the start is at least 0.25 m beyond the
  success threshold (reach: mean distance >= 0.40 m to a random 3D target; reach-grasp: palm
  >= 0.45 m from the object; pick-place: object >= 0.35 m from its target).

Objects and targets are spread over a 40 x 40 cm table area (x 0.35..0.75 m, y -0.2..0.2 m in front
of the robot). Episodes are a pure function of (task, seed). Success rules (the paper's) are checked
once per control step; the simulation's ``TaskStatus.success`` latches when a rule held for 10
consecutive steps (the paper's figure); ``strict_grasp`` adds the lift a grasp is for.

The scripted solver drives the simulation through the same controller as any other command;
``make_goal`` renders its end state as the episode's goal image, so a planner gets the kind of goal a
lab user captures with the camera.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from dexwm_robot import allegro as hand_joints
from dexwm_robot.franka import HOME as ARM_HOME
from dexwm_robot.tasks import TASK_KINDS

from .model import OBJECT_KINDS

PAPER_TASKS = tuple(f"paper-{kind}" for kind in TASK_KINDS)
COMPOSITE_TASKS = ("reach", "reach-grasp", "pick-place")
TASKS = COMPOSITE_TASKS + PAPER_TASKS
# The planner's task kind (its task-specific cost terms and settings) of every simulation task.
TASK_KIND = {"reach": "reach", "reach-grasp": "grasp", "pick-place": "place",
             **{f"paper-{kind}": kind for kind in TASK_KINDS}}
# Paper-protocol stages: (start mark, end mark) in the scripted pick-and-place demonstration.
STAGES = {"paper-reach": ("start", "pregrasp"), "paper-grasp": ("pregrasp", "lifted"),
          "paper-place": ("carrying", "lowered")}
CARRY_START_S = 0.5            # the place stage starts this far into the carry
STRICT_LIFT = 0.03             # strict grasp: object raised at least this much above its resting height
REACH_THRESHOLD = 0.15
GRASP_THRESHOLD = 0.20
PLACE_THRESHOLD = 0.10
DIFFICULTY_MARGIN = 0.25

AREA_X = (0.35, 0.75)
AREA_Y = (-0.20, 0.20)
MAX_SEED = 2 ** 32 - 1

# Scripted power grasp, palm facing down. Palm frame: x out of the palm (down), y towards the thumb,
# z along the fingers (forward). The thumb is set as a post behind the object before the hand comes
# down; the index/middle/ring fingers then bend down in front of the object and press it against the
# thumb: the hand closes to the power grasp (dexwm_robot.allegro.power_grasp).
HAND_OPEN = np.asarray(hand_joints.OPEN_POSE)
FINGERS_STRAIGHT = hand_joints.STRAIGHT_FINGERS
MIN_TABLE_DEPTH = 0.075        # keep the palm this high above the table: room for the finger hook
PALM_SURFACE_X = 0.0111
GRASP_Y = 0.02                 # between the index and middle fingers, in line with the thumb
FINGER_WALL_Z = 0.0066         # pad surface of a finger bent 90 degrees at its proximal joint
PALM_TO_MOUNT = np.array([0.0, 0.0, 0.095])


@dataclass(frozen=True)
class ObjectSpec:
    kind: str
    size: tuple           # MuJoCo geom size: box half-extents, cylinder (radius, half-height), sphere (radius,)
    rgba: tuple
    position: tuple       # resting centre on the table
    yaw: float
    mass: float = 0.08

    @property
    def half_height(self) -> float:
        return float(self.size[2] if self.kind == "box" else self.size[1] if self.kind == "cylinder" else self.size[0])

    @property
    def half_width(self) -> float:
        return float(max(self.size[0], self.size[1]) if self.kind == "box" else self.size[0])


@dataclass(frozen=True)
class Episode:
    task: str
    seed: int
    object_kind: str               # the object the task is about (grasp, place; reach: none moved)
    objects: tuple                 # ObjectSpec for every object in the scene
    target: tuple                  # reach: hand target; place: object target; grasp: hidden
    arm_start: tuple
    hand_start: tuple

    def object(self, kind: str | None = None) -> ObjectSpec:
        kind = kind or self.object_kind
        return next(o for o in self.objects if o.kind == kind)


def _random_objects(rng: np.random.Generator) -> list[ObjectSpec]:
    """Three objects (one of each kind) at least 0.12 m apart inside the table area."""
    positions: list[np.ndarray] = []
    while len(positions) < len(OBJECT_KINDS):
        p = np.array([rng.uniform(*AREA_X), rng.uniform(*AREA_Y)])
        if all(np.linalg.norm(p - q) > 0.12 for q in positions):
            positions.append(p)
    out = []
    for kind, xy in zip(OBJECT_KINDS, positions):
        if kind == "box":
            size = tuple(float(v) for v in rng.uniform(0.02, 0.03, 3))
        elif kind == "cylinder":
            size = (float(rng.uniform(0.022, 0.028)), float(rng.uniform(0.02, 0.03)))
        else:
            size = (float(rng.uniform(0.025, 0.032)),)
        hue = rng.uniform(0, 1)
        rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
        spec = ObjectSpec(kind=kind, size=size, rgba=(*rgb, 1.0), position=(0.0, 0.0, 0.0),
                          yaw=float(rng.uniform(-np.pi, np.pi)))
        out.append(ObjectSpec(kind=kind, size=size, rgba=spec.rgba,
                              position=(float(xy[0]), float(xy[1]), spec.half_height + 0.002), yaw=spec.yaw))
    return out


def _random_arm_start(rng: np.random.Generator) -> np.ndarray:
    q = ARM_HOME.copy()
    q[0] += rng.uniform(-0.6, 0.6)
    q[1:] += rng.uniform(-0.1, 0.1, 6)
    return q


def make_episode(task: str, seed: int, kinematics=None) -> Episode:
    """The episode of ``task`` for ``seed`` (deterministic)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    seed = int(seed)
    kin = kinematics or _kinematics()
    # Paper stages share the pick-place scene of their seed (stream 2) when it also leaves the
    # palm far from the object, so that the reach stage is a task.
    stream = 2 if task in PAPER_TASKS else COMPOSITE_TASKS.index(task)
    rng = np.random.default_rng([stream, seed])
    for _ in range(1000):
        objects = _random_objects(rng)
        kind = OBJECT_KINDS[int(rng.integers(len(OBJECT_KINDS)))]
        arm = _random_arm_start(rng)
        hand = HAND_OPEN.copy()
        pts = kin.palm_and_tips_world(np.r_[arm, hand])
        obj = next(o for o in objects if o.kind == kind)
        if task == "reach":
            target = np.array([rng.uniform(*AREA_X), rng.uniform(*AREA_Y), rng.uniform(0.08, 0.30)])
            ok = np.linalg.norm(pts - target, axis=1).mean() >= REACH_THRESHOLD + DIFFICULTY_MARGIN
        elif task == "reach-grasp":
            target = np.array([0.0, 0.0, -0.5])   # no marker: hidden under the table
            ok = np.linalg.norm(pts[0] - np.asarray(obj.position)) >= GRASP_THRESHOLD + DIFFICULTY_MARGIN
        else:
            target = np.array([rng.uniform(*AREA_X), rng.uniform(*AREA_Y), obj.position[2]])
            others = [np.asarray(o.position[:2]) for o in objects if o.kind != kind]
            ok = (np.linalg.norm(target - np.asarray(obj.position)) >= PLACE_THRESHOLD + DIFFICULTY_MARGIN
                  and all(np.linalg.norm(target[:2] - p) > 0.1 for p in others))
            if task in PAPER_TASKS:
                ok = ok and np.linalg.norm(pts[0] - np.asarray(obj.position)) >= GRASP_THRESHOLD + DIFFICULTY_MARGIN
        if ok:
            return Episode(task=task, seed=seed, object_kind=kind, objects=tuple(objects),
                           target=tuple(float(v) for v in target), arm_start=tuple(arm.tolist()),
                           hand_start=tuple(hand.tolist()))
    raise RuntimeError(f"could not generate a {task} episode for seed {seed}")


_KIN = None


def _kinematics():
    global _KIN
    if _KIN is None:
        from dexwm_robot.kinematics import RobotKinematics
        _KIN = RobotKinematics.from_description()
    return _KIN


# --- success rules --------------------------------------------------------------------------------
def evaluate(env, episode: Episode) -> tuple[bool, float]:
    """(rule holds now, task distance [m]) for the current state of ``env``."""
    pts = env.palm_and_tips()
    kind = TASK_KIND[episode.task]
    if kind == "reach":
        dist = float(np.linalg.norm(pts - np.asarray(episode.target), axis=1).mean())
        return dist < REACH_THRESHOLD, dist
    obj = env.object_position(episode.object_kind)
    if kind == "grasp":
        dist = float(np.linalg.norm(pts[0] - obj))
        return dist < GRASP_THRESHOLD and env.hand_touches(episode.object_kind), dist
    dist = float(np.linalg.norm(obj - np.asarray(episode.target)))
    return dist < PLACE_THRESHOLD, dist


def strict_grasp(env, episode: Episode) -> bool:
    """The object raised >= 3 cm above its resting height and the hand touching it: a grasp that
    holds the object, not a touch (the paper's grasp rule accepts a touch)."""
    resting = episode.object().position[2]
    return bool(env.object_position(episode.object_kind)[2] - resting >= STRICT_LIFT
                and env.hand_touches(episode.object_kind))


# Judge of a subgoal chain (dexwm-eval --subgoals): the palm or the object counts as at a subgoal's
# scripted state within this distance [m] (objects are 4-6 cm across: a hand further than that from
# the pre-grasp pose closes beside the object when it goes down from there).
SUBGOAL_TOLERANCE = 0.05


def subgoal_progress(env, episode: Episode, palm_goal: np.ndarray, object_goal: np.ndarray,
                     joints_goal: np.ndarray | None = None) -> dict:
    """How far the current state is from a subgoal's scripted state, read from the simulation (a
    judge's reading, never a policy's): palm and task-object distance to where the scripted solution
    had them [m], the object's height above its resting height [m], whether the hand holds it (the
    strict grasp rule) and whether the scripted state held it (lifted by ``STRICT_LIFT``); with the
    scripted state's joints also the angle between its flange orientation and the current one [deg]
    and the largest hand joint difference [rad]."""
    resting = episode.object().position[2]
    obj = env.object_position(episode.object_kind)
    object_goal = np.asarray(object_goal, dtype=np.float64)[:3]
    turn = {}
    if joints_goal is not None:
        rot_now = env.kinematics.ee_pose(env.joint_positions())[1]
        rot_goal = env.kinematics.ee_pose(np.asarray(joints_goal, dtype=np.float64))[1]
        hand_now, hand_goal = env.joint_positions()[7:], np.asarray(joints_goal, dtype=np.float64)[7:]
        turn = {"flange_turn_deg": float(np.degrees(Rotation.from_matrix(rot_goal.T @ rot_now).magnitude())),
                "hand_joint_error_rad_max": float(np.abs(hand_now - hand_goal).max())}
    return {**turn, "palm_error_m": float(np.linalg.norm(env.palm_and_tips()[0] - np.asarray(palm_goal))),
            "object_error_m": float(np.linalg.norm(obj - object_goal)),
            "object_lift_m": float(obj[2] - resting),
            "held": strict_grasp(env, episode),
            "scripted_held": bool(object_goal[2] - resting >= STRICT_LIFT)}


# --- scripted solutions ---------------------------------------------------------------------------
def palm_rotation(direction_xy, palm_down: bool) -> np.ndarray:
    """Palm-frame orientation (columns x_p, y_p, z_p in world).

    palm_down: palm facing the table (x_p = -z), fingers along ``direction_xy``;
    otherwise fingers pointing down (z_p = -z), palm facing ``direction_xy``.
    """
    u = np.array([direction_xy[0], direction_xy[1], 0.0])
    u /= np.linalg.norm(u)
    down = np.array([0.0, 0.0, -1.0])
    x, z = (down, u) if palm_down else (u, down)
    return np.stack([x, np.cross(z, x), z], axis=1)


# States after every control step of the demonstration being traced (``demonstration(trace=...)``):
# a module-level list because every scripted motion goes through ``_drive``.
_TRACE: list | None = None


def _drive(env, arm, hand, steps: int, until=None, duration: float | None = None) -> bool:
    """Command (arm, hand) and run ``steps`` control steps (stop early when ``until()`` is true).
    Neither given: the running command goes on unchanged (its speed too)."""
    if arm is not None or hand is not None:
        env.command(arm, hand, duration=duration)
    for _ in range(steps):
        env.step()
        if _TRACE is not None:
            _TRACE.append(env.get_state())
        if until is not None and until():
            return True
    return False


_THUMB_TABLE = None


def _thumb_table(kin):
    """Grid of thumb postures and their tip/distal positions in the palm frame (computed once)."""
    global _THUMB_TABLE
    if _THUMB_TABLE is None:
        import itertools
        lo, hi = hand_joints.LOWER[12:], hand_joints.UPPER[12:]
        grid = np.array(list(itertools.product(*[np.linspace(lo[i], hi[i], 9) for i in range(4)])))
        q = np.zeros((len(grid), 23))
        q[:, :7] = ARM_HOME
        q[:, 7:19] = FINGERS_STRAIGHT
        q[:, 19:] = grid
        kp = kin.keypoints_world(q)
        pos, rot = kin.ee_pose(q[:1])
        palm_origin = pos[0] + rot[0] @ PALM_TO_MOUNT
        local = (kp - palm_origin) @ rot[0]          # world -> palm frame
        _THUMB_TABLE = (grid, local[:, 4], local[:, 3])   # thumb tip, thumb distal joint
    return _THUMB_TABLE


def grasp_plan(kin, spec: ObjectSpec):
    """(thumb posture, object centre in the palm frame) of the scripted grasp for an object."""
    grid, tip, distal = _thumb_table(kin)
    radius, hh = spec.half_width, spec.half_height
    depth = max(PALM_SURFACE_X + hh + 0.006, MIN_TABLE_DEPTH - hh)   # object centre below the palm
    table_depth = depth + hh
    # Thumb post: tip near the object's centre depth (never into the table), in line with the
    # grasp, as far back as the thumb reaches; the object then sits just in front of it.
    ok = ((tip[:, 0] > depth - 0.015) & (tip[:, 0] < min(depth + 0.01, table_depth - 0.014))
          & (np.abs(tip[:, 1] - GRASP_Y) < 0.012) & (distal[:, 2] < tip[:, 2] + 0.01))
    if not np.any(ok):
        raise RuntimeError(f"no thumb posture for a {spec.kind} of half height {hh:.3f}")
    idx = np.nonzero(ok)[0]
    best = idx[np.argmin(tip[idx, 2])]
    z_center = tip[best, 2] + 0.012 + radius + 0.003
    return grid[best], np.array([depth, GRASP_Y, z_center])


def _palm_target(center: np.ndarray, rot: np.ndarray, grasp_point: np.ndarray) -> np.ndarray:
    """Palm-centre position that puts the object centre at ``grasp_point`` (palm frame)."""
    palm_center_offset = np.array([PALM_SURFACE_X, 0.0, -0.0475])   # allegro_palm_center site
    return center + rot @ (palm_center_offset - grasp_point)


def _palm_pose(env):
    """World position of the palm-centre site and the palm rotation of the current state."""
    q = env.joint_positions()
    pos, rot = env.kinematics.ee_pose(q)
    return env.palm_and_tips()[0], rot


def _move(env, palm_target, rot_target, hand, steps: int, segments: int = 5, until=None) -> np.ndarray:
    """Move the palm centre along a straight line (orientation slerped) through IK waypoints.

    Each waypoint's IK starts from the previous solution, so the arm stays on one IK branch.
    """
    from scipy.spatial.transform import Rotation, Slerp

    start, rot0 = _palm_pose(env)
    slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([rot0, rot_target])))
    q = env.joint_positions()[:7]
    per = max(steps // segments, 1)
    for k in range(1, segments + 1):
        a = k / segments
        q_next = env.solve_arm_ik(start + a * (palm_target - start), slerp(a).as_matrix(), q_init=q, hand=hand)
        # Give large joint motions the time the speed cap needs.
        need = int(np.ceil(np.abs(q_next - env.joint_positions()[:7]).max() / (env.max_speed[0] * env.control_dt)))
        q = q_next
        if _drive(env, q, hand, max(per, need + 1), until=until):
            break
    return q


def _grasp_direction_candidates(env, episode: Episode):
    """(finger direction, object spec as seen across that direction) pairs worth trying."""
    obj = env.object_position(episode.object_kind)
    spec = episode.object()
    radial = obj[:2] / np.linalg.norm(obj[:2]) if np.linalg.norm(obj[:2]) > 1e-3 else np.array([1.0, 0.0])
    if spec.kind != "box":
        # Fingers across the radial direction keep the FR3 wrist far from its limits.
        tangential = np.array([-radial[1], radial[0]])
        return [(tangential, spec), (-tangential, spec), (radial, spec)]
    # Boxes: squeeze across a pair of faces.
    quat = env.object_poses()["box"][3:]
    yaw = 2.0 * np.arctan2(quat[3], quat[0])
    out = []
    for k in range(4):
        n = np.array([np.cos(yaw + k * np.pi / 2), np.sin(yaw + k * np.pi / 2)])
        across = spec.size[k % 2]
        out.append((n, ObjectSpec(kind="box", size=(across, across, spec.size[2]), rgba=spec.rgba,
                                  position=spec.position, yaw=spec.yaw)))
    return out


@dataclass
class GraspPlan:
    """Where and how the scripted grasp takes an object (palm-down power grasp)."""

    rot: np.ndarray          # palm orientation
    grasp_point: np.ndarray  # object centre in the palm frame
    pregrasp: np.ndarray     # (16,) hand: fingers straight, thumb post in place
    closed: np.ndarray       # (16,) hand: closing posture (beyond contact)
    q_high: np.ndarray       # (7,) arm: palm 0.2 m above the grasp pose

    def palm_target(self, object_center) -> np.ndarray:
        return _palm_target(np.asarray(object_center, dtype=float), self.rot, self.grasp_point)


def plan_grasp(env, episode: Episode) -> GraspPlan:
    """Choose the finger direction (reachable, away from joint limits) and the hand postures."""
    obj = env.object_position(episode.object_kind)
    best = None
    for direction, spec in _grasp_direction_candidates(env, episode):
        thumb, gp = grasp_plan(env.kinematics, spec)
        pregrasp = np.r_[FINGERS_STRAIGHT, thumb]
        rot = palm_rotation(direction, palm_down=True)
        q_high, err = env.solve_arm_ik_global(_palm_target(obj + [0, 0, 0.2], rot, gp), rot, hand=pregrasp)
        margin = np.minimum(q_high - env.lower[:7], env.upper[:7] - q_high).min()
        score = min(margin, 0.5) - 20.0 * err       # reachable first, then away from joint limits
        if best is None or score > best[0]:
            closed = hand_joints.power_grasp(pregrasp)
            best = (score, GraspPlan(rot=rot, grasp_point=gp, pregrasp=pregrasp, closed=closed, q_high=q_high))
    return best[1]


def _mark(marks: dict | None, name: str, env) -> None:
    """Record the simulation state at a stage boundary of a scripted demonstration."""
    if marks is not None:
        marks[name] = env.get_state()
        if _TRACE is not None:
            marks[name]["trace_index"] = len(_TRACE)


def _grasp_and_lift(env, episode: Episode, lift: float = 0.12, marks: dict | None = None):
    """Scripted power grasp of the episode's object; returns (closed hand, grasp point, open hand, rot).

    ``marks`` (optional) receives the states above the object ("high": hand open and turned, palm
    20 cm above its grasp pose, marked without settling so that the demonstration stays as it was),
    at the end of the approach ("pregrasp": hand open, palm 8 cm above its grasp pose), with the hand closed on the object still on the table
    ("closed") and at the end of the grasp ("lifted")."""
    obj = env.object_position(episode.object_kind)
    plan = plan_grasp(env, episode)
    rot, gp, pregrasp, closed = plan.rot, plan.grasp_point, plan.pregrasp, plan.closed
    here, _ = _palm_pose(env)
    if here[2] < 0.25:     # clear the table before swinging the arm over to the object
        _move(env, np.r_[here[:2], 0.3], _palm_pose(env)[1], None, 8, segments=2)
    _drive(env, plan.q_high, pregrasp, 20)
    _mark(marks, "high", env)
    _move(env, _palm_target(obj + [0, 0, 0.08], rot, gp), rot, pregrasp, 10, segments=3)
    _drive(env, None, None, 5)      # settle: the stage boundary is a state at rest
    _mark(marks, "pregrasp", env)
    _move(env, _palm_target(obj, rot, gp), rot, pregrasp, 8, segments=2)
    _drive(env, None, closed, 10)
    _mark(marks, "closed", env)
    _move(env, _palm_target(obj + [0, 0, lift], rot, gp), rot, closed, 12, segments=3)
    _drive(env, None, None, 3)
    _mark(marks, "lifted", env)
    return closed, gp, pregrasp, rot


def solve(env, episode: Episode, hold_steps: int = 12, marks: dict | None = None) -> bool:
    """Drive ``env`` (already reset to ``episode``) to a solved state; True when the rule held.

    Paper-protocol episodes are solved by running their demonstration from the current state's
    stage boundary on (``set_stage`` put it there); ``marks`` receives the stage boundaries of a
    pick-and-place demonstration."""
    if episode.task in PAPER_TASKS:
        return _solve_stage(env, episode)
    if episode.task == "reach":
        target = np.asarray(episode.target)
        direction = target[:2] if np.linalg.norm(target[:2]) > 1e-3 else np.array([1.0, 0.0])
        rot = palm_rotation(direction, palm_down=False)
        arm = env.solve_arm_ik(target, rot, points="palm_tips", hand=HAND_OPEN)
        _drive(env, arm, HAND_OPEN, 15)   # settle first, so the goal image shows the hand at rest
        _drive(env, arm, HAND_OPEN, 30, until=lambda: env.status.success)
    elif episode.task == "reach-grasp":
        closed, _, _, _ = _grasp_and_lift(env, episode)
        _drive(env, None, closed, hold_steps, until=lambda: env.status.success)
    else:
        _mark(marks, "start", env)
        closed, gp, opened, rot = _grasp_and_lift(env, episode, lift=0.15, marks=marks)
        target = np.asarray(episode.target)
        # Carry high, turning the hand about the vertical towards a comfortable posture at the target
        # (the object's yaw does not matter for placing).
        radial = target[:2] / np.linalg.norm(target[:2])
        best = None
        for direction in (np.array([-radial[1], radial[0]]), np.array([radial[1], -radial[0]])):
            rot_c = palm_rotation(direction, palm_down=True)
            q_c, err = env.solve_arm_ik_global(_palm_target(target + [0, 0, 0.15], rot_c, gp), rot_c, hand=closed)
            margin = np.minimum(q_c - env.lower[:7], env.upper[:7] - q_c).min()
            score = min(margin, 0.5) - 20.0 * err - 0.05 * np.linalg.norm(q_c - env.joint_positions()[:7])
            if best is None or score > best[0]:
                best = (score, q_c, rot_c)
        _, q_c, rot = best
        # A slow swing keeps the object in the hand.
        carry_start = int(round(CARRY_START_S / env.control_dt))
        _drive(env, q_c, closed, carry_start, duration=2.5)
        _mark(marks, "carrying", env)
        _drive(env, None, None, 28 - carry_start)     # the swing goes on toward q_c
        _mark(marks, "above", env)
        _move(env, _palm_target(target + [0, 0, 0.01], rot, gp), rot, closed, 12, segments=3)
        _drive(env, None, None, 3)
        _mark(marks, "lowered", env)
        _drive(env, None, opened, 10, duration=0.8)   # release slowly: a flick would roll the object away
        here, _ = _palm_pose(env)
        _move(env, here + [0, 0, 0.12], rot, opened, hold_steps + 4, segments=2, until=lambda: env.status.success)
        _mark(marks, "released", env)
    # Solved means the rule was met for the required streak and still holds in the final state.
    return bool(env.status.success and env.status.success_now)


class StageUnavailable(ValueError):
    """The seed's scripted demonstration failed, so it has no paper-protocol stage episodes."""


def demonstration(env, episode: Episode, trace: list | None = None) -> dict:
    """Run the scripted pick-and-place demonstration of a paper-protocol episode from the scene's
    start; returns the states at its stage boundaries (the scene is left at the demonstration's end).
    ``trace`` (optional) receives the state after every control step; each mark then holds its
    position in it (``"trace_index"``). Raises StageUnavailable when the demonstration does not
    place the object."""
    global _TRACE
    base = Episode(task="pick-place", seed=episode.seed, object_kind=episode.object_kind,
                   objects=episode.objects, target=episode.target, arm_start=episode.arm_start,
                   hand_start=episode.hand_start)
    env.apply_episode(base)
    marks: dict = {}
    _TRACE = trace
    try:
        placed = solve(env, base, marks=marks)
    finally:
        _TRACE = None
    missing = [m for m in ("start", "pregrasp", "lifted", "carrying", "lowered") if m not in marks]
    if not placed or missing:
        raise StageUnavailable(f"the scripted demonstration of seed {episode.seed} fails"
                               + (f" (no {', '.join(missing)})" if missing else " (object not placed)"))
    return marks


def set_stage(env, episode: Episode) -> None:
    """Put ``env`` at the start of a paper-protocol stage (called by ``SimEnv.reset``): the
    demonstration's state at the stage's start, with time and success bookkeeping restarted, and
    the stage's end state kept for its goal (``env.stage_goal_state``)."""
    marks = demonstration(env, episode)
    start, end = STAGES[episode.task]
    env.begin_stage(episode, marks[start], marks[end])
    if TASK_KIND[episode.task] == "reach":
        # The reach target: where the palm and fingertips are at the stage's end (the success rule
        # measures the mean distance of the 5 points to it; no marker is shown).
        saved = env.get_state()
        env.set_state(marks[end])
        target = env.palm_and_tips().mean(axis=0)
        env.set_state(saved)
        env.set_episode_target(target)
    ok, _ = evaluate(env, env.episode)
    if ok:
        raise StageUnavailable(f"the {episode.task} stage of seed {episode.seed} succeeds at its start")
    env.set_state(marks[end])
    solved, _ = evaluate(env, env.episode)
    env.set_state(env.initial_state)
    if not solved:
        raise StageUnavailable(f"the {episode.task} stage of seed {episode.seed} does not meet its rule at its end")


def _solve_stage(env, episode: Episode) -> bool:
    """A paper-protocol stage solved: its demonstration's end state, held for the success streak."""
    env.set_state(env.stage_goal_state)    # its commands too: a closed hand keeps squeezing
    env.status = type(env.status)(task=episode.task, seed=episode.seed)
    for _ in range(env.status.required_streak):
        env.step()
    return bool(env.status.success and env.status.success_now)


@dataclass
class Goal:
    """The solved state of an episode as a planner sees it."""

    image: np.ndarray            # (H, W, 3) uint8 at the requested size
    images: dict                 # (width, height) -> image
    joints: np.ndarray           # (23,) robot joints in the solved state
    object_poses: dict
    solved: bool                 # the success rule held for the required streak
    depth: np.ndarray | None = None  # (H, W) [m] at the first size, aligned with ``image`` (asked for)


# Subgoals of a pick-and-place (marks of its scripted solution): hand open above the object, object
# grasped and lifted, object carried above its target, object released on it (hand open, raised).
# The solution also marks "closed" (hand closed on the object, still on the table) between the first
# two; with it every subgoal is a direct motion, but in the evaluation the chain did no better
# (README, "Composite protocol"), so it is not among the defaults.
SUBGOAL_MARKS = ("pregrasp", "lifted", "above", "released")


def make_subgoals(env, episode: Episode, sizes=((224, 224),), marks=SUBGOAL_MARKS, depth: bool = False) -> list[Goal]:
    """The subgoal images of a composite pick-and-place episode: the scripted solution run from the
    episode start, rendered at each of ``marks`` (names of its stage marks, default
    ``SUBGOAL_MARKS``); the start is restored. ValueError for another task, an unknown mark, or when
    the scripted solution fails (its subgoals would show a failure). ``depth``: each goal also carries
    its depth image at the first size."""
    if episode.task != "pick-place":
        raise ValueError(f"subgoals exist for the pick-place task, not {episode.task!r}")
    start = env.get_state()
    try:
        states: dict = {}
        solved = solve(env, episode, marks=states)
        missing = [m for m in marks if m not in states]
        if missing:
            raise ValueError(f"the scripted solution of seed {episode.seed} has no mark {', '.join(missing)} "
                             f"(marks: {', '.join(states)})")
        goals = []
        for name in marks:
            env.set_state(states[name])
            goals.append(_goal_here(env, sizes, solved, depth))
        return goals
    finally:
        env.set_state(start)


def _goal_here(env, sizes, solved: bool, depth: bool) -> Goal:
    """The current state as a Goal, rendered at ``sizes`` (with depth at the first where asked)."""
    images = {tuple(s): env.render(*s) for s in sizes}
    goal_depth = env.render(*sizes[0], depth=True)[1] if depth else None
    return Goal(image=images[tuple(sizes[0])], images=images, joints=env.joint_positions(),
                object_poses=env.object_poses(), solved=solved, depth=goal_depth)


def make_goal(env, episode: Episode, sizes=((224, 224),), depth: bool = False) -> Goal:
    """Run the scripted solver from the episode start, render the solved state (``depth``: also its
    depth image at the first size), restore the start."""
    start = env.get_state()
    try:
        solved = solve(env, episode)
        return _goal_here(env, sizes, solved, depth)
    finally:
        env.set_state(start)


# --- random-action baseline -----------------------------------------------------------------------
def random_policy_success(env, task: str, episodes: int = 20, steps: int = 100, seed: int = 0,
                          arm_step: float = 0.15, hand_step: float = 0.4, progress: bool = False) -> float:
    """Fraction of episodes a random policy solves (success rule held 10 steps within ``steps``).

    The policy is a random walk of joint targets (uniform steps of up to ``arm_step`` / ``hand_step``
    rad per control step, clamped to the joint limits), which explores far more than independent
    random targets, which the controller mostly averages out.
    """
    rng = np.random.default_rng(seed)
    wins = 0
    it = range(episodes)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"random {task}")
    for k in it:
        env.reset(task, 100_000 + k)
        q = env.joint_positions()
        for _ in range(steps):
            q[:7] += rng.uniform(-arm_step, arm_step, 7)
            q[7:] += rng.uniform(-hand_step, hand_step, 16)
            q = np.clip(q, env.lower, env.upper)
            env.step(q[:7], q[7:])
            if env.status.success:
                wins += 1
                break
    return wins / episodes
