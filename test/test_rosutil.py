"""The tests' own DDS helper: the workers of one pytest-xdist run never share a ROS domain."""
import rosutil


def test_xdist_workers_draw_domains_from_disjoint_slices(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    drawn = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        drawn[worker] = {rosutil.unique_domain_id() for _ in range(200)}
    assert drawn["gw0"] <= set(range(1, 51)) and drawn["gw1"] <= set(range(51, 101))
    assert len(drawn["gw0"]) > 10 and len(drawn["gw1"]) > 10          # still spread within each slice
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    assert {rosutil.unique_domain_id() for _ in range(200)} <= set(range(1, 101))   # one process: the whole range
