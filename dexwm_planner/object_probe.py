"""Object-position probe: a ridge regression from one frame's latent to the xyz positions of the
scene's objects, fitted on a checkpoint's training episodes and stored beside the checkpoint
(``<name>.probe.npz``). The open-loop evaluation (``eval_wm``) applies it to *predicted* latents to
say whether the world model predicts where objects go, in centimetres, which latent error and
hand PCK cannot tell.

Why a linear probe: it measures what the latent already holds in a form a planner's cost can use
(distances in latent space), not what a deep read-out could extract; and it fits in closed form on
CPU from per-episode sums, so 500 episodes x 50 frames need the memory of one episode and of
the F x F sums (80 MB for 49 x 64 latents), not of all frames.

Targets: ``position`` reads where each object is from the latent alone; ``change`` reads how far
each object moved between two latents (fitted on frame pairs of the same episode) and adds that to
the positions recorded at the last context frame, the same information the "nothing moves"
baseline has. A latent that registers an object's motion better than its absolute place (most
objects stand still, so 500 episodes are only 500 layouts) reads better this way.

Features: the flattened patch latents (``flat``: P x d, each patch position keeps its own weights,
so where an object sits in the image can map to where it is) or their mean over patches
(``mean``: d; position is mostly lost). ``models/README.md`` records the measured choice.

Fit: the episodes the checkpoint trained on are split off exactly as ``dexwm-train`` split them
(``probe_split``); the ridge strength is chosen on a tenth of those training episodes held out of
the fit, then the probe is refitted on all of them. The held-out episodes are never seen by
either the model or the probe, and the file records both lists.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from .paths import recorded_path

log = logging.getLogger(__name__)

POOLINGS = ("flat", "mean")
TARGETS = ("position", "change")
# Frame gaps of the pairs a change probe is fitted on: the evaluation's horizons, 0.2 s to 4 s.
CHANGE_GAPS = (1, 2, 5, 10, 20)
ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
# An object "moved" over a horizon when it is this far from where it was at the last context frame
# (the 1 cm dexwm-collect uses for its moving fraction).
MOVED_M = 0.01


def probe_file(checkpoint: str | Path) -> Path:
    """Where a checkpoint's probe lives: beside it, ``<name>.probe.npz`` (as ``<name>.stop.json``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".probe.npz")


def features(latents, pooling: str) -> np.ndarray:
    """(N, P, d) latents -> (N, F) float64 probe inputs."""
    x = np.asarray(latents, dtype=np.float64)
    if pooling == "flat":
        return x.reshape(len(x), -1)
    if pooling == "mean":
        return x.mean(1)
    raise ValueError(f"unknown probe pooling {pooling!r}: one of {POOLINGS}")


def probe_split(episodes, meta: dict, seed: int = 0, fraction: float | None = None):
    """(training, held-out) episodes as ``dexwm-train`` split them when ``episodes`` are the
    checkpoint's training data in the same order (its ``val_episodes`` / ``episodes`` fraction,
    split seed 0 by default); for other data the same rule (or ``fraction``) gives a fixed split,
    e.g. the same held-out episodes for two checkpoints."""
    from .train import DEFAULTS, split_episodes
    n, n_val = meta.get("episodes"), meta.get("val_episodes")
    if fraction is None:
        fraction = n_val / n if n and n_val is not None else DEFAULTS["val_fraction"]
    return split_episodes(list(episodes), fraction, seed)


def probe_episodes(wm, data: str, kind: str = "sim", seed: int = 0, fraction: float | None = None):
    """(training, held-out) episodes of every readable episode under ``data``, split by
    ``probe_split``; ValueError when none can be read."""
    from .datasets import load_episodes
    episodes, skipped = load_episodes(data, kind)
    if not episodes:
        raise ValueError(f"no readable episodes in {data} ({skipped} broken)")
    return probe_split(episodes, wm.meta, seed, fraction)


class _Sums:
    """Running sums from which a ridge fit on all frames added so far is solved."""

    def __init__(self, f: int, k: int):
        self.n, self.sx, self.sy = 0, np.zeros(f), np.zeros(k)
        self.sxx, self.sxy = np.zeros((f, f)), np.zeros((f, k))

    def add(self, x: np.ndarray, y: np.ndarray):
        self.n += len(x)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += x.T @ x
        self.sxy += x.T @ y

    def __iadd__(self, other: "_Sums"):
        for name in ("n", "sx", "sy", "sxx", "sxy"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def solve(self, alpha: float):
        """Ridge weights on centred data; alpha is per frame, so it does not depend on the count."""
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.sxx / self.n - np.outer(mx, mx)
        cxy = self.sxy / self.n - np.outer(mx, my)
        w = np.linalg.solve(cxx + alpha * np.eye(len(mx)), cxy)
        return w, mx, my


class ObjectProbe:
    """xyz of K objects from a frame's latent: ``y = (features(latent) - x_mean) @ weights + y_mean``."""

    def __init__(self, weights, x_mean, y_mean, pooling: str, latent_shape, meta: dict | None = None,
                 target: str = "position"):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.x_mean = np.asarray(x_mean, dtype=np.float64)
        self.y_mean = np.asarray(y_mean, dtype=np.float64)
        self.pooling = pooling
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.meta = dict(meta or {})
        if target not in TARGETS:
            raise ValueError(f"unknown probe target {target!r}: one of {TARGETS}")
        self.target = target

    @property
    def num_objects(self) -> int:
        return self.weights.shape[1] // 3

    def __call__(self, latents) -> np.ndarray:
        """(N, P, d) latents -> (N, K, 3) object positions [m]."""
        latents = np.asarray(latents)
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"probe fitted on latents of shape {self.latent_shape}, got {tuple(latents.shape[1:])}")
        y = (features(latents, self.pooling) - self.x_mean) @ self.weights + self.y_mean
        return y.reshape(len(y), self.num_objects, 3)

    def read(self, latents, context_latent, context_positions) -> np.ndarray:
        """Object positions (N, K, 3) for the frames of ``latents`` after a context frame whose latent
        (P, d) and recorded positions (K, 3) are given: a change probe adds the change it reads
        between the two latents to those positions; a position probe reads ``latents`` alone."""
        if self.target == "position":
            return self(latents)
        return np.asarray(context_positions) + self(latents) - self(np.asarray(context_latent)[None])

    def save(self, path: str | Path):
        tmp = f"{path}.tmp{os.getpid()}.npz"
        np.savez(tmp, weights=self.weights.astype(np.float32), x_mean=self.x_mean, y_mean=self.y_mean,
                 pooling=np.array(self.pooling), latent_shape=np.array(self.latent_shape),
                 meta=np.array(json.dumps(self.meta)), target=np.array(self.target))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "ObjectProbe":
        with np.load(path) as z:
            return cls(z["weights"], z["x_mean"], z["y_mean"], str(z["pooling"]), z["latent_shape"],
                       json.loads(str(z["meta"])), str(z["target"]) if "target" in z else "position")


def _object_frames(latents, positions, num_objects: int | None):
    """(latents, flattened positions) of an episode, or None when it has no (matching) objects."""
    if positions is None or (num_objects is not None and positions.shape[1] != num_objects):
        return None
    return np.asarray(latents), np.asarray(positions, dtype=np.float64).reshape(len(positions), -1)


def _changes(x: np.ndarray, y: np.ndarray):
    """Feature and position differences of the frame pairs CHANGE_GAPS apart within an episode."""
    gaps = [g for g in CHANGE_GAPS if g < len(x)]
    return (np.concatenate([x[g:] - x[:-g] for g in gaps]), np.concatenate([y[g:] - y[:-g] for g in gaps]))


def _tuning_error(err: np.ndarray, y: np.ndarray, target: str) -> float:
    """The error [cm] the ridge strength is chosen by. For a change probe, moved and still objects
    count alike: most pairs are still, and over all pairs the best probe would read no change at
    all (it would be "nothing moves")."""
    if target == "change":
        moved = np.linalg.norm(y, axis=-1) > MOVED_M
        if moved.any() and not moved.all():
            return float((err[moved].mean() + err[~moved].mean()) / 2 * 100)
    return float(err.mean() * 100)


def fit(episodes, pooling: str = "flat", alphas=ALPHAS, tune_fraction: float = 0.1, seed: int = 0,
        target: str = "position"):
    """Fit a probe on ``episodes``: an iterable of (name, latents (N, P, d), object positions
    (N, K, 3) or None) read one at a time. Returns the probe; its meta has the chosen alpha, the
    tuning errors (mean over frames, or over frame pairs for a change probe) and the fitted
    episode names."""
    if target not in TARGETS:
        raise ValueError(f"unknown probe target {target!r}: one of {TARGETS}")
    rng = np.random.default_rng(seed)
    fit_sums = tune_sums = None
    tune_x, tune_y, names, shape, k = [], [], [], None, None
    for name, latents, positions in episodes:
        got = _object_frames(latents, positions, k)
        if got is None:
            log.warning("probe: %s has no object positions (or another object count); not fitted on", name)
            continue
        lat, y = got
        if shape is None:
            shape, k = lat.shape[1:], positions.shape[1]
            x0 = features(lat[:1], pooling)
            fit_sums, tune_sums = _Sums(x0.shape[1], y.shape[1]), _Sums(x0.shape[1], y.shape[1])
        x = features(lat, pooling)
        if target == "change":
            x, y = _changes(x, y)
        names.append(os.path.basename(name))
        # Whole episodes go to the tuning part, so the alpha is chosen on frames of unseen episodes.
        if rng.random() < tune_fraction:
            tune_sums.add(x, y)
            tune_x.append(x)
            tune_y.append(y)
        else:
            fit_sums.add(x, y)
    if fit_sums is None or fit_sums.n == 0:
        raise ValueError("no episode with object positions to fit the probe on")
    tuning = {}
    if tune_x:
        tx, ty = np.concatenate(tune_x), np.concatenate(tune_y)
        for a in alphas:
            w, mx, my = fit_sums.solve(a)
            err = np.linalg.norm(((tx - mx) @ w + my - ty).reshape(len(ty), k, 3), axis=-1)
            tuning[str(a)] = _tuning_error(err, ty.reshape(len(ty), k, 3), target)
        alpha = float(min(alphas, key=lambda a: tuning[str(a)]))
    else:
        alpha = float(alphas[len(alphas) // 2])
    fit_sums += tune_sums
    w, mx, my = fit_sums.solve(alpha)
    meta = {"alpha": alpha, "tuning_error_cm": tuning, "fit_episodes": names, "fit_rows": int(fit_sums.n),
            "tune_fraction": tune_fraction}
    return ObjectProbe(w, mx, my, pooling, shape, meta, target)


def readout_errors(probe: ObjectProbe, predicted, actual, positions, last_latent, last_positions) -> dict:
    """Per horizon step and object (H, K), in metres: the probe on the predicted latents, on the
    actual latents (the probe's own floor) and "nothing moves" (the objects where they were at the
    last context frame), all against the recorded positions; plus which objects moved (> 1 cm).
    Only the last context frame's latent and positions are known at prediction time."""
    positions = np.asarray(positions, dtype=np.float64)
    still = np.broadcast_to(np.asarray(last_positions, dtype=np.float64), positions.shape)
    nothing_moves = np.linalg.norm(still - positions, axis=-1)
    return {"predicted": np.linalg.norm(probe.read(predicted, last_latent, last_positions) - positions, axis=-1),
            "true_latents": np.linalg.norm(probe.read(actual, last_latent, last_positions) - positions, axis=-1),
            "nothing_moves": nothing_moves, "moved": nothing_moves > MOVED_M}


def fit_for_checkpoint(wm, checkpoint: str, data: str, kind: str = "sim", cache_dir=None,
                       pooling: str = "flat", seed: int = 0, fraction: float | None = None,
                       limit: int | None = None, target: str = "position") -> tuple:
    """Fit the probe of a loaded checkpoint on the training part of ``data`` (``probe_split``; at
    most ``limit`` of those episodes, where encoding them all takes too long), reading one
    episode's latents at a time (backbone tokens from ``cache_dir`` when cached).
    Returns (probe, held-out episodes); the probe's meta says what it was fitted on."""
    from .datasets import projected_latents
    train, held_out = probe_episodes(wm, data, kind, seed, fraction)

    def latents():
        for ep in train[:limit]:
            yield ep.name, projected_latents(ep, wm.encoder, cache_dir).numpy(), ep.object_positions

    probe = fit(latents(), pooling, seed=seed, target=target)
    probe.meta.update(checkpoint=os.path.basename(str(checkpoint)), data=recorded_path(data), kind=kind,
                      split_seed=seed, split_fraction=fraction, held_out_episodes=[os.path.basename(e.name) for e in held_out])
    return probe, held_out
