"""Receding-horizon MPC: shrinking horizon with warm starts, closed loop on the linear test model."""
import numpy as np
import pytest

from dexwm_planner.cem import CEMConfig, DOF
from dexwm_planner.mpc import MPCConfig, MPCPlanner, NoGoalError
from test_planner_models import LinearTestModel, delta_actions

LOWER = np.r_[np.full(7, -2.0), np.full(16, -0.3)]
UPPER = np.r_[np.full(7, 2.0), np.full(16, 1.5)]
SMALL = CEMConfig(samples=64, elites=8, iterations=4, max_step_arm=0.15, max_step_hand=0.1)


def make_planner(**kw):
    model = LinearTestModel()
    return model, MPCPlanner(model, delta_actions, LOWER, UPPER, MPCConfig(cem=SMALL, **kw), seed=0)


def test_horizon_shrinks_then_restarts_with_warm_start():
    model, planner = make_planner()
    q = np.zeros(DOF)
    planner.set_goal(model.render(np.full(DOF, 0.2)))
    horizons, plans = [], []
    for _ in range(4):
        planner.observe(model.render(q))
        step = planner.step(q)
        horizons.append(step.horizon)
        plans.append(step.plan)
        assert step.plan.shape == (step.horizon, DOF)
        assert np.array_equal(step.command, step.plan[0])
        q = step.command
    assert horizons == [3, 2, 1, 3]
    # without noise the warm-started mean is exactly the previous plan's remainder
    _, planner = make_planner()
    planner.cem.config = SMALL.with_(iterations=1)
    planner.set_goal(model.render(np.full(DOF, 0.2)))
    planner.observe(model.render(np.zeros(DOF)))
    first = planner.step(np.zeros(DOF))
    mean, std = planner._warm
    assert mean.shape == (2, DOF) and std.shape == (2, DOF)


def test_constant_horizon_when_not_shrinking():
    model, planner = make_planner(shrink_horizon=False)
    planner.set_goal(model.render(np.full(DOF, 0.1)))
    q = np.zeros(DOF)
    for _ in range(3):
        planner.observe(model.render(q))
        step = planner.step(q)
        assert step.horizon == 3
        q = step.command


def test_closed_loop_reaches_goal_and_respects_limits_and_cap():
    model, planner = make_planner()
    rng = np.random.default_rng(5)
    q = np.zeros(DOF)
    q_goal = np.clip(rng.uniform(-0.4, 0.4, DOF), LOWER, UPPER)
    planner.set_goal(model.render(q_goal))
    costs = []
    for _ in range(9):
        planner.observe(model.render(q), q)
        step = planner.step(q)
        cap = np.r_[np.full(7, 0.15), np.full(16, 0.1)]
        assert np.all(np.abs(step.command - q) <= cap + 1e-12)
        assert np.all((step.command >= LOWER) & (step.command <= UPPER))
        costs.append(step.current_cost)
        q = step.command  # the "robot" reaches the target exactly
    assert costs[-1] < 0.2 * costs[0]
    assert len(planner._context) == 8  # context keeps the last 8 frames
    assert planner.context_actions().shape == (7, 132)


def test_planning_without_goal_or_observation_fails_clearly():
    model, planner = make_planner()
    with pytest.raises(NoGoalError, match="no goal"):
        planner.step(np.zeros(DOF))
    planner.set_goal(model.render(np.zeros(DOF)))
    with pytest.raises(RuntimeError, match="no observation"):
        planner.step(np.zeros(DOF))
    with pytest.raises(ValueError, match="RGB uint8"):
        planner.set_goal(np.zeros((8, 8), dtype=np.uint8))


def test_should_stop_cuts_optimisation_short():
    model, planner = make_planner()
    planner.set_goal(model.render(np.full(DOF, 0.2)))
    planner.observe(model.render(np.zeros(DOF)))
    model.rollout_calls = 0
    step = planner.step(np.zeros(DOF), should_stop=lambda: True)
    assert step.stopped
    assert len(step.cost_history) == 1


def test_the_mean_is_executed_when_asked_and_the_best_plan_otherwise():
    """execute="mean" (the paper's planner): the command is the CEM's final sampling mean, and the
    reported cost is that plan's own; "best": the lowest-cost sample."""
    model = LinearTestModel()
    q = np.zeros(DOF)
    steps = {}
    for execute in ("best", "mean"):
        planner = MPCPlanner(model, delta_actions, LOWER, UPPER, MPCConfig(cem=SMALL, execute=execute), seed=0)
        planner.set_goal(model.render(np.full(DOF, 0.1)))
        planner.observe(model.render(q))
        steps[execute] = (planner.step(q), planner)
    best, (mean, planner) = steps["best"][0], steps["mean"]
    # The executed plan is the final mean, whose remainder warm-starts the next replan.
    np.testing.assert_allclose(mean.plan[1:], planner._warm[0])
    assert not np.allclose(best.command, mean.command)
    own = planner.objective.terms(planner.context, q, mean.plan[None]).total[0]
    assert mean.cost == pytest.approx(own)
    with pytest.raises(ValueError, match="execute"):
        MPCConfig(execute="median")
