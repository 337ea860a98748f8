"""SimRunner (the ROS-free core of the sim node): real-time thread, waypoint commands, stop, reset."""
import time

import numpy as np
import pytest
from rosutil import wait_for

from dexwm_sim.runner import DONE, PREEMPTED, REACHED, STOPPED, TIMED_OUT, RunnerConfig, SimRunner

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def runner():
    frames, goals, episodes = [], [], []
    r = SimRunner(RunnerConfig(task="reach", seed=5, real_time_factor=4.0, image_rate_hz=5.0, image_size=(160, 120),
                               arm_speed=0.5), on_frame=frames.append, on_goal=goals.append,
                  on_episode=lambda st, ep: episodes.append(st))
    start = r.start()
    assert start.ok, start.message
    r.frames, r.goals, r.episodes = frames, goals, episodes
    yield r
    r.close()
    assert not r.alive


def test_runs_in_scaled_real_time_and_renders(runner):
    s0 = runner.snapshot()
    t0 = time.monotonic()
    time.sleep(1.0)
    s1 = runner.snapshot()
    rate = (s1.stamp - s0.stamp) / (time.monotonic() - t0)
    assert 1.5 < rate < 5.0          # about 4x real time (loose: the machine is shared)
    wait_for(lambda: runner.frames, 5, what="a frame")
    assert runner.frames[-1].rgb.shape == (120, 160, 3)
    assert runner.goals and runner.goals[0].goal_image.shape == (120, 160, 3)
    assert runner.episodes and runner.episodes[-1].task == "reach"


def test_waypoints_are_followed_and_done(runner):
    q0 = runner.snapshot().position[:7]
    way = np.stack([q0 + 0.1, q0 + np.r_[0.2, np.zeros(6)]])
    cmd = runner.command("arm", way)
    wait_for(lambda: cmd.status == DONE, 20, what="the waypoints")
    wait_for(lambda: np.max(np.abs(runner.snapshot().position[:7] - way[-1])) < 0.01, 10, what="settling")


def test_preempt_and_stop(runner):
    q0 = runner.snapshot().position[:7]
    # Two 0.4 rad moves (under the 0.5 rad per-command cap), the first slow enough to pre-empt.
    first = runner.command("arm", q0 + np.r_[0.4, np.zeros(6)], [4.0])
    time.sleep(0.05)
    second = runner.command("arm", q0 + np.r_[-0.4, np.zeros(6)], [4.0])
    wait_for(lambda: first.status == PREEMPTED, 5, what="pre-emption")
    runner.stop("arm")
    wait_for(lambda: second.status == STOPPED, 5, what="the stop")
    time.sleep(0.2)
    q1 = runner.snapshot().position[:7]
    time.sleep(0.5)
    assert np.max(np.abs(runner.snapshot().position[:7] - q1)) < 0.01


def test_bad_commands_and_resets(runner):
    with pytest.raises(ValueError, match="non-finite"):
        runner.command("arm", [np.nan] * 7)
    with pytest.raises(ValueError, match="outside its limits"):
        runner.command("arm", np.full(7, 5.0))
    with pytest.raises(ValueError, match="N x 16"):
        runner.command("hand", np.zeros(5))
    # out-of-limit hand targets are refused as the allegro driver refuses them (never clamped)
    with pytest.raises(ValueError, match="allegro_index_0 = 9.0000 rad is outside its limits"):
        runner.command("hand", np.full(16, 9.0))
    res = runner.reset("juggle", 1)
    assert not res.ok and "unknown task" in res.message
    res = runner.reset("reach-grasp", 4)
    assert res.ok and res.episode.task == "reach-grasp"
    wait_for(lambda: runner.episode_status()[0].task == "reach-grasp", 5, what="the new episode")


def test_a_done_command_superseded_before_it_is_reported_ends_preempted(runner):
    """A server may not have reported a DONE command yet when the next one arrives: it must end."""
    q0 = runner.snapshot().position[:7]
    first = runner.command("arm", q0 + np.r_[0.02, np.zeros(6)])
    wait_for(lambda: first.status == DONE, 10, what="the short move")
    second = runner.command("arm", q0)
    wait_for(lambda: first.status == PREEMPTED, 5, what="the superseded command to end")
    wait_for(lambda: second.status == DONE, 10, what="the second move")


def test_a_goal_is_judged_in_simulated_time(runner):
    q0 = runner.snapshot().position[:7]
    reach = runner.command("arm", q0 + np.r_[0.0, 0.1, np.zeros(5)], [0.4], tolerance=0.05, time_limit=2.0)
    wait_for(lambda: not reach.under_way, 10, what="the goal's verdict")
    assert reach.status == REACHED
    assert np.max(np.abs(reach.final_error)) <= 0.05                        # what the verdict saw
    # 0.45 rad over 3 s: the 0.5 s limit (simulated) ends it, and the arm stops there.
    far = runner.command("arm", q0 + np.r_[0.0, 0.0, 0.0, 0.0, 0.0, 0.45, 0.0], [3.0], tolerance=0.01,
                         time_limit=0.5)
    wait_for(lambda: not far.under_way, 10, what="the time limit")
    assert far.status == TIMED_OUT
    stopped_at = runner.snapshot().position[:7]
    assert 0.03 < stopped_at[5] - q0[5] < 0.3
    time.sleep(0.5)
    assert np.max(np.abs(runner.snapshot().position[:7] - stopped_at)) < 0.02      # holding, not going on
    with pytest.raises(ValueError):
        runner.command("arm", q0, tolerance=[0.1, 0.1])
    with pytest.raises(ValueError):
        runner.command("arm", q0, time_limit=-1.0)


def test_arm_step_cap_is_enforced_exactly_as_the_franka_driver_does(runner):
    """Same check as franka_driver.arm (dexwm_robot.command_limits): the simulation refuses a step the
    real driver would refuse, from the measured joints to point 0 and between points."""
    from dexwm_robot.command_limits import CommandRejected, check_joint_command

    q0 = runner.snapshot().position[:7]
    for points in (q0 + np.r_[1.0, np.zeros(6)], q0 + np.r_[0.0, 0.0, -1.2, np.zeros(4)],
                   np.stack([q0 + np.r_[0.3, np.zeros(6)], q0 + np.r_[0.9, np.zeros(6)]])):
        with pytest.raises(CommandRejected, match="max_joint_step = 0.5000") as sim_error:
            runner.command("arm", points)
        with pytest.raises(CommandRejected) as driver_error:
            check_joint_command(points, runner.env.lower[:7], runner.env.upper[:7],
                                runner.joint_names("arm"), 0.5, current=q0)
        assert str(sim_error.value) == str(driver_error.value)
    time.sleep(0.3)
    assert np.max(np.abs(runner.snapshot().position[:7] - q0)) < 0.01                 # nothing moved
    cmd = runner.command("arm", q0 + np.r_[0.45, np.zeros(6)])                          # under the cap
    wait_for(lambda: cmd.status == DONE, 20, what="the capped move")
    back = runner.command("arm", q0)
    wait_for(lambda: back.status == DONE, 20, what="the move back")


def test_lockstep_world_waits_and_moves_exactly_like_move_now():
    """The lock-step thread (what the sim node runs for dexwm-eval --through-ros) and move_now (what
    the in-process evaluation runs) take the same start to the same state, bit for bit."""
    from dexwm_sim import tasks
    from dexwm_sim.scene import SimEnv

    size = (160, 120)
    env = SimEnv(render_size=size)
    in_process = SimRunner(RunnerConfig(task="reach-grasp", seed=7, lockstep=True, image_size=size), env=env)
    tasks.make_goal(env, env.reset("reach-grasp", 7), sizes=(size,))
    frames = []
    threaded = SimRunner(RunnerConfig(task="reach-grasp", seed=7, lockstep=True, real_time_factor=4.0, image_size=size,
                                      image_rate_hz=20.0), on_frame=frames.append)
    try:
        assert threaded.start().ok
        still = threaded.snapshot()
        time.sleep(0.3)
        assert threaded.snapshot().stamp == still.stamp == env.time      # no command: time stands still
        assert len(frames) >= 2                                           # ... while the camera goes on
        assert np.array_equal(threaded.snapshot().position, env.joint_positions())
        rng = np.random.default_rng(0)
        for _ in range(3):
            target = np.clip(env.joint_positions() + rng.normal(0.0, 0.15, 23), env.lower, env.upper)
            done = in_process.move_now(target[:7], target[7:], 0.5, 1.0, 0.05)
            arm = threaded.command("arm", target[:7], [0.5], tolerance=0.05, time_limit=1.0)
            hand = threaded.command("hand", target[7:], [0.5], tolerance=0.05, time_limit=1.0)
            wait_for(lambda: not (arm.under_way or hand.under_way), 10, what="the lock-step move")
            assert (arm.status, hand.status) == (done["arm"].status, done["hand"].status)
            assert arm.status in (REACHED, TIMED_OUT)
            time.sleep(0.1)
            snap = threaded.snapshot()
            assert snap.stamp == env.time > still.stamp
            assert np.array_equal(snap.position, env.joint_positions())
        still_world = env.render(*size)                                   # the camera shows the same world
        wait_for(lambda: np.array_equal(frames[-1].rgb, still_world), 10, what="a frame of the still world")
        with pytest.raises(RuntimeError):                                 # its thread owns the physics
            threaded.move_now(np.zeros(7), np.zeros(16), 0.5, 1.0, 0.05)
    finally:
        threaded.close()
        env.close()


def test_move_now_through_waypoints_ends_at_the_last_one_a_duration_apart_each():
    """move_now with N waypoints per part (dexwm-bench optimiser executes a whole plan open loop):
    one command, the step cap checked from the measured joints to the first point and between
    points, the last point reached, and about N durations of simulated time spent."""
    from dexwm_sim.scene import SimEnv

    size = (160, 120)
    env = SimEnv(render_size=size)
    runner = SimRunner(RunnerConfig(task="reach-grasp", seed=7, lockstep=True, image_size=size), env=env)
    try:
        env.reset("reach-grasp", 7)
        q0, t0 = env.joint_positions(), env.time
        steps = np.clip(q0 + np.outer([1, 2, 3], np.r_[np.full(7, 0.1), np.full(16, 0.05)]), env.lower, env.upper)
        done = runner.move_now(steps[:, :7], steps[:, 7:], 0.3, 1.5, 0.05)
        assert (done["arm"].status, done["hand"].status) == (REACHED, REACHED)
        assert np.max(np.abs(env.joint_positions() - steps[-1])) < 0.05
        assert 0.9 - 1e-9 <= env.time - t0 < 1.5
        far = env.joint_positions()[None].repeat(2, 0)
        far[1, 0] += 0.6                                       # a second point beyond the per-step cap
        with pytest.raises(ValueError, match="max_joint_step"):
            runner.move_now(far[:, :7], far[:, 7:], 0.3, 1.0, 0.05)
    finally:
        env.close()


def test_a_hold_judges_the_rule_over_simulated_time_exactly_like_the_in_process_hold():
    """hold() (what the sim node's /sim/hold runs for dexwm-eval --through-ros) lets simulated time
    pass with the last targets kept, and judges the success rule at every control step of it, as the
    in-process evaluation's hold loop does: same steps, same verdict, same state."""
    from dexwm_sim import tasks
    from dexwm_sim.scene import SimEnv

    size = (160, 120)
    env = SimEnv(render_size=size)
    in_process = SimRunner(RunnerConfig(task="reach", seed=3, lockstep=True, image_size=size), env=env)
    goal = tasks.make_goal(env, env.reset("reach", 3), sizes=(size,))
    assert goal.solved and goal.joints is not None
    threaded = SimRunner(RunnerConfig(task="reach", seed=3, lockstep=True, real_time_factor=4.0, image_size=size))
    try:
        assert threaded.start().ok
        assert not threaded.hold(0.0).ok and not threaded.hold(float("nan")).ok
        verdicts = []
        for target in (goal.joints, env.joint_positions() + np.r_[0.3, np.zeros(22)]):   # at the goal, then off it
            for _ in range(4):      # capped steps toward the target
                step = np.clip(target - env.joint_positions(), -0.4, 0.4)
                point = np.clip(env.joint_positions() + step, env.lower, env.upper)
                in_process.move_now(point[:7], point[7:], 0.5, 1.0, 0.05)
                arm = threaded.command("arm", point[:7], [0.5], tolerance=0.05, time_limit=1.0)
                hand = threaded.command("hand", point[7:], [0.5], tolerance=0.05, time_limit=1.0)
                wait_for(lambda: not (arm.under_way or hand.under_way), 10, what="the lock-step move")
            held = []
            for _ in range(int(round(1.0 / env.control_dt))):
                env.advance(env.control_dt)
                held.append(bool(env.status.success_now))
            result = threaded.hold(1.0)
            assert result.ok, result.message
            assert result.control_steps == len(held) and result.held == all(held)
            time.sleep(0.1)
            assert threaded.snapshot().stamp == env.time
            assert np.array_equal(threaded.snapshot().position, env.joint_positions())
            verdicts.append(result.held)
        assert verdicts == [True, False]
    finally:
        threaded.close()
        env.close()
