"""Helpers for tests that run real nodes in separate processes over Fast DDS on this host only."""
from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from dexwm_ros.bringup import default_signals, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

_counter = itertools.count()


def unique_domain_id() -> int:
    """A ROS_DOMAIN_ID in 1..100 unlikely to collide with another test run on this host.

    Derived from the pid and a per-process counter so that parallel pytest runs (several developers
    or CI jobs on one machine) do not see each other's nodes. The workers of one pytest-xdist run
    draw from disjoint slices of the range, so they never share a domain.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")          # "gw0", "gw1", ... under xdist
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    width = 100 // max(1, min(workers, 100))
    index = int(worker[2:]) % (100 // width) if worker.startswith("gw") else 0
    return 1 + index * width + (os.getpid() * 7 + next(_counter) * 13) % width


def ros_env(domain_id: int | None = None, **extra: str) -> dict[str, str]:
    """Environment for a process that uses DDS: localhost discovery only, a test-unique domain."""
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(unique_domain_id() if domain_id is None else domain_id)
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    env["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"    # a hung process writes its stacks on SIGABRT (process() below)
    env.setdefault("MUJOCO_GL", "egl")
    env.update(extra)
    return env


def node_command(executable: str, *ros_args: str) -> list[str]:
    """Command that runs an installed node executable (lib/dexwm_ros/NAME) with --ros-args."""
    exe = VENV_BIN.parent / "lib" / "dexwm_ros" / executable
    cmd = [sys.executable, str(exe)]
    if ros_args:
        cmd += ["--ros-args", *ros_args]
    return cmd


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log_path: Path | None = None, stop_timeout: float = 10.0):
    """Start a process in its own session; on exit stop its group (SIGINT, then SIGABRT for the
    stacks of a process that hangs, then SIGKILL: dexwm_ros.bringup.stop_process_group)."""
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    # SIGINT at its default in the child even when this run was started as a background job (which
    # inherits it ignored): the stop below relies on it.
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=str(ROOT), preexec_fn=default_signals)
    try:
        yield proc
    finally:
        stop_process_group(proc, stop_timeout)
        if log_path:
            out.close()


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll predicate() until it returns a truthy value; raise TimeoutError naming what we waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class SpinThread:
    """In-process test nodes spun by ``executor`` in a daemon thread. ``close`` shuts the executor
    down and waits until the thread has left ``spin_once`` before it destroys ``entities`` (action
    clients ...) and the nodes: destroyed under a running spin, they raise InvalidHandle there."""

    def __init__(self, executor, *nodes):
        self.executor, self.nodes = executor, nodes
        for node in nodes:
            executor.add_node(node)
        self.thread = threading.Thread(target=executor.spin, daemon=True)
        self.thread.start()

    def close(self, *entities):
        self.executor.shutdown()
        self.thread.join(timeout=10)
        for entity in entities:
            entity.destroy()
        for node in self.nodes:
            node.destroy_node()
