"""The node graph of a bringup, read from config/graph.yaml.

Both the launch files (through dexwm_ros.launch_support) and `dexwm-up` call ``resolve_graph``, so
the nodes they start and the parameters they pass can never drift apart. ROS-free: no rclpy here.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "dexwm_ros"
GRAPH_FILE = "graph.yaml"
_ARG_REF = re.compile(r"^\$\((\w+)\)$")


class GraphError(ValueError):
    """A bad graph name, argument or configuration; the message names the cause."""


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A one-line description of a YAML syntax error."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


@dataclass(frozen=True)
class NodeSpec:
    """One node process of a graph, fully resolved."""

    executable: str
    name: str
    namespace: str
    params_file: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    required: bool = True
    package: str = PACKAGE

    @property
    def full_name(self) -> str:
        ns = self.namespace.strip("/")
        return f"/{ns}/{self.name}" if ns else f"/{self.name}"

    def ros_args(self) -> list[str]:
        """The --ros-args that give a process this node's name, namespace and parameters."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace.strip("/"):
            args += ["-r", f"__ns:=/{self.namespace.strip('/')}"]
        args += ["--params-file", str(self.params_file)]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={_yaml_scalar(value)}"]
        return args


def share_dir() -> Path:
    """Where config/ and launch/ are installed: the ament index, the venv prefix, or the checkout."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # not in a sourced ROS workspace: the venv install or the source tree
        pass
    candidates.append(Path(sys.prefix) / "share" / PACKAGE)
    candidates.append(Path(__file__).resolve().parents[1])
    for c in candidates:
        if (c / "config" / GRAPH_FILE).is_file():
            return c
    raise GraphError(f"cannot find config/{GRAPH_FILE} in any of: {', '.join(map(str, candidates))}")


def config_dir() -> Path:
    override = os.environ.get("DEXWM_CONFIG_DIR")
    return Path(override) if override else share_dir() / "config"


def load_description(path: Path | None = None) -> dict:
    path = path or config_dir() / GRAPH_FILE
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as e:
        raise GraphError(f"graph description not found: {path}") from e
    except yaml.YAMLError as e:
        raise GraphError(f"graph description {path} is not valid YAML: {_yaml_problem(e)}") from e
    for key in ("arguments", "graphs", "nodes"):
        if key not in (data or {}):
            raise GraphError(f"graph description {path} has no '{key}' section")
    return data


def graph_names(description: dict | None = None) -> list[str]:
    return list((description or load_description())["graphs"])


def argument_defaults(description: dict | None = None) -> dict[str, str]:
    description = description or load_description()
    return {name: str(spec.get("default", "")) for name, spec in description["arguments"].items()}


def parse_assignments(items: list[str]) -> dict[str, str]:
    """Parse ``name:=value`` strings (the ros2 launch argument syntax)."""
    out = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise GraphError(f"argument '{item}' is not of the form name:=value")
        out[name] = value
    return out


def _truthy(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise GraphError(f"argument {name}:={value} is not a boolean (true/false)")


def _yaml_scalar(value: Any) -> str:
    """Format a parameter value for ``-p name:=value`` (rcl parses it as YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # Quote strings YAML would read as another type ("012345" must stay a serial number) or
        # cannot read at all (a URDF: its newlines fold to spaces inside the quotes, harmless in XML).
        try:
            plain = isinstance(yaml.safe_load(value), str)
        except yaml.YAMLError:
            plain = False
        if value == "" or not plain:
            return "'" + value.replace("'", "''") + "'"
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip()


def _yaml_defaults(params_file: Path) -> dict[str, Any]:
    """The ros__parameters of a params file (wildcard or any node key), used to type overrides."""
    try:
        with open(params_file) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise GraphError(f"parameter file {params_file} is not valid YAML: {_yaml_problem(e)}") from e
    if not isinstance(data, dict):
        raise GraphError(f"parameter file {params_file} is not a ROS params file (no '/**: ros__parameters:')")
    merged: dict[str, Any] = {}
    for node_section in data.values():
        if isinstance(node_section, dict):
            merged.update(node_section.get("ros__parameters", {}) or {})
    return merged


def _typed(value: str, like: Any, key: str, node: str) -> Any:
    """Convert a launch-argument string to the type the node's YAML gives the parameter."""
    if isinstance(like, bool):
        return _truthy(value, key)
    try:
        if isinstance(like, int):
            number = int(value)
        elif isinstance(like, float):
            return float(value)
    except ValueError as e:
        raise GraphError(f"parameter {key} of node {node}: '{value}' is not a {type(like).__name__}") from e
    if isinstance(like, int):
        # rcl reads a larger literal as a double and then silently keeps the YAML's integer.
        if not -2 ** 63 <= number < 2 ** 63:
            raise GraphError(f"parameter {key} of node {node}: {value} does not fit a 64-bit integer")
        return number
    if isinstance(like, str) or like is None:
        return value
    parsed = yaml.safe_load(value)
    return parsed


def installed_executable(package: str, executable: str) -> Path | None:
    """The executable of another ROS package (lib/PACKAGE/EXECUTABLE in its ament prefix), or None."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return None
    try:
        path = Path(get_package_prefix(package)) / "lib" / package / executable
    except (PackageNotFoundError, OSError, ValueError):   # OSError: no AMENT_PREFIX_PATH (no ROS install)
        return None
    return path if path.is_file() and os.access(path, os.X_OK) else None


def robot_description(extrinsics: str) -> str:
    """The robot's URDF (dexwm_sim.urdf) with the camera at the calibration file ``extrinsics``
    (empty: the simulated head camera)."""
    from dexwm_robot.camera import load_extrinsics
    from dexwm_sim.urdf import robot_urdf

    try:
        world_to_camera = load_extrinsics(Path(extrinsics)) if extrinsics else None
    except ValueError as e:
        raise GraphError(f"camera calibration: {e}") from e
    return robot_urdf(world_to_camera=world_to_camera)


def camera_extrinsic(extrinsics: str) -> list[float]:
    """The calibration file's 4x4 world->camera transform as the 16 row-major values of the planner's
    ``world_to_camera`` parameter."""
    from dexwm_robot.camera import load_extrinsics

    try:
        return [float(v) for v in load_extrinsics(Path(extrinsics)).ravel()]
    except ValueError as e:
        raise GraphError(f"camera calibration: {e}") from e


def _file_argument(entry: dict, key: str, values: dict[str, str]) -> str:
    """The file an entry's ``key`` names: a "$(argument)" (its value) or a literal path."""
    source = str(entry[key])
    ref = _ARG_REF.match(source)
    if ref and ref.group(1) not in values:
        raise GraphError(f"node '{entry['name']}' refers to unknown argument '{ref.group(1)}'")
    return values[ref.group(1)] if ref else source


def resolve_graph(graph: str, arguments: dict[str, str] | None = None,
                  description: dict | None = None, notices: list[str] | None = None) -> list[NodeSpec]:
    """The nodes a graph starts for the given launch arguments (unknown names are an error).

    A node marked ``if_installed`` whose executable is missing is left out; ``notices`` (when given)
    receives one line saying so, for the caller to log.
    """
    description = description or load_description()
    graphs = description["graphs"]
    if graph not in graphs:
        raise GraphError(f"unknown graph '{graph}' (choose from: {', '.join(graphs)})")
    values = argument_defaults(description)
    for name, value in (arguments or {}).items():
        if name not in values:
            raise GraphError(f"unknown argument '{name}' (known: {', '.join(values)})")
        values[name] = value
    values.update({k: str(v) for k, v in graphs[graph].items()})

    cfg_dir = config_dir()
    nodes = []
    for entry in description["nodes"]:
        if "when" in entry and not _truthy(values[entry["when"]], entry["when"]):
            continue
        if "unless" in entry and _truthy(values[entry["unless"]], entry["unless"]):
            continue
        package = entry.get("package", PACKAGE)
        if entry.get("if_installed") and installed_executable(package, entry["executable"]) is None:
            if notices is not None:
                notices.append(f"{package} is not installed: not starting node '{entry['name']}'"
                               + (f" ({entry['if_missing']})" if entry.get("if_missing") else ""))
            continue
        params_file = cfg_dir / entry["config"]
        if not params_file.is_file():
            raise GraphError(f"config file for node '{entry['name']}' not found: {params_file}")
        defaults = _yaml_defaults(params_file)
        parameters = {}
        for key, raw in (entry.get("parameters") or {}).items():
            raw = str(raw)
            ref = _ARG_REF.match(raw)
            if ref:
                if ref.group(1) not in values:
                    raise GraphError(f"node '{entry['name']}' refers to unknown argument '{ref.group(1)}'")
                raw = values[ref.group(1)]
                if raw == "":  # an empty launch argument keeps the value in the node's YAML
                    continue
            parameters[key] = _typed(raw, defaults.get(key), key, entry["name"])
        if "robot_description" in entry:
            # The URDF is generated here, at launch, so it always matches the installed model and the
            # calibration file given now ("$(argument)" names that file).
            parameters["robot_description"] = robot_description(_file_argument(entry, "robot_description", values))
        if "world_to_camera" in entry:
            # The planner computes its actions (and projects the planned hand) in the camera frame:
            # the same calibration file as TF, or the node's default (the simulated camera) when empty.
            calibration = _file_argument(entry, "world_to_camera", values)
            if calibration:
                parameters["world_to_camera"] = camera_extrinsic(calibration)
        nodes.append(NodeSpec(
            executable=entry["executable"], name=entry["name"], namespace=entry.get("namespace", ""),
            params_file=params_file, parameters=parameters, required=bool(entry.get("required", True)),
            package=package,
        ))
    return nodes
