"""The planner node as a separate process against the simulation node: goal from /sim/reset, plan and
act through /franka/move_joints + /allegro/move_joints, capture a goal from the simulated camera, and
cancel (the sim's stop services leave the robot holding)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from dexwm_ros.action import Execute  # noqa: E402
from dexwm_ros.srv import ResetEpisode  # noqa: E402
from rosutil import ROOT, SpinThread, node_command, process, wait_for  # noqa: E402

pytestmark = pytest.mark.skipif(not (ROOT / "dexwm_ros" / "sim_node.py").is_file(),
                                reason="the simulation node (dexwm_ros/sim_node.py) is not in this checkout yet")


@pytest.fixture
def sim_graph(node_env, rclpy_context, tmp_path):
    import torch

    from dexwm_planner.world_model import DexWM

    torch.manual_seed(0)
    ckpt = tmp_path / "random_wm.pt"
    DexWM().save(str(ckpt))
    config = ROOT / "config"
    sim_cmd = node_command("sim", "--params-file", str(config / "sim.yaml"), "-p", "task:=paper-grasp")
    planner_cmd = node_command("planner", "-r", "__ns:=/dexwm", "--params-file", str(config / "planner.yaml"),
                               "-p", f"checkpoint:={ckpt}", "-p", "samples:=8", "-p", "elites:=2",
                               "-p", "iterations:=1", "-p", "stale_abort_s:=30.0",
                               # A random model makes no progress: with the plateau rule on, the goal
                               # meant to be canceled could end by itself first (about 2 s).
                               "-p", "plateau_steps:=0")
    with process(sim_cmd, node_env, tmp_path / "sim.log") as sim, \
            process(planner_cmd, node_env, tmp_path / "planner.log") as planner:
        node = rclpy.create_node("sim_graph_probe", context=rclpy_context)
        joints = {}
        node.create_subscription(JointState, "/franka/joint_states", lambda m: joints.__setitem__("arm", m), 10)
        # The clients before the executor spins: rclpy's ActionClient registers itself with the node
        # before it is complete, and a spinning executor then fails on the half-made client.
        clients = {
            "reset": node.create_client(ResetEpisode, "/sim/reset"),
            "capture": node.create_client(Trigger, "/dexwm/capture_goal"),
            "execute": ActionClient(node, Execute, "/dexwm/execute"),
            "joints": joints,
        }
        spin = SpinThread(MultiThreadedExecutor(num_threads=2, context=rclpy_context), node)
        try:
            def ready():
                assert sim.poll() is None, (tmp_path / "sim.log").read_text()[-3000:]
                assert planner.poll() is None, (tmp_path / "planner.log").read_text()[-3000:]
                return (clients["reset"].service_is_ready() and clients["capture"].service_is_ready()
                        and clients["execute"].server_is_ready())
            wait_for(ready, 90, what="the sim and planner interfaces")
            yield clients, tmp_path
        finally:
            spin.close()


def _done(future, timeout):
    wait_for(future.done, timeout, what="a response")
    return future.result()


def test_plan_and_act_and_cancel_through_the_sim(sim_graph):
    clients, logs = sim_graph
    reset = _done(clients["reset"].call_async(ResetEpisode.Request(task="paper-grasp", seed=1_000_000)), 120)
    assert reset.success, reset.message
    assert reset.goal_image.height > 0
    feedback = []
    handle = _done(clients["execute"].send_goal_async(
        Execute.Goal(goal_image=reset.goal_image, task="grasp", max_steps=2),
        feedback_callback=lambda fb: feedback.append(fb.feedback)), 30)
    assert handle.accepted
    result = _done(handle.get_result_async(), 120).result
    assert result.reason in ("budget", "reached", "plateau"), result.reason
    assert result.steps == len(feedback) >= 1

    # goal capture from the simulated camera
    resp = _done(clients["capture"].call_async(Trigger.Request()), 20)
    assert resp.success, resp.message

    # cancel: the robot holds where it is
    handle = _done(clients["execute"].send_goal_async(Execute.Goal(use_captured_goal=True, max_steps=100)), 30)
    wait_for(lambda: "arm" in clients["joints"], 10, what="arm joint states")
    time.sleep(2.0)
    _done(handle.cancel_goal_async(), 20)
    result = _done(handle.get_result_async(), 30).result
    assert result.reason == "canceled"
    q0 = np.array(clients["joints"]["arm"].position)
    time.sleep(1.5)
    q1 = np.array(clients["joints"]["arm"].position)
    assert np.max(np.abs(q1 - q0)) < 0.02, "the arm kept moving after the cancel"
