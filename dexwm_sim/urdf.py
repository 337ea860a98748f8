"""URDF of the FR3 + Allegro (right) + head camera, generated from the compiled MuJoCo scene.

    dexwm-urdf [--out FILE] [--camera-pose FILE | --no-camera]

The scene (model.py) is the one kinematic description of the robot: the planner's forward
kinematics (kinematics.py) reads the same compiled model, so a URDF written from it cannot drift
from what the simulation steps and the planner plans with (a test compares the two on random joint
vectors). What is walked:

- bodies of the robot subtree (``base`` and below) -> links; a body's hinge -> a revolute joint with
  the body's offset as origin, the hinge axis, the joint range and the actuator's torque limit;
  a body without a joint -> a fixed joint;
- sites (palm centre, fingertips: the planner's keypoints) -> massless child links, so RViz and TF
  show the exact points the planner uses;
- geoms -> visuals (render groups 0-2) and collisions (geoms that collide). The FR3 keeps the meshes
  of the installed franky-sim package, referenced by absolute ``file://`` URIs of this machine (the
  URDF is generated where it is used); the Allegro hand keeps the scene's simple boxes and capsules
  (a capsule becomes a cylinder plus two spheres: URDF has no capsule);
- the head camera -> ``camera_color_optical_frame`` (the frame id of the camera images; OpenCV axes)
  fixed to ``world`` at the given 4x4 world->camera calibration, or at the simulated head camera.

Velocity limits are not part of the MuJoCo model; they come from model.py (FR3 data sheet, the
simulation's hand speed cap). No ROS here.
"""
from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from . import select_gl_backend

select_gl_backend()
import mujoco  # noqa: E402

from dexwm_robot.camera import load_extrinsics  # noqa: E402
from dexwm_robot.franka import JOINT_NAMES as ARM_JOINTS, VELOCITY_LIMITS as ARM_VELOCITY  # noqa: E402

from .model import HAND_VELOCITY, SceneModel, build_model  # noqa: E402

ROOT_LINK = "world"
ROBOT_ROOT_BODY = "base"
CAMERA_FRAME = "camera_color_optical_frame"
ROBOT_NAME = "dexwm_fr3_allegro"
_VISUAL_GROUPS = (0, 1, 2)   # MuJoCo's default render groups; franky-sim puts collision meshes in 3


def _quat_to_rpy(quat) -> tuple[float, float, float]:
    """URDF rpy (fixed-axis x, then y, then z) of a MuJoCo quaternion (w, x, y, z)."""
    from scipy.spatial.transform import Rotation

    w, x, y, z = np.asarray(quat, dtype=np.float64)
    return tuple(float(v) for v in Rotation.from_quat([x, y, z, w]).as_euler("xyz"))


def _mat_to_rpy(rot) -> tuple[float, float, float]:
    from scipy.spatial.transform import Rotation

    return tuple(float(v) for v in Rotation.from_matrix(np.asarray(rot, dtype=np.float64)).as_euler("xyz"))


def _fmt(values) -> str:
    # 17 significant digits: the URDF reproduces the model's doubles exactly (FK test at 1e-6 m).
    return " ".join(f"{float(v):.17g}" for v in values)


def _origin(parent: ET.Element, pos, rpy) -> None:
    ET.SubElement(parent, "origin", xyz=_fmt(pos), rpy=_fmt(rpy))


def _compose(pos_a, quat_a, pos_b, quat_b):
    """(pos, quat) of frame b given in frame a, expressed in a's parent."""
    rot_a = np.zeros(9)
    mujoco.mju_quat2Mat(rot_a, np.asarray(quat_a, dtype=np.float64))
    quat = np.zeros(4)
    mujoco.mju_mulQuat(quat, np.asarray(quat_a, dtype=np.float64), np.asarray(quat_b, dtype=np.float64))
    return np.asarray(pos_a) + rot_a.reshape(3, 3) @ np.asarray(pos_b), quat


def _inverse(pos, quat):
    inv_quat = np.zeros(4)
    mujoco.mju_negQuat(inv_quat, np.asarray(quat, dtype=np.float64))
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, inv_quat)
    return -(rot.reshape(3, 3) @ np.asarray(pos)), inv_quat


class _Writer:
    def __init__(self, m: mujoco.MjModel):
        self.m = m
        self.robot = ET.Element("robot", name=ROBOT_NAME)
        self.materials: dict[tuple, str] = {}
        self.velocity = {name: float(v) for name, v in zip(ARM_JOINTS, ARM_VELOCITY)}

    # --- geometry -----------------------------------------------------------------------------------
    def _material(self, rgba) -> str:
        key = tuple(round(float(c), 4) for c in rgba)
        if key not in self.materials:
            name = f"rgba_{len(self.materials)}"
            self.materials[key] = name
            mat = ET.Element("material", name=name)
            ET.SubElement(mat, "color", rgba=" ".join(f"{c:g}" for c in key))
            # Materials are declared once at the top level, before the links that use them.
            self.robot.insert(len(self.materials) - 1, mat)
        return self.materials[key]

    def _geom_rgba(self, g: int):
        m = self.m
        return m.mat_rgba[m.geom_matid[g]] if m.geom_matid[g] >= 0 else m.geom_rgba[g]

    def _shapes(self, g: int) -> list[tuple[np.ndarray, np.ndarray, str, dict]]:
        """(pos, quat, tag, attributes) of the URDF shapes that draw geom g, in its body's frame."""
        m = self.m
        kind, size = m.geom_type[g], m.geom_size[g]
        pos, quat = m.geom_pos[g].copy(), m.geom_quat[g].copy()
        T = mujoco.mjtGeom
        if kind == T.mjGEOM_BOX:
            return [(pos, quat, "box", {"size": _fmt(2 * size)})]
        if kind == T.mjGEOM_SPHERE:
            return [(pos, quat, "sphere", {"radius": _fmt(size[:1])})]
        if kind == T.mjGEOM_CYLINDER:
            return [(pos, quat, "cylinder", {"radius": _fmt(size[:1]), "length": _fmt([2 * size[1]])})]
        if kind == T.mjGEOM_CAPSULE:
            r, half = size[0], size[1]
            ends = [_compose(pos, quat, [0, 0, s * half], [1, 0, 0, 0]) for s in (-1, 1)]
            return ([(pos, quat, "cylinder", {"radius": _fmt([r]), "length": _fmt([2 * half])})]
                    + [(p, q, "sphere", {"radius": _fmt([r])}) for p, q in ends])
        if kind == T.mjGEOM_MESH:
            mesh = m.geom_dataid[g]
            # MuJoCo re-centres mesh vertices on the mesh's inertial frame and folds that offset into
            # the compiled geom pose; undo it so the URDF places the file's vertices as authored.
            inv_pos, inv_quat = _inverse(m.mesh_pos[mesh], m.mesh_quat[mesh])
            pos, quat = _compose(pos, quat, inv_pos, inv_quat)
            path = m.paths[m.mesh_pathadr[mesh]:].split(b"\0", 1)[0].decode()
            return [(pos, quat, "mesh", {"filename": Path(path).resolve().as_uri(),
                                         "scale": _fmt(m.mesh_scale[mesh])})]
        return []   # planes, height fields: none on the robot

    def _add_geoms(self, link: ET.Element, body: int) -> None:
        m = self.m
        for g in range(m.body_geomadr[body], m.body_geomadr[body] + m.body_geomnum[body]):
            visual = int(m.geom_group[g]) in _VISUAL_GROUPS and m.geom_rgba[g][3] > 0
            collides = bool(m.geom_contype[g] or m.geom_conaffinity[g])
            for pos, quat, tag, attrs in self._shapes(g):
                for kind, wanted in (("visual", visual), ("collision", collides)):
                    if not wanted:
                        continue
                    el = ET.SubElement(link, kind)
                    _origin(el, pos, _quat_to_rpy(quat))
                    ET.SubElement(ET.SubElement(el, "geometry"), tag, **attrs)
                    if kind == "visual":
                        ET.SubElement(el, "material", name=self._material(self._geom_rgba(g)))

    # --- tree ---------------------------------------------------------------------------------------
    def link(self, name: str) -> ET.Element:
        return ET.SubElement(self.robot, "link", name=name)

    def joint(self, name: str, kind: str, parent: str, child: str, pos, rpy) -> ET.Element:
        j = ET.SubElement(self.robot, "joint", name=name, type=kind)
        _origin(j, pos, rpy)
        ET.SubElement(j, "parent", link=parent)
        ET.SubElement(j, "child", link=child)
        return j

    def body_subtree(self, root: int) -> None:
        m = self.m
        self.link(ROOT_LINK)
        bodies = [b for b in range(root, m.nbody) if self._descends(b, root)]
        for b in bodies:
            name = m.body(b).name
            link = self.link(name)
            self._add_geoms(link, b)
            parent = ROOT_LINK if b == root else m.body(m.body_parentid[b]).name
            rpy = _quat_to_rpy(m.body_quat[b])
            if m.body_jntnum[b] == 0:
                self.joint(f"{parent}_to_{name}", "fixed", parent, name, m.body_pos[b], rpy)
            elif m.body_jntnum[b] == 1 and m.jnt_type[m.body_jntadr[b]] == mujoco.mjtJoint.mjJNT_HINGE:
                self._revolute(m.body_jntadr[b], parent, name, b, rpy)
            else:
                raise ValueError(f"body {name}: only single hinge joints map to URDF joints")
            for s in range(m.nsite):
                if m.site_bodyid[s] == b:
                    site = m.site(s).name
                    self.link(site)
                    self.joint(f"{name}_to_{site}", "fixed", name, site, m.site_pos[s],
                               _quat_to_rpy(m.site_quat[s]))

    def _revolute(self, j: int, parent: str, child: str, body: int, rpy) -> None:
        m = self.m
        if np.linalg.norm(m.jnt_pos[j]) > 1e-12:
            raise ValueError(f"joint {m.joint(j).name}: the hinge must pass through its body's origin")
        name = m.joint(j).name
        el = self.joint(name, "revolute", parent, child, m.body_pos[body], rpy)
        ET.SubElement(el, "axis", xyz=_fmt(m.jnt_axis[j]))
        actuators = [a for a in range(m.nu) if m.actuator_trnid[a, 0] == j]
        effort = float(m.actuator_forcerange[actuators[0], 1]) if actuators else 0.0
        lo, hi = m.jnt_range[j]
        ET.SubElement(el, "limit", lower=_fmt([lo]), upper=_fmt([hi]), effort=_fmt([effort]),
                      velocity=_fmt([self.velocity.get(name, HAND_VELOCITY)]))

    def camera(self, world_to_camera: np.ndarray) -> None:
        T = np.linalg.inv(np.asarray(world_to_camera, dtype=np.float64))   # camera pose in the world
        link = self.link(CAMERA_FRAME)
        # A RealSense-sized box behind the optical centre, so RViz shows where the camera is.
        vis = ET.SubElement(link, "visual")
        _origin(vis, [0, 0, -0.0125], [0, 0, 0])
        ET.SubElement(ET.SubElement(vis, "geometry"), "box", size="0.09 0.025 0.025")
        ET.SubElement(vis, "material", name=self._material([0.2, 0.2, 0.25, 1.0]))
        self.joint(f"{ROOT_LINK}_to_{CAMERA_FRAME}", "fixed", ROOT_LINK, CAMERA_FRAME, T[:3, 3],
                   _mat_to_rpy(T[:3, :3]))

    def _descends(self, body: int, ancestor: int) -> bool:
        while body > ancestor:
            body = self.m.body_parentid[body]
        return body == ancestor


def robot_urdf(scene: SceneModel | None = None, world_to_camera: np.ndarray | None = None,
               camera: bool = True) -> str:
    """The URDF text. ``world_to_camera``: 4x4 calibration; None takes the scene's head camera."""
    scene = scene or build_model()
    m = scene.model
    root = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, ROBOT_ROOT_BODY)
    if root < 0:
        raise ValueError(f"the scene has no body '{ROBOT_ROOT_BODY}'")
    writer = _Writer(m)
    writer.body_subtree(root)
    if camera:
        writer.camera(scene.camera.world_to_camera if world_to_camera is None else world_to_camera)
    ET.indent(writer.robot)
    header = ("<?xml version=\"1.0\"?>\n<!-- Generated by dexwm_sim/urdf.py from the MuJoCo scene "
              "(dexwm_sim/model.py): do not edit, regenerate with dexwm-urdf. -->\n")
    return header + ET.tostring(writer.robot, encoding="unicode") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dexwm-urdf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the URDF here (default: standard output)")
    parser.add_argument("--camera-pose", type=Path,
                        help="4x4 world->camera calibration (.npy/.yaml, as dexwm-calibrate writes it); "
                             "default: the simulated head camera")
    parser.add_argument("--no-camera", action="store_true", help="leave the head camera out")
    args = parser.parse_args(argv)
    world_to_camera = None
    if args.camera_pose is not None:
        try:
            world_to_camera = load_extrinsics(args.camera_pose)
        except ValueError as e:
            print(f"dexwm-urdf: error: {e}", file=sys.stderr)
            return 2
    text = robot_urdf(world_to_camera=world_to_camera, camera=not args.no_camera)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
