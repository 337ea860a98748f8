"""The planner node's ROS-free parts: the goal store (capture, named sequences and their limits)
and the reading of Execute requests (refused with the reason before anything moves)."""
from __future__ import annotations

import numpy as np
import pytest

from dexwm_ros.action import Execute
from dexwm_ros.execute_request import Refused, read_request
from dexwm_ros.goal_images import Goal
from dexwm_ros.goal_store import APPEND, CLEAR, LIST, MAX_SEQUENCES, MAX_SUBGOALS, GoalStore
from dexwm_ros.goal_store import sequence_subgoals
from dexwm_ros.image_conversion import numpy_to_image

HW = (96, 128)


def frame(value=0, depth=None):
    return np.full((*HW, 3), value, np.uint8), np.zeros(23), depth


def stale():
    raise LookupError("no recent camera image")


def image_msg(h=96, w=128, value=7):
    return numpy_to_image(np.full((h, w, 3), value, np.uint8), 0.0, "")


def test_capture_and_goal_fitting():
    store = GoalStore()
    with pytest.raises(LookupError, match="cannot capture a goal: no recent camera image"):
        store.capture("test", stale)
    assert store.goal is None
    goal = store.capture("test", lambda: frame(5))
    assert store.goal is goal and goal.source == "test" and goal.joints.shape == (23,)
    resized = store.set_goal(Goal(np.zeros((192, 256, 3), np.uint8), None, "file"), HW)
    assert resized.image.shape == (*HW, 3) and store.goal is resized
    with pytest.raises(ValueError, match="aspect ratio"):
        store.set_goal(Goal(np.zeros((200, 50, 3), np.uint8), None, "bad"), HW)
    assert store.goal is resized


def test_sequences_append_list_clear_and_limits():
    store = GoalStore()
    assert store.edit_sequence(APPEND, "", "grasp", lambda: frame(1))[::2] == (True, ["grasp"])
    ok, message, phases = store.edit_sequence(APPEND, "", "", stale)
    assert not ok and "cannot append to sequence 'default': no recent camera image" in message and phases == ["grasp"]
    for args, why in (((APPEND, "", "juggle"), "unknown subgoal phase"), (("delete", "", ""), "unknown command"),
                      ((APPEND, " x", ""), "sequence name"), ((LIST, "y" * 65, ""), "sequence name")):
        ok, message, _ = store.edit_sequence(*args, lambda: frame())
        assert not ok and why in message, message
    assert store.phases("default") == ["grasp"]
    while len(store.sequence("default")) < MAX_SUBGOALS:
        assert store.edit_sequence(APPEND, "default", "", lambda: frame())[0]
    ok, message, phases = store.edit_sequence(APPEND, "default", "", lambda: frame())
    assert not ok and "the most" in message and len(phases) == MAX_SUBGOALS
    for k in range(MAX_SEQUENCES - 1):
        assert store.edit_sequence(APPEND, f"s{k}", "", lambda: frame())[0]
    assert not store.edit_sequence(APPEND, "one_more", "", lambda: frame())[0]
    ok, message, phases = store.edit_sequence(CLEAR, "default", "", stale)
    assert ok and f"{MAX_SUBGOALS} subgoal(s) removed" in message and store.sequence("default") == []
    assert store.edit_sequence(LIST, "s0", "", stale) == (True, "sequence 's0': 1 subgoal(s)", [""])


def test_execute_requests_are_read_or_refused_with_the_reason():
    store = GoalStore()
    read = lambda goal: read_request(goal, "grasp", 40, store, HW)  # noqa: E731
    for goal, why in ((Execute.Goal(max_steps=4294967295), "bad_goal: max_steps 4294967295"),
                      (Execute.Goal(task="fly"), "bad_goal: unknown task 'fly'"),
                      (Execute.Goal(use_captured_goal=True), "no_goal: no goal"),
                      (Execute.Goal(goal_image=image_msg(4, 4)), "bad_goal: goal image 4x4 is too small"),
                      (Execute.Goal(goal_images=[image_msg()], sequence="s"), "bad_goal: give goal_images or"),
                      (Execute.Goal(goal_images=[image_msg()] * 2, phases=["reach"]), "bad_goal: 1 phases for 2"),
                      (Execute.Goal(goal_images=[image_msg()], phases=["dance"]), "bad_goal: unknown subgoal phase"),
                      (Execute.Goal(goal_images=[image_msg(), image_msg(200, 50)]), "bad_goal: goal image 1"),
                      (Execute.Goal(goal_images=[image_msg()] * (MAX_SUBGOALS + 1)), "bad_goal: 33 goal images"),
                      (Execute.Goal(sequence="nothing"), "no_goal: sequence 'nothing' is empty")):
        with pytest.raises(Refused) as refused:
            read(goal)
        assert str(refused.value).startswith(why), str(refused.value)
    assert store.goal is None
    plan = read(Execute.Goal(goal_image=image_msg(192, 256), task="reach"))
    assert (plan.task, plan.max_steps, plan.sequence, plan.new_goal) == ("reach", 40, False, True)
    assert plan.goals[0].image.shape == (*HW, 3) and store.goal is None      # the node sets it
    store.capture("captured", lambda: frame(3))
    plan = read(Execute.Goal(use_captured_goal=True, goal_image=image_msg(), max_steps=5))
    assert plan.goals[0].source == "captured" and plan.max_steps == 5 and not plan.new_goal
    plan = read(Execute.Goal(goal_images=[image_msg()] * 2, phases=["reach", "carry"]))
    assert plan.sequence and [g.phase for g in plan.goals] == ["reach", "carry"]
    store.edit_sequence(APPEND, "pick", "", lambda: frame())
    plan = read(Execute.Goal(sequence="pick"))
    assert plan.sequence and plan.name == "pick" and len(plan.goals) == 1


def depth_msg(h=96, w=128, mm=800):
    return numpy_to_image(np.full((h, w), mm, np.uint16), 0.0, "", "16UC1")


def test_goal_depth_is_captured_sent_fitted_and_handed_to_the_subgoals():
    store = GoalStore()
    depth = np.full(HW, 0.8, np.float32)
    np.testing.assert_array_equal(store.capture("test", lambda: frame(5, depth)).depth, depth)
    assert store.edit_sequence(APPEND, "pick", "reach", lambda: frame(1, depth))[0]
    assert store.edit_sequence(APPEND, "pick", "grasp", lambda: frame(2))[0]        # a camera without depth
    subgoals = sequence_subgoals(store.sequence("pick"))
    assert subgoals[0].depth is depth and subgoals[1].depth is None
    # A goal brought to the camera's size brings its depth along (nearest neighbour: no invented surfaces).
    big = np.zeros((192, 256), np.float32)
    big[:, 128:] = 1.0
    big[0, 0] = np.nan
    fitted = store.set_goal(Goal(np.zeros((192, 256, 3), np.uint8), None, "file", depth=big), HW)
    assert fitted.depth.shape == HW and set(np.unique(fitted.depth)) == {0.0, 1.0}
    with pytest.raises(ValueError, match="not aligned"):
        store.set_goal(Goal(np.zeros((192, 256, 3), np.uint8), None, "file", depth=np.zeros((100, 50))), HW)
    assert store.goal is fitted

    read = lambda goal: read_request(goal, "grasp", 40, store, HW)  # noqa: E731
    plan = read(Execute.Goal(goal_images=[image_msg()] * 2, goal_depths=[depth_msg(), depth_msg(192, 256, 500)]))
    assert [float(g.depth.mean()) for g in plan.goals] == [pytest.approx(0.8), pytest.approx(0.5)]
    assert plan.goals[0].depth.dtype == np.float32 and plan.goals[1].depth.shape == HW
    plan = read(Execute.Goal(goal_image=image_msg(), goal_depths=[depth_msg()]))
    assert plan.goals[0].depth.shape == HW and plan.new_goal
    for goal, why in ((Execute.Goal(goal_images=[image_msg()] * 2, goal_depths=[depth_msg()]), "1 depth images for 2"),
                      (Execute.Goal(sequence="pick", goal_depths=[depth_msg()]), "a captured sequence keeps"),
                      (Execute.Goal(use_captured_goal=True, goal_depths=[depth_msg()]), "goal_depths need"),
                      (Execute.Goal(goal_image=image_msg(), goal_depths=[depth_msg()] * 2), "2 depth images for one"),
                      (Execute.Goal(goal_images=[image_msg()], goal_depths=[depth_msg(50, 200)]),
                       "depth of goal image 0"),
                      (Execute.Goal(goal_images=[image_msg()], goal_depths=[image_msg()]),
                       "depth of goal image 0: unsupported image encoding 'rgb8'")):
        with pytest.raises(Refused) as refused:
            read(goal)
        assert str(refused.value).startswith("bad_goal: ") and why in str(refused.value), str(refused.value)
