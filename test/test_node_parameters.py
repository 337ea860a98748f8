"""Node parameters declared from a settings dataclass: the declared descriptors (names, defaults,
bounds, read-only), start-up values checked, a bad change refused with the reason and nothing
changed, a good one applied after it took effect; the nodes' settings keep their parameters."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from dexwm_ros.camera_settings import CameraSettings
from dexwm_ros.node_parameters import NodeParameters, descriptor, setting, settings_problem
from dexwm_ros.planner_settings import PlannerSettings
from dexwm_ros.teleop_settings import TeleopSettings


@dataclass(frozen=True)
class Example:
    gain: float = setting(0.5, "a gain", bounds=(0.0, 1.0))
    count: int = setting(3, "a count", bounds=(1, 10))
    mode: str = setting("slow", "a mode", choices=("slow", "fast"))
    topic: str = setting("/x", "a topic", read_only=True)
    values: tuple = setting((), "a list of numbers", any_type=True)

    def problem(self):
        return "count must be even when fast" if self.mode == "fast" and self.count % 2 else None


def test_settings_problem_checks_bounds_choices_finiteness_and_relations():
    ok = Example()
    assert settings_problem(ok) is None
    assert "gain must be within [0, 1]" in settings_problem(dataclasses.replace(ok, gain=1.5))
    assert "gain must be finite" in settings_problem(dataclasses.replace(ok, gain=float("nan")))
    assert "mode must be one of slow, fast" in settings_problem(dataclasses.replace(ok, mode="warp"))
    assert settings_problem(dataclasses.replace(ok, mode="fast")) == "count must be even when fast"


def test_descriptors_carry_description_bounds_and_flags():
    fields = {f.name: f for f in dataclasses.fields(Example)}
    gain, count = descriptor(fields["gain"]), descriptor(fields["count"])
    assert gain.floating_point_range[0].to_value == 1.0 and not gain.integer_range
    assert count.integer_range[0].from_value == 1 and count.integer_range[0].step == 1
    assert "a gain" in gain.description and "allowed 0 .. 1" in gain.description
    assert "one of slow, fast" in descriptor(fields["mode"]).description
    assert descriptor(fields["topic"]).read_only and descriptor(fields["values"]).dynamic_typing


# The nodes' parameter names, defaults and declared bounds are part of the product (config/*.yaml).
PLANNER_BOUNDS = {"samples": (0, 8192), "elites": (0, 1024), "iterations": (0, 100), "horizon": (0, 16),
                  "std_arm": (1e-4, 2.0), "std_hand": (1e-4, 2.0), "max_step_arm": (1e-3, 0.5),
                  "max_step_hand": (1e-3, 1.0), "keypoint_weight": (0.0, 1.0), "orientation_weight": (0.0, 100.0),
                  "context_frames": (1, 32), "seed": (0, 2**31 - 1), "max_steps": (1, 10000),
                  "move_duration_s": (0.0, 30.0), "move_timeout_s": (0.0, 60.0), "goal_tolerance": (1e-4, 1.0),
                  "stale_timeout_s": (0.05, 60.0), "stale_abort_s": (0.1, 600.0), "done_cost": (-1.0, 1e3),
                  "plateau_steps": (0, 1000), "plateau_rel": (0.0, 0.99)}
TELEOP_BOUNDS = {"step_m": (1e-4, 0.1), "step_rad": (1e-3, 0.5), "max_joint_step": (1e-3, 0.5),
                 "damping": (1e-4, 1.0), "move_duration_s": (0.01, 10.0), "rate_hz": (1.0, 200.0),
                 "joy_deadzone": (0.0, 0.9), "stale_timeout_s": (0.05, 60.0)}


@pytest.mark.parametrize("settings, yaml_name, bounds, read_only", [
    (PlannerSettings, "planner.yaml", PLANNER_BOUNDS,
     {"checkpoint", "image_topic", "arm_state_topic", "hand_state_topic", "world_to_camera"}),
    (TeleopSettings, "teleop.yaml", TELEOP_BOUNDS, {"joy_topic"}),
    (CameraSettings, "camera.yaml", {}, {f.name for f in dataclasses.fields(CameraSettings)}),
])
def test_node_settings_keep_their_parameters(settings, yaml_name, bounds, read_only):
    import yaml

    from rosutil import ROOT

    fields = {f.name: f for f in dataclasses.fields(settings)}
    shipped = yaml.safe_load((ROOT / "config" / yaml_name).read_text())["/**"]["ros__parameters"]
    assert set(shipped) <= set(fields), set(shipped) - set(fields)
    for name, value in shipped.items():
        assert fields[name].default == value, name           # the YAML repeats the defaults
    assert {n: f.metadata["bounds"] for n, f in fields.items() if f.metadata["bounds"]} == bounds
    assert {n for n, f in fields.items() if f.metadata["read_only"]} == read_only
    assert settings_problem(settings()) is None


def test_planner_settings_refuse_bad_combinations():
    s = PlannerSettings()
    assert "elites (100) must not exceed samples (48)" in settings_problem(dataclasses.replace(s, elites=100))
    assert "sequence name" in settings_problem(dataclasses.replace(s, capture_sequence=" x"))
    assert "16 finite numbers" in settings_problem(dataclasses.replace(s, world_to_camera=(1.0,) * 12))
    assert "task must be one of" in settings_problem(dataclasses.replace(s, task="fly"))
    w2c = dataclasses.replace(s, world_to_camera=tuple(float(i == j) for i in range(4) for j in range(4)))
    assert settings_problem(w2c) is None and w2c.camera_extrinsic().shape == (4, 4)
    cem = dataclasses.replace(s, samples=64, horizon=2).cem()
    assert (cem.samples, cem.horizon, cem.chunk) == (64, 2, 48)
    assert s.stop_rule(7, None).done_cost == 0.0 and s.stop_rule(7, 0.3).done_cost == 0.3
    assert dataclasses.replace(s, done_cost=0.1).stop_rule(7, 0.3).done_cost == 0.1


@pytest.fixture
def node(rclpy_context):
    import rclpy

    made = []

    def make(overrides=()):
        n = rclpy.create_node("parameters_test", context=rclpy_context,
                              parameter_overrides=[rclpy.parameter.Parameter(k, value=v) for k, v in overrides])
        made.append(n)
        return n
    yield make
    for n in made:
        n.destroy_node()


def test_declared_checked_refused_and_applied_on_a_node(node):
    from rclpy.parameter import Parameter

    applied = []
    n = node([("count", 4)])
    params = NodeParameters(n, Example, check=lambda s, changed: "no gain of 0.25" if s.gain == 0.25 else None,
                            apply=lambda s, changed: applied.append((s, changed)))
    assert params.values == Example(count=4) and n.get_parameter("values").value == []
    assert n.describe_parameter("gain").floating_point_range[0].to_value == 1.0
    # outside the declared range: rclpy refuses; a relation or the node's check: refused here
    for change, why in (({"gain": 2.0}, "gain"), ({"mode": "warp"}, "mode must be one of"),
                        ({"mode": "fast", "count": 3}, "count must be even"), ({"gain": 0.25}, "no gain of 0.25")):
        result = n.set_parameters_atomically([Parameter(k, value=v) for k, v in change.items()])
        assert not result.successful and why in result.reason, result.reason
    assert params.values == Example(count=4) and applied == [] and n.get_parameter("gain").value == 0.5
    assert n.set_parameters([Parameter("topic", value="/y")])[0].successful is False      # read-only
    assert n.set_parameters_atomically([Parameter("mode", value="fast"), Parameter("gain", value=0.75)]).successful
    assert params.values == Example(gain=0.75, count=4, mode="fast")
    assert applied == [(params.values, {"mode", "gain"})]
    assert n.set_parameters([Parameter("values", value=[1.0, 2.0])])[0].successful
    assert params.values.values == (1.0, 2.0)


def test_a_bad_start_up_value_stops_the_node(node):
    with pytest.raises(ValueError, match="count must be even when fast"):
        NodeParameters(node([("mode", "fast")]), Example)
