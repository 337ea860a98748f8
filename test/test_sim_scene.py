"""SimEnv: offline scene, control, bad input, blow-up handling, rendering."""
import logging
import os

import numpy as np
import pytest

from dexwm_robot.description import franky_sim_assets
from dexwm_robot.franka import HOME as ARM_HOME
from dexwm_sim.scene import SimEnv


@pytest.fixture(scope="module")
def env():
    e = SimEnv()
    yield e
    e.close()


def test_scene_loads_offline_from_franky_sim(env):
    # The FR3 comes from the installed franky-sim package, not from a copy in this repository.
    assert (franky_sim_assets() / "fr3.xml").is_file()
    assert "site-packages" in str(franky_sim_assets()) or "dist-packages" in str(franky_sim_assets())
    assert env.model.nu == 23
    assert os.environ["MUJOCO_GL"] in ("egl", "osmesa")


def test_arm_and_hand_follow_targets(env):
    env.reset("reach", 0)
    q0 = env.joint_positions()
    target = q0.copy()
    target[:7] += np.array([0.3, -0.2, 0.2, 0.3, -0.2, 0.2, 0.4])
    target[7:] = np.clip(target[7:] + 0.5, env.lower[7:], env.upper[7:])
    for _ in range(20):
        env.step(target[:7], target[7:])
    q = env.joint_positions()
    assert np.abs(q[:7] - target[:7]).max() < 0.02
    assert np.abs(q[7:] - target[7:]).max() < 0.1
    assert env.status.step == 20


def test_interpolation_is_smooth(env):
    """A far target is approached at the speed cap, not in one jump."""
    env.reset("reach", 1)
    q0 = env.joint_positions()
    target = q0[:7] + 1.0
    target = np.clip(target, env.lower[:7], env.upper[:7])
    env.step(target, None)
    moved = np.abs(env.joint_positions()[:7] - q0[:7]).max()
    assert moved <= env.max_speed[0] * env.control_dt + 0.02


def test_bad_targets_rejected_without_change(env, caplog):
    env.reset("reach", 2)
    before = env.targets()
    with caplog.at_level(logging.WARNING, logger="dexwm_sim"):
        with pytest.raises(ValueError, match="non-finite"):
            env.command(np.r_[np.nan, np.zeros(6)], None)
        with pytest.raises(ValueError, match="7 values"):
            env.command(np.zeros(6), None)
        with pytest.raises(ValueError, match="16 values"):
            env.command(None, np.zeros(3))
    np.testing.assert_array_equal(env.targets(), before)
    assert "rejected" in caplog.text


def test_out_of_range_targets_clamped_and_logged(env, caplog):
    env.reset("reach", 3)
    with caplog.at_level(logging.WARNING, logger="dexwm_sim"):
        notes = env.command(ARM_HOME + np.r_[10.0, np.zeros(6)], np.full(16, 5.0))
    assert notes and "clamped" in caplog.text
    t = env.targets()
    assert t[0] == env.upper[0]
    np.testing.assert_array_equal(t[7:], env.upper[7:])


def test_nan_state_detected_reset_and_reported(env):
    env.reset("reach-grasp", 4)
    start = env.joint_positions()
    env.step()
    env.data.qvel[0] = np.nan      # simulate a blow-up
    env.step()
    assert env.faults and "non-finite" in env.faults[-1].message
    assert np.all(np.isfinite(env.data.qpos))
    np.testing.assert_allclose(env.joint_positions(), start, atol=1e-3)


def test_render_sizes_and_depth(env):
    env.reset("pick-place", 5)
    small = env.render()
    assert small.shape == (224, 224, 3) and small.dtype == np.uint8
    big, depth = env.render(640, 480, depth=True)
    assert big.shape == (480, 640, 3) and depth.shape == (480, 640)
    assert small.std() > 10           # not a blank frame
    assert 0.3 < float(np.median(depth)) < 3.0   # metres, table about 1 m away
    with pytest.raises(ValueError):
        env.render(2000, 2000)


def test_keypoints_in_world_camera_and_image(env):
    env.reset("reach", 6)
    kp = env.keypoints()
    assert kp.world.shape == (21, 3) and kp.camera.shape == (21, 3) and kp.uv.shape == (21, 2)
    assert kp.visible.dtype == bool and kp.visible.any()
    assert np.all(kp.camera[:, 2] > 0)
    np.testing.assert_allclose(env.camera.to_camera(kp.world), kp.camera)


def test_reset_rejects_unknown_task_and_bad_seed(env):
    with pytest.raises(ValueError, match="unknown task"):
        env.reset("juggle", 0)
    with pytest.raises(ValueError, match="seed"):
        env.reset("reach", -1)
