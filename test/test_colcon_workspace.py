"""The lab path: the package builds with colcon in a workspace of its own (--symlink-install, the
variant whose node scripts used to be non-executable links), and a node started from that install
finds the shipped model in the install's own share/ directory with no extra arguments.

colcon comes from PyPI (requirements.txt); the ROS 2 build tools come from the venv's ROS wheels, as
in `make setup`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rosutil import ROOT, process, ros_env, wait_for

pytestmark = pytest.mark.timeout(600)
VENV = Path(sys.prefix)


def _copy_sources(dest: Path) -> None:
    """The files git tracks (or would track), as a clone would have them: no .venv, no build tree."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def test_colcon_symlink_install_builds_and_a_node_starts_from_it(tmp_path, domain_id):
    colcon = shutil.which("colcon", path=str(VENV / "bin"))
    assert colcon, "colcon is pinned in requirements.txt (make setup installs it)"
    ws = tmp_path / "ws"
    _copy_sources(ws / "src" / "dexwm_ros")
    env = dict(os.environ, PATH=f"{VENV / 'bin'}:{os.environ['PATH']}", CMAKE_PREFIX_PATH=str(VENV),
               AMENT_PREFIX_PATH=str(VENV))
    build = subprocess.run([colcon, "build", "--symlink-install", "--event-handlers", "console_direct-",
                            "--cmake-args", f"-DPython3_EXECUTABLE={VENV / 'bin' / 'python'}", "-DBUILD_TESTING=OFF",
                            "-G", "Ninja"], cwd=ws, env=env, capture_output=True, text=True, timeout=400)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    prefix = ws / "install" / "dexwm_ros"

    # every node script is an executable (a link to an executable file)
    for node in ("sim", "camera", "franka", "allegro", "planner", "teleop"):
        exe = prefix / "lib" / "dexwm_ros" / node
        assert exe.exists() and os.access(exe, os.X_OK), f"{exe} is not executable"
    assert (prefix / "share" / "dexwm_ros" / "models" / "dexwm_sim_objects.pt").is_file()

    # the workspace's own environment: what `source install/setup.sh` gives, without a shell
    site = next(prefix.glob("lib/python3*/site-packages"))
    node_env = ros_env(domain_id, AMENT_PREFIX_PATH=f"{prefix}:{VENV}", PYTHONPATH=str(site),
                       LD_LIBRARY_PATH=f"{prefix / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    node_env.pop("DEXWM_CHECKPOINT", None)
    log = tmp_path / "planner.log"
    # run the link itself (its #! line is the venv's Python), from a directory outside the checkout
    with process([str(prefix / "lib" / "dexwm_ros" / "planner")], node_env, log) as proc:
        wait_for(lambda: "planner ready" in log.read_text() or proc.poll() is not None, 120,
                 what="the planner started from the workspace")
        text = log.read_text()
        assert proc.poll() is None and "planner ready" in text, text[-3000:]
    # the model it loaded is the install's copy, not one from the checkout
    check = subprocess.run([sys.executable, "-c", "from dexwm_planner.world_model import default_checkpoint; "
                            "print(default_checkpoint())"], env=node_env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    assert Path(check.stdout.strip()) == prefix / "share" / "dexwm_ros" / "models" / "dexwm_sim_objects.pt"
    # the tools of that prefix find its node executables
    tools = subprocess.run([sys.executable, "-c", "from dexwm_ros.bringup import node_executable; "
                            "print(node_executable('sim'))"], env=node_env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert Path(tools.stdout.strip()) == prefix / "lib" / "dexwm_ros" / "sim", tools.stderr[-2000:]
