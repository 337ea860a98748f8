"""Teleop: Cartesian jogs by damped least squares on the real FK; key/Joy input -> MoveJoints goals."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dexwm_robot.franka import HOME as ARM_HOME
from dexwm_robot.kinematics import RobotKinematics
from dexwm_ros.cartesian_jog import HAND_CLOSED, CartesianJogger


@pytest.fixture(scope="module")
def kin():
    return RobotKinematics.from_description()


def q_home():
    from dexwm_robot import allegro as joints
    return np.r_[ARM_HOME, joints.OPEN_POSE]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_translation_jog_moves_the_flange_along_the_axis(kin, axis):
    jogger = CartesianJogger(kin)
    q = q_home()
    p0, r0 = kin.ee_pose(q)
    delta = np.zeros(3)
    delta[axis] = 0.01
    q1 = q.copy()
    q1[:7] = jogger.jog(q, translation=delta)
    p1, r1 = kin.ee_pose(q1)
    assert np.allclose(p1 - p0, delta, atol=5e-4)
    assert Rotation.from_matrix(r1 @ r0.T).magnitude() < 5e-3
    assert np.array_equal(q1[7:], q[7:])


def test_rotation_jog_turns_about_the_world_axis(kin):
    jogger = CartesianJogger(kin)
    q = q_home()
    p0, r0 = kin.ee_pose(q)
    q1 = q.copy()
    q1[:7] = jogger.jog(q, rotation_vector=(0, 0, 0.05))
    p1, r1 = kin.ee_pose(q1)
    assert np.allclose(Rotation.from_matrix(r1 @ r0.T).as_rotvec(), [0, 0, 0.05], atol=2e-3)
    assert np.linalg.norm(p1 - p0) < 1e-3


def test_jog_respects_limits_and_joint_cap(kin):
    jogger = CartesianJogger(kin, max_joint_step=0.05)
    q = q_home()
    q[3] = kin.upper[3] - 1e-3        # elbow at its limit
    arm = jogger.jog(q, translation=(0.3, 0.0, -0.3))   # far beyond one capped step
    assert np.all(np.abs(arm - q[:7]) <= 0.05 + 1e-12)
    assert np.all(arm >= kin.lower[:7]) and np.all(arm <= kin.upper[:7])
    with pytest.raises(ValueError):
        jogger.jog(np.full(23, np.nan))


def test_keys_and_joy_send_movejoints_goals(rclpy_context, kin):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.executors import MultiThreadedExecutor
    from sensor_msgs.msg import Joy

    from dexwm_ros.teleop_node import TeleopNode
    from rosutil import SpinThread, wait_for
    from test_planner_node import RobotDouble

    robot = RobotDouble(rclpy_context)
    teleop = TeleopNode(kinematics=kin, keyboard=False, context=rclpy_context)
    spin = SpinThread(MultiThreadedExecutor(num_threads=4, context=rclpy_context), teleop, robot)
    try:
        wait_for(lambda: teleop.current() is not None and teleop.arm_client.server_is_ready()
                 and teleop.hand_client.server_is_ready(), 10, what="joint states and drivers")
        p0, _ = kin.ee_pose(teleop.current())
        teleop.handle_key("r")                       # +z
        wait_for(lambda: any(t[0] == "arm" for t in robot.targets), 5, what="an arm target")
        arm = [t for t in robot.targets if t[0] == "arm"][-1][2]
        p1, _ = kin.ee_pose(np.r_[arm, teleop.current()[7:]])
        assert p1[2] - p0[2] == pytest.approx(0.01, abs=1e-3)
        teleop.handle_key("c")                       # close the hand
        wait_for(lambda: any(t[0] == "hand" for t in robot.targets), 5, what="a hand target")
        assert np.allclose([t for t in robot.targets if t[0] == "hand"][-1][2], HAND_CLOSED)
        teleop.handle_key(" ")                       # stop
        wait_for(lambda: robot.stops == {"arm": 1, "hand": 1}, 5, what="stop calls")
        n = len(robot.targets)
        pub = teleop.create_publisher(Joy, "/joy", 10)
        wait_for(lambda: pub.get_subscription_count() > 0, 5, what="joy subscription")
        pub.publish(Joy(axes=[0.0, 0.0, 0.0, 0.0], buttons=[0, 1, 0, 0]))   # button 1: open
        wait_for(lambda: len(robot.targets) > n, 5, what="a hand target from the joystick")
        from dexwm_robot import allegro as joints
        assert np.allclose(robot.targets[-1][2], joints.OPEN_POSE)
    finally:
        spin.close()


def test_keyboard_reader_reads_keys_from_a_terminal_and_restores_it():
    import os
    import termios

    from dexwm_ros.teleop_input import KeyboardReader

    master, slave = os.openpty()
    stream = os.fdopen(slave, "r")
    before = termios.tcgetattr(slave)
    try:
        reader = KeyboardReader(stream)
        assert reader.active
        assert not termios.tcgetattr(slave)[3] & termios.ICANON      # cbreak: no line buffering
        os.write(master, b"wr ")
        keys = []
        for _ in range(50):
            keys += reader.read()
            if len(keys) >= 3:
                break
        assert keys == ["w", "r", " "]
        reader.close()
        assert termios.tcgetattr(slave)[3] == before[3]
    finally:
        stream.close()
        os.close(master)
