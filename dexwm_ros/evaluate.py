"""dexwm-eval: task success of the DexWM planner in simulation, with baselines.

    dexwm-eval --task reach|grasp|place --episodes N --seed S --out results.json
               [--through-ros] [--checkpoint PATH] [--max-steps K] [--preset cpu|paper]

Episode i uses simulation seed ``EVAL_SEED_OFFSET + S + i``: evaluation seeds start at 1,000,000 so
they never overlap the seeds used to collect training data (``dexwm-collect`` seeds
``seed * 1,000,003 + index``, shipped data: 0..194, 2,000,006.., 3,000,009..; see models/README.md).
Each episode: reset the simulation to the seeded task, render its goal image (the scripted
solution's end state), then plan and act until the task's success rule has held for 10 control
steps or the step budget is spent.

In-process (default) the planner and the simulation run in this process; with ``--through-ros`` the
same episodes run through the ROS graph (sim node + planner node, separate processes started by
``dexwm-up``): ``/sim/reset`` gives the goal image, ``/dexwm/execute`` plans and acts. The two modes
are built to agree episode by episode: the graph's simulation runs in lock-step
(``sim_lockstep:=true``: the world waits while the planner thinks), the in-process moves go through
the same runner code (``SimRunner.move_now``), both see frames and goal images of the sim camera's
size (config/sim.yaml), and both use the same planner settings and per-episode CEM seeds.

Baselines, same episodes and step budget: ``random_shooting`` (a random feasible joint plan drawn
from the planner's own sampling distribution, no world model, first step executed each step), and
every ablation checkpoint that exists (``models/dexwm_sim_no_hc.pt``: without the hand-consistency
loss; ``models/dexwm_sim_no_pretrain.pt``: without pre-training; or ``--ablation NAME=PATH``).

Output JSON: ``task``, ``episodes``, ``success_rate``, ``ci95`` (Wilson), ``replan_seconds_median``,
``baselines`` (name -> success rate), ``baseline_ci95``, ``outcomes`` (per episode), settings; and a
bar plot of the success table next to it (``.png``).

    dexwm-eval --report DIR

reads every result JSON in DIR and writes ``DIR/summary.md`` and ``DIR/summary.png``: the success
table of all tasks with baselines, and for each ``--through-ros`` result the episode-by-episode
agreement with the in-process result of the same task on their shared seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

EVAL_SEED_OFFSET = 1_000_000
TASKS = ("reach", "grasp", "place")


def sim_camera_size() -> tuple[int, int]:
    """(width, height) of the sim node's camera frames and goal images (config/sim.yaml): the
    in-process episodes render at the same size, so both modes feed the model the same pixels."""
    import yaml

    from dexwm_ros.graph import config_dir

    params = yaml.safe_load((config_dir() / "sim.yaml").read_text())["/**"]["ros__parameters"]
    return int(params["image_width"]), int(params["image_height"])


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (sensible at 0 % and 100 %, small n)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class EpisodeOutcome:
    seed: int
    success: bool
    steps: int
    reason: str
    final_distance: float
    replan_seconds_median: float
    wall_seconds: float
    costs: list = field(default_factory=list)


@dataclass
class EvalSettings:
    task: str = "grasp"
    episodes: int = 10
    seed: int = 0
    max_steps: int = 40
    preset: str = "cpu"
    checkpoint: str = ""
    move_duration_s: float = 0.5   # the planner node's defaults (config/planner.yaml)
    move_timeout_s: float = 1.0
    goal_tolerance: float = 0.05

    def seeds(self) -> list[int]:
        return [EVAL_SEED_OFFSET + self.seed + i for i in range(self.episodes)]


# ------------------------------------------------------------------------------------ policies
class WorldModelPolicy:
    """The planner node's MPC, in-process: same preset, caps, objective and seeding."""

    name = "dexwm"

    def __init__(self, model, kinematics, world_to_camera, preset: str = "cpu"):
        from dexwm_planner.actions import allegro_actions
        from dexwm_planner.cem import PRESETS
        from dexwm_planner.mpc import MPCConfig

        self.model, self.kin = model, kinematics
        self.actions_fn = lambda q_seq: allegro_actions(q_seq, world_to_camera, kinematics=kinematics)
        self.rotation_fn = lambda q: kinematics.ee_pose(q)[1]
        # Caps as config/planner.yaml ships them.
        self.config = MPCConfig(cem=PRESETS[preset].with_(max_step_arm=0.25, max_step_hand=0.3))
        self.planner = None

    def reset(self, goal_image: np.ndarray, seed: int):
        from dexwm_planner.mpc import MPCPlanner

        self.planner = MPCPlanner(self.model, self.actions_fn, self.kin.lower, self.kin.upper, self.config,
                                  rotation_fn=self.rotation_fn, seed=seed)
        self.planner.set_goal(goal_image)

    def act(self, image: np.ndarray, q: np.ndarray):
        self.planner.observe(image, q)
        step = self.planner.step(q)
        return step.command, step.replan_seconds, step.current_cost


class RandomShootingPolicy:
    """No world model: each step executes the first step of a random feasible plan drawn from the
    planner's initial sampling distribution (the same std, limits and per-step cap)."""

    name = "random_shooting"

    def __init__(self, kinematics, preset: str = "cpu"):
        from dexwm_planner.cem import CEM, PRESETS

        self.cem = CEM(PRESETS[preset].with_(max_step_arm=0.25, max_step_hand=0.3), kinematics.lower, kinematics.upper)
        self.rng = np.random.default_rng(0)

    def reset(self, goal_image: np.ndarray, seed: int):
        self.rng = np.random.default_rng(seed)

    def act(self, image: np.ndarray, q: np.ndarray):
        t0 = time.perf_counter()
        mean, std = self.cem.initial_distribution(q, self.cem.config.horizon)
        plan = self.cem.project(mean + std * self.rng.standard_normal(mean.shape), q)
        return plan[0], time.perf_counter() - t0, float("nan")


# ------------------------------------------------------------------------------ in-process runs
def run_episode(runner, policy, task: str, seed: int, settings: EvalSettings) -> EpisodeOutcome:
    """One episode in-process, step for step as the planner node runs it against the lock-step
    sim node: check success, observe, replan, move (``SimRunner.move_now``: arm and hand targets
    start together; each part ends at its tolerance or time limit)."""
    from dexwm_sim import tasks

    env = runner.env
    t_start = time.perf_counter()
    episode = env.reset(task, seed)
    size = tuple(env.render_size)
    goal = tasks.make_goal(env, episode, sizes=(size,))
    policy.reset(goal.image, seed)
    replans, costs = [], []
    steps, reason = 0, "budget"
    time_limit = max(settings.move_timeout_s, settings.move_duration_s)
    while True:
        if env.status.success:
            reason = "success"
            break
        if steps >= settings.max_steps:
            break
        image = env.render(*size)
        q = env.joint_positions()
        command, seconds, cost = policy.act(image, q)
        replans.append(seconds)
        costs.append(cost)
        runner.move_now(command[:7], command[7:], settings.move_duration_s, time_limit, settings.goal_tolerance)
        steps += 1
    return EpisodeOutcome(seed=seed, success=reason == "success", steps=steps, reason=reason,
                          final_distance=float(env.status.distance),
                          replan_seconds_median=float(np.median(replans)) if replans else float("nan"),
                          wall_seconds=time.perf_counter() - t_start, costs=[float(c) for c in costs])


def run_in_process(policy, settings: EvalSettings, progress: bool = True) -> list[EpisodeOutcome]:
    from tqdm import tqdm

    from dexwm_sim.runner import RunnerConfig, SimRunner
    from dexwm_sim.scene import SimEnv

    size = sim_camera_size()
    env = SimEnv(render_size=size)
    # Not started: its moves run in this thread (move_now), with the sim node's motion semantics.
    runner = SimRunner(RunnerConfig(task=settings.task, lockstep=True, image_size=size), env=env)
    outcomes = []
    try:
        bar = tqdm(settings.seeds(), desc=f"{policy.name} {settings.task}", unit="ep", disable=not progress,
                   file=sys.stderr)
        for seed in bar:
            outcomes.append(run_episode(runner, policy, settings.task, seed, settings))
            bar.set_postfix(success=f"{sum(o.success for o in outcomes)}/{len(outcomes)}")
    finally:
        env.close()
    return outcomes


# ---------------------------------------------------------------------------- through the graph
def run_through_ros(settings: EvalSettings, progress: bool = True, startup_timeout: float = 120.0,
                    log_path: Path | None = None) -> list[EpisodeOutcome]:
    """The same episodes through the ROS graph: dexwm-up (sim + planner) in separate processes."""
    import subprocess
    import threading

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 40))
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    import rclpy
    from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.action import ActionClient
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from tqdm import tqdm

    from dexwm_ros.action import Execute
    from dexwm_ros.bringup import stop_graph
    from dexwm_ros.msg import EpisodeState
    from dexwm_ros.srv import ResetEpisode

    cmd = [sys.executable, str(Path(sys.prefix) / "bin" / "dexwm-up"), settings.task, "sim:=true", "sim_lockstep:=true"]
    if settings.checkpoint:
        cmd.append(f"checkpoint:={settings.checkpoint}")
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    graph = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    outcomes: list[EpisodeOutcome] = []
    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = Node("dexwm_eval", context=context)
    lock = threading.Lock()
    episode_state: dict = {}

    def on_episode(msg):
        with lock:
            episode_state["msg"] = msg
    node.create_subscription(EpisodeState, "/sim/episode", on_episode, 10)
    reset = node.create_client(ResetEpisode, "/sim/reset")
    params = node.create_client(SetParameters, "/dexwm/planner/set_parameters")
    execute = ActionClient(node, Execute, "/dexwm/execute")
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    def wait(predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while not predicate():
            if graph.poll() is not None:
                raise RuntimeError(f"the ROS graph exited with code {graph.returncode}"
                                   + (f" (log: {log_path})" if log_path else ""))
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)

    try:
        wait(lambda: reset.service_is_ready() and execute.server_is_ready() and params.service_is_ready(),
             startup_timeout, "/sim/reset, /dexwm/execute and the planner's parameters")
        bar = tqdm(settings.seeds(), desc=f"ros {settings.task}", unit="ep", disable=not progress, file=sys.stderr)
        for seed in bar:
            t0 = time.perf_counter()
            # Per-episode CEM seed, as in-process.
            req = SetParameters.Request(parameters=[ParameterMsg(name="seed", value=ParameterValue(
                type=ParameterType.PARAMETER_INTEGER, integer_value=int(seed) % (2**31 - 1)))])
            fut = params.call_async(req)
            wait(fut.done, 30, "the planner's seed parameter")
            fut = reset.call_async(ResetEpisode.Request(task=settings.task, seed=int(seed) % 2**32))
            wait(fut.done, 120, "the episode reset")
            res = fut.result()
            if not res.success:
                raise RuntimeError(f"/sim/reset failed for seed {seed}: {res.message}")
            replans = []
            costs = []

            def on_feedback(fb):
                replans.append(fb.feedback.replan_seconds)
                costs.append(fb.feedback.current_cost)
            send = execute.send_goal_async(Execute.Goal(goal_image=res.goal_image, task=settings.task,
                                                        max_steps=settings.max_steps),
                                           feedback_callback=on_feedback)
            wait(send.done, 30, "the planner to accept the goal")
            handle = send.result()
            if not handle.accepted:
                raise RuntimeError("the planner rejected the Execute goal")
            result_future = handle.get_result_async()
            wait(result_future.done, 60 + settings.max_steps * 30, "the episode to end")
            result = result_future.result().result
            with lock:
                ep = episode_state.get("msg")
            outcomes.append(EpisodeOutcome(
                seed=seed, success=bool(result.success), steps=int(result.steps), reason=result.reason,
                final_distance=float(ep.distance) if ep is not None else float("nan"),
                replan_seconds_median=float(np.median(replans)) if replans else float("nan"),
                wall_seconds=time.perf_counter() - t0, costs=[float(c) for c in costs]))
            bar.set_postfix(success=f"{sum(o.success for o in outcomes)}/{len(outcomes)}")
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_graph(graph)
        if log_path:
            log.close()
    return outcomes


# --------------------------------------------------------------------------------------- report
def summarize(outcomes: list[EpisodeOutcome]) -> dict:
    n = len(outcomes)
    k = sum(o.success for o in outcomes)
    lo, hi = wilson_interval(k, n)
    replans = [o.replan_seconds_median for o in outcomes if np.isfinite(o.replan_seconds_median)]
    return {"success_rate": k / n if n else 0.0, "ci95": [lo, hi], "successes": k, "episodes": n,
            "replan_seconds_median": float(statistics.median(replans)) if replans else float("nan")}


def plot_success(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["dexwm"] + list(results["baselines"])
    rates = [results["success_rate"]] + [results["baselines"][b] for b in results["baselines"]]
    cis = [results["ci95"]] + [results["baseline_ci95"][b] for b in results["baselines"]]
    err = np.array([[r - c[0] for r, c in zip(rates, cis)], [c[1] - r for r, c in zip(rates, cis)]])
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.6))
    bars = ax.bar(names, [100 * r for r in rates], yerr=100 * np.maximum(err, 0), capsize=5,
                  color=["tab:blue"] + ["tab:gray"] * (len(names) - 1))
    for bar, r in zip(bars, rates):
        ax.text(bar.get_x() + bar.get_width() / 2, 100 * r + 2, f"{100 * r:.0f}%", ha="center")
    ax.set_ylim(0, 105)
    ax.set_ylabel("success [%] (95 % Wilson interval)")
    mode = "through ROS" if results.get("through_ros") else "in-process"
    ax.set_title(f"{results['task']}: {results['episodes']} episodes, {mode}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def agreement(a: dict, b: dict) -> dict:
    """Episode-by-episode comparison of two results of one task on their shared seeds."""
    left = {o["seed"]: o for o in a["outcomes"]}
    right = {o["seed"]: o for o in b["outcomes"]}
    shared = sorted(set(left) & set(right))
    same_outcome = [s for s in shared if left[s]["success"] == right[s]["success"]]
    same_steps = [s for s in same_outcome if left[s]["steps"] == right[s]["steps"]]
    keys = ("max_steps", "preset", "checkpoint", "move_duration_s", "move_timeout_s", "goal_tolerance")
    settings_differ = [k for k in keys if a.get("settings", {}).get(k) != b.get("settings", {}).get(k)]
    return {"seeds": shared, "same_outcome": len(same_outcome), "same_steps": len(same_steps),
            "differ": [s for s in shared if s not in same_outcome], "settings_differ": settings_differ}


def write_report(folder: Path) -> tuple[Path, Path]:
    """Success table of every result in ``folder`` (+ through-ROS agreement): summary.md / .png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and {"task", "outcomes", "success_rate", "ci95"} <= set(data):
            results.append((path, data))
    if not results:
        raise ValueError(f"no dexwm-eval results (*.json) in {folder}")
    pct = lambda r: f"{100 * r:.0f} %"  # noqa: E731
    lines = ["| task | mode | episodes | DexWM | 95 % interval | baselines | replan median |", "|---|---|---|---|---|---|---|"]
    local = {d["task"]: d for _, d in results if not d.get("through_ros")}
    for path, d in results:
        k = sum(o["success"] for o in d["outcomes"])
        base = ", ".join(f"{name} {pct(rate)}" for name, rate in d["baselines"].items()) or "-"
        lines.append(f"| {d['task']} | {'through ROS' if d.get('through_ros') else 'in-process'} | {d['episodes']} | "
                     f"{pct(d['success_rate'])} ({k}/{d['episodes']}) | {pct(d['ci95'][0])}-{pct(d['ci95'][1])} | "
                     f"{base} | {d['replan_seconds_median']:.2f} s |")
    agree_lines = []
    for path, d in results:
        if d.get("through_ros") and d["task"] in local:
            ag = agreement(local[d["task"]], d)
            n = len(ag["seeds"])
            agree_lines.append(f"- {d['task']} ({path.name}): same outcome on {ag['same_outcome']}/{n} shared seeds, "
                               f"same outcome and step count on {ag['same_steps']}/{n}"
                               + (f"; differ: {ag['differ']}" if ag["differ"] else "")
                               + (f" (NOT comparable: {', '.join(ag['settings_differ'])} differ)"
                                  if ag["settings_differ"] else ""))
    md = folder / "summary.md"
    md.write_text("# Task success (dexwm-eval)\n\n" + "\n".join(lines) + "\n"
                  + ("\n## In-process vs through ROS\n\n" + "\n".join(agree_lines) + "\n" if agree_lines else ""))

    tasks = [t for t in TASKS if t in local]
    names = ["dexwm"] + sorted({b for t in tasks for b in local[t]["baselines"]})
    fig, ax = plt.subplots(figsize=(2.0 + 2.2 * max(len(tasks), 1), 3.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        rates, errs = [], [[], []]
        for t in tasks:
            d = local[t]
            rate, ci = ((d["success_rate"], d["ci95"]) if name == "dexwm"
                        else (d["baselines"].get(name, float("nan")), d["baseline_ci95"].get(name, [np.nan, np.nan])))
            rates.append(100 * rate)
            errs[0].append(max(100 * (rate - ci[0]), 0))
            errs[1].append(max(100 * (ci[1] - rate), 0))
        xs = np.arange(len(tasks)) + (i - (len(names) - 1) / 2) * width
        ax.bar(xs, rates, width, yerr=errs, capsize=3, label=name)
    ax.set_xticks(np.arange(len(tasks)), [f"{t}\n(n={local[t]['episodes']})" for t in tasks])
    ax.set_ylim(0, 105)
    ax.set_ylabel("success [%] (95 % Wilson interval)")
    ax.set_title("simulation task success, in-process")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = folder / "summary.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return md, png


def default_ablations() -> dict[str, str]:
    from dexwm_planner import world_model

    models = Path(world_model.DEFAULT_CHECKPOINT).parent
    found = {}
    for name, file in (("dexwm_no_hc_loss", "dexwm_sim_no_hc.pt"), ("dexwm_no_pretrain", "dexwm_sim_no_pretrain.pt")):
        if (models / file).is_file():
            found[name] = str(models / file)
    return found


def evaluate(settings: EvalSettings, through_ros: bool = False, ablations: dict[str, str] | None = None,
             baselines: bool = True, progress: bool = True, log_dir: Path | None = None) -> dict:
    from dexwm_planner.world_model import DexWM
    from dexwm_sim.camera import HeadCamera
    from dexwm_sim.kinematics import RobotKinematics

    kin = RobotKinematics.from_scene()
    w2c = HeadCamera().world_to_camera
    if through_ros:
        log_path = (log_dir / f"graph_{settings.task}.log") if log_dir else None
        outcomes = run_through_ros(settings, progress=progress, log_path=log_path)
    else:
        model = DexWM.load(settings.checkpoint or None)
        outcomes = run_in_process(WorldModelPolicy(model, kin, w2c, settings.preset), settings, progress)
    main = summarize(outcomes)
    results = {"task": settings.task, "episodes": len(outcomes), "success_rate": main["success_rate"],
               "ci95": main["ci95"], "replan_seconds_median": main["replan_seconds_median"],
               "through_ros": through_ros, "seeds": settings.seeds(), "settings": asdict(settings),
               "baselines": {}, "baseline_ci95": {}, "baseline_outcomes": {},
               "outcomes": [asdict(o) for o in outcomes]}
    if baselines:
        policies = [RandomShootingPolicy(kin, settings.preset)]
        for name, path in (ablations if ablations is not None else default_ablations()).items():
            policy = WorldModelPolicy(DexWM.load(path), kin, w2c, settings.preset)
            policy.name = name
            policies.append(policy)
        for policy in policies:
            # Baselines run in-process: they compare planners, not transports.
            base = run_in_process(policy, settings, progress)
            s = summarize(base)
            results["baselines"][policy.name] = s["success_rate"]
            results["baseline_ci95"][policy.name] = s["ci95"]
            results["baseline_outcomes"][policy.name] = [asdict(o) for o in base]
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--report":
        if len(argv) != 2 or not Path(argv[1]).is_dir():
            print("usage: dexwm-eval --report DIR (a folder of dexwm-eval results)", file=sys.stderr)
            return 2
        try:
            md, png = write_report(Path(argv[1]))
        except ValueError as e:
            print(f"dexwm-eval: error: {e}", file=sys.stderr)
            return 1
        print(md.read_text())
        print(f"wrote {md} and {png}")
        return 0
    parser = argparse.ArgumentParser(prog="dexwm-eval", description=__doc__.split("\n\n")[0],
                                     epilog="dexwm-eval --report DIR: summary table, plot and agreement of saved results")
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help=f"first evaluation seed (offset by {EVAL_SEED_OFFSET:,})")
    parser.add_argument("--out", type=Path, default=Path("out/eval/results.json"))
    parser.add_argument("--through-ros", action="store_true", help="run the episodes through the ROS graph")
    parser.add_argument("--checkpoint", default="", help="world-model checkpoint (default: the shipped model)")
    parser.add_argument("--max-steps", type=int, default=40, help="executed MPC steps per episode")
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--ablation", action="append", default=None, metavar="NAME=PATH",
                        help="extra world-model checkpoint evaluated as a baseline (repeatable)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.max_steps < 1:
        parser.error("--max-steps must be >= 1")
    ablations = None
    if args.ablation:
        ablations = {}
        for item in args.ablation:
            name, sep, path = item.partition("=")
            if not sep or not name or not Path(path).is_file():
                parser.error(f"--ablation needs NAME=PATH of an existing checkpoint, got {item!r}")
            ablations[name] = path
    if args.checkpoint and not Path(args.checkpoint).is_file():
        parser.error(f"checkpoint not found: {args.checkpoint}")
    if args.through_ros and args.preset != "cpu":
        parser.error("--through-ros uses the planner node's configured preset (config/planner.yaml)")
    settings = EvalSettings(task=args.task, episodes=args.episodes, seed=args.seed, max_steps=args.max_steps,
                            preset=args.preset, checkpoint=args.checkpoint)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        results = evaluate(settings, through_ros=args.through_ros, ablations=ablations,
                           baselines=not args.no_baselines, progress=not args.quiet, log_dir=args.out.parent)
    except (RuntimeError, TimeoutError, ValueError) as e:
        print(f"dexwm-eval: error: {e}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(results, indent=2))
    plot_success(results, args.out.with_suffix(".png"))
    lo, hi = results["ci95"]
    print(f"{args.task}: success {100 * results['success_rate']:.0f} % ({results['episodes']} episodes, "
          f"95 % CI {100 * lo:.0f}-{100 * hi:.0f} %), replan {results['replan_seconds_median']:.2f} s median")
    for name, rate in results["baselines"].items():
        print(f"  baseline {name}: {100 * rate:.0f} %")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
