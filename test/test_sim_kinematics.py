"""Forward kinematics and camera model of the simulation against MuJoCo itself."""
import numpy as np
import pytest

from dexwm_robot import allegro as hand_joints
from dexwm_robot.camera import HeadCamera
from dexwm_robot.kinematics import RobotKinematics
from dexwm_robot.joints import JOINT_NAMES as ALL_JOINTS
from dexwm_sim.model import build_model

mujoco = pytest.importorskip("mujoco")


@pytest.fixture(scope="module")
def scene():
    return build_model()


@pytest.fixture(scope="module")
def kin(scene):
    return RobotKinematics.from_description()


def _mujoco_points(scene, q):
    m = scene.model
    d = mujoco.MjData(m)
    d.qpos[scene.qpos_adr] = q
    mujoco.mj_kinematics(m, d)
    pts = [d.site("allegro_palm_center").xpos.copy()]
    for f in ("thumb", "index", "middle", "ring"):
        pts += [d.body(f"allegro_{f}_{p}").xpos.copy() for p in ("proximal", "medial", "distal")]
        pts.append(d.site(f"allegro_{f}_tip").xpos.copy())
    return np.array(pts), d.body("allegro_mount").xpos.copy(), d.body("allegro_mount").xmat.reshape(3, 3).copy()


def test_scene_joint_names_and_limits(scene, kin):
    names = [scene.model.joint(int(j)).name for j in range(scene.model.njnt)]
    for n in ALL_JOINTS:
        assert n in names
    assert ALL_JOINTS[7:] == hand_joints.JOINT_NAMES
    np.testing.assert_allclose(kin.hand_lower, hand_joints.LOWER)
    np.testing.assert_allclose(kin.hand_upper, hand_joints.UPPER)
    assert kin.arm_lower.shape == kin.arm_upper.shape == (7,)
    assert kin.lower.shape == kin.upper.shape == (23,)
    assert np.all(kin.lower < kin.upper)


def test_fk_matches_mujoco_bodies(scene, kin):
    rng = np.random.default_rng(1)
    q = rng.uniform(kin.lower, kin.upper, size=(6, 23))
    kp = kin.keypoints_world(q)
    tips = kin.palm_and_tips_world(q)
    ee_pos, ee_rot = kin.ee_pose(q)
    assert kp.shape == (6, 21, 3) and tips.shape == (6, 5, 3) and ee_rot.shape == (6, 3, 3)
    for i in range(len(q)):
        ref, mount_pos, mount_rot = _mujoco_points(scene, q[i])
        np.testing.assert_allclose(kp[i, :17], ref, atol=1e-9)
        np.testing.assert_allclose(tips[i], ref[[0, 4, 8, 12, 16]], atol=1e-9)
        np.testing.assert_allclose(ee_pos[i], mount_pos, atol=1e-9)
        np.testing.assert_allclose(ee_rot[i], mount_rot, atol=1e-9)


def test_mano_layout_little_copies_ring(kin):
    q = np.r_[np.zeros(7) + (kin.arm_lower + kin.arm_upper) / 2, hand_joints.OPEN_POSE]
    kp = kin.keypoints_world(q)
    assert kp.shape == (21, 3)
    np.testing.assert_array_equal(kp[17:21], kp[13:17])
    # Knuckle -> tip: each finger's points move away from the palm.
    for f in range(5):
        d = np.linalg.norm(kp[1 + 4 * f:5 + 4 * f] - kp[0], axis=1)
        assert d[-1] > d[0]


def test_fk_batch_shapes_and_bad_input(kin):
    q = np.zeros((2, 3, 23)) + (kin.lower + kin.upper) / 2
    assert kin.keypoints_world(q).shape == (2, 3, 21, 3)
    assert kin.ee_pose(q)[0].shape == (2, 3, 3)
    with pytest.raises(ValueError):
        kin.keypoints_world(np.zeros(22))


def test_camera_pose_and_intrinsics():
    cam = HeadCamera()
    assert abs(cam.pitch_deg - 60.0) < 1.0
    assert abs(cam.position[2] - 0.85) < 1e-9      # 1.6 m above the floor, table top at 0.75 m
    T = cam.world_to_camera
    np.testing.assert_allclose(T @ cam.camera_pose, np.eye(4), atol=1e-12)
    K = cam.intrinsics(640, 480)
    assert K[0, 0] == K[1, 1] and K[0, 2] == 319.5 and K[1, 2] == 239.5
    uv, depth, vis = cam.project(np.array(cam.look_at), 640, 480)
    np.testing.assert_allclose(uv, [319.5, 239.5], atol=1e-9)
    assert depth > 0 and vis
    behind = np.array(cam.position) - (np.array(cam.look_at) - np.array(cam.position))
    assert not cam.project(behind)[2]


@pytest.mark.parametrize("size", [(640, 480), (224, 224)])
def test_projection_matches_rendered_image(scene, size):
    """The projected centre of each object lands on that object's pixels in MuJoCo's render."""
    from dexwm_sim.scene import SimEnv

    env = SimEnv(scene=scene)
    env.reset("reach-grasp", 3)
    w, h = size
    r = env._renderer(w, h)
    r.enable_segmentation_rendering()
    try:
        r.update_scene(env.data, camera="head")
        seg = r.render()
    finally:
        r.disable_segmentation_rendering()
    for kind, pose in env.object_poses().items():
        uv, _, vis = env.camera.project(pose[:3], w, h)
        assert vis
        u, v = int(round(uv[0])), int(round(uv[1]))
        geom = env.model.body_geomadr[env.scene.object_bodies[kind]]
        assert seg[v, u, 0] == geom, f"{kind}: pixel ({u},{v}) shows object {seg[v, u]}"
    env.close()
