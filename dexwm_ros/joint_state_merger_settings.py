"""The joint_state_merger node's parameters as one ROS-free dataclass (declared by
dexwm_ros.node_parameters; read-only: the subscriptions are made with them once)."""
from __future__ import annotations

from dataclasses import dataclass

from dexwm_ros.node_settings import setting


@dataclass(frozen=True)
class JointStateMergerSettings:
    sources: tuple = setting(("/franka/joint_states", "/allegro/joint_states"),
                             "JointState topics to merge, in output order", read_only=True)
    max_age_s: float = setting(0.5, "leave out a source whose latest stamp is this much older than the newest [s]",
                               bounds=(0.01, 60.0), read_only=True)

    def problem(self) -> str | None:
        if not self.sources or not all(isinstance(t, str) and t for t in self.sources):
            return "sources must be a non-empty list of topic names"
        if len(set(self.sources)) != len(self.sources):
            return f"sources must not repeat a topic, got {list(self.sources)}"
        return None
