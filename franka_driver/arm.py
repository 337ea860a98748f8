"""ROS-free control core of the Franka arm over franky (libfranka).

The ``franka`` node is a thin rclpy adapter over :class:`FrankaArm`, a
:class:`~dexwm_robot.joint_group.JointGroup`; everything that decides what the robot does
(validation, limits, pre-emption, watchdog, error handling, reconnects) lives here so it can be
exercised against franky-sim without ROS.

Backend: ``franky`` from PyPI ``franky-control`` 2.0, built against libfranka 0.21, which speaks the
protocol of the Franka Research 3 (FR3) and of franky-sim. **Panda (FER) arms need franky built
against libfranka 0.9.x** (the last series that supports the Panda's older FCI protocol); build
franky from source with that libfranka and set the Panda joint limits
(``dexwm_robot.franka.PANDA_JOINT_LIMITS``) in config/franka.yaml.

Motions are started asynchronously (``Robot.move(..., asynchronous=True)``): a new command replaces
the running one seamlessly inside franky's control loop, so pre-emption needs no stop in between.
franky times the motion itself (``relative_dynamics_factor``): the points' time_from_start is not
followed. Each command is an :class:`ArmMotion`; :meth:`FrankaArm.update` (called periodically, e.g.
by the node's state thread) reads the robot state, judges the motion under way (reached once franky
finished it and the joints are within tolerance; its time limit is the watchdog: a motion that runs
longer is stopped and the arm holds) and reconnects after a lost connection.
"""
from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

# The limit and step-cap check is shared with the simulation, which must refuse exactly what this
# driver refuses; CommandRejected is re-exported from here for the driver's callers.
from dexwm_robot.command_limits import CommandRejected, check_joint_command  # noqa: F401
from dexwm_robot.franka import FR3_JOINT_LIMITS, JOINT_NAMES
from dexwm_robot.joint_group import (FAILED, PREEMPTED, REACHED, RUNNING, STOPPED, TIMED_OUT, GroupState,
                                     GroupUnavailable, JointGroup, Motion)


class RobotUnavailable(GroupUnavailable):
    """The robot cannot be reached (not connected, connection lost)."""


# Bounds of the settings that decide how far and how fast the arm may move, and how soon it stops
# on its own: checked at start (FrankaConfig.validate) and on every live change (the node).
SETTING_BOUNDS = {
    "relative_dynamics_factor": (0.001, 1.0),
    # The largest step the planner may ask for (its max_step_arm) is 0.5 rad; more is a mistake.
    "max_joint_step": (0.001, 0.5),
    # A motion without a newer command stops after this; the watchdog cannot be switched off.
    "watchdog_timeout_s": (0.05, 10.0),
    "reconnect_period_s": (0.1, 60.0),
}


@dataclass
class FrankaConfig:
    robot_ip: str = "172.16.0.2"
    # Scales franky's maximum joint velocity/acceleration/jerk; slow by default for a first run.
    relative_dynamics_factor: float = 0.1
    # Collision (reflex) thresholds set once at start: lower then upper, joint torques [Nm] and
    # Cartesian forces/torques [N, Nm].
    lower_torque_thresholds: Sequence[float] = (20.0,) * 7
    upper_torque_thresholds: Sequence[float] = (40.0,) * 7
    lower_force_thresholds: Sequence[float] = (20.0,) * 6
    upper_force_thresholds: Sequence[float] = (40.0,) * 6
    joint_lower_limits: Sequence[float] = FR3_JOINT_LIMITS[0]
    joint_upper_limits: Sequence[float] = FR3_JOINT_LIMITS[1]
    # Largest change of any joint in one command: current position -> first point and between
    # consecutive waypoints [rad].
    max_joint_step: float = 0.5
    # A motion that got no new command for this long is stopped and the arm holds [s].
    watchdog_timeout_s: float = 2.0
    # Seconds between reconnect attempts after the connection to the robot was lost.
    reconnect_period_s: float = 1.0
    # libfranka wants a realtime kernel on the lab PC; without one (simulation, CI) ignore it.
    enforce_realtime: bool = False

    def validate(self) -> None:
        for name, n in (("lower_torque_thresholds", 7), ("upper_torque_thresholds", 7),
                        ("lower_force_thresholds", 6), ("upper_force_thresholds", 6),
                        ("joint_lower_limits", 7), ("joint_upper_limits", 7)):
            values = np.asarray(getattr(self, name), dtype=float)
            if values.shape != (n,) or not np.all(np.isfinite(values)):
                raise ValueError(f"{name} needs {n} finite values, got {list(getattr(self, name))}")
        for name in ("lower_torque_thresholds", "upper_torque_thresholds",
                     "lower_force_thresholds", "upper_force_thresholds"):
            if np.any(np.asarray(getattr(self, name)) <= 0):
                raise ValueError(f"{name} must be positive")
        if np.any(np.asarray(self.joint_lower_limits) >= np.asarray(self.joint_upper_limits)):
            raise ValueError("joint_lower_limits must be below joint_upper_limits")
        for name, (low, high) in SETTING_BOUNDS.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and low <= value <= high):  # NaN fails too
                raise ValueError(f"{name} must be within [{low:g}, {high:g}], got {value}")


@dataclass(frozen=True)
class ArmState(GroupState):
    """position/velocity [rad, rad/s], effort = measured joint torques [Nm], stamp = time.time()."""

    robot_mode: str = ""


# franky's control thread takes a moment to start; "not in control" only means "finished" once
# the motion has been seen running (or after START_GRACE_S).
START_GRACE_S = 1.0


class ArmMotion(Motion):
    def __init__(self, id: int, source: str, points, tolerance, time_limit: float, started: float):
        super().__init__(points, tolerance, time_limit, started=started)
        self.id = id
        self.source = source              # who sent it (for diagnostics)
        self.seen_in_control = False
        self.trajectory_done = False      # franky finished it; the arm settles onto the target after


def _default_factory(cfg: FrankaConfig):
    import franky

    realtime = franky.RealtimeConfig.Enforce if cfg.enforce_realtime else franky.RealtimeConfig.Ignore
    return franky.Robot(cfg.robot_ip, realtime_config=realtime)


class FrankaArm(JointGroup):
    """One Franka arm behind franky: validated, pre-emptible joint motions plus safety handling."""

    names = JOINT_NAMES

    def __init__(self, config: FrankaConfig, robot_factory: Optional[Callable[[FrankaConfig], object]] = None,
                 clock: Callable[[], float] = time.monotonic):
        config.validate()
        self.config = config
        self._factory = robot_factory or _default_factory
        self._clock = clock
        self._lock = threading.RLock()
        self._robot = None
        self._ids = itertools.count(1)
        self._command: Optional[ArmMotion] = None
        self._last_state: Optional[ArmState] = None
        self._next_reconnect = 0.0
        self._connecting = False
        self.last_error = ""          # most recent problem, for diagnostics
        self.lower = np.asarray(config.joint_lower_limits, dtype=float)
        self.upper = np.asarray(config.joint_upper_limits, dtype=float)

    # ---- connection -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._robot is not None

    def connect(self) -> None:
        """Connect, set collision thresholds and dynamics; raise RobotUnavailable naming the host.

        Runs without holding the arm's lock: libfranka's TCP connect to an unreachable host blocks
        for about 60 s, and stop/move/recover must keep answering ("not connected") meanwhile.
        """
        cfg = self.config
        with self._lock:
            if self._robot is not None:
                return
            if self._connecting:
                raise RobotUnavailable(f"already connecting to the Franka at {cfg.robot_ip}")
            self._connecting = True
        try:
            robot = self._factory(cfg)
            robot.set_collision_behavior(
                list(cfg.lower_torque_thresholds), list(cfg.upper_torque_thresholds),
                list(cfg.lower_force_thresholds), list(cfg.upper_force_thresholds))
            robot.relative_dynamics_factor = cfg.relative_dynamics_factor
        except Exception as exc:  # franky raises NetworkException, CommandException, ...
            with self._lock:
                self._connecting = False
                self.last_error = f"cannot connect to the Franka at {cfg.robot_ip}: {exc}"
                self._next_reconnect = self._clock() + cfg.reconnect_period_s
            raise RobotUnavailable(self.last_error) from exc
        with self._lock:
            self._connecting = False
            self._robot = robot
            self.last_error = ""

    def _lose_connection(self, exc: BaseException) -> None:
        self._robot = None
        self.last_error = f"lost the connection to the Franka at {self.config.robot_ip}: {exc}"
        self._next_reconnect = self._clock() + self.config.reconnect_period_s
        if self._command is not None:
            self._command.end(FAILED, self.last_error)

    def _require_robot(self):
        if self._robot is None:
            raise RobotUnavailable(self.last_error or f"not connected to the Franka at {self.config.robot_ip}")
        return self._robot

    # ---- state and supervision ----------------------------------------------------------------------
    def update(self) -> Optional[ArmState]:
        """Read the state; judge the running motion; watchdog; reconnect. None when disconnected."""
        with self._lock:
            due = self._robot is None and not self._connecting and self._clock() >= self._next_reconnect
        if due:
            try:
                self.connect()
            except RobotUnavailable:
                return None
        with self._lock:
            robot = self._robot
            if robot is None:
                return None
            try:
                state = robot.state
                arm_state = ArmState(position=np.array(state.q, dtype=float), stamp=time.time(),
                                     velocity=np.array(state.dq, dtype=float),
                                     effort=np.array(state.tau_J, dtype=float), robot_mode=state.robot_mode.name)
                cmd = self._command
                if cmd is not None and not cmd.done:
                    self._judge(robot, cmd, arm_state.position)
            except Exception as exc:
                if _is_network_error(exc):
                    self._lose_connection(exc)
                    return None
                raise
            self._last_state = arm_state
            return arm_state

    def _harvest(self) -> Optional[str]:
        """Collect the exception franky kept from the last motion (if any) as text."""
        try:
            self._robot.join_motion(0.0)
        except Exception as exc:
            if _is_network_error(exc):
                raise
            return str(exc)
        return None

    def _judge(self, robot, cmd: ArmMotion, q: np.ndarray) -> None:
        in_control = robot.is_in_control
        cmd.seen_in_control |= in_control
        now = self._clock()
        if not in_control and not cmd.trajectory_done and (cmd.seen_in_control or now - cmd.started > START_GRACE_S):
            self._settle(cmd)
        if cmd.done:
            return
        if cmd.trajectory_done and cmd.within_tolerance(q):
            cmd.end(REACHED, "target reached", q)
        elif now - cmd.started > cmd.time_limit:
            if in_control:   # the time limit is the motion's watchdog: stop, the arm holds
                robot.stop()
                self._harvest()
            cmd.end(TIMED_OUT, f"target not reached within {cmd.time_limit:.2f} s "
                               f"(max error {np.max(np.abs(cmd.target - q)):.4f} rad); "
                               f"{'stopped and ' if in_control else ''}holding", q)

    def _settle(self, cmd: ArmMotion) -> None:
        """franky's motion ended: finished (judged next), or failed with the exception franky kept."""
        error = self._harvest()
        if error and "preempted" not in error.lower():
            cmd.end(FAILED, f"motion failed: {error}", self._position())
            self.last_error = cmd.reason
        else:
            cmd.trajectory_done = True

    def _position(self) -> Optional[np.ndarray]:
        return None if self._last_state is None else self._last_state.position

    def state(self) -> Optional[ArmState]:
        return self._last_state

    def commanded(self) -> Optional[np.ndarray]:
        cmd = self._command
        if cmd is not None and cmd.status in (RUNNING, REACHED):
            return cmd.target.copy()
        return self._position()

    @property
    def last_state(self) -> Optional[ArmState]:
        return self._last_state

    @property
    def command(self) -> Optional[ArmMotion]:
        return self._command

    # ---- commands -----------------------------------------------------------------------------------
    def check_points(self, points, current: Optional[np.ndarray] = None) -> np.ndarray:
        """Validate (N, 7) joint positions; return them as float array or raise CommandRejected."""
        return check_joint_command(points, self.lower, self.upper, JOINT_NAMES, self.config.max_joint_step, current)

    def move(self, points, tolerance=None, time_limit: Optional[float] = None, times=None,
             source: str = "command") -> ArmMotion:
        """Validate and start a joint motion through the points, pre-empting the running one.

        ``time_limit``: how long this motion may run before it is stopped (the watchdog; default
        the configured ``watchdog_timeout_s``: a streaming sender must send again within it).
        ``tolerance`` None: reached when franky finished the motion. ``times`` are not followed
        (franky times the motion at its dynamics limits).
        """
        import franky

        with self._lock:
            robot = self._require_robot()
            current = self._last_state.position if self._last_state is not None else None
            if current is None:
                try:
                    current = np.array(robot.current_joint_positions, dtype=float)
                except Exception as exc:
                    if _is_network_error(exc):
                        self._lose_connection(exc)
                        raise RobotUnavailable(self.last_error) from exc
                    raise
            pts = self.check_points(points, current)
            if _safe(lambda: robot.has_errors):
                raise RobotUnavailable("the robot is in an error state: call recover first "
                                       f"({_safe(lambda: str(robot.state.current_errors))})")
            waypoints = [franky.JointWaypoint(p.tolist()) for p in pts]
            motion = franky.JointWaypointMotion(waypoints)
            limit = self.config.watchdog_timeout_s if time_limit is None else float(time_limit)
            cmd = ArmMotion(next(self._ids), source, pts, tolerance, limit, self._clock())
            old = self._command
            try:
                if old is not None and not old.done and not old.trajectory_done and not robot.is_in_control:
                    self._settle(old)
                elif not robot.is_in_control:
                    self._harvest()  # clear a stale stored exception so it cannot fail this motion
                robot.move(motion, asynchronous=True)
            except Exception as exc:
                if _is_network_error(exc):
                    self._lose_connection(exc)
                    raise RobotUnavailable(self.last_error) from exc
                self.last_error = f"franky refused the motion: {exc}"
                raise RobotUnavailable(self.last_error) from exc
            if old is not None:
                old.end(PREEMPTED, f"pre-empted by command {cmd.id} ({source})", self._position())
            self._command = cmd
            return cmd

    def stop(self, reason: str = "stop requested") -> str:
        """Stop the running motion; the robot holds. Returns a short description of what happened."""
        with self._lock:
            robot = self._require_robot()
            cmd = self._command
            was_moving = cmd is not None and not cmd.done
            try:
                robot.stop()
                self._harvest()
            except Exception as exc:
                if _is_network_error(exc):
                    self._lose_connection(exc)
                    raise RobotUnavailable(self.last_error) from exc
                raise
            if cmd is not None:
                cmd.end(STOPPED, reason, self._position())
            return f"stopped command {cmd.id}" if was_moving else "no motion was running; robot holds"

    def recover(self) -> tuple[bool, str]:
        """Run libfranka's automatic error recovery (reconnecting is :meth:`update`'s job).

        Returns (success, text) where text names the errors the robot reported before recovery.
        """
        with self._lock:
            robot = self._robot
            if robot is None:
                return False, (f"not connected to the Franka at {self.config.robot_ip} (reconnecting every "
                               f"{self.config.reconnect_period_s:g} s): {self.last_error or 'connecting'}")
            try:
                state = robot.state
                before = str(state.current_errors)
                last_motion = str(state.last_motion_errors)
                ok = bool(robot.recover_from_errors())
                after = str(robot.state.current_errors)
            except Exception as exc:
                if _is_network_error(exc):
                    self._lose_connection(exc)
                    return False, self.last_error
                return False, f"error recovery failed: {exc}"
            text = f"robot errors before recovery: {before}; last motion errors: {last_motion}"
            if ok and after in ("[]", ""):
                self.last_error = ""
                return True, "recovered; " + text
            return False, f"recovery did not clear the errors (now {after}); " + text

    def set_relative_dynamics_factor(self, factor: float) -> None:
        """Change the global dynamics scaling; applies to motions started afterwards."""
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"relative_dynamics_factor must be in (0, 1], got {factor}")
        with self._lock:
            self.config.relative_dynamics_factor = factor
            if self._robot is not None:
                self._robot.relative_dynamics_factor = factor

    def close(self) -> None:
        with self._lock:
            if self._robot is not None:
                _safe(self._robot.stop)
            self._robot = None


def _safe(fn):
    try:
        return fn()
    except Exception:
        return None


def _is_network_error(exc: BaseException) -> bool:
    """franky raises NetworkException, or RuntimeError('Net Exception') from state reads, on a lost link."""
    name = type(exc).__name__
    text = str(exc).lower()
    return name == "NetworkException" or "net exception" in text or "udp receive" in text


def config_from_mapping(values: dict) -> FrankaConfig:
    """FrankaConfig from a dict (e.g. ROS parameters); unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(FrankaConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown Franka settings: {sorted(unknown)}")
    cfg = FrankaConfig(**values)
    cfg.validate()
    return cfg
