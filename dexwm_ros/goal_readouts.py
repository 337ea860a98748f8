"""Fitting the planner's goal read-outs on the simulation (they live in dexwm_planner, which does not
import the simulation; their fits do):

    python -m dexwm_ros.goal_readouts depth --out models/goal_wrist_depth.json
    python -m dexwm_ros.goal_readouts orientation --out models/goal_orientation_sim.pt [--cache F]

``depth``: the wrist's offset behind the depth surface (dexwm_planner.goal_depth), fitted on the
scripted reach and grasp goals of tuning seeds, checked on official seeds' goals. ``orientation``: the
goal orientation reader (dexwm_planner.goal_orientation), trained on rendered poses of the robot in
pick-and-place scenes, checked on scripted goals of tuning seeds.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

from dexwm_planner.goal_depth import back_project, fit_surface_offset, nearest_surface
from dexwm_planner.goal_hand import GoalHandReader, reader_path
from dexwm_planner.goal_orientation import SCENE_SEED, GoalOrientationReader, angle_deg, encode, train


def _simulated_goals(seeds, task: str, size=(224, 224)):
    """Goals (with depth) of the scripted goal states of ``task``'s stage episodes at ``seeds`` (the
    seeds whose demonstration fails are skipped)."""
    from dexwm_sim import tasks
    from dexwm_sim.scene import SimEnv

    env = SimEnv(render_size=size)
    for seed in seeds:
        try:
            episode = env.reset(task, seed)
        except tasks.StageUnavailable:
            continue
        yield tasks.make_goal(env, episode, sizes=(size,), depth=True)


def _frames(read, seeds, size):
    """(read wrist pixel, depth image, true wrist in the camera frame, true wrist pixel) of the scripted
    reach and grasp goal states at ``seeds``."""
    from dexwm_planner.actions import hand_pixels_projection, wrist_position_projection
    from dexwm_robot.camera import HeadCamera

    camera = HeadCamera()
    wrist_fn = wrist_position_projection(camera.world_to_camera)
    pixels_fn = hand_pixels_projection(camera.world_to_camera, size)
    frames = []
    for task in ("paper-reach", "paper-grasp"):
        for goal in _simulated_goals(seeds, task, size):
            frames.append((read(goal.image)[0], goal.depth, wrist_fn(goal.joints[None])[0],
                           pixels_fn(goal.joints[None])[0, 0]))
    return frames


def _errors(frames, offset: float, K: np.ndarray) -> dict:
    wrist = [np.linalg.norm(back_project(p, nearest_surface(d, p) + offset, K) - w) for p, d, w, _ in frames]
    pixel = [np.linalg.norm(p - t) for p, _, _, t in frames]
    return {"frames": len(frames), "wrist_error_m_median": float(np.median(wrist)),
            "wrist_error_m_p90": float(np.percentile(wrist, 90)), "reader_pixel_error_median": float(np.median(pixel))}


def fit_depth_main(argv=None) -> int:
    import argparse

    from dexwm_planner.goal_hand import goal_hand_reading
    from dexwm_robot.camera import HeadCamera

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1_000_500, help="first seed fitted on (default: the tuning seeds)")
    parser.add_argument("--episodes", type=int, default=40, help="seeds per stage fitted on (reach and grasp goals)")
    parser.add_argument("--check-seed", type=int, default=1_000_000,
                        help="first seed of the held-out check (default: the official seeds)")
    parser.add_argument("--check-episodes", type=int, default=20, help="seeds per stage of the held-out check")
    parser.add_argument("--out", default="", help="write the fit here (JSON), e.g. models/goal_wrist_depth.json")
    args = parser.parse_args(argv)
    size = (224, 224)
    read = goal_hand_reading("", type("View", (), {"image_size": size})())
    K = HeadCamera().intrinsics(*size)
    fitted_on = range(args.seed, args.seed + args.episodes)
    frames = _frames(read, fitted_on, size)
    fit = fit_surface_offset(np.array([f[0] for f in frames]), [f[1] for f in frames], np.array([f[2] for f in frames]))
    checked_on = range(args.check_seed, args.check_seed + args.check_episodes)
    fit.update(fitted_on=f"the scripted reach and grasp goal states (hand open above the object; object lifted in "
                         f"the hand) of seeds {fitted_on.start}-{fitted_on.stop - 1}, the default head camera at "
                         f"{size[0]}x{size[1]}, the shipped goal-hand reader",
               in_sample=_errors(frames, fit["surface_offset_m"], K),
               held_out={"seeds": f"{checked_on.start}-{checked_on.stop - 1}",
                         **_errors(_frames(read, checked_on, size), fit["surface_offset_m"], K)},
               command="python -m dexwm_ros.goal_readouts depth" + (f" --out {args.out}" if args.out else ""))
    print(json.dumps(fit, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(fit, f, indent=2)
            f.write("\n")
    return 0


def render_poses(count: int, seed: int, size=(224, 224), progress: bool = True):
    """``count`` frames of the robot posed in pick-and-place scenes: images (N, H, W, 3) uint8 and
    the flange rotations (N, 3, 3) in the head camera's frame."""
    from tqdm import tqdm

    from dexwm_robot import allegro
    from dexwm_robot.camera import HeadCamera
    from dexwm_sim import tasks
    from dexwm_sim.scene import SimEnv
    from scipy.spatial.transform import Rotation

    camera = HeadCamera()
    env = SimEnv(render_size=size, camera=camera)
    rng = np.random.default_rng(seed)
    images, rotations = [], []
    bar = tqdm(total=count, desc="rendering poses", disable=not progress)
    scene = 0
    while len(images) < count:
        if len(images) % 25 == 0:
            env.reset("pick-place", SCENE_SEED + seed * 10_000 + scene)
            scene += 1
        palm = np.array([rng.uniform(0.3, 0.75), rng.uniform(-0.3, 0.3), rng.uniform(0.06, 0.45)])
        base = tasks.palm_rotation(rng.normal(size=2), palm_down=rng.random() < 0.85)
        tilt = Rotation.from_rotvec(rng.normal(size=3) * np.radians(15.0)).as_matrix()
        thumb = env.lower[19:] + rng.uniform(0.2, 0.8, size=4) * (env.upper[19:] - env.lower[19:])
        open_hand = np.r_[tasks.FINGERS_STRAIGHT, thumb]
        hand = open_hand + rng.uniform(0.0, 1.0) * (allegro.power_grasp(open_hand) - open_hand)
        hand = np.clip(hand + rng.normal(scale=0.05, size=16), env.lower[7:], env.upper[7:])
        arm, err = env.solve_arm_ik_global(palm, tilt @ base, hand=hand)
        if err > 0.02:
            continue
        env.reset_robot(arm, hand)
        images.append(env.render(*size))
        q = env.joint_positions()
        rotations.append(camera.world_to_camera[:3, :3] @ env.kinematics.ee_pose(q)[1])
        bar.update(1)
    bar.close()
    env.close()
    return np.stack(images), np.stack(rotations)


def _scripted_goals(seeds, size, marks=("high", "pregrasp")):
    """Images and camera-frame flange rotations of the scripted pick-and-place marks at ``seeds``."""
    from dexwm_robot.camera import HeadCamera
    from dexwm_sim import tasks
    from dexwm_sim.scene import SimEnv

    camera = HeadCamera()
    env = SimEnv(render_size=size, camera=camera)
    images, rotations = [], []
    for seed in seeds:
        episode = env.reset("pick-place", seed)
        try:
            goals = tasks.make_subgoals(env, episode, sizes=(size,), marks=marks)
        except ValueError:
            continue
        for goal in goals:
            images.append(goal.image)
            rotations.append(camera.world_to_camera[:3, :3] @ env.kinematics.ee_pose(goal.joints)[1])
    env.close()
    return np.stack(images), np.stack(rotations)


def train_orientation_main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=4000, help="rendered training frames")
    parser.add_argument("--val-frames", type=int, default=300, help="rendered held-out frames")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reduced", type=int, default=16, help="features per cell after the projection")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--check-seed", type=int, default=1_000_500,
                        help="first pick-and-place seed of the scripted-goal check (default: the tuning seeds)")
    parser.add_argument("--check-episodes", type=int, default=20)
    parser.add_argument("--cache", default="", help="keep the rendered frames' features and rotations here (.pt) "
                                                     "and reuse them when they are there")
    parser.add_argument("--out", required=True, help="the reader (.pt); its report beside it (.json)")
    args = parser.parse_args(argv)
    size = (224, 224)
    reader = GoalHandReader.load(reader_path(""))
    if args.cache and os.path.isfile(args.cache):
        cached = torch.load(args.cache, weights_only=False)
        features, rotations = cached["features"].float(), cached["rotations"]
        if len(features) != args.frames + args.val_frames:
            raise SystemExit(f"{args.cache} holds {len(features)} frames, not {args.frames + args.val_frames}")
    else:
        images, rotations = render_poses(args.frames + args.val_frames, args.seed, size)
        features = encode(reader, images)
        del images
        if args.cache:
            torch.save({"features": features.half(), "rotations": rotations}, args.cache)
    n = args.frames
    head = train(features[:n], rotations[:n], steps=args.steps, seed=args.seed, weight_decay=args.weight_decay,
                 head_config={"reduced": args.reduced, "hidden": args.hidden, "dropout": args.dropout})
    orientation = GoalOrientationReader(reader, head)

    def errors(feats, rots):
        head.eval()
        with torch.no_grad():
            read = head(feats).numpy().astype(np.float64)
        e = angle_deg(read, rots)
        return {"frames": int(len(e)), "angle_deg_median": float(np.median(e)),
                "angle_deg_p90": float(np.percentile(e, 90))}

    check_images, check_rotations = _scripted_goals(range(args.check_seed, args.check_seed + args.check_episodes), size)
    report = {"trained_on": f"{n} rendered frames of the robot posed in pick-and-place scenes (seed {args.seed}), "
                            f"{args.steps} steps",
              "train": errors(features[:n], rotations[:n]), "held_out": errors(features[n:], rotations[n:]),
              "scripted_goals": {"seeds": f"{args.check_seed}-{args.check_seed + args.check_episodes - 1}",
                                 "marks": "high, pregrasp", **errors(encode(reader, check_images, progress=False),
                                                                      check_rotations)},
              "head": head.config, "weight_decay": args.weight_decay,
              "command": f"python -m dexwm_ros.goal_readouts orientation --frames {args.frames} "
                         f"--val-frames {args.val_frames} --steps {args.steps} --seed {args.seed} "
                         f"--reduced {args.reduced} --hidden {args.hidden} --dropout {args.dropout} "
                         f"--weight-decay {args.weight_decay} --out {args.out}"}
    orientation.meta = {"report": report}
    orientation.save(args.out)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report, indent=2))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"depth": fit_depth_main, "orientation": train_orientation_main}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m dexwm_ros.goal_readouts {{{'|'.join(commands)}}} [options]", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
