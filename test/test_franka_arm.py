"""ROS-free checks of the Franka core: command validation, configuration, connection errors."""
import numpy as np
import pytest

from dexwm_robot.franka import FR3_JOINT_LIMITS
from franka_driver.arm import CommandRejected, FrankaArm, FrankaConfig, RobotUnavailable, config_from_mapping

HOME = np.array([0.0, 0.0, 0.0, -1.57, 0.0, 1.57, 0.785])


@pytest.fixture
def arm():
    return FrankaArm(FrankaConfig(robot_ip="127.0.0.1", max_joint_step=0.3))


def test_valid_points_pass_and_keep_shape(arm):
    pts = arm.check_points([HOME + 0.1, HOME + 0.2], current=HOME)
    assert pts.shape == (2, 7) and np.allclose(pts[1], HOME + 0.2)
    assert arm.check_points(HOME).shape == (1, 7)


@pytest.mark.parametrize("points, words", [
    ([], "shape"),
    ([HOME[:6]], "shape"),
    ([np.r_[HOME[:6], np.nan]], "NaN"),
    ([np.r_[HOME[:6], np.inf]], "NaN"),
    ([["a"] * 7], "not numbers"),
])
def test_malformed_points_are_invalid_goal(arm, points, words):
    with pytest.raises(CommandRejected, match=words) as info:
        arm.check_points(points, current=HOME)
    assert info.value.code == "invalid_goal"


def test_limits_and_step_cap_are_invalid_joints(arm):
    beyond = HOME.copy()
    beyond[5] = FR3_JOINT_LIMITS[1][5] + 0.01
    with pytest.raises(CommandRejected, match="fr3_joint6 .* outside its limits") as info:
        arm.check_points([beyond])
    assert info.value.code == "invalid_joints"
    with pytest.raises(CommandRejected, match="fr3_joint1 would move 0.4000 rad from the current position"):
        arm.check_points([HOME + np.r_[0.4, np.zeros(6)]], current=HOME)
    with pytest.raises(CommandRejected, match="between points 0 and 1"):
        arm.check_points([HOME + 0.2, HOME - 0.2], current=HOME)
    # Within the cap step by step is fine even if the total travel is larger.
    arm.check_points([HOME + 0.25, HOME + 0.5], current=HOME)


@pytest.mark.parametrize("change, words", [
    ({"relative_dynamics_factor": 0.0}, "relative_dynamics_factor"),
    ({"relative_dynamics_factor": 1.5}, "relative_dynamics_factor"),
    ({"lower_torque_thresholds": [1.0] * 6}, "lower_torque_thresholds"),
    ({"upper_force_thresholds": [-1.0] * 6}, "upper_force_thresholds"),
    ({"joint_lower_limits": [5.0] * 7}, "below"),
    ({"max_joint_step": 0.0}, "max_joint_step"),
    ({"no_such_setting": 1}, "unknown"),
])
def test_bad_configuration_is_refused(change, words):
    with pytest.raises(ValueError, match=words):
        config_from_mapping(change)


def test_connect_failure_names_the_host_and_commands_fail_cleanly():
    # Nothing listens on this loopback address: libfranka's TCP connect is refused at once.
    arm = FrankaArm(FrankaConfig(robot_ip="127.0.0.254"))
    with pytest.raises(RobotUnavailable, match="127.0.0.254"):
        arm.connect()
    assert not arm.connected
    assert arm.update() is None
    with pytest.raises(RobotUnavailable, match="127.0.0.254"):
        arm.move(HOME)
    with pytest.raises(RobotUnavailable):
        arm.stop()
    ok, text = arm.recover()
    assert not ok and "127.0.0.254" in text
