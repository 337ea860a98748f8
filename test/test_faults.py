"""dexwm-faults: the fast subset (simulation, hand on its emulator, start-up errors) against the real
nodes, as `make test` runs it. Every case must pass and no command that had to be refused may move a
joint. The full run (`dexwm-faults --json`) adds the franka driver on franky-sim and the planner."""
import json
import subprocess
import sys

import pytest

from rosutil import VENV_BIN, ros_env

pytestmark = pytest.mark.timeout(600)


def test_quick_fault_injection_holds_refuses_and_stays_up(tmp_path, domain_id):
    out = tmp_path / "faults.json"
    run = subprocess.run([sys.executable, str(VENV_BIN / "dexwm-faults"), "--quick", "--json", "--out", str(out)],
                         env=ros_env(domain_id, DEXWM_FAULTS_DOMAIN_ID=str(domain_id)), capture_output=True,
                         text=True, timeout=580)
    report = json.loads(out.read_text())
    failed = [c for c in report["cases"] if not c["passed"]]
    assert run.returncode == 0 and not failed, json.dumps(failed, indent=1) + run.stderr[-3000:]
    assert report["unsafe_executed"] == 0
    assert report["tried"] == report["passed"] >= 40
    names = {c["name"] for c in report["cases"]}
    # a case for every bug fixed in this area
    for case in ("arm_step_over_cap_1.0rad", "arm_goal_delivered_after_a_stall", "hand_goal_delivered_after_a_stall",
                 "hand_target_1e6", "hand_topic_5rad", "param_kp_1000", "arm_negative_time_limit",
                 "arm_tolerance_1e9", "hand_silent_on_the_bus_error_state", "checkpoint_all_nan_refused_at_load",
                 "sim_seed_1e23", "sim_task_fly", "planner_ctrl_c_during_startup", "dexwm_up_seed_too_big"):
        assert case in names, case
    assert json.loads(run.stdout) == report
