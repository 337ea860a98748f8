"""dexwm-collect writes readable, complete, resumable episode files."""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COLLECT = Path(sys.executable).parent / "dexwm-collect"


def test_collect_three_episodes_readable_and_resumable(tmp_path):
    out = tmp_path / "data"
    cmd = [str(COLLECT), "--out", str(out), "--episodes", "3", "--seed", "5", "--steps", "12", "--size", "96"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    files = sorted(out.glob("episode_*.h5"))
    assert [f.name for f in files] == ["episode_000000.h5", "episode_000001.h5", "episode_000002.h5"]
    assert not list(out.glob(".*tmp"))
    kinds = set()
    for f in files:
        with h5py.File(f, "r") as h:
            T = 12
            assert h["frames"].shape == (T, 96, 96, 3) and h["frames"].dtype == np.uint8
            assert h["frames"][:].std() > 5
            assert h["timestamps"].shape == (T,) and np.all(np.diff(h["timestamps"][:]) > 0.19)
            assert h["joints"].shape == (T, 23) and h["targets"].shape == (T, 23)
            assert h["keypoints_world"].shape == (T, 42, 3)
            assert h["keypoints_camera"].shape == (T, 42, 3)
            assert h["keypoints_2d"].shape == (T, 42, 2) and h["keypoints_visible"].shape == (T, 42)
            assert np.all(h["keypoints_world"][:, 21:] == 0) and not h["keypoints_visible"][:, 21:].any()
            assert np.abs(h["keypoints_world"][:, :21]).max() > 0.1
            assert h["keypoints_visible"][:, :21].mean() > 0.5
            assert h["object_poses"].shape == (T, 3, 7)
            K = h["camera/intrinsics"][:]
            assert K.shape == (3, 3) and abs(K[0, 2] - 47.5) < 1e-9
            E = h["camera/extrinsics"][:]
            # Stored camera-frame keypoints are the world keypoints through the stored extrinsics.
            kw = h["keypoints_world"][:, :21]
            kc = kw @ E[:3, :3].T + E[:3, 3]
            np.testing.assert_allclose(kc, h["keypoints_camera"][:, :21], atol=1e-4)
            assert np.ptp(h["joints"][:], axis=0).max() > 0.05     # the robot moved
            assert h.attrs["format_version"] == 1 and h.attrs["control_hz"] == 5.0
            assert h.attrs["frame_dt"] == 0.2    # the world model's frame step, from the collector
            assert list(h.attrs["joint_names"])[0] == "fr3_joint1"
            kinds.add(h.attrs["kind"])
    assert kinds == {"carry", "push"}       # MIX starts carry, push, carry
    assert "moving_fraction" in r.stdout and "displaced_fraction" in r.stdout

    # Resume with 2 worker processes: finished episodes are kept as they are, only new ones written.
    mtimes = [f.stat().st_mtime_ns for f in files]
    cmd[cmd.index("3")] = "5"
    r = subprocess.run(cmd + ["--workers", "2"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "3 were already there" in r.stdout
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    for i in (3, 4):
        with h5py.File(out / f"episode_{i:06d}.h5", "r") as h:
            assert h["frames"].shape == (12, 96, 96, 3) and h.attrs["episode_index"] == i


def test_collect_rejects_bad_arguments(tmp_path):
    r = subprocess.run([str(COLLECT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--hours or --episodes" in r.stderr
    r = subprocess.run([str(COLLECT), "--out", str(tmp_path), "--hours", "-1"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0


def test_moving_frames_counts_steps_over_one_centimetre():
    from dexwm_sim.collect import moving_frames
    poses = np.zeros((5, 3, 7))
    poses[2:, 1, 0] = 0.02           # object 1 jumps 2 cm between frames 1 and 2, then rests
    poses[3:, 2, 1] = 0.005          # object 2 moves 5 mm: not "moving"
    moving, displaced = moving_frames(poses)
    assert moving.tolist() == [False, False, True, False, False]
    assert displaced.tolist() == [False, False, True, True, True]


def test_object_episodes_move_objects_and_the_mix_reaches_its_fraction(tmp_path):
    """A short run of the object kinds (carry, push, poke: indices 0, 1, 7 of MIX) moves objects;
    the printed moving fraction is the one the files give."""
    from dexwm_sim import collect
    assert collect.MIX[0] == "carry" and collect.MIX[1] == "push" and collect.MIX[7] == "poke"
    out = tmp_path / "data"
    out.mkdir()
    for index in (0, 1, 7):
        collect.collect_episode((str(out), index, 3, 30, 96))
    stats = collect.moving_stats(sorted(out.glob("episode_*.h5")))
    for f in sorted(out.glob("episode_*.h5")):
        with h5py.File(f, "r") as h:
            pos = h["object_poses"][:, :, :3]
            shift = np.linalg.norm(pos - pos[:1], axis=-1).max()
            kind = h.attrs["kind"]
        assert shift > (0.05 if kind != "poke" else 0.01), (kind, shift)
    assert stats["frames"] == 90 and 0.1 < stats["moving_fraction"] <= stats["displaced_fraction"]


def test_collect_from_a_candidate_camera_records_that_view_and_keeps_a_folder_to_one_view(tmp_path):
    from dexwm_robot.camera import HeadCamera

    out = tmp_path / "data"
    base = [str(COLLECT), "--out", str(out), "--seed", "5", "--steps", "4", "--size", "64"]
    r = subprocess.run(base + ["--episodes", "1", "--camera", "30,25"], capture_output=True, text=True,
                       timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    with h5py.File(out / "episode_000000.h5", "r") as h:
        np.testing.assert_allclose(h["camera/pose"][:], HeadCamera.orbit(30.0, 25.0).camera_pose, atol=1e-9)
        assert not np.allclose(h["camera/pose"][:], HeadCamera().camera_pose)
    # Resuming the folder from the default view would mix two views in one training set.
    r = subprocess.run(base + ["--episodes", "2"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 2 and "another camera" in r.stderr
    assert not (out / "episode_000001.h5").exists()
    for bad in ("30", "95,0", "x,1"):
        r = subprocess.run(base + ["--episodes", "1", "--camera", bad], capture_output=True, text=True,
                           timeout=60, cwd=ROOT)
        assert r.returncode == 2 and "--camera needs PITCH,AZIMUTH" in r.stderr


def test_fumble_episodes_leave_the_object_behind_while_carry_episodes_lift_it(tmp_path):
    """The fumbles mix: its fumble episodes (indices 0, 2 of FUMBLE_MIX) lift the hand without the
    object (each attempt named with how it goes wrong), its carry episodes (index 1) lift it."""
    from dexwm_sim import collect
    assert collect.FUMBLE_MIX[:3] == ("fumble", "carry", "fumble")
    out = tmp_path / "data"
    out.mkdir()
    for index in (0, 1, 2):
        collect.collect_episode((str(out), index, 11, 30, 64, (), "fumbles"))
    rises = {}
    for index in (0, 1, 2):
        with h5py.File(collect.episode_path(out, index), "r") as h:
            assert h.attrs["mix"] == "fumbles"
            z = h["object_poses"][:, :, 2]
            rises[index] = float((z - z[:1]).max())
            if h.attrs["kind"] == "fumble":
                attempts = str(h.attrs["task_object"]).split(",")
                assert attempts and all(a.split(":")[1] in collect.FUMBLES for a in attempts), attempts
    assert rises[1] > 0.05, rises                       # the carry lifts its object
    assert rises[0] < 0.03 and rises[2] < 0.03, rises   # the fumbles do not


def test_collect_keeps_a_folder_to_one_mix(tmp_path):
    out = tmp_path / "data"
    base = [str(COLLECT), "--out", str(out), "--seed", "5", "--steps", "4", "--size", "64"]
    r = subprocess.run(base + ["--episodes", "1", "--mix", "fumbles"], capture_output=True, text=True,
                       timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    with h5py.File(out / "episode_000000.h5", "r") as h:
        assert h.attrs["kind"] == "fumble" and h.attrs["mix"] == "fumbles"
    r = subprocess.run(base + ["--episodes", "2"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 2 and "--mix fumbles, not objects" in r.stderr
    assert not (out / "episode_000001.h5").exists()
