"""Subgoals in simulation: the scripted pick-and-place yields its subgoal images
(dexwm_sim.tasks.make_subgoals), and `dexwm-eval --protocol composite --task pick-place --subgoals`
runs an episode through them with a policy that sees images and joints only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dexwm_ros import evaluate as ev
from test_planner_eval import _Poisoned


@pytest.fixture(scope="module")
def env():
    from dexwm_sim.scene import SimEnv

    e = SimEnv(render_size=(96, 96))
    yield e
    e.close()


def test_the_scripted_pick_and_place_yields_its_subgoals_and_restores_the_start(env):
    from dexwm_sim import tasks

    episode = env.reset("pick-place", 1_000_000)
    start_q, start_objects = env.joint_positions(), env.object_poses()
    goals = tasks.make_subgoals(env, episode, sizes=((96, 96),), marks=("pregrasp", "closed", "lifted", "above",
                                                                        "released"))
    assert len(goals) == 5 and all(g.solved for g in goals)
    assert np.array_equal(env.joint_positions(), start_q)                      # the start is back
    assert all(np.array_equal(a, env.object_poses()[k]) for k, a in start_objects.items())
    for a, b in zip(goals, goals[1:]):
        assert a.image.shape == (96, 96, 3) and np.abs(a.image.astype(int) - b.image).mean() > 0.5
    rest_z = start_objects[episode.object_kind][2]
    obj = [g.object_poses[episode.object_kind][:3] for g in goals]
    target = np.asarray(episode.target)
    assert abs(obj[1][2] - rest_z) < 0.02                                     # closed on it, on the table
    assert obj[2][2] > rest_z + 0.08 and obj[3][2] > rest_z + 0.08            # lifted, carried high
    assert np.linalg.norm(obj[3][:2] - target[:2]) < 0.1                      # above the target
    assert np.linalg.norm(obj[4] - target) < tasks.PLACE_THRESHOLD            # released on it
    # The default sequence leaves out the closed hand on the table.
    four = tasks.make_subgoals(env, episode, sizes=((96, 96),))
    assert len(four) == len(tasks.SUBGOAL_MARKS) == 4 and np.abs(four[1].image.astype(int) - goals[2].image).mean() < 1.0
    with pytest.raises(ValueError, match="no mark"):
        tasks.make_subgoals(env, episode, marks=("pregrasp", "flying"))
    # "high": the hand open and turned above the object, higher than the pre-grasp pose, the object
    # untouched; with depth every goal carries its depth image (metres, the hand nearer than the table).
    high, pregrasp = tasks.make_subgoals(env, episode, sizes=((96, 96),), marks=("high", "pregrasp"), depth=True)
    palm_high, palm_pre = (env.kinematics.palm_and_tips_world(g.joints)[0] for g in (high, pregrasp))
    assert 0.08 < palm_high[2] - palm_pre[2] < 0.16 and np.linalg.norm(palm_high[:2] - palm_pre[:2]) < 0.03
    assert np.allclose(high.object_poses[episode.object_kind][:3], start_objects[episode.object_kind][:3], atol=1e-3)
    assert high.depth.shape == (96, 96) and 0.3 < high.depth.min() < high.depth.max() < 3.0
    assert goals[0].depth is None
    # The last one shows the task's goal (a state restored for rendering differs by a few pixel levels).
    final = tasks.make_goal(env, episode, sizes=((96, 96),)).image
    assert np.abs(goals[-1].image.astype(int) - final).mean() < 1.0
    with pytest.raises(ValueError, match="pick-place"):
        tasks.make_subgoals(env, env.reset("reach-grasp", 3))


def test_the_judge_reads_how_far_a_state_is_from_a_subgoal(env):
    """subgoal_progress at the scripted states themselves: no distance, held exactly where the
    scripted solution holds the object; from the episode start, far from the grasped state."""
    from dexwm_sim import tasks

    episode = env.reset("pick-place", 1_000_000)
    start = env.get_state()
    states: dict = {}
    assert tasks.solve(env, episode, marks=states)
    scripted, scripted_q = {}, {}
    for mark in ("pregrasp", "lifted", "released"):
        env.set_state(states[mark])
        scripted_q[mark] = env.joint_positions()
        scripted[mark] = (env.palm_and_tips()[0], env.object_poses()[episode.object_kind])
        at = tasks.subgoal_progress(env, episode, *scripted[mark], joints_goal=env.joint_positions())
        assert at["palm_error_m"] < 1e-9 and at["object_error_m"] < 1e-9 and at["flange_turn_deg"] < 1e-4, (mark, at)
        assert at["scripted_held"] == at["held"] == (mark == "lifted"), (mark, at)
    assert tasks.subgoal_progress(env, episode, *scripted["lifted"])["object_lift_m"] < tasks.STRICT_LIFT
    env.set_state(start)
    far = tasks.subgoal_progress(env, episode, *scripted["lifted"], joints_goal=scripted_q["lifted"])
    assert far["flange_turn_deg"] > 20.0 and "flange_turn_deg" not in tasks.subgoal_progress(env, episode, *scripted["lifted"])
    assert far["palm_error_m"] > 0.1 and far["object_error_m"] > 0.05 and abs(far["object_lift_m"]) < 0.01
    assert not far["held"] and far["scripted_held"]


def test_the_funnel_sums_up_each_subgoal_over_the_runs_that_got_there():
    def end(index, phase, palm, obj, held, scripted_held):
        return {"index": index, "phase": phase, "palm_error_m": palm, "object_error_m": obj, "object_lift_m": 0.0,
                "held": held, "scripted_held": scripted_held, "reason": "budget"}

    def run(*ends):
        return ev.EpisodeOutcome(seed=0, success=False, steps=1, reason="budget", final_distance=0.3,
                                 replan_seconds_median=1.0, wall_seconds=1.0, subgoal_progress=list(ends))
    outcomes = [run(end(0, "reach", 0.02, 0.0, False, False), end(1, "grasp", 0.2, 0.1, False, True)),
                run(end(0, "reach", 0.04, 0.0, False, False), end(1, "grasp", 0.01, 0.01, True, True)),
                run(end(0, "reach", 0.30, 0.06, False, False))]         # a sequence that ended early
    funnel = ev.summarize(outcomes)["subgoal_funnel"]
    assert [(f["index"], f["phase"], f["runs"]) for f in funnel] == [(0, "reach", 3), (1, "grasp", 2)]
    assert funnel[0]["palm_error_m_median"] == pytest.approx(0.04)
    assert funnel[0]["palm_within_tolerance"] == pytest.approx(2 / 3)
    assert funnel[0]["object_within_tolerance"] == pytest.approx(2 / 3) and funnel[0]["held"] is None
    assert funnel[1]["held"] == 0.5 and funnel[1]["object_error_m_median"] == pytest.approx(0.055)
    assert "subgoal_funnel" not in ev.summarize([run()])


def test_an_episode_runs_through_its_subgoals_on_images_and_joints_only(random_checkpoint, monkeypatch):
    """The providers of every subgoal run with the simulator's ground truth poisoned (the goals' depth
    and orientation readings included); the sequence advances by the stop rule (here the budget of one
    step per subgoal) through all five of the default chain."""
    from dataclasses import replace

    from dexwm_planner.world_model import DexWM
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics
    from dexwm_sim.scene import SimEnv

    settings = ev.EvalSettings(protocol="composite", task="pick-place", max_steps=1, hold_s=0.2, subgoals=True)
    runner = ev.make_runner(settings)
    env = runner.env
    policy = ev.WorldModelPolicy(DexWM.load(str(random_checkpoint)), RobotKinematics.from_description(),
                                 HeadCamera().world_to_camera, "cpu", **settings.planner_options())
    policy.config = replace(policy.config, cem=policy.config.cem.with_(samples=4, elites=2, iterations=1, chunk=4))
    assert policy.config.orientation_reference == "goal_image" and policy.config.objective.goal_wrist_weight == 100
    calls = []

    def guarded(method):
        def call(*args, **kwargs):
            calls.append(method.__name__)
            status, episode = env.status, env.episode
            env.status, env.episode = _Poisoned(), _Poisoned()
            with monkeypatch.context() as m:
                for name in ("object_position", "object_poses", "hand_touches", "palm_and_tips", "keypoints"):
                    m.setattr(SimEnv, name, lambda *_a, _n=name, **_k: getattr(_Poisoned(), _n))
                try:
                    return method(*args, **kwargs)
                finally:
                    env.status, env.episode = status, episode
        return call
    make = policy.for_subgoal

    def for_subgoal(search, held):
        provider = make(search, held)
        for name in ("start", "observe", "verdict", "plan"):
            setattr(provider, name, guarded(getattr(provider, name)))
        return provider
    policy.for_subgoal = for_subgoal
    try:
        start = ev.prepare_episode(env, settings, ev.EVAL_SEED_OFFSET)
        outcome = ev.run_episode(runner, policy, start, settings)
    finally:
        env.close()
    assert len(start.subgoals) == 5 and all(g.depth is not None for g in start.subgoals)
    assert outcome.subgoal_reasons and all(r in ("reached", "plateau", "budget") for r in outcome.subgoal_reasons)
    # One step per subgoal, but the grasp keeps its own budget (the reference motion's length).
    from dexwm_planner.subgoals import PHASES
    assert len(outcome.subgoal_reasons) == 5 and outcome.steps <= 4 + PHASES["grasp"].max_steps
    assert calls.count("start") == 5
    # The judge read each subgoal's end (between the policy's calls, which saw nothing of it).
    ends = outcome.subgoal_progress
    assert [e["phase"] for e in ends] == ["reach", "approach", "grasp", "carry", "release"]
    assert [e["reason"] for e in ends] == outcome.subgoal_reasons
    assert [e["scripted_held"] for e in ends] == [False, False, True, True, False]
    assert all(np.isfinite(e["palm_error_m"]) and e["palm_error_m"] >= 0 and np.isfinite(e["object_error_m"])
               for e in ends)


def test_cli_runs_subgoals_and_skips_single_goal_baselines(tmp_path, random_checkpoint, capsys):
    out = tmp_path / "sub.json"
    rc = ev.main(["--protocol", "composite", "--task", "pick-place", "--subgoals", "--episodes", "1",
                  "--subgoal-marks", "pregrasp,closed,lifted,above,released",
                  "--max-steps", "1", "--checkpoint", str(random_checkpoint), "--hold-s", "0.2",
                  "--search", "16,4,2",   # the CLI and its report are under test here, not the search
                  "--baselines", "random_shooting_wm,hold_still", "--out", str(out), "--quiet"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["settings"]["subgoals"] is True and data["settings"]["max_steps"] == 1
    assert data["settings"]["subgoal_marks"] == ["pregrasp", "closed", "lifted", "above", "released"]
    assert len(data["outcomes"]) == 1 and len(data["outcomes"][0]["subgoal_reasons"]) == 5
    assert set(data["baselines"]) == {"random_shooting_wm"} and set(data["skipped_baselines"]) == {"hold_still"}
    assert len(data["baseline_outcomes"]["random_shooting_wm"][0]["subgoal_reasons"]) == 5
    funnel = data["subgoal_funnel"]
    assert [f["phase"] for f in funnel] == ["approach", "grasp", "lift", "carry", "release"]
    assert len(data["baselines"]["random_shooting_wm"]["subgoal_funnel"]) == 5
    assert "subgoal 5 (release, 1 runs got to its end): palm" in capsys.readouterr().out
    plain = dict(data, settings=dict(data["settings"], subgoals=False), baselines={})
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    assert ev.main(["--report", str(tmp_path)]) == 0                  # both, side by side
    table = (tmp_path / "summary.md").read_text()
    assert "| pick-place (n=1x1) | pick-place (subgoals) (n=1x1) |" in table, table
    assert "- pick-place (subgoals), dexwm, subgoal 2 (grasp, 1 runs got to its end): palm" in table
    assert any(line.startswith("| dexwm |") and "; palm " in line for line in table.splitlines())
    for bad in (["--protocol", "paper", "--task", "place", "--subgoals"],
                ["--protocol", "composite", "--task", "reach", "--subgoals"],
                ["--protocol", "composite", "--task", "pick-place", "--subgoals", "--through-ros"]):
        with pytest.raises(SystemExit) as e:
            ev.main(bad + ["--out", str(tmp_path / "x.json")])
        assert e.value.code == 2, bad
    with pytest.raises(ValueError, match="pick-place"):
        ev.EvalSettings(protocol="composite", task="reach", subgoals=True)
    with pytest.raises(ValueError, match="need subgoals"):
        ev.EvalSettings(protocol="composite", task="pick-place", subgoal_marks=("pregrasp",))
