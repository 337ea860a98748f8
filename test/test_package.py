"""The installed package: generated interfaces, node executables, the README commands (the layer rule:
test_layers.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFIX = Path(sys.prefix)


def test_generated_interfaces_import_and_have_the_contract_fields():
    from dexwm_ros.action import Execute, MoveJoints
    from dexwm_ros.msg import EpisodeState, PlannerStatus
    from dexwm_ros.srv import ResetEpisode

    goal = Execute.Goal()
    assert {"goal_image", "use_captured_goal", "task", "max_steps"} <= set(goal.get_fields_and_field_types())
    assert {"step", "current_cost", "best_cost", "planned_cost"} <= set(Execute.Feedback.get_fields_and_field_types())
    assert {"success", "steps", "final_cost", "reason"} <= set(Execute.Result.get_fields_and_field_types())
    mj = MoveJoints.Goal.get_fields_and_field_types()
    assert mj["trajectory"] == "trajectory_msgs/JointTrajectory" and "goal_tolerance" in mj and "time_limit" in mj
    assert {"error_code", "message"} <= set(MoveJoints.Result.get_fields_and_field_types())
    assert MoveJoints.Result.SUCCESSFUL == 0 and MoveJoints.Result.TIMEOUT < 0
    assert "error" in MoveJoints.Feedback.get_fields_and_field_types()
    assert PlannerStatus().state == "" and EpisodeState().required_streak == 0
    assert "goal_image" in ResetEpisode.Response.get_fields_and_field_types()


@pytest.mark.parametrize("node", ["sim", "camera", "franka", "allegro", "planner", "teleop", "joint_state_merger"])
def test_node_executables_are_installed(node):
    exe = PREFIX / "lib" / "dexwm_ros" / node
    assert exe.is_file() and os.access(exe, os.X_OK)
    assert f"from dexwm_ros.{node}_node import main" in exe.read_text()


@pytest.mark.parametrize("tool", ["dexwm-up", "dexwm-bench", "dexwm-eval", "dexwm-record", "dexwm-collect", "dexwm-train",
                                  "dexwm-eval-wm", "dexwm-train-goal-hand", "dexwm-import-bag", "dexwm-viz", "dexwm-calibrate", "dexwm-urdf"])
def test_tools_are_installed_and_answer_help(tool):
    exe = PREFIX / "bin" / tool
    assert exe.is_file()
    r = subprocess.run([sys.executable, str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower()


def test_launch_and_config_are_installed():
    share = PREFIX / "share" / "dexwm_ros"
    for name in ("grasp", "reach", "place"):
        assert (share / "launch" / f"{name}.launch.py").is_file()
    assert (share / "config" / "graph.yaml").is_file()
    assert (share / "package.xml").is_file()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
