"""dexwm-eval: Wilson interval, seeded in-process episodes, the JSON report and its plot."""
import json

import numpy as np
import pytest

from dexwm_ros import evaluate as ev


def test_wilson_interval_known_values():
    lo, hi = ev.wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = ev.wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = ev.wilson_interval(50, 50)
    assert round(lo, 4) == 0.9287 and hi == pytest.approx(1.0)
    assert ev.wilson_interval(0, 0) == (0.0, 1.0)


def test_eval_seeds_are_disjoint_from_collection_seeds():
    settings = ev.EvalSettings(episodes=3, seed=7)
    assert settings.seeds() == [1_000_007, 1_000_008, 1_000_009]


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    import torch

    from dexwm_planner.world_model import DexWM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wm") / "random.pt"
    DexWM().save(str(path))
    return path


def test_episodes_are_reproducible_and_respect_the_budget():
    from dexwm_sim.kinematics import RobotKinematics
    from dexwm_sim.scene import SimEnv

    from dexwm_sim.runner import RunnerConfig, SimRunner

    env = SimEnv(render_size=ev.sim_camera_size())
    runner = SimRunner(RunnerConfig(task="reach", lockstep=True), env=env)
    kin = RobotKinematics.from_scene()
    settings = ev.EvalSettings(task="reach", max_steps=3)
    try:
        a = ev.run_episode(runner, ev.RandomShootingPolicy(kin), "reach", 1_000_000, settings)
        b = ev.run_episode(runner, ev.RandomShootingPolicy(kin), "reach", 1_000_000, settings)
    finally:
        env.close()
    assert (a.steps, a.reason, a.success) == (3, "budget", False)
    assert a.final_distance == b.final_distance          # same seed, same episode
    assert np.isfinite(a.final_distance)


def test_cli_writes_report_with_baselines(tmp_path, random_checkpoint, capsys):
    out = tmp_path / "res.json"
    rc = ev.main(["--task", "grasp", "--episodes", "2", "--max-steps", "2", "--checkpoint", str(random_checkpoint),
                  "--out", str(out), "--quiet"])
    assert rc == 0
    data = json.loads(out.read_text())
    for key in ("task", "episodes", "success_rate", "ci95", "replan_seconds_median", "baselines"):
        assert key in data
    assert data["task"] == "grasp" and data["episodes"] == 2
    assert 0.0 <= data["ci95"][0] <= data["success_rate"] <= data["ci95"][1] <= 1.0
    assert data["replan_seconds_median"] > 0
    assert "random_shooting" in data["baselines"]
    assert [o["seed"] for o in data["outcomes"]] == [1_000_000, 1_000_001]
    assert all(o["steps"] <= 2 for o in data["outcomes"])
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "grasp: success" in capsys.readouterr().out


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit) as e:
        ev.main(["--task", "fly", "--out", str(tmp_path / "x.json")])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        ev.main(["--task", "reach", "--episodes", "0", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        ev.main(["--task", "reach", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_in_process_and_through_ros_agree_step_for_step(random_checkpoint, domain_id, tmp_path):
    """Same seeds, same episodes: the graph (lock-step sim node + planner node, separate processes)
    and the in-process loop observe the same frames, plan the same steps and end the same way."""
    settings = ev.EvalSettings(task="grasp", episodes=2, seed=3, max_steps=3, checkpoint=str(random_checkpoint))
    local = ev.evaluate(settings, baselines=False, progress=False)
    ros = ev.evaluate(settings, through_ros=True, baselines=False, progress=False, log_dir=tmp_path)
    assert [o["seed"] for o in ros["outcomes"]] == [1_000_003, 1_000_004]
    for a, b in zip(local["outcomes"], ros["outcomes"], strict=True):
        assert (a["seed"], a["steps"], a["success"]) == (b["seed"], b["steps"], b["success"])
        assert len(a["costs"]) == len(b["costs"]) == 3
        np.testing.assert_allclose(b["costs"], a["costs"], rtol=1e-5)     # the feedback carries float32
        assert abs(a["final_distance"] - b["final_distance"]) < 1e-5


def _result(task, outcomes, through_ros=False, max_steps=40):
    k = sum(s for _, s, _ in outcomes)
    lo, hi = ev.wilson_interval(k, len(outcomes))
    return {"task": task, "episodes": len(outcomes), "success_rate": k / len(outcomes), "ci95": [lo, hi],
            "replan_seconds_median": 0.5, "through_ros": through_ros,
            "baselines": {} if through_ros else {"random_shooting": 0.0},
            "baseline_ci95": {} if through_ros else {"random_shooting": [0.0, 0.3]},
            "settings": {"max_steps": max_steps, "preset": "cpu", "checkpoint": ""},
            "outcomes": [{"seed": seed, "success": bool(ok), "steps": steps} for seed, ok, steps in outcomes]}


def test_report_tables_all_tasks_and_the_through_ros_agreement(tmp_path, capsys):
    (tmp_path / "reach.json").write_text(json.dumps(_result("reach", [(1, 1, 7), (2, 0, 40), (3, 1, 12)])))
    (tmp_path / "grasp.json").write_text(json.dumps(_result("grasp", [(1, 0, 40), (2, 1, 20)])))
    (tmp_path / "reach_ros.json").write_text(json.dumps(_result("reach", [(1, 1, 7), (2, 1, 33)], through_ros=True)))
    (tmp_path / "notes.json").write_text("[1, 2]")                          # not a result: skipped
    assert ev.main(["--report", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| reach | in-process | 3 | 67 % (2/3)" in summary
    assert "| grasp | in-process | 2 | 50 % (1/2)" in summary
    assert "same outcome on 1/2 shared seeds, same outcome and step count on 1/2; differ: [2]" in summary
    assert "NOT comparable" not in summary
    assert (tmp_path / "summary.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out
    (tmp_path / "reach_ros.json").write_text(json.dumps(_result("reach", [(1, 1, 7)], through_ros=True, max_steps=5)))
    assert ev.main(["--report", str(tmp_path)]) == 0
    assert "NOT comparable: max_steps differ" in (tmp_path / "summary.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ev.main(["--report", str(empty)]) == 1
    assert ev.main(["--report", str(tmp_path / "missing")]) == 2
