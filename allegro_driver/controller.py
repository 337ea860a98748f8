"""Host-side joint PD control of the Allegro Hand V4 over CAN (python-can; no ROS).

The V4 firmware takes only PWM duties (SET_TORQUE) and streams encoder counts (FINGER_POSE), so
position control runs on the host, as in Wonik's own driver: every 3 ms (333 Hz) read the four
finger blocks, compute ``tau = kp * (setpoint - q) - kd * dq``, clamp it per joint, convert with
``pwm = tau * 1200`` and clamp the PWM per joint, then send one SET_TORQUE frame per finger block.

Joint order: the one of ``dexwm_robot.allegro`` (index-first). CAN finger block k carries joints
4k..4k+3 of that order (0 index, 1 middle, 2 ring, 3 thumb), so the mapping between bus and
published order is the identity per block; ``BLOCK_SLICES`` is the single place that says so.

Safety behaviour:
- targets are validated (16 finite values or named joints); a target outside the joint limits is
  refused (CommandRejected, nothing changes), never clamped: a far-off value is a sender's bug;
- PD gains are bounded (``GAIN_BOUNDS``): a gain far above the defaults makes a joint oscillate at
  the torque limit;
- the set-point moves towards the target at most ``max_joint_velocity`` rad/s, so a far target is
  approached smoothly instead of with a saturated torque step;
- encoder watchdog: when any finger block has not reported for ``encoder_timeout_s`` the loop sends
  zero torques and enters ERROR; when data returns it resumes by holding the measured position;
- command watchdog: no new target for ``command_timeout_s`` -> keep holding the last target (flagged
  as stale in the status, never extrapolated);
- stop(): hold the current position, or send zero torques until the next command.

The controller is a :class:`~dexwm_robot.joint_group.JointGroup`: ``move`` hands the PD loop a
trajectory (waypoints at the slew-limited speed, or timed points interpolated linearly) that the loop
follows and judges at its own rate (reached, timed out, pre-empted by ``set_target`` or a newer
``move``, stopped, failed when the hand enters its error state).
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field

import can
import numpy as np

from dexwm_robot import allegro as joints
# A target that was not applied; the message says why, nothing was changed (one class for every driver).
from dexwm_robot.command_limits import CommandRejected
from dexwm_robot.joint_group import (FAILED, PREEMPTED, REACHED, STOPPED, TIMED_OUT, GroupState, JointGroup,
                                     Motion)

from . import protocol

log = logging.getLogger(__name__)

N = joints.NUM_JOINTS
BLOCK_SLICES = tuple(slice(4 * k, 4 * k + 4) for k in range(protocol.NUM_BLOCKS))

# PWM caps per joint position in a finger (roll, near, middle, far) and for the thumb: Wonik's V4
# driver values (AllegroHandDrv.cpp: base limits x 1.5, all below the 12 V global cap of 1200).
_PWM_FINGER = (375.0, 675.0, 450.0, 285.0)
_PWM_THUMB = (525.0, 405.0, 270.0, 270.0)
DEFAULT_PWM_LIMIT = _PWM_FINGER * 3 + _PWM_THUMB
DEFAULT_TORQUE_LIMIT = (0.7,) * N  # [Nm] datasheet stall torque of a V4 joint
DEFAULT_KP = (1.0, 1.2, 1.0, 0.8) * 3 + (1.2, 1.0, 0.8, 0.8)  # [Nm/rad]
DEFAULT_KD = (0.03,) * N  # [Nm s/rad]
# Allowed gain ranges (per joint). About 5x the defaults: kp = 1000 made a 0.1 rad step oscillate at
# the torque limit on the emulated hand.
GAIN_BOUNDS = {"kp": (0.0, 5.0), "kd": (0.0, 0.3)}


def open_bus(interface: str, channel: str, bitrate: int = 1_000_000, **kwargs) -> can.BusABC:
    """Open a python-can bus: ``socketcan``/``can0`` or ``pcan``/``PCAN_USBBUS1`` on the lab PC,
    ``virtual`` (in-process) for tests and demos."""
    return can.Bus(interface=interface, channel=channel, bitrate=bitrate, **kwargs)


def validate_vector(name: str, values, *, nonnegative: bool = True, positive: bool = False) -> np.ndarray:
    """16 finite values (a single value is broadcast) or ValueError naming the problem."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not a list of numbers ({exc})") from None
    if arr.size == 1:
        arr = np.full(N, arr[0])
    if arr.size != N:
        raise ValueError(f"{name}: expected {N} values (or 1), got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: non-finite value in {arr.tolist()}")
    if positive and np.any(arr <= 0):
        raise ValueError(f"{name}: values must be > 0, got {arr.tolist()}")
    if nonnegative and np.any(arr < 0):
        raise ValueError(f"{name}: values must be >= 0, got {arr.tolist()}")
    return arr


def validate_gains(name: str, values) -> np.ndarray:
    """16 gains within GAIN_BOUNDS[name] (a single value is broadcast), or ValueError."""
    arr = validate_vector(name, values)
    low, high = GAIN_BOUNDS[name]
    if np.any(arr < low) or np.any(arr > high):
        raise ValueError(f"{name}: values must be within [{low:g}, {high:g}], got {arr.tolist()}")
    return arr


@dataclass
class ControllerConfig:
    hand: str = "right"  # "right" | "left"; checked against HAND_INFO
    device_id: int = 0
    control_rate_hz: float = 333.0
    kp: tuple = DEFAULT_KP
    kd: tuple = DEFAULT_KD
    torque_limit: tuple = DEFAULT_TORQUE_LIMIT
    pwm_limit: tuple = DEFAULT_PWM_LIMIT
    torque_to_pwm: float = protocol.TORQUE_TO_PWM_V4
    max_joint_velocity: float = 3.0  # [rad/s] slew limit of the set-point
    encoder_timeout_s: float = 0.05
    startup_timeout_s: float = 1.0  # first encoder data must arrive within this
    command_timeout_s: float = 1.0
    velocity_filter: float = 0.4  # weight of a new finite-difference sample (EMA)
    # Per-joint calibration: q = encoder_direction * counts * scale + encoder_offset; the PWM sent
    # is motor_direction * pwm. All +1 / 0 on V4 hands of both sides (Wonik's zero files).
    encoder_direction: tuple = (1.0,) * N
    encoder_offset: tuple = (0.0,) * N
    motor_direction: tuple = (1.0,) * N
    position_period_ms: int = 3
    imu_period_ms: int = 0
    temperature_period_ms: int = 500
    # SCHED_FIFO priority of the control thread (1..99; 0 = normal scheduling). Lab PCs set up for
    # libfranka already grant real-time priorities; without the permission the loop runs normally
    # and the status says why.
    realtime_priority: int = 0

    def validated(self) -> "ControllerConfig":
        """A copy with numpy vectors, or ValueError."""
        if self.hand not in ("right", "left"):
            raise ValueError(f"hand must be 'right' or 'left', got {self.hand!r}")
        if not 0 <= int(self.device_id) <= 3:
            raise ValueError(f"device_id must be 0..3, got {self.device_id}")
        for name in ("control_rate_hz", "torque_to_pwm", "max_joint_velocity", "encoder_timeout_s",
                     "startup_timeout_s", "command_timeout_s"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite value > 0, got {v}")
        if not 0 <= int(self.realtime_priority) <= 99:
            raise ValueError(f"realtime_priority must be 0..99, got {self.realtime_priority}")
        if not 0 < self.velocity_filter <= 1:
            raise ValueError(f"velocity_filter must be in (0, 1], got {self.velocity_filter}")
        out = dataclasses.replace(self)
        out.kp = validate_gains("kp", self.kp)
        out.kd = validate_gains("kd", self.kd)
        out.torque_limit = validate_vector("torque_limit", self.torque_limit)
        out.pwm_limit = validate_vector("pwm_limit", self.pwm_limit)
        if np.any(out.pwm_limit > protocol.INT16_MAX):
            raise ValueError("pwm_limit must fit int16")
        out.encoder_direction = validate_vector("encoder_direction", self.encoder_direction, nonnegative=False)
        out.motor_direction = validate_vector("motor_direction", self.motor_direction, nonnegative=False)
        for name in ("encoder_direction", "motor_direction"):
            if not np.all(np.isin(getattr(out, name), (-1.0, 1.0))):
                raise ValueError(f"{name} entries must be +1 or -1")
        out.encoder_offset = validate_vector("encoder_offset", self.encoder_offset, nonnegative=False)
        return out


class State(enum.Enum):
    INIT = "init"  # waiting for the first complete encoder reading
    RUNNING = "running"  # PD active
    STOPPED = "stopped"  # torques off after stop(torque_off); next command resumes
    ERROR = "error"  # encoder data missing or hand mismatch: zero torques
    CLOSED = "closed"


@dataclass
class LoopTiming:
    period_error_ms_mean: float = 0.0
    period_error_ms_p99: float = 0.0
    period_error_ms_max: float = 0.0
    work_ms_mean: float = 0.0
    overruns: int = 0
    ticks: int = 0


@dataclass
class HandStatus:
    stamp: float  # time.time() of the encoder reading
    state: State
    reason: str
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray  # commanded torque [Nm] after clamping
    target: np.ndarray
    setpoint: np.ndarray
    encoder_age_s: float
    command_age_s: float
    command_stale: bool
    temperatures: np.ndarray  # 16 motor temperatures [deg C], joint order; NaN until reported
    hand_info: protocol.HandInfo | None
    serial: str
    imu: protocol.Imu | None
    frames: dict
    last_frame_error: str
    tx_errors: int
    scheduling: str
    encoder_dropouts: int
    commands_rejected: int
    last_reject_reason: str
    timing: LoopTiming = field(default_factory=LoopTiming)


class HandController(JointGroup):
    """Runs the 333 Hz PD loop in its own thread against a python-can bus."""

    names = joints.JOINT_NAMES
    lower = joints.LOWER
    upper = joints.UPPER

    def __init__(self, bus: can.BusABC, config: ControllerConfig | None = None,
                 clock=time.monotonic) -> None:
        self.bus = bus
        self.config = (config or ControllerConfig()).validated()
        self._clock = clock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._decoder = protocol.FrameCounter()
        cfg = self.config
        self._kp = cfg.kp.copy()
        self._kd = cfg.kd.copy()
        self._counts = np.zeros(N, dtype=np.float64)
        self._block_time = np.full(protocol.NUM_BLOCKS, -math.inf)
        self._q = np.zeros(N)
        self._dq = np.zeros(N)
        self._q_stamp = 0.0
        self._q_time = -math.inf
        self._have_q = False
        self._target = np.asarray(joints.OPEN_POSE, dtype=np.float64).copy()
        self._setpoint = self._target.copy()
        self._tau = np.zeros(N)
        self._state = State.INIT
        self._reason = "waiting for encoder data"
        self._command_time = -math.inf
        self._temperatures = np.full(N, math.nan)
        self._hand_info: protocol.HandInfo | None = None
        self._serial = ""
        self._imu: protocol.Imu | None = None
        self._tx_errors = 0
        self._encoder_dropouts = 0
        self._commands_rejected = 0
        self._last_reject = ""
        self._periods = collections.deque(maxlen=3000)
        self._work = collections.deque(maxlen=3000)
        self._overruns = 0
        self._ticks = 0
        self._start_time = 0.0
        self._torque_off = False
        self._scheduling = "normal"
        self._motion: Motion | None = None   # the trajectory the loop follows (move), if any
        self._motion_start = np.zeros(N)     # set-point when it started (timed interpolation)
        self._motion_index = 0               # waypoint being approached (untimed)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Run the V4 start-up sequence (servo off, info + serial requests, streaming periods,
        servo on) and start the control thread."""
        cfg = self.config
        dev = cfg.device_id
        self._send(protocol.encode_system_off(dev))
        self._send(protocol.encode_request(protocol.HAND_INFO, dev))
        self._send(protocol.encode_request(protocol.SERIAL, dev))
        self._send(protocol.encode_set_period(cfg.position_period_ms, cfg.imu_period_ms,
                                              cfg.temperature_period_ms, dev))
        self._send(protocol.encode_system_on(dev))
        self._start_time = self._clock()
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, name="allegro-pd", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the loop, zero the torques, stop streaming and switch the servos off."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._state is not State.CLOSED:
            dev = self.config.device_id
            self._send_torques(np.zeros(N))
            self._send(protocol.encode_set_period(0, 0, 0, dev))
            self._send(protocol.encode_system_off(dev))
            with self._lock:
                self._state = State.CLOSED
                self._reason = "closed"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    # --- commands ----------------------------------------------------------------------------
    def set_target(self, positions, names=None) -> np.ndarray:
        """Set position targets [rad]: 16 values in joints.JOINT_NAMES order, or values for the
        named joints (others keep their target); returns the applied 16-vector. Raises
        CommandRejected (and changes nothing) on bad input or a target outside the joint limits."""
        try:
            full = self._resolve_target(positions, names)
        except CommandRejected as exc:
            with self._lock:
                self._commands_rejected += 1
                self._last_reject = str(exc)
            raise
        with self._lock:
            self._end_motion(PREEMPTED, "pre-empted by a joint command")
            self._target = full
            self._command_time = self._clock()
            self._torque_off = False
            if self._state is State.STOPPED:
                # a command after a torque-off stop resumes from where the hand is now
                self._setpoint = self._q.copy()
                self._state = State.RUNNING
                self._reason = ""
        return full.copy()

    def _resolve_target(self, positions, names) -> np.ndarray:
        try:
            values = np.asarray(positions, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise CommandRejected("positions are not numbers") from None
        if not np.all(np.isfinite(values)):
            raise CommandRejected(f"non-finite position in {values.tolist()}")
        names = list(names or [])
        with self._lock:
            full = self._target.copy()
        if not names:
            if values.size != N:
                raise CommandRejected(f"expected {N} positions in joint order, got {values.size}")
            full = values
        else:
            if len(names) != values.size:
                raise CommandRejected(f"{len(names)} names but {values.size} positions")
            if len(set(names)) != len(names):
                raise CommandRejected("duplicate joint names", code="invalid_joints")
            unknown = [n for n in names if n not in joints.JOINT_NAMES]
            if unknown:
                raise CommandRejected(f"unknown joint names {unknown}; expected names from "
                                      f"dexwm_robot.allegro.JOINT_NAMES", code="invalid_joints")
            for n, v in zip(names, values):
                full[joints.JOINT_NAMES.index(n)] = v
        problem = joints.outside_limits(full)
        if problem:
            raise CommandRejected(f"target refused: {problem}", code="invalid_joints")
        return full

    def move(self, points, tolerance=None, time_limit: float | None = None, times=None) -> Motion:
        """Follow (N, 16) targets: at the slew-limited speed, each reached (within ``tolerance``)
        before the next, or, with ``times`` (time_from_start, increasing from > 0), interpolated
        linearly from the current set-point. Pre-empts the running motion. CommandRejected (nothing
        changes) for a point that is not 16 finite values inside the limits."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        full = np.stack([self._resolve_target(p, None) for p in pts]) if pts.size else pts
        if len(full) == 0:
            raise CommandRejected("a motion needs at least one point")
        t = np.zeros(len(full)) if times is None else np.asarray(times, dtype=np.float64)
        if t.shape != (len(full),):
            raise CommandRejected(f"{len(full)} points but {t.size} times")
        with self._lock:
            motion = Motion(full, tolerance, time_limit, t, started=self._clock())
            self._end_motion(PREEMPTED, "pre-empted by a newer motion")
            self._motion, self._motion_start, self._motion_index = motion, self._setpoint.copy(), 0
            self._target = full[0] if not t[-1] > 0 else self._setpoint.copy()
            self._command_time = motion.started
            self._torque_off = False
            if self._state is State.STOPPED:
                self._setpoint = self._q.copy()
                self._state = State.RUNNING
                self._reason = ""
        return motion

    def state(self) -> GroupState | None:
        with self._lock:
            if not self._have_q:
                return None
            return GroupState(position=self._q.copy(), stamp=self._q_stamp, velocity=self._dq.copy(),
                              effort=self._tau.copy())

    def commanded(self) -> np.ndarray:
        with self._lock:
            motion = self._motion
            return (motion.target if motion is not None and not motion.done else self._target).copy()

    def _end_motion(self, status: str, reason: str) -> None:
        """End the loop's motion (lock held)."""
        if self._motion is not None:
            self._motion.end(status, reason, self._q)
            self._motion = None

    def _follow_motion(self, now: float) -> None:
        """One tick of the motion under way: its set target, then its verdict (lock held, RUNNING)."""
        m = self._motion
        if m is None:
            return
        elapsed = now - m.started
        timed = m.times[-1] > 0
        if timed:
            self._target = _interpolate(self._motion_start, m.points, m.times, elapsed)
        else:
            at_waypoint = (_same(self._setpoint, self._target)
                           and (m.tolerance is None or bool(np.all(np.abs(self._target - self._q) <= m.tolerance))))
            if at_waypoint and self._motion_index < len(m.points) - 1:
                self._motion_index += 1
            self._target = m.points[self._motion_index]
        self._command_time = now
        finished = (elapsed >= m.times[-1]) if timed else self._motion_index == len(m.points) - 1
        finished = finished and _same(self._setpoint, m.target)
        if finished and m.within_tolerance(self._q):
            self._end_motion(REACHED, "target reached")
        elif m.time_limit is not None and elapsed > m.time_limit:
            if not finished:   # still under way: stop where it is
                self._target = self._q.copy()
                self._setpoint = self._q.copy()
            # Finished off target (a finger on an object): the target stays, the finger keeps pressing.
            self._end_motion(TIMED_OUT, f"target not reached within {m.time_limit:.2f} s (max error "
                                        f"{np.max(np.abs(m.target - self._q)):.3f} rad); "
                                        f"{'holding' if not finished else 'keeping the target'}")

    def hold(self, reason: str = "stop requested") -> None:
        """Hold the measured position (used by stop and by action cancel)."""
        with self._lock:
            self._end_motion(STOPPED, reason)
            self._target = self._q.copy()
            self._setpoint = self._q.copy()
            self._command_time = self._clock()

    def stop(self, reason: str = "stop requested", mode: str = "hold") -> str:
        """``hold``: keep the current position under PD; ``torque_off``: zero torques until the
        next command. Ends the motion under way (STOPPED). Returns a description."""
        if mode == "hold":
            self.hold(reason)
            return "holding the current position"
        if mode == "torque_off":
            with self._lock:
                self._end_motion(STOPPED, reason)
                self._torque_off = True
                if self._state is State.RUNNING:
                    self._state = State.STOPPED
                    self._reason = "stopped: torques off until the next command"
            return "torques off until the next command"
        raise ValueError(f"stop mode must be 'hold' or 'torque_off', got {mode!r}")

    def set_gains(self, kp=None, kd=None) -> None:
        """Change PD gains live; ValueError (nothing changed) for wrong size, NaN or out of GAIN_BOUNDS."""
        new_kp = validate_gains("kp", kp) if kp is not None else None
        new_kd = validate_gains("kd", kd) if kd is not None else None
        with self._lock:
            if new_kp is not None:
                self._kp = new_kp
            if new_kd is not None:
                self._kd = new_kd

    @property
    def gains(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._kp.copy(), self._kd.copy()

    # --- status ------------------------------------------------------------------------------
    def status(self) -> HandStatus:
        now = self._clock()
        with self._lock:
            periods = np.asarray(self._periods, dtype=np.float64)
            work = np.asarray(self._work, dtype=np.float64)
            nominal = 1.0 / self.config.control_rate_hz
            err = np.abs(periods - nominal) * 1e3 if periods.size else np.zeros(1)
            timing = LoopTiming(float(err.mean()), float(np.percentile(err, 99)), float(err.max()),
                                float(work.mean() * 1e3) if work.size else 0.0, self._overruns,
                                self._ticks)
            command_age = now - self._command_time
            return HandStatus(
                stamp=self._q_stamp, state=self._state, reason=self._reason,
                position=self._q.copy(), velocity=self._dq.copy(), effort=self._tau.copy(),
                target=self._target.copy(), setpoint=self._setpoint.copy(),
                encoder_age_s=now - self._q_time, command_age_s=command_age,
                command_stale=command_age > self.config.command_timeout_s,
                temperatures=self._temperatures.copy(), hand_info=self._hand_info,
                serial=self._serial, imu=self._imu, frames=dict(self._decoder.counts),
                last_frame_error=self._decoder.last_error, tx_errors=self._tx_errors,
                scheduling=self._scheduling,
                encoder_dropouts=self._encoder_dropouts,
                commands_rejected=self._commands_rejected, last_reject_reason=self._last_reject,
                timing=timing)

    def period_samples(self) -> np.ndarray:
        """Measured loop periods [s] (the last few thousand)."""
        with self._lock:
            return np.asarray(self._periods, dtype=np.float64)

    def note_rejected(self, reason: str) -> None:
        """Count a command rejected before it reached set_target (e.g. by the ROS adapter)."""
        with self._lock:
            self._commands_rejected += 1
            self._last_reject = reason

    # --- the loop ----------------------------------------------------------------------------
    def _set_realtime(self) -> None:
        prio = int(self.config.realtime_priority)
        if prio <= 0:
            return
        try:  # pid 0 = the calling thread on Linux
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
            self._scheduling = f"SCHED_FIFO {prio}"
        except (OSError, AttributeError) as exc:
            self._scheduling = f"normal (SCHED_FIFO {prio} refused: {exc})"
            log.warning("allegro control thread: %s", self._scheduling)

    def _run(self) -> None:
        self._set_realtime()
        period = 1.0 / self.config.control_rate_hz
        next_tick = self._clock()
        last_tick = None
        while not self._stop_event.is_set():
            tick = self._clock()
            try:
                self._step(tick)
            except Exception:  # the loop must survive anything a bus or a bug throws at it
                log.exception("allegro control step failed; sending zero torques")
                self._send_torques(np.zeros(N))
            done = self._clock()
            with self._lock:
                if last_tick is not None:
                    self._periods.append(tick - last_tick)
                self._work.append(done - tick)
                self._ticks += 1
            last_tick = tick
            next_tick += period
            if done > next_tick + period:  # fell more than a period behind: resynchronise
                with self._lock:
                    self._overruns += 1
                next_tick = done
            delay = next_tick - self._clock()
            if delay > 0:
                time.sleep(delay)  # < one period; close() joins within it

    def _step(self, now: float) -> None:
        self._drain(now)
        cfg = self.config
        with self._lock:
            fresh_blocks = (now - self._block_time) <= cfg.encoder_timeout_s
            fresh = bool(np.all(fresh_blocks))
            if self._hand_info is not None and self._hand_info.hand != cfg.hand:
                self._state = State.ERROR
                self._reason = (f"hand mismatch: configured {cfg.hand}, the hand reports "
                                f"{self._hand_info.hand}")
                self._end_motion(FAILED, f"hand error: {self._reason}")
                tau = np.zeros(N)
            elif not fresh:
                if self._state is State.RUNNING or self._state is State.STOPPED or (
                        self._state is State.INIT and now - self._start_time > cfg.startup_timeout_s):
                    stale = [joints.FINGERS[k] for k in range(protocol.NUM_BLOCKS) if not fresh_blocks[k]]
                    if self._state is not State.INIT:
                        self._encoder_dropouts += 1
                    self._state = State.ERROR
                    self._reason = (f"no encoder data for > {cfg.encoder_timeout_s * 1e3:.0f} ms "
                                    f"from {', '.join(stale)}: torques zero")
                    self._end_motion(FAILED, f"hand error: {self._reason}")
                tau = np.zeros(N)
            else:
                if self._state in (State.INIT, State.ERROR):
                    # (re)start by holding where the hand is, never by jumping to an old target
                    self._target = self._q.copy()
                    self._setpoint = self._q.copy()
                    self._state = State.STOPPED if self._torque_off else State.RUNNING
                    self._reason = "" if not self._torque_off else "stopped: torques off"
                if self._state is State.RUNNING:
                    self._torque_off = False
                    self._follow_motion(now)
                    step = cfg.max_joint_velocity / cfg.control_rate_hz
                    self._setpoint += np.clip(self._target - self._setpoint, -step, step)
                    tau = self._kp * (self._setpoint - self._q) - self._kd * self._dq
                    tau = np.clip(tau, -cfg.torque_limit, cfg.torque_limit)
                else:
                    tau = np.zeros(N)
            self._tau = tau
        self._send_torques(tau)

    def _drain(self, now: float) -> None:
        """Read everything queued (bounded, so a flooded bus cannot starve the loop)."""
        for _ in range(512):
            try:
                msg = self.bus.recv(timeout=0.0)
            except (can.CanError, OSError) as exc:
                with self._lock:
                    self._decoder.counts["malformed"] += 1
                    self._decoder.last_error = f"bus receive error: {exc}"
                return
            if msg is None:
                return
            frame = self._decoder.decode(msg)
            if frame is None or frame.device_id != self.config.device_id:
                continue
            self._handle(frame, now)

    def _handle(self, frame, now: float) -> None:
        cfg = self.config
        with self._lock:
            if isinstance(frame, protocol.FingerPose):
                sl = BLOCK_SLICES[frame.block]
                self._counts[sl] = frame.counts
                self._block_time[frame.block] = now
                if frame.block == protocol.NUM_BLOCKS - 1 or not self._have_q:
                    self._update_position(now)
            elif isinstance(frame, protocol.Temperature):
                self._temperatures[BLOCK_SLICES[frame.block]] = frame.celsius
            elif isinstance(frame, protocol.HandInfo):
                self._hand_info = frame
            elif isinstance(frame, protocol.Serial):
                self._serial = frame.text
            elif isinstance(frame, protocol.Imu):
                self._imu = frame
            # our own commands echoed back, or other hosts' frames: nothing to do

    def _update_position(self, now: float) -> None:
        """Called with the lock held once the thumb block (the last of a 3 ms burst) arrived."""
        if not np.all(np.isfinite(self._block_time)):
            return
        cfg = self.config
        q = cfg.encoder_direction * protocol.counts_to_rad(self._counts) + cfg.encoder_offset
        if self._have_q and now > self._q_time:
            dq = (q - self._q) / (now - self._q_time)
            a = cfg.velocity_filter
            self._dq = a * dq + (1 - a) * self._dq
        self._q = q
        self._q_time = now
        self._q_stamp = time.time()
        self._have_q = True

    def _send_torques(self, tau: np.ndarray) -> None:
        cfg = self.config
        pwm = _pwm(tau, cfg)
        for k, sl in enumerate(BLOCK_SLICES):
            self._send(protocol.encode_set_torque(k, pwm[sl], cfg.device_id))

    def _send(self, msg: can.Message) -> None:
        try:
            self.bus.send(msg, timeout=0.002)
        except (can.CanError, OSError) as exc:
            with self._lock:
                self._tx_errors += 1
            log.debug("CAN send failed: %s", exc)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Set-point at a target: the slew step lands on it up to float rounding."""
    return bool(np.max(np.abs(a - b)) <= 1e-9)


def _interpolate(start: np.ndarray, points: np.ndarray, times: np.ndarray, t: float) -> np.ndarray:
    """Piecewise-linear position along timed waypoints, starting at ``start`` at t = 0."""
    prev_q, prev_t = start, 0.0
    for q, tp in zip(points, times):
        if t < tp:
            return prev_q + (t - prev_t) / (tp - prev_t) * (q - prev_q)
        prev_q, prev_t = q, tp
    return points[-1].copy()


def _pwm(tau: np.ndarray, cfg: ControllerConfig) -> np.ndarray:
    return np.clip(np.rint(np.asarray(tau) * cfg.motor_direction * cfg.torque_to_pwm),
                   -cfg.pwm_limit, cfg.pwm_limit).astype(int)


def torques_to_pwm(tau: np.ndarray, config: ControllerConfig) -> np.ndarray:
    """The PWM duties the controller sends for torques ``tau``: per-joint PWM caps apply on top of
    the torque caps (the PWM cap is the tighter one for most joints)."""
    return _pwm(tau, config.validated())
