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
    from dexwm_robot.kinematics import RobotKinematics

    settings = ev.EvalSettings(protocol="composite", task="reach", max_steps=3, hold_s=0.5)
    runner = ev.make_runner(settings)
    kin = RobotKinematics.from_description()
    try:
        start = ev.prepare_episode(runner.env, settings, 1_000_000)
        a = ev.run_episode(runner, ev.RandomJointWalkPolicy(kin, settings.max_steps), start, settings)
        b = ev.run_episode(runner, ev.RandomJointWalkPolicy(kin, settings.max_steps), start, settings)
    finally:
        runner.env.close()
    assert (a.steps, a.reason, a.success) == (3, "budget", False)
    assert a.final_distance == b.final_distance          # same seed, same episode
    assert np.isfinite(a.final_distance)


class _Poisoned:
    """Stands in for the simulator's ground truth while a policy acts: any read fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the policy read simulator ground truth ({name})")


def test_policies_read_no_simulator_ground_truth(random_checkpoint, monkeypatch):
    """While a policy decides, the success flag, episode, object poses, contacts and hand
    positions of the simulation are poisoned: the policy runs on the camera frame, the joints and
    the goal image only (the stop decision included)."""
    from dexwm_planner.world_model import DexWM
    from dexwm_sim import tasks
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics
    from dexwm_sim.scene import SimEnv

    settings = ev.EvalSettings(protocol="paper", task="grasp", max_steps=2, hold_s=0.2, done_cost=0.5)
    runner = ev.make_runner(settings)
    env = runner.env
    kin = RobotKinematics.from_description()
    policy = ev.WorldModelPolicy(DexWM.load(str(random_checkpoint)), kin, HeadCamera().world_to_camera, "cpu",
                                 settings.stop_rule("grasp"))
    policy.config = policy.config.__class__(cem=policy.config.cem.with_(samples=4, elites=2, iterations=1, chunk=4))
    seen = []
    act = policy.act

    def guarded_act(image, q):
        seen.append((image.shape, image.dtype, q.shape))
        status, episode = env.status, env.episode
        env.status, env.episode = _Poisoned(), _Poisoned()
        poisoned = _Poisoned()
        with monkeypatch.context() as m:
            for name in ("object_position", "object_poses", "hand_touches", "palm_and_tips", "keypoints"):
                m.setattr(SimEnv, name, lambda *_a, _n=name, **_k: getattr(poisoned, _n))
            m.setattr(tasks, "evaluate", lambda *_a, **_k: poisoned.evaluate)
            try:
                return act(image, q)
            finally:
                env.status, env.episode = status, episode
    policy.act = guarded_act
    try:
        start = next(ev.prepare_episode(env, settings, s) for s in range(1_000_000, 1_000_010)
                     if _has_stage(env, settings, s))
        outcome = ev.run_episode(runner, policy, start, settings)
    finally:
        env.close()
    assert seen and all(shape[2] == 3 and dtype == np.uint8 and qs == (23,) for shape, dtype, qs in seen)
    assert outcome.steps <= 2 and outcome.reason in ("reached", "plateau", "budget")


def _has_stage(env, settings, seed) -> bool:
    from dexwm_sim.tasks import StageUnavailable
    try:
        env.reset(settings.sim_task, seed)
        return True
    except StageUnavailable:
        return False


def test_hold_still_never_solves_a_paper_stage():
    """A stage that succeeds without motion would not be a task: holding still fails all three."""
    for task in ev.PROTOCOL_TASKS["paper"]:
        settings = ev.EvalSettings(protocol="paper", task=task, episodes=2, hold_s=1.0)
        runner = ev.make_runner(settings)
        try:
            starts, skipped = ev.collect_starts(runner, settings, progress=False)
            outcomes = ev.run_in_process(ev.HoldStillPolicy(), settings, starts, runner, progress=False)
        finally:
            runner.env.close()
        assert len(outcomes) == 2 and not any(o.success or o.success_paper_rule for o in outcomes), task
        assert all(s["seed"] < starts[-1].seed for s in skipped)


def test_cli_writes_report_with_baselines(tmp_path, random_checkpoint, capsys):
    out = tmp_path / "res.json"
    rc = ev.main(["--protocol", "paper", "--task", "grasp", "--episodes", "2", "--max-steps", "1",
                  "--planner-seeds", "2", "--checkpoint", str(random_checkpoint), "--hold-s", "0.5",
                  "--baselines", "random_shooting_wm,hold_still,oracle_goal_joints", "--out", str(out), "--quiet"])
    assert rc == 0
    data = json.loads(out.read_text())
    for key in ("task", "episodes", "success_rate", "ci95", "replan_seconds_median", "baselines", "protocol",
                "success_rule", "success_rate_paper_rule", "success_rate_strict", "planner_seeds", "flip_rate"):
        assert key in data, key
    assert (data["protocol"], data["task"], data["sim_task"]) == ("paper", "grasp", "paper-grasp")
    assert data["success_rule"] == "final_hold_0.5s" and data["planner_seeds"] == 2 and data["episodes"] == 2
    assert 0.0 <= data["ci95"][0] <= data["success_rate"] <= data["ci95"][1] <= 1.0
    assert data["success_rate_strict"] is not None and data["flip_rate"] is not None
    assert set(data["baselines"]) == {"random_shooting_wm", "hold_still", "oracle_goal_joints"}
    for b in data["baselines"].values():
        assert 0.0 <= b["ci95"][0] <= b["success_rate"] <= b["ci95"][1] <= 1.0
    assert len(data["outcomes"]) == 4 and sorted({o["planner_seed"] for o in data["outcomes"]}) == [0, 1]
    assert all(o["steps"] <= 1 and len(o["costs"]) == o["steps"] + 1 for o in data["outcomes"])
    assert [o["seed"] for o in data["outcomes"]][::2] == data["seeds"]
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "paper grasp: success" in capsys.readouterr().out


def test_cli_rejects_bad_arguments(tmp_path):
    for bad in (["--task", "fly"], ["--protocol", "paper", "--task", "pick-place"], ["--task", "reach", "--episodes", "0"],
                ["--task", "reach", "--planner-seeds", "0"], ["--task", "reach", "--checkpoint", str(tmp_path / "m.pt")],
                ["--task", "reach", "--baselines", "magic"], ["--protocol", "moon", "--task", "reach"]):
        with pytest.raises(SystemExit) as e:
            ev.main(bad + ["--out", str(tmp_path / "x.json")])
        assert e.value.code == 2, bad
    assert not (tmp_path / "x.json").exists()


def test_stop_rule_reached_plateau_budget():
    from dexwm_planner.stop_rule import StopRule, best_threshold

    rule = StopRule(done_cost=0.2, plateau_steps=2, plateau_rel=0.1, max_steps=5)
    assert rule.decide([0.5], 0) is None
    assert rule.decide([0.5, 0.1], 1) == "reached"
    assert rule.decide([0.5, 0.4, 0.3], 2) is None            # still improving
    assert rule.decide([0.5, 0.48, 0.47], 2) == "plateau"      # < 10 % better than 0.5 in 2 steps
    assert rule.decide([0.5] * 3, 5) == "budget"
    assert StopRule(max_steps=3).decide([0.0], 0) is None      # threshold off
    for bad in (dict(done_cost=-1.0), dict(done_cost=float("nan")), dict(plateau_steps=-1), dict(plateau_rel=1.0)):
        with pytest.raises(ValueError):
            StopRule(**bad)
    fit = best_threshold(np.array([0.01, 0.02, 0.05, 0.3]), np.array([0.1, 0.4, 0.5, 0.6]), max_false_stop=0.0)
    assert 0.05 < fit["threshold"] <= 0.1 and fit["recall"] == 0.75 and fit["false_stop_rate"] == 0.0


def test_in_process_and_through_ros_agree_step_for_step(random_checkpoint, domain_id, tmp_path):
    """Same seeds, same episodes: the graph (lock-step sim node + planner node, separate processes)
    and the in-process loop observe the same frames, plan the same steps, and stop the same way by
    the same rule."""
    settings = ev.EvalSettings(protocol="paper", task="grasp", episodes=2, seed=3, max_steps=3,
                               checkpoint=str(random_checkpoint), done_cost=0.0)
    local = ev.evaluate(settings, baselines=False, progress=False)
    ros = ev.evaluate(settings, through_ros=True, baselines=False, progress=False, log_dir=tmp_path)
    assert [o["seed"] for o in ros["outcomes"]] == local["seeds"] == ros["seeds"]
    for a, b in zip(local["outcomes"], ros["outcomes"], strict=True):
        assert (a["seed"], a["steps"], a["reason"]) == (b["seed"], b["steps"], b["reason"])
        assert len(a["costs"]) == len(b["costs"]) == 4
        np.testing.assert_allclose(b["costs"], a["costs"], rtol=1e-5)     # the feedback carries float32
        assert a["success_at_stop"] == b["success_at_stop"]
        assert abs(a["final_distance"] - b["final_distance"]) < 0.05      # in-process: after the 2 s hold


def _result(task, outcomes, through_ros=False, max_steps=12, protocol="paper", baselines=None):
    k = sum(s for _, s, _ in outcomes)
    lo, hi = ev.wilson_interval(k, len(outcomes))
    return {"protocol": protocol, "task": task, "episodes": len(outcomes), "planner_seeds": 1,
            "success_rate": k / len(outcomes), "ci95": [lo, hi], "success_rate_paper_rule": k / len(outcomes),
            "replan_seconds_median": 0.5, "through_ros": through_ros,
            "baselines": {} if through_ros else (baselines or {"hold_still": {"success_rate": 0.0, "ci95": [0.0, 0.3]}}),
            "settings": {"max_steps": max_steps, "preset": "cpu", "checkpoint": "", "protocol": protocol},
            "outcomes": [{"seed": seed, "success": bool(ok), "steps": steps, "reason": "budget",
                          "costs": [0.5] * (steps + 1)} for seed, ok, steps in outcomes]}


def test_report_tables_both_protocols_and_the_through_ros_agreement(tmp_path, capsys):
    (tmp_path / "reach.json").write_text(json.dumps(_result("reach", [(1, 1, 7), (2, 0, 12), (3, 1, 12)])))
    (tmp_path / "grasp.json").write_text(json.dumps(_result("grasp", [(1, 0, 12), (2, 1, 10)])))
    (tmp_path / "pick.json").write_text(json.dumps(_result("pick-place", [(1, 0, 30)], protocol="composite")))
    (tmp_path / "reach_ros.json").write_text(json.dumps(_result("reach", [(1, 1, 7), (2, 1, 9)], through_ros=True)))
    (tmp_path / "notes.json").write_text("[1, 2]")                          # not a result: skipped
    assert ev.main(["--report", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert summary.index("## paper protocol") < summary.index("## composite protocol")
    assert "| dexwm | 67 % [" in summary and "| hold_still | 0 % [" in summary
    assert "same stop (steps and reason) on 1/2 shared seeds, same per-step costs on 1/2; differ: [2]" in summary
    assert "NOT comparable" not in summary
    assert (tmp_path / "summary_paper.png").stat().st_size > 1000
    assert (tmp_path / "summary_composite.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out
    (tmp_path / "reach_ros.json").write_text(json.dumps(_result("reach", [(1, 1, 7)], through_ros=True, max_steps=5)))
    assert ev.main(["--report", str(tmp_path)]) == 0
    assert "NOT comparable: max_steps differ" in (tmp_path / "summary.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ev.main(["--report", str(empty)]) == 1
    assert ev.main(["--report", str(tmp_path / "missing")]) == 2
