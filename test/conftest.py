import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))

# Every process started from the tests (and rclpy inside the test process) stays on this host.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("MUJOCO_GL", "egl")

from rosutil import ros_env, unique_domain_id  # noqa: E402


@pytest.fixture
def domain_id() -> int:
    """A test-unique ROS_DOMAIN_ID; also set in this process for in-process rclpy clients."""
    did = unique_domain_id()
    old = os.environ.get("ROS_DOMAIN_ID")
    os.environ["ROS_DOMAIN_ID"] = str(did)
    yield did
    if old is None:
        os.environ.pop("ROS_DOMAIN_ID", None)
    else:
        os.environ["ROS_DOMAIN_ID"] = old


@pytest.fixture
def node_env(domain_id):
    """Environment for node subprocesses on the test's own domain."""
    return ros_env(domain_id)


@pytest.fixture
def rclpy_context(domain_id):
    """An initialised rclpy context on the test's domain, shut down afterwards."""
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """An untrained world model saved to a file: for tests of the planning machinery, not of planning."""
    import torch

    from dexwm_planner.world_model import DexWM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wm") / "random.pt"
    DexWM().save(str(path))
    return path
