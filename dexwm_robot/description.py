"""The kinematic description of the robot: FR3 arm with the Allegro right hand on its flange.

Two MJCF files describe it: the FR3 of the installed ``franky-sim`` package (read in place, not
copied here) and our Allegro hand (``assets/allegro_right.xml``), mounted on the flange as given by
``FLANGE_OFFSET`` and ``HAND_YAW``. The simulation compiles the same files with MuJoCo (plus table,
objects and camera); forward kinematics reads them here with a small MJCF reader, so the planner
needs neither MuJoCo nor the scene. Only what kinematics needs is read: body positions and
orientations (``pos``, ``quat``), hinge joints (``axis``, ``range``, through default classes) and
site positions. A test checks the result against MuJoCo's own ``mj_kinematics`` of the scene.
"""
from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import allegro

ASSETS = Path(__file__).resolve().parent / "assets"
ALLEGRO_XML = ASSETS / "allegro_right.xml"
# Names of the hand's MJCF elements get this prefix when it is mounted, so that its joints carry
# the published names (allegro_index_0, ...).
HAND_PREFIX = allegro.NAME_PREFIX
# The FR3 body the hand is mounted on, and the body of the franky-sim model that the hand replaces
# (its parallel gripper).
ARM_FLANGE_BODY = "fr3_link7"
GRIPPER_BODY = "hand"
# Where the Allegro sits on the FR3 flange (107 mm along link 7) and how it is turned about the
# flange axis (like Franka's own hand: 45 degrees, so the palm faces the robot's x axis at q7=pi/4).
FLANGE_OFFSET = 0.107
HAND_YAW = -np.pi / 4

_UNSUPPORTED_FRAME = ("euler", "axisangle", "xyaxes", "zaxis")


def franky_sim_assets() -> Path:
    """The assets folder of the installed franky-sim package (found without importing it)."""
    spec = importlib.util.find_spec("franky_sim")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("franky-sim is not installed: it provides the FR3 model (pip install franky-sim)")
    path = Path(list(spec.submodule_search_locations)[0]) / "assets"
    if not (path / "fr3.xml").is_file():
        raise RuntimeError(f"franky-sim has no FR3 MJCF at {path / 'fr3.xml'}")
    return path


def fr3_xml() -> Path:
    return franky_sim_assets() / "fr3.xml"


def quat_z(angle: float) -> np.ndarray:
    """MuJoCo quaternion (w, x, y, z) of a rotation by ``angle`` about z."""
    return np.array([np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)])


def quat_to_mat(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


@dataclass
class Joint:
    name: str
    axis: np.ndarray                  # (3,) unit hinge axis in the body frame
    range: tuple | None               # (lower, upper) [rad] when the MJCF gives one


@dataclass
class Body:
    name: str
    parent: int                       # index into Description.bodies, -1 = the world
    pos: np.ndarray                   # (3,) offset in the parent frame
    rot: np.ndarray                   # (3, 3) orientation in the parent frame
    joint: Joint | None = None
    sites: dict = field(default_factory=dict)   # name -> (3,) position in this body's frame


@dataclass
class Description:
    """The robot's kinematic tree, bodies in topological order (parents before children)."""

    bodies: list

    def index(self, name: str) -> int:
        for i, b in enumerate(self.bodies):
            if b.name == name:
                return i
        raise KeyError(f"the robot description has no body {name!r}")

    def joint_body(self, joint_name: str) -> int:
        for i, b in enumerate(self.bodies):
            if b.joint is not None and b.joint.name == joint_name:
                return i
        raise KeyError(f"the robot description has no joint {joint_name!r}")

    def site(self, name: str) -> tuple[int, np.ndarray]:
        for i, b in enumerate(self.bodies):
            if name in b.sites:
                return i, b.sites[name]
        raise KeyError(f"the robot description has no site {name!r}")

    @property
    def joint_ranges(self) -> dict:
        return {b.joint.name: b.joint.range for b in self.bodies if b.joint is not None}


def _floats(text: str | None, default) -> np.ndarray:
    return np.array(default if text is None else [float(v) for v in text.split()], dtype=np.float64)


def _default_classes(root: ET.Element) -> dict:
    """class name -> {element tag: attributes}, each class inheriting its parent's attributes."""
    classes: dict = {}

    def visit(node: ET.Element, inherited: dict):
        name = node.get("class", "main")
        own = {tag: dict(attrs) for tag, attrs in inherited.items()}
        for child in node:
            if child.tag != "default":
                own.setdefault(child.tag, {}).update(child.attrib)
        classes[name] = own
        for child in node:
            if child.tag == "default":
                visit(child, own)

    for top in root.findall("default"):
        visit(top, {})
    classes.setdefault("main", {})
    return classes


def _read(path: Path, prefix: str, skip: str | None) -> list:
    """Bodies of one MJCF file's worldbody, depth first (parent index -1 = the file's world)."""
    root = ET.parse(path).getroot()
    classes = _default_classes(root)
    bodies: list = []

    def attrs(element: ET.Element, childclass: str) -> dict:
        merged = dict(classes.get(element.get("class", childclass), {}).get(element.tag, {}))
        merged.update(element.attrib)
        return merged

    def visit(element: ET.Element, parent: int, childclass: str):
        name = element.get("name", "")
        if name == skip:
            return
        for key in _UNSUPPORTED_FRAME:
            if key in element.attrib:
                raise ValueError(f"{path}: body {name} gives its orientation as {key}; the reader takes quat")
        childclass = element.get("childclass", childclass)
        body = Body(name=prefix + name, parent=parent, pos=_floats(element.get("pos"), [0, 0, 0]),
                    rot=quat_to_mat(_floats(element.get("quat"), [1, 0, 0, 0])))
        joints = element.findall("joint")
        if len(joints) > 1:
            raise ValueError(f"{path}: body {name} has several joints")
        if joints:
            j = attrs(joints[0], childclass)
            if j.get("type", "hinge") != "hinge":
                raise ValueError(f"{path}: joint {j.get('name')} is not a hinge")
            if np.linalg.norm(_floats(j.get("pos"), [0, 0, 0])) > 1e-12:
                raise ValueError(f"{path}: hinge {j.get('name')} must pass through its body origin")
            axis = _floats(j.get("axis"), [0, 0, 1])
            rng = tuple(_floats(j["range"], [])) if "range" in j else None
            body.joint = Joint(name=prefix + j["name"], axis=axis / np.linalg.norm(axis), range=rng)
        for s in element.findall("site"):
            if "name" in s.attrib:
                body.sites[prefix + s.get("name")] = _floats(s.get("pos"), [0, 0, 0])
        bodies.append(body)
        me = len(bodies) - 1
        for child in element.findall("body"):
            visit(child, me, childclass)

    for top in root.find("worldbody").findall("body"):
        visit(top, -1, "main")
    return bodies


def load(fr3_path: Path | None = None, hand_path: Path = ALLEGRO_XML) -> Description:
    """The FR3 (without its gripper) with the Allegro hand mounted on the flange."""
    arm = _read(Path(fr3_path) if fr3_path else fr3_xml(), "", skip=GRIPPER_BODY)
    hand = _read(Path(hand_path), HAND_PREFIX, skip=None)
    flange = next(i for i, b in enumerate(arm) if b.name == ARM_FLANGE_BODY)
    mount_rot = quat_to_mat(quat_z(HAND_YAW))
    mount_pos = np.array([0.0, 0.0, FLANGE_OFFSET])
    offset = len(arm)
    for b in hand:
        if b.parent < 0:   # the hand's root sits in the mounting frame on the flange
            b.pos, b.rot, b.parent = mount_pos + mount_rot @ b.pos, mount_rot @ b.rot, flange
        else:
            b.parent += offset
    return Description(bodies=arm + hand)
