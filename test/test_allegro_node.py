"""The `allegro` node as a separate process against its in-process emulator (virtual CAN bus)."""
import time

import numpy as np
import pytest
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from dexwm_robot import allegro as joints
from rosutil import SpinThread, node_command, process, wait_for

OPEN = np.asarray(joints.OPEN_POSE)


class Client:
    """Subscribers and clients of the node under test, spun in a background thread."""

    def __init__(self, ctx):
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.srv import SetParameters
        from sensor_msgs.msg import JointState
        from std_srvs.srv import Trigger

        from dexwm_ros.action import MoveJoints

        self.node = Node("allegro_test_client", context=ctx)
        self.states, self.diags = [], []
        self.node.create_subscription(JointState, "/allegro/joint_states", self.states.append, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 10)
        self.cmd = self.node.create_publisher(JointState, "/allegro/joint_command", 10)
        self.stop = self.node.create_client(Trigger, "/allegro/stop")
        self.params = self.node.create_client(SetParameters, "/allegro/set_parameters")
        self.action = ActionClient(self.node, MoveJoints, "/allegro/move_joints")
        self.spin = SpinThread(SingleThreadedExecutor(context=ctx), self.node)

    def close(self):
        self.spin.close()

    def position(self):
        return np.asarray(self.states[-1].position)

    def call(self, future, timeout=10.0):
        wait_for(future.done, timeout, interval=0.02, what="service/action response")
        return future.result()

    def send_command(self, positions, names=()):
        from sensor_msgs.msg import JointState

        msg = JointState()
        msg.name = list(names)
        msg.position = [float(p) for p in positions]
        self.cmd.publish(msg)

    def move(self, target, tolerance=(), time_limit=0.0, names=(), feedback=None, times=None, age=None):
        """Goal with one point (``target``) or, with ``times``, timed points (``target`` = list)."""
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectoryPoint

        from dexwm_ros.action import MoveJoints

        goal = MoveJoints.Goal()
        goal.trajectory.joint_names = list(names)
        if age is not None:   # stamped this many seconds ago
            now = self.node.get_clock().now().nanoseconds * 1e-9 - age
            goal.trajectory.header.stamp.sec = int(now)
            goal.trajectory.header.stamp.nanosec = int((now % 1) * 1e9)
        if times is None:
            goal.trajectory.points = [JointTrajectoryPoint(positions=[float(v) for v in target])]
        else:
            goal.trajectory.points = [
                JointTrajectoryPoint(positions=[float(v) for v in q],
                                     time_from_start=Duration(sec=int(t), nanosec=int((t % 1) * 1e9)))
                for q, t in zip(target, times)]
        goal.goal_tolerance = [float(t) for t in tolerance]
        goal.time_limit = Duration(sec=int(time_limit), nanosec=int((time_limit % 1) * 1e9))
        handle = self.call(self.action.send_goal_async(goal, feedback_callback=feedback))
        assert handle.accepted
        return handle

    def set_param(self, name, value):
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        val = ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=list(value))
        req = SetParameters.Request(parameters=[Parameter(name=name, value=val)])
        return self.call(self.params.call_async(req)).results[0]

    def diag_value(self, key):
        kv = {v.key: v.value for v in self.diags[-1].status[0].values}
        return kv[key]


@pytest.fixture
def client(rclpy_context):
    c = Client(rclpy_context)
    yield c
    c.close()


def test_allegro_node_end_to_end(client, node_env, tmp_path):
    from dexwm_ros.action import MoveJoints

    cmd = node_command("allegro", "--params-file", "config/allegro.yaml", "-p", "can_interface:=virtual",
                       "-p", f"can_channel:=allegro-{node_env['ROS_DOMAIN_ID']}", "-p", "emulate_hand:=true")
    log = tmp_path / "allegro.log"
    with process(cmd, node_env, log) as proc:
        # joint states flow with the 16 documented names
        wait_for(lambda: len(client.states) > 5 or proc.poll() is not None, 30.0, what="joint_states")
        assert proc.poll() is None, log.read_text()
        assert list(client.states[-1].name) == list(joints.JOINT_NAMES)
        np.testing.assert_allclose(client.position(), OPEN, atol=0.01)
        assert client.action.wait_for_server(timeout_sec=10.0)

        # MoveJoints reaches its target within tolerance, with feedback
        target = OPEN + np.array([0.2, 0.5, 0.4, 0.3] * 3 + [0.3, 0.2, 0.4, 0.5])
        feedback = []
        handle = client.move(target, tolerance=[0.02], feedback=feedback.append)
        res = client.call(handle.get_result_async()).result
        assert res.error_code == MoveJoints.Result.SUCCESSFUL, res.message
        assert np.max(np.abs(res.final_error)) <= 0.02 and feedback
        time.sleep(0.1)
        assert np.max(np.abs(client.position() - target)) < 0.03

        # a NaN command and a wrong-size command are rejected; the hand holds
        client.send_command([float("nan")] + [0.5] * 15)
        client.send_command([0.5] * 15)
        client.send_command([0.1, 0.2], names=["allegro_index_0", "nope"])
        time.sleep(0.5)
        assert np.max(np.abs(client.position() - target)) < 0.03
        wait_for(lambda: client.diags and int(client.diag_value("commands_rejected")) >= 3, 5.0,
                 what="rejections on /diagnostics")
        assert client.diags[-1].status[0].name == "allegro: hand"
        for key in ("temperature_thumb_max_c", "temperatures_c", "can_frames_truncated", "loop_period_error_ms_p99"):
            client.diag_value(key)

        # an invalid goal is answered with its error code (a malformed point: INVALID_GOAL, as on every
        # driver) and the reason
        bad = client.call(client.move([0.1] * 3).get_result_async()).result
        assert bad.error_code == MoveJoints.Result.INVALID_GOAL and "3 positions for 16 joints" in bad.message

        # out-of-limit targets, stale stamps, bad timing, absurd tolerances, negative time limits are
        # refused (one rule for every driver) and nothing moves
        R = MoveJoints.Result
        held = client.position()
        for kwargs, code, why in (
                ({"target": np.r_[target[:15], 1e6]}, R.INVALID_JOINTS, "outside its limits"),
                ({"target": target, "age": 16.0}, R.INVALID_GOAL, "stale goal"),
                ({"target": target, "age": -30.0}, R.INVALID_GOAL, "in the future"),
                ({"target": [target, OPEN], "times": [0.5, 0.2]}, R.INVALID_GOAL, "strictly increasing"),
                ({"target": target, "tolerance": [1e9]}, R.INVALID_GOAL, "goal_tolerance"),
                ({"target": target, "time_limit": -1.0}, R.INVALID_GOAL, "time_limit")):
            res = client.call(client.move(**kwargs).get_result_async()).result
            assert res.error_code == code and why in res.message, (kwargs, res.message)
        client.send_command(np.r_[target[:15], 5.0])
        client.send_command([5.0], names=["allegro_thumb_3"])
        time.sleep(0.5)
        assert np.max(np.abs(client.position() - held)) < 0.03
        for name, value in (("kp", [1000.0] * 16), ("kp", [1e6] * 16), ("kd", [5.0] * 16)):
            r = client.set_param(name, value)
            assert not r.successful and "within" in r.reason, r.reason

        # a topic command by name moves just that joint
        client.send_command([0.9], names=["allegro_thumb_3"])
        wait_for(lambda: abs(client.position()[15] - 0.9) < 0.03, 5.0, what="named command")

        # pre-emption: a second goal ends the first with PREEMPTED, and the second succeeds
        slow = client.move(OPEN, time_limit=20.0)
        time.sleep(0.05)
        second = client.move(target)
        r1 = client.call(slow.get_result_async()).result
        r2 = client.call(second.get_result_async()).result
        assert r1.error_code == MoveJoints.Result.PREEMPTED and r2.error_code == MoveJoints.Result.SUCCESSFUL

        # cancel: the goal ends CANCELED and the hand holds where it was
        goal = client.move(OPEN, time_limit=20.0)
        time.sleep(0.05)
        client.call(goal.cancel_goal_async())
        assert client.call(goal.get_result_async()).result.error_code == MoveJoints.Result.CANCELED

        # stop during a goal: STOPPED, and the hand holds
        goal = client.move(target, time_limit=20.0)
        time.sleep(0.05)
        from std_srvs.srv import Trigger
        resp = client.call(client.stop.call_async(Trigger.Request()))
        assert resp.success and "hold" in resp.message
        assert client.call(goal.get_result_async()).result.error_code == MoveJoints.Result.STOPPED
        time.sleep(0.2)
        held = client.position()
        time.sleep(0.5)
        assert np.max(np.abs(client.position() - held)) < 0.02

        # a timed two-point trajectory by name ends at its last point
        mid, end = OPEN[[0, 1]] + 0.2, OPEN[[0, 1]] + 0.4
        handle = client.move([mid, end], names=["allegro_index_0", "allegro_index_1"], times=[0.2, 0.4])
        res = client.call(handle.get_result_async()).result
        assert res.error_code == MoveJoints.Result.SUCCESSFUL, res.message
        np.testing.assert_allclose(client.position()[:2], end, atol=0.04)

        # live gain change: validated, and the accepted one is in force
        assert client.set_param("kp", [1.5] * 16).successful
        n = len(client.diags)
        wait_for(lambda: len(client.diags) > n + 1, 5.0, what="diagnostics after the gain change")
        assert client.diag_value("kp") == " ".join(["1.5"] * 16)
        r = client.set_param("kp", [-1.0] * 16)
        assert not r.successful and "kp must be within [0, 5]" in r.reason, r.reason
        r = client.set_param("kd", [0.03] * 15)
        assert not r.successful and "16" in r.reason
        assert not client.set_param("kd", [float("nan")] * 16).successful
        n = len(client.diags)
        wait_for(lambda: len(client.diags) > n + 1, 5.0, what="diagnostics after rejected changes")
        assert client.diag_value("kp") == " ".join(["1.5"] * 16)
        assert client.diag_value("kd") == " ".join(["0.03"] * 16)
        handle = client.move(OPEN)
        assert client.call(handle.get_result_async()).result.error_code == MoveJoints.Result.SUCCESSFUL
        assert proc.poll() is None
    assert proc.returncode == 0, log.read_text()


def test_allegro_node_reports_a_missing_bus(node_env, tmp_path):
    cmd = node_command("allegro", "-p", "can_interface:=no_such_interface", "-p", "can_channel:=can7")
    log = tmp_path / "allegro.log"
    with process(cmd, node_env, log) as proc:
        proc.wait(timeout=30)
    text = log.read_text()
    assert proc.returncode == 1, text
    assert "cannot open CAN bus" in text and "no_such_interface" in text and "can7" in text


def test_error_state_is_reported_and_recovered_without_killing_the_node(rclpy_context, domain_id):
    """Encoder silence puts the hand in its error state: the node logs it (error), puts the cause on
    /diagnostics and keeps running; when encoders return it recovers (info) and holds. A log call
    site used at two severities used to raise ValueError in rclpy here and kill the node."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.executors import SingleThreadedExecutor

    from allegro_driver.controller import State
    from dexwm_ros.allegro_node import AllegroNode

    node = AllegroNode(context=rclpy_context, parameter_overrides=[
        rclpy.parameter.Parameter("can_interface", value="virtual"),
        rclpy.parameter.Parameter("can_channel", value=f"allegro-err-{domain_id}"),
        rclpy.parameter.Parameter("emulate_hand", value=True)])
    probe = Node("allegro_error_probe", context=rclpy_context)
    diags = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 50)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    executor.add_node(probe)

    def spin_until(predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            executor.spin_once(timeout_sec=0.05)   # a callback that raises fails the test here

    try:
        spin_until(lambda: node.controller.status().state is State.RUNNING, 10, "the hand running")
        for _ in range(2):   # enter and leave the error state twice: every transition is logged
            node.emulator.streaming_enabled = False
            spin_until(lambda: any(s.level == DiagnosticStatus.ERROR and "no encoder data" in s.message
                                   for d in diags for s in d.status), 10, "the error on /diagnostics")
            assert node._last_state is State.ERROR
            diags.clear()
            node.emulator.streaming_enabled = True
            spin_until(lambda: node._last_state is State.RUNNING and diags and
                       diags[-1].status[0].level == DiagnosticStatus.OK, 10, "recovery")
    finally:
        executor.shutdown()
        probe.destroy_node()
        node.destroy_node()
