"""The simulated Franka FR3 + Allegro hand workspace as a plain Python object (no ROS).

``SimEnv`` owns one MuJoCo model/data pair. Control: the caller gives joint targets for the arm (7)
and the hand (16) at about 10 Hz (``step``) or at any time (``command`` + ``advance``, used by the
real-time ROS node); the actuator set-points move towards the latest targets linearly over one
control period (capped at a maximum joint speed) at the physics rate, and MuJoCo's position
actuators close a joint-space PD loop with per-joint torque limits (see model.py).

Bad input never reaches the physics: a target with the wrong size or a non-finite entry is rejected
(``ValueError``, nothing changes); entries outside the joint limits are clamped and the reason is
logged. A non-finite physics state (a blow-up) resets the episode and is reported in ``faults``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import select_gl_backend

select_gl_backend()
import mujoco  # noqa: E402

from dexwm_robot import allegro as hand_joints, ik  # noqa: E402
from dexwm_robot.camera import HeadCamera  # noqa: E402
from dexwm_robot.franka import HOME as ARM_HOME  # noqa: E402
from dexwm_robot.joints import ARM_DOF, DOF  # noqa: E402
from dexwm_robot.kinematics import RobotKinematics  # noqa: E402

from .model import OBJECT_KINDS, SceneModel, build_model  # noqa: E402

log = logging.getLogger("dexwm_sim")

WORLD_MODEL_SIZE = (224, 224)   # (width, height) of the frames the world model sees
CAMERA_TOPIC_SIZE = (640, 480)
CONTROL_HZ = 10.0
REQUIRED_STREAK = 10            # success must hold for 10 consecutive control steps (the paper's rule)


@dataclass
class TaskStatus:
    """Success bookkeeping of the current episode (updated once per control step)."""

    task: str = ""
    seed: int = 0
    step: int = 0
    success_now: bool = False
    streak: int = 0
    required_streak: int = REQUIRED_STREAK
    success: bool = False
    distance: float = float("nan")


@dataclass
class Keypoints:
    """Right-hand keypoints of the current state (MANO layout, 21 points)."""

    world: np.ndarray     # (21, 3)
    camera: np.ndarray    # (21, 3) OpenCV camera frame
    uv: np.ndarray        # (21, 2) pixels at (width, height)
    visible: np.ndarray   # (21,) bool
    width: int
    height: int


@dataclass
class Fault:
    time: float
    message: str


class SimEnv:
    """Franka FR3 + Allegro scene with joint-target control, tasks, rendering and keypoints."""

    def __init__(self, render_size: tuple[int, int] = WORLD_MODEL_SIZE, control_hz: float = CONTROL_HZ,
                 max_arm_speed: float = 1.5, max_hand_speed: float = 6.0, camera: HeadCamera | None = None,
                 scene: SceneModel | None = None):
        if control_hz <= 0:
            raise ValueError("control_hz must be positive")
        self.scene = scene or build_model(camera)
        self.model = self.scene.model
        self.data = mujoco.MjData(self.model)
        self.camera = self.scene.camera
        self.kinematics = RobotKinematics.from_description()
        self.render_size = tuple(int(v) for v in render_size)
        self.control_dt = 1.0 / control_hz
        self.physics_dt = float(self.model.opt.timestep)
        self.max_speed = np.r_[np.full(ARM_DOF, max_arm_speed), np.full(DOF - ARM_DOF, max_hand_speed)]
        self.lower, self.upper = self.scene.lower, self.scene.upper
        self.faults: list[Fault] = []
        self.status = TaskStatus()
        self.episode = None           # tasks.Episode of the current reset
        self.stage_goal_state = None  # paper-protocol stage: the demonstration's state at its end
        self._renderers: dict = {}
        self._goal = np.zeros(DOF)    # latest accepted targets
        self._rate = np.zeros(DOF)    # set-point speed towards the goal [rad/s]
        self._since_tick = 0.0
        self._initial_state = None
        self._warnings_seen = 0
        self._hand_geoms = self._subtree_geoms("allegro_mount")
        self._robot_geoms = self._subtree_geoms("base")
        self._object_geoms = {k: self.model.body_geomadr[b] for k, b in self.scene.object_bodies.items()}
        self.reset_robot(ARM_HOME, hand_joints.OPEN_POSE)

    # --- state ------------------------------------------------------------------------------------
    @property
    def time(self) -> float:
        return float(self.data.time)

    def joint_positions(self) -> np.ndarray:
        """(23,) arm (fr3_joint1..7) then hand (dexwm_robot.allegro order) joint positions [rad]."""
        return self.data.qpos[self.scene.qpos_adr].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self.scene.dof_adr].copy()

    def joint_efforts(self) -> np.ndarray:
        return self.data.actuator_force[self.scene.actuator_ids].copy()

    def targets(self) -> np.ndarray:
        """(23,) latest accepted joint targets."""
        return self._goal.copy()

    def object_poses(self) -> dict[str, np.ndarray]:
        """kind -> (7,) position + quaternion (w, x, y, z) in the world frame."""
        out = {}
        for kind, adr in self.scene.object_qpos_adr.items():
            out[kind] = self.data.qpos[adr:adr + 7].copy()
        return out

    def object_position(self, kind: str) -> np.ndarray:
        adr = self.scene.object_qpos_adr[kind]
        return self.data.qpos[adr:adr + 3].copy()

    def hide_target(self) -> None:
        """Move the target marker under the table (exploration data has no target)."""
        self.data.mocap_pos[self.scene.target_mocap] = (0.0, 0.0, -0.5)
        mujoco.mj_forward(self.model, self.data)

    def target_position(self) -> np.ndarray:
        return self.data.mocap_pos[self.scene.target_mocap].copy()

    def hand_touches(self, kind: str) -> bool:
        """True when any Allegro geom is in contact with the object ``kind``."""
        obj = self._object_geoms[kind]
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            g1, g2 = int(c.geom1), int(c.geom2)
            if (g1 == obj and g2 in self._hand_geoms) or (g2 == obj and g1 in self._hand_geoms):
                return True
        return False

    def palm_and_tips(self) -> np.ndarray:
        return self.kinematics.palm_and_tips_world(self.joint_positions())

    def keypoints(self, width: int | None = None, height: int | None = None) -> Keypoints:
        """21 right-hand keypoints in world and camera frames, their pixels and visibility."""
        width, height = width or self.render_size[0], height or self.render_size[1]
        world = self.kinematics.keypoints_world(self.joint_positions())
        cam = self.camera.to_camera(world)
        uv, _, visible = self.camera.project(world, width, height)
        return Keypoints(world=world, camera=cam, uv=uv, visible=visible, width=width, height=height)

    # --- control ----------------------------------------------------------------------------------
    def validate_targets(self, arm=None, hand=None) -> tuple[np.ndarray, list[str]]:
        """Full (23,) target vector from optional arm/hand parts, clamped; raises on bad input."""
        goal = self._goal.copy()
        notes = []
        for name, value, sl, size in (("arm", arm, slice(0, ARM_DOF), ARM_DOF),
                                      ("hand", hand, slice(ARM_DOF, DOF), DOF - ARM_DOF)):
            if value is None:
                continue
            v = np.asarray(value, dtype=np.float64).reshape(-1)
            if v.shape != (size,):
                raise ValueError(f"{name} target needs {size} values, got {v.size}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{name} target has non-finite values: {v.tolist()}")
            lo, hi = self.lower[sl], self.upper[sl]
            clipped = np.clip(v, lo, hi)
            if np.any(clipped != v):
                idx = np.nonzero(clipped != v)[0].tolist()
                notes.append(f"{name} target clamped to joint limits at joints {idx}")
            goal[sl] = clipped
        return goal, notes

    def command(self, arm=None, hand=None, duration: float | None = None) -> list[str]:
        """Accept new joint targets; the set-points reach them after ``duration`` (one control step).

        Returns notes about clamping (also logged); raises ValueError (changing nothing) on bad input.
        """
        try:
            goal, notes = self.validate_targets(arm, hand)
        except ValueError as exc:
            log.warning("rejected target: %s", exc)
            raise
        for note in notes:
            log.warning(note)
        duration = self.control_dt if duration is None else max(float(duration), self.physics_dt)
        ctrl = self.data.ctrl[self.scene.actuator_ids]
        self._rate = np.minimum(np.abs(goal - ctrl) / duration, self.max_speed)
        self._goal = goal
        return notes

    def hold(self) -> None:
        """Stop: targets become the current joint positions."""
        q = np.clip(self.joint_positions(), self.lower, self.upper)
        self._goal = q
        self.data.ctrl[self.scene.actuator_ids] = q
        self._rate = np.zeros(DOF)

    def advance(self, seconds: float) -> int:
        """Run physics for ``seconds`` (whole physics steps); returns the number of control ticks."""
        steps = max(int(round(seconds / self.physics_dt)), 0)
        ticks = 0
        ids = self.scene.actuator_ids
        for _ in range(steps):
            ctrl = self.data.ctrl[ids]
            delta = np.clip(self._goal - ctrl, -self._rate * self.physics_dt, self._rate * self.physics_dt)
            self.data.ctrl[ids] = ctrl + delta
            mujoco.mj_step(self.model, self.data)
            if self._unstable_count() != self._warnings_seen and not self._check_finite(force=True):
                return ticks
            self._since_tick += self.physics_dt
            if self._since_tick >= self.control_dt - 1e-9:
                self._since_tick -= self.control_dt
                ticks += 1
                if not self._check_finite():
                    return ticks
                self._tick()
        return ticks

    def step(self, arm=None, hand=None) -> TaskStatus:
        """One control step: new targets (optional), then ``control_dt`` of physics."""
        if arm is not None or hand is not None:
            self.command(arm, hand)
        self.advance(self.control_dt)
        return self.status

    _UNSTABLE = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
                 mujoco.mjtWarning.mjWARN_BADQACC)

    def _unstable_count(self) -> int:
        """MuJoCo's own blow-up counters (it resets mjData silently when they fire)."""
        return sum(int(self.data.warning[w].number) for w in self._UNSTABLE)

    def _check_finite(self, force: bool = False) -> bool:
        d = self.data
        if not force and np.all(np.isfinite(d.qpos)) and np.all(np.isfinite(d.qvel)) and np.all(np.isfinite(d.qacc)):
            return True
        msg = f"non-finite physics state at t={d.time:.3f}s: episode reset"
        log.error(msg)
        self.faults.append(Fault(time=float(d.time), message=msg))
        self._restore_initial()
        self._warnings_seen = self._unstable_count()
        return False

    def _tick(self) -> None:
        from .tasks import evaluate

        st = self.status
        st.step += 1
        if self.episode is None:
            return
        ok, dist = evaluate(self, self.episode)
        st.success_now, st.distance = bool(ok), float(dist)
        st.streak = st.streak + 1 if ok else 0
        st.success = st.success or st.streak >= st.required_streak

    # --- resets -----------------------------------------------------------------------------------
    def reset_robot(self, arm=None, hand=None) -> None:
        """Place the robot at the given joints (at rest, targets = positions), objects unchanged."""
        q = self.joint_positions()
        if arm is not None:
            q[:ARM_DOF] = arm
        if hand is not None:
            q[ARM_DOF:] = hand
        q = np.clip(q, self.lower, self.upper)
        self.data.qpos[self.scene.qpos_adr] = q
        self.data.qvel[self.scene.dof_adr] = 0.0
        self.data.ctrl[self.scene.actuator_ids] = q
        self._goal = q.copy()
        self._rate = np.zeros(DOF)
        mujoco.mj_forward(self.model, self.data)

    def reset(self, task: str = "reach", seed: int = 0):
        """Reset to the seeded episode of a task; returns the tasks.Episode."""
        from .tasks import make_episode

        from .tasks import PAPER_TASKS, set_stage

        episode = make_episode(task, seed, self.kinematics)   # raises ValueError for unknown tasks / bad seeds
        self.stage_goal_state = None
        if task in PAPER_TASKS:
            set_stage(self, episode)    # raises tasks.StageUnavailable when the demonstration fails
        else:
            self.apply_episode(episode)
        return self.episode

    def begin_stage(self, episode, start_state: dict, end_state: dict) -> None:
        """Start a paper-protocol stage episode at a demonstration's state (time 0, no success
        yet, no target marker shown); ``end_state`` is kept as the stage's goal state."""
        self.set_state(start_state)
        self.data.time = 0.0
        self.data.mocap_pos[self.scene.target_mocap] = (0.0, 0.0, -0.5)
        mujoco.mj_forward(self.model, self.data)
        self.episode = episode
        self.status = TaskStatus(task=episode.task, seed=episode.seed)
        self._since_tick = 0.0
        self.stage_goal_state = dict(end_state, time=0.0, mocap_pos=self.data.mocap_pos.copy())
        self._initial_state = self.get_state()

    def restore_episode(self, episode, state: dict) -> None:
        """Back to a state of an earlier episode: its objects (shape, colour and mass are model
        parameters, which a later reset changed), its success rule and target, then its state."""
        for spec in episode.objects:
            self._place_object(spec)
        self.episode = episode
        self.set_state(state)

    def set_episode_target(self, target) -> None:
        """Replace the current episode's target (the stage's reach target), keeping the rest."""
        from dataclasses import replace

        self.episode = replace(self.episode, target=tuple(float(v) for v in target))

    @property
    def initial_state(self) -> dict:
        """The state the current episode started from."""
        return self._initial_state

    def apply_episode(self, episode) -> None:
        mujoco.mj_resetData(self.model, self.data)
        self._warnings_seen = 0
        for spec in episode.objects:
            self._place_object(spec)
        self.data.mocap_pos[self.scene.target_mocap] = episode.target
        self.reset_robot(episode.arm_start, episode.hand_start)
        self.episode = episode
        self.status = TaskStatus(task=episode.task, seed=episode.seed)
        self._since_tick = 0.0
        # Let objects settle on the table before the episode starts (robot held still).
        self.advance(0.3)
        self.data.time = 0.0
        mujoco.mj_forward(self.model, self.data)   # derived state (poses, contacts) of this exact qpos
        self.status = TaskStatus(task=episode.task, seed=episode.seed)
        self._since_tick = 0.0
        self._initial_state = self.get_state()

    def _place_object(self, spec) -> None:
        m = self.model
        body = self.scene.object_bodies[spec.kind]
        geom = self._object_geoms[spec.kind]
        size = np.zeros(3)
        size[:len(spec.size)] = spec.size
        m.geom_size[geom] = size
        m.geom_rgba[geom] = spec.rgba
        if spec.kind == "box":
            half = size.copy()
            inertia = spec.mass / 3.0 * np.array([half[1] ** 2 + half[2] ** 2, half[0] ** 2 + half[2] ** 2,
                                                  half[0] ** 2 + half[1] ** 2])
        elif spec.kind == "cylinder":
            r, h = size[0], size[1]
            half = np.array([r, r, h])
            ixx = spec.mass * (3 * r * r + 4 * h * h) / 12.0
            inertia = np.array([ixx, ixx, spec.mass * r * r / 2.0])
        else:
            r = size[0]
            half = np.array([r, r, r])
            inertia = np.full(3, 0.4 * spec.mass * r * r)
        m.geom_aabb[geom] = np.r_[np.zeros(3), half]
        m.geom_rbound[geom] = float(np.linalg.norm(half)) if spec.kind != "sphere" else float(size[0])
        m.body_mass[body] = spec.mass
        m.body_inertia[body] = inertia
        adr = self.scene.object_qpos_adr[spec.kind]
        self.data.qpos[adr:adr + 3] = spec.position
        self.data.qpos[adr + 3:adr + 7] = [np.cos(spec.yaw / 2), 0.0, 0.0, np.sin(spec.yaw / 2)]
        dadr = m.jnt_dofadr[m.body_jntadr[body]]
        self.data.qvel[dadr:dadr + 6] = 0.0

    def get_state(self) -> dict:
        d = self.data
        return {"qpos": d.qpos.copy(), "qvel": d.qvel.copy(), "ctrl": d.ctrl.copy(), "time": float(d.time),
                "mocap_pos": d.mocap_pos.copy(), "act": d.act.copy(), "goal": self._goal.copy(),
                "status": TaskStatus(**vars(self.status)), "since_tick": self._since_tick}

    def set_state(self, state: dict) -> None:
        d = self.data
        d.qpos[:] = state["qpos"]
        d.qvel[:] = state["qvel"]
        d.ctrl[:] = state["ctrl"]
        d.act[:] = state["act"]
        d.mocap_pos[:] = state["mocap_pos"]
        d.time = state["time"]
        d.qacc_warmstart[:] = 0.0
        self._goal = state["goal"].copy()
        self._rate = np.zeros(DOF)
        self.status = TaskStatus(**vars(state["status"]))
        self._since_tick = state["since_tick"]
        mujoco.mj_forward(self.model, d)

    def _restore_initial(self) -> None:
        if self._initial_state is not None:
            self.set_state(self._initial_state)
        else:
            mujoco.mj_resetData(self.model, self.data)
            self.reset_robot(ARM_HOME, hand_joints.OPEN_POSE)

    # --- inverse kinematics (scripted solutions; the solver is dexwm_robot.ik) ------------------------
    def _ik_start(self, q_init, hand) -> np.ndarray:
        """The 23-vector an IK solve starts from: q_init (7 or 23, default: now), hand overridden."""
        q = self.joint_positions() if q_init is None else np.array(q_init, dtype=float)
        if q.shape == (ARM_DOF,):
            q = np.r_[q, self.joint_positions()[ARM_DOF:]]
        if hand is not None:
            q[ARM_DOF:] = hand
        return q

    def solve_arm_ik_global(self, target: np.ndarray, rotation: np.ndarray | None = None, q_init=None,
                            hand=None, points: str = "palm") -> tuple[np.ndarray, float]:
        """``ik.solve_arm_ik_global`` from ``q_init`` (default: the current joints)."""
        return ik.solve_arm_ik_global(self.kinematics, self._ik_start(q_init, hand), target, rotation, point=points)

    def solve_arm_ik(self, target: np.ndarray, rotation: np.ndarray | None = None, q_init=None,
                     hand=None, points: str = "palm", iterations: int = 200, tol: float = 1e-3) -> np.ndarray:
        """``ik.solve_arm_ik`` from ``q_init`` (default: the current joints): arm joints (7,) that
        bring the palm centre ("palm") or the mean of palm and fingertips ("palm_tips") to ``target``."""
        return ik.solve_arm_ik(self.kinematics, self._ik_start(q_init, hand), target, rotation, point=points,
                               iterations=iterations, tol=tol)

    # --- rendering --------------------------------------------------------------------------------
    def _renderer(self, width: int, height: int) -> mujoco.Renderer:
        key = (width, height)
        if key not in self._renderers:
            mw, mh = self.model.vis.global_.offwidth, self.model.vis.global_.offheight
            if width > mw or height > mh:
                raise ValueError(f"render size {width}x{height} exceeds the offscreen buffer {mw}x{mh}")
            self._renderers[key] = mujoco.Renderer(self.model, height=height, width=width)
        return self._renderers[key]

    def render(self, width: int | None = None, height: int | None = None, depth: bool = False):
        """RGB (H, W, 3) uint8 from the head camera; with ``depth`` also (H, W) float32 metres."""
        width, height = width or self.render_size[0], height or self.render_size[1]
        r = self._renderer(int(width), int(height))
        r.update_scene(self.data, camera="head")
        rgb = r.render().copy()
        if not depth:
            return rgb
        r.enable_depth_rendering()
        try:
            r.update_scene(self.data, camera="head")
            dep = r.render().astype(np.float32)
        finally:
            r.disable_depth_rendering()
        return rgb, dep

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    # --- helpers ----------------------------------------------------------------------------------
    def _subtree_geoms(self, body_name: str) -> set[int]:
        m = self.model
        root = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, body_name)
        out = set()
        for g in range(m.ngeom):
            b = m.geom_bodyid[g]
            while b > root:
                b = m.body_parentid[b]
            if b == root:
                out.add(g)
        return out


__all__ = ["SimEnv", "TaskStatus", "Keypoints", "WORLD_MODEL_SIZE", "CAMERA_TOPIC_SIZE", "OBJECT_KINDS",
           "REQUIRED_STREAK"]
