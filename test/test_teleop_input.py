"""Teleop input mapping and the joints a jog starts from (ROS-free)."""
import time

import numpy as np

from dexwm_ros.cartesian_jog import JointTargets
from dexwm_ros.teleop_input import joy_jog, key_jog, pressed_buttons


def test_keys_and_joystick_map_to_jogs_and_actions():
    t, r = key_jog("R", 0.01, 0.05)
    assert np.allclose(t, [0, 0, 0.01]) and not r.any()
    t, r = key_jog("q", 0.01, 0.05)
    assert not t.any() and np.allclose(r, [0, 0, 0.05])
    assert key_jog("o", 0.01, 0.05) is None
    assert joy_jog([0.1, -0.1, 0.05, 0.0], 0.15, 0.01, 0.05) is None          # inside the dead zone
    assert joy_jog([0.5, 0.5], 0.15, 0.01, 0.05) is None                       # too few axes
    t, r = joy_jog([0.5, 1.0, -1.0, 0.5], 0.15, 0.01, 0.05)
    assert np.allclose(t, [0.01, 0.005, -0.01]) and np.allclose(r, [0, 0, 0.025])
    assert pressed_buttons([1, 1, 0, 0, 1], None) == ["close", "open", "append"]
    assert pressed_buttons([1, 1, 1], [1, 0]) == ["open", "capture"]           # held buttons do not repeat


def test_joint_targets_start_from_the_last_target_while_it_is_recent():
    joints = JointTargets()
    assert joints.current(1.0) is None
    joints.measured_arm(np.zeros(7))
    assert joints.current(1.0) is None                                         # no hand yet
    joints.measured_hand(np.ones(16))
    assert np.array_equal(joints.current(1.0), np.r_[np.zeros(7), np.ones(16)])
    joints.commanded(np.full(23, 0.5))
    assert np.array_equal(joints.current(1.0), np.full(23, 0.5))
    joints.commanded(None)                                                     # stopped
    assert joints.current(1.0)[0] == 0.0
    time.sleep(0.06)
    assert joints.current(0.05) is None                                        # stale
