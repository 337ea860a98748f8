"""Goal sequences through the planner node (real rclpy nodes, a random DexWM, the test robot of
test_planner_node.py): capture/append/list/clear through the service, RViz's 2D Pose Estimate tool
(/initialpose) and the teleop keys; Execute with goal images or a captured sequence's name, its
feedback, status and goal image per active subgoal; refused requests change nothing."""
from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from dexwm_ros.action import Execute  # noqa: E402
from dexwm_ros.goal_store import MAX_SUBGOALS  # noqa: E402
from dexwm_ros.srv import CaptureSequence  # noqa: E402
from rosutil import wait_for  # noqa: E402
from test_planner_node import _call, graph, rgb_to_image_msg, send_goal  # noqa: E402,F401  (graph: the fixture)

APPEND, LIST, CLEAR = CaptureSequence.Request.APPEND, CaptureSequence.Request.LIST, CaptureSequence.Request.CLEAR


@pytest.fixture
def sequences(graph):  # noqa: F811
    robot, client, planner = graph
    service = client.create_client(CaptureSequence, "/dexwm/capture_sequence")
    wait_for(service.service_is_ready, 10, what="/dexwm/capture_sequence")
    pose_pub = client.create_publisher(PoseWithCovarianceStamped, "/initialpose", 10)

    def call(command, sequence="", phase=""):
        return _call(service.call_async(CaptureSequence.Request(command=command, sequence=sequence, phase=phase)))
    return robot, client, planner, call, pose_pub


def test_append_list_and_clear_through_the_service_and_rviz(sequences):
    robot, client, planner, call, pose_pub = sequences
    assert call(LIST).phases == [] and call(LIST).success
    answer = call(APPEND, phase="grasp")
    assert answer.success and list(answer.phases) == ["grasp"], answer.message
    pose_pub.publish(PoseWithCovarianceStamped())                 # RViz 2D Pose Estimate: the default sequence
    wait_for(lambda: len(call(LIST).phases) == 2, 5, what="append from /initialpose")
    assert list(call(LIST).phases) == ["grasp", ""]
    planner.set_parameters([Parameter("capture_sequence", value="other")])
    pose_pub.publish(PoseWithCovarianceStamped())
    wait_for(lambda: len(call(LIST, "other").phases) == 1, 5, what="append to the parameter's sequence")
    stored = planner.goals.sequence("default")[0]
    assert stored.image.shape == (96, 128, 3) and stored.joints.shape == (23,)
    # The frame's aligned depth comes with it, in metres; a camera without depth gives none.
    assert stored.depth.shape == (96, 128) and np.allclose(stored.depth, 0.8)
    robot.publish_depth = False
    time.sleep(0.3)                                               # the depth kept is now older than the frames
    assert call(APPEND, "no_depth").success and planner.goals.sequence("no_depth")[0].depth is None
    answer = call(CLEAR)
    assert answer.success and "2 subgoal(s) removed" in answer.message and call(LIST).phases == []
    assert list(call(LIST, "other").phases) == [""]               # other sequences are untouched
    assert client.goal_images == []                               # capturing a subgoal is not setting the goal


def test_bad_capture_requests_are_refused_and_change_nothing(sequences):
    robot, client, planner, call, pose_pub = sequences
    assert call(APPEND).success
    for args, why in (((APPEND, "", "juggle"), "unknown subgoal phase"), (("delete",), "unknown command"),
                      ((APPEND, " padded "), "sequence name"), ((APPEND, "x" * 65), "sequence name")):
        answer = call(*args)
        assert not answer.success and why in answer.message, answer.message
    assert not planner.set_parameters([Parameter("capture_sequence", value=" bad ")])[0].successful
    robot.publish_images = False
    wait_for(lambda: "camera image" in planner.stale_inputs(), 5, what="the image to go stale")
    answer = call(APPEND)
    assert not answer.success and "camera image" in answer.message and list(answer.phases) == [""]
    pose_pub.publish(PoseWithCovarianceStamped())                 # the RViz path fails the same way, and lives
    time.sleep(0.3)
    robot.publish_images = True
    wait_for(lambda: planner.stale_inputs() == [], 5, what="fresh inputs")
    assert list(call(LIST).phases) == [""]
    while len(planner.goals.sequence("default")) < MAX_SUBGOALS:
        assert call(APPEND).success
    answer = call(APPEND)
    assert not answer.success and "the most" in answer.message and len(answer.phases) == MAX_SUBGOALS


def test_execute_goal_images_as_subgoals_with_feedback_status_and_goal_image(sequences):
    robot, client, planner, call, pose_pub = sequences
    images = [robot.image()[::-1].copy(), robot.image()[:, ::-1].copy()]
    feedback = []
    goal = Execute.Goal(goal_images=[rgb_to_image_msg(i) for i in images], phases=["reach", "carry"], max_steps=2)
    result = _call(send_goal(client, goal, lambda fb: feedback.append(fb.feedback)).get_result_async(), 90).result
    assert list(result.subgoal_reasons) == ["budget", "budget"] and result.steps == 4
    assert result.reason == "budget" and not result.success
    assert [(f.subgoal, f.subgoals, f.step) for f in feedback] == [(0, 2, 1), (0, 2, 2), (1, 2, 1), (1, 2, 2)]
    shown = [np.frombuffer(bytes(m.data), np.uint8).reshape(96, 128, 3) for m in client.goal_images]
    assert len(shown) == 2 and all(np.array_equal(a, b) for a, b in zip(shown, images))   # the active one
    status = [(s.subgoal, s.subgoals, s.phase) for s in client.statuses if s.state == "executing"]
    assert (0, 2, "reach") in status and (1, 2, "carry") in status
    # carry holds the hand at the previous subgoal's last targets
    hand = [target for name, _, target in robot.targets if name == "hand"]
    assert np.array_equal(hand[2], hand[1]) and np.array_equal(hand[3], hand[1])


def test_execute_a_captured_sequence_advances_by_the_stop_rule(sequences):
    """Two subgoals captured at the current pose: each is reached at once by the threshold, so the
    sequence advances through both without moving and succeeds."""
    robot, client, planner, call, pose_pub = sequences
    assert call(APPEND, "pick").success and call(APPEND, "pick", "release").success
    planner.set_parameters([Parameter("done_cost", value=0.01)])
    result = _call(send_goal(client, Execute.Goal(sequence="pick", max_steps=3)).get_result_async(), 60).result
    assert (result.success, result.steps, result.reason) == (True, 0, "reached")
    assert list(result.subgoal_reasons) == ["reached", "reached"] and robot.targets == []
    wait_for(lambda: client.statuses and client.statuses[-1].state == "succeeded", 5, what="final status")
    assert [s.sequence for s in client.statuses if s.subgoals == 2][:1] == ["pick"]


def test_bad_sequence_requests_are_refused_before_anything_moves(sequences):
    robot, client, planner, call, pose_pub = sequences
    image = rgb_to_image_msg(robot.image()[::-1].copy())
    assert call(APPEND, "s").success
    for goal, why in ((Execute.Goal(goal_images=[image], sequence="s"), "bad_goal: give goal_images or"),
                      (Execute.Goal(goal_images=[image, image], phases=["reach"]), "bad_goal: 1 phases for 2"),
                      (Execute.Goal(goal_images=[image], phases=["dance"]), "bad_goal: unknown subgoal phase"),
                      (Execute.Goal(goal_images=[image, rgb_to_image_msg(np.zeros((200, 50, 3), np.uint8))]),
                       "bad_goal: goal image 1"),
                      (Execute.Goal(sequence="nothing"), "no_goal: sequence 'nothing' is empty")):
        result = _call(send_goal(client, goal).get_result_async(), 30).result
        assert result.reason.startswith(why) and not result.success, result.reason
    assert robot.targets == [] and planner.goals.goal is None


def test_cancel_ends_a_sequence_and_the_robot_holds(sequences):
    robot, client, planner, call, pose_pub = sequences
    robot.move_seconds = 30.0
    images = [rgb_to_image_msg(robot.image()[::-1].copy())] * 3
    handle = send_goal(client, Execute.Goal(goal_images=images, max_steps=5))
    wait_for(lambda: len(robot.targets) >= 2, 20, what="the first targets")
    _call(handle.cancel_goal_async())
    result = _call(handle.get_result_async(), 20).result
    assert result.reason == "canceled" and list(result.subgoal_reasons) == ["canceled"]
    assert robot.stops == {"arm": 1, "hand": 1}
    wait_for(lambda: client.statuses and client.statuses[-1].state == "canceled", 5, what="canceled status")


def test_teleop_keys_append_list_and_clear(sequences, rclpy_context):
    from dexwm_ros.teleop_node import TeleopNode

    robot, client, planner, call, pose_pub = sequences
    teleop = TeleopNode(keyboard=False, context=rclpy_context,
                        parameter_overrides=[Parameter("sequence", value="keys")])
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(teleop)
    try:
        wait_for(lambda: (executor.spin_once(timeout_sec=0.05), teleop.sequence_client.service_is_ready())[1], 10,
                 what="teleop sees the service")
        for key, phase in (("n", ""), ("n", "approach")):
            teleop.set_parameters([Parameter("sequence_phase", value=phase)])
            n = len(planner.goals.sequence("keys"))
            teleop.handle_key(key)
            wait_for(lambda: (executor.spin_once(timeout_sec=0.05),
                              len(planner.goals.sequence("keys")) > n)[1], 10, what=f"append by key {key}")
        assert list(call(LIST, "keys").phases) == ["", "approach"]
        assert not teleop.set_parameters([Parameter("sequence_phase", value="juggle")])[0].successful
        teleop.handle_key("l")
        teleop.handle_key("x")
        wait_for(lambda: (executor.spin_once(timeout_sec=0.05), planner.goals.sequence("keys") == [])[1], 10,
                 what="clear by key x")
    finally:
        executor.remove_node(teleop)
        teleop.destroy_node()
