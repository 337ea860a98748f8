"""dexwm-record against the simulated graph: the episode it writes is training data for dexwm-train."""
import subprocess
import sys
from pathlib import Path

import numpy as np

from rosutil import node_command, process, wait_for

RECORD = [sys.executable, str(Path(sys.prefix) / "bin" / "dexwm-record")]


def test_record_a_simulated_episode_readable_by_the_training_reader(node_env, tmp_path):
    from dexwm_planner.datasets import read_sim_episode
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics

    out = tmp_path / "episodes"
    with process(node_command("sim", "-p", "task:=reach", "-p", "seed:=3"), node_env, tmp_path / "sim.log"):
        # The sim node publishes its default posture until the seeded episode is set up; the recorder
        # (which starts in about a second) must only see the episode.
        wait_for(lambda: "simulation running" in (tmp_path / "sim.log").read_text(), 90, what="the sim episode")
        r = subprocess.run(RECORD + ["--out", str(out), "--sim-camera", "--duration", "6"], env=node_env,
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + (tmp_path / "sim.log").read_text()[-2000:]
    files = sorted(out.glob("episode_*.h5"))
    assert [f.name for f in files] == ["episode_000000.h5"]

    episode = read_sim_episode(str(files[0]), kinematics=RobotKinematics.from_description())
    frames = episode.load_frames()
    assert frames.shape[1:] == (224, 224, 3) and len(frames) >= 5
    assert frames.std() > 10  # a real rendered scene, not a blank image
    import h5py

    with h5py.File(files[0]) as f:
        q = f["joints"][:]
        K = f["camera/intrinsics"][:]
        T = f["camera/extrinsics"][:]
        stamps = f["timestamps"][:]
    kin = RobotKinematics.from_description()
    assert q.shape[1] == 23 and np.all(np.isfinite(q))
    assert np.all(q >= kin.lower - 1e-3) and np.all(q <= kin.upper + 1e-3)
    assert np.max(np.ptp(q, axis=0)) < 0.02  # nobody commands the robot: it holds its start posture
    assert np.all(np.diff(stamps) > 0)
    cam = HeadCamera()
    np.testing.assert_allclose(T, cam.world_to_camera)
    # The centre-cropped 224 view of the 640x480 render has the camera's own 224x224 intrinsics.
    np.testing.assert_allclose(K, cam.intrinsics(224, 224), atol=0.6)
    # Keypoints come from the joints by forward kinematics: the palm projects into the image.
    uv, _, visible = cam.project(episode.keypoints_world[0, 0], 224, 224)
    assert visible


def test_record_refuses_a_bad_extrinsics_file(node_env, tmp_path):
    bad = tmp_path / "calib.yaml"
    bad.write_text("[[1, 0, 0], [0, 1, 0]]\n")
    r = subprocess.run(RECORD + ["--out", str(tmp_path / "o"), "--extrinsics", str(bad), "--duration", "1"],
                       env=node_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "4x4" in r.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
