"""Receding-horizon planner (MPC with CEM) toward a goal image, over any ``WorldModelLike``.

One ``step`` = one replan: encode nothing new (``observe`` does that), optimise a joint plan over
the current horizon, return its first step as the command. The horizon shrinks 3 -> 2 -> 1 between
replans (the paper's schedule: the remaining steps of the plan are re-optimised, warm-started from
the previous mean and std), then starts over at the full horizon from the current joints.

ROS-free: the planner node and the in-process evaluation drive the same object.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from .cem import CEM, CEMConfig, CEMResult, CPU
from .objective import ActionsFn, GoalObjective, HandPixelsFn, ObjectiveConfig, RotationFn, WorldModelLike, WristFn
from .reference_motion import REFERENCES


EXECUTE = ("best", "mean")


ORIENTATION_REFERENCES = ("start", "goal_image")


@dataclass(frozen=True)
class MPCConfig:
    cem: CEMConfig = CPU
    objective: ObjectiveConfig = ObjectiveConfig()
    # Past observed frames kept as world-model context (the paper's predictor uses 8).
    context_frames: int = 8
    # Paper schedule: horizon T, T-1, ..., 1, then start over. False: constant horizon, shifted plan.
    shrink_horizon: bool = True
    # Offer the CEM, in every iteration, the plan heading for the joints whose hand matches the goal
    # image's decoded hand (dexwm_planner.hand_proposal; needs the planned-hand projection).
    hand_proposal: bool = False
    # Start the search of each goal from a reference motion (dexwm_planner.reference_motion, given
    # as ``reference_fn``) instead of the current joints: whenever a replan has no warm start, the
    # CEM mean is the reference's rows for the steps ahead (the paper starts its grasp's CEM from a
    # reference joint trajectory). "none": from the current joints.
    reference: str = "none"
    # What is executed: "best", the lowest-cost plan the CEM scored, or "mean", its final sampling mean
    # (the elites' average, what the paper's planner executes). The best of many noisy samples is
    # off its mean by a few std in some joints, and where the cost cannot tell grasps apart that
    # offset is what the robot does.
    execute: str = "best"
    # The orientation term's reference where no goal joints are given: "start", the end-effector
    # orientation at the goal's first replan (keep the approach, as a grasp does), or "goal_image",
    # the goal hand's orientation read from the goal image (``goal_rotation_reader``:
    # dexwm_planner.goal_orientation), so that a reach turns the hand as the goal shows it.
    orientation_reference: str = "start"

    def __post_init__(self):
        if self.orientation_reference not in ORIENTATION_REFERENCES:
            raise ValueError(f"orientation_reference must be one of {', '.join(ORIENTATION_REFERENCES)}, "
                             f"got {self.orientation_reference!r}")
        if self.context_frames < 1:
            raise ValueError(f"context_frames must be >= 1, got {self.context_frames}")
        if self.execute not in EXECUTE:
            raise ValueError(f"execute must be one of {', '.join(EXECUTE)}, got {self.execute!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")


@dataclass
class PlanStep:
    command: np.ndarray            # (23,) joint target to execute now (feasible: limits + step cap)
    plan: np.ndarray               # (T, 23) the full planned sequence (first row = command)
    cost: float                    # planned cost (objective of ``plan``)
    current_cost: float            # latent MSE between the current observation and the goal
    horizon: int
    replan_seconds: float
    cost_history: list[float] = field(default_factory=list)
    predicted_keypoints: np.ndarray | None = None  # (T, 12, 2) heatmap-head keypoints of the plan
    stopped: bool = False          # optimisation was cut short by should_stop


class NoGoalError(RuntimeError):
    """Planning was asked for without a goal."""


class MPCPlanner:
    """Plans joint targets toward a goal image with a world model (CEM inside receding-horizon MPC)."""

    def __init__(self, model: WorldModelLike, actions_fn: ActionsFn, lower: np.ndarray, upper: np.ndarray,
                 config: MPCConfig = MPCConfig(), rotation_fn: RotationFn | None = None, seed: int | None = None,
                 hand_pixels_fn: HandPixelsFn | None = None,
                 goal_hand_reader: Callable[[np.ndarray], np.ndarray] | None = None,
                 reference_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                 wrist_fn: WristFn | None = None,
                 goal_wrist_from_depth: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                 goal_rotation_reader: Callable[[np.ndarray], np.ndarray] | None = None):
        """``rotation_fn`` / ``hand_pixels_fn``: the robot's kinematics for the orientation and
        planned-hand keypoint terms (needed only when their weights are on). ``goal_hand_reader``:
        goal image (H, W, 3) -> its hand's wrist + fingertips (6, 2) in model pixels, for the
        planned-hand term and the hand proposal (default: the world model's heatmap head).
        ``reference_fn``: joints at a goal's first replan (23,) -> the reference motion's rows
        (K, 23), one per executed step (needed when ``config.reference`` is set). ``wrist_fn``: the
        planned wrist's camera-frame position, for the goal wrist term (goals given a ``goal_wrist``,
        or a depth image that ``goal_wrist_from_depth``: goal image, its aligned depth -> wrist (3,),
        reads one from: dexwm_planner.goal_depth). ``goal_rotation_reader``: goal image -> the goal
        flange's rotation (3, 3) in the robot base frame, the orientation term's reference where
        ``config.orientation_reference`` is "goal_image" (dexwm_planner.goal_orientation)."""
        if config.hand_proposal and hand_pixels_fn is None:
            raise ValueError("hand_proposal needs hand_pixels_fn (kinematics and camera)")
        self.reference_fn = reference_fn
        _check_reference(config, reference_fn)
        self.model = model
        self.actions_fn = actions_fn
        self.config = config
        self.cem = CEM(config.cem, lower, upper)
        self.rotation_fn = rotation_fn
        self.hand_pixels_fn = hand_pixels_fn
        self.wrist_fn = wrist_fn
        self.goal_hand_reader = goal_hand_reader
        self.goal_wrist_from_depth = goal_wrist_from_depth
        self.goal_rotation_reader = goal_rotation_reader
        _check_orientation_reference(config, goal_rotation_reader)
        self.rng = np.random.default_rng(seed)
        self._context: collections.deque = collections.deque(maxlen=config.context_frames)
        # Joints at each context frame (None when unknown): the actions between context frames.
        self._context_q: collections.deque = collections.deque(maxlen=config.context_frames)
        self.goal_latent: torch.Tensor | None = None
        self.goal_image: np.ndarray | None = None
        self.goal_rotation: np.ndarray | None = None
        self.objective: GoalObjective | None = None
        self._warm: tuple[np.ndarray, np.ndarray] | None = None
        self._next_horizon = config.cem.horizon
        self.goal_joints_estimate: np.ndarray | None = None    # hand_proposal: estimated once per goal
        self.reference_rows = None          # reference: rows or a motion with feedback, made at a goal's first replan
        self._last_command: np.ndarray | None = None            # the command of the last replan
        self._steps = 0                                         # replans since the goal was set

    # ----------------------------------------------------------------------------------------- goal
    @property
    def has_goal(self) -> bool:
        return self.objective is not None

    def set_goal(self, image: np.ndarray, goal_joints: np.ndarray | None = None,
                 goal_wrist: np.ndarray | None = None, goal_depth: np.ndarray | None = None) -> None:
        """Encode a goal image (H, W, 3) uint8; ``goal_joints`` gives the orientation reference,
        ``goal_wrist`` (3,) the goal's wrist position [m] in the camera frame (the goal wrist term);
        without one, ``goal_depth`` (H, W) [m], the depth image aligned with the goal image, gives it
        where the planner reads wrists from depth and the term is on. ValueError (nothing changed) for
        a depth image the wrist cannot be read from."""
        image = _check_image(image)
        if (goal_wrist is None and goal_depth is not None and self.goal_wrist_from_depth is not None
                and self.config.objective.goal_wrist_weight > 0):
            goal_wrist = self.goal_wrist_from_depth(image, goal_depth)
        with torch.no_grad():
            latent = self.model.encode(image[None])[0]
        goal_rotation = None
        if self.config.objective.orientation_weight > 0 and self.rotation_fn is not None:
            if goal_joints is not None:
                goal_rotation = self.rotation_fn(np.asarray(goal_joints, dtype=np.float64)[None])[0]
            elif self.config.orientation_reference == "goal_image":
                goal_rotation = np.asarray(self.goal_rotation_reader(image), dtype=np.float64)
        objective_cfg = self.config.objective
        if objective_cfg.orientation_weight > 0 and goal_rotation is None:
            # Without goal joints the orientation reference is taken at the first replan (see step).
            objective_cfg = replace(objective_cfg, orientation_weight=0.0)
        goal_hand = None
        if self.goal_hand_reader is not None and (objective_cfg.hand_pixel_weight > 0 or self.config.hand_proposal):
            goal_hand = self.goal_hand_reader(image)
        self.objective = GoalObjective(self.model, self.actions_fn, latent, objective_cfg,
                                       rotation_fn=self.rotation_fn, goal_rotation=goal_rotation,
                                       hand_pixels_fn=self.hand_pixels_fn, goal_hand_pixels=goal_hand,
                                       wrist_fn=self.wrist_fn, goal_wrist=goal_wrist)
        self.goal_latent = latent
        self.goal_image = image
        self.goal_rotation = goal_rotation
        self.reset()

    def clear_goal(self) -> None:
        self.objective = None
        self.goal_latent = self.goal_image = self.goal_rotation = None
        self.reset()

    # ------------------------------------------------------------------------------------ episodes
    def reset(self) -> None:
        """Forget the observed context and the warm start (new episode, new goal)."""
        self._context.clear()
        self._context_q.clear()
        self._warm = None
        self._next_horizon = self.config.cem.horizon
        self.goal_joints_estimate = None
        self.reference_rows = None
        self._last_command = None
        self._steps = 0

    def observe(self, image: np.ndarray, q: np.ndarray | None = None) -> torch.Tensor:
        """Encode the newest camera frame (and the joints it shows) into the world-model context."""
        image = _check_image(image)
        with torch.no_grad():
            latent = self.model.encode(image[None])[0]
        self._context.append(latent)
        self._context_q.append(None if q is None else np.asarray(q, dtype=np.float64).copy())
        return latent

    def context_actions(self) -> torch.Tensor | None:
        """Actions (C-1, 132) between the context frames, when the joints of every frame are known."""
        if len(self._context_q) < 2 or any(q is None for q in self._context_q):
            return None
        actions = self.actions_fn(np.stack(list(self._context_q))[None])[0]
        return torch.as_tensor(np.asarray(actions), dtype=torch.float32)

    def current_cost(self) -> float:
        """Latent MSE between the newest observed frame and the goal (what the stop rule watches)."""
        if self.goal_latent is None:
            raise NoGoalError("no goal image: capture or load a goal before planning")
        latest = self.context[-1]
        with torch.no_grad():
            return float(((latest - self.goal_latent.to(latest.dtype)) ** 2).mean())

    @property
    def context(self) -> torch.Tensor:
        if not self._context:
            raise RuntimeError("no observation yet: call observe(image) before planning")
        return torch.stack(list(self._context))

    def configure(self, config: MPCConfig) -> None:
        """New search settings (a subgoal's); before ``set_goal``, which builds the objective."""
        _check_reference(config, self.reference_fn)
        _check_orientation_reference(config, self.goal_rotation_reader)
        self.config = config
        self.cem = CEM(config.cem, self.cem.lower, self.cem.upper, self.cem.arm_dof)
        self.clear_goal()

    def step(self, q: np.ndarray, should_stop: Callable[[], bool] | None = None,
             hold: np.ndarray | None = None) -> PlanStep:
        """Replan from joints ``q`` (23,) and the observed context; return the command to execute.
        ``hold`` (23,): joints kept at these targets instead of searched (NaN = searched)."""
        if self.objective is None:
            raise NoGoalError("no goal image: capture or load a goal before planning")
        q = np.asarray(q, dtype=np.float64)
        if self.config.objective.orientation_weight > 0 and self.objective.goal_rotation is None \
                and self.rotation_fn is not None:
            # No goal joints known: keep the end-effector orientation the robot has now.
            self.objective = GoalObjective(self.model, self.actions_fn, self.goal_latent, self.config.objective,
                                           rotation_fn=self.rotation_fn, goal_rotation=self.rotation_fn(q[None])[0],
                                           hand_pixels_fn=self.hand_pixels_fn,
                                           goal_hand_pixels=self.objective.goal_hand_pixels,
                                           wrist_fn=self.wrist_fn, goal_wrist=self.objective.goal_wrist)
        t0 = time.perf_counter()
        horizon = self._next_horizon
        context = self.context
        context_actions = self.context_actions()
        # Keep context + rollout inside the predictor's frame window: the rollout then never slides
        # the window (cheaper: no cache rebuild), and every predicted step attends to all of it.
        window = getattr(self.model, "context_frames", None)
        if isinstance(window, int) and len(context) + horizon - 1 > window:
            keep = max(window - horizon + 1, 1)
            context = context[-keep:]
            if context_actions is not None:
                context_actions = context_actions[-(keep - 1):] if keep > 1 else None
        if self._follows_reference(q):
            # A reference with feedback (the guarded grasp) gives the mean of every replan: it
            # changes course when the hand meets something; the warm start keeps only its spread.
            mean, std = self._reference_mean(q, horizon), (self._warm[1] if self._warm is not None else None)
        else:
            mean, std = self._warm if self._warm is not None else (self._reference_mean(q, horizon), None)
        objective = self.objective

        def cost_fn(samples: np.ndarray) -> np.ndarray:
            return objective(context, q, samples, context_actions)

        proposal = None
        if self.config.hand_proposal and objective.goal_hand_pixels is not None:
            if self.goal_joints_estimate is None:
                from .hand_proposal import estimate_goal_joints

                self.goal_joints_estimate = estimate_goal_joints(
                    self.hand_pixels_fn, objective.goal_hand_pixels, q, self.cem.lower, self.cem.upper)
            proposal = np.repeat(self.goal_joints_estimate[None], horizon, axis=0)
        result: CEMResult = self.cem.optimize(cost_fn, q, horizon=horizon, mean=mean, std=std, rng=self.rng,
                                              should_stop=should_stop, hold=hold, proposal=proposal)
        stopped = bool(should_stop and should_stop() and len(result.cost_history) < self.config.cem.iterations)
        plan = result.mean if self.config.execute == "mean" else result.plan
        terms = objective.terms(context, q, plan[None], keep_keypoints=True, context_actions=context_actions)
        cost = float(terms.total[0]) if self.config.execute == "mean" else result.cost
        current_cost = self.current_cost()
        self._advance(result, horizon)
        self._last_command = plan[0].copy()
        return PlanStep(command=plan[0].copy(), plan=plan, cost=cost,
                        current_cost=current_cost, horizon=horizon,
                        replan_seconds=time.perf_counter() - t0, cost_history=result.cost_history,
                        predicted_keypoints=None if terms.predicted_keypoints is None else terms.predicted_keypoints[0],
                        stopped=stopped)

    def _reference(self, q: np.ndarray):
        """The goal's reference motion, made from ``q`` at its first replan: rows (K, 23), or a
        motion with feedback (``next_rows``); None without a reference."""
        if self.config.reference == "none":
            return None
        if self.reference_rows is None:
            made = self.reference_fn(q)
            self.reference_rows = made if hasattr(made, "next_rows") else np.asarray(made, dtype=np.float64)
        return self.reference_rows

    def _follows_reference(self, q: np.ndarray) -> bool:
        return hasattr(self._reference(q), "next_rows")

    def _reference_mean(self, q: np.ndarray, horizon: int) -> np.ndarray | None:
        """The reference motion's rows for the next ``horizon`` steps (a fixed motion's last row held
        past its end; a motion with feedback reads the joints ``q`` measured now: once per replan);
        None without a reference."""
        reference = self._reference(q)
        if reference is None:
            return None
        if hasattr(reference, "next_rows"):
            return reference.next_rows(q, horizon, sent=self._last_command)
        last = len(reference) - 1
        return reference[np.minimum(np.arange(self._steps, self._steps + horizon), last)]

    def _advance(self, result: CEMResult, horizon: int) -> None:
        """Set up the next replan's horizon and warm start (the executed first step is dropped)."""
        self._steps += 1
        full = self.config.cem.horizon
        if self.config.shrink_horizon:
            if horizon > 1:
                self._next_horizon = horizon - 1
                self._warm = (result.mean[1:], result.std[1:])
            else:
                self._next_horizon = full
                self._warm = None
        else:
            self._next_horizon = full
            if full > 1:
                # Shift by one step and repeat the last one; std keeps its shape.
                self._warm = (np.concatenate([result.mean[1:], result.mean[-1:]]),
                              np.concatenate([result.std[1:], result.std[-1:]]))
            else:
                self._warm = None


def _check_orientation_reference(config: MPCConfig, goal_rotation_reader) -> None:
    if config.orientation_reference == "goal_image" and goal_rotation_reader is None:
        raise ValueError("orientation_reference 'goal_image' needs a goal_rotation_reader "
                         "(dexwm_planner.goal_orientation)")


def _check_reference(config: MPCConfig, reference_fn) -> None:
    if config.reference != "none" and reference_fn is None:
        raise ValueError(f"reference {config.reference!r} needs reference_fn (the robot's kinematics)")


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    return image
