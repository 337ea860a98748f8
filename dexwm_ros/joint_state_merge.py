"""Merging the arm's and the hand's joint states into one robot state (ROS-free).

robot_state_publisher (and RViz through it) reads a single ``/joint_states``; the drivers publish
``/franka/joint_states`` (7 joints) and ``/allegro/joint_states`` (16 joints) at their own rates.
``JointStateMerger`` keeps the latest state of each source and, on every update, returns the union:
sources in the configured order, each source's joints in its own order. A source whose latest stamp
is more than ``max_age`` seconds older than the newest one is left out, so a dead driver makes its
links stale in TF instead of frozen at a position it no longer has. velocity/effort are merged only
when every included source has them (sensor_msgs/JointState: empty or one per name).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class JointSample:
    """One source's joint state: names and per-name values, stamped in seconds."""

    names: tuple[str, ...]
    position: tuple[float, ...]
    velocity: tuple[float, ...] = ()
    effort: tuple[float, ...] = ()
    stamp: float = 0.0


@dataclass(frozen=True)
class MergedState:
    names: list[str] = field(default_factory=list)
    position: list[float] = field(default_factory=list)
    velocity: list[float] = field(default_factory=list)
    effort: list[float] = field(default_factory=list)
    stamp: float = 0.0
    sources: tuple[str, ...] = ()


class RejectedSample(ValueError):
    """A sample that cannot be merged (the message says why); the previous state stays in use."""


class JointStateMerger:
    def __init__(self, sources: Sequence[str], max_age: float = 0.5):
        if not sources or len(set(sources)) != len(sources):
            raise ValueError(f"sources must be distinct and non-empty, got {list(sources)}")
        if not (max_age > 0 and math.isfinite(max_age)):
            raise ValueError(f"max_age must be a positive number of seconds, got {max_age}")
        self.sources = tuple(sources)
        self.max_age = float(max_age)
        self._latest: dict[str, JointSample] = {}

    def _check(self, source: str, sample: JointSample) -> None:
        if source not in self.sources:
            raise RejectedSample(f"unknown source {source!r}")
        n = len(sample.names)
        if n == 0 or len(sample.position) != n:
            raise RejectedSample(f"{source}: {len(sample.position)} positions for {n} names")
        if len(set(sample.names)) != n:
            raise RejectedSample(f"{source}: duplicate joint names")
        for key in ("velocity", "effort"):
            if len(getattr(sample, key)) not in (0, n):
                raise RejectedSample(f"{source}: {len(getattr(sample, key))} {key} values for {n} names")
        if not all(math.isfinite(v) for v in sample.position) or not math.isfinite(sample.stamp):
            raise RejectedSample(f"{source}: non-finite position or stamp")
        for other, kept in self._latest.items():
            if other != source and set(kept.names) & set(sample.names):
                raise RejectedSample(f"{source}: joints {sorted(set(kept.names) & set(sample.names))} "
                                     f"are already published by {other}")

    def update(self, source: str, sample: JointSample) -> MergedState:
        """Store a source's latest state and return the merged state (raises RejectedSample)."""
        self._check(source, sample)
        self._latest[source] = sample
        return self.merged()

    def merged(self) -> MergedState:
        if not self._latest:
            return MergedState()
        newest = max(s.stamp for s in self._latest.values())
        used = [src for src in self.sources
                if src in self._latest and newest - self._latest[src].stamp <= self.max_age]
        samples = [self._latest[src] for src in used]
        out = MergedState(stamp=newest, sources=tuple(used))
        for s in samples:
            out.names.extend(s.names)
            out.position.extend(float(v) for v in s.position)
        for key in ("velocity", "effort"):
            if all(len(getattr(s, key)) == len(s.names) for s in samples):
                for s in samples:
                    getattr(out, key).extend(float(v) for v in getattr(s, key))
        return out
