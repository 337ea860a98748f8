"""CEM optimizer: finds known minima; samples always respect joint limits and the per-step cap."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dexwm_planner.cem import CEM, CEMConfig, CPU, DOF, PAPER, project

LOWER = np.r_[np.full(7, -2.0), np.full(16, -0.2)]
UPPER = np.r_[np.full(7, 2.0), np.full(16, 1.5)]
# The paper's search with 0.3 rad caps on every joint: the seeded searches below were sized for them.
PAPER_CAPPED = PAPER.with_(max_step_hand=0.3)


def quadratic(target):
    target = np.asarray(target)

    def cost(samples):
        # (N, T, D): every step should be at the target
        return ((samples - target) ** 2).sum(axis=(1, 2))
    return cost


def test_finds_minimum_of_known_cost():
    rng = np.random.default_rng(0)
    q0 = rng.uniform(LOWER + 0.3, UPPER - 0.3)
    target = q0 + rng.uniform(-0.15, 0.15, DOF)          # reachable in the first step
    cem = CEM(PAPER_CAPPED, LOWER, UPPER)
    start_cost = quadratic(target)(np.repeat(q0[None, None], 3, axis=1))[0]
    result = cem.optimize(quadratic(target), q0, rng=np.random.default_rng(1))
    assert result.plan.shape == (3, DOF)
    # 69 decision variables: CEM gets within a few percent of the optimum, not to it
    assert result.cost < 0.1 * start_cost
    assert np.abs(result.plan - target).mean() < 0.3 * np.abs(q0 - target).mean()
    # the best cost never gets worse over iterations
    assert all(b <= a + 1e-12 for a, b in zip(result.cost_history, result.cost_history[1:]))
    assert result.evaluations == PAPER.samples * PAPER.iterations


def test_kept_elites_cost_no_evaluation_and_are_ranked_with_the_fresh_samples():
    """keep_elites carries the previous iteration's elites, with their costs, into the next ranking:
    the evaluation count is that of plain CEM (no kept elite is evaluated again), and an elite that
    no later sample beats keeps steering the distribution."""
    rng = np.random.default_rng(3)
    q0 = rng.uniform(LOWER + 0.3, UPPER - 0.3)
    target = q0 + rng.uniform(-0.15, 0.15, DOF)
    base = CPU.with_(max_step_arm=0.3)
    evaluated = []

    def counting(samples):
        evaluated.append(samples.copy())
        return quadratic(target)(samples)

    kept = CEM(base.with_(keep_elites=base.elites), LOWER, UPPER)
    result = kept.optimize(counting, q0, rng=np.random.default_rng(4))
    assert result.evaluations == base.samples * base.iterations == sum(len(e) for e in evaluated)
    assert all(b <= a + 1e-12 for a, b in zip(result.cost_history, result.cost_history[1:]))

    # Only the first iteration's samples are any good: with every elite kept, the final distribution
    # is still that of the first iteration's elites; plain CEM follows its last (poor) samples.
    def first_call_only(samples):
        evaluated.append(samples.copy())
        return quadratic(target)(samples) + (0.0 if len(evaluated) == 1 else 1e6)

    for cem, stays in ((kept, True), (CEM(base, LOWER, UPPER), False)):
        evaluated.clear()
        result = cem.optimize(first_call_only, q0, rng=np.random.default_rng(5))
        first = evaluated[0]
        elites = first[np.argsort(quadratic(target)(first), kind="stable")[: base.elites]]
        assert np.allclose(result.mean, cem.project(elites.mean(axis=0), q0)) == stays
    with pytest.raises(ValueError, match="keep_elites"):
        CPU.with_(keep_elites=CPU.elites + 1)
    with pytest.raises(ValueError, match="keep_elites"):
        CPU.with_(keep_elites=-1)


def test_minimum_outside_limits_ends_on_the_limit():
    q0 = np.zeros(DOF)
    target = np.r_[np.full(7, 0.2), np.full(16, -1.0)]    # hand target below its lower limit (-0.2)
    result = CEM(PAPER_CAPPED, LOWER, UPPER).optimize(quadratic(target), q0, rng=np.random.default_rng(2))
    assert np.all(result.plan >= LOWER - 1e-12) and np.all(result.plan <= UPPER + 1e-12)
    # the hand is pushed onto its lower limit and held there (the cost wants it further)
    assert np.mean(result.plan[:, 7:] < -0.1) > 0.8
    assert np.abs(result.plan[-1, :7] - 0.2).mean() < 0.1


def test_step_cap_limits_progress_toward_far_target():
    cfg = CEMConfig(samples=128, elites=8, iterations=5, max_step_arm=0.1, max_step_hand=0.05)
    q0 = np.zeros(DOF)

    def cost(samples):  # only joint 0 matters: its optimum (1.0) is beyond three capped steps
        return ((samples[..., 0] - 1.0) ** 2).sum(axis=1)
    result = CEM(cfg, LOWER, UPPER).optimize(cost, q0, rng=np.random.default_rng(3))
    steps = np.diff(np.vstack([q0, result.plan]), axis=0)
    assert np.all(np.abs(steps[:, :7]) <= 0.1 + 1e-12)
    assert np.all(np.abs(steps[:, 7:]) <= 0.05 + 1e-12)
    # a cap-limited optimum walks the whole cap toward the target
    assert result.plan[-1, 0] > 0.25


def test_warm_start_is_used():
    cem = CEM(CEMConfig(samples=16, elites=4, iterations=1, std_arm=1e-6, std_hand=1e-6, min_std=0), LOWER, UPPER)
    q0 = np.zeros(DOF)
    mean = np.full((2, DOF), 0.1)
    std = np.full((2, DOF), 1e-9)
    result = cem.optimize(quadratic(np.zeros(DOF)), q0, horizon=2, mean=mean, std=std,
                          rng=np.random.default_rng(0))
    assert np.allclose(result.plan, 0.1, atol=1e-6)
    with pytest.raises(ValueError, match="mean must have shape"):
        cem.optimize(quadratic(np.zeros(DOF)), q0, horizon=3, mean=mean)


def test_nan_costs_are_never_elites():
    cem = CEM(CEMConfig(samples=32, elites=4, iterations=2), LOWER, UPPER)

    def cost(samples):
        c = ((samples - 0.1) ** 2).sum(axis=(1, 2))
        c[::2] = np.nan
        return c
    result = cem.optimize(cost, np.zeros(DOF), rng=np.random.default_rng(0))
    assert np.isfinite(result.cost)


def test_bad_input_is_rejected():
    cem = CEM(CPU, LOWER, UPPER)
    with pytest.raises(ValueError, match="shape"):
        cem.optimize(quadratic(np.zeros(DOF)), np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        cem.optimize(quadratic(np.zeros(DOF)), np.full(DOF, np.nan))
    with pytest.raises(ValueError, match="elites"):
        CEMConfig(samples=4, elites=5)
    with pytest.raises(ValueError, match="one cost per sample"):
        cem.optimize(lambda s: np.zeros(3), np.zeros(DOF))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), outside=st.booleans(), scale=st.floats(0.01, 5.0))
def test_projection_never_violates_limits_or_cap(seed, outside, scale):
    rng = np.random.default_rng(seed)
    cap = np.r_[np.full(7, 0.3), np.full(16, 0.1)]
    q0 = rng.uniform(LOWER, UPPER)
    if outside:  # a measured position past a limit (sensor noise or a user pushing the arm)
        q0 = q0 + rng.choice([-1, 1], DOF) * rng.uniform(0, 1.0, DOF) * 2
    samples = q0 + rng.normal(0, scale, (20, 4, DOF))
    out = project(samples, q0, LOWER, UPPER, cap)
    prev = np.broadcast_to(q0, (20, DOF))
    for t in range(4):
        step = out[:, t] - prev
        assert np.all(np.abs(step) <= cap + 1e-12)
        inside = (prev >= LOWER) & (prev <= UPPER)
        # from inside the limits a step stays inside; from outside it never moves further out
        assert np.all(np.where(inside, (out[:, t] >= LOWER - 1e-12) & (out[:, t] <= UPPER + 1e-12), True))
        dist_prev = np.maximum(LOWER - prev, 0) + np.maximum(prev - UPPER, 0)
        dist_now = np.maximum(LOWER - out[:, t], 0) + np.maximum(out[:, t] - UPPER, 0)
        assert np.all(dist_now <= dist_prev + 1e-12)
        prev = out[:, t]


def test_a_proposal_is_a_candidate_of_every_iteration_and_ranked_like_any_sample():
    """A plan offered as a proposal is evaluated in every iteration (projected under the limits and
    the step cap): with a minimum that the sampling noise cannot find, it wins; with a bad proposal
    the CEM ends where it would have without one."""
    rng = np.random.default_rng(3)
    q0 = rng.uniform(LOWER + 0.5, UPPER - 0.5)
    target = q0 + 0.1
    tight = CEMConfig(samples=8, elites=2, iterations=2, std_arm=1e-3, std_hand=1e-3)
    cem = CEM(tight, LOWER, UPPER)
    offered = np.repeat(target[None], 3, axis=0)
    result = cem.optimize(quadratic(target), q0, rng=np.random.default_rng(0), proposal=offered)
    np.testing.assert_allclose(result.plan, offered, atol=1e-9)
    assert result.cost < 1e-12
    # Beyond the step cap: the proposal is cut to what the cap allows, as any sample.
    far = np.repeat((q0 + 1.0)[None], 3, axis=0)
    capped = cem.optimize(quadratic(q0 + 1.0), q0, rng=np.random.default_rng(0), proposal=far)
    assert np.abs(capped.plan[0] - q0).max() <= max(tight.max_step_arm, tight.max_step_hand) + 1e-9
    # A proposal worse than the samples changes nothing.
    plain = cem.optimize(quadratic(q0), q0, rng=np.random.default_rng(0))
    bad = cem.optimize(quadratic(q0), q0, rng=np.random.default_rng(0), proposal=np.repeat((q0 + 0.2)[None], 3, 0))
    np.testing.assert_allclose(bad.plan, plain.plan)
    with pytest.raises(ValueError):
        cem.optimize(quadratic(q0), q0, proposal=np.zeros((2, DOF)))
