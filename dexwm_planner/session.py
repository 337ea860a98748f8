"""One planning session toward a goal image: observe -> plan -> check -> command -> wait -> judge.

The loop that the planner node runs for an Execute goal, the in-process evaluation runs for an
episode and the unit tests run against the simulation: one object, so the rules below cannot drift
apart between them. ROS-free; it talks to a robot through :class:`JointGroupRobot` and gets its
commands from a :class:`PlanProvider` (the world model inside MPC, or an evaluation baseline).

Rules the session owns:

* **stale input**: a plan is made only from a camera frame and joint states that are fresh (arrived
  within ``stale_timeout_s``), from a frame that arrived after the last move ended, and from inputs
  whose stamps are not before that end (a frame of the motion's last moments may still be on its
  way when the drivers report the move's end). Otherwise the robot holds and the session pauses;
  when the inputs stay unusable for ``stale_abort_s`` it ends with ``stale_input``.
* **command safety**: every command is finite, inside the joint limits (a joint already past a
  limit may only move back towards it) and within the per-step cap of every joint, or it is
  refused, nothing is sent and the session ends with ``unsafe_command``.
* **stop**: the provider's own verdict (a privileged baseline's), then the stop rule
  (dexwm_planner.stop_rule: ``reached``, ``plateau``, ``budget``) on the latent costs observed so far;
  a provider that scores nothing (nan costs: a baseline without a world model) stops at the budget.
* **cancel**: :meth:`PlanningSession.cancel` or the ``interrupt`` callback end the session between
  phases, inside a replan (the CEM polls it) and inside a move (the robot polls it); the robot then
  holds.

Every end that is not the stop rule's leaves the robot holding (``JointGroupRobot.hold``); after a
stop by the rule the robot keeps its last targets.

A sequence of subgoal images runs one session per subgoal (dexwm_planner.subgoals.SubgoalSequence);
the targets a stop by the rule keeps are where the next subgoal starts from.
"""
from __future__ import annotations

import abc
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from dexwm_robot.joints import ARM_DOF as ARM_JOINTS

from .mpc import MPCPlanner, PlanStep
from .stop_rule import REACHED, StopRule

if TYPE_CHECKING:
    from .subgoals import SearchSettings

CANCELED = "canceled"

# Session states, as the planner node publishes them on /dexwm/status.
PLANNING, EXECUTING, PAUSED = "planning", "executing", "paused_stale_input"
SUCCEEDED, FAILED = "succeeded", "failed"


# ------------------------------------------------------------------------------------- the robot
@dataclass(frozen=True)
class Reading:
    """One camera frame or joint vector as the robot last delivered it."""

    value: np.ndarray
    stamp: float        # when it was taken, in the robot's clock (JointGroupRobot.now); 0 = unstamped
    received: float     # time.monotonic() when it arrived


# How a move ends: at its targets or timed out where it could get (a finger on an object),
# cut short because the session was interrupted, or failed (the message says why).
MOVED, INTERRUPTED, FAILED_MOVE = "moved", "interrupted", "failed"


@dataclass(frozen=True)
class MoveStatus:
    status: str         # MOVED, INTERRUPTED or FAILED_MOVE
    message: str = ""


class JointGroupRobot(abc.ABC):
    """The arm (7 joints) and the hand (16 joints) with a camera, as one planning session sees them."""

    @abc.abstractmethod
    def latest_image(self) -> Reading | None:
        """The newest RGB uint8 camera frame (H, W, 3), None before the first one."""

    @abc.abstractmethod
    def latest_joints(self) -> Reading | None:
        """The newest 23 joint positions (arm then hand), None before both groups reported."""

    @abc.abstractmethod
    def now(self) -> float:
        """The clock the readings are stamped in [s]."""

    @abc.abstractmethod
    def move(self, arm_target: np.ndarray, hand_target: np.ndarray, duration: float, time_limit: float,
             tolerance: float, interrupted: Callable[[], bool]) -> MoveStatus:
        """Move both groups to their targets, starting together, reached over ``duration``; block
        until each group is within ``tolerance`` of its target or ``time_limit`` has passed (a
        finger closing on an object may never get there: not an error), or ``interrupted()``."""

    @abc.abstractmethod
    def hold(self, why: str) -> None:
        """Stop any motion under way; both groups hold where they are."""


# ----------------------------------------------------------------------------------- the planner
class PlanProvider(Protocol):
    """Where a session's commands come from."""

    name: str

    def start(self, goal_image: np.ndarray, goal_joints: np.ndarray | None, seed: int | None) -> None:
        """A new goal; ValueError when it cannot be planned toward. A provider that reads the goal's
        wrist from depth also takes ``goal_depth=`` (the session passes it only when it has one)."""

    def observe(self, image: np.ndarray, joints: np.ndarray) -> float:
        """Take the newest frame and joints; the latent cost of the frame to the goal (nan: none)."""

    def verdict(self, joints: np.ndarray) -> str | None:
        """A stop the provider decides itself (before the stop rule), or None."""

    def plan(self, joints: np.ndarray, should_stop: Callable[[], bool]) -> PlanStep:
        """The next command (``PlanStep.command``); ``stopped`` when ``should_stop`` cut it short."""


class WorldModelPlans:
    """The world model inside MPC with CEM: a fresh MPCPlanner per goal (``make_planner(seed)``),
    optionally with a subgoal's search settings (dexwm_planner.subgoals.SearchSettings) applied.

    ``held_hand``: with settings that hold the hand, the hand targets to keep (the last command of
    the previous subgoal: a closed hand's target lies inside the object it grips, so its measured
    joints would loosen the grip); None holds the hand where it is at the first replan."""

    name = "dexwm"

    def __init__(self, make_planner: Callable[[int | None], MPCPlanner], search: "SearchSettings | None" = None,
                 held_hand: np.ndarray | None = None):
        self.make_planner = make_planner
        self.search = search
        self.held_hand = None if held_hand is None else np.asarray(held_hand, dtype=np.float64).copy()
        self.planner: MPCPlanner | None = None
        self._hold: np.ndarray | None = None

    def start(self, goal_image, goal_joints, seed, goal_wrist=None, goal_depth=None):
        """``goal_wrist``: the goal's wrist position in the camera frame, where one is known;
        ``goal_depth``: the depth image aligned with the goal image, where one was captured."""
        self.planner = self.make_planner(seed)
        if self.search is not None:
            self.planner.configure(self.search.mpc_config(self.planner.config))
        self.planner.set_goal(goal_image, goal_joints=goal_joints, goal_wrist=goal_wrist, goal_depth=goal_depth)
        self._hold = None

    def observe(self, image, joints) -> float:
        self.planner.observe(image, joints)
        return self.planner.current_cost()

    def verdict(self, joints) -> str | None:
        return None

    def plan(self, joints, should_stop) -> PlanStep:
        if self.search is not None and self.search.hold_hand and self._hold is None:
            hand = self.held_hand if self.held_hand is not None else np.asarray(joints, dtype=np.float64)[ARM_JOINTS:]
            self._hold = np.r_[np.full(ARM_JOINTS, np.nan), hand]
        return self.planner.step(joints, should_stop, hold=self._hold)


# ------------------------------------------------------------------------------------ the checks
@dataclass(frozen=True)
class CommandLimits:
    lower: np.ndarray       # (23,) joint limits [rad]
    upper: np.ndarray
    max_step: np.ndarray    # (23,) per-step cap on each joint's change [rad]

    def check(self, command: np.ndarray, joints: np.ndarray) -> str | None:
        """The reason a command must not be sent from ``joints``, or None when it is safe."""
        return check_command(command, joints, self.lower, self.upper, self.max_step)


def check_command(command: np.ndarray, q: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                  max_step: np.ndarray) -> str | None:
    """The reason a joint command must not be sent, or None when it is safe."""
    command = np.asarray(command, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if command.shape != q.shape:
        return f"command has {command.shape} entries, expected {q.shape}"
    if not np.all(np.isfinite(command)):
        return "command contains NaN/inf"
    inside = (command >= lower - 1e-9) & (command <= upper + 1e-9)
    # A joint already past a limit may only move back towards it (see cem.project).
    towards = np.abs(np.clip(command, lower, upper) - command) <= np.abs(np.clip(q, lower, upper) - q) + 1e-9
    if not np.all(inside | towards):
        bad = int(np.flatnonzero(~(inside | towards))[0])
        return f"joint {bad} target {command[bad]:.4f} outside [{lower[bad]:.4f}, {upper[bad]:.4f}]"
    step = np.abs(command - q)
    if np.any(step > max_step + 1e-9):
        bad = int(np.argmax(step - max_step))
        return f"joint {bad} would move {step[bad]:.4f} rad, above the per-step cap {max_step[bad]:.4f}"
    return None


@dataclass(frozen=True)
class SessionConfig:
    stop_rule: StopRule
    limits: CommandLimits
    move_duration_s: float          # each step's targets are reached over this
    move_time_limit_s: float        # then the next frame is planned from wherever the joints are
    goal_tolerance: float           # per joint [rad]
    stale_timeout_s: float = 1.0    # inputs older than this (or no frame since the last move) pause
    stale_abort_s: float = 10.0     # ... and end the session when they stay so this long
    poll_s: float = 0.02            # how often a paused session looks at its inputs again

    def __post_init__(self):
        for name in ("move_duration_s", "move_time_limit_s", "goal_tolerance", "stale_timeout_s", "stale_abort_s",
                     "poll_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SessionConfig.{name} must be a positive number, got {value}")
        if self.move_time_limit_s < self.move_duration_s:
            raise ValueError(f"move_time_limit_s ({self.move_time_limit_s}) is shorter than move_duration_s "
                             f"({self.move_duration_s}): no move could finish")


# ---------------------------------------------------------------------------------- the results
@dataclass
class Progress:
    """Where the session stands (the planner node's status and diagnostics read it)."""

    steps: int = 0                          # executed steps
    current_cost: float = float("nan")      # latent cost of the newest observed frame
    best_cost: float = float("nan")
    planned_cost: float = float("nan")      # objective of the newest plan
    replan_seconds: float = float("nan")
    horizon: int = 0
    subgoal: int = 0                        # index of the active subgoal of a sequence (0: a single goal)
    subgoals: int = 1                       # subgoals in the sequence


@dataclass
class SessionResult:
    success: bool                   # stopped as reached
    steps: int                      # executed steps
    reason: str                     # reached | plateau | budget | canceled | stale_input: ... | ...
    final_cost: float               # latent cost of the last observed frame (nan: none)
    costs: list[float] = field(default_factory=list)           # before each replan, and at the stop
    replan_seconds: list[float] = field(default_factory=list)  # of each executed step


class _End(Exception):
    """Ends a session from inside a phase: the reason, and why the robot must hold (None: it keeps
    its last targets)."""

    def __init__(self, reason: str, hold: str | None):
        super().__init__(reason)
        self.reason, self.hold = reason, hold


# ---------------------------------------------------------------------------------- the session
class Cancellable:
    """A cancel request settable from any thread, combined with an external ``interrupt`` poll
    (a callable returning a reason to end now, or None)."""

    def __init__(self, interrupt: Callable[[], str | None] | None = None):
        self.interrupt = interrupt
        self._cancel_reason: str | None = None
        self._lock = threading.Lock()

    def cancel(self, reason: str = CANCELED) -> None:
        """End as soon as possible (thread-safe); the robot holds."""
        with self._lock:
            self._cancel_reason = self._cancel_reason or reason

    def interrupted(self) -> str | None:
        with self._lock:
            if self._cancel_reason is not None:
                return self._cancel_reason
        return self.interrupt() if self.interrupt is not None else None


class PlanningSession(Cancellable):
    """Plan and act toward one goal image until the stop rule, a failure or a cancel ends it."""

    def __init__(self, robot: JointGroupRobot, provider: PlanProvider, config: SessionConfig, *,
                 on_feedback: Callable[[Progress], None] | None = None,
                 on_state: Callable[[str], None] | None = None,
                 on_plan: Callable[[np.ndarray, PlanStep], None] | None = None,
                 interrupt: Callable[[], str | None] | None = None, log=None):
        """``on_feedback``: after every executed step; ``on_state``: at every state change;
        ``on_plan``: each plan and the frame it was made from, before it is executed;
        ``interrupt``: a reason to end now (e.g. "canceled", "shutdown") or None, polled
        throughout; ``log``: a logger with info/warning/error (a Python or an rclpy logger)."""
        self.robot, self.provider, self.config = robot, provider, config
        self.on_feedback, self.on_state, self.on_plan = on_feedback, on_state, on_plan
        super().__init__(interrupt)
        self.log = log if log is not None else logging.getLogger("dexwm_planner.session")
        self.progress = Progress()
        self._ran = False

    def run(self, goal_image: np.ndarray, goal_joints: np.ndarray | None = None,
            seed: int | None = None, goal_depth: np.ndarray | None = None) -> SessionResult:
        """Plan and act until the session ends; once per session (one goal, one episode).
        ``goal_depth``: the depth image aligned with the goal image, for providers that read the
        goal's wrist from it (passed only when given: other providers take no depth)."""
        if self._ran:
            raise RuntimeError("a planning session runs once: make a new one for the next goal")
        self._ran = True
        costs: list[float] = []
        replans: list[float] = []
        try:
            try:
                depth = {} if goal_depth is None else {"goal_depth": goal_depth}
                self.provider.start(goal_image, goal_joints, seed, **depth)
            except ValueError as e:   # e.g. an image the encoder cannot crop to its input size
                self.log.error(f"goal image refused by the planner: {e}")
                raise _End(f"bad_goal: {e}", hold=None) from None
            reason = self._loop(costs, replans)
            hold = None
        except _End as end:
            reason, hold = end.reason, end.hold
        except Exception:
            self._set_state(FAILED)
            self.robot.hold("error")       # never leave the robot moving on an unexpected error
            raise
        if hold is not None:
            self.robot.hold(hold)
        self._set_state(SUCCEEDED if reason == REACHED else CANCELED if reason == CANCELED else FAILED)
        return SessionResult(success=reason == REACHED, steps=self.progress.steps, reason=reason,
                             final_cost=self.progress.current_cost, costs=costs, replan_seconds=replans)

    # --------------------------------------------------------------------------------- the phases
    def _loop(self, costs: list[float], replans: list[float]) -> str:
        cfg = self.config
        progress = self.progress
        # Plan from data taken after the session started (not, say, the previous episode's end).
        arrived_after, taken_after = -math.inf, self.robot.now()
        while True:
            self._check_interrupt()
            image, joints = self._observe(arrived_after, taken_after)
            cost = float(self.provider.observe(image, joints))
            costs.append(cost)
            progress.current_cost = cost
            if math.isfinite(cost) and not cost >= progress.best_cost:   # also when best is still nan
                progress.best_cost = cost
            why = self.provider.verdict(joints) or cfg.stop_rule.decide([c for c in costs if math.isfinite(c)],
                                                                        progress.steps)
            if why is not None:
                self.log.info(f"stopped after {progress.steps} steps ({why}): latent distance {cost:.4f}")
                return why
            self._set_state(PLANNING)
            plan = self.provider.plan(joints, lambda: self.interrupted() is not None)
            self._check_interrupt()
            if plan.stopped:
                raise _End(CANCELED, hold=CANCELED)
            progress.planned_cost, progress.replan_seconds = float(plan.cost), float(plan.replan_seconds)
            progress.horizon = int(plan.horizon)
            unsafe = cfg.limits.check(plan.command, joints)
            if unsafe is not None:
                self.log.error(f"planned command refused: {unsafe}")
                raise _End(f"unsafe_command: {unsafe}", hold="unsafe command")
            if self.on_plan is not None:
                self.on_plan(image, plan)
            self._set_state(EXECUTING)
            command = np.asarray(plan.command, dtype=np.float64)
            moved = self.robot.move(command[:ARM_JOINTS], command[ARM_JOINTS:], cfg.move_duration_s,
                                    cfg.move_time_limit_s, cfg.goal_tolerance,
                                    lambda: self.interrupted() is not None)
            if moved.status == INTERRUPTED:
                self._check_interrupt()
                raise _End(CANCELED, hold=CANCELED)
            if moved.status != MOVED:
                raise _End(f"driver_error: {moved.message}", hold="driver error")
            # The next plan must see the result of this move: only frames that arrive from now on
            # and were taken from now on.
            arrived_after, taken_after = time.monotonic(), self.robot.now()
            progress.steps += 1
            replans.append(float(plan.replan_seconds))
            if self.on_feedback is not None:
                self.on_feedback(progress)
            self.log.info(f"step {progress.steps}: cost {cost:.4f} (plan {plan.cost:.4f}), "
                          f"replan {plan.replan_seconds:.2f} s, horizon {plan.horizon}")

    def _observe(self, arrived_after: float, taken_after: float) -> tuple[np.ndarray, np.ndarray]:
        """The newest frame and joints once they are usable (see the module's stale-input rule);
        pauses (the robot holds) while they are not, ends the session when that lasts."""
        cfg = self.config
        paused_since = None
        new_frame_deadline = time.monotonic() + cfg.stale_timeout_s
        while True:
            self._check_interrupt()
            inputs = {"camera image": self.robot.latest_image(), "joint states": self.robot.latest_joints()}
            now = time.monotonic()
            stale = [name for name, r in inputs.items() if r is None or now - r.received > cfg.stale_timeout_s]
            if not stale:
                arrived = inputs["camera image"].received > arrived_after
                early = [name for name, r in inputs.items() if 0.0 < r.stamp < taken_after]
                if arrived and not early:
                    if paused_since is not None:
                        self.log.info("inputs fresh again: resuming")
                    return inputs["camera image"].value, inputs["joint states"].value
                if now > new_frame_deadline:
                    stale = [f"{', '.join(early)} (nothing stamped after the last move: check the clocks)"
                             if arrived and early else "camera image (no new frame)"]
            if stale:
                if paused_since is None:
                    paused_since = now
                    self.log.warning(f"pausing: stale {', '.join(stale)}; the robot holds")
                    self.robot.hold("stale input")
                    self._set_state(PAUSED)
                elif now - paused_since > cfg.stale_abort_s:
                    raise _End(f"stale_input: {', '.join(stale)} for {cfg.stale_abort_s:.1f} s", hold="stale input")
            time.sleep(cfg.poll_s)

    def _check_interrupt(self) -> None:
        reason = self.interrupted()
        if reason is not None:
            raise _End(reason, hold=reason)

    def _set_state(self, state: str) -> None:
        if self.on_state is not None:
            self.on_state(state)
