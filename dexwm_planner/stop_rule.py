"""When the planner decides it is done: the rule it uses on hardware, where no simulator says so.

A robot has no success flag. The planner watches the latent cost (MSE between the encoded current
frame and the encoded goal image) before each replan and stops when

* ``reached``: the cost is below ``done_cost``, a threshold fitted on demonstrations (``fit_done_cost``:
  frames where the task's success rule holds against frames where it does not, seeds disjoint
  from the evaluation's), stored beside the checkpoint (``<checkpoint>.stop.json``);
* ``plateau``: the best cost has not improved by ``plateau_rel`` (relative) over the last
  ``plateau_steps`` executed steps (0 = off);
* ``budget``: ``max_steps`` steps were executed.

The planner node, the in-process evaluation and the tests use this one rule. ROS-free.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REACHED, PLATEAU, BUDGET = "reached", "plateau", "budget"


@dataclass(frozen=True)
class StopRule:
    done_cost: float = 0.0        # latent MSE below which the goal counts as reached; 0 = off
    plateau_steps: int = 0        # stop when the best cost did not improve over this many steps; 0 = off
    plateau_rel: float = 0.02     # ... by at least this fraction
    max_steps: int = 40

    def __post_init__(self):
        if not (math.isfinite(self.done_cost) and self.done_cost >= 0):
            raise ValueError(f"done_cost must be a finite number >= 0, got {self.done_cost}")
        if not (isinstance(self.plateau_steps, int) and self.plateau_steps >= 0):
            raise ValueError(f"plateau_steps must be an integer >= 0, got {self.plateau_steps}")
        if not (math.isfinite(self.plateau_rel) and 0 <= self.plateau_rel < 1):
            raise ValueError(f"plateau_rel must be in [0, 1), got {self.plateau_rel}")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 0):
            raise ValueError(f"max_steps must be an integer >= 0, got {self.max_steps}")

    def decide(self, costs: list[float], steps: int) -> str | None:
        """Why to stop now, or None to go on. ``costs``: the current cost before each replan so far,
        the newest last (taken on the current frame); ``steps``: executed steps so far."""
        if costs and self.done_cost > 0 and costs[-1] < self.done_cost:
            return REACHED
        if steps >= self.max_steps:
            return BUDGET
        n = self.plateau_steps
        if n > 0 and len(costs) > n:
            before = min(costs[:-n])
            recent = min(costs[-n:])
            if not recent < before * (1.0 - self.plateau_rel):
                return PLATEAU
        return None


# ------------------------------------------------------------------------------------ the fit
def stop_file(checkpoint: str | Path) -> Path:
    """Where the fitted thresholds of a checkpoint live: beside it, ``<name>.stop.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".stop.json")


def best_threshold(costs_success: np.ndarray, costs_failure: np.ndarray, max_false_stop: float = 0.05) -> dict:
    """The largest threshold at which at most ``max_false_stop`` of the failing frames would stop
    the planner (a false stop ends an episode that could still succeed), and how it separates."""
    pos = np.sort(np.asarray(costs_success, dtype=np.float64))
    neg = np.sort(np.asarray(costs_failure, dtype=np.float64))
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("fitting a threshold needs frames where the rule holds and frames where it does not")
    # Candidates: midpoints between consecutive sorted costs of either kind.
    allc = np.unique(np.r_[pos, neg])
    candidates = np.r_[allc[0] * 0.5, (allc[1:] + allc[:-1]) / 2, allc[-1] * 1.5]
    false_stop = np.searchsorted(neg, candidates, side="left") / len(neg)
    recall = np.searchsorted(pos, candidates, side="left") / len(pos)
    ok = false_stop <= max_false_stop
    i = int(np.nonzero(ok)[0].max()) if ok.any() else 0
    return {"threshold": float(candidates[i]), "recall": float(recall[i]), "false_stop_rate": float(false_stop[i]),
            "n_success": int(len(pos)), "n_failure": int(len(neg))}


@dataclass(frozen=True)
class FittedStop:
    """Per task kind (reach, grasp, place) fitted thresholds of one checkpoint."""

    done_cost: dict
    details: dict

    def for_kind(self, kind: str) -> float:
        return float(self.done_cost.get(kind, 0.0))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "FittedStop":
        data = json.loads(Path(path).read_text())
        costs = data.get("done_cost")
        if not isinstance(costs, dict) or not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                                                  for v in costs.values()):
            raise ValueError(f"{path}: 'done_cost' must map task kinds to finite numbers >= 0")
        return cls(done_cost={k: float(v) for k, v in costs.items()}, details=data.get("details", {}))


def load_fitted(checkpoint: str | Path) -> FittedStop | None:
    """The fitted thresholds of a checkpoint, or None when it has none."""
    path = stop_file(checkpoint)
    return FittedStop.load(path) if path.is_file() else None
