"""Builds the launch descriptions of launch/*.launch.py from config/graph.yaml.

Needs the ROS 2 `launch` and `launch_ros` packages (a ROS 2 distribution); `dexwm-up` reads the same
graph description without them.
"""
from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dexwm_ros.graph import PACKAGE, load_description, resolve_graph


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes", "on")


def _graph_actions(context, graph: str, description: dict):
    arguments = {name: LaunchConfiguration(name).perform(context) for name in description["arguments"]}
    notices = []
    nodes = resolve_graph(graph, arguments, description, notices)
    actions = [LogInfo(msg=notice) for notice in notices]
    for spec in nodes:
        kwargs = {}
        if spec.namespace.strip("/"):
            kwargs["namespace"] = spec.namespace.strip("/")
        if spec.required:
            kwargs["on_exit"] = Shutdown(reason=f"required node {spec.full_name} exited")
        actions.append(Node(
            package=spec.package, executable=spec.executable, name=spec.name,
            parameters=[str(spec.params_file), spec.parameters],
            output="screen", emulate_tty=True, **kwargs,
        ))
    if _truthy(arguments.get("use_rviz", "false")) and nodes:
        rviz_config = nodes[0].params_file.parent / "dexwm.rviz"
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2",
                            arguments=["-d", str(rviz_config)], output="screen"))
    return actions


def generate_graph_launch_description(graph: str) -> LaunchDescription:
    description = load_description()
    declared = [
        DeclareLaunchArgument(name, default_value=str(spec.get("default", "")),
                              description=spec.get("description", ""))
        for name, spec in description["arguments"].items()
    ]
    return LaunchDescription(declared + [OpaqueFunction(function=_graph_actions, args=[graph, description])])
