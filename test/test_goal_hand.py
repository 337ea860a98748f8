"""Goal-hand reader: trains on recorded episodes, saves and loads, reads the goal's hand in the
world model's pixel frame, refuses another view, and feeds the planner's planned-hand term."""
import h5py
import numpy as np
import pytest
import torch

from dexwm_planner.cem import DOF
from dexwm_planner.goal_hand import GoalHandReader, goal_hand_reading, train
from dexwm_planner.keypoints import project_points, transform_points
from dexwm_planner.mpc import MPCConfig, MPCPlanner
from dexwm_planner.objective import GoalObjective, ObjectiveConfig
from test_planner_models import LinearTestModel, delta_actions
from wm_fixtures import hand_trajectory, look_at_camera, render

HW = (224, 224)


def write_episode(path, seed, n=6):
    rng = np.random.default_rng(seed)
    c2w = look_at_camera((1.2, 0.3, 0.8))
    K = np.array([[220.0, 0, HW[1] / 2], [0, 220.0, HW[0] / 2], [0, 0, 1]])
    kp = hand_trajectory(n, rng)
    kp42 = np.concatenate([kp, np.zeros_like(kp)], 1)
    uv, front = project_points(transform_points(np.linalg.inv(c2w), kp42), K)
    with h5py.File(path, "w") as f:
        f["frames"] = np.stack([render(k, c2w, K, HW) for k in kp])
        f["keypoints_2d"] = uv.astype(np.float32)
        f["keypoints_visible"] = front & (np.arange(42) < 21)
    return uv


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    for i in range(4):
        write_episode(root / f"episode_{i:06d}.h5", seed=i)
    out = root / "reader.pt"
    meta = train(str(root), str(out), every=1, val_episodes=1, steps=4, batch=4, width=32, depth=1)
    return out, meta, root


def test_training_saves_a_reader_that_loads_and_reads_the_same(trained):
    out, meta, root = trained
    assert meta["episodes"] == {"train": 3, "val": 1} and np.isfinite(meta["val_median_px"])
    reader = GoalHandReader.load(str(out))
    with h5py.File(root / "episode_000000.h5") as f:
        frames = f["frames"][:2]
    read = reader.read(frames)
    assert read.shape == (2, 6, 2) and np.isfinite(read).all()
    assert (read >= -1).all() and (read <= 224).all()           # model-image pixels
    np.testing.assert_allclose(GoalHandReader.load(str(out)).read(frames), read)
    # A goal frame of another size is read through the same model view (resize to height + centre crop).
    wide = np.zeros((224, 300, 3), np.uint8)
    wide[:, 38:262] = frames[0]
    np.testing.assert_allclose(reader.read(wide[None]), read[:1], atol=1e-4)


def test_a_reader_of_another_view_or_file_is_refused(trained, tmp_path):
    out, _, _ = trained

    class Model:
        image_size = (224, 392)
    with pytest.raises(ValueError, match="must be the same"):
        goal_hand_reading(str(out), Model())
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(ValueError, match="not a goal-hand reader"):
        GoalHandReader.load(str(bad))
    with pytest.raises(FileNotFoundError):
        GoalHandReader.load(str(tmp_path / "missing.pt"))


def test_the_planned_hand_term_and_proposal_use_the_goal_hand_reading():
    model = LinearTestModel()
    rng = np.random.default_rng(3)
    goal_latent = model.encode(model.render(rng.uniform(-0.2, 0.2, DOF))[None])[0]
    context = model.encode(model.render(np.zeros(DOF))[None])

    def hand_pixels_fn(q):
        return 100.0 * np.asarray(q)[..., :12].reshape(q.shape[:-1] + (6, 2))
    reading = rng.uniform(-20, 20, (6, 2))
    cfg = ObjectiveConfig(keypoint_weight=0, hand_pixel_weight=0.01)
    objective = GoalObjective(model, delta_actions, goal_latent, cfg, hand_pixels_fn=hand_pixels_fn,
                              goal_hand_pixels=reading)
    on_reading = np.zeros((1, 3, DOF))
    on_reading[0, :, :12] = reading.reshape(-1) / 100.0
    assert objective.terms(context, np.zeros(DOF), on_reading).hand_pixels[0] < 1e-9
    head = GoalObjective(model, delta_actions, goal_latent, cfg, hand_pixels_fn=hand_pixels_fn)
    assert head.terms(context, np.zeros(DOF), on_reading).hand_pixels[0] > 1.0
    with pytest.raises(ValueError, match="goal_hand_pixels"):
        GoalObjective(model, delta_actions, goal_latent, cfg, hand_pixels_fn=hand_pixels_fn,
                      goal_hand_pixels=np.full((6, 2), np.nan))
    # The planner reads each goal image once with the reader, and keeps the reading when the
    # orientation reference is taken at the first replan.
    seen = []

    def reader(image):
        seen.append(image.shape)
        return reading
    lower, upper = np.full(DOF, -1.0), np.full(DOF, 1.0)
    planner = MPCPlanner(model, delta_actions, lower, upper, MPCConfig(objective=cfg), seed=0,
                         hand_pixels_fn=hand_pixels_fn, goal_hand_reader=reader)
    planner.set_goal(model.render(np.zeros(DOF)))
    assert len(seen) == 1
    np.testing.assert_allclose(planner.objective.goal_hand_pixels, reading)
    # Without the planned-hand term nor the proposal the reader is not asked.
    quiet = MPCPlanner(model, delta_actions, lower, upper, MPCConfig(objective=ObjectiveConfig()), seed=0,
                       goal_hand_reader=reader)
    quiet.set_goal(model.render(np.zeros(DOF)))
    assert len(seen) == 1


def test_the_planner_node_setup_loads_the_reader_and_refuses_a_mismatched_one(trained):
    from dexwm_ros.planner_settings import PlannerSettings
    from dexwm_ros.planner_setup import WorldModelPlanning

    out, _, _ = trained

    class Model:
        image_size = (224, 224)
        frame_step = 0.2
    planning = WorldModelPlanning(PlannerSettings(goal_hand_reader=str(out)), model=Model())
    planner = planning.planner(PlannerSettings(goal_hand_reader=str(out)), "reach")
    assert planner.goal_hand_reader is planning.goal_hand_reader is not None
    assert WorldModelPlanning(PlannerSettings(goal_hand_reader="head"), model=Model()).goal_hand_reader is None
    # The default is the shipped reader; a world model of another view keeps its own head for it,
    # while a reader named for that view is refused.
    assert WorldModelPlanning(PlannerSettings(), model=Model()).goal_hand_reader is not None

    class OtherView(Model):
        image_size = (224, 392)
    assert WorldModelPlanning(PlannerSettings(), model=OtherView()).goal_hand_reader is None
    with pytest.raises(ValueError, match="must be the same"):
        WorldModelPlanning(PlannerSettings(goal_hand_reader=str(out)), model=OtherView())
    with pytest.raises(FileNotFoundError, match="goal-hand reader not found"):
        WorldModelPlanning(PlannerSettings(goal_hand_reader=str(out) + ".missing"), model=Model())


def test_the_shipped_reader_reads_goal_hands_of_the_simulation_within_a_few_pixels():
    """On frames of the simulated head camera (a reach stage's start and goal), the shipped reader
    lands within a few pixels of the hand's projected keypoints; the world model's head does not."""
    from dexwm_planner.actions import hand_pixels_projection
    from dexwm_planner.goal_hand import READER_NAME, goal_hand_reading
    from dexwm_planner.objective import RIGHT_HAND_KEYPOINTS
    from dexwm_planner.world_model import DexWM, shipped_model_file
    from dexwm_robot.camera import HeadCamera
    from dexwm_ros.evaluate import EvalSettings, make_runner, prepare_episode

    assert shipped_model_file(READER_NAME).endswith("models/" + READER_NAME)
    model = DexWM.load(None)
    reader = goal_hand_reading("", model)
    settings = EvalSettings(protocol="paper", task="reach", episodes=1, seed=0)
    settings.resolve_step()
    runner = make_runner(settings)
    try:
        start = prepare_episode(runner.env, settings, 1_000_000)
        pixels = hand_pixels_projection(HeadCamera().world_to_camera, model.image_size, kinematics=runner.env.kinematics)
        true = pixels(start.goal.joints)
        err = np.linalg.norm(reader(start.goal.image) - true, axis=1)
        with torch.no_grad():
            head = np.asarray(model.keypoints_2d(model.encode(start.goal.image[None]))[0])[RIGHT_HAND_KEYPOINTS]
        head_err = np.linalg.norm(head - true, axis=1)
    finally:
        runner.env.close()
    assert np.median(err) < 6.0, err
    assert np.median(err) < np.median(head_err), (err, head_err)
