"""Node parameters declared from a settings dataclass: the declared descriptors (names, defaults,
bounds, read-only), start-up values checked, a bad change refused with the reason and nothing
changed, a good one applied after it took effect; the nodes' settings keep their parameters."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from dexwm_ros.allegro_settings import AllegroSettings
from dexwm_ros.camera_settings import CameraSettings
from dexwm_ros.franka_settings import FrankaSettings
from dexwm_ros.joint_state_merger_settings import JointStateMergerSettings
from dexwm_ros.node_parameters import NodeParameters, descriptor
from dexwm_ros.node_settings import setting, settings_problem
from dexwm_ros.planner_settings import PlannerSettings
from dexwm_ros.sim_settings import SimSettings
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
    seed = descriptor(next(f for f in dataclasses.fields(SimSettings) if f.name == "seed"))
    assert seed.dynamic_typing and seed.read_only and seed.integer_range[0].to_value == 2**32 - 1
    assert seed.description.endswith("allowed 0 .. 4294967295")
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
                  "hand_pixel_weight": (0.0, 1.0), "goal_orientation_weight": (0.0, 100.0),
                  "goal_wrist_depth_weight": (0.0, 1000.0), "context_frames": (1, 32), "seed": (0, 2**31 - 1), "max_steps": (1, 10000),
                  "move_duration_s": (0.0, 30.0), "move_timeout_s": (0.0, 60.0), "goal_tolerance": (1e-4, 1.0),
                  "stale_timeout_s": (0.05, 60.0), "stale_abort_s": (0.1, 600.0), "done_cost": (-1.0, 1e3),
                  "plateau_steps": (0, 1000), "plateau_rel": (0.0, 0.99)}
TELEOP_BOUNDS = {"step_m": (1e-4, 0.1), "step_rad": (1e-3, 0.5), "max_joint_step": (1e-3, 0.5),
                 "damping": (1e-4, 1.0), "move_duration_s": (0.01, 10.0), "rate_hz": (1.0, 200.0),
                 "joy_deadzone": (0.0, 0.9), "stale_timeout_s": (0.05, 60.0)}
# The drivers' MoveJoints defaults and command age (dexwm_ros.driver_settings).
GOAL_DEFAULT_BOUNDS = {"tolerance": (1e-4, 1.0), "time_limit": (0.1, 600.0), "max_command_age_s": (0.05, 60.0)}
FRANKA_BOUNDS = {"relative_dynamics_factor": (0.001, 1.0), "max_joint_step": (0.001, 0.5),
                 "watchdog_timeout_s": (0.05, 10.0), "reconnect_period_s": (0.1, 60.0),
                 "goal_tolerance": GOAL_DEFAULT_BOUNDS["tolerance"],
                 "default_time_limit_s": GOAL_DEFAULT_BOUNDS["time_limit"],
                 "max_command_age_s": GOAL_DEFAULT_BOUNDS["max_command_age_s"]}
FRANKA_READ_ONLY = {"robot_ip", "rate_hz", "lower_torque_thresholds", "upper_torque_thresholds",
                    "lower_force_thresholds", "upper_force_thresholds", "joint_lower_limits", "joint_upper_limits",
                    "enforce_realtime"}
ALLEGRO_BOUNDS = {"control_rate_hz": (50.0, 1000.0), "publish_rate_hz": (1.0, 333.0),
                  "diagnostics_rate_hz": (0.1, 10.0),
                  "max_joint_velocity": (0.01, 20.0), "encoder_timeout_s": (0.005, 1.0),
                  "command_timeout_s": (0.01, 3600.0), "kp": (0.0, 5.0), "kd": (0.0, 0.3),
                  "goal_tolerance": GOAL_DEFAULT_BOUNDS["tolerance"],
                  "goal_time_limit_s": GOAL_DEFAULT_BOUNDS["time_limit"],
                  "max_command_age_s": GOAL_DEFAULT_BOUNDS["max_command_age_s"], "temperature_warn_c": (20.0, 120.0)}
ALLEGRO_LIVE = {"kp", "kd", "goal_tolerance", "goal_time_limit_s", "max_command_age_s", "temperature_warn_c",
                "stop_mode"}
ALLEGRO_READ_ONLY = {"can_interface", "can_channel", "can_bitrate", "device_id", "emulate_hand", "hand",
                     "control_rate_hz", "realtime_priority", "publish_rate_hz", "diagnostics_rate_hz", "torque_limit",
                     "pwm_limit", "encoder_direction", "encoder_offset", "motor_direction", "max_joint_velocity",
                     "encoder_timeout_s", "command_timeout_s"}
SIM_BOUNDS = {"seed": (0, 2**32 - 1), "arm_goal_tolerance": GOAL_DEFAULT_BOUNDS["tolerance"],
              "hand_goal_tolerance": GOAL_DEFAULT_BOUNDS["tolerance"],
              "arm_time_limit_s": GOAL_DEFAULT_BOUNDS["time_limit"],
              "hand_time_limit_s": GOAL_DEFAULT_BOUNDS["time_limit"],
              "max_command_age_s": GOAL_DEFAULT_BOUNDS["max_command_age_s"], "max_joint_step": (0.001, 0.5)}
SIM_READ_ONLY = {"task", "seed", "real_time_factor", "lockstep", "image_rate_hz", "image_width", "image_height",
                 "publish_depth", "state_rate_hz", "arm_speed", "hand_speed", "max_joint_step", "frame_id"}
SIM_LIVE = {"arm_goal_tolerance", "hand_goal_tolerance", "arm_time_limit_s", "hand_time_limit_s", "max_command_age_s"}
# Values the shipped YAML sets on purpose to other than the defaults (the FR3's graded collision thresholds).
YAML_CHOICES = {"lower_torque_thresholds", "upper_torque_thresholds", "lower_force_thresholds",
                "upper_force_thresholds"}


@pytest.mark.parametrize("settings, yaml_name, bounds, read_only", [
    (PlannerSettings, "planner.yaml", PLANNER_BOUNDS,
     {"checkpoint", "goal_hand_reader", "goal_orientation_reader", "image_topic", "depth_topic", "arm_state_topic", "hand_state_topic", "world_to_camera"}),
    (TeleopSettings, "teleop.yaml", TELEOP_BOUNDS, {"joy_topic"}),
    (CameraSettings, "camera.yaml", {}, {f.name for f in dataclasses.fields(CameraSettings)}),
    (FrankaSettings, "franka.yaml", FRANKA_BOUNDS, FRANKA_READ_ONLY),
    (AllegroSettings, "allegro.yaml", ALLEGRO_BOUNDS, ALLEGRO_READ_ONLY),
    (SimSettings, "sim.yaml", SIM_BOUNDS, SIM_READ_ONLY),
    (JointStateMergerSettings, "joint_state_merger.yaml", {"max_age_s": (0.01, 60.0)}, {"sources", "max_age_s"}),
])
def test_node_settings_keep_their_parameters(settings, yaml_name, bounds, read_only):
    import yaml

    from rosutil import ROOT

    fields = {f.name: f for f in dataclasses.fields(settings)}
    shipped = yaml.safe_load((ROOT / "config" / yaml_name).read_text())["/**"]["ros__parameters"]
    assert set(shipped) <= set(fields), set(shipped) - set(fields)
    shipped = {name: tuple(v) if isinstance(v, list) else v for name, v in shipped.items()}
    for name, value in shipped.items():
        if name not in YAML_CHOICES:
            assert fields[name].default == value, name           # the YAML repeats the defaults
    assert {n: f.metadata["bounds"] for n, f in fields.items() if f.metadata["bounds"]} == bounds
    assert {n for n, f in fields.items() if f.metadata["read_only"]} == read_only
    assert settings_problem(settings()) is None
    assert settings_problem(settings(**shipped)) is None


@pytest.mark.parametrize("settings, live", [
    (FrankaSettings, set(FRANKA_BOUNDS)), (AllegroSettings, ALLEGRO_LIVE), (SimSettings, SIM_LIVE)])
def test_driver_settings_keep_every_parameter(settings, live):
    """Every parameter the driver nodes declared by hand: the read-only ones and the live ones."""
    read_only = {FrankaSettings: FRANKA_READ_ONLY, AllegroSettings: ALLEGRO_READ_ONLY, SimSettings: SIM_READ_ONLY}
    names = {f.name for f in dataclasses.fields(settings)}
    assert names == read_only[settings] | live and not read_only[settings] & live


def test_driver_settings_refuse_what_the_nodes_refused():
    franka, hand, sim = FrankaSettings(), AllegroSettings(), SimSettings()
    assert "needs 7 finite values" in settings_problem(dataclasses.replace(franka, joint_lower_limits=(0.0,) * 6))
    assert "rate_hz must be a positive number" in settings_problem(dataclasses.replace(franka, rate_hz=0.0))
    assert "max_joint_step must be within [0.001, 0.5]" in settings_problem(dataclasses.replace(franka,
                                                                                               max_joint_step=1.0))
    assert "kd: expected 16 values, got 15" in settings_problem(dataclasses.replace(hand, kd=(0.03,) * 15))
    assert "kp must be within [0, 5]" in settings_problem(dataclasses.replace(hand, kp=(-1.0,) * 16))
    assert "kp must be finite" in settings_problem(dataclasses.replace(hand, kp=(float("nan"),) * 16))
    assert "stop_mode must be one of hold, torque_off" in settings_problem(dataclasses.replace(hand, stop_mode="off"))
    assert "hand must be 'right' or 'left'" in settings_problem(dataclasses.replace(hand, hand="middle"))
    assert hand.controller_config().kp.shape == (16,)
    assert "seed must be an integer, got 1e+23" in settings_problem(dataclasses.replace(sim, seed=1e23))
    assert "unknown task 'fly'" in settings_problem(dataclasses.replace(sim, task="fly"))
    assert "image size must be within" in settings_problem(dataclasses.replace(sim, image_width=641))
    assert "arm_speed must be a positive number" in settings_problem(dataclasses.replace(sim, arm_speed=-1.0))
    config = dataclasses.replace(sim, image_width=320, image_height=240).runner_config()
    assert config.image_size == config.goal_size == (320, 240) and config.arm_max_joint_step == 0.5


def test_settings_modules_are_ros_free():
    import os
    import subprocess
    import sys

    from rosutil import ROOT

    modules = ["dexwm_ros.node_settings", "dexwm_ros.driver_settings", "dexwm_ros.franka_settings",
               "dexwm_ros.allegro_settings", "dexwm_ros.sim_settings", "dexwm_ros.joint_state_merger_settings"]
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rcl_interfaces')))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_planner_settings_refuse_bad_combinations():
    from dexwm_planner.cem import CPU

    s = PlannerSettings()
    too_many_elites = settings_problem(dataclasses.replace(s, elites=100))
    assert f"elites (100) must not exceed samples ({CPU.samples})" in too_many_elites
    assert "sequence name" in settings_problem(dataclasses.replace(s, capture_sequence=" x"))
    assert "16 finite numbers" in settings_problem(dataclasses.replace(s, world_to_camera=(1.0,) * 12))
    assert "task must be one of" in settings_problem(dataclasses.replace(s, task="fly"))
    w2c = dataclasses.replace(s, world_to_camera=tuple(float(i == j) for i in range(4) for j in range(4)))
    assert settings_problem(w2c) is None and w2c.camera_extrinsic().shape == (4, 4)
    assert s.mpc("reach").objective.hand_pixel_weight == 1e-3
    assert dataclasses.replace(s, hand_pixel_weight=0.0).mpc("place").objective.hand_pixel_weight == 0.0
    # More samples than the preset's chunk: evaluated in chunks of the preset's size (peak memory).
    cem = dataclasses.replace(s, samples=CPU.chunk + 16, horizon=2).cem()
    assert (cem.samples, cem.horizon, cem.chunk) == (CPU.chunk + 16, 2, CPU.chunk)
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


def test_merger_settings_refuse_no_or_repeated_sources():
    assert "non-empty" in settings_problem(JointStateMergerSettings(sources=()))
    assert "must not repeat" in settings_problem(JointStateMergerSettings(sources=("/a", "/a")))
    assert "within [0.01, 60]" in settings_problem(JointStateMergerSettings(max_age_s=0.0))
