"""Cross-entropy method over joint-angle sequences (the planner's sampler/optimizer).

Decision variables are absolute joint targets, 23 per step (7 arm + 16 hand, CONTRACT.md order).
Every sample is projected onto the feasible set before it is scored, so whatever the optimizer
returns can be sent to the robot as is:

* joint limits: ``lower <= q_t <= upper``;
* per-step cap: ``|q_t - q_{t-1}| <= max_step`` (``q_{-1}`` = the measured joints).

The optimizer knows nothing about world models: it minimises any batched cost function
``cost_fn(samples (N, T, D)) -> (N,)``. The paper's defaults are ``PAPER``; ``CPU`` is the preset
that keeps one replan of the shipped model within about a second on a 2-core machine.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from dexwm_robot.joints import ARM_DOF, DOF, HAND_DOF  # noqa: F401  (HAND_DOF: for callers)


@dataclass(frozen=True)
class CEMConfig:
    """Sampling and optimisation settings (sizes as in the DexWM paper unless a preset says else)."""

    samples: int = 512
    elites: int = 10
    iterations: int = 10
    horizon: int = 3
    # Initial standard deviation around the current joints [rad], per joint group.
    std_arm: float = 0.3
    std_hand: float = 0.1
    # Lower bound on the std so that a warm-started distribution never collapses completely.
    min_std: float = 1e-3
    # Per-step joint-change cap [rad] (safety: a planned step never moves a joint further).
    max_step_arm: float = 0.3
    # Fingers blocked by an object stay where they touch; a grasp holds only when they are commanded
    # about 0.4 rad beyond (the torque-limited PD then squeezes), and the cap counts from the measured
    # joints: 0.3 rad made every grasp slip (README, "Grasp").
    max_step_hand: float = 0.5
    # Cost evaluations are done in chunks of this many samples (bounds peak memory of the model).
    chunk: int = 512
    # Elites carried into the next iteration's candidates with the costs they already have (the
    # world model is deterministic, so no evaluation is spent on them; iCEM, Pinneri et al. 2020,
    # keeps a fraction of them). 0: plain CEM, each iteration ranks only its fresh samples.
    keep_elites: int = 0

    def __post_init__(self):
        for name in ("samples", "elites", "iterations", "horizon", "chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CEMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.elites > self.samples:
            raise ValueError(f"CEMConfig.elites ({self.elites}) must not exceed samples ({self.samples})")
        if not 0 <= int(self.keep_elites) <= self.elites:
            raise ValueError(f"CEMConfig.keep_elites must be in [0, elites={self.elites}], got {self.keep_elites}")
        for name in ("std_arm", "std_hand", "max_step_arm", "max_step_hand"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"CEMConfig.{name} must be a positive finite number, got {value}")
        if not np.isfinite(self.min_std) or self.min_std < 0:
            raise ValueError(f"CEMConfig.min_std must be >= 0, got {self.min_std}")

    def initial_std(self, arm_dof: int = ARM_DOF, dof: int = DOF) -> np.ndarray:
        return np.r_[np.full(arm_dof, self.std_arm), np.full(dof - arm_dof, self.std_hand)]

    def max_step(self, arm_dof: int = ARM_DOF, dof: int = DOF) -> np.ndarray:
        return np.r_[np.full(arm_dof, self.max_step_arm), np.full(dof - arm_dof, self.max_step_hand)]

    def with_(self, **changes) -> "CEMConfig":
        return replace(self, **changes)


# DexWM paper: horizon 3, 512 samples, 10 elites, 10 iterations, std 0.3 (arm) / 0.1 (fingers).
PAPER = CEMConfig()
# CPU preset: fewer samples and iterations, same horizon and noise. Sized to the largest search
# whose median replan stays under a second on 2 cores (`dexwm-bench planner`): success grew with
# the search budget on the paper protocol (README, "Search budget"), 144 evaluations per replan
# (48 x 3) left it starved.
CPU = CEMConfig(samples=96, elites=8, iterations=4, chunk=96)
PRESETS = {"paper": PAPER, "cpu": CPU}


@dataclass
class CEMResult:
    plan: np.ndarray            # (T, D) best feasible sequence found (lowest cost ever scored)
    cost: float                 # its cost
    mean: np.ndarray            # (T, D) final sampling mean (projected), for warm starts
    std: np.ndarray             # (T, D) final sampling std, for warm starts
    cost_history: list[float] = field(default_factory=list)  # best cost after each iteration
    evaluations: int = 0


def project(samples: np.ndarray, q0: np.ndarray, lower: np.ndarray, upper: np.ndarray,
            max_step: np.ndarray) -> np.ndarray:
    """Project joint sequences (..., T, D) onto the limits and the per-step cap, step by step.

    Each step is clipped to the box ``[max(lower, prev - cap), min(upper, prev + cap)]``. When the
    previous joints lie outside the limits (a measured position a little past a limit) that box can
    be empty; the step then moves towards the limits by at most the cap, so the cap always holds
    and the command never moves further out of the limits.
    """
    out = np.array(samples, dtype=np.float64, copy=True)
    prev = np.broadcast_to(np.asarray(q0, dtype=np.float64), out.shape[:-2] + out.shape[-1:])
    for t in range(out.shape[-2]):
        lo = np.maximum(lower, prev - max_step)
        hi = np.minimum(upper, prev + max_step)
        # Empty box (prev outside the limits by more than the cap): hold the side nearest the limits.
        empty = lo > hi
        if np.any(empty):
            towards = np.where(prev > upper, prev - max_step, prev + max_step)
            lo = np.where(empty, towards, lo)
            hi = np.where(empty, towards, hi)
        out[..., t, :] = np.clip(out[..., t, :], lo, hi)
        prev = out[..., t, :]
    return out


class CEM:
    """Cross-entropy method with per-joint Gaussian sampling, elites, iterations and warm starts."""

    def __init__(self, config: CEMConfig, lower: np.ndarray, upper: np.ndarray, arm_dof: int = ARM_DOF):
        self.config = config
        self.lower = np.asarray(lower, dtype=np.float64).copy()
        self.upper = np.asarray(upper, dtype=np.float64).copy()
        if self.lower.shape != self.upper.shape or self.lower.ndim != 1:
            raise ValueError(f"lower/upper must be 1-D of equal length, got {self.lower.shape}, {self.upper.shape}")
        if np.any(self.lower > self.upper) or not np.all(np.isfinite(self.lower)) or not np.all(np.isfinite(self.upper)):
            raise ValueError("joint limits must be finite with lower <= upper")
        self.dof = self.lower.shape[0]
        self.arm_dof = arm_dof
        self.max_step = config.max_step(arm_dof, self.dof)

    def initial_distribution(self, q0: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean at the current joints (held for the whole horizon) and the per-group initial std."""
        q0 = self._check_q(q0)
        mean = np.repeat(np.clip(q0, self.lower, self.upper)[None], horizon, axis=0)
        std = np.repeat(self.config.initial_std(self.arm_dof, self.dof)[None], horizon, axis=0)
        return mean, std

    def project(self, samples: np.ndarray, q0: np.ndarray) -> np.ndarray:
        return project(samples, q0, self.lower, self.upper, self.max_step)

    def optimize(self, cost_fn: Callable[[np.ndarray], np.ndarray], q0: np.ndarray,
                 horizon: int | None = None, mean: np.ndarray | None = None, std: np.ndarray | None = None,
                 rng: np.random.Generator | None = None,
                 should_stop: Callable[[], bool] | None = None, hold: np.ndarray | None = None,
                 proposal: np.ndarray | None = None) -> CEMResult:
        """Minimise ``cost_fn`` over feasible (T, D) joint sequences starting from joints ``q0``.

        ``mean``/``std`` warm-start the distribution (shape (T, D)); by default it starts at ``q0``
        with the configured per-group std. ``should_stop`` is polled between iterations so that a
        cancelled goal does not wait for a full optimisation. ``hold`` (D,): joints not searched,
        targeted at these values at every step (NaN = searched), e.g. a closed hand carrying an
        object; the targets are projected like any sample, so the per-step cap still holds.
        ``proposal`` (T, D): a plan offered as one candidate of every iteration (projected like any
        sample), e.g. heading for joints estimated from the goal image; ranked like the others.
        """
        cfg = self.config
        q0 = self._check_q(q0)
        held = None
        if hold is not None:
            hold = np.asarray(hold, dtype=np.float64)
            if hold.shape != (self.dof,):
                raise ValueError(f"hold must have shape ({self.dof},), got {hold.shape}")
            if np.any(np.isinf(hold)):
                raise ValueError("hold contains inf (NaN marks a searched joint)")
            held = ~np.isnan(hold)
        horizon = int(horizon or cfg.horizon)
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        init_mean, init_std = self.initial_distribution(q0, horizon)
        mean = init_mean if mean is None else self._check_seq(mean, horizon, "mean")
        std = init_std if std is None else self._check_seq(std, horizon, "std")
        std = np.maximum(std, cfg.min_std)
        if held is not None:
            mean = np.where(held, hold, mean)
            std = np.where(held, 0.0, std)
        if proposal is not None:
            proposal = self._check_seq(proposal, horizon, "proposal")
            if held is not None:
                proposal = np.where(held, hold, proposal)
            proposal = self.project(proposal, q0)
        rng = rng if rng is not None else np.random.default_rng()

        best_plan, best_cost = None, np.inf
        history: list[float] = []
        evaluations = 0
        kept, kept_costs = np.zeros((0, horizon, self.dof)), np.zeros(0)
        for _ in range(cfg.iterations):
            noise = rng.standard_normal((cfg.samples, horizon, self.dof))
            samples = self.project(mean[None] + std[None] * noise, q0)
            # The current mean is always a candidate: CEM then never ends worse than its start.
            samples[0] = self.project(mean, q0)
            if proposal is not None and len(samples) > 1:
                samples[1] = proposal
            costs = self._evaluate(cost_fn, samples)
            evaluations += len(samples)
            samples, costs = np.concatenate([samples, kept]), np.concatenate([costs, kept_costs])
            order = np.argsort(costs, kind="stable")
            if costs[order[0]] < best_cost:
                best_cost = float(costs[order[0]])
                best_plan = samples[order[0]].copy()
            elites = samples[order[: cfg.elites]]
            kept, kept_costs = elites[: cfg.keep_elites], costs[order[: cfg.keep_elites]]
            mean = elites.mean(axis=0)
            std = np.maximum(elites.std(axis=0), cfg.min_std)
            if held is not None:
                mean, std = np.where(held, hold, mean), np.where(held, 0.0, std)
            history.append(best_cost)
            if should_stop is not None and should_stop():
                break
        return CEMResult(plan=best_plan, cost=best_cost, mean=self.project(mean, q0), std=std,
                         cost_history=history, evaluations=evaluations)

    def _evaluate(self, cost_fn, samples: np.ndarray) -> np.ndarray:
        chunks = []
        for start in range(0, len(samples), self.config.chunk):
            part = np.asarray(cost_fn(samples[start:start + self.config.chunk]), dtype=np.float64)
            if part.shape != (min(self.config.chunk, len(samples) - start),):
                raise ValueError(f"cost_fn must return one cost per sample, got shape {part.shape}")
            chunks.append(part)
        costs = np.concatenate(chunks)
        # A NaN cost (a diverging model) must never be chosen as an elite.
        return np.where(np.isfinite(costs), costs, np.inf)

    def _check_q(self, q0) -> np.ndarray:
        q0 = np.asarray(q0, dtype=np.float64)
        if q0.shape != (self.dof,):
            raise ValueError(f"current joints must have shape ({self.dof},), got {q0.shape}")
        if not np.all(np.isfinite(q0)):
            raise ValueError("current joints contain NaN/inf")
        return q0

    def _check_seq(self, x, horizon: int, name: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (horizon, self.dof):
            raise ValueError(f"{name} must have shape ({horizon}, {self.dof}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} contains NaN/inf")
        return x
