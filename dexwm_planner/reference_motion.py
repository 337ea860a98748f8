"""Reference grasp motions that the grasp's CEM search starts from and follows.

The one in use (``reference_motion("grasp")``) is :class:`GuardedGraspMotion`: down until the hand
meets something, read from the robot's own joints, then close and lift (below). The fixed motion
:class:`GraspReference` it replaced is described first.

The paper's grasp planner initialises its CEM mean from a reference joint trajectory instead of the
current joints: a world model judges the samples, but the search starts where grasps happen. Ours is
defined relative to where the hand is when the grasp goal starts, so it needs no scene-specific
file: the palm moves straight down by ``depth`` with the hand as it is, the hand closes to the power
grasp (dexwm_robot.allegro.power_grasp), then the palm rises by ``lift`` with the hand closed. The
flange keeps its orientation throughout. The motion reads only the robot's own joints, never the
object's pose: it is the motion a grasp from a pre-grasp pose above the object makes (our pick
demonstrations end their approach 8 cm above the grasp, then close and lift 12 cm).

Rows are spaced so that no joint changes by more than the planner's per-step cap between rows, so
row k is a step the robot can execute k steps after the goal starts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dexwm_robot import allegro
from dexwm_robot.ik import solve_arm_ik
from dexwm_robot.joints import ARM_DOF

REFERENCES = ("none", "grasp")


@dataclass(frozen=True)
class GraspReference:
    """Down by ``depth`` [m], close, up by ``lift`` [m], in ``descend_rows`` / ``lift_rows`` IK waypoints."""

    depth: float = 0.08
    lift: float = 0.12
    descend_rows: int = 2
    lift_rows: int = 3

    def __post_init__(self):
        if not (0.0 <= self.depth <= 0.3 and 0.0 <= self.lift <= 0.3):
            raise ValueError(f"grasp reference depth and lift must be in [0, 0.3] m, got {self.depth}, {self.lift}")
        if self.descend_rows < 1 or self.lift_rows < 1:
            raise ValueError("grasp reference needs at least one descend row and one lift row")

    def joints(self, kinematics, q0: np.ndarray, max_step: np.ndarray) -> np.ndarray:
        """Joint rows (K, 23) of the motion from ``q0`` (23,), no row more than ``max_step`` (23,)
        from the one before (``q0`` before the first)."""
        q0 = np.asarray(q0, dtype=np.float64)
        if q0.shape != (len(kinematics.lower),) or not np.all(np.isfinite(q0)):
            raise ValueError(f"start joints must be {len(kinematics.lower)} finite values, got shape {q0.shape}")
        palm0 = kinematics.palm_and_tips_world(q0)[0]
        rotation = kinematics.ee_pose(q0)[1]
        down = np.array([0.0, 0.0, -1.0])
        waypoints = [q0]
        q = q0.copy()
        for i in range(1, self.descend_rows + 1):
            q = self._reach(kinematics, q, palm0 + down * self.depth * i / self.descend_rows, rotation)
            waypoints.append(q)
        q = np.r_[q[:ARM_DOF], allegro.power_grasp(q[ARM_DOF:])]
        waypoints.append(q)
        bottom = palm0 + down * self.depth
        for i in range(1, self.lift_rows + 1):
            q = self._reach(kinematics, q, bottom - down * self.lift * i / self.lift_rows, rotation)
            waypoints.append(q)
        rows = _densify(np.stack(waypoints), np.asarray(max_step, dtype=np.float64))[1:]
        return np.clip(rows, kinematics.lower, kinematics.upper)

    @staticmethod
    def _reach(kinematics, q, palm_target, rotation) -> np.ndarray:
        # No null-space drift: consecutive waypoints stay on one IK branch, close to each other.
        arm = solve_arm_ik(kinematics, q, palm_target, rotation, point="palm", posture_gain=0.0)
        return np.r_[arm, q[ARM_DOF:]]


def _densify(waypoints: np.ndarray, max_step: np.ndarray) -> np.ndarray:
    """Waypoints (N, D) with linear rows inserted so that no joint changes by more than ``max_step``
    between consecutive rows (the first waypoint kept)."""
    rows = [waypoints[0]]
    for a, b in zip(waypoints[:-1], waypoints[1:]):
        n = max(int(np.ceil(np.max(np.abs(b - a) / max_step) - 1e-9)), 1)
        rows.extend(a + (b - a) * k / n for k in range(1, n + 1))
    return np.stack(rows)


@dataclass(frozen=True)
class GuardedGrasp:
    """With ``preshape``, first the hand to the power grasp's open posture (allegro.POWER_GRASP_PRESHAPE)
    where the arm is, until every hand joint is within ``preshape_tolerance`` [rad] of it (at most
    ``preshape_steps`` steps; none from a hand already there). Then down in ``step`` [m] increments
    until the hand meets something (the measured palm stays more than ``lag`` [m] above the last
    commanded one) or ``max_depth`` [m] is reached; then close to the power grasp over ``close_steps``
    steps where the hand stopped; then up by ``lift`` [m] in ``lift_rows`` steps."""

    preshape: bool = True
    preshape_tolerance: float = 0.15
    preshape_steps: int = 5
    step: float = 0.02
    lag: float = 0.01
    max_depth: float = 0.16
    close_steps: int = 4
    lift: float = 0.12
    lift_rows: int = 3

    def __post_init__(self):
        if not (0.005 <= self.step <= 0.05 and 0.002 <= self.lag <= 0.05 and self.step <= self.max_depth <= 0.3
                and 0.0 <= self.lift <= 0.3):
            raise ValueError(f"bad guarded grasp distances: {self}")
        if not (0.01 <= self.preshape_tolerance <= 0.5 and 1 <= self.preshape_steps <= 20):
            raise ValueError(f"bad guarded grasp preshape: {self}")
        if self.close_steps < 1 or self.lift_rows < 1:
            raise ValueError("a guarded grasp needs at least one close step and one lift row")


class GuardedGraspMotion:
    """The grasp reference with feedback: the fixed motion (GraspReference) goes down a set 8 cm, so
    a pre-grasp pose 2 cm too high closes the hand above the object (scripts/grasp_tolerance.py:
    held in 25 % of stages against 90 % from the scripted pose). This one goes down until the hand
    meets the object or the table, read from the robot's own joints alone (a position-controlled arm
    stalls on contact: the measured palm stays above the commanded one), then closes there and lifts.

    ``next_rows(q, horizon, sent)`` once per executed step, with the joints measured then (and the
    command executed last): the rows of the next ``horizon`` steps (the first is the step about to
    be executed; the rest assume no contact)."""

    def __init__(self, kinematics, q0: np.ndarray, config: GuardedGrasp = GuardedGrasp()):
        q0 = np.asarray(q0, dtype=np.float64)
        if q0.shape != (len(kinematics.lower),) or not np.all(np.isfinite(q0)):
            raise ValueError(f"start joints must be {len(kinematics.lower)} finite values, got shape {q0.shape}")
        # Its rows are not spaced under the planner's per-step cap (a 2 cm step is well inside it; the
        # hand closes over several steps because the cap holds each back): the planner projects them.
        self.kin, self.config = kinematics, config
        self.palm0 = kinematics.palm_and_tips_world(q0)[0]
        self.rotation = kinematics.ee_pose(q0)[1]
        # A reach planned toward a goal image leaves the fingers, the thumb above all, where the image
        # barely shows them (1.4-1.8 rad off the scripted pre-grasp hand in the composite chain), and a
        # power grasp closed from there misses: the hand takes the open grasp posture first.
        hand = allegro.POWER_GRASP_PRESHAPE if config.preshape else q0[ARM_DOF:]
        self.closed_hand = allegro.power_grasp(hand)
        self.open_hand = np.array(hand, dtype=np.float64)
        start = "preshape" if config.preshape and not self._preshaped(q0) else "descend"
        # phase, steps so far in it (preshape, down), close steps so far, lift rows so far, the arm where
        # the hand stopped, the last row
        self.state = (start, 0, 0, 0, None, np.r_[q0[:ARM_DOF], self.open_hand] if config.preshape else q0)
        self.contact_depth: float | None = None   # how far down the hand met something [m]

    @property
    def done(self) -> bool:
        return self.state[0] == "done"

    def _preshaped(self, q) -> bool:
        return bool(np.abs(np.asarray(q)[ARM_DOF:] - allegro.POWER_GRASP_PRESHAPE).max() <= self.config.preshape_tolerance)

    def _palm(self, q) -> np.ndarray:
        return self.kin.palm_and_tips_world(q)[0]

    def _reach(self, q, palm_target) -> np.ndarray:
        arm = solve_arm_ik(self.kin, q, palm_target, self.rotation, point="palm", posture_gain=0.0)
        return np.r_[arm, q[ARM_DOF:]]

    def _next(self, state):
        """(the next row, the state after it) from ``state``, assuming no contact on the way."""
        phase, down, closes, lifts, bottom, last = state
        cfg = self.config
        if phase == "preshape":
            # The arm stays where the motion started; the hand is sent to the open posture (the
            # planner's per-step cap spreads the change over steps).
            return last, state
        if phase == "descend" and (down + 1) * cfg.step > cfg.max_depth + 1e-9:
            phase, bottom = "close", last[:ARM_DOF].copy()
        if phase == "descend":
            row = self._reach(last, self.palm0 - np.array([0.0, 0.0, (down + 1) * cfg.step]))
            return row, ("descend", down + 1, closes, lifts, bottom, row)
        if phase == "close":
            row = np.r_[bottom, self.closed_hand]
            return row, ("close" if closes + 1 < cfg.close_steps else "lift", down, closes + 1, lifts, bottom, row)
        if phase == "lift":
            start = self._palm(np.r_[bottom, self.closed_hand])
            row = self._reach(last, start + np.array([0.0, 0.0, cfg.lift * (lifts + 1) / cfg.lift_rows]))
            row[ARM_DOF:] = self.closed_hand
            return row, ("lift" if lifts + 1 < cfg.lift_rows else "done", down, closes, lifts + 1, bottom, row)
        return last, state

    def next_rows(self, q: np.ndarray, horizon: int, sent: np.ndarray | None = None) -> np.ndarray:
        """``sent``: the command actually executed last (a planner's search may move off the row it
        was given): contact is when the measured palm stays above it; default: the last row given."""
        q = np.asarray(q, dtype=np.float64)
        phase, down, closes, lifts, bottom, last = self.state
        if phase == "preshape":
            if self._preshaped(q) or down >= self.config.preshape_steps:
                self.state = phase, down, closes, lifts, bottom, last = ("descend", 0, closes, lifts, bottom, last)
            else:
                self.state = ("preshape", down + 1, closes, lifts, bottom, last)
                return np.clip(np.repeat(last[None], horizon, axis=0), self.kin.lower, self.kin.upper)
        commanded = last if sent is None else np.asarray(sent, dtype=np.float64)
        if phase == "descend" and down > 0 and self._palm(q)[2] - self._palm(commanded)[2] > self.config.lag:
            # Contact: close where the hand is (its measured arm joints), not where it was sent.
            self.contact_depth = float(self.palm0[2] - self._palm(q)[2])
            self.state = ("close", down, closes, lifts, q[:ARM_DOF].copy(), last)
        rows, state = [], self.state
        for i in range(horizon):
            row, state = self._next(state)
            rows.append(row)
            if i == 0:
                committed = state
        self.state = committed
        return np.clip(np.stack(rows), self.kin.lower, self.kin.upper)


def reference_motion(name: str, kinematics):
    """``q0 ->`` the named reference from joints ``q0`` (None for "none"): "grasp" the guarded grasp
    (a GuardedGraspMotion, rows given step by step with feedback); ValueError naming the known ones."""
    if name == "none":
        return None
    if name == "grasp":
        return lambda q0: GuardedGraspMotion(kinematics, q0)
    raise ValueError(f"unknown reference motion {name!r}; known: {', '.join(REFERENCES)}")
