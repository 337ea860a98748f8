"""Robot model in the graph: the merged /joint_states (plain merger + real node process) and
robot_state_publisher, started by dexwm-up only when installed, with the generated URDF and the
camera calibration as its robot_description."""
from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pinocchio as pin
import pytest
import rclpy
import yaml
from sensor_msgs.msg import JointState

from dexwm_robot.allegro import JOINT_NAMES as HAND_JOINTS
from dexwm_ros import graph
from dexwm_ros.joint_state_merge import JointSample, JointStateMerger, RejectedSample
from dexwm_robot.camera import HeadCamera
from dexwm_robot.franka import JOINT_NAMES as ARM_JOINTS
from dexwm_sim.urdf import CAMERA_FRAME
from rosutil import node_command, process, wait_for

DEXWM_UP = [sys.executable, str(Path(sys.prefix) / "bin" / "dexwm-up")]
SOURCES = ["/franka/joint_states", "/allegro/joint_states"]


def _arm(stamp, value=0.1):
    return JointSample(names=ARM_JOINTS, position=(value,) * 7, velocity=(0.0,) * 7, stamp=stamp)


def _hand(stamp, value=0.2):
    return JointSample(names=HAND_JOINTS, position=(value,) * 16, stamp=stamp)


# --- the plain merger ---------------------------------------------------------------------------------
def test_merger_concatenates_sources_in_order():
    merger = JointStateMerger(SOURCES)
    first = merger.update(SOURCES[1], _hand(10.0))
    assert first.names == list(HAND_JOINTS) and first.sources == (SOURCES[1],)
    merged = merger.update(SOURCES[0], _arm(10.01))
    assert merged.names == list(ARM_JOINTS) + list(HAND_JOINTS)
    assert merged.position == [0.1] * 7 + [0.2] * 16
    assert merged.stamp == 10.01
    # The hand publishes no velocities: a JointState has all of them or none.
    assert merged.velocity == [] and merged.effort == []


def test_merger_leaves_out_a_stale_source():
    merger = JointStateMerger(SOURCES, max_age=0.5)
    merger.update(SOURCES[1], _hand(10.0))
    assert merger.update(SOURCES[0], _arm(10.4)).sources == tuple(SOURCES)
    assert merger.update(SOURCES[0], _arm(10.6)).names == list(ARM_JOINTS)


def test_merger_rejects_malformed_samples_and_keeps_the_last_good_one():
    merger = JointStateMerger(SOURCES)
    merger.update(SOURCES[0], _arm(1.0))
    bad = [
        ("/other", _arm(1.0), "unknown source"),
        (SOURCES[0], JointSample(names=ARM_JOINTS, position=(0.0,) * 6, stamp=1.0), "6 positions"),
        (SOURCES[0], JointSample(names=ARM_JOINTS, position=(float("nan"),) * 7, stamp=1.0), "non-finite"),
        (SOURCES[0], JointSample(names=ARM_JOINTS, position=(0.0,) * 7, effort=(1.0,), stamp=1.0), "effort"),
        (SOURCES[1], JointSample(names=("fr3_joint1",), position=(0.0,), stamp=1.0), "already published"),
    ]
    for source, sample, reason in bad:
        with pytest.raises(RejectedSample, match=reason):
            merger.update(source, sample)
    assert merger.merged().position == [0.1] * 7
    with pytest.raises(ValueError):
        JointStateMerger(["/a", "/a"])
    with pytest.raises(ValueError):
        JointStateMerger(SOURCES, max_age=0.0)


# --- the node, as a real process ----------------------------------------------------------------------
def test_merger_node_publishes_one_joint_states(node_env, rclpy_context, tmp_path):
    log = tmp_path / "merger.log"
    with process(node_command("joint_state_merger"), node_env, log):
        node = rclpy.create_node("merger_probe", context=rclpy_context)
        executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
        executor.add_node(node)
        try:
            received = []
            node.create_subscription(JointState, "/joint_states", received.append, 10)
            arm_pub = node.create_publisher(JointState, SOURCES[0], 10)
            hand_pub = node.create_publisher(JointState, SOURCES[1], 10)

            def publish(pub, names, value):
                msg = JointState(name=list(names), position=[value] * len(names))
                msg.header.stamp = node.get_clock().now().to_msg()
                pub.publish(msg)

            def merged_both():
                publish(arm_pub, ARM_JOINTS, 0.3)
                publish(hand_pub, HAND_JOINTS, 0.4)
                executor.spin_once(timeout_sec=0.1)
                return any(len(m.name) == 23 for m in received)

            wait_for(merged_both, 30, 0.1, f"a merged /joint_states (log: {log.read_text()[-2000:]})")
            full = next(m for m in received if len(m.name) == 23)
            assert list(full.name) == list(ARM_JOINTS) + list(HAND_JOINTS)
            np.testing.assert_allclose(full.position, [0.3] * 7 + [0.4] * 16)

            # A malformed message is dropped (logged), never merged, and the node keeps running.
            # Wait for the warning before publishing good messages again: a node stalled by a busy
            # machine would otherwise see the bad message pushed out of its depth-10 queue by them.
            received.clear()
            arm_pub.publish(JointState(name=list(ARM_JOINTS), position=[0.0] * 3))
            wait_for(lambda: executor.spin_once(timeout_sec=0.1) or "dropped a joint state" in log.read_text(),
                     30, 0.1, "the merger's warning about the bad message")
            wait_for(lambda: merged_both() and received, 10, 0.1, "merging after a bad message")
            assert all(len(m.position) in (7, 16, 23) and 0.0 not in m.position for m in received)
        finally:
            executor.shutdown()
            node.destroy_node()
    assert "dropped a joint state" in log.read_text()


# --- robot_state_publisher through dexwm-up -------------------------------------------------------
def _robot_model_config(tmp_path: Path) -> Path:
    """config/ with a graph of only the robot-model nodes (the full graph is test_bringup's)."""
    config = tmp_path / "config"
    shutil.copytree(graph.config_dir(), config)
    description = yaml.safe_load((config / "graph.yaml").read_text())
    description["nodes"] = [n for n in description["nodes"]
                            if n["name"] in ("joint_state_merger", "robot_state_publisher")]
    assert len(description["nodes"]) == 2
    (config / "graph.yaml").write_text(yaml.safe_dump(description))
    return config


def test_dexwm_up_says_once_that_robot_state_publisher_is_missing(node_env, tmp_path):
    env = dict(node_env, DEXWM_CONFIG_DIR=str(_robot_model_config(tmp_path)))
    env.pop("AMENT_PREFIX_PATH", None)
    r = subprocess.run(DEXWM_UP + ["reach", "--duration", "3"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if "robot_state_publisher" in line]
    assert len(lines) == 1 and "is not installed" in lines[0] and "ros-<distro>-robot-state-publisher" in lines[0]
    assert "started /joint_state_merger" in r.stdout


# Where robot_state_publisher is installed (a ROS 2 distribution), dexwm-up runs lib/PKG/EXE of the
# package's ament prefix. This stand-in sits at that place and records the parameter it is given,
# read through rcl exactly as the real node reads it.
_RECORDER = '''#!{python}
import sys
import rclpy
from rclpy.node import Node
rclpy.init(args=sys.argv)
node = Node("robot_state_publisher")
node.declare_parameter("robot_description", "")
node.declare_parameter("publish_frequency", 0.0)
with open({out!r}, "w") as f:
    f.write(node.get_parameter("robot_description").value)
print("recorded publish_frequency", node.get_parameter("publish_frequency").value, flush=True)
rclpy.spin(node)
'''


def test_dexwm_up_starts_robot_state_publisher_with_the_urdf_and_calibration(node_env, tmp_path):
    prefix = tmp_path / "ros"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "robot_state_publisher").touch()
    exe = prefix / "lib" / "robot_state_publisher" / "robot_state_publisher"
    exe.parent.mkdir(parents=True)
    recorded = tmp_path / "robot_description.xml"
    exe.write_text(_RECORDER.format(python=sys.executable, out=str(recorded)))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)

    camera = HeadCamera(position=(1.1, -0.3, 0.9), look_at=(0.4, 0.0, 0.1))
    calib = tmp_path / "calib.yaml"
    calib.write_text(yaml.safe_dump(camera.world_to_camera.tolist()))
    env = dict(node_env, DEXWM_CONFIG_DIR=str(_robot_model_config(tmp_path)), AMENT_PREFIX_PATH=str(prefix))
    r = subprocess.run(DEXWM_UP + ["reach", f"extrinsics:={calib}", "--duration", "10"], env=env,
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "is not installed" not in r.stderr
    assert "recorded publish_frequency 30.0" in r.stdout, r.stdout
    model = pin.buildModelFromXML(recorded.read_text())
    data = model.createData()
    pin.framesForwardKinematics(model, data, pin.neutral(model))
    np.testing.assert_allclose(data.oMf[model.getFrameId(CAMERA_FRAME)].homogeneous, camera.camera_pose, atol=1e-9)
    assert model.nq == 23

    # A calibration file that is not a transform stops the bringup with a one-line error.
    bad = tmp_path / "bad.yaml"
    bad.write_text("[1, 2, 3]")
    r = subprocess.run(DEXWM_UP + ["reach", f"extrinsics:={bad}"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "camera calibration" in r.stderr


def test_rviz_config_shows_the_robot_model_and_tf():
    from dexwm_sim.urdf import ROOT_LINK

    config = yaml.safe_load((graph.config_dir() / "dexwm.rviz").read_text())
    manager = config["Visualization Manager"]
    displays = {d["Class"]: d for d in manager["Displays"]}
    robot = displays["rviz_default_plugins/RobotModel"]
    # robot_state_publisher latches /robot_description: RViz must ask for transient-local.
    assert robot["Description Source"] == "Topic" and robot["Description Topic"]["Value"] == "/robot_description"
    assert robot["Description Topic"]["Durability Policy"] == "Transient Local"
    assert displays["rviz_default_plugins/TF"]["Frames"][CAMERA_FRAME]["Value"] is True
    assert manager["Global Options"]["Fixed Frame"] == ROOT_LINK
