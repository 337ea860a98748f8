"""scripts/grasp_tolerance.py: the disturbed starts are the disturbances it names."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from dexwm_planner.objective import rotation_angle

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "grasp_tolerance.py"


@pytest.fixture(scope="module")
def tolerance():
    spec = importlib.util.spec_from_file_location("grasp_tolerance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stage(tolerance):
    from dexwm_ros.evaluate import EvalSettings, collect_starts, make_runner

    settings = EvalSettings(protocol="paper", task="grasp", episodes=1, seed=tolerance.TUNING_SEED)
    settings.resolve_step()
    runner = make_runner(settings)
    starts, _ = collect_starts(runner, settings, progress=False)
    yield runner.env, starts[0]
    runner.env.close()


def _pose(env):
    q = env.joint_positions()
    return env.palm_and_tips()[0], env.kinematics.ee_pose(q)[1], q


@pytest.mark.parametrize("disturbance, palm_move, turn_deg", [
    (dict(name="up", up_m=0.02), np.array([0.0, 0.0, 0.02]), 0.0),
    (dict(name="sideways", sideways_m=0.03), None, 0.0),
    (dict(name="tilt", tilt_deg=15.0), np.zeros(3), 15.0),
])
def test_disturbed_starts_move_the_hand_as_named(tolerance, stage, disturbance, palm_move, turn_deg):
    env, start = stage
    env.restore_episode(start.episode, start.state)
    palm0, rot0, q0 = _pose(env)
    moved = tolerance.disturbed_start(env, start, tolerance.Disturbance(**disturbance), np.random.default_rng(0))
    env.restore_episode(moved.episode, moved.state)
    palm, rot, q = _pose(env)
    delta = palm - palm0
    if palm_move is None:       # sideways: horizontal, of the named length
        assert abs(np.linalg.norm(delta[:2]) - 0.03) < 0.006 and abs(delta[2]) < 0.006
    else:
        np.testing.assert_allclose(delta, palm_move, atol=0.006)
    assert np.degrees(rotation_angle(rot, rot0)) == pytest.approx(turn_deg, abs=2.0)
    np.testing.assert_allclose(q[7:], q0[7:], atol=0.05)      # the fingers as they were


def test_no_disturbance_is_the_stage_itself(tolerance, stage):
    env, start = stage
    assert tolerance.disturbed_start(env, start, tolerance.Disturbance("none"), np.random.default_rng(0)) is start


def test_the_reference_to_run_is_the_guarded_grasp_or_the_fixed_one(tolerance):
    from dexwm_planner.reference_motion import GuardedGraspMotion
    from dexwm_robot.kinematics import RobotKinematics

    kin = RobotKinematics.from_description()
    q0 = 0.5 * (kin.lower + kin.upper)
    assert isinstance(tolerance.reference_policy(kin, "guarded").reference_fn(q0), GuardedGraspMotion)
    rows = tolerance.reference_policy(kin, "fixed").reference_fn(q0)
    assert isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.shape[1] == len(q0)
    with pytest.raises(ValueError, match="guarded or fixed"):
        tolerance.reference_policy(kin, "wave")
