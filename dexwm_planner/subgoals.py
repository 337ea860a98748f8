"""A sequence of subgoal images, each planned toward by one planning session with its own search settings.

One goal image and a three-step horizon cannot express "grasp, lift, carry, put down": a lab user
shows the robot a few key frames instead, and the planner chains them. Each subgoal is one
:class:`dexwm_planner.session.PlanningSession` (same stale-input rule, command check and cancel);
the sequence advances when the subgoal's session ends by the planner's own stop rule
(dexwm_planner.stop_rule: ``reached`` or ``plateau``, the rule that ends a single goal; ``budget``
advances too, and the result says so). Any other end (cancel, stale input, driver error, unsafe
command, bad goal) ends the sequence there, the robot holding as the session left it.

Per-subgoal search settings (:class:`SearchSettings`) change what the CEM samples and when the stop
rule ends the subgoal: finger sampling std (the paper's planner samples fingers with std 0.01 rad
while placing so that the object stays held), a hand held at its last targets, an end-effector
orientation term (the paper's grasp, weight 0.4), a step budget, a stop threshold. Named profiles
(``PHASES``) give the defaults of reach -> grasp -> lift -> carry -> release (``PICK_PLACE``).

ROS-free: the planner node (one Execute goal with several goal images or a captured sequence), the
in-process evaluation (``dexwm-eval --subgoals``) and the tests run this object.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from dexwm_robot.tasks import TASK_KINDS

from .mpc import EXECUTE, ORIENTATION_REFERENCES, MPCConfig, PlanStep
from .reference_motion import REFERENCES
from .session import ARM_JOINTS, CANCELED, FAILED, SUCCEEDED, Cancellable, JointGroupRobot, PlanningSession, \
    PlanProvider, Progress, SessionConfig, SessionResult
from .stop_rule import BUDGET, PLATEAU, REACHED, StopRule

# Session ends after which the sequence goes on to the next subgoal.
ADVANCES = (REACHED, PLATEAU, BUDGET)
# Bounds of the settings a request may carry (a sequence comes from a user: refuse nonsense early).
STD_RANGE = (1e-4, 2.0)
ORIENTATION_RANGE = (0.0, 100.0)
POSE_WEIGHT_SCALE_RANGE = (0.0, 100.0)
MAX_STEPS_RANGE = (1, 10000)
PLATEAU_STEPS_RANGE = (0, 1000)


@dataclass(frozen=True)
class SearchSettings:
    """How one subgoal is searched for and when it is over. None = the planner's own setting."""

    phase: str = "reach"                     # name of the profile (bookkeeping, logs)
    kind: str = "reach"                      # task kind whose fitted stop threshold applies
    std_arm: float | None = None             # initial CEM std of the arm joints [rad]
    std_hand: float | None = None            # ... of the hand joints [rad]
    hold_hand: bool = False                  # hand joints not searched: kept at their targets
    orientation_weight: float | None = None  # end-effector orientation term (reference: the orientation at start)
    max_steps: int | None = None             # executed steps of this subgoal
    done_cost: float | None = None           # stop threshold (latent MSE); None = fitted for ``kind``
    plateau_steps: int | None = None         # plateau rule of this subgoal (0 = off)
    reference: str | None = None             # motion the CEM starts from (MPCConfig.reference)
    execute: str | None = None               # "best" sample or the CEM's "mean" (MPCConfig.execute)
    orientation_reference: str | None = None  # "start" or "goal_image" (MPCConfig.orientation_reference)
    # The goal-pose terms' weights (goal wrist, orientation) times this: a key frame that must be
    # met precisely (the pose a grasp starts from) leans on them more than on the latent cost.
    pose_weight_scale: float | None = None

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"subgoal {self.phase!r}: kind must be one of {', '.join(TASK_KINDS)}, got {self.kind!r}")
        for name, (lo, hi) in (("std_arm", STD_RANGE), ("std_hand", STD_RANGE),
                               ("orientation_weight", ORIENTATION_RANGE),
                               ("pose_weight_scale", POSE_WEIGHT_SCALE_RANGE)):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"subgoal {self.phase!r}: {name} must be in [{lo:g}, {hi:g}], got {value}")
        for name, (lo, hi) in (("max_steps", MAX_STEPS_RANGE), ("plateau_steps", PLATEAU_STEPS_RANGE)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and lo <= value <= hi):
                raise ValueError(f"subgoal {self.phase!r}: {name} must be an integer in {lo}..{hi}, got {value}")
        if self.reference is not None and self.reference not in REFERENCES:
            raise ValueError(f"subgoal {self.phase!r}: reference must be one of {', '.join(REFERENCES)}, "
                             f"got {self.reference!r}")
        if self.orientation_reference is not None and self.orientation_reference not in ORIENTATION_REFERENCES:
            raise ValueError(f"subgoal {self.phase!r}: orientation_reference must be one of "
                             f"{', '.join(ORIENTATION_REFERENCES)}, got {self.orientation_reference!r}")
        if self.execute is not None and self.execute not in EXECUTE:
            raise ValueError(f"subgoal {self.phase!r}: execute must be one of {', '.join(EXECUTE)}, got {self.execute!r}")
        if self.done_cost is not None and not (math.isfinite(self.done_cost) and self.done_cost >= 0):
            raise ValueError(f"subgoal {self.phase!r}: done_cost must be a finite number >= 0, got {self.done_cost}")

    def mpc_config(self, base: MPCConfig) -> MPCConfig:
        """The planner's settings with this subgoal's changes."""
        cem = base.cem.with_(**{k: v for k, v in (("std_arm", self.std_arm), ("std_hand", self.std_hand))
                                if v is not None})
        objective = base.objective
        if self.orientation_weight is not None:
            objective = replace(objective, orientation_weight=self.orientation_weight)
        if self.pose_weight_scale is not None:
            objective = replace(objective, orientation_weight=objective.orientation_weight * self.pose_weight_scale,
                                goal_wrist_weight=objective.goal_wrist_weight * self.pose_weight_scale)
        return replace(base, cem=cem, objective=objective,
                       reference=base.reference if self.reference is None else self.reference,
                       execute=base.execute if self.execute is None else self.execute,
                       orientation_reference=(base.orientation_reference if self.orientation_reference is None
                                              else self.orientation_reference))

    def stop_rule(self, base: StopRule, fitted_done_cost: Callable[[str], float] | None = None) -> StopRule:
        """The stop rule of this subgoal: the base rule with its budget, plateau and threshold
        (``fitted_done_cost(kind)`` when it has none of its own; else the base rule's)."""
        done = self.done_cost
        if done is None:
            done = fitted_done_cost(self.kind) if fitted_done_cost is not None else base.done_cost
        return replace(base, done_cost=float(done),
                       max_steps=base.max_steps if self.max_steps is None else self.max_steps,
                       plateau_steps=base.plateau_steps if self.plateau_steps is None else self.plateau_steps)


# Default settings per phase of a manipulation. Arm std stays the planner's (0.3 rad) where the arm
# travels; fingers follow the paper's per-task choices.
PHASES: dict[str, SearchSettings] = {
    # Move the open hand somewhere (e.g. above the object): everything searched.
    "reach": SearchSettings(phase="reach", kind="reach"),
    # The pose a grasp starts from (hand open just above the object): a grasp forgives 1 cm sideways
    # and 15 deg of yaw, not 2-3 cm (README, "How precisely a grasp must start"), so the goal wrist
    # and orientation terms (where the planner has them) weigh 5 times more than elsewhere.
    "approach": SearchSettings(phase="approach", kind="reach", pose_weight_scale=5.0),
    # Close on the object (and lift it, when no lift subgoal follows): the reference grasp motion
    # (the hand to the open grasp posture, down until it meets something, close, up: at most 20 steps;
    # dexwm_planner.reference_motion),
    # searched within 0.01 rad of it with the CEM's mean executed, keeping
    # the approach orientation (paper: grasp, weight 0.4), run to its end (stop threshold 0: the
    # latent cost scores a hand closed beside the object as close to this goal as one holding it, and
    # stopped grasps early). Wider searches let the world model pull the hand off the grasp (README,
    # "Grasp"): this phase's success is the reference's, the world model only picks among near copies.
    "grasp": SearchSettings(phase="grasp", kind="grasp", orientation_weight=0.4, reference="grasp",
                            std_arm=0.01, std_hand=0.01, execute="mean", done_cost=0.0, max_steps=20,
                            orientation_reference="start"),
    # Lift the object in the closed hand: the hand keeps the targets that close it, only the arm moves.
    "lift": SearchSettings(phase="lift", kind="grasp", hold_hand=True),
    # Carry the object: the hand keeps the targets that close it, only the arm moves.
    "carry": SearchSettings(phase="carry", kind="place", hold_hand=True),
    # Object in hand near its target (the paper's place): fingers barely sampled so it stays held.
    "place": SearchSettings(phase="place", kind="place", std_hand=0.01),
    # Put it down and open: small arm motions near the target, fingers free to open.
    "release": SearchSettings(phase="release", kind="place", std_arm=0.1),
}
# reach -> grasp -> lift -> carry -> release: pre-grasp pose, closed on the object, lifted, above the
# target, released; four subgoals leave out the lift (the grasp subgoal shows the object lifted).
PICK_PLACE = ("reach", "grasp", "lift", "carry", "release")
PICK_PLACE_WITHOUT_LIFT = ("reach", "grasp", "carry", "release")


def phase_settings(name: str) -> SearchSettings:
    """The named profile; ValueError naming the known ones."""
    try:
        return PHASES[name]
    except KeyError:
        raise ValueError(f"unknown subgoal phase {name!r}; known: {', '.join(PHASES)}") from None


def default_phases(count: int) -> tuple[str, ...]:
    """Phases of a sequence whose subgoals name none: reach -> grasp -> lift -> carry -> release for
    five, the same without the lift for four, reach for every subgoal otherwise."""
    for phases in (PICK_PLACE, PICK_PLACE_WITHOUT_LIFT):
        if count == len(phases):
            return phases
    return ("reach",) * count


@dataclass
class Subgoal:
    image: np.ndarray                        # (H, W, 3) uint8
    search: SearchSettings = field(default_factory=SearchSettings)
    joints: np.ndarray | None = None         # orientation reference, when known (a captured frame's)
    label: str = ""                          # where it came from (logs)
    depth: np.ndarray | None = None          # (H, W) [m] aligned with the image, when captured


@dataclass
class SubgoalOutcome:
    index: int
    phase: str
    reason: str                              # the session's end: reached | plateau | budget | canceled | ...
    steps: int
    final_cost: float
    best_cost: float


@dataclass
class SequenceResult:
    """Shaped like a SessionResult (``success``, ``steps``, ``reason``, ``final_cost``, ``costs``,
    ``replan_seconds``: over the whole sequence), plus one outcome per subgoal that ran."""

    success: bool                            # every subgoal advanced and the last one was reached
    steps: int
    reason: str                              # the last session's end reason
    final_cost: float                        # latent cost of the last frame to the last subgoal that ran
    costs: list[float] = field(default_factory=list)
    replan_seconds: list[float] = field(default_factory=list)
    subgoals: list[SubgoalOutcome] = field(default_factory=list)
    completed: bool = False                  # every subgoal ended by the stop rule (reached/plateau/budget)

    @property
    def budget_ends(self) -> int:
        """Subgoals that advanced only because their step budget ran out."""
        return sum(o.reason == BUDGET for o in self.subgoals)


ProviderFactory = Callable[[SearchSettings, "np.ndarray | None"], PlanProvider]


class SubgoalSequence(Cancellable):
    """Run subgoals in order, one planning session each, advancing by the stop rule."""

    def __init__(self, robot: JointGroupRobot, provider_for: ProviderFactory, config: SessionConfig, *,
                 fitted_done_cost: Callable[[str], float] | None = None,
                 on_subgoal: Callable[[int, Subgoal, Progress], None] | None = None,
                 on_feedback: Callable[[Progress], None] | None = None,
                 on_state: Callable[[str], None] | None = None,
                 on_plan: Callable[[np.ndarray, PlanStep], None] | None = None,
                 interrupt: Callable[[], str | None] | None = None, log=None):
        """``provider_for(search, held_hand)``: the plan provider of a subgoal (``held_hand``: the
        hand targets of the last command, for settings that hold the hand); ``fitted_done_cost(kind)``:
        the stop threshold of a subgoal without its own; ``on_subgoal(index, subgoal, progress)``: when
        a subgoal becomes active (``progress``: its session's, updated as it runs); the other callbacks as PlanningSession's, for every subgoal's session
        (``Progress.subgoal`` / ``subgoals`` say which)."""
        self.robot, self.provider_for, self.config = robot, provider_for, config
        self.fitted_done_cost = fitted_done_cost
        self.on_subgoal, self.on_feedback, self.on_state, self.on_plan = on_subgoal, on_feedback, on_state, on_plan
        super().__init__(interrupt)   # a cancel ends the active subgoal and the sequence
        self.log = log if log is not None else logging.getLogger("dexwm_planner.subgoals")
        self.session: PlanningSession | None = None
        self.progress = Progress()
        self._last_command: np.ndarray | None = None
        self._ran = False

    def _planned(self, image: np.ndarray, plan: PlanStep) -> None:
        self._last_command = np.asarray(plan.command, dtype=np.float64).copy()
        if self.on_plan is not None:
            self.on_plan(image, plan)

    def _session_state(self, state: str) -> None:
        # A subgoal's end is not the sequence's: its final state is set once, when the sequence ends.
        if self.on_state is not None and state not in (SUCCEEDED, FAILED, CANCELED):
            self.on_state(state)

    def _set_state(self, state: str) -> None:
        if self.on_state is not None:
            self.on_state(state)

    def run(self, subgoals: list[Subgoal], seed: int | None = None) -> SequenceResult:
        """Plan and act toward each subgoal in turn; once per sequence."""
        if self._ran:
            raise RuntimeError("a subgoal sequence runs once: make a new one for the next sequence")
        self._ran = True
        if not subgoals:
            raise ValueError("a subgoal sequence needs at least one subgoal")
        try:
            result = self._run(subgoals, seed)
        except Exception:
            self._set_state(FAILED)       # the session has left the robot holding
            raise
        self._set_state(SUCCEEDED if result.success else CANCELED if result.reason == CANCELED else FAILED)
        return result

    def _run(self, subgoals: list[Subgoal], seed: int | None) -> SequenceResult:
        result = SequenceResult(success=False, steps=0, reason="", final_cost=float("nan"))
        for index, subgoal in enumerate(subgoals):
            config = replace(self.config, stop_rule=subgoal.search.stop_rule(self.config.stop_rule,
                                                                            self.fitted_done_cost))
            held = None if self._last_command is None else self._last_command[ARM_JOINTS:]
            session = PlanningSession(self.robot, self.provider_for(subgoal.search, held), config,
                                      on_feedback=self.on_feedback, on_state=self._session_state, on_plan=self._planned,
                                      interrupt=self.interrupted, log=self.log)
            session.progress.subgoal, session.progress.subgoals = index, len(subgoals)
            self.session, self.progress = session, session.progress
            if self.on_subgoal is not None:
                self.on_subgoal(index, subgoal, session.progress)
            self.log.info(f"subgoal {index + 1}/{len(subgoals)} ({subgoal.search.phase}"
                          f"{', ' + subgoal.label if subgoal.label else ''}): at most {config.stop_rule.max_steps} "
                          f"steps, stop below latent distance {config.stop_rule.done_cost:.4f}")
            one: SessionResult = session.run(subgoal.image, subgoal.joints, seed=seed, goal_depth=subgoal.depth)
            result.steps += one.steps
            result.costs += one.costs
            result.replan_seconds += one.replan_seconds
            result.reason, result.final_cost = one.reason, one.final_cost
            result.subgoals.append(SubgoalOutcome(index=index, phase=subgoal.search.phase, reason=one.reason,
                                                  steps=one.steps, final_cost=one.final_cost,
                                                  best_cost=session.progress.best_cost))
            if one.reason not in ADVANCES:
                return result
            if one.reason == BUDGET and config.stop_rule.done_cost > 0:
                self.log.warning(f"subgoal {index + 1}/{len(subgoals)} not reached within its "
                                 f"{config.stop_rule.max_steps} steps: advancing anyway")
            elif one.reason == BUDGET:
                # No stop by cost (e.g. the grasp runs its reference motion): its budget is its end.
                self.log.info(f"subgoal {index + 1}/{len(subgoals)} ran its {config.stop_rule.max_steps} steps")
        result.completed = True
        result.success = result.subgoals[-1].reason == REACHED
        return result
