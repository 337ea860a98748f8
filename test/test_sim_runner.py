"""SimRunner (the ROS-free core of the sim node): real-time thread, waypoint commands, stop, reset."""
import time

import numpy as np
import pytest
from rosutil import wait_for

from dexwm_sim.runner import DONE, PREEMPTED, STOPPED, RunnerConfig, SimRunner

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
    first = runner.command("arm", q0 + np.r_[0.8, np.zeros(6)])
    time.sleep(0.05)
    second = runner.command("arm", q0 + np.r_[-1.5, np.zeros(6)])
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
    with pytest.raises(ValueError, match="joint limits"):
        runner.command("arm", np.full(7, 5.0))
    with pytest.raises(ValueError, match="N x 16"):
        runner.command("hand", np.zeros(5))
    cmd = runner.command("hand", np.full(16, 9.0))
    assert "clamped" in cmd.note
    res = runner.reset("juggle", 1)
    assert not res.ok and "unknown task" in res.message
    res = runner.reset("grasp", 4)
    assert res.ok and res.episode.task == "grasp"
    wait_for(lambda: runner.episode_status()[0].task == "grasp", 5, what="the new episode")


def test_a_done_command_superseded_before_it_is_reported_ends_preempted(runner):
    """A server may not have reported a DONE command yet when the next one arrives: it must end."""
    q0 = runner.snapshot().position[:7]
    first = runner.command("arm", q0 + np.r_[0.02, np.zeros(6)])
    wait_for(lambda: first.status == DONE, 10, what="the short move")
    second = runner.command("arm", q0)
    wait_for(lambda: first.status == PREEMPTED, 5, what="the superseded command to end")
    wait_for(lambda: second.status == DONE, 10, what="the second move")
