"""dexwm-import-bag on rosbag2 bags written by `rosbags` (sqlite3 and mcap): the episodes it writes are
resampled to the model's frame step, hold the right frames and joints, and load through the training
reader; dropped topics, gaps and unsorted stamps are handled as documented."""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from bag_fixtures import arm_q, frame_index, hand_q, write_bag

IMPORT = [sys.executable, str(Path(sys.prefix) / "bin" / "dexwm-import-bag")]
pytestmark = pytest.mark.timeout(120)


def _read(path: Path) -> dict:
    with h5py.File(path) as f:
        return {"frames": f["frames"][:], "timestamps": f["timestamps"][:], "joints": f["joints"][:],
                "K": f["camera/intrinsics"][:], "T": f["camera/extrinsics"][:], "attrs": dict(f.attrs)}


def _check_against_recording(ep: dict, camera_hz: float, rate_hz: float = 5.0):
    """Every stored frame is the recorded frame nearest its tick, with the joints of its own stamp."""
    index = np.array([frame_index(v) for v in ep["frames"][:, 112, 112, 0]])
    assert np.all(ep["frames"][:, :, :, 1] == 100) and np.all(ep["frames"][:, :, :, 2] == 200)
    t = index / camera_hz   # the frames' stamps, seconds since the bag's start
    # Evenly spaced ticks from the first frame; each frame within a quarter step of its tick.
    np.testing.assert_allclose(ep["timestamps"], np.arange(len(t)) / rate_hz, atol=1e-6)
    assert np.all(np.abs(t - (t[0] + ep["timestamps"])) <= 0.25 / rate_hz + 1e-6)
    expected = np.array([np.concatenate([arm_q(x), hand_q(x)]) for x in t])
    np.testing.assert_allclose(ep["joints"], expected, atol=1e-9)   # interpolated by name, index-first order


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_import_writes_training_episodes(storage, tmp_path):
    from dexwm_planner.datasets import load_episodes, read_sim_episode
    from dexwm_robot.camera import HeadCamera
    from dexwm_robot.kinematics import RobotKinematics

    camera_hz = 12.0   # frames fall between ticks and between joint-state messages
    bag = write_bag(tmp_path / "bag", storage=storage, seconds=4.0, camera_hz=camera_hz, image_wh=(640, 480))
    assert any(p.suffix == {"sqlite3": ".db3", "mcap": ".mcap"}[storage] for p in bag.iterdir())
    out = tmp_path / "episodes"
    r = subprocess.run(IMPORT + [str(bag), "--out", str(out), "--sim-camera"], capture_output=True, text=True,
                       timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(out.glob("episode_*.h5"))
    assert [f.name for f in files] == ["episode_000000.h5"]
    ep = _read(files[0])
    assert ep["frames"].shape == (20, 224, 224, 3) and ep["frames"].dtype == np.uint8
    _check_against_recording(ep, camera_hz)
    np.testing.assert_allclose(ep["T"], HeadCamera().world_to_camera)
    # camera_info of the 640x480 frames (f = 576, centre at the middle) seen through the crop: scale
    # 224/480, 299 columns of which 37 are cut on the left; pixel centres at integers.
    s = 224 / 480
    np.testing.assert_allclose(ep["K"], [[576 * s, 0, 320 * s - 0.5 - 37], [0, 576 * s, 240 * s - 0.5], [0, 0, 1]],
                               atol=1e-9)
    assert ep["attrs"]["control_hz"] == 5.0 and ep["attrs"]["source"] == "rosbag2:bag"

    episode = read_sim_episode(str(files[0]), kinematics=RobotKinematics.from_description())
    assert len(episode) == 20 and episode.dt == pytest.approx(0.2)
    assert episode.load_frames().shape == (20, 224, 224, 3)
    episodes, skipped = load_episodes(str(out), target_dt=0.2)
    assert len(episodes) == 1 and skipped == 0


def test_unsorted_stamps_import_like_sorted_ones(tmp_path):
    from dexwm_ros.bag_import import main

    for name, unsorted in (("sorted", False), ("unsorted", True)):
        bag = write_bag(tmp_path / name, storage="mcap", camera_hz=15.0, unsorted=unsorted, seed=3)
        assert main([str(bag), "--out", str(tmp_path / f"out_{name}"), "--sim-camera"]) == 0
    a, b = (_read(tmp_path / f"out_{n}" / "episode_000000.h5") for n in ("sorted", "unsorted"))
    for key in ("frames", "timestamps", "joints", "K"):
        np.testing.assert_array_equal(a[key], b[key])
    _check_against_recording(b, 15.0)


def test_a_dropped_topic_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    from dexwm_ros.bag_import import main

    bag = write_bag(tmp_path / "bag", topics=("image", "arm"))
    assert main([str(bag), "--out", str(tmp_path / "out"), "--sim-camera"]) == 2
    err = capsys.readouterr().err
    assert "no messages on /allegro/joint_states" in err and "/franka/joint_states" in err
    assert not (tmp_path / "out").exists()


def test_a_gap_splits_the_bag_into_episodes(tmp_path, capsys):
    from dexwm_planner.datasets import load_episodes
    from dexwm_ros.bag_import import main

    # The arm's joint states stop for 0.6 s, the camera for 0.5 s later on, the hand starts late.
    bag = write_bag(tmp_path / "bag", seconds=6.0, camera_hz=15.0,
                    gaps={"arm": (1.0, 1.6), "image": (3.3, 3.8), "hand": (0.0, 0.5)})
    out = tmp_path / "out"
    assert main([str(bag), "--out", str(out), "--sim-camera"]) == 0
    report = capsys.readouterr().out
    assert "3 episode(s)" in report
    assert "/allegro/joint_states starts late" in report
    assert "no /franka/joint_states within 0.1 s" in report and "no camera frame" in report
    eps = [_read(p) for p in sorted(out.glob("episode_*.h5"))]
    assert [len(e["frames"]) for e in eps] == [3, 8, 11]   # 0.53-0.93 s, 1.73-3.13 s, 3.93-5.93 s
    for e in eps:
        _check_against_recording(e, 15.0)
    episodes, skipped = load_episodes(str(out))
    assert len(episodes) == 3 and skipped == 0


def test_the_camera_slower_than_the_frame_step_is_refused(tmp_path, capsys):
    from dexwm_ros.bag_import import main

    bag = write_bag(tmp_path / "bag", camera_hz=2.0, camera_info=False)
    assert main([str(bag), "--out", str(tmp_path / "out"), "--extrinsics", str(_identity(tmp_path)),
                 "--min-frames", "3"]) == 2
    assert "no stretch of at least 3 frames" in capsys.readouterr().err


def test_without_camera_info_the_intrinsics_must_be_given(tmp_path, capsys):
    from dexwm_ros.bag_import import main

    bag = write_bag(tmp_path / "bag", camera_info=False)
    assert main([str(bag), "--out", str(tmp_path / "out"), "--extrinsics", str(_identity(tmp_path))]) == 2
    assert "give --intrinsics" in capsys.readouterr().err
    K = tmp_path / "K.yaml"
    K.write_text("[[300, 0, 160], [0, 300, 120], [0, 0, 1]]\n")
    assert main([str(bag), "--out", str(tmp_path / "out"), "--extrinsics", str(_identity(tmp_path)),
                 "--intrinsics", str(K)]) == 0
    ep = _read(tmp_path / "out" / "episode_000000.h5")
    np.testing.assert_allclose(ep["K"][0, 0], 300 * 224 / 240)


def test_not_a_bag_is_a_clear_error(tmp_path, capsys):
    from dexwm_ros.bag_import import main

    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--sim-camera"]) == 2
    assert "not a rosbag2 folder" in capsys.readouterr().err


def test_the_importer_does_not_need_rclpy():
    code = "import sys, dexwm_ros.bag_import; sys.exit('rclpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], timeout=60).returncode == 0


def _identity(tmp_path: Path) -> Path:
    path = tmp_path / "extrinsics.npy"
    np.save(path, np.eye(4))
    return path
