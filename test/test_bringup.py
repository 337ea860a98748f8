"""dexwm-up: the graph starts as separate processes over Fast DDS, offers the contract, stops cleanly."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.action.graph import get_action_server_names_and_types_by_node

from dexwm_ros import graph
from rosutil import process, wait_for

DEXWM_UP = [sys.executable, str(Path(sys.prefix) / "bin" / "dexwm-up")]

# docs/CONTRACT.md, as offered by the simulated graph.
SIM_TOPICS = {
    "/camera/camera/color/image_raw": "sensor_msgs/msg/Image",
    "/camera/camera/color/camera_info": "sensor_msgs/msg/CameraInfo",
    "/franka/joint_states": "sensor_msgs/msg/JointState",
    "/allegro/joint_states": "sensor_msgs/msg/JointState",
    "/franka/joint_command": "trajectory_msgs/msg/JointTrajectory",
    "/allegro/joint_command": "sensor_msgs/msg/JointState",
    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
    "/dexwm/goal_image": "sensor_msgs/msg/Image",
    "/dexwm/predicted_rollout": "sensor_msgs/msg/Image",
    "/dexwm/keypoints": "visualization_msgs/msg/MarkerArray",
    "/dexwm/status": "dexwm_ros/msg/PlannerStatus",
    "/goal_pose": "geometry_msgs/msg/PoseStamped",
    "/clicked_point": "geometry_msgs/msg/PointStamped",
    "/sim/episode": "dexwm_ros/msg/EpisodeState",
    "/sim/goal_image": "sensor_msgs/msg/Image",
    "/joint_states": "sensor_msgs/msg/JointState",
}
SIM_SERVICES = {
    "/franka/stop": "std_srvs/srv/Trigger",
    "/franka/recover": "std_srvs/srv/Trigger",
    "/allegro/stop": "std_srvs/srv/Trigger",
    "/dexwm/capture_goal": "std_srvs/srv/Trigger",
    "/sim/reset": "dexwm_ros/srv/ResetEpisode",
}
SIM_ACTIONS = {
    "/franka/move_joints": "dexwm_ros/action/MoveJoints",
    "/allegro/move_joints": "dexwm_ros/action/MoveJoints",
    "/dexwm/execute": "dexwm_ros/action/Execute",
}


def _run_up(args, env, timeout=30):
    return subprocess.run(DEXWM_UP + args, env=env, capture_output=True, text=True, timeout=timeout)


def test_unknown_graph_is_a_one_line_error(node_env):
    r = _run_up(["fly"], node_env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["dexwm-up: error: unknown graph 'fly' (choose from: grasp, reach, place, paper-grasp, paper-reach, "
                                             "paper-place, reach-grasp, composite-reach, pick-place)"]


def test_unknown_argument_is_a_one_line_error(node_env):
    r = _run_up(["grasp", "speed:=3"], node_env)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "unknown argument 'speed'" in r.stderr


def test_invalid_config_file_is_named(node_env, tmp_path):
    shutil.copytree(graph.config_dir(), tmp_path / "config")
    (tmp_path / "config" / "planner.yaml").write_text("/**:\n  ros__parameters: [unclosed\n")
    r = _run_up(["grasp"], dict(node_env, DEXWM_CONFIG_DIR=str(tmp_path / "config")))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "planner.yaml" in r.stderr


def test_missing_config_file_is_named(node_env, tmp_path):
    shutil.copytree(graph.config_dir(), tmp_path / "config")
    (tmp_path / "config" / "sim.yaml").unlink()
    r = _run_up(["grasp"], dict(node_env, DEXWM_CONFIG_DIR=str(tmp_path / "config")))
    assert r.returncode == 2 and "sim.yaml" in r.stderr


def _processes_marked(marker: str) -> list[int]:
    """Pids of live processes whose environment carries the marker (dexwm-up's children inherit it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                status = (proc / "status").read_text()
                if "zombie" not in status:
                    pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def test_a_node_that_fails_to_start_stops_the_graph(node_env, tmp_path):
    """The sim node exits at once (rcl rejects its parameter file: a mixed-type array is valid YAML
    but not a ROS parameter): dexwm-up stops the rest and exits 1, leaving no process behind."""
    shutil.copytree(graph.config_dir(), tmp_path / "config")
    sim_yaml = tmp_path / "config" / "sim.yaml"
    sim_yaml.write_text(sim_yaml.read_text() + "    broken_mixed_array: [1, 'a']\n")
    marker = f"DEXWM_TEST_MARK_{os.getpid()}_{time.monotonic_ns()}"
    env = dict(node_env, DEXWM_CONFIG_DIR=str(tmp_path / "config"), DEXWM_TEST_MARK=marker)
    r = subprocess.run(DEXWM_UP + ["grasp"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "required node /sim exited" in r.stderr
    time.sleep(0.5)
    assert _processes_marked(marker) == [], "dexwm-up left node processes behind"


def _graph_snapshot(node):
    topics = dict((n, t[0]) for n, t in node.get_topic_names_and_types())
    services = dict((n, t[0]) for n, t in node.get_service_names_and_types())
    actions = {}
    for name, ns in node.get_node_names_and_namespaces():
        try:
            for a, types_ in get_action_server_names_and_types_by_node(node, name, ns):
                actions[a] = types_[0]
        except Exception:  # a node that left the graph between the two calls
            pass
    return topics, services, actions


def test_grasp_sim_graph_offers_the_contract_and_stops_cleanly(node_env, rclpy_context, tmp_path):
    log = tmp_path / "dexwm-up.log"
    with process(DEXWM_UP + ["grasp", "sim:=true"], node_env, log) as up:
        node = rclpy.create_node("contract_probe", context=rclpy_context)
        try:
            def complete():
                if up.poll() is not None:
                    pytest.fail(f"dexwm-up exited with {up.returncode}:\n{log.read_text()[-3000:]}")
                topics, services, actions = _graph_snapshot(node)
                missing = [k for k, v in SIM_TOPICS.items() if topics.get(k) != v]
                missing += [k for k, v in SIM_SERVICES.items() if services.get(k) != v]
                missing += [k for k, v in SIM_ACTIONS.items() if actions.get(k) != v]
                complete.missing = missing
                return not missing and up.poll() is None
            try:
                wait_for(complete, 90, 0.5, "the grasp graph's topics, services and actions")
            except TimeoutError:
                pytest.fail(f"missing or wrong type: {complete.missing}\n--- log:\n{log.read_text()[-3000:]}")
            names = {("/" + ns.strip("/") + "/" + n).replace("//", "/") for n, ns in node.get_node_names_and_namespaces()}
            assert {"/sim", "/dexwm/planner", "/joint_state_merger"} <= names
        finally:
            node.destroy_node()
        t0 = time.monotonic()
        os.killpg(up.pid, signal.SIGINT)
        code = up.wait(timeout=20)
        stopped_in = time.monotonic() - t0
    assert code == 0, log.read_text()[-3000:]
    assert stopped_in < 12
    # No ROS 2 distribution here: one line says robot_state_publisher is not started.
    assert log.read_text().count("robot_state_publisher is not installed") == 1
