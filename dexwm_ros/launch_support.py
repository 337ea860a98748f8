"""Builds the launch descriptions of launch/*.launch.py from config/graph.yaml.

Needs the ROS 2 `launch` and `launch_ros` packages (a ROS 2 distribution); `dexwm-up` reads the same
graph description without them.

A required node that exits stops the whole graph and makes `ros2 launch` exit with code 1 (as
`dexwm-up` does), so a script can tell: `launch` turns an exception raised while it handles an event
into a shutdown and a non-zero exit code, while a plain Shutdown action would exit 0. Exits during a
shutdown already under way (Ctrl-C) are not errors.
"""
from __future__ import annotations

import shutil

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dexwm_ros.graph import PACKAGE, load_description, resolve_graph


class RequiredNodeExited(RuntimeError):
    """A required node's process ended while the graph was running."""


def required_node_exit_handler(label: str):
    """The ``on_exit`` callable of a required node: raise (launch exits 1) unless shutting down."""
    def on_exit(event, context):
        if context.is_shutdown:
            return None
        raise RequiredNodeExited(f"required node {label} exited with code {event.returncode}; "
                                 "stopping the graph")
    return on_exit


def rviz_available() -> bool:
    """rviz2 on the PATH or in the ament index (a ROS 2 desktop install)."""
    if shutil.which("rviz2"):
        return True
    try:
        from ament_index_python.packages import get_package_prefix

        get_package_prefix("rviz2")
        return True
    except Exception:  # not installed, or no ament index at all
        return False


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
            kwargs["on_exit"] = required_node_exit_handler(spec.full_name)
        actions.append(Node(
            package=spec.package, executable=spec.executable, name=spec.name,
            parameters=[str(spec.params_file), spec.parameters],
            output="screen", emulate_tty=True, **kwargs,
        ))
    if _truthy(arguments.get("use_rviz", "false")) and nodes:
        if rviz_available():
            rviz_config = nodes[0].params_file.parent / "dexwm.rviz"
            actions.append(Node(package="rviz2", executable="rviz2", name="rviz2",
                                arguments=["-d", str(rviz_config)], output="screen"))
        else:   # one line instead of a failed launch that leaves the other nodes running
            actions.append(LogInfo(msg="use_rviz:=true but rviz2 is not installed (it comes with a ROS 2 "
                                       "desktop install); continuing without RViz"))
    return actions


def generate_graph_launch_description(graph: str) -> LaunchDescription:
    description = load_description()
    declared = [
        DeclareLaunchArgument(name, default_value=str(spec.get("default", "")),
                              description=spec.get("description", ""))
        for name, spec in description["arguments"].items()
    ]
    return LaunchDescription(declared + [OpaqueFunction(function=_graph_actions, args=[graph, description])])
