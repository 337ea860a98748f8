"""dexwm-eval: task success of the DexWM planner in simulation, with baselines on the same episodes.

    dexwm-eval --protocol paper|composite --task T --episodes N --seed S --out results.json
               [--planner-seeds K] [--through-ros] [--checkpoint PATH] [--max-steps K] [--preset cpu|paper]
               [--search SAMPLES,ELITES,ITERATIONS]   (a search-budget sweep: the CEM size instead of the preset's)
               [--subgoals [--subgoal-marks M,M,...]]   (composite pick-place through subgoal images)
               [--hand-pixel-weight W]   (the planned-hand term's weight; config/planner.yaml's by default)
               [--stage-settings none|phases]   (paper stages searched with their phase's settings)
               [--hand-pixel-keypoints all|wrist|size_free] [--hand-proposal]   (planner variants, README)
    dexwm-eval --fit-stop [--checkpoint PATH]      fit the planner's stop thresholds (see below)
    dexwm-eval --report DIR                         tables and plots of saved results

**Protocols** (dexwm_sim.tasks has the details):
* ``paper`` (tasks ``reach``, ``grasp``, ``place``): the stages of a scripted pick-and-place
  demonstration, cut as the DexWM paper's simulation evaluation cuts them; start state at the
  stage's start, goal image at its end. Seeds whose demonstration fails are skipped (listed in the
  JSON as ``skipped_seeds``), as the paper hand-picks 50 successful demonstrations.
* ``composite`` (tasks ``reach``, ``reach-grasp``, ``pick-place``): whole tasks from a random start.

**No oracle.** The policy sees the camera frame, the joint positions and the goal image, nothing
else: it decides itself when it is done, by the planner's stop rule (dexwm_planner.stop_rule: latent
cost below a threshold fitted on demonstrations, a plateau, or the step budget). Then the robot holds
its last command for ``--hold-s`` (2 s) of simulated time, and the episode is judged:
``success`` (``success_rule: final_hold_2s``): the task's rule held at every control step of that
hold; ``success_paper_rule``: the paper's rule (10 consecutive control steps at any time of the
episode); for grasp also ``success_strict``: object raised >= 3 cm above its resting height and in
the hand at the end.

**Baselines**, same episodes and step budget, in-process: ``random_shooting_wm`` (the world model
and stop rule with one CEM iteration whose samples equal the CEM's total evaluations per replan),
``oracle_goal_joints`` (PRIVILEGED upper bound: drives the joints straight to the goal state's
joints under the same per-step cap), ``goal_hand_ik`` (no world model: the joints whose hand
matches the goal image's decoded hand, dexwm_planner.hand_proposal, driven to straight),
``hold_still`` (never moves), ``random_joint_walk`` (ignores
the goal and the model), and every ablation checkpoint that exists (``models/dexwm_sim_no_hc.pt``:
without the hand-consistency loss; ``models/dexwm_sim_no_pretrain.pt``: without pre-training; or
``--ablation NAME=PATH``).

**Subgoals** (``--subgoals``, composite ``pick-place`` only): the planner gets the scripted
solution's images at five marks (hand open and turned 20 cm above the object, the pre-grasp pose,
object grasped and lifted, object carried above its target, object released there;
``dexwm_sim.tasks.make_subgoals``) instead of the final image alone, and runs them as the planner
node runs a sequence (dexwm_planner.subgoals: one planning session per subgoal with the reach,
approach, grasp, carry, release search settings (``subgoal_phases``), advancing by the stop rule; ``--max-steps`` is then per
subgoal, default 12, except where a phase has its own: the grasp runs its reference motion, at most
20 steps). By default each goal's wrist is read from its depth image (``--goal-wrist-depth 100``)
and its hand's orientation from its image (``--goal-orientation 2``): ``SUBGOAL_CHAIN``.
``--subgoal-marks`` picks other marks, e.g. ``pregrasp,lifted,above,released`` (the chain before,
with both weights 0). Images and the goals' depth images only: the subgoal states' joints are not
given (except to the PRIVILEGED oracles ``--goal-wrist-oracle`` and ``--goal-orientation-oracle``,
which read each subgoal state's wrist or flange). Baselines that plan toward one goal only are skipped (``skipped_baselines``);
``subgoal_reasons`` of every outcome says how each subgoal ended. The judge also reads the
simulation at each subgoal's end (``subgoal_progress``; after the fact, never by the policy): how far
the palm and the object are from where the scripted solution had them, and whether the hand holds
the object; ``subgoal_funnel`` sums that up per subgoal (medians, the fractions within 5 cm, held):
where the chain breaks.

**Variance**: ``--planner-seeds K`` runs every episode with K CEM seeds (baselines with
``--baseline-planner-seeds``, default 1); success is reported over episodes x seeds, with
``flip_rate``: the fraction of episodes whose outcome differs between seeds.

Episode seeds start at ``EVAL_SEED_OFFSET + S`` = 1,000,000 + S, disjoint from the seeds of the
training data (``dexwm-collect``: ``seed * 1,000,003 + index``; see models/README.md) and from the
stop-threshold fit (``FIT_SEED_OFFSET`` = 500,000).

Both modes run the same planning session (dexwm_planner.session.PlanningSession: stale-input rule,
command-safety check, stop rule). In-process (default) the planner and the simulation run in this
process: the session drives the lock-step simulation directly (dexwm_planner.sim_robot); with
``--through-ros`` the same episodes run through the ROS graph (sim node + planner node, separate
processes started by ``dexwm-up``), where the planner node's session drives the lock-step sim node
through MoveJoints (same frames, planner settings, stop rule and CEM seeds). Through ROS the episode
is judged the same way: the sim node's ``/sim/hold`` lets ``--hold-s`` of simulated time pass with the
last targets kept and reports whether the rule held at every control step.

Output JSON: ``protocol``, ``task``, ``sim_task``, ``episodes``, ``planner_seeds``, ``success_rule``,
``success_rate``, ``ci95`` (Wilson, over episodes x seeds), ``success_rate_paper_rule``,
``success_rate_strict`` (grasp), ``flip_rate``, ``replan_seconds_median``, ``stop_reasons``,
``palm_error_m_median`` (in-process: the palm's distance at the stop from the goal state's, a judge's reading),
``baselines`` (name -> ``{"success_rate", "ci95", ...}``), ``outcomes`` (per run), ``skipped_seeds``,
``settings``; and a bar plot next to it (``.png``).

``--fit-stop`` fits the stop threshold of each task kind on the demonstrations of seeds from
500,000: the latent cost to the stage's goal image of every frame of the stage, split by the task's
rule (grasp: the strict rule), the largest threshold at which at most 1 % of the failing frames
would stop the planner (a false stop ends an episode that could still succeed). It writes ``<checkpoint>.stop.json``, which the planner node and this
evaluation read.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from dexwm_robot.tasks import TASK_KINDS
from dexwm_sim.tasks import COMPOSITE_TASKS

EVAL_SEED_OFFSET = 1_000_000
FIT_SEED_OFFSET = 500_000
PROTOCOL_TASKS = {"paper": TASK_KINDS, "composite": COMPOSITE_TASKS}
# Executed MPC steps per episode unless --max-steps says otherwise: a paper stage is one piece of a
# demonstration (the paper executes 3 large steps; our model's step is 0.2 s, see README), a
# composite task is a whole pick or pick-and-place.
DEFAULT_MAX_STEPS = {"paper": 12, "composite": 30}
# With subgoals (--subgoals) the budget is per subgoal, each about one paper stage's piece of the task.
DEFAULT_SUBGOAL_MAX_STEPS = 12
# --stage-settings: "none" = the planner node's search for every stage; "phases" = each paper stage
# searched with its phase profile (dexwm_planner.subgoals.PHASES).
STAGE_SETTINGS = ("none", "phases")
HOLD_S = 2.0
# How long the stop rule waits for progress before it gives up (executed steps; 0 = off). Off, as the
# planner node's default: on the tuning seeds a 5-step plateau stopped reaches early (README, "Stop
# rule"); the figures measured with it say plateau_steps 5 in their JSON (--plateau-steps 5).
PLATEAU_STEPS = 0
# Weight of the planned-hand keypoint term (dexwm_planner.objective), as config/planner.yaml ships it.
HAND_PIXEL_WEIGHT = 1e-3


def sim_task(protocol: str, task: str) -> str:
    """The simulation's task name (dexwm_sim.tasks.TASKS) of a protocol's task."""
    if protocol not in PROTOCOL_TASKS or task not in PROTOCOL_TASKS[protocol]:
        raise ValueError(f"unknown task {task!r} for protocol {protocol!r}; choose one of "
                         f"{', '.join(PROTOCOL_TASKS.get(protocol, ()))}")
    return f"paper-{task}" if protocol == "paper" else task


def sim_camera_size() -> tuple[int, int]:
    """(width, height) of the sim node's camera frames and goal images (config/sim.yaml): the
    in-process episodes render at the same size, so both modes feed the model the same pixels."""
    import yaml

    from dexwm_ros.graph import config_dir

    params = yaml.safe_load((config_dir() / "sim.yaml").read_text())["/**"]["ros__parameters"]
    return int(params["image_width"]), int(params["image_height"])


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (sensible at 0 % and 100 %, small n)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class EpisodeOutcome:
    seed: int
    success: bool                   # the task's rule held through the 2 s hold after the stop
    steps: int
    reason: str                     # why the policy stopped: reached | plateau | budget | hold | ...
    final_distance: float
    replan_seconds_median: float
    wall_seconds: float
    costs: list = field(default_factory=list)   # latent cost before each replan
    planner_seed: int = 0           # index k of the K planner seeds
    success_paper_rule: bool = False  # the rule held 10 consecutive control steps at any time
    success_strict: bool | None = None  # grasp: object raised >= 3 cm and in the hand at the end
    success_at_stop: bool = False   # the rule held when the policy stopped
    subgoal_reasons: list = field(default_factory=list)  # --subgoals: how each subgoal ended, in order
    # --subgoals: the judge's reading at each subgoal's end (dexwm_sim.tasks.subgoal_progress, with
    # the subgoal's phase and end reason): where the chain breaks. Read after the fact, never by the policy.
    subgoal_progress: list = field(default_factory=list)
    # In-process: the judge's distance [m] of the palm, when the policy stopped, from where the goal
    # state has it (the goal's joints through forward kinematics): how precisely the hand was put.
    palm_error_m: float | None = None


# The composite pick-and-place chain's defaults (with subgoals): the hand open and turned above the
# object, then the pre-grasp pose, lifted, above the target, released; each goal's wrist read from its
# depth image and the hand's orientation from its image (README, "Where the hand is, and how it is
# turned"). The chain before them: marks pregrasp,lifted,above,released and both weights 0.
SUBGOAL_CHAIN = {"marks": ("high", "pregrasp", "lifted", "above", "released"), "goal_wrist_depth": 100.0,
                 "goal_orientation": 2.0}


@dataclass
class EvalSettings:
    task: str = "grasp"
    episodes: int = 10
    seed: int = 0
    max_steps: int = 0             # 0 = DEFAULT_MAX_STEPS of the protocol
    preset: str = "cpu"
    # (samples, elites, iterations[, kept elites]) of the CEM instead of the preset's; empty = the
    # preset's (search-budget sweeps: --search; kept elites: CEMConfig.keep_elites, default 0).
    search: tuple = ()
    # (arm, hand) initial CEM sampling std [rad] instead of the preset's (0.3, 0.1); empty = the preset's.
    std: tuple = ()
    # (pitch, azimuth) [deg] of a candidate head camera (dexwm_robot.camera.HeadCamera.orbit) the
    # simulation renders from and the planner's actions are expressed in; empty = the simulation's
    # own. For a checkpoint trained on episodes recorded from that view (dexwm-collect --camera).
    camera: tuple = ()
    checkpoint: str = ""
    protocol: str = "paper"
    planner_seeds: int = 1
    hold_s: float = HOLD_S
    plateau_steps: int = PLATEAU_STEPS
    done_cost: float = -1.0        # < 0: the checkpoint's fitted threshold (0 when none)
    # 0 = the world model's frame step (``DexWM.frame_step``): each executed step is the step the
    # model learned (a target reached by a ramp over one frame step, the next frame one frame step
    # later, as dexwm-collect recorded it); the planner node's defaults (config/planner.yaml).
    move_duration_s: float = 0.0
    move_timeout_s: float = 0.0    # 0 = move_duration_s
    goal_tolerance: float = 0.05
    # Plan through the scripted solution's subgoal images (composite pick-place), one planning
    # session each, advancing by the stop rule (dexwm_planner.subgoals); max_steps is per subgoal.
    subgoals: bool = False
    subgoal_marks: tuple = ()      # marks of the scripted solution shown as subgoals; empty = SUBGOAL_CHAIN's
    # Planned-hand keypoint term (dexwm_planner.objective.ObjectiveConfig.hand_pixel_weight).
    hand_pixel_weight: float = HAND_PIXEL_WEIGHT
    # Search settings per paper stage: "none" (the planner node's for every stage) or "phases": the
    # stage's phase profile (dexwm_planner.subgoals.PHASES, as a subgoal of that phase gets them),
    # the paper's per-task choices: grasp from the reference motion with the end-effector orientation
    # term, place with finger std 0.01 rad; the phase's stop rule too (grasp: run to its 20-step budget).
    stage_settings: str = "none"
    # Offer the CEM the plan heading for the joints that match the goal image's hand
    # (dexwm_planner.hand_proposal; MPCConfig.hand_proposal).
    hand_proposal: bool = False
    # Keypoints of the planned-hand term (ObjectiveConfig.hand_pixel_keypoints): all, wrist, size_free.
    hand_pixel_keypoints: str = "all"
    # Goal-hand reader (dexwm_planner.goal_hand): reads the goal image's hand for the planned-hand
    # term, the hand proposal and goal_hand_ik; "" = the shipped reader, "head" = the world model's
    # heatmap head (the figures measured before the reader), else a checkpoint path.
    goal_hand_reader: str = ""
    # Grasp goals start their CEM from the reference grasp motion (dexwm_planner.reference_motion):
    # down until the hand meets something, close, up 12 cm, from the joints at the goal's start (the
    # paper's grasp starts from a reference joint trajectory).
    grasp_reference: bool = False
    # What the planner executes (MPCConfig.execute): the CEM's best plan or its final mean.
    execute: str = "best"
    # PRIVILEGED diagnostic (0 = off): the goal wrist term (ObjectiveConfig.goal_wrist_weight, this
    # weight [1/m^2]) fed with the goal state's own wrist position: how precisely the planner puts
    # the hand when the goal's wrist is known in 3D, the ceiling of a depth reading of the goal's hand.
    goal_wrist_oracle: float = 0.0
    # Weight [1/m^2] of the goal wrist term fed by the goal's depth image (the goal-hand reader's wrist
    # pixel back-projected: dexwm_planner.goal_depth); 0 = off. Goals are rendered with depth then.
    # None: the chain's default with subgoals (SUBGOAL_CHAIN), else off.
    goal_wrist_depth: float | None = None
    # PRIVILEGED when > 0: weight [1/rad^2] of the orientation term referenced to the goal state's
    # flange orientation (its joints), in every goal but a grasp (a diagnostic ceiling, as the wrist oracle).
    goal_orientation_oracle: float = 0.0
    # Weight [1/rad^2] of the orientation term referenced to the goal hand's orientation read from the
    # goal image (dexwm_planner.goal_orientation), in every goal but a grasp; 0 = off. None: as
    # goal_wrist_depth.
    goal_orientation: float | None = None

    def __post_init__(self):
        sim_task(self.protocol, self.task)          # raises on a bad pair
        if self.subgoal_marks and not self.subgoals:
            raise ValueError("subgoal marks need subgoals (--subgoals)")
        # The pick-and-place chain's defaults (README, "Where the hand is, and how it is turned"); an
        # oracle asked for replaces the reading it stands in for.
        chain = SUBGOAL_CHAIN if self.subgoals else {"marks": (), "goal_wrist_depth": 0.0, "goal_orientation": 0.0}
        self.subgoal_marks = tuple(self.subgoal_marks) or chain["marks"]
        if self.goal_wrist_depth is None:
            self.goal_wrist_depth = 0.0 if self.goal_wrist_oracle > 0 else chain["goal_wrist_depth"]
        if self.goal_orientation is None:
            self.goal_orientation = 0.0 if self.goal_orientation_oracle > 0 else chain["goal_orientation"]
        self.objective()                            # raises on a bad weight
        if self.search:
            self.search = tuple(int(v) for v in self.search)
        self.std = tuple(float(v) for v in self.std)
        if self.std and len(self.std) != 2:
            raise ValueError(f"std needs two values (arm, hand), got {self.std}")
        self.camera = tuple(float(v) for v in self.camera)
        self.head_camera()                          # raises on a view that cannot be
        shipped_cem_config(self.preset, **self.search_changes())   # raises on a bad size or std
        if not (math.isfinite(self.goal_wrist_oracle) and self.goal_wrist_oracle >= 0):
            raise ValueError(f"the goal wrist oracle's weight must be >= 0, got {self.goal_wrist_oracle}")
        if not (math.isfinite(self.goal_wrist_depth) and self.goal_wrist_depth >= 0):
            raise ValueError(f"the depth goal wrist's weight must be >= 0, got {self.goal_wrist_depth}")
        if not (math.isfinite(self.goal_orientation_oracle) and self.goal_orientation_oracle >= 0):
            raise ValueError(f"the goal orientation oracle's weight must be >= 0, got {self.goal_orientation_oracle}")
        if not (math.isfinite(self.goal_orientation) and self.goal_orientation >= 0):
            raise ValueError(f"the goal orientation's weight must be >= 0, got {self.goal_orientation}")
        if self.goal_orientation > 0 and self.goal_orientation_oracle > 0:
            raise ValueError("the goal orientation comes from the oracle or from the goal image, not both")
        if self.goal_wrist_depth > 0 and self.goal_wrist_oracle > 0:
            raise ValueError("the goal wrist comes from the oracle or from depth, not both")
        subgoal_phases(self.subgoal_marks)          # raises on a mark without a phase
        if self.subgoals and self.sim_task != "pick-place":
            raise ValueError("subgoals are made for the composite pick-place task (--protocol composite "
                             "--task pick-place)")
        if self.stage_settings not in STAGE_SETTINGS:
            raise ValueError(f"stage settings must be one of {', '.join(STAGE_SETTINGS)}, got {self.stage_settings!r}")
        if self.stage_settings != "none" and self.protocol != "paper":
            raise ValueError("stage settings apply to the paper protocol's stages (composite tasks: --subgoals "
                             "carry per-phase settings)")
        if self.max_steps <= 0:
            self.max_steps = DEFAULT_SUBGOAL_MAX_STEPS if self.subgoals else DEFAULT_MAX_STEPS[self.protocol]

    @property
    def sim_task(self) -> str:
        return sim_task(self.protocol, self.task)

    def head_camera(self):
        """The head camera of these episodes (dexwm_robot.camera.HeadCamera)."""
        from dexwm_robot.camera import HeadCamera

        return HeadCamera.from_view(self.camera)

    def resolve_step(self, frame_step: float | None = None) -> None:
        """Fill the 0 (= automatic) move duration and time limit from the model's frame step
        (default: the checkpoint's)."""
        if self.move_duration_s <= 0:
            if frame_step is None:
                from dexwm_planner.world_model import checkpoint_frame_step

                frame_step = checkpoint_frame_step(self.checkpoint or None)
            self.move_duration_s = float(frame_step)
        if self.move_timeout_s <= 0:
            self.move_timeout_s = self.move_duration_s

    @property
    def kind(self) -> str:
        from dexwm_sim.tasks import TASK_KIND

        return TASK_KIND[self.sim_task]

    def candidate_seeds(self):
        """Episode seeds in order (paper stages skip seeds whose demonstration fails)."""
        s = EVAL_SEED_OFFSET + self.seed
        while True:
            yield s
            s += 1

    def seeds(self) -> list[int]:
        """The first ``episodes`` candidate seeds (composite tasks use exactly these)."""
        return [EVAL_SEED_OFFSET + self.seed + i for i in range(self.episodes)]

    def cem_seed(self, episode_seed: int, k: int) -> int:
        """CEM seed of planner seed k of an episode (k = 0: the episode seed, as the node uses)."""
        return (int(episode_seed) + k * 1_000_003) % (2 ** 31 - 1)

    def stop_rule(self, kind: str):
        from dexwm_planner.stop_rule import StopRule, load_fitted
        from dexwm_planner.world_model import DEFAULT_CHECKPOINT

        done = self.done_cost
        if done < 0:
            fitted = load_fitted(self.checkpoint or DEFAULT_CHECKPOINT)
            done = fitted.for_kind(kind) if fitted else 0.0
        return StopRule(done_cost=float(done), plateau_steps=int(self.plateau_steps), max_steps=int(self.max_steps))

    def search_changes(self) -> dict:
        """CEM changes of ``search`` and ``std`` (none for the preset's own search)."""
        changes = dict(std_arm=self.std[0], std_hand=self.std[1]) if self.std else {}
        if not self.search:
            return changes
        samples, elites, iterations, *kept = self.search
        changes.update(samples=samples, elites=elites, iterations=iterations, chunk=samples)
        return {**changes, "keep_elites": kept[0]} if kept else changes

    def search_settings(self):
        """The stage's search settings (dexwm_planner.subgoals.SearchSettings), None for the planner's own."""
        if self.stage_settings == "none":
            return None
        from dexwm_planner.subgoals import phase_settings

        return phase_settings(self.task)

    def planner_options(self) -> dict:
        """What every world-model policy of a run plans with (WorldModelPolicy's keywords): the cost,
        the stage's search settings, the hand proposal."""
        return dict(objective=self.objective(), search=self.search_settings(), hand_proposal=self.hand_proposal,
                    goal_hand_reader=self.goal_hand_reader, reference=self.reference(), execute=self.execute,
                    goal_wrist_oracle=self.goal_wrist_oracle > 0, goal_wrist_depth=self.goal_wrist_depth > 0,
                    goal_orientation_oracle=self.goal_orientation_oracle > 0, goal_orientation=self.goal_orientation > 0)

    def reference(self) -> str:
        """The reference motion the CEM starts from (MPCConfig.reference)."""
        return "grasp" if self.grasp_reference and self.kind == "grasp" else "none"

    def objective(self):
        """The planning cost's settings (the planner node's defaults but for the weights set here)."""
        from dexwm_planner.objective import ObjectiveConfig

        return ObjectiveConfig(hand_pixel_weight=float(self.hand_pixel_weight),
                               hand_pixel_keypoints=self.hand_pixel_keypoints,
                               goal_wrist_weight=float(max(self.goal_wrist_oracle, self.goal_wrist_depth)),
                               orientation_weight=float(max(self.goal_orientation_oracle, self.goal_orientation)))

    def session_config(self, env):
        """The planning session of an episode: this task's stop rule (with ``stage_settings`` phases,
        the phase's: a grasp runs its reference to the end), the simulation's joint limits, the
        per-step caps every policy moves under, and the (resolved) step timing."""
        from dexwm_planner.session import CommandLimits, SessionConfig

        limits = CommandLimits(np.asarray(env.lower, dtype=np.float64), np.asarray(env.upper, dtype=np.float64),
                               shipped_cem_config(self.preset).max_step())
        rule = self.stop_rule(self.kind)
        search = self.search_settings()
        if search is not None:
            rule = search.stop_rule(rule)
        return SessionConfig(stop_rule=rule, limits=limits,
                             move_duration_s=self.move_duration_s,
                             move_time_limit_s=max(self.move_timeout_s, self.move_duration_s),
                             goal_tolerance=self.goal_tolerance)


# ------------------------------------------------------------------------------------ policies
def shipped_cem_config(preset: str, **changes):
    """The CEM settings of a preset with the per-step caps config/planner.yaml ships (every policy
    here moves under the same caps)."""
    from dexwm_planner.cem import PRESETS

    return PRESETS[preset].with_(max_step_arm=0.25, max_step_hand=0.5, **changes)


# Every policy is a plan provider of the planning session (dexwm_planner.session): the session
# observes, asks it for a command, checks that command, moves the simulated robot and judges by the
# stop rule, exactly as the planner node does for an Execute goal.
class _ImageGoalPlans:
    """A plan provider that starts its WorldModelPlans (``plans``) from the goal image alone, as a
    goal image sent to the planner node: the goal state's joints are privileged (no camera gives
    them). Only the goal wrist oracle (PRIVILEGED, ``oracle_wrist_fn``: joints -> wrist, camera
    frame) reads their wrist, for the planner's goal wrist term. A goal's depth image (a sensor's,
    as a RealSense gives it) goes to the planner, which reads the goal's wrist from it where asked."""

    name = "dexwm"

    def __init__(self, plans, oracle_wrist_fn=None, orientation_oracle: bool = False):
        self.plans, self.oracle_wrist_fn, self.orientation_oracle = plans, oracle_wrist_fn, orientation_oracle

    def start(self, goal_image, goal_joints, seed, goal_depth=None):
        wrist = None
        if self.oracle_wrist_fn is not None and goal_joints is not None:
            wrist = self.oracle_wrist_fn(np.asarray(goal_joints, dtype=np.float64)[None])[0]
        # The orientation oracle (PRIVILEGED) gives the goal state's joints as the orientation term's
        # reference, except to a grasp, whose term keeps the orientation it starts from.
        search = self.plans.search
        orientation_from = (goal_joints if self.orientation_oracle and (search is None or search.phase != "grasp")
                            else None)
        self.plans.start(goal_image, orientation_from, seed, goal_wrist=wrist, goal_depth=goal_depth)

    def observe(self, image, joints) -> float:
        return self.plans.observe(image, joints)

    def verdict(self, joints):
        return self.plans.verdict(joints)

    def plan(self, joints, should_stop):
        return self.plans.plan(joints, should_stop)


class WorldModelPolicy(_ImageGoalPlans):
    """The planner node's MPC: same preset, caps, objective, stop rule (the session's) and seeding."""

    name = "dexwm"

    def __init__(self, model, kinematics, world_to_camera, preset: str = "cpu", cem_changes=None, objective=None,
                 search=None, hand_proposal: bool = False, goal_hand_reader: str = "", reference: str = "none",
                 execute: str = "best", goal_wrist_oracle: bool = False, goal_wrist_depth: bool = False,
                 goal_orientation_oracle: bool = False, goal_orientation: bool = False):
        """``search``: a stage's search settings (dexwm_planner.subgoals.SearchSettings), applied to
        every goal; None: the planner's own. ``goal_hand_reader``: as EvalSettings.goal_hand_reader
        ("" = the shipped reader, "head" = the world model's heatmap head). ``goal_wrist_oracle``:
        PRIVILEGED, the goal wrist term gets the goal state's wrist (EvalSettings.goal_wrist_oracle).
        ``goal_wrist_depth``: the planner reads goal wrists from goals' depth images (the goal-hand
        reader's wrist pixel, the fitted surface offset: dexwm_planner.goal_depth).
        ``goal_orientation_oracle``: PRIVILEGED, the orientation term's reference is the goal state's
        flange orientation (EvalSettings.goal_orientation_oracle). ``goal_orientation``: the reference
        is the goal hand's orientation read from the goal image (dexwm_planner.goal_orientation)."""
        from dexwm_planner.actions import allegro_actions, hand_pixels_projection, wrist_position_projection
        from dexwm_planner.mpc import MPCConfig
        from dexwm_planner.objective import ObjectiveConfig
        from dexwm_planner.reference_motion import reference_motion
        from dexwm_planner.session import WorldModelPlans

        self.model, self.kin = model, kinematics
        self.actions_fn = lambda q_seq: allegro_actions(q_seq, world_to_camera, kinematics=kinematics)
        self.rotation_fn = lambda q: kinematics.ee_pose(q)[1]
        # The simulation renders at the model's image size (sim_camera_size) with the head camera.
        self.hand_pixels_fn = hand_pixels_projection(world_to_camera, getattr(model, "image_size", (224, 224)),
                                                     kinematics=kinematics)
        self.wrist_fn = wrist_position_projection(world_to_camera, kinematics)
        objective = objective if objective is not None else ObjectiveConfig(hand_pixel_weight=HAND_PIXEL_WEIGHT)
        self.config = MPCConfig(cem=shipped_cem_config(preset, **(cem_changes or {})), objective=objective,
                                hand_proposal=hand_proposal, reference=reference, execute=execute,
                                orientation_reference="goal_image" if goal_orientation else "start")
        # Made for every planner (a subgoal's search settings may ask for it: subgoals.PHASES).
        self.reference_fn = reference_motion("grasp", kinematics)
        self.goal_hand_reader = _goal_hand_reading(goal_hand_reader, model)
        self.goal_rotation_reader = None
        if goal_orientation:
            from dexwm_planner.goal_orientation import goal_rotation_reading

            self.goal_rotation_reader = goal_rotation_reading(world_to_camera, hand_reader=goal_hand_reader)
        self.goal_wrist_from_depth = None
        if goal_wrist_depth:
            from dexwm_planner.goal_depth import GoalWristFromDepth, load_surface_offset
            from dexwm_robot.camera import HeadCamera

            if self.goal_hand_reader is None:
                raise ValueError("reading the goal wrist from depth needs the goal-hand reader (not 'head')")
            h, w = getattr(model, "image_size", (224, 224))
            # The simulation renders colour and depth at the model's size with the head camera's field of view.
            self.goal_wrist_from_depth = GoalWristFromDepth(self.goal_hand_reader, HeadCamera().intrinsics(w, h),
                                                            load_surface_offset())
        super().__init__(WorldModelPlans(self._make_planner, search), self.wrist_fn if goal_wrist_oracle else None,
                         goal_orientation_oracle)

    def _make_planner(self, seed):
        from dexwm_planner.mpc import MPCPlanner

        return MPCPlanner(self.model, self.actions_fn, self.kin.lower, self.kin.upper, self.config,
                          rotation_fn=self.rotation_fn, seed=seed, hand_pixels_fn=self.hand_pixels_fn,
                          goal_hand_reader=self.goal_hand_reader, reference_fn=self.reference_fn,
                          wrist_fn=self.wrist_fn, goal_wrist_from_depth=self.goal_wrist_from_depth,
                          goal_rotation_reader=self.goal_rotation_reader)

    def for_subgoal(self, search, held_hand):
        """The provider of one subgoal of a sequence (its search settings; subgoals carry images only,
        except for the goal wrist oracle, which gets each subgoal state's joints)."""
        from dexwm_planner.session import WorldModelPlans

        return _ImageGoalPlans(WorldModelPlans(self._make_planner, search, held_hand), self.oracle_wrist_fn,
                               self.orientation_oracle)


def _goal_hand_reading(setting: str, model):
    """The goal-hand reader of a run (dexwm_planner.goal_hand.reader_path: "" = the shipped one,
    "head" = none, the world model's heatmap head reads the goal hand)."""
    from dexwm_planner.goal_hand import goal_hand_reading

    return goal_hand_reading(setting, model)


def random_shooting_changes(cem) -> dict:
    """Changes to a preset that make it random shooting with ``cem``'s budget: one iteration whose
    samples equal ``cem``'s evaluations per replan (samples x iterations)."""
    total = cem.samples * cem.iterations
    return dict(samples=total, iterations=1, chunk=total)


def random_shooting_wm(model, kinematics, world_to_camera, preset: str, search_changes=None,
                       objective=None, search=None, hand_proposal: bool = False,
                       goal_hand_reader: str = "", reference: str = "none", execute: str = "best",
                       goal_wrist_oracle: bool = False, goal_wrist_depth: bool = False,
                       goal_orientation_oracle: bool = False, goal_orientation: bool = False) -> WorldModelPolicy:
    """Random shooting through the world model: one CEM iteration whose samples equal the CEM's
    total evaluations per replan (samples x iterations), the best sample executed, same cost."""
    cem = shipped_cem_config(preset, **(search_changes or {}))
    policy = WorldModelPolicy(model, kinematics, world_to_camera, preset,
                              cem_changes={**(search_changes or {}), **random_shooting_changes(cem)},
                              objective=objective, search=search, hand_proposal=hand_proposal,
                              goal_hand_reader=goal_hand_reader, reference=reference, execute=execute,
                              goal_wrist_oracle=goal_wrist_oracle, goal_wrist_depth=goal_wrist_depth,
                              goal_orientation_oracle=goal_orientation_oracle, goal_orientation=goal_orientation)
    policy.name = "random_shooting_wm"
    return policy


def _single_step(command: np.ndarray, t0: float):
    """A plan of one step that no world model scored (the baselines' plans)."""
    from dexwm_planner.mpc import PlanStep

    return PlanStep(command=command, plan=command[None], cost=float("nan"), current_cost=float("nan"), horizon=1,
                    replan_seconds=time.perf_counter() - t0)


class _WithoutWorldModel:
    """What every baseline without a world model shares: the planner's joint limits and per-step cap
    (a CEM of the shipped preset, used only to project commands), and no cost to report."""

    def __init__(self, kinematics, preset: str = "cpu"):
        from dexwm_planner.cem import CEM

        self.cem = CEM(shipped_cem_config(preset), kinematics.lower, kinematics.upper)

    def observe(self, image, joints) -> float:
        return float("nan")

    def _capped(self, target, joints, t0: float):
        """One step toward ``target`` under the per-step cap from where the robot is."""
        return _single_step(self.cem.project(np.asarray(target, dtype=np.float64)[None, None], joints)[0, 0], t0)


class _DriveToJoints(_WithoutWorldModel):
    """Moves straight toward target joints under the planner's per-step cap, no world model; stops
    within 0.02 rad of them or at the budget. Subclasses say where the target comes from
    (``_target(joints)``, asked at every step until it gives one)."""

    def __init__(self, kinematics, preset: str = "cpu"):
        super().__init__(kinematics, preset)
        self.goal = None

    def _target(self, joints):
        raise NotImplementedError

    def verdict(self, joints):
        return "reached" if self.goal is not None and np.abs(self.goal - joints).max() < 0.02 else None

    def plan(self, joints, should_stop):
        t0 = time.perf_counter()
        if self.goal is None:
            self.goal = np.asarray(self._target(joints), dtype=np.float64)
        return self._capped(self.goal, joints, t0)


class OracleGoalJointsPolicy(_DriveToJoints):
    """PRIVILEGED upper bound: reads the goal state's joints (which no camera gives) and moves
    straight toward them under the planner's per-step cap; stops within 0.02 rad or at the budget."""

    name = "oracle_goal_joints"

    def start(self, goal_image, goal_joints, seed, goal_depth=None):
        self.goal = np.asarray(goal_joints, dtype=np.float64)


class GoalHandIKPolicy(_DriveToJoints):
    """No world model: reads the goal image's hand keypoints (the model's heatmap head, or the run's
    goal-hand reader), solves for
    the joints that put the robot's hand there (dexwm_planner.hand_proposal, from the joints at the
    first step) and moves straight toward them under the planner's per-step cap; stops within
    0.02 rad or at the budget. What the planner's hand proposal does alone."""

    name = "goal_hand_ik"

    def __init__(self, model, kinematics, world_to_camera, preset: str = "cpu", goal_hand_reader: str = ""):
        """``goal_hand_reader``: as EvalSettings.goal_hand_reader."""
        from dexwm_planner.actions import hand_pixels_projection

        super().__init__(kinematics, preset)
        self.model, self.kin = model, kinematics
        self.reader = _goal_hand_reading(goal_hand_reader, model)
        self.pixels = hand_pixels_projection(world_to_camera, getattr(model, "image_size", (224, 224)),
                                             kinematics=kinematics)

    def start(self, goal_image, goal_joints, seed, goal_depth=None):
        import torch

        from dexwm_planner.objective import RIGHT_HAND_KEYPOINTS

        if self.reader is not None:
            self.goal_pixels = self.reader(goal_image)
        else:
            with torch.no_grad():
                keypoints = self.model.keypoints_2d(self.model.encode(np.asarray(goal_image)[None]))[0]
            self.goal_pixels = np.asarray(keypoints, dtype=np.float64)[RIGHT_HAND_KEYPOINTS]
        self.goal = None

    def _target(self, joints):
        from dexwm_planner.hand_proposal import estimate_goal_joints

        return estimate_goal_joints(self.pixels, self.goal_pixels, joints, self.kin.lower, self.kin.upper)


class ReferenceMotionPolicy(_WithoutWorldModel):
    """No world model: executes the grasp reference motion the planner's grasp search starts from
    (dexwm_planner.reference_motion, from the joints at the first step, with its feedback from the
    measured joints), one row per step, then holds its last row; stops at its end. What the
    reference alone does, under the same caps."""

    name = "reference_motion"

    def __init__(self, kinematics, preset: str = "cpu"):
        from dexwm_planner.reference_motion import reference_motion

        super().__init__(kinematics, preset)
        self.reference_fn = reference_motion("grasp", kinematics)
        self.rows, self.steps = None, 0

    def start(self, goal_image, goal_joints, seed, goal_depth=None):
        self.rows, self.steps = None, 0

    def verdict(self, joints):
        if self.rows is None:
            return None
        if hasattr(self.rows, "next_rows"):           # a motion with feedback: over when it says so
            return "reached" if self.rows.done else None
        return "reached" if self.steps >= len(self.rows) else None

    def plan(self, joints, should_stop):
        t0 = time.perf_counter()
        joints = np.asarray(joints, dtype=np.float64)
        if self.rows is None:
            self.rows = self.reference_fn(joints)
        if hasattr(self.rows, "next_rows"):
            row = self.rows.next_rows(joints, 1)[0]
        else:
            row = self.rows[min(self.steps, len(self.rows) - 1)]
        self.steps += 1
        # Under the per-step cap from where the robot is (it may lag the reference), as the planner.
        return self._capped(row, joints, t0)


class HoldStillPolicy:
    """Never moves: a stage that succeeds this way is not a task."""

    name = "hold_still"

    def start(self, goal_image, goal_joints, seed, goal_depth=None):
        pass

    def observe(self, image, joints) -> float:
        return float("nan")

    def verdict(self, joints):
        return "hold"

    def plan(self, joints, should_stop):
        return _single_step(np.asarray(joints, dtype=np.float64).copy(), time.perf_counter())


class RandomJointWalkPolicy(_WithoutWorldModel):
    """Ignores the goal and the model: each step executes the first step of a random feasible plan
    drawn from the planner's initial sampling distribution (same std, limits and per-step cap),
    for the whole step budget (the stop rule has no cost to judge)."""

    name = "random_joint_walk"

    def __init__(self, kinematics, preset: str = "cpu"):
        super().__init__(kinematics, preset)
        self.rng = np.random.default_rng(0)

    def start(self, goal_image, goal_joints, seed, goal_depth=None):
        self.rng = np.random.default_rng(seed)

    def verdict(self, joints):
        return None

    def plan(self, joints, should_stop):
        t0 = time.perf_counter()
        mean, std = self.cem.initial_distribution(joints, self.cem.config.horizon)
        plan = self.cem.project(mean + std * self.rng.standard_normal(mean.shape), joints)
        return _single_step(plan[0], t0)


# ------------------------------------------------------------------------------ in-process runs
@dataclass
class EpisodeStart:
    """One seeded episode, reset once and replayed for every policy and planner seed."""

    seed: int
    episode: object
    state: dict | None             # paper stages: replayed with set_state (bit-identical to a reset)
    goal: object
    subgoals: list | None = None   # --subgoals: the scripted solution's subgoal goals (tasks.make_subgoals)


def prepare_episode(env, settings: EvalSettings, seed: int) -> EpisodeStart:
    """Reset to a seeded episode and render its goal; raises tasks.StageUnavailable for a paper
    seed whose demonstration fails."""
    from dexwm_sim import tasks

    episode = env.reset(settings.sim_task, seed)
    depth = settings.goal_wrist_depth > 0       # the goals' depth images, as a RealSense gives them
    goal = tasks.make_goal(env, episode, sizes=(tuple(env.render_size),), depth=depth)
    state = env.initial_state if settings.sim_task in tasks.PAPER_TASKS else None
    subgoals = (tasks.make_subgoals(env, episode, sizes=(tuple(env.render_size),), marks=settings.subgoal_marks,
                                    depth=depth)
                if settings.subgoals else None)
    return EpisodeStart(seed=seed, episode=episode, state=state, goal=goal, subgoals=subgoals)


def run_episode(runner, policy, start: EpisodeStart, settings: EvalSettings, k: int = 0) -> EpisodeOutcome:
    """One episode in-process: the planner node's planning session (dexwm_planner.session) with the
    policy as its planner and the lock-step simulation as its robot (SimulatedRobot: arm and hand
    targets start together, each part ends at its tolerance or time limit); after the stop the
    robot holds its last command for ``settings.hold_s`` of simulated time and the outcome is judged."""
    from dexwm_planner.session import PlanningSession
    from dexwm_planner.sim_robot import SimulatedRobot
    from dexwm_sim import tasks

    env = runner.env
    t_start = time.perf_counter()
    if start.state is not None:
        # The objects' shapes, colours and masses live in the model, not in the state: put this
        # episode's back before its state (another episode's reset changed them).
        env.restore_episode(start.episode, start.state)
    else:
        env.reset(settings.sim_task, start.seed)
    episode = env.episode
    # evaluate() resolves the automatic step timing once; a direct call may leave it to the episode.
    if settings.move_duration_s <= 0 or settings.move_timeout_s <= 0:
        settings.resolve_step()
    progress = []
    if start.subgoals is not None:
        result, progress = _run_subgoals(runner, policy, start, settings, k)
    else:
        session = PlanningSession(SimulatedRobot(runner), policy, settings.session_config(env))
        result = session.run(start.goal.image, start.goal.joints, seed=settings.cem_seed(start.seed, k),
                             goal_depth=start.goal.depth)
    at_stop = bool(env.status.success_now)
    goal_palm = env.kinematics.palm_and_tips_world(start.goal.joints)[0]
    palm_error = float(np.linalg.norm(env.palm_and_tips()[0] - goal_palm))
    held = []
    for _ in range(int(round(settings.hold_s / env.control_dt))):
        env.advance(env.control_dt)        # no new command: the robot holds its last one
        held.append(bool(env.status.success_now))
    strict = tasks.strict_grasp(env, episode) if tasks.TASK_KIND[episode.task] == "grasp" else None
    replans = result.replan_seconds
    return EpisodeOutcome(seed=start.seed, success=bool(held) and all(held), steps=result.steps, reason=result.reason,
                          final_distance=float(env.status.distance),
                          replan_seconds_median=float(np.median(replans)) if replans else float("nan"),
                          wall_seconds=time.perf_counter() - t_start, costs=[float(c) for c in result.costs],
                          planner_seed=k, success_paper_rule=bool(env.status.success), success_strict=strict,
                          success_at_stop=at_stop,
                          subgoal_reasons=[o.reason for o in getattr(result, "subgoals", [])],
                          subgoal_progress=progress, palm_error_m=palm_error)


def subgoal_phases(marks: tuple) -> tuple[str, ...]:
    """The search settings' phase (dexwm_planner.subgoals.PHASES) of each scripted mark shown as a
    subgoal: the hand above the object ("high") and the pre-grasp pose are reached, the object is
    grasped (and lifted, in a phase of its own after "closed"), carried above its target and released.
    The four default marks give reach -> grasp -> carry -> release, the five with "closed" add the lift."""
    by_mark = {"high": "reach", "pregrasp": "approach", "closed": "grasp",
               "lifted": "lift" if "closed" in marks else "grasp", "above": "carry", "lowered": "place",
               "released": "release"}
    unknown = [m for m in marks if m not in by_mark]
    if unknown:
        raise ValueError(f"no subgoal phase for the mark(s) {', '.join(unknown)}; known: {', '.join(by_mark)}")
    return tuple(by_mark[m] for m in marks)


def _run_subgoals(runner, policy, start: EpisodeStart, settings: EvalSettings, k: int):
    """One episode through its subgoal images (the planner node's SubgoalSequence), with the default
    phases of a pick-and-place of that many subgoals; images only: the subgoal states' joints are privileged.
    Returns (the sequence's result, the judge's reading at each subgoal's end)."""
    from dexwm_planner.sim_robot import SimulatedRobot
    from dexwm_planner.subgoals import Subgoal, SubgoalSequence, phase_settings
    from dexwm_sim import tasks

    env = runner.env
    phases = subgoal_phases(settings.subgoal_marks)
    # The subgoal states' joints reach the planner only for the PRIVILEGED goal wrist oracle.
    oracle = settings.goal_wrist_oracle > 0 or settings.goal_orientation_oracle > 0
    subgoals = [Subgoal(goal.image, phase_settings(phase), joints=goal.joints if oracle else None,
                        label=f"scripted {phase}", depth=goal.depth)
                for goal, phase in zip(start.subgoals, phases)]
    # The judge's side: where the scripted solution had the palm and the object at each subgoal.
    palms = [env.kinematics.palm_and_tips_world(goal.joints)[0] for goal in start.subgoals]
    objects = [goal.object_poses[start.episode.object_kind] for goal in start.subgoals]
    readings: list[dict] = []

    def judge(index: int) -> None:
        readings.append({"index": index, "phase": phases[index],
                         **tasks.subgoal_progress(env, start.episode, palms[index], objects[index],
                                                  start.subgoals[index].joints)})

    # A subgoal becoming active is the end of the one before it.
    def on_subgoal(index, subgoal, progress) -> None:
        if index > 0:
            judge(index - 1)

    # --done-cost >= 0 applies to every subgoal; otherwise each subgoal kind's fitted threshold.
    fitted = (lambda kind: settings.stop_rule(kind).done_cost) if settings.done_cost < 0 else None
    sequence = SubgoalSequence(SimulatedRobot(runner), policy.for_subgoal, settings.session_config(env),
                               fitted_done_cost=fitted, on_subgoal=on_subgoal)
    result = sequence.run(subgoals, seed=settings.cem_seed(start.seed, k))
    if result.subgoals:
        judge(len(result.subgoals) - 1)
    for reading, outcome in zip(readings, result.subgoals):
        reading["reason"] = outcome.reason
    return result, readings


def number_pair(text: str) -> tuple:
    """A command-line pair "A,B" as two floats ('' gives ()); ValueError otherwise."""
    if not text:
        return ()
    pair = tuple(float(v) for v in text.split(","))
    if len(pair) != 2:
        raise ValueError(f"two numbers expected, got {len(pair)}")
    return pair


def make_runner(settings: EvalSettings):
    """The lock-step simulation the episodes run in, seen from ``settings.head_camera()``."""
    from dexwm_sim.runner import RunnerConfig, SimRunner
    from dexwm_sim.scene import SimEnv

    size = sim_camera_size()
    env = SimEnv(render_size=size, camera=settings.head_camera())
    # Not started: the session moves it in this thread (SimulatedRobot), with the sim node's motion
    # semantics.
    return SimRunner(RunnerConfig(task=settings.sim_task, lockstep=True, image_size=size), env=env)


def collect_starts(runner, settings: EvalSettings, progress: bool = True) -> tuple[list[EpisodeStart], list[dict]]:
    """The evaluation's episodes: the first ``settings.episodes`` seeds that have one."""
    from tqdm import tqdm

    from dexwm_sim.tasks import StageUnavailable

    starts, skipped = [], []
    bar = tqdm(total=settings.episodes, desc=f"episodes {settings.sim_task}", unit="ep", disable=not progress,
               file=sys.stderr)
    for seed in settings.candidate_seeds():
        if len(starts) >= settings.episodes:
            break
        if len(skipped) > 4 * settings.episodes + 20:
            raise RuntimeError(f"too many seeds without a {settings.sim_task} episode ({len(skipped)})")
        try:
            starts.append(prepare_episode(runner.env, settings, seed))
            bar.update(1)
        except StageUnavailable as e:
            skipped.append({"seed": seed, "why": str(e)})
    bar.close()
    return starts, skipped


def run_in_process(policy, settings: EvalSettings, starts: list[EpisodeStart], runner, planner_seeds: int = 1,
                   progress: bool = True) -> list[EpisodeOutcome]:
    from tqdm import tqdm

    outcomes = []
    runs = [(start, k) for start in starts for k in range(planner_seeds)]
    bar = tqdm(runs, desc=f"{policy.name} {settings.sim_task}", unit="run", disable=not progress, file=sys.stderr)
    for start, k in bar:
        outcomes.append(run_episode(runner, policy, start, settings, k))
        bar.set_postfix(success=f"{sum(o.success for o in outcomes)}/{len(outcomes)}")
    return outcomes


# ------------------------------------------------------------------------------ stop threshold fit
def fit_stop(checkpoint: str = "", episodes: int = 12, progress: bool = True, max_false_stop: float = 0.01,
             camera: tuple = ()) -> dict:
    """Fit the stop threshold of each task kind on demonstrations of seeds from FIT_SEED_OFFSET
    (disjoint from the evaluation's and the training data's): every frame of each paper stage,
    labelled by the task's rule (grasp: the strict rule, as its goal shows the object lifted),
    against the stage's goal image. ``camera``: (pitch, azimuth) of the view the checkpoint was
    trained on, when not the simulation's own."""
    import torch
    from tqdm import tqdm

    from dexwm_planner.stop_rule import FittedStop, best_threshold, stop_file
    from dexwm_planner.world_model import DEFAULT_CHECKPOINT, DexWM
    from dexwm_robot.camera import HeadCamera
    from dexwm_sim import tasks
    from dexwm_sim.scene import SimEnv

    path = checkpoint or DEFAULT_CHECKPOINT
    model = DexWM.load(path)
    size = sim_camera_size()
    env = SimEnv(render_size=size, camera=HeadCamera.from_view(camera))
    costs = {kind: ([], []) for kind in TASK_KINDS}
    seeds_used = []
    try:
        seed = FIT_SEED_OFFSET
        bar = tqdm(total=episodes, desc="fit stop thresholds", unit="demo", disable=not progress, file=sys.stderr)
        while len(seeds_used) < episodes and seed < FIT_SEED_OFFSET + 20 * episodes:
            seed += 1
            episode = tasks.make_episode("paper-reach", seed, env.kinematics)
            trace: list = []
            try:
                marks = tasks.demonstration(env, episode, trace=trace)
            except tasks.StageUnavailable:
                continue
            seeds_used.append(seed)
            bar.update(1)
            for task in tasks.PAPER_TASKS:
                try:
                    stage = env.reset(task, seed)
                except tasks.StageUnavailable:
                    continue
                goal = tasks.make_goal(env, stage, sizes=(size,))
                first, last = (marks[m]["trace_index"] for m in tasks.STAGES[task])
                frames, labels = [], []
                for state in trace[max(first - 1, 0):last]:
                    env.set_state(dict(state, mocap_pos=env.initial_state["mocap_pos"]))
                    ok, _ = tasks.evaluate(env, stage)
                    if tasks.TASK_KIND[task] == "grasp":
                        ok = tasks.strict_grasp(env, stage)
                    frames.append(env.render(*size))
                    labels.append(ok)
                with torch.no_grad():
                    goal_latent = model.encode(goal.image[None])[0]
                    latents = model.encode(np.stack(frames))
                    c = ((latents - goal_latent) ** 2).mean(dim=tuple(range(1, latents.dim()))).numpy()
                kind = tasks.TASK_KIND[task]
                costs[kind][0].extend(c[np.asarray(labels)].tolist())
                costs[kind][1].extend(c[~np.asarray(labels)].tolist())
        bar.close()
    finally:
        env.close()
    details, done = {}, {}
    for kind, (pos, neg) in costs.items():
        fit = best_threshold(np.asarray(pos), np.asarray(neg), max_false_stop=max_false_stop)
        details[kind] = fit
        done[kind] = fit["threshold"]
    details["costs_success"] = {kind: [round(c, 5) for c in pos] for kind, (pos, _) in costs.items()}
    details["costs_failure"] = {kind: [round(c, 5) for c in neg] for kind, (_, neg) in costs.items()}
    details["seeds"] = seeds_used
    details["max_false_stop"] = max_false_stop
    fitted = FittedStop(done_cost=done, details=details)
    out = stop_file(path)
    fitted.save(out)
    return {"path": str(out), "done_cost": done, "details": details}


# ---------------------------------------------------------------------------- through the graph
def run_through_ros(settings: EvalSettings, progress: bool = True, startup_timeout: float = 120.0,
                    log_path: Path | None = None) -> list[EpisodeOutcome]:
    """The same episodes through the ROS graph: dexwm-up (sim + planner) in separate processes."""
    import subprocess
    import threading

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 40))
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    import rclpy
    from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.action import ActionClient
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from tqdm import tqdm

    from dexwm_ros.action import Execute
    from dexwm_ros.bringup import stop_process_group, tool_executable
    from dexwm_ros.msg import EpisodeState
    from dexwm_ros.srv import HoldEpisode, ResetEpisode

    graph_name = "composite-reach" if settings.sim_task == "reach" else settings.sim_task
    cmd = [sys.executable, str(tool_executable("dexwm-up")), graph_name, "sim:=true", "sim_lockstep:=true"]
    if settings.checkpoint:
        cmd.append(f"checkpoint:={settings.checkpoint}")
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    graph = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    outcomes: list[EpisodeOutcome] = []
    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = Node("dexwm_eval", context=context)
    lock = threading.Lock()
    episode_state: dict = {}

    def on_episode(msg):
        with lock:
            episode_state["msg"] = msg
    node.create_subscription(EpisodeState, "/sim/episode", on_episode, 10)
    reset = node.create_client(ResetEpisode, "/sim/reset")
    hold = node.create_client(HoldEpisode, "/sim/hold")
    params = node.create_client(SetParameters, "/dexwm/planner/set_parameters")
    execute = ActionClient(node, Execute, "/dexwm/execute")
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    def wait(predicate, timeout, what):
        """The predicate's first truthy value."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if graph.poll() is not None:
                raise RuntimeError(f"the ROS graph exited with code {graph.returncode}"
                                   + (f" (log: {log_path})" if log_path else ""))
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)
        return value

    def set_parameters(**values):
        msgs = []
        for name, value in values.items():
            if isinstance(value, int):
                v = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
            else:
                v = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(value))
            msgs.append(ParameterMsg(name=name, value=v))
        fut = params.call_async(SetParameters.Request(parameters=msgs))
        wait(fut.done, 30, "the planner's parameters")
        refused = [r.reason for r in fut.result().results if not r.successful]
        if refused:
            raise RuntimeError(f"the planner refused its parameters: {'; '.join(refused)}")

    stop = settings.stop_rule(settings.kind)
    try:
        wait(lambda: reset.service_is_ready() and hold.service_is_ready() and execute.server_is_ready()
             and params.service_is_ready(), startup_timeout, "/sim/reset, /sim/hold, /dexwm/execute and the planner's parameters")
        # The in-process stop rule, exactly.
        set_parameters(done_cost=stop.done_cost, plateau_steps=stop.plateau_steps, plateau_rel=stop.plateau_rel,
                       move_duration_s=float(settings.move_duration_s), move_timeout_s=float(settings.move_timeout_s))
        bar = tqdm(total=settings.episodes, desc=f"ros {settings.sim_task}", unit="ep", disable=not progress,
                   file=sys.stderr)
        for seed in settings.candidate_seeds():
            if len(outcomes) >= settings.episodes:
                break
            t0 = time.perf_counter()
            # Per-episode CEM seed, as in-process (planner seed 0).
            set_parameters(seed=settings.cem_seed(seed, 0))
            fut = reset.call_async(ResetEpisode.Request(task=settings.sim_task, seed=int(seed) % 2**32))
            wait(fut.done, 120, "the episode reset")
            res = fut.result()
            if not res.success:
                if "demonstration of seed" in res.message or "stage of seed" in res.message:
                    continue     # no stage episode for this seed: skipped in-process too
                raise RuntimeError(f"/sim/reset failed for seed {seed}: {res.message}")
            replans = []
            costs = []

            def on_feedback(fb):
                replans.append(fb.feedback.replan_seconds)
                costs.append(fb.feedback.current_cost)
            send = execute.send_goal_async(Execute.Goal(goal_image=res.goal_image, task=settings.kind,
                                                        max_steps=settings.max_steps),
                                           feedback_callback=on_feedback)
            wait(send.done, 30, "the planner to accept the goal")
            handle = send.result()
            if not handle.accepted:
                raise RuntimeError("the planner rejected the Execute goal")
            result_future = handle.get_result_async()
            wait(result_future.done, 60 + settings.max_steps * 30, "the episode to end")
            result = result_future.result().result
            with lock:
                ep = episode_state.get("msg")
            at_stop = ep is not None and bool(ep.success_now)
            # Judged as in-process: the robot keeps its last targets for hold_s of simulated time
            # (the lock-step sim advances for it) and the rule must hold at every control step.
            fut = hold.call_async(HoldEpisode.Request(duration_s=float(settings.hold_s)))
            wait(fut.done, 60 + 10 * settings.hold_s, "the hold after the stop")
            held = fut.result()
            if not held.success:
                raise RuntimeError(f"/sim/hold failed for seed {seed}: {held.message}")
            # The episode state at the hold's end (its any-time rule may have been met during it).
            end_step = (ep.step if ep is not None else 0) + held.control_steps

            def at_end():
                with lock:
                    msg = episode_state.get("msg")
                return msg if msg is not None and msg.step >= end_step else None
            ep_end = wait(at_end, 10, "the episode state after the hold")
            outcomes.append(EpisodeOutcome(
                seed=seed, success=bool(held.held), steps=int(result.steps), reason=result.reason,
                final_distance=float(held.distance),
                replan_seconds_median=float(np.median(replans)) if replans else float("nan"),
                wall_seconds=time.perf_counter() - t0, costs=[float(c) for c in costs] + [float(result.final_cost)],
                success_paper_rule=bool(ep_end.success), success_at_stop=at_stop))
            bar.update(1)
            bar.set_postfix(success=f"{sum(o.success for o in outcomes)}/{len(outcomes)}")
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_process_group(graph)
        if log_path:
            log.close()
    return outcomes


# --------------------------------------------------------------------------------------- report
def summarize(outcomes: list[EpisodeOutcome]) -> dict:
    """Success over all runs (episodes x planner seeds), its Wilson interval, the other rules'
    figures and the fraction of episodes whose outcome differs between planner seeds."""
    n = len(outcomes)
    k = sum(o.success for o in outcomes)
    lo, hi = wilson_interval(k, n)
    replans = [o.replan_seconds_median for o in outcomes if np.isfinite(o.replan_seconds_median)]
    by_seed: dict[int, set] = {}
    for o in outcomes:
        by_seed.setdefault(o.seed, set()).add(o.success)
    multi = [v for s, v in by_seed.items() if sum(1 for o in outcomes if o.seed == s) > 1]
    reasons: dict[str, int] = {}
    for o in outcomes:
        reasons[o.reason] = reasons.get(o.reason, 0) + 1
    strict = [o.success_strict for o in outcomes if o.success_strict is not None]
    paper = sum(o.success_paper_rule for o in outcomes)
    out = {"success_rate": k / n if n else 0.0, "ci95": [lo, hi], "successes": k, "runs": n,
           "success_rate_paper_rule": paper / n if n else 0.0,
           "ci95_paper_rule": list(wilson_interval(paper, n)),
           "success_rate_strict": (sum(strict) / len(strict)) if strict else None,
           "ci95_strict": list(wilson_interval(sum(strict), len(strict))) if strict else None,
           "flip_rate": (sum(len(v) > 1 for v in multi) / len(multi)) if multi else None,
           "stop_reasons": reasons,
           "replan_seconds_median": float(statistics.median(replans)) if replans else float("nan")}
    palm = [o.palm_error_m for o in outcomes if o.palm_error_m is not None]
    out["palm_error_m_median"] = float(np.median(palm)) if palm else None
    if any(o.subgoal_progress for o in outcomes):
        out["subgoal_funnel"] = subgoal_funnel(outcomes)
    return out


def subgoal_funnel(outcomes: list[EpisodeOutcome]) -> list[dict]:
    """Per subgoal, over the runs that got to its end: median palm and object distance to the
    subgoal's scripted state, the fractions within ``tasks.SUBGOAL_TOLERANCE``, and, where the
    scripted state holds the object, the fraction that holds it (the judge's readings)."""
    from dexwm_sim.tasks import SUBGOAL_TOLERANCE

    funnel = []
    for index in range(max(len(o.subgoal_progress) for o in outcomes)):
        ends = [o.subgoal_progress[index] for o in outcomes if len(o.subgoal_progress) > index]
        palm = np.array([e["palm_error_m"] for e in ends])
        obj = np.array([e["object_error_m"] for e in ends])
        holding = [e for e in ends if e["scripted_held"]]
        funnel.append({"index": index, "phase": ends[0]["phase"], "runs": len(ends),
                       "palm_error_m_median": float(np.median(palm)),
                       "palm_within_tolerance": float(np.mean(palm < SUBGOAL_TOLERANCE)),
                       "flange_turn_deg_median": (float(np.median([e["flange_turn_deg"] for e in ends]))
                                                  if all("flange_turn_deg" in e for e in ends) else None),
                       "object_error_m_median": float(np.median(obj)),
                       "object_within_tolerance": float(np.mean(obj < SUBGOAL_TOLERANCE)),
                       "held": float(np.mean([e["held"] for e in holding])) if holding else None,
                       "tolerance_m": SUBGOAL_TOLERANCE})
    return funnel


def _pct(r) -> str:
    return "-" if r is None else f"{100 * r:.0f} %"


def funnel_line(step: dict) -> str:
    """One subgoal of ``subgoal_funnel`` in words (the printed summary and the report)."""
    return (f"subgoal {step['index'] + 1} ({step['phase']}, {step['runs']} runs got to its end): palm "
            f"{100 * step['palm_error_m_median']:.1f} cm from the scripted state (median), "
            f"{_pct(step['palm_within_tolerance'])} within {100 * step['tolerance_m']:g} cm"
            + (f", flange turned {step['flange_turn_deg_median']:.0f} deg" if step.get("flange_turn_deg_median") is not None else "")
            + "; object "
            f"{100 * step['object_error_m_median']:.1f} cm, {_pct(step['object_within_tolerance'])} within"
            + (f"; held {_pct(step['held'])}" if step["held"] is not None else ""))


def _bars(ax, groups: list[str], series: dict[str, list[tuple[float, list]]], title: str) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        rates = [100 * (r if r is not None else np.nan) for r, _ in values]
        errs = [[max(100 * (r - c[0]), 0) if c else 0 for r, c in values],
                [max(100 * (c[1] - r), 0) if c else 0 for r, c in values]]
        xs = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        ax.bar(xs, rates, width, yerr=errs, capsize=3, label=name)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylim(0, 105)
    ax.set_ylabel("success [%] (95 % Wilson interval)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def plot_success(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["dexwm"] + list(results["baselines"])
    entries = [results] + [results["baselines"][b] for b in results["baselines"]]
    fig, ax = plt.subplots(figsize=(2.0 + 1.5 * len(names), 3.8))
    _bars(ax, names, {"success (final 2 s hold)": [(e["success_rate"], e["ci95"]) for e in entries],
                      "paper rule (10 steps, any time)": [(e.get("success_rate_paper_rule"),
                                                           e.get("ci95_paper_rule")) for e in entries]},
          f"{results['protocol']} {results['task']}: {results['episodes']} episodes x "
          f"{results.get('planner_seeds', 1)} planner seeds, {'through ROS' if results.get('through_ros') else 'in-process'}")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Settings added after results were saved, with the value every run before them had: a result
# without "search" ran the preset's own search.
_BEFORE_THE_SETTING = {"search": [], "std": [], "camera": []}


def _setting(result: dict, key: str):
    return result.get("settings", {}).get(key, _BEFORE_THE_SETTING.get(key))


def agreement(a: dict, b: dict) -> dict:
    """Episode-by-episode comparison of two results of one task on their shared seeds (planner seed 0)."""
    left = {o["seed"]: o for o in a["outcomes"] if o.get("planner_seed", 0) == 0}
    right = {o["seed"]: o for o in b["outcomes"] if o.get("planner_seed", 0) == 0}
    shared = sorted(set(left) & set(right))
    same_stop = [s for s in shared if left[s]["steps"] == right[s]["steps"] and left[s]["reason"] == right[s]["reason"]]
    same_costs = [s for s in same_stop if np.allclose(left[s]["costs"], right[s]["costs"], rtol=1e-4, atol=1e-6)]
    keys = ("protocol", "max_steps", "preset", "search", "std", "camera", "checkpoint", "move_duration_s",
            "move_timeout_s", "goal_tolerance", "plateau_steps", "done_cost")
    settings_differ = [k for k in keys if _setting(a, k) != _setting(b, k)]
    return {"seeds": shared, "same_stop": len(same_stop), "same_costs": len(same_costs),
            "differ": [s for s in shared if s not in same_costs], "settings_differ": settings_differ}


def _is_result(data) -> bool:
    return isinstance(data, dict) and {"task", "outcomes", "success_rate", "ci95", "protocol"} <= set(data)


SUBGOALS_COLUMN = "(subgoals)"


def _report_column(result: dict) -> str:
    return result["task"] + (f" {SUBGOALS_COLUMN}" if result.get("settings", {}).get("subgoals") else "")


def write_report(folder: Path) -> tuple[Path, list[Path]]:
    """Tables of every result in ``folder`` (paper protocol first, then composite), the through-ROS
    agreement, and one plot per protocol: summary.md, summary_<protocol>.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if _is_result(data):
            results.append((path, data))
    if not results:
        raise ValueError(f"no dexwm-eval results (*.json with a protocol) in {folder}")
    md_lines = ["# Task success in simulation (dexwm-eval)", ""]
    pngs = []
    for protocol in ("paper", "composite"):
        # A run through subgoals is its own column, beside the same task without them.
        local = {_report_column(d): d for _, d in results if d["protocol"] == protocol and not d.get("through_ros")}
        if not local:
            continue
        tasks = [c for t in PROTOCOL_TASKS[protocol] for c in (t, f"{t} {SUBGOALS_COLUMN}") if c in local]
        baselines = sorted({b for t in tasks for b in local[t]["baselines"]})
        md_lines += [f"## {protocol} protocol", "",
                     "Success = the rule held through a 2 s hold after the planner stopped by its own rule; "
                     "paper rule = 10 consecutive control steps at any time; strict (grasp) = object raised "
                     ">= 3 cm and in the hand at the end. Rates over episodes x planner seeds.", "",
                     "| policy | " + " | ".join(f"{t} (n={local[t]['episodes']}x{local[t].get('planner_seeds', 1)})"
                                               for t in tasks) + " |",
                     "|---|" + "---|" * len(tasks)]

        def cell(e):
            if e is None:
                return "-"
            text = f"{_pct(e['success_rate'])} [{_pct(e['ci95'][0])}-{_pct(e['ci95'][1])}]"
            text += f"; paper rule {_pct(e.get('success_rate_paper_rule'))}"
            if e.get("success_rate_strict") is not None:
                text += f"; strict {_pct(e['success_rate_strict'])}"
            if e.get("flip_rate") is not None:
                text += f"; flips {_pct(e['flip_rate'])}"
            if e.get("palm_error_m_median") is not None:
                text += f"; palm {100 * e['palm_error_m_median']:.1f} cm"
            return text
        md_lines.append("| dexwm | " + " | ".join(cell(local[t]) for t in tasks) + " |")
        for b in baselines:
            md_lines.append(f"| {b} | " + " | ".join(cell(local[t]["baselines"].get(b)) for t in tasks) + " |")
        md_lines.append("")
        if any(local[t].get("palm_error_m_median") is not None for t in tasks):
            md_lines += ["palm = the judge's median distance of the palm at the stop from the goal state's.", ""]
        for t in tasks:
            for step in local[t].get("subgoal_funnel", []):
                md_lines.append(f"- {t}, dexwm, {funnel_line(step)}")
        fig, ax = plt.subplots(figsize=(2.5 + 2.4 * len(tasks), 4.0))
        series = {"dexwm": [(local[t]["success_rate"], local[t]["ci95"]) for t in tasks]}
        for b in baselines:
            series[b] = [((local[t]["baselines"].get(b) or {}).get("success_rate"),
                          (local[t]["baselines"].get(b) or {}).get("ci95")) for t in tasks]
        _bars(ax, [f"{t}\n(n={local[t]['episodes']}x{local[t].get('planner_seeds', 1)})" for t in tasks], series,
              f"{protocol} protocol, in-process: success after the planner's own stop (final 2 s hold)")
        fig.tight_layout()
        png = folder / f"summary_{protocol}.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        pngs.append(png)
        for path, d in results:
            if d.get("through_ros") and d["protocol"] == protocol and d["task"] in local:
                ag = agreement(local[d["task"]], d)
                n = len(ag["seeds"])
                md_lines.append(
                    f"- through ROS, {protocol} {d['task']} ({path.name}): same stop (steps and reason) on "
                    f"{ag['same_stop']}/{n} shared seeds, same per-step costs on {ag['same_costs']}/{n}"
                    + (f"; differ: {ag['differ']}" if ag["differ"] else "")
                    + (f" (NOT comparable: {', '.join(ag['settings_differ'])} differ)" if ag["settings_differ"] else ""))
        md_lines.append("")
    md = folder / "summary.md"
    md.write_text("\n".join(md_lines) + "\n")
    return md, pngs


def default_ablations() -> dict[str, str]:
    from dexwm_planner import world_model

    models = Path(world_model.DEFAULT_CHECKPOINT).parent
    found = {}
    for name, file in (("dexwm_no_hc_loss", "dexwm_sim_no_hc.pt"), ("dexwm_no_pretrain", "dexwm_sim_no_pretrain.pt")):
        if (models / file).is_file():
            found[name] = str(models / file)
    return found


BASELINES = ("random_shooting_wm", "oracle_goal_joints", "goal_hand_ik", "reference_motion", "hold_still",
             "random_joint_walk")


def evaluate(settings: EvalSettings, through_ros: bool = False, ablations: dict[str, str] | None = None,
             baselines=True, progress: bool = True, log_dir: Path | None = None,
             baseline_planner_seeds: int = 1) -> dict:
    """Run the evaluation; ``baselines``: True (all), False (none) or a list of names."""
    from dexwm_planner.world_model import DexWM
    from dexwm_robot.kinematics import RobotKinematics

    kin = RobotKinematics.from_description()
    w2c = settings.head_camera().world_to_camera
    stop = settings.stop_rule(settings.kind)
    settings.resolve_step()
    skipped: list[dict] = []
    runner = None
    try:
        if through_ros:
            log_path = (log_dir / f"graph_{settings.protocol}_{settings.task}.log") if log_dir else None
            outcomes = run_through_ros(settings, progress=progress, log_path=log_path)
            planner_seeds = 1
        else:
            runner = make_runner(settings)
            starts, skipped = collect_starts(runner, settings, progress)
            model = DexWM.load(settings.checkpoint or None)
            policy = WorldModelPolicy(model, kin, w2c, settings.preset, settings.search_changes(),
                                      **settings.planner_options())
            planner_seeds = settings.planner_seeds
            outcomes = run_in_process(policy, settings, starts, runner, planner_seeds, progress)
        main = summarize(outcomes)
        results = {"protocol": settings.protocol, "task": settings.task, "sim_task": settings.sim_task,
                   "episodes": len({o.seed for o in outcomes}), "planner_seeds": planner_seeds,
                   "success_rule": f"final_hold_{settings.hold_s:g}s",
                   **main, "through_ros": through_ros, "stop_rule": asdict(stop),
                   "seeds": sorted({o.seed for o in outcomes}), "skipped_seeds": skipped,
                   "settings": asdict(settings), "baselines": {}, "baseline_outcomes": {},
                   "outcomes": [asdict(o) for o in outcomes]}
        if baselines and not through_ros:
            wanted = BASELINES if baselines is True else tuple(baselines)
            policies = []
            own_settings = {}     # an ablation checkpoint stops by its own fitted thresholds
            if "random_shooting_wm" in wanted:
                policies.append(random_shooting_wm(model, kin, w2c, settings.preset, settings.search_changes(),
                                                   **settings.planner_options()))
            if "oracle_goal_joints" in wanted:
                policies.append(OracleGoalJointsPolicy(kin, settings.preset))
            if "goal_hand_ik" in wanted:
                policies.append(GoalHandIKPolicy(model, kin, w2c, settings.preset, settings.goal_hand_reader))
            if "reference_motion" in wanted:
                policies.append(ReferenceMotionPolicy(kin, settings.preset))
            if "hold_still" in wanted:
                policies.append(HoldStillPolicy())
            if "random_joint_walk" in wanted:
                policies.append(RandomJointWalkPolicy(kin, settings.preset))
            for name, path in (ablations if ablations is not None else default_ablations()).items():
                policy = WorldModelPolicy(DexWM.load(path), kin, w2c, settings.preset, settings.search_changes(),
                                          **settings.planner_options())
                policy.name = name
                policies.append(policy)
                own_settings[name] = replace(settings, checkpoint=str(path))
            if settings.subgoals:
                # A baseline that cannot plan toward a subgoal's image would be judged on another task.
                unable = [p.name for p in policies if not hasattr(p, "for_subgoal")]
                policies = [p for p in policies if hasattr(p, "for_subgoal")]
                results["skipped_baselines"] = {name: "plans toward one goal only" for name in unable}
            for policy in policies:
                deterministic = isinstance(policy, (OracleGoalJointsPolicy, GoalHandIKPolicy, ReferenceMotionPolicy,
                                                    HoldStillPolicy))
                base = run_in_process(policy, own_settings.get(policy.name, settings), starts, runner,
                                      1 if deterministic else baseline_planner_seeds, progress)
                s = summarize(base)
                results["baselines"][policy.name] = {k: s[k] for k in (
                    "success_rate", "ci95", "success_rate_paper_rule", "ci95_paper_rule", "success_rate_strict",
                    "ci95_strict", "flip_rate", "stop_reasons", "runs", "palm_error_m_median", "subgoal_funnel")
                    if k in s}
                results["baseline_outcomes"][policy.name] = [asdict(o) for o in base]
        import torch

        results["torch_threads"] = torch.get_num_threads()
        results["notes"] = {
            "oracle_goal_joints": "PRIVILEGED upper bound: reads the goal state's joints",
            "goal_wrist_oracle": "PRIVILEGED when > 0: the planner's goal wrist term reads the goal state's wrist",
            "goal_orientation_oracle": "PRIVILEGED when > 0: the planner's orientation term reads the goal state's "
                                       "flange orientation (every goal but a grasp)",
            "goal_orientation": "when > 0: the planner's orientation term is referenced to the goal hand's "
                                "orientation read from the goal image (every goal but a grasp); not privileged",
            "goal_wrist_depth": "when > 0: the planner's goal wrist term reads each goal's wrist from the goal image "
                                "(the goal-hand reader) and its depth image (a sensor's); not privileged",
            "goal_hand_ik": "no world model: joints fitted to the goal image's decoded hand keypoints, driven to",
            "reference_motion": "no world model: the grasp reference motion (down 8 cm, close, up 12 cm), executed",
            "dexwm_no_pretrain": "the shipped model itself has no pre-training (no human video, no other "
                                 "embodiment): it is the no-pre-training row",
        }
        return results
    finally:
        if runner is not None:
            runner.env.close()


def main(argv: list[str] | None = None) -> int:
    from dexwm_planner.objective import HAND_PIXEL_KEYPOINTS

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--report":
        if len(argv) != 2 or not Path(argv[1]).is_dir():
            print("usage: dexwm-eval --report DIR (a folder of dexwm-eval results)", file=sys.stderr)
            return 2
        try:
            md, pngs = write_report(Path(argv[1]))
        except ValueError as e:
            print(f"dexwm-eval: error: {e}", file=sys.stderr)
            return 1
        print(md.read_text())
        print(f"wrote {md} and {', '.join(map(str, pngs))}")
        return 0
    parser = argparse.ArgumentParser(prog="dexwm-eval", description=__doc__.split("\n\n")[0],
                                     epilog="dexwm-eval --report DIR: tables, plots and agreement of saved results")
    parser.add_argument("--fit-stop", action="store_true", help="fit the stop thresholds of the checkpoint and exit")
    parser.add_argument("--protocol", choices=tuple(PROTOCOL_TASKS), default="paper")
    parser.add_argument("--task", help="paper: reach | grasp | place; composite: reach | reach-grasp | pick-place")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help=f"first evaluation seed (offset by {EVAL_SEED_OFFSET:,})")
    parser.add_argument("--planner-seeds", type=int, default=1, help="CEM seeds per episode (reports: 2)")
    parser.add_argument("--baseline-planner-seeds", type=int, default=1,
                        help="CEM seeds per episode of the stochastic baselines")
    parser.add_argument("--out", type=Path, default=Path("out/eval/results.json"))
    parser.add_argument("--through-ros", action="store_true", help="run the episodes through the ROS graph")
    parser.add_argument("--checkpoint", default="", help="world-model checkpoint (default: the shipped model)")
    parser.add_argument("--max-steps", type=int, default=0,
                        help=f"executed MPC steps per episode (default {DEFAULT_MAX_STEPS})")
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--search", default="", metavar="SAMPLES,ELITES,ITERATIONS[,KEPT]",
                        help="CEM search size instead of the preset's (search-budget sweeps; the random-shooting "
                             "baseline gets the same total); KEPT: elites carried into the next iteration")
    parser.add_argument("--std", default="", metavar="ARM,HAND",
                        help="initial CEM sampling std [rad] of the arm and the hand joints instead of the preset's "
                             "(0.3,0.1); the random-shooting baseline samples with the same")
    parser.add_argument("--camera", default="", metavar="PITCH,AZIMUTH",
                        help="render from a candidate head camera (degrees down, degrees from +x toward +y; the "
                             "view of a checkpoint trained on dexwm-collect --camera episodes); with --fit-stop too")
    parser.add_argument("--hold-s", type=float, default=HOLD_S, help="simulated hold after the stop before judging")
    parser.add_argument("--plateau-steps", type=int, default=PLATEAU_STEPS, help="stop rule plateau (0 = off)")
    parser.add_argument("--hand-pixel-weight", type=float, default=HAND_PIXEL_WEIGHT,
                        help="weight of the planned-hand keypoint term [1/px^2] (dexwm_planner.objective)")
    parser.add_argument("--stage-settings", choices=STAGE_SETTINGS, default="none",
                        help="paper stages: 'phases' searches each stage with its phase profile (grasp: end-effector "
                             "orientation term 0.4; place: finger std 0.01 rad), 'none' with the planner's own")
    parser.add_argument("--hand-pixel-keypoints", choices=tuple(HAND_PIXEL_KEYPOINTS), default="all",
                        help="keypoints the planned-hand term compares: wrist + 5 fingertips, the wrist alone, or "
                             "all six with the planned hand resized to the goal's")
    parser.add_argument("--hand-proposal", action="store_true",
                        help="offer the CEM the plan heading for the joints that match the goal image's hand "
                             "(dexwm_planner.hand_proposal)")
    parser.add_argument("--goal-wrist-oracle", type=float, default=0.0, metavar="WEIGHT",
                        help="PRIVILEGED diagnostic: the goal wrist term with this weight [1/m^2], fed with the goal "
                             "state's own wrist position (with --subgoals each subgoal state's; the ceiling of a depth "
                             "reading of the goal's hand); 0: off")
    parser.add_argument("--goal-orientation-oracle", type=float, default=0.0, metavar="WEIGHT",
                        help="PRIVILEGED diagnostic: weight [1/rad^2] of the orientation term referenced to the goal "
                             "state's flange orientation (every goal but a grasp); 0 = off")
    parser.add_argument("--goal-orientation", type=float, default=None, metavar="WEIGHT",
                        help="weight [1/rad^2] of the orientation term referenced to the goal hand's orientation read "
                             "from the goal image (models/goal_orientation_sim.pt; every goal but a grasp); 0 = off; "
                             "default: 2 with --subgoals, else off")
    parser.add_argument("--goal-wrist-depth", type=float, default=None, metavar="WEIGHT",
                        help="weight [1/m^2] of the goal wrist term fed by each goal's depth image (the goal-hand "
                             "reader's wrist pixel back-projected, the fitted surface offset in "
                             "models/goal_wrist_depth.json); 0 = off; default: 100 with --subgoals, else off")
    parser.add_argument("--goal-hand-reader", default="", metavar="PATH|head",
                        help="goal-hand reader checkpoint (dexwm_planner.goal_hand) that reads the goal image's hand "
                             "for the planned-hand term, the hand proposal and goal_hand_ik; 'head': the world "
                             "model's heatmap head (the figures before the reader); default: the shipped reader")
    parser.add_argument("--grasp-reference", action=argparse.BooleanOptionalAction, default=False,
                        help="grasp goals start their CEM from the reference grasp motion (down 8 cm, close, up "
                             "12 cm from where the hand is: dexwm_planner.reference_motion), as the paper's grasp")
    parser.add_argument("--execute", choices=("best", "mean"), default="best",
                        help="what the planner executes: the CEM's best plan, or its final mean (the elites' "
                             "average, as the paper's planner)")
    parser.add_argument("--done-cost", type=float, default=-1.0,
                        help="stop rule threshold (default: the checkpoint's fitted one; 0 = off)")
    parser.add_argument("--ablation", action="append", default=None, metavar="NAME=PATH",
                        help="extra world-model checkpoint evaluated as a baseline (repeatable)")
    parser.add_argument("--baselines", default="all",
                        help=f"comma-separated baselines to run ({', '.join(BASELINES)}), 'all' or 'none'")
    parser.add_argument("--no-baselines", action="store_true", help="skip the baselines (= --baselines none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--subgoals", action="store_true",
                        help="composite pick-place: plan through the scripted solution's subgoal images (pre-grasp, "
                             "lifted, above the target, released), advancing by the stop rule; --max-steps per "
                             f"subgoal (default {DEFAULT_SUBGOAL_MAX_STEPS})")
    parser.add_argument("--subgoal-marks", default="", metavar="MARK,MARK,...",
                        help="with --subgoals: the scripted solution's marks shown as subgoals (default "
                             "high,pregrasp,lifted,above,released; 'high' is the hand open and turned 20 cm above its "
                             "grasp pose, 'closed' the hand closed on the object on the table)")
    args = parser.parse_args(argv)
    if args.checkpoint and not Path(args.checkpoint).is_file():
        parser.error(f"checkpoint not found: {args.checkpoint}")
    from dexwm_robot.camera import HeadCamera

    try:
        camera = HeadCamera.parse_view(args.camera)
    except ValueError as e:
        parser.error(f"--camera needs PITCH,AZIMUTH in degrees (pitch in (0, 90)), got {args.camera!r}: {e}")
    if args.fit_stop:
        result = fit_stop(args.checkpoint, progress=not args.quiet, camera=camera)
        result["details"] = {k: v for k, v in result["details"].items() if not k.startswith("costs_")}
        print(json.dumps(result, indent=2))
        return 0
    if not args.task:
        parser.error("--task is required")
    if args.task not in PROTOCOL_TASKS[args.protocol]:
        parser.error(f"--task for the {args.protocol} protocol: one of {', '.join(PROTOCOL_TASKS[args.protocol])}")
    for name in ("episodes", "planner_seeds", "baseline_planner_seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.max_steps < 0:
        parser.error("--max-steps must be >= 1 (or 0 for the protocol's default)")
    if not (np.isfinite(args.hold_s) and 0 < args.hold_s <= 60):
        parser.error("--hold-s must be in (0, 60]")
    if args.plateau_steps < 0:
        parser.error("--plateau-steps must be >= 0")
    if not np.isfinite(args.done_cost):
        parser.error("--done-cost must be finite")
    ablations = None
    if args.ablation:
        ablations = {}
        for item in args.ablation:
            name, sep, path = item.partition("=")
            if not sep or not name or not Path(path).is_file():
                parser.error(f"--ablation needs NAME=PATH of an existing checkpoint, got {item!r}")
            ablations[name] = path
    if args.no_baselines or args.baselines == "none":
        baselines = False
    elif args.baselines == "all":
        baselines = True
    else:
        baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            parser.error(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    search = ()
    if args.search:
        try:
            search = tuple(int(v) for v in args.search.split(","))
            if len(search) not in (3, 4):
                raise ValueError
        except ValueError:
            parser.error(f"--search needs SAMPLES,ELITES,ITERATIONS[,KEPT] (three or four integers), "
                         f"got {args.search!r}")
    try:
        std = number_pair(args.std)
    except ValueError as e:
        parser.error(f"--std needs ARM,HAND (two numbers in rad), got {args.std!r}: {e}")
    if args.through_ros and (args.preset != "cpu" or search or std or camera):
        parser.error("--through-ros uses the planner node's configured preset, search and std (config/planner.yaml) "
                     "and the simulation node's camera")
    if args.through_ros and args.planner_seeds != 1:
        parser.error("--through-ros runs one planner seed per episode")
    if args.subgoals and (args.protocol, args.task) != ("composite", "pick-place"):
        parser.error("--subgoals needs --protocol composite --task pick-place")
    if args.stage_settings != "none" and args.through_ros:
        parser.error("--stage-settings runs in-process (through ROS the planner node's settings apply)")
    if args.goal_hand_reader and args.through_ros:
        parser.error("--goal-hand-reader runs in-process (through ROS the planner node's parameter "
                     "goal_hand_reader decides: config/planner.yaml)")
    if (args.grasp_reference or args.execute != "best") and args.through_ros:
        parser.error("--grasp-reference and --execute run in-process (through ROS the planner node's parameters "
                     "grasp_reference and execute decide: config/planner.yaml)")
    if args.subgoals and args.through_ros:
        parser.error("--subgoals runs in-process (the planner node takes sequences through Execute.goal_images)")
    if args.goal_orientation and args.through_ros:
        parser.error("--goal-orientation runs in-process (the planner node does not read goal orientations yet)")
    if args.goal_wrist_depth and args.through_ros:
        parser.error("--goal-wrist-depth runs in-process (the planner node takes no goal depth yet)")
    if args.goal_orientation_oracle and args.through_ros:
        parser.error("--goal-orientation-oracle runs in-process (a diagnostic: no robot gives a goal state's joints)")
    if args.goal_wrist_oracle and args.through_ros:
        parser.error("--goal-wrist-oracle runs in-process (a diagnostic: no robot gives a goal state's joints)")
    try:
        settings = EvalSettings(protocol=args.protocol, task=args.task, episodes=args.episodes, seed=args.seed,
                                max_steps=args.max_steps, preset=args.preset, search=search, std=std, camera=camera,
                                checkpoint=args.checkpoint,
                                planner_seeds=args.planner_seeds, hold_s=args.hold_s, plateau_steps=args.plateau_steps,
                                done_cost=args.done_cost, subgoals=args.subgoals,
                                hand_pixel_weight=args.hand_pixel_weight, stage_settings=args.stage_settings,
                                hand_proposal=args.hand_proposal, hand_pixel_keypoints=args.hand_pixel_keypoints,
                                goal_hand_reader=args.goal_hand_reader, grasp_reference=args.grasp_reference,
                                execute=args.execute, goal_wrist_oracle=args.goal_wrist_oracle,
                                goal_wrist_depth=args.goal_wrist_depth,
                                goal_orientation_oracle=args.goal_orientation_oracle,
                                goal_orientation=args.goal_orientation,
                                subgoal_marks=tuple(m.strip() for m in args.subgoal_marks.split(",") if m.strip()))
    except ValueError as e:
        parser.error(str(e))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        results = evaluate(settings, through_ros=args.through_ros, ablations=ablations, baselines=baselines,
                           progress=not args.quiet, log_dir=args.out.parent,
                           baseline_planner_seeds=args.baseline_planner_seeds)
    except (RuntimeError, TimeoutError, ValueError) as e:
        print(f"dexwm-eval: error: {e}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(results, indent=2))
    plot_success(results, args.out.with_suffix(".png"))
    lo, hi = results["ci95"]
    print(f"{args.protocol} {args.task}: success {_pct(results['success_rate'])} ({results['episodes']} episodes x "
          f"{results['planner_seeds']} planner seeds, 95 % CI {_pct(lo)}-{_pct(hi)}, rule {results['success_rule']}); "
          f"paper rule {_pct(results['success_rate_paper_rule'])}"
          + (f"; strict {_pct(results['success_rate_strict'])}" if results["success_rate_strict"] is not None else "")
          + (f"; flip rate {_pct(results['flip_rate'])}" if results["flip_rate"] is not None else "")
          + f"; replan {results['replan_seconds_median']:.2f} s median; stops {results['stop_reasons']}"
          + (f"; palm {100 * results['palm_error_m_median']:.1f} cm from the goal's at the stop (median)"
             if results.get("palm_error_m_median") is not None else ""))
    for name, b in results["baselines"].items():
        print(f"  baseline {name}: {_pct(b['success_rate'])} [{_pct(b['ci95'][0])}-{_pct(b['ci95'][1])}], "
              f"paper rule {_pct(b['success_rate_paper_rule'])}")
    if settings.goal_wrist_oracle > 0:
        print(f"  PRIVILEGED: the planner's goal wrist term (weight {settings.goal_wrist_oracle:g}) read the goal "
              "state's wrist: a diagnostic ceiling, not a policy")
    if settings.goal_orientation_oracle > 0:
        print(f"  PRIVILEGED: the planner's orientation term (weight {settings.goal_orientation_oracle:g}) read the "
              "goal state's flange orientation: a diagnostic ceiling, not a policy")
    for step in results.get("subgoal_funnel", []):
        print(f"  {funnel_line(step)}")
    if results["skipped_seeds"]:
        print(f"  skipped {len(results['skipped_seeds'])} seeds without a demonstration")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
