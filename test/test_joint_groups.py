"""The JointGroup interface (dexwm_robot.joint_group) and the MoveJoints goal checks, ROS-free, on the
Allegro controller against its firmware emulator (python-can's virtual bus, real frames both ways)."""
import itertools
import os

import numpy as np
import pytest
from builtin_interfaces.msg import Duration
from trajectory_msgs.msg import JointTrajectoryPoint

from allegro_driver.controller import HandController, State, open_bus
from allegro_driver.emulator import HandEmulator
from dexwm_robot import allegro as joints
from dexwm_robot.command_limits import CommandRejected
from dexwm_robot.joint_group import PREEMPTED, REACHED, RUNNING, STOPPED, TIMED_OUT
from dexwm_ros.action import MoveJoints
from dexwm_ros.move_joints import GoalRefused, parse_goal
from rosutil import wait_for

R = MoveJoints.Result
OPEN = np.asarray(joints.OPEN_POSE)
_ids = itertools.count()


@pytest.fixture
def hand():
    channel = f"joint-group-{os.getpid()}-{next(_ids)}"
    buses = [open_bus("virtual", channel) for _ in range(2)]
    emulator = HandEmulator(buses[0]).start()
    controller = HandController(buses[1])
    controller.start()
    wait_for(lambda: controller.status().state is State.RUNNING, 3.0, what="controller running")
    yield controller
    controller.close()
    emulator.close()
    for bus in buses:
        bus.shutdown()


def test_state_move_reached_and_waitable(hand):
    state = hand.state()
    assert state.position.shape == (16,) and state.velocity.shape == (16,) and state.stamp > 0
    target = OPEN + 0.2
    motion = hand.move([OPEN + 0.1, target], tolerance=np.full(16, 0.02), time_limit=5.0)
    assert motion.status == RUNNING and not motion.done
    assert motion.wait(5.0) and motion.status == REACHED, motion.reason
    assert np.max(np.abs(motion.final_error)) <= 0.02
    assert np.allclose(hand.commanded(), target)


def test_preempted_by_a_newer_motion_or_a_topic_target_and_stopped(hand):
    first = hand.move([OPEN + 0.3], np.full(16, 0.01), 10.0)
    second = hand.move([OPEN + 0.25], np.full(16, 0.01), 10.0)
    assert first.wait(1.0) and first.status == PREEMPTED
    hand.set_target(OPEN)
    assert second.wait(1.0) and second.status == PREEMPTED
    third = hand.move([OPEN + 0.3], np.full(16, 0.01), 10.0)
    hand.stop("test stop")
    assert third.wait(1.0) and third.status == STOPPED and third.reason == "test stop"
    held = hand.commanded()
    assert np.max(np.abs(held - hand.state().position)) < 1e-9   # holds where it stopped


def test_timed_out_still_under_way_holds(hand):
    # Timed points over 3 s with a time limit of 0.3 s: still under way when the limit passes.
    motion = hand.move([OPEN + 0.4], np.full(16, 0.01), time_limit=0.3, times=[3.0])
    assert motion.wait(3.0) and motion.status == TIMED_OUT and "holding" in motion.reason
    assert np.max(np.abs(hand.commanded() - OPEN)) < 0.2


def test_bad_targets_are_refused_and_change_nothing(hand):
    running = hand.move([OPEN + 0.3], np.full(16, 0.01), 10.0)
    with pytest.raises(CommandRejected, match="outside its limits") as info:
        hand.move([np.r_[OPEN[:15], 5.0]])
    assert info.value.code == "invalid_joints"
    assert not running.done and np.allclose(hand.commanded(), OPEN + 0.3)


def _goal(positions, names=(), tolerance=(), time_limit=0.0, times=None):
    goal = MoveJoints.Goal()
    goal.trajectory.joint_names = list(names)
    goal.trajectory.points = [JointTrajectoryPoint(positions=[float(v) for v in p]) for p in positions]
    for point, t in zip(goal.trajectory.points, times or ()):
        point.time_from_start = Duration(sec=int(t), nanosec=int(round((t % 1) * 1e9)))
    goal.goal_tolerance = list(tolerance)
    goal.time_limit = Duration(sec=int(time_limit), nanosec=int(round((time_limit % 1) * 1e9)))
    return goal


def _parse(goal, group):
    return parse_goal(goal, group, now_s=100.0, max_age_s=2.0, default_tolerance=0.03, default_time_limit_s=5.0)


def test_a_subset_keeps_the_other_joints_commanded_and_judges_only_the_named_ones(hand):
    hand.set_target(OPEN + 0.05)
    names = [joints.JOINT_NAMES[15], joints.JOINT_NAMES[1]]
    goal = _parse(_goal([[0.9, 0.4]], names, tolerance=[0.01, 0.02], times=[0.5]), hand)
    expected = OPEN + 0.05
    expected[[15, 1]] = [0.9, 0.4]
    np.testing.assert_allclose(goal.points, [expected])
    assert goal.tolerance[15] == 0.01 and goal.tolerance[1] == 0.02
    assert np.all(np.isinf(np.delete(goal.tolerance, [1, 15])))
    assert goal.time_limit == pytest.approx(5.5)   # 0: the last time_from_start + the default
    # all joints in another order: reordered into the driver's order, no commanded position needed
    full = _parse(_goal([OPEN[::-1]], joints.JOINT_NAMES[::-1]), hand)
    np.testing.assert_allclose(full.points, [OPEN])
    assert np.all(full.tolerance == 0.03)


@pytest.mark.parametrize("goal, code, words", [
    (_goal([[0.1]], ["nope"]), R.INVALID_JOINTS, "unknown joint_names ['nope']"),
    (_goal([[0.1, 0.1]], [joints.JOINT_NAMES[0]] * 2), R.INVALID_JOINTS, "duplicate joint_names"),
    (_goal([[0.1] * 3]), R.INVALID_GOAL, "3 positions for 16 joints"),
    (_goal([[float("nan")] * 16]), R.INVALID_GOAL, "non-finite"),
    (_goal([]), R.INVALID_GOAL, "no points"),
    (_goal([OPEN], tolerance=[0.1, 0.1]), R.INVALID_GOAL, "goal_tolerance"),
    (_goal([OPEN], time_limit=0.5, times=[1.0]), R.INVALID_GOAL, "shorter than the trajectory"),
    (_goal([OPEN, OPEN], times=[0.5, 0.5]), R.INVALID_GOAL, "strictly increasing"),
])
def test_malformed_goals_are_refused_with_the_reason(hand, goal, code, words):
    with pytest.raises(GoalRefused, match=None) as info:
        _parse(goal, hand)
    assert info.value.code == code and words in str(info.value), str(info.value)


def test_stale_goals_are_refused():
    goal = _goal([OPEN])
    goal.trajectory.header.stamp.sec = 90
    with pytest.raises(GoalRefused, match="stale goal"):
        parse_goal(goal, None, now_s=100.0, max_age_s=2.0, default_tolerance=0.03, default_time_limit_s=5.0)
