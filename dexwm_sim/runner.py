"""Real-time runner of the simulation: one thread owns the SimEnv (physics, rendering, resets).

The ROS ``sim`` node is a thin adapter over this class: it forwards commands (thread-safe methods
here) and publishes what the ``on_*`` callbacks hand it. Everything that touches MuJoCo happens in
the runner's thread, because an OpenGL context belongs to the thread that made it current.

Arm and hand commands are sequences of waypoints. Each waypoint is reached by a synchronised
linear joint motion at ``arm_speed`` / ``hand_speed`` (or over the point's own duration); the next
waypoint starts when the set-points reach the current one. A new command replaces (pre-empts) the
running one; ``stop_*`` holds the current position.

A command may carry a goal: a per-joint ``tolerance`` (REACHED once the set-points are at the last
waypoint and the measured joints are within it) and a ``time_limit`` in simulated seconds
(TIMED_OUT after it; a motion still under way is stopped there). The runner checks both after every
physics chunk, in simulated time, so a move ends at the same simulated instant however loaded the
machine is.

Lock-step mode (``RunnerConfig.lockstep``): simulated time advances only while a command is under
way (moving, or waiting for its goal). Between moves the world stands still, as in an in-process
evaluation where the simulation waits for the planner; in real-time mode (the default) the world
keeps running while a planner thinks, as a real robot does.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from dexwm_robot import joint_group
from dexwm_robot.command_limits import check_joint_command
from dexwm_robot.joints import ARM_DOF, ARM_JOINT_NAMES, DOF, HAND_JOINT_NAMES

log = logging.getLogger("dexwm_sim.runner")

# Command states
MOVING, DONE, PREEMPTED, STOPPED, RESET = "moving", "done", "preempted", "stopped", "reset"
REACHED, TIMED_OUT = "reached", "timed_out"     # end states of a command with a goal
# How a command's end reads as the end of its JointGroup motion (dexwm_sim.joint_groups); DONE ends
# only a command without a goal.
MOTION_ENDS = {DONE: joint_group.REACHED, PREEMPTED: joint_group.PREEMPTED, STOPPED: joint_group.STOPPED,
               RESET: joint_group.FAILED, REACHED: joint_group.REACHED, TIMED_OUT: joint_group.TIMED_OUT}

# Simulated seconds per loop iteration of the physics thread (and the granularity of goal checks).
CHUNK_S = 0.01
# Lock-step: after a pause, the world resumes once both arm and hand have a command under way, or
# this long (wall clock) after the first one arrived: a planner's arm and hand targets come as two
# requests (two drivers), and they must start on the same physics step to move alike every time.
LOCKSTEP_GATHER_S = 0.5


@dataclass
class Command:
    """A waypoint sequence for the arm or the hand; ``status`` is updated by the runner."""

    part: str                       # "arm" | "hand"
    points: np.ndarray              # (N, n) joint targets
    durations: np.ndarray           # (N,) seconds per segment; 0 = at the default speed
    id: int = 0
    status: str = MOVING
    index: int = 0                  # waypoint being approached
    note: str = ""
    tolerance: np.ndarray | None = None   # per joint [rad]: REACHED when DONE and within it
    time_limit: float | None = None       # simulated seconds after the start: TIMED_OUT
    started: float = float("nan")         # simulated time the runner started the command
    final_error: np.ndarray | None = None  # target - joints when the verdict (REACHED/TIMED_OUT) fell
    motion: joint_group.Motion | None = None  # the JointGroup view of this command, ended with it

    def end(self, status: str, note: str | None = None, position: np.ndarray | None = None) -> None:
        """Set the command's status (runner thread, lock held); an end also ends its motion."""
        self.status = status
        if note is not None:
            self.note = note
        if self.motion is None or status not in MOTION_ENDS or (status == DONE and self.has_goal):
            return
        reason = {RESET: f"simulation reset: {self.note}", REACHED: "target reached", DONE: "target reached",
                  PREEMPTED: "pre-empted by a newer command"}.get(status, self.note)
        self.motion.end(MOTION_ENDS[status], reason, position)
        if self.final_error is not None:
            self.motion.final_error = self.final_error

    @property
    def target(self) -> np.ndarray:
        return self.points[-1]

    @property
    def has_goal(self) -> bool:
        return self.tolerance is not None or self.time_limit is not None

    @property
    def under_way(self) -> bool:
        """Moving, or at its set-point and still waiting for its goal's verdict."""
        return self.status == MOVING or (self.status == DONE and self.has_goal)


@dataclass
class Frame:
    stamp: float                    # simulated time [s]
    rgb: np.ndarray
    depth: np.ndarray | None = None


@dataclass
class Snapshot:
    stamp: float
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray
    setpoint: np.ndarray | None = None   # what the actuators are commanded to now


@dataclass
class ResetResult:
    ok: bool
    message: str
    goal_image: np.ndarray | None = None
    episode: object = None


@dataclass
class HoldResult:
    """How a hold (:meth:`SimRunner.hold`) went: whether the episode's success rule held at every
    control step of it (evaluation only: a robot has no such flag)."""

    ok: bool
    message: str
    control_steps: int = 0
    held: bool = False
    distance: float = float("nan")


@dataclass
class _Hold:
    until: float                    # simulated time the hold ends
    start_step: int                 # the episode's control step when it began
    done: queue.Queue


@dataclass
class RunnerConfig:
    task: str = "paper-grasp"
    seed: int = 0
    real_time_factor: float = 1.0
    image_rate_hz: float = 10.0
    image_size: tuple = (640, 480)
    render_depth: bool = False
    state_rate_hz: float = 50.0
    arm_speed: float = 0.8          # default joint speed of arm motions [rad/s]
    hand_speed: float = 3.0
    goal_size: tuple | None = None  # goal image size; None: the camera image size
    lockstep: bool = False          # simulated time stands still while no command is under way
    # Per-command cap on an arm joint's change [rad], enforced as the real franka driver enforces
    # its max_joint_step (same check, dexwm_robot.command_limits); None: no cap.
    arm_max_joint_step: float | None = 0.5
    extra: dict = field(default_factory=dict)


class SimRunner:
    """Runs a SimEnv in (scaled) real time in its own thread."""

    def __init__(self, config: RunnerConfig, on_state=None, on_frame=None, on_episode=None, on_goal=None,
                 env=None):
        if not (config.real_time_factor > 0 and np.isfinite(config.real_time_factor)):
            raise ValueError(f"real_time_factor must be a positive number, got {config.real_time_factor}")
        if config.image_rate_hz <= 0 or config.state_rate_hz <= 0:
            raise ValueError("image_rate_hz and state_rate_hz must be positive")
        from .scene import SimEnv
        from .tasks import make_episode

        make_episode(config.task, config.seed)            # fail early on a bad task/seed
        self.config = config
        self.env = env or SimEnv(render_size=tuple(config.image_size))
        self.on_state, self.on_frame, self.on_episode, self.on_goal = on_state, on_frame, on_episode, on_goal
        self._lock = threading.Lock()
        self._requests: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._commands: dict[str, Command | None] = {"arm": None, "hand": None}
        self._snapshot: Snapshot | None = None
        self._status = None
        self._episode = None
        self._goal_image = None
        self._holding: _Hold | None = None
        self._running = threading.Event()
        self._thread: threading.Thread | None = None
        self.achieved_rtf = float("nan")
        self.faults: list[str] = []

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> ResetResult:
        """Start the thread and reset to the configured episode; returns that reset's result."""
        self._running.set()
        self._thread = threading.Thread(target=self._loop, name="sim_physics", daemon=True)
        self._thread.start()
        return self.reset(self.config.task, self.config.seed, timeout=timeout)

    def close(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- thread-safe API --------------------------------------------------------------------------
    def snapshot(self) -> Snapshot | None:
        with self._lock:
            return self._snapshot

    def episode_status(self):
        with self._lock:
            return self._status, self._episode

    def goal_image(self):
        with self._lock:
            return self._goal_image

    def command(self, part: str, points, durations=None, tolerance=None, time_limit: float | None = None,
                motion: joint_group.Motion | None = None) -> Command:
        """Validate and queue a waypoint command (pre-empts the part's running command).

        ``tolerance`` (one value or one per joint, rad; inf: not judged) and ``time_limit``
        (simulated s) give the command a goal; the runner then ends it as REACHED or TIMED_OUT, and
        ``motion`` (its JointGroup view) with it. Raises ValueError (nothing
        changes) for wrong sizes, non-finite values, points outside the joint limits, and arm steps
        over ``arm_max_joint_step`` (from the measured joints to point 0 and between points): the
        real drivers refuse the same commands.
        """
        n = ARM_DOF if part == "arm" else DOF - ARM_DOF
        if part not in ("arm", "hand"):
            raise ValueError(f"unknown part {part!r}")
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim == 1:
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != n or len(pts) == 0:
            raise ValueError(f"{part} command needs N x {n} positions, got shape {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise ValueError(f"{part} command has non-finite positions")
        dur = np.zeros(len(pts)) if durations is None else np.asarray(durations, dtype=np.float64)
        if dur.shape != (len(pts),) or not np.all(np.isfinite(dur)) or np.any(dur < 0):
            raise ValueError("durations must be finite, non-negative, one per point")
        tol = None
        if tolerance is not None:
            tol = np.asarray(tolerance, dtype=np.float64).ravel()
            tol = np.full(n, tol[0]) if tol.size == 1 else tol
            if tol.shape != (n,) or np.any(np.isnan(tol)) or np.any(tol <= 0):
                raise ValueError(f"tolerance needs 1 or {n} positive values")
        if time_limit is not None and not (np.isfinite(time_limit) and time_limit > 0):
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")
        sl = self.part_slice(part)
        lo, hi = self.env.lower[sl], self.env.upper[sl]
        note = ""
        names = self.joint_names(part)
        if part == "arm":
            pts = check_joint_command(pts, lo, hi, names, self.config.arm_max_joint_step,
                                      current=self._measured()[sl])
        else:
            pts = check_joint_command(pts, lo, hi, names)
        cmd = Command(part=part, points=pts, durations=dur, id=next(self._ids), note=note, tolerance=tol,
                      time_limit=None if time_limit is None else float(time_limit), motion=motion)
        self._requests.put(("command", cmd))
        return cmd

    def stop(self, part: str, reason: str = "stopped by the stop service") -> None:
        self._requests.put(("stop", (part, reason)))

    @staticmethod
    def joint_names(part: str) -> tuple[str, ...]:
        """Joint names of a part, in the drivers' order (for messages that name a joint)."""
        return ARM_JOINT_NAMES if part == "arm" else HAND_JOINT_NAMES

    def _measured(self) -> np.ndarray:
        """The joints as last measured: the published snapshot while the physics thread runs (the env
        belongs to that thread), the env itself when it does not (move_now)."""
        snap = self.snapshot() if self.alive else None
        return snap.position if snap is not None else self.env.joint_positions()

    def reset(self, task: str, seed: int, timeout: float = 120.0) -> ResetResult:
        """Reset to a seeded episode and render its goal image (blocks until done)."""
        try:
            from .tasks import make_episode
            make_episode(task, seed)
        except ValueError as exc:
            return ResetResult(ok=False, message=str(exc))
        if not self.alive:
            return ResetResult(ok=False, message="the simulation thread is not running")
        done = queue.Queue()
        self._requests.put(("reset", (task, int(seed), done)))
        try:
            return done.get(timeout=timeout)
        except queue.Empty:
            return ResetResult(ok=False, message=f"reset did not finish within {timeout:.0f} s")

    def hold(self, seconds: float, timeout: float | None = None) -> HoldResult:
        """Let ``seconds`` of simulated time pass with no new command (the robot keeps its last
        targets; in lock-step mode time advances for it), then report whether the episode's success
        rule held at every control step of that time: how an evaluation judges the state a
        policy stopped in. Blocks until done."""
        if not (np.isfinite(seconds) and 0 < seconds <= 60):
            return HoldResult(ok=False, message=f"hold time must be in (0, 60] s, got {seconds}")
        if not self.alive:
            return HoldResult(ok=False, message="the simulation thread is not running")
        done = queue.Queue()
        self._requests.put(("hold", (float(seconds), done)))
        timeout = timeout if timeout is not None else 60.0 + 10.0 * seconds / self.config.real_time_factor
        try:
            return done.get(timeout=timeout)
        except queue.Empty:
            return HoldResult(ok=False, message=f"hold did not finish within {timeout:.0f} s")

    def _end_hold(self, result: HoldResult) -> None:
        if self._holding is not None:
            self._holding.done.put(result)
            self._holding = None

    def _check_hold(self) -> None:
        hold, status = self._holding, self.env.status
        if hold is None or self.env.time < hold.until - 1e-9:
            return
        steps = status.step - hold.start_step
        # The streak counts the consecutive control steps the rule has held up to now.
        held = steps > 0 and status.streak >= steps
        self._end_hold(HoldResult(ok=True, message=f"held {steps} control steps; the rule held "
                                  f"{'throughout' if held else 'not throughout'}",
                                  control_steps=steps, held=held, distance=float(status.distance)))

    # --- the physics thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        env = self.env
        rtf = self.config.real_time_factor
        frame_period = 1.0 / self.config.image_rate_hz
        state_period = 1.0 / self.config.state_rate_hz
        wall0, sim0 = time.monotonic(), env.time
        next_frame = next_state = 0.0
        paused = False
        while self._running.is_set():
            try:
                restarted = self._serve_requests()
                if restarted:
                    wall0, sim0 = time.monotonic(), env.time
                    next_frame = next_state = 0.0
                if self.config.lockstep:
                    with self._lock:
                        idle = not any(c is not None and c.under_way for c in self._commands.values())
                    if idle and self._holding is None:
                        if not paused:
                            # The world stops here: show it at once, so that no frame of the
                            # move's end is missed by whoever waits for the first still frame.
                            paused = True
                            self._publish_state(env, 0)
                            self._render_frame()
                            next_frame = time.monotonic() + frame_period
                        next_state, next_frame = self._publish_periodic(next_state, next_frame, state_period,
                                                                        frame_period)
                        time.sleep(0.002)
                        continue
                    if paused:
                        paused = False
                        if self._holding is None:
                            self._gather_move()
                        wall0, sim0 = time.monotonic(), env.time
                ticks = self._physics_chunk()
                self._publish_state(env, ticks)
                self._check_hold()
                next_state, next_frame = self._publish_periodic(next_state, next_frame, state_period, frame_period)
                # Keep simulated time = real_time_factor x wall time; never burst to catch up.
                wall_target = wall0 + (env.time - sim0) / rtf
                delay = wall_target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -0.5:
                    wall0, sim0 = time.monotonic(), env.time
                elapsed = time.monotonic() - wall0
                if elapsed > 1.0:
                    self.achieved_rtf = (env.time - sim0) / elapsed
            except Exception as exc:  # keep the simulation alive; report the surprise
                log.exception("simulation loop error")
                self.faults.append(f"simulation loop error: {exc!r}")
                time.sleep(0.1)
        # GL contexts belong to this thread: release them here, not in a finaliser elsewhere.
        self.env.close()

    def _gather_move(self) -> None:
        """Lock-step resume: wait (bounded) until both parts have a command under way."""
        deadline = time.monotonic() + LOCKSTEP_GATHER_S
        while time.monotonic() < deadline and self._running.is_set():
            with self._lock:
                if all(c is not None and c.under_way for c in self._commands.values()):
                    return
            time.sleep(0.001)
            self._serve_requests()

    def _physics_chunk(self) -> int:
        """One chunk of physics with command bookkeeping; returns the control ticks it ran."""
        env = self.env
        with self._lock:
            self._drive_commands()
        faults_before = len(env.faults)
        ticks = env.advance(CHUNK_S)
        if len(env.faults) > faults_before:
            self.faults.append(env.faults[-1].message)
            with self._lock:
                for cmd in self._commands.values():
                    if cmd is not None and cmd.under_way:
                        cmd.end(RESET, env.faults[-1].message)
                self._commands = {"arm": None, "hand": None}
        with self._lock:
            # Set-points that arrived, then goal verdicts, on this chunk's end state.
            self._drive_commands()
            self._check_goals()
        return ticks

    def move_now(self, arm, hand, duration: float, time_limit: float, tolerance: float) -> dict[str, Command]:
        """One arm + hand move to its goals, run in the calling thread: the lock-step node's
        semantics without the node (the in-process evaluation uses it, so both modes move alike).
        ``arm`` and ``hand`` are one target each, or N waypoints each (N x joints), ``duration``
        seconds apart; ``time_limit`` covers the whole move.

        Needs a runner whose thread is not running (construct it with ``env=``, do not start it).
        Returns the two finished commands (REACHED, TIMED_OUT, or RESET on a physics fault).
        """
        if self.alive:
            raise RuntimeError("move_now needs a runner whose thread is not running")
        points = 1 if np.ndim(arm) == 1 else len(arm)
        commands = {part: self.command(part, target, [duration] * points, tolerance=tolerance, time_limit=time_limit)
                    for part, target in (("arm", arm), ("hand", hand))}
        self._serve_requests()
        while any(cmd.under_way for cmd in commands.values()):
            self._physics_chunk()
        return commands

    def stop_now(self) -> None:
        """Both parts hold where they are, in the calling thread: ``stop`` for a runner whose thread
        is not running (the counterpart of ``move_now``)."""
        if self.alive:
            raise RuntimeError("stop_now needs a runner whose thread is not running")
        with self._lock:
            for part in ("arm", "hand"):
                self._hold(part, STOPPED, "stopped")

    def _publish_periodic(self, next_state: float, next_frame: float, state_period: float,
                          frame_period: float) -> tuple[float, float]:
        """Joint states and camera frames at their wall-clock rates; returns the next due times."""
        now = time.monotonic()
        if now >= next_state:
            next_state = now + state_period
            if self.on_state is not None:
                self.on_state(self.snapshot())
        if now >= next_frame:
            next_frame = now + frame_period
            self._render_frame()
        return next_state, next_frame

    def _serve_requests(self) -> bool:
        restarted = False
        while True:
            try:
                kind, payload = self._requests.get_nowait()
            except queue.Empty:
                return restarted
            if kind == "command":
                with self._lock:
                    old = self._commands[payload.part]
                    # DONE too: a command can reach its set-point just before its server reports
                    # success; superseded then, it must end as pre-empted rather than wait forever.
                    if old is not None and old.status in (MOVING, DONE):
                        old.end(PREEMPTED, position=self.env.joint_positions()[self.part_slice(old.part)])
                    payload.started = self.env.time
                    self._commands[payload.part] = payload
                    self._start_segment(payload)
            elif kind == "stop":
                part, reason = payload
                with self._lock:
                    self._hold(part, STOPPED, reason)
            elif kind == "hold":
                seconds, done = payload
                self._end_hold(HoldResult(ok=False, message="superseded by a newer hold"))
                self._holding = _Hold(until=self.env.time + seconds, start_step=self.env.status.step, done=done)
            elif kind == "reset":
                self._end_hold(HoldResult(ok=False, message="the simulation was reset during the hold"))
                task, seed, done = payload
                done.put(self._do_reset(task, seed))
                restarted = True

    def _do_reset(self, task: str, seed: int) -> ResetResult:
        from .tasks import make_goal

        env = self.env
        with self._lock:
            for cmd in self._commands.values():
                if cmd is not None and cmd.under_way:
                    cmd.end(RESET, "episode reset")
            self._commands = {"arm": None, "hand": None}
        try:
            episode = env.reset(task, seed)
            goal = make_goal(env, episode, sizes=(tuple(self.config.goal_size or self.config.image_size),))
        except Exception as exc:
            log.exception("reset failed")
            return ResetResult(ok=False, message=f"reset failed: {exc}")
        with self._lock:
            self._goal_image = goal.image
            self._episode = episode
            self._status = replace(env.status)
        msg = f"{task} episode {seed} ready" + ("" if goal.solved else
                                                 " (the scripted solution did not meet the success rule)")
        result = ResetResult(ok=True, message=msg, goal_image=goal.image, episode=episode)
        if self.on_goal is not None:
            self.on_goal(result)
        self._publish_state(env, 1)
        self._render_frame()
        return result

    def _start_segment(self, cmd: Command) -> None:
        env = self.env
        sl = self.part_slice(cmd.part)
        point = cmd.points[cmd.index]
        current = env.data.ctrl[env.scene.actuator_ids][sl]
        duration = cmd.durations[cmd.index]
        if duration <= 0:
            speed = self.config.arm_speed if cmd.part == "arm" else self.config.hand_speed
            duration = float(np.max(np.abs(point - current))) / speed
        kwargs = {"arm": point} if cmd.part == "arm" else {"hand": point}
        env.command(duration=max(duration, env.physics_dt), **kwargs)

    def _drive_commands(self) -> None:
        """Advance waypoint sequences whose set-points reached the current waypoint."""
        env = self.env
        ctrl = env.data.ctrl[env.scene.actuator_ids]
        for part, cmd in self._commands.items():
            if cmd is None or cmd.status != MOVING:
                continue
            sl = self.part_slice(part)
            if np.max(np.abs(ctrl[sl] - cmd.points[cmd.index])) > 1e-9:
                continue
            if cmd.index + 1 < len(cmd.points):
                cmd.index += 1
                self._start_segment(cmd)
            else:
                cmd.end(DONE, position=env.joint_positions()[sl])

    def _check_goals(self) -> None:
        """End commands with a goal: REACHED (set-points done, joints within tolerance) or TIMED_OUT."""
        env = self.env
        q = env.joint_positions()
        for part, cmd in self._commands.items():
            if cmd is None or not cmd.has_goal or cmd.status not in (MOVING, DONE):
                continue
            sl = self.part_slice(part)
            error = cmd.target - q[sl]
            if cmd.status == DONE and (cmd.tolerance is None or np.all(np.abs(error) <= cmd.tolerance)):
                cmd.final_error = error
                cmd.end(REACHED)
            elif cmd.time_limit is not None and env.time - cmd.started >= cmd.time_limit - 1e-9:
                cmd.final_error = error
                limit = (f"target not reached within {cmd.time_limit:.2f} s (max error "
                         f"{np.max(np.abs(error)):.4f} rad)")
                if cmd.status == MOVING:
                    self._hold(part, TIMED_OUT, limit + "; holding")   # still under way: stops where it is
                # At its set-point but not within tolerance (a finger on an object): the target
                # stays commanded, the hand keeps squeezing.
                cmd.end(TIMED_OUT, limit + "; keeping the target" if cmd.motion and not cmd.motion.done else None)

    @staticmethod
    def part_slice(part: str) -> slice:
        return slice(0, ARM_DOF) if part == "arm" else slice(ARM_DOF, DOF)

    def _hold(self, part: str, status: str, note: str) -> None:
        env = self.env
        cmd = self._commands[part]
        if cmd is not None and cmd.under_way:
            cmd.end(status, note, env.joint_positions()[self.part_slice(part)])
        q = env.joint_positions()
        if part == "arm":
            env.command(arm=np.clip(q[:ARM_DOF], env.lower[:ARM_DOF], env.upper[:ARM_DOF]), duration=env.physics_dt)
        else:
            env.command(hand=np.clip(q[ARM_DOF:], env.lower[ARM_DOF:], env.upper[ARM_DOF:]), duration=env.physics_dt)

    def _publish_state(self, env, ticks: int) -> None:
        snap = Snapshot(stamp=env.time, position=env.joint_positions(), velocity=env.joint_velocities(),
                        effort=env.joint_efforts(), setpoint=env.data.ctrl[env.scene.actuator_ids].copy())
        status = replace(env.status)
        with self._lock:
            self._snapshot = snap
            self._status = status
        if ticks and self.on_episode is not None:
            self.on_episode(status, self._episode)

    def _render_frame(self) -> None:
        if self.on_frame is None:
            return
        w, h = self.config.image_size
        if self.config.render_depth:
            rgb, depth = self.env.render(w, h, depth=True)
        else:
            rgb, depth = self.env.render(w, h), None
        self.on_frame(Frame(stamp=self.env.time, rgb=rgb, depth=depth))
