"""Diagnostics behind README figures on the planned hand (they read the simulation to REPORT only;
no policy sees what they read). Tuning seeds 1,000,500 on, shipped model.

    .venv/bin/python scripts/hand_diagnostics.py grip         # place starts: hold measured vs commanded hand
    .venv/bin/python scripts/hand_diagnostics.py goal-hand    # the head's reading of goal hands: size bias;
                                                              # joints fitted to it vs the true goal hand
    .venv/bin/python scripts/hand_diagnostics.py reach-offset # where planned reaches end, in camera axes
    .venv/bin/python scripts/hand_diagnostics.py goal-reading READER.pt
                                                              # goal hands read by the head and by a
                                                              # goal-hand reader against the true ones
    .venv/bin/python scripts/hand_diagnostics.py grasp-trace SEED [CHECKPOINT]
                                                              # one grasp stage (evaluation seed SEED),
                                                              # the reference alone, then the planner
                                                              # started from it (std 0.02 / 0.05, mean
                                                              # executed): each step against the
                                                              # reference's row, palm and object
"""
import sys

import numpy as np
import torch

from dexwm_planner.actions import hand_pixels_projection
from dexwm_planner.hand_proposal import estimate_goal_joints
from dexwm_planner.objective import RIGHT_HAND_KEYPOINTS
from dexwm_planner.world_model import DexWM
from dexwm_robot.camera import HeadCamera
from dexwm_ros.evaluate import EvalSettings, WorldModelPolicy, make_runner, prepare_episode, run_episode
from dexwm_sim import tasks


def stages(task: str, count: int):
    """(env, start) of the first ``count`` tuning-seed stages whose demonstration succeeds."""
    settings = EvalSettings(protocol="paper", task=task, episodes=count, seed=500)
    settings.resolve_step()
    runner = make_runner(settings)
    seed, found = 1_000_500, 0
    try:
        while found < count:
            try:
                start = prepare_episode(runner.env, settings, seed)
            except tasks.StageUnavailable:
                seed += 1
                continue
            seed, found = seed + 1, found + 1
            yield runner, settings, start
    finally:
        runner.env.close()


def reach_goals(model, cam, count: int):
    """Per tuning reach stage, with the simulation restored to its start: (kinematics, start joints,
    the planned-hand projection, joints -> the reach rule's distance [m], goal image)."""
    for runner, _, start in stages("reach", count):
        env = runner.env
        env.restore_episode(start.episode, start.state)
        kin, target = env.kinematics, np.asarray(start.episode.target)
        pixels = hand_pixels_projection(cam.world_to_camera, model.image_size, kinematics=kin)
        yield (kin, env.joint_positions(), pixels,
               lambda q: np.linalg.norm(kin.palm_and_tips_world(q) - target, axis=1).mean(), start.goal.image)


def decoded_hand(model, image) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(model.keypoints_2d(model.encode(image[None]))[0], dtype=np.float64)[RIGHT_HAND_KEYPOINTS]


def grip():
    """Place starts: command the arm's targets and, for the hand, its held targets or its measured
    joints, 12 steps of 0.2 s; how far the objects drop."""
    for runner, _, start in stages("place", 6):
        env = runner.env
        for mode in ("targets", "measured"):
            env.restore_episode(start.episode, start.state)
            q, targets = env.joint_positions(), env.targets()
            z0 = {k: v[2] for k, v in env.object_poses().items()}
            hand = targets[7:] if mode == "targets" else q[7:]
            for _ in range(12):
                env.command(arm=targets[:7], hand=hand, duration=0.2)
                env.advance(0.2)
            drop = max(z0[k] - v[2] for k, v in env.object_poses().items())
            print(f"{start.seed} hold hand {mode}: hand target - measured max {np.abs(targets[7:] - q[7:]).max():.3f} "
                  f"rad, largest object drop {drop:.3f} m", flush=True)


def goal_hand():
    model, cam = DexWM.load(None), HeadCamera()
    for task in ("reach", "grasp", "place"):
        ratios = []
        for runner, _, start in stages(task, 10):
            kin = runner.env.kinematics
            pixels = hand_pixels_projection(cam.world_to_camera, model.image_size, kinematics=kin)
            read, true = decoded_hand(model, start.goal.image), pixels(start.goal.joints)
            ratios.append(np.linalg.norm(read[1:] - read[0], axis=1).mean()
                          / np.linalg.norm(true[1:] - true[0], axis=1).mean())
        print(f"{task}: decoded / true hand size (wrist to tips) median {np.median(ratios):.2f}, "
              f"quartiles {np.percentile(ratios, 25):.2f}-{np.percentile(ratios, 75):.2f}", flush=True)
    found = {pull: [] for pull in (5.0, 20.0, 40.0)}
    starts = []
    for kin, q0, pixels, distance, goal_image in reach_goals(model, cam, 12):
        read = decoded_hand(model, goal_image)
        starts.append(distance(q0))
        for pull in found:
            found[pull].append(distance(estimate_goal_joints(pixels, read, q0, kin.lower, kin.upper,
                                                             pull_px_per_rad=pull)))
    print(f"reach, 12 goals: hand at the start {np.median(starts):.3f} m from the goal hand; joints fitted to the "
          "decoded hand: " + ", ".join(f"{np.median(v):.3f} m at {p:g} px/rad" for p, v in found.items()))


def goal_reading(reader_path: str):
    """Goal images of 10 tuning stages per task: how far the heatmap head's and a goal-hand reader's
    wrist + fingertips lie from the true ones (forward kinematics into the camera), and the size
    each reads (wrist to tips) against the true size."""
    from dexwm_planner.goal_hand import goal_hand_reading

    model, cam = DexWM.load(None), HeadCamera()
    reader = goal_hand_reading(reader_path, model)
    for task in ("reach", "grasp", "place"):
        errors = {"head": [], "reader": []}
        wrist = {"head": [], "reader": []}
        sizes = {"head": [], "reader": []}
        for runner, _, start in stages(task, 10):
            pixels = hand_pixels_projection(cam.world_to_camera, model.image_size, kinematics=runner.env.kinematics)
            true = pixels(start.goal.joints)
            true_size = np.linalg.norm(true[1:] - true[0], axis=1).mean()
            for name, read in (("head", decoded_hand(model, start.goal.image)), ("reader", reader(start.goal.image))):
                err = np.linalg.norm(read - true, axis=1)
                errors[name].extend(err)
                wrist[name].append(err[0])
                sizes[name].append(np.linalg.norm(read[1:] - read[0], axis=1).mean() / true_size)
        print(f"{task}: " + "; ".join(
            f"{n} median {np.median(errors[n]):.1f} px (wrist {np.median(wrist[n]):.1f} px), size x{np.median(sizes[n]):.2f}"
            for n in errors), flush=True)
    fitted = {"head": [], "reader": []}
    for kin, q0, pixels, distance, goal_image in reach_goals(model, cam, 12):
        for name, read in (("head", decoded_hand(model, goal_image)), ("reader", reader(goal_image))):
            fitted[name].append(distance(estimate_goal_joints(pixels, read, q0, kin.lower, kin.upper)))
    print("reach, 12 goals: joints fitted to the read hand score " + ", ".join(
        f"{np.median(v):.3f} m ({n})" for n, v in fitted.items()) + " by the reach rule's distance (median)")


def reach_offset():
    model, cam = DexWM.load(None), HeadCamera()
    R = cam.world_to_camera[:3, :3]
    offsets = []
    for runner, settings, start in stages("reach", 10):
        policy = WorldModelPolicy(model, runner.env.kinematics, cam.world_to_camera, objective=settings.objective())
        outcome = run_episode(runner, policy, start, settings, 0)
        env = runner.env
        offset = ((env.palm_and_tips() - np.asarray(env.episode.target)) @ R.T).mean(axis=0)
        offsets.append(offset)
        print(f"{start.seed} success {outcome.success}: mean offset in camera axes (x right, y down, z depth) "
              f"{offset[0]:+.3f} {offset[1]:+.3f} {offset[2]:+.3f} m", flush=True)
    print("median |x| %.3f |y| %.3f |z| %.3f m" % tuple(np.median(np.abs(offsets), axis=0)))


def grasp_trace(seed: int, checkpoint: str = ""):
    """Step by step, what the planner sends against the reference grasp's row for that step."""
    from dexwm_ros.evaluate import ReferenceMotionPolicy, collect_starts

    settings = EvalSettings(protocol="paper", task="grasp", episodes=1, seed=seed, checkpoint=checkpoint,
                            std=(0.02, 0.05), grasp_reference=True, execute="mean")
    settings.resolve_step()
    runner = make_runner(settings)
    start = collect_starts(runner, settings, progress=False)[0][0]
    env, kin = runner.env, runner.env.kinematics
    model = DexWM.load(checkpoint or None)
    for name in ("reference", "planner"):
        policy = (ReferenceMotionPolicy(kin) if name == "reference" else
                  WorldModelPolicy(model, kin, settings.head_camera().world_to_camera,
                                   cem_changes=settings.search_changes(), **settings.planner_options()))
        reference = ReferenceMotionPolicy(kin)
        plan = policy.plan

        def traced(joints, should_stop, plan=plan, reference=reference):
            joints = np.asarray(joints, dtype=np.float64)
            if reference.rows is None:
                reference.rows = reference.reference_fn(joints)
            k = traced.steps
            traced.steps += 1
            step = plan(joints, should_stop)
            # The reference's row for this step: a motion with feedback (the guarded grasp) reads
            # the same measured joints the planner's own copy reads.
            row = (reference.rows.next_rows(joints, 1)[0] if hasattr(reference.rows, "next_rows")
                   else reference.rows[min(k, len(reference.rows) - 1)])
            palm = kin.palm_and_tips_world(joints)[0]
            obj = env.object_position(env.episode.object_kind)
            print(f"{name} step {k:2d}: arm off the reference row {np.abs(step.command[:7] - row[:7]).max():.3f} rad "
                  f"(max), hand commanded {step.command[7:].mean():.2f} / reference {row[7:].mean():.2f} / "
                  f"measured {joints[7:].mean():.2f} rad (mean); palm z {palm[2]:.3f}, object z {obj[2]:.3f}, "
                  f"palm-object {np.linalg.norm(palm - obj):.3f} m", flush=True)
            return step

        traced.steps = 0
        policy.plan = traced
        outcome = run_episode(runner, policy, start, settings, 0)
        print(f"{name}: {len(reference.rows)} reference rows; success {outcome.success} (strict "
              f"{outcome.success_strict}), stop {outcome.reason} after {outcome.steps} steps")


if __name__ == "__main__":
    commands = {"grip": grip, "goal-hand": goal_hand, "reach-offset": reach_offset}
    if len(sys.argv) == 3 and sys.argv[1] == "goal-reading":
        goal_reading(sys.argv[2])
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "grasp-trace":
        grasp_trace(int(sys.argv[2]), *sys.argv[3:])
    elif len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: hand_diagnostics.py {'|'.join(commands)} | goal-reading READER.pt | "
                 "grasp-trace SEED [CHECKPOINT]")
    else:
        commands[sys.argv[1]]()
