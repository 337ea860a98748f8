"""dexwm-eval: Wilson interval, seeded in-process episodes, the JSON report and its plot."""
import json
import shutil

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


def test_episodes_are_reproducible_and_respect_the_budget():
    from dexwm_robot.kinematics import RobotKinematics

    settings = ev.EvalSettings(protocol="composite", task="reach", max_steps=3, hold_s=0.5)
    runner = ev.make_runner(settings)
    kin = RobotKinematics.from_description()
    try:
        start = ev.prepare_episode(runner.env, settings, 1_000_000)
        a = ev.run_episode(runner, ev.RandomJointWalkPolicy(kin), start, settings)
        b = ev.run_episode(runner, ev.RandomJointWalkPolicy(kin), start, settings)
    finally:
        runner.env.close()
    assert (a.steps, a.reason, a.success) == (3, "budget", False)
    assert a.final_distance == b.final_distance          # same seed, same episode
    assert np.isfinite(a.final_distance)


class _Poisoned:
    """Stands in for the simulator's ground truth while a policy acts: any read fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the policy read simulator ground truth ({name})")


@pytest.mark.parametrize("policy_name", ["dexwm", "goal_hand_ik"])
def test_policies_read_no_simulator_ground_truth(random_checkpoint, monkeypatch, policy_name):
    """While a policy decides, the success flag, episode, object poses, contacts and hand
    positions of the simulation are poisoned: the policy runs on the camera frame, the joints and
    the goal image only (the session's stop rule reads only the costs the policy returns)."""
    from dexwm_planner.world_model import DexWM
    from dexwm_sim import tasks
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics
    from dexwm_sim.scene import SimEnv

    settings = ev.EvalSettings(protocol="paper", task="grasp", max_steps=2, hold_s=0.2, done_cost=0.5)
    runner = ev.make_runner(settings)
    env = runner.env
    kin = RobotKinematics.from_description()
    model = DexWM.load(str(random_checkpoint))
    if policy_name == "dexwm":
        policy = ev.WorldModelPolicy(model, kin, HeadCamera().world_to_camera, "cpu")
        policy.config = policy.config.__class__(cem=policy.config.cem.with_(samples=4, elites=2, iterations=1, chunk=4))
    else:
        policy = ev.GoalHandIKPolicy(model, kin, HeadCamera().world_to_camera, "cpu")
    seen = []

    def guarded(method):
        def call(*args):
            seen.append([(a.shape, a.dtype) for a in args if isinstance(a, np.ndarray)])
            status, episode = env.status, env.episode
            env.status, env.episode = _Poisoned(), _Poisoned()
            poisoned = _Poisoned()
            with monkeypatch.context() as m:
                for name in ("object_position", "object_poses", "hand_touches", "palm_and_tips", "keypoints"):
                    m.setattr(SimEnv, name, lambda *_a, _n=name, **_k: getattr(poisoned, _n))
                m.setattr(tasks, "evaluate", lambda *_a, **_k: poisoned.evaluate)
                try:
                    return method(*args)
                finally:
                    env.status, env.episode = status, episode
        return call
    for name in ("start", "observe", "verdict", "plan"):
        setattr(policy, name, guarded(getattr(policy, name)))
    try:
        start = next(ev.prepare_episode(env, settings, s) for s in range(1_000_000, 1_000_010)
                     if _has_stage(env, settings, s))
        outcome = ev.run_episode(runner, policy, start, settings)
    finally:
        env.close()
    observed = [args for args in seen if len(args) == 2]          # observe(image, joints)
    assert observed and all(image[0][2] == 3 and image[1] == np.uint8 and q[0] == (23,) for image, q in observed)
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
                  "--search", "16,4,2",   # the CLI and its report are under test here, not the search
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
    # The judge's palm distance from the goal state's at the stop: holding still leaves it where the
    # stage starts, the open hand above the object, away from the lifted, closed goal.
    assert all(o["palm_error_m"] >= 0 for o in data["outcomes"]) and data["palm_error_m_median"] >= 0
    still = [o["palm_error_m"] for o in data["baseline_outcomes"]["hold_still"]]
    assert min(still) > 0.02 and data["baselines"]["hold_still"]["palm_error_m_median"] == pytest.approx(np.median(still))
    out_text = capsys.readouterr().out
    assert "paper grasp: success" in out_text and "cm from the goal's at the stop (median)" in out_text


def test_an_ablation_checkpoint_stops_by_its_own_fitted_thresholds(tmp_path, random_checkpoint):
    # Same weights, but the ablation's own stop file says any cost is "reached": it stops before
    # moving, while the main checkpoint (no stop file: threshold off) runs to the budget.
    ablation = tmp_path / "ablation.pt"
    shutil.copy(random_checkpoint, ablation)
    (tmp_path / "ablation.stop.json").write_text(json.dumps({"done_cost": {"grasp": 1e6}}))
    out = tmp_path / "res.json"
    rc = ev.main(["--protocol", "paper", "--task", "grasp", "--episodes", "1", "--max-steps", "2",
                  "--checkpoint", str(random_checkpoint), "--hold-s", "0.2", "--plateau-steps", "0",
                  "--ablation", f"no_hc={ablation}", "--baselines", "hold_still", "--out", str(out), "--quiet"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [(o["reason"], o["steps"]) for o in data["outcomes"]] == [("budget", 2)]
    assert [(o["reason"], o["steps"]) for o in data["baseline_outcomes"]["no_hc"]] == [("reached", 0)]


def test_stage_settings_search_each_paper_stage_with_its_phase_profile(random_checkpoint, capsys):
    """--stage-settings phases: the grasp stage plans with the orientation term, place with finger
    std 0.01 rad (the paper's per-task choices, as PHASES gives them to subgoals); random shooting
    gets the same; the default leaves the planner's own settings; composite tasks are refused."""
    from dexwm_planner.subgoals import PHASES
    from dexwm_planner.world_model import DexWM
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics

    assert ev.EvalSettings(protocol="paper", task="place").search_settings() is None
    place = ev.EvalSettings(protocol="paper", task="place", stage_settings="phases").search_settings()
    grasp = ev.EvalSettings(protocol="paper", task="grasp", stage_settings="phases").search_settings()
    assert place == PHASES["place"] and grasp == PHASES["grasp"]
    model, kin, cam = DexWM.load(str(random_checkpoint)), RobotKinematics.from_description(), HeadCamera()
    goal = np.zeros((224, 224, 3), np.uint8)
    for policy in (ev.WorldModelPolicy(model, kin, cam.world_to_camera, search=place),
                   ev.random_shooting_wm(model, kin, cam.world_to_camera, "cpu", search=place)):
        policy.start(goal, None, seed=0)
        assert policy.plans.planner.config.cem.std_hand == 0.01
        assert policy.plans.planner.config.cem.std_arm == policy.config.cem.std_arm
    policy = ev.WorldModelPolicy(model, kin, cam.world_to_camera, search=grasp)
    policy.start(goal, None, seed=0)
    assert policy.plans.planner.config.objective.orientation_weight == 0.4
    assert policy.plans.planner.config.execute == "mean" and policy.plans.planner.config.reference == "grasp"
    # The phase's stop rule too: the grasp runs its reference to the end, place keeps the stage's.
    from dexwm_sim.scene import SimEnv
    env = SimEnv(render_size=(64, 64))
    try:
        rules = {task: ev.EvalSettings(protocol="paper", task=task, stage_settings="phases", max_steps=12,
                                       done_cost=0.3, move_duration_s=0.6).session_config(env).stop_rule
                 for task in ("grasp", "place")}
    finally:
        env.close()
    assert (rules["grasp"].done_cost, rules["grasp"].max_steps) == (0.0, 20)
    assert (rules["place"].done_cost, rules["place"].max_steps) == (0.3, 12)
    plain = ev.WorldModelPolicy(model, kin, cam.world_to_camera)
    plain.start(goal, None, seed=0)
    assert plain.plans.planner.config == plain.config
    with pytest.raises(ValueError, match="paper protocol"):
        ev.EvalSettings(protocol="composite", task="reach", stage_settings="phases")
    for bad in (["--stage-settings", "magic"], ["--stage-settings", "phases", "--through-ros"]):
        with pytest.raises(SystemExit) as exit_info:
            ev.main(["--protocol", "paper", "--task", "place", *bad, "--out", "/nonexistent/r.json"])
        assert exit_info.value.code == 2


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


def test_in_process_episodes_run_the_planning_session(monkeypatch):
    """The evaluation has no episode loop of its own: every in-process episode is one run of the
    planner node's PlanningSession over the simulated robot (the node side is checked in
    test_planner_node.py), for the world model and the baselines alike."""
    import inspect

    from dexwm_planner import session
    from dexwm_planner.sim_robot import SimulatedRobot
    from dexwm_robot.kinematics import RobotKinematics

    runs = []
    run = session.PlanningSession.run

    def spy(self, *args, **kwargs):
        result = run(self, *args, **kwargs)
        runs.append((type(self.robot), self.provider.name, result.reason))
        return result
    monkeypatch.setattr(session.PlanningSession, "run", spy)
    settings = ev.EvalSettings(protocol="composite", task="reach", max_steps=1, hold_s=0.1)
    runner = ev.make_runner(settings)
    kin = RobotKinematics.from_description()
    try:
        start = ev.prepare_episode(runner.env, settings, 1_000_000)
        for policy in (ev.RandomJointWalkPolicy(kin), ev.HoldStillPolicy(), ev.OracleGoalJointsPolicy(kin)):
            ev.run_episode(runner, policy, start, settings)
    finally:
        runner.env.close()
    assert runs == [(SimulatedRobot, "random_joint_walk", "budget"), (SimulatedRobot, "hold_still", "hold"),
                    (SimulatedRobot, "oracle_goal_joints", "budget")]
    assert "move_now(" not in inspect.getsource(ev)      # the simulation is moved by the session only


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
    # a result saved before --search existed ran the preset's search: comparable with one that says so
    current = _result("reach", [(1, 1, 7), (2, 0, 12), (3, 1, 12)])
    current["settings"]["search"] = []
    (tmp_path / "reach.json").write_text(json.dumps(current))
    (tmp_path / "reach_ros.json").write_text(json.dumps(_result("reach", [(1, 1, 7)], through_ros=True)))
    assert ev.main(["--report", str(tmp_path)]) == 0
    assert "NOT comparable" not in (tmp_path / "summary.md").read_text()
    current["settings"]["search"] = [16, 4, 2]
    (tmp_path / "reach.json").write_text(json.dumps(current))
    assert ev.main(["--report", str(tmp_path)]) == 0
    assert "NOT comparable: search differ" in (tmp_path / "summary.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ev.main(["--report", str(empty)]) == 1
    assert ev.main(["--report", str(tmp_path / "missing")]) == 2


def test_executed_step_is_the_model_frame_step(tmp_path):
    """0 = automatic: each executed step lasts the checkpoint's frame step (what the model learned)."""
    from dexwm_planner.world_model import DexWM, WorldModelConfig, checkpoint_frame_step

    path = tmp_path / "step04.pt"
    DexWM(WorldModelConfig(frame_dt=0.4)).save(str(path))
    assert checkpoint_frame_step(str(path)) == pytest.approx(0.4)
    settings = ev.EvalSettings(protocol="paper", task="reach", checkpoint=str(path))
    settings.resolve_step()
    assert (settings.move_duration_s, settings.move_timeout_s) == pytest.approx((0.4, 0.4))
    explicit = ev.EvalSettings(protocol="paper", task="reach", move_duration_s=0.5, move_timeout_s=1.0)
    explicit.resolve_step(0.2)
    assert (explicit.move_duration_s, explicit.move_timeout_s) == (0.5, 1.0)


def test_search_size_replaces_the_presets_for_the_planner_and_the_random_shooting_budget(capsys):
    """--search S,E,I sizes the DexWM policy's CEM and gives random shooting the same total budget;
    a size the CEM cannot run is refused before any episode."""
    from dexwm_planner.cem import CPU

    settings = ev.EvalSettings(protocol="paper", task="reach", search=(16, 4, 2))
    assert settings.search_changes() == dict(samples=16, elites=4, iterations=2, chunk=16)
    cem = ev.WorldModelPolicy(None, None, None, "cpu", settings.search_changes()).config.cem
    assert (cem.samples, cem.elites, cem.iterations, cem.max_step_arm) == (16, 4, 2, 0.25)
    shooting = ev.random_shooting_wm(None, None, None, "cpu", settings.search_changes()).config.cem
    assert (shooting.samples, shooting.iterations) == (32, 1)
    preset = ev.random_shooting_wm(None, None, None, "cpu").config.cem
    assert (preset.samples, preset.iterations) == (CPU.samples * CPU.iterations, 1)
    with pytest.raises(ValueError, match="elites"):
        ev.EvalSettings(protocol="paper", task="reach", search=(4, 8, 1))
    # A fourth value carries that many elites into the next iteration (the planner's CEM only).
    kept = ev.EvalSettings(protocol="paper", task="reach", search=(16, 4, 2, 3)).search_changes()
    assert ev.WorldModelPolicy(None, None, None, "cpu", kept).config.cem.keep_elites == 3
    assert ev.random_shooting_wm(None, None, None, "cpu", kept).config.cem.samples == 32
    for bad, why in (("16,4", "--search needs"), ("16,4,x", "--search needs"), ("16,4,2,1,1", "--search needs"),
                     ("4,8,1", "must not exceed"), ("16,4,2,5", "keep_elites")):
        with pytest.raises(SystemExit) as exit_info:
            ev.main(["--protocol", "paper", "--task", "reach", "--search", bad, "--out", "/nonexistent/r.json"])
        assert exit_info.value.code == 2 and why in capsys.readouterr().err


def test_sampling_std_replaces_the_presets_for_the_planner_and_random_shooting(capsys):
    """--std ARM,HAND sets the initial CEM std of the planner and of random shooting alike; a std the
    CEM refuses (not positive) or a malformed value stops the run before any episode."""
    from dexwm_planner.cem import CPU

    settings = ev.EvalSettings(protocol="paper", task="grasp", std=(0.02, 0.05), search=(16, 4, 2))
    for policy in (ev.WorldModelPolicy(None, None, None, "cpu", settings.search_changes()),
                   ev.random_shooting_wm(None, None, None, "cpu", settings.search_changes())):
        assert (policy.config.cem.std_arm, policy.config.cem.std_hand) == (0.02, 0.05)
    assert ev.random_shooting_wm(None, None, None, "cpu", settings.search_changes()).config.cem.samples == 32
    preset = ev.WorldModelPolicy(None, None, None, "cpu", ev.EvalSettings(protocol="paper", task="grasp").search_changes())
    assert (preset.config.cem.std_arm, preset.config.cem.std_hand) == (CPU.std_arm, CPU.std_hand)
    for bad, why in (("0.02", "--std needs"), ("0.02,x", "--std needs"), ("0,0.05", "std_arm must be a positive")):
        with pytest.raises(SystemExit) as exit_info:
            ev.main(["--protocol", "paper", "--task", "grasp", "--std", bad, "--out", "/nonexistent/r.json"])
        assert exit_info.value.code == 2 and why in capsys.readouterr().err


def test_candidate_camera_is_the_view_of_the_episodes_and_of_the_planners_actions(capsys):
    """--camera PITCH,AZIMUTH: the simulation renders from that head camera and the results say so; a
    view that cannot be, or one asked of the ROS graph (the sim node has its own), is refused."""
    from dexwm_robot.camera import HeadCamera

    settings = ev.EvalSettings(protocol="paper", task="grasp", camera=(30, 25))
    assert settings.camera == (30.0, 25.0) and settings.head_camera().pitch_deg == pytest.approx(30.0)
    runner = ev.make_runner(settings)
    try:
        np.testing.assert_allclose(runner.env.camera.position, HeadCamera.orbit(30.0, 25.0).position)
    finally:
        runner.env.close()
    assert ev.EvalSettings(protocol="paper", task="grasp").head_camera() == HeadCamera()
    with pytest.raises(ValueError, match="pitch"):
        ev.EvalSettings(protocol="paper", task="grasp", camera=(95, 0))
    for argv, why in ((["--camera", "30"], "--camera needs"), (["--camera", "0,10"], "--camera needs"),
                      (["--camera", "30,25", "--through-ros"], "camera")):
        with pytest.raises(SystemExit) as exit_info:
            ev.main(["--protocol", "paper", "--task", "grasp", *argv, "--out", "/nonexistent/r.json"])
        assert exit_info.value.code == 2 and why in capsys.readouterr().err


def test_planned_hand_term_is_the_planner_nodes_and_shared_with_random_shooting(capsys):
    """The evaluation plans with the planner node's default cost (config/planner.yaml), random
    shooting with the same cost; --hand-pixel-weight changes both, a negative weight is refused."""
    import yaml

    from dexwm_ros.graph import config_dir

    shipped = yaml.safe_load((config_dir() / "planner.yaml").read_text())["/**"]["ros__parameters"]
    assert ev.HAND_PIXEL_WEIGHT == shipped["hand_pixel_weight"] > 0
    assert ev.WorldModelPolicy(None, None, None, "cpu").config.objective.hand_pixel_weight == ev.HAND_PIXEL_WEIGHT
    settings = ev.EvalSettings(protocol="paper", task="reach", hand_pixel_weight=0.0)
    assert settings.objective().hand_pixel_weight == 0.0
    assert ev.random_shooting_wm(None, None, None, "cpu", objective=settings.objective()).config.objective \
        == settings.objective()
    with pytest.raises(ValueError, match=">= 0"):
        ev.EvalSettings(protocol="paper", task="reach", hand_pixel_weight=-1e-3)
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--protocol", "paper", "--task", "reach", "--hand-pixel-weight", "-1", "--out", "/nonexistent/r.json"])
    assert exit_info.value.code == 2 and ">= 0" in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_through_ros_and_in_process_agree_step_for_step_and_judge_after_the_same_hold(tmp_path, random_checkpoint,
                                                                                      monkeypatch):
    """One paper-stage episode in-process and through the ROS graph (sim node in lock-step + planner
    node, separate processes): the same steps, stop reason and latent costs, and both judged after
    the same simulated hold (/sim/hold through ROS)."""
    from rosutil import ros_env

    for name, value in ros_env().items():
        if name.startswith(("ROS_", "RMW_", "FASTDDS_")):
            monkeypatch.setenv(name, value)
    common = ["--protocol", "paper", "--task", "reach", "--episodes", "1", "--max-steps", "2",
              "--checkpoint", str(random_checkpoint), "--hold-s", "0.5", "--no-baselines", "--quiet"]
    assert ev.main(common + ["--out", str(tmp_path / "in.json")]) == 0
    assert ev.main(common + ["--through-ros", "--out", str(tmp_path / "ros.json")]) == 0
    local, ros = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("in", "ros"))
    assert local["success_rule"] == ros["success_rule"] == "final_hold_0.5s" and ros["through_ros"]
    (a,), (b,) = local["outcomes"], ros["outcomes"]
    assert (a["seed"], a["steps"], a["reason"]) == (b["seed"], b["steps"], b["reason"])
    np.testing.assert_allclose(a["costs"], b["costs"], rtol=1e-4, atol=1e-6)
    assert (a["success"], a["success_paper_rule"], a["success_at_stop"]) == \
        (b["success"], b["success_paper_rule"], b["success_at_stop"])
    assert a["final_distance"] == pytest.approx(b["final_distance"], abs=1e-3)


def test_the_goal_wrist_oracle_feeds_the_goal_states_wrist_to_the_planner(random_checkpoint, tmp_path,
                                                                          capsys):
    """--goal-wrist-oracle W (a PRIVILEGED diagnostic): the planner's goal wrist term, weight W, gets
    the goal state's wrist; without it the goal joints never reach the planner."""
    from dexwm_planner.actions import wrist_position_projection
    from dexwm_planner.subgoals import phase_settings
    from dexwm_planner.world_model import DexWM
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics

    settings = ev.EvalSettings(protocol="paper", task="reach", goal_wrist_oracle=100.0)
    assert settings.objective().goal_wrist_weight == 100.0 and settings.planner_options()["goal_wrist_oracle"]
    model, kin, cam = DexWM.load(str(random_checkpoint)), RobotKinematics.from_description(), HeadCamera()
    goal, goal_q = np.zeros((224, 224, 3), np.uint8), 0.2 * (kin.lower + kin.upper)
    oracle = ev.WorldModelPolicy(model, kin, cam.world_to_camera, **settings.planner_options())
    oracle.start(goal, goal_q, seed=0)
    expected = wrist_position_projection(cam.world_to_camera, kin)(goal_q[None])[0]
    np.testing.assert_allclose(oracle.plans.planner.objective.goal_wrist, expected)
    assert oracle.plans.planner.config.objective.goal_wrist_weight == 100.0
    plain = ev.WorldModelPolicy(model, kin, cam.world_to_camera, **ev.EvalSettings(task="reach").planner_options())
    plain.start(goal, goal_q, seed=0)
    assert plain.plans.planner.objective.goal_wrist is None
    # With subgoals: each subgoal's provider gets that subgoal state's wrist (its joints), nothing else.
    # (the grasp phase's orientation term keeps the orientation at its start, not the goal state's)
    sub = oracle.for_subgoal(phase_settings("grasp"), None)
    sub.start(goal, goal_q, seed=0)
    np.testing.assert_allclose(sub.plans.planner.objective.goal_wrist, expected)
    assert sub.plans.planner.goal_rotation is None
    assert plain.for_subgoal(None, None).oracle_wrist_fn is None
    assert ev.EvalSettings(protocol="composite", task="pick-place", subgoals=True,
                           goal_wrist_oracle=1.0).planner_options()["goal_wrist_oracle"]
    with pytest.raises(ValueError, match=">= 0"):
        ev.EvalSettings(task="reach", goal_wrist_oracle=-1.0)
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--task", "reach", "--goal-wrist-oracle", "100", "--through-ros", "--out", "/nonexistent/r.json"])
    assert exit_info.value.code == 2
    out = tmp_path / "oracle.json"
    assert ev.main(["--task", "reach", "--episodes", "1", "--max-steps", "1", "--checkpoint", str(random_checkpoint),
                    "--hold-s", "0.2", "--search", "8,2,1", "--goal-wrist-oracle", "100", "--no-baselines", "--quiet",
                    "--out", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["goal_wrist_oracle"] == 100.0
    assert "PRIVILEGED: the planner's goal wrist term (weight 100)" in capsys.readouterr().out


def test_the_depth_goal_wrist_reads_each_goals_depth_image(random_checkpoint, tmp_path):
    """--goal-wrist-depth W: goals are rendered with their depth image, and the planner's goal wrist
    term (weight W) gets the wrist the goal-hand reader and that image give (not the goal's joints)."""
    from dexwm_planner.world_model import DexWM
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics

    settings = ev.EvalSettings(protocol="paper", task="reach", goal_wrist_depth=100.0)
    assert settings.objective().goal_wrist_weight == 100.0
    options = settings.planner_options()
    assert options["goal_wrist_depth"] and not options["goal_wrist_oracle"]
    model, kin, cam = DexWM.load(str(random_checkpoint)), RobotKinematics.from_description(), HeadCamera()
    policy = ev.WorldModelPolicy(model, kin, cam.world_to_camera, **options)
    runner = ev.make_runner(settings)
    start = ev.prepare_episode(runner.env, settings, settings.seeds()[0])
    assert start.goal.depth.shape == start.goal.image.shape[:2]
    policy.start(start.goal.image, None, seed=0, goal_depth=start.goal.depth)
    expected = policy.goal_wrist_from_depth(start.goal.image, start.goal.depth)
    np.testing.assert_allclose(policy.plans.planner.objective.goal_wrist, expected)
    with pytest.raises(ValueError, match="not both"):
        ev.EvalSettings(task="reach", goal_wrist_depth=1.0, goal_wrist_oracle=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        ev.EvalSettings(task="reach", goal_wrist_depth=-1.0)
    out = tmp_path / "depth.json"
    assert ev.main(["--task", "reach", "--episodes", "1", "--max-steps", "1", "--checkpoint", str(random_checkpoint),
                    "--hold-s", "0.2", "--search", "8,2,1", "--goal-wrist-depth", "100", "--no-baselines", "--quiet",
                    "--out", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["goal_wrist_depth"] == 100.0


def test_scripted_marks_map_to_subgoal_phases():
    assert ev.subgoal_phases(("pregrasp", "lifted", "above", "released")) == ("approach", "grasp", "carry", "release")
    assert ev.subgoal_phases(("pregrasp", "closed", "lifted", "above", "released")) == \
        ("approach", "grasp", "lift", "carry", "release")
    assert ev.subgoal_phases(("high", "pregrasp", "lifted", "above", "released")) == \
        ("reach", "approach", "grasp", "carry", "release")
    with pytest.raises(ValueError, match="no subgoal phase"):
        ev.EvalSettings(protocol="composite", task="pick-place", subgoals=True, subgoal_marks=("hover",))
