"""Builds the MuJoCo model of the scene: FR3 arm + Allegro right hand, table, objects, camera.

The FR3 MJCF and meshes come from the installed ``franky-sim`` package (not copied here); its
parallel gripper, position actuators, tendon and keyframe are removed and our Allegro hand
(``dexwm_robot/assets/allegro_right.xml``) is attached to the flange, as the robot description
(``dexwm_robot.description``) that forward kinematics reads mounts it. Joint limits are those of
``dexwm_robot.joints``. World frame: origin at the robot base on
the table top, x forward (towards the workspace), z up.

Actuation: one MuJoCo ``position`` actuator per joint with a derivative gain (``kv``), i.e. a
joint-space PD controller evaluated at the physics rate, with per-joint torque limits
(``forcerange``); robot bodies are gravity-compensated (as the real FR3 controller and the Allegro
host PD are), so the PD gains only have to track, not hold up the arm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import select_gl_backend

select_gl_backend()
import mujoco  # noqa: E402

from dexwm_robot import description  # noqa: E402
from dexwm_robot.camera import HeadCamera  # noqa: E402
from dexwm_robot.franka import TORQUE_LIMITS as ARM_TORQUE  # noqa: E402
from dexwm_robot.joints import ARM_JOINT_NAMES as ARM_JOINTS, HAND_JOINT_NAMES as HAND_JOINTS  # noqa: E402
from dexwm_robot.joints import JOINT_NAMES as ALL_JOINTS, LOWER, UPPER  # noqa: E402

# Gains: those of franky-sim's FR3 model for the arm; the Allegro's motors give about 0.7 N m per
# joint. Torque limits of the arm: dexwm_robot.franka (data sheet).
ARM_KP = np.array([4500, 4500, 3500, 3500, 2000, 2000, 2000], dtype=float)
ARM_KV = np.array([450, 450, 350, 350, 200, 200, 200], dtype=float)
HAND_KP = 3.0
HAND_KV = 0.08
HAND_TORQUE = 0.7
# The hand's joint speed limit [rad/s] (not part of the MuJoCo model; the URDF needs it): the
# simulation's set-point speed cap (SimEnv max_hand_speed).
HAND_VELOCITY = 6.0

TIMESTEP = 0.002
OBJECT_KINDS = ("box", "cylinder", "sphere")
OFFSCREEN_SIZE = (640, 480)

TABLE_HALF = (0.6, 0.75, 0.02)     # table top: x in [-0.25, 0.95], y in [-0.75, 0.75]
TABLE_CENTER_X = 0.35


def build_spec(camera: HeadCamera | None = None) -> mujoco.MjSpec:
    """The scene as an editable MjSpec."""
    camera = camera or HeadCamera()
    fr3_dir = description.franky_sim_assets()
    spec = mujoco.MjSpec.from_file(str(fr3_dir / "fr3.xml"))
    spec.meshdir = str(fr3_dir / "meshes")
    spec.modelname = "dexwm_fr3_allegro"
    spec.option.timestep = TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0   # stiffer friction: grasped objects slip less

    # Remove the parallel gripper and everything that refers to it (dexwm_robot.description mounts
    # the hand the same way).
    for act in list(spec.actuators):
        spec.delete(act)
    for eq in list(spec.equalities):
        spec.delete(eq)
    for ten in list(spec.tendons):
        spec.delete(ten)
    for key in list(spec.keys):
        spec.delete(key)
    spec.delete(spec.body(description.GRIPPER_BODY))

    # Gravity compensation for every robot body, as the real controllers do.
    for body in spec.body("base").find_all(mujoco.mjtObj.mjOBJ_BODY):
        body.gravcomp = 1.0

    # Allegro hand on the flange.
    hand_spec = mujoco.MjSpec.from_file(str(description.ALLEGRO_XML))
    link7 = spec.body(description.ARM_FLANGE_BODY)
    frame = link7.add_frame(pos=[0, 0, description.FLANGE_OFFSET],
                            quat=[float(v) for v in description.quat_z(description.HAND_YAW)])
    mount = frame.attach_body(hand_spec.body("mount"), description.HAND_PREFIX, "")
    for body in mount.find_all(mujoco.mjtObj.mjOBJ_BODY):
        body.gravcomp = 1.0
    spec.add_exclude(bodyname1="fr3_link7", bodyname2="allegro_mount")
    spec.add_exclude(bodyname1="fr3_link7", bodyname2="allegro_palm")

    # Actuators: PD with torque limits (kv = derivative gain of the position actuator).
    limits = {name: (float(lo), float(hi)) for name, lo, hi in zip(ALL_JOINTS, LOWER, UPPER)}
    for i, name in enumerate(ARM_JOINTS):
        lo, hi = limits[name]
        spec.joint(name).range = [lo, hi]
        spec.add_actuator(name=name, target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT,
                          ).set_to_position(kp=ARM_KP[i], kv=ARM_KV[i])
        act = spec.actuator(name)
        act.ctrlrange = [lo, hi]
        act.ctrllimited = True
        act.forcerange = [-ARM_TORQUE[i], ARM_TORQUE[i]]
        act.forcelimited = True
    for name in HAND_JOINTS:
        spec.joint(name).range = list(limits[name])
        act = spec.add_actuator(name=name, target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=HAND_KP, kv=HAND_KV)
        act.ctrlrange = list(limits[name])
        act.ctrllimited = True
        act.forcerange = [-HAND_TORQUE, HAND_TORQUE]
        act.forcelimited = True

    world = spec.worldbody
    # Floor (1.6 m below the camera is the floor; the table top is z = 0) and table.
    spec.add_texture(name="grid", type=mujoco.mjtTexture.mjTEXTURE_2D, builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
                     rgb1=[0.32, 0.34, 0.38], rgb2=[0.26, 0.28, 0.31], width=256, height=256)
    spec.add_material(name="floor", textures=["", "grid"], texrepeat=[6, 6])
    world.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3, 3, 0.05],
                   pos=[0, 0, -0.75], material="floor")
    world.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX, size=list(TABLE_HALF),
                   pos=[TABLE_CENTER_X, 0, -TABLE_HALF[2]], rgba=[0.72, 0.62, 0.48, 1], friction=[0.8, 0.01, 0.001])
    world.add_light(name="top", pos=[0.5, 0, 2.0], dir=[0, 0, -1], diffuse=[0.7, 0.7, 0.7],
                    castshadow=False)
    world.add_light(name="front", pos=[1.5, 0.5, 1.5], dir=[-0.6, -0.2, -0.7], diffuse=[0.35, 0.35, 0.35],
                    castshadow=False)

    # Graspable objects (size, colour and pose are set per episode by the task).
    shapes = {"box": (mujoco.mjtGeom.mjGEOM_BOX, [0.025, 0.025, 0.025]),
              "cylinder": (mujoco.mjtGeom.mjGEOM_CYLINDER, [0.025, 0.03, 0]),
              "sphere": (mujoco.mjtGeom.mjGEOM_SPHERE, [0.03, 0, 0])}
    for k, kind in enumerate(OBJECT_KINDS):
        geom_type, size = shapes[kind]
        body = world.add_body(name=f"obj_{kind}", pos=[0.5, -0.2 + 0.2 * k, 0.05])
        body.add_freejoint(name=f"obj_{kind}")
        body.add_geom(name=f"obj_{kind}", type=geom_type, size=size, mass=0.08,
                      rgba=[0.8, 0.2, 0.2, 1], friction=[1.2, 0.02, 0.002], condim=6, solref=[0.004, 1])

    # Target marker (reach: where the hand goes; place: where the object goes); visual only.
    target = world.add_body(name="target", mocap=True, pos=[0.5, 0.0, 0.2])
    target.add_geom(name="target", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[0.02, 0, 0],
                    rgba=[0.1, 0.9, 0.2, 0.6], contype=0, conaffinity=0, group=1)
    target.add_geom(name="target_ring", type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[0.05, 0.001, 0],
                    rgba=[0.1, 0.9, 0.2, 0.5], contype=0, conaffinity=0, group=1)

    # The static head camera.
    world.add_camera(name="head", pos=list(camera.position), fovy=camera.fovy_deg)
    cam = spec.camera("head")
    cam.alt.type = mujoco.mjtOrientation.mjORIENTATION_XYAXES
    cam.alt.xyaxes = list(camera.mujoco_xyaxes)

    spec.visual.global_.offwidth, spec.visual.global_.offheight = OFFSCREEN_SIZE
    spec.visual.quality.shadowsize = 0   # shadows cost ~10x render time on CPU
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    return spec


@dataclass
class SceneModel:
    """A compiled scene plus the index arrays everything else uses."""

    model: mujoco.MjModel
    camera: HeadCamera
    qpos_adr: np.ndarray      # (23,) qpos addresses of the robot joints (arm then hand)
    dof_adr: np.ndarray       # (23,) dof addresses
    actuator_ids: np.ndarray  # (23,)
    lower: np.ndarray         # (23,) joint limits
    upper: np.ndarray
    object_bodies: dict       # kind -> body id
    object_qpos_adr: dict     # kind -> qpos address of its free joint
    target_mocap: int


def build_model(camera: HeadCamera | None = None, spec: mujoco.MjSpec | None = None) -> SceneModel:
    """Compile the scene and look up the indices of robot joints, actuators and objects.

    ``spec``: a variant of ``build_spec(camera)`` to compile instead (the calibration scene).
    """
    camera = camera or HeadCamera()
    model = (spec or build_spec(camera)).compile()
    jids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in ALL_JOINTS]
    if min(jids) < 0:
        raise RuntimeError("scene is missing robot joints")
    aids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, n) for n in ALL_JOINTS]
    bodies = {k: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, f"obj_{k}") for k in OBJECT_KINDS}
    obj_qadr = {k: int(model.jnt_qposadr[model.body_jntadr[b]]) for k, b in bodies.items()}
    target_body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "target")
    return SceneModel(
        model=model, camera=camera,
        qpos_adr=model.jnt_qposadr[jids].copy(), dof_adr=model.jnt_dofadr[jids].copy(),
        actuator_ids=np.asarray(aids), lower=model.jnt_range[jids, 0].copy(), upper=model.jnt_range[jids, 1].copy(),
        object_bodies=bodies, object_qpos_adr=obj_qadr, target_mocap=int(model.body_mocapid[target_body]))
