"""Each launch file starts exactly the nodes of the shared graph description.

The ROS 2 `launch` and `launch_ros` packages are not installable from PyPI (they come with a ROS 2
distribution), so this test runs the launch files against minimal stand-ins that record what the
launch file builds: Node actions, declared arguments and the OpaqueFunction that resolves them. The
real `ros2 launch` path is exercised in a ROS 2 workspace (README, "Lab deployment").
"""
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from dexwm_ros.graph import load_description, resolve_graph

ROOT = Path(__file__).resolve().parents[1]


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


class _Context:
    def __init__(self, launch_configurations):
        self.launch_configurations = launch_configurations


@pytest.fixture
def launch_stand_ins(monkeypatch):
    launch = types.ModuleType("launch")
    launch.LaunchDescription = lambda entities: list(entities)
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument = type("DeclareLaunchArgument", (_Recorded,), {})
    actions.OpaqueFunction = type("OpaqueFunction", (_Recorded,), {})
    actions.Shutdown = type("Shutdown", (_Recorded,), {})
    actions.LogInfo = type("LogInfo", (_Recorded,), {})
    subs = types.ModuleType("launch.substitutions")
    subs.LaunchConfiguration = _LaunchConfiguration
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = type("Node", (_Recorded,), {})
    for name, module in {"launch": launch, "launch.actions": actions, "launch.substitutions": subs,
                         "launch_ros": launch_ros, "launch_ros.actions": ros_actions}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "dexwm_ros.launch_support", raising=False)
    return actions


def _load_launch_file(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("graph", ["grasp", "reach", "place"])
@pytest.mark.parametrize("sim", ["true", "false"])
def test_launch_file_nodes_equal_graph(launch_stand_ins, graph, sim):
    description = load_description()
    entities = _load_launch_file(ROOT / "launch" / f"{graph}.launch.py").generate_launch_description()
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities
                if type(e).__name__ == "DeclareLaunchArgument"}
    assert set(declared) == set(description["arguments"])
    for required in ("sim", "checkpoint", "goal_image", "robot_ip", "can_channel", "camera_serial", "use_rviz"):
        assert required in declared
    assert declared["sim"] == "true"

    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1
    configs = dict(declared, sim=sim)
    actions = opaque[0].kwargs["function"](_Context(configs), *opaque[0].kwargs["args"])
    nodes = [a for a in actions if type(a).__name__ == "Node"]
    notices = []
    expected = resolve_graph(graph, configs, description, notices)
    got = [(n.kwargs["package"], n.kwargs["executable"], n.kwargs.get("namespace", ""), n.kwargs["name"],
            n.kwargs["parameters"]) for n in nodes]
    want = [(s.package, s.executable, s.namespace, s.name, [str(s.params_file), s.parameters]) for s in expected]
    assert got == want
    # Required nodes stop the launch when they exit; display helpers do not.
    assert all(("on_exit" in n.kwargs) == s.required for n, s in zip(nodes, expected))
    # robot_state_publisher is not installed here: the launch logs the graph's one line about it.
    assert [a.kwargs["msg"] for a in actions if type(a).__name__ == "LogInfo"] == notices
    assert any("robot_state_publisher is not installed" in n for n in notices)
    # a required node's exit raises inside launch (ros2 launch then shuts down and exits 1) ...
    from dexwm_ros.launch_support import RequiredNodeExited
    for n in nodes:
        if "on_exit" not in n.kwargs:
            continue
        with pytest.raises(RequiredNodeExited, match="exited with code 3"):
            n.kwargs["on_exit"](types.SimpleNamespace(returncode=3), types.SimpleNamespace(is_shutdown=False))
        # ... but not while the graph is already being shut down (Ctrl-C)
        assert n.kwargs["on_exit"](types.SimpleNamespace(returncode=0), types.SimpleNamespace(is_shutdown=True)) is None


@pytest.mark.parametrize("installed", [True, False])
def test_use_rviz_adds_rviz_or_says_it_is_missing(launch_stand_ins, monkeypatch, installed):
    description = load_description()
    entities = _load_launch_file(ROOT / "launch" / "grasp.launch.py").generate_launch_description()
    opaque = next(e for e in entities if type(e).__name__ == "OpaqueFunction")
    configs = {n: str(s.get("default", "")) for n, s in description["arguments"].items()}
    configs["use_rviz"] = "true"
    import dexwm_ros.launch_support as support
    monkeypatch.setattr(support, "rviz_available", lambda: installed)
    actions = opaque.kwargs["function"](_Context(configs), *opaque.kwargs["args"])
    last = actions[-1]
    if installed:
        assert last.kwargs["package"] == "rviz2"
        assert last.kwargs["arguments"][1].endswith("dexwm.rviz")
    else:   # one line, and every node of the graph still starts
        assert type(last).__name__ == "LogInfo" and "rviz2 is not installed" in last.kwargs["msg"]
        nodes = [a for a in actions if type(a).__name__ == "Node"]
        assert len(nodes) == len(resolve_graph("grasp", configs, description))
