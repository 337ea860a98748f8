"""The layer rule and "a robot fact is defined once", read from the source with ast.

Layers (imports point down only): dexwm_ros -> dexwm_planner, dexwm_sim, the driver cores
(allegro_driver, franka_driver, camera_driver) -> dexwm_robot. The planner never imports the simulation (a planner on the robot loads no scene), and
nothing below dexwm_ros imports rclpy.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVERS = ("allegro_driver", "franka_driver", "camera_driver")
PACKAGES = ("dexwm_robot", "dexwm_planner", "dexwm_sim", *DRIVERS, "dexwm_ros")
FORBIDDEN = {
    "dexwm_robot": ("rclpy", "dexwm_ros", "dexwm_planner", "dexwm_sim", *DRIVERS),
    "dexwm_planner": ("rclpy", "dexwm_ros", "dexwm_sim", *DRIVERS),
    "dexwm_sim": ("rclpy", "dexwm_ros", "dexwm_planner", *DRIVERS),
    # A driver core stands on the robot's facts only; drivers do not import each other either.
    **{driver: ("rclpy", "dexwm_ros", "dexwm_planner", "dexwm_sim", *(d for d in DRIVERS if d != driver))
       for driver in DRIVERS},
}


def _sources(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _docstrings(tree: ast.AST) -> set:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _strings(tree: ast.AST):
    """(line, text) of every string literal and f-string part that is not a docstring."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down_only(package):
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path, tree in _sources(package) for line, name in _imports(tree)
                 if name.split(".")[0] in FORBIDDEN[package]]
    assert not offenders, f"{package} may not import {FORBIDDEN[package]}: {offenders}"


def _defined_in(predicate) -> dict:
    """module -> lines where ``predicate(tree)`` finds the fact, over all packages."""
    found = {}
    for package in PACKAGES:
        for path, tree in _sources(package):
            lines = sorted(set(predicate(tree)))
            if lines:
                found[str(path.relative_to(ROOT))] = lines
    return found


def _string_matches(pattern: str):
    rx = re.compile(pattern)
    return lambda tree: [line for line, text in _strings(tree) if rx.search(text)]


def _string_tuples(members: set):
    def find(tree):
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List)) and node.elts and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                if {e.value for e in node.elts} == members:
                    yield node.lineno
    return find


def _hand_joint_names(tree):
    """Hand joint names written out ("allegro_index_1") or generated (f"allegro_{finger}_{j}")."""
    yield from _string_matches(r"^allegro_(index|middle|ring|thumb)_\d$")(tree)
    for node in ast.walk(tree):
        if (isinstance(node, ast.JoinedStr) and len(node.values) > 1 and isinstance(node.values[0], ast.Constant)
                and str(node.values[0].value).startswith("allegro_")):
            yield node.lineno


def _numbers(values: set):
    def find(tree):
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, float) and abs(node.value) in values:
                yield node.lineno
    return find


def _joint_counts(tree):
    """Module-level names of joint counts (ARM_DOF = 7, N_JOINTS = 16, ...) bound to a number."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int):
            for target in node.targets:
                if isinstance(target, ast.Name) and re.search(r"DOF|JOINTS", target.id):
                    yield node.lineno


FACTS = {
    "FR3 joint names": (_string_matches(r"fr3_joint"), {"dexwm_robot/franka.py"}),
    "Allegro joint names": (_hand_joint_names, {"dexwm_robot/allegro.py"}),
    "Allegro finger list": (_string_tuples({"index", "middle", "ring", "thumb"}), {"dexwm_robot/allegro.py"}),
    "FR3 and Panda joint limits": (_numbers({2.7437, 1.7837, 2.9007, 3.0421, 2.8065, 0.5445, 4.5169, 3.0159,
                                             2.8973, 1.7628, 3.0718, 3.7525}), {"dexwm_robot/franka.py"}),
    "Allegro joint limits": (_numbers({0.196, 1.61, 0.174, 1.709, 0.227, 1.618, 0.263, 1.396, 0.105, 1.644,
                                       0.189, 0.162}), {"dexwm_robot/allegro.py"}),
    "joint counts": (_joint_counts, {"dexwm_robot/franka.py", "dexwm_robot/allegro.py"}),
    "task list": (_string_tuples({"reach", "grasp", "place"}), {"dexwm_robot/tasks.py"}),
}


@pytest.mark.parametrize("fact", sorted(FACTS))
def test_each_robot_fact_is_defined_in_one_module(fact):
    predicate, home = FACTS[fact]
    found = _defined_in(predicate)
    assert set(found) <= home, f"{fact}: defined in {found}, expected only in {sorted(home)}"


def _environ_writes_at_import(tree):
    """Module-level statements that change os.environ (assignment, setdefault, update, pop)."""
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(statement):
            target = None
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                target = next((t.value for t in targets if isinstance(t, ast.Subscript)), None)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in ("setdefault", "update", "pop", "__setitem__"):
                    target = node.func.value
            if target is not None and ast.unparse(target) == "os.environ":
                yield node.lineno


def test_no_module_changes_the_environment_at_import():
    found = _defined_in(_environ_writes_at_import)
    assert not found, f"os.environ changed at import time: {found}"


# Who may name the discovery range: dexwm-up's environment for the processes it starts (and the
# harnesses reuse it), the camera benchmark's child processes, and the evaluation's through-ROS
# harness. Nodes and library code take it from the environment.
DISCOVERY_POLICY = {"dexwm_ros/bringup.py", "dexwm_ros/camera_bench.py", "dexwm_ros/evaluate.py"}


def test_library_code_sets_no_discovery_policy():
    found = _defined_in(_string_matches(r"^ROS_AUTOMATIC_DISCOVERY_RANGE$"))
    assert set(found) <= DISCOVERY_POLICY, f"discovery range named outside {sorted(DISCOVERY_POLICY)}: {found}"
    assert "dexwm_ros/node_main.py" not in found
