"""dexwm-viz: a live viewer for the pip-only set-up (no ROS desktop, no RViz), on rerun's web viewer
served from this machine.

    dexwm-viz [live] [--web-port 9090] [--grpc-port 9876] [--save FILE.rrd] [--camera-hz 10] [--joints-hz 30]
    dexwm-viz eval RESULTS.json [--episodes N] [--render] [--web-port ...] [--save FILE.rrd]

``live`` (default): a small ROS node (``dexwm_viz``, :mod:`dexwm_ros.viz_node`) subscribes to the
running graph (docs/CONTRACT.md): the camera image, ``/dexwm/goal_image``,
``/dexwm/predicted_rollout``, the planned 3D hand keypoints (``/dexwm/keypoints``), both joint
states and ``/dexwm/status`` (costs, replan time, state), all on the ``ros_time`` timeline of their
header stamps. ``eval``: the episodes ``dexwm-eval`` saved in its result JSON (per episode: seed,
outcome, the cost of every MPC step); ``--render`` also shows, for the first ``--episodes``, the
episode's start view, goal image and start hand keypoints, re-created from its seed in the
simulation (``dexwm-eval`` saves no frames; the executed motion itself is not replayed).

Open the printed address in a browser (``http://localhost:9090``). ``--save FILE.rrd`` writes a
recording instead of serving (open it later with the ``rerun`` viewer or drop it onto the web
viewer). rerun-sdk is large (about 170 MB with pyarrow), so it is not in requirements.txt: the
first run installs requirements-viz.txt into this Python environment, saying so.

This module holds the rerun side and is ROS-free; the node converts messages to arrays and calls it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REQUIREMENTS = "requirements-viz.txt"
APP_ID = "dexwm_viz"


# ---------------------------------------------------------------------------------- installation
def requirements_file() -> Path:
    """requirements-viz.txt: installed next to config/ (share/dexwm_ros), or the checkout's."""
    from dexwm_ros.graph import share_dir

    for candidate in (share_dir() / REQUIREMENTS, Path(__file__).resolve().parents[1] / REQUIREMENTS):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{REQUIREMENTS} not found next to {share_dir()} or the source checkout")


def ensure_rerun(install: bool = True):
    """Import rerun, installing requirements-viz.txt first when it is missing (and ``install``)."""
    try:
        import rerun

        return rerun
    except ImportError:
        pass
    req = requirements_file()
    command = [sys.executable, "-m", "pip", "install", "-r", str(req)]
    if not install:
        raise SystemExit(f"dexwm-viz: rerun-sdk is not installed; install it with: {' '.join(command)}")
    print(f"dexwm-viz: first use: installing the viewer (rerun-sdk, about 170 MB) from {req} into "
          f"{sys.prefix} ...", file=sys.stderr, flush=True)
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"dexwm-viz: installing the viewer failed; run: {' '.join(command)}")
    import importlib

    importlib.invalidate_caches()
    import rerun

    return rerun


# ---------------------------------------------------------------------------------- the recording
def blueprint():
    """The layout: images on top, 3D keypoints, joint and cost plots, planner state."""
    import rerun.blueprint as rrb

    return rrb.Blueprint(
        rrb.Vertical(
            rrb.Horizontal(
                rrb.Spatial2DView(origin="camera", name="camera"),
                rrb.Spatial2DView(origin="planner/goal", name="goal"),
                rrb.Spatial3DView(origin="world", name="hand keypoints (world)"),
            ),
            rrb.Spatial2DView(origin="planner/predicted_rollout", name="predicted rollout"),
            rrb.Horizontal(
                rrb.TimeSeriesView(origin="joints", name="joint positions [rad]"),
                rrb.TimeSeriesView(origin="planner/cost", name="costs"),
                rrb.TextLogView(origin="planner/log", name="planner"),
            ),
            row_shares=[3, 2, 3],
        ),
        collapse_panels=True,
    )


class ViewerLog:
    """What the viewer shows, from plain arrays; one rerun recording, served or saved."""

    def __init__(self, rr, recording_name: str):
        self.rr = rr
        rr.init(APP_ID, recording_id=f"{recording_name}-{int(time.time())}")
        self.url = ""
        self._series_names: dict[str, tuple[str, ...]] = {}

    # -- sinks
    def serve(self, web_port: int, grpc_port: int, memory_limit: str = "512MiB") -> str:
        """Serve the data over gRPC and the web viewer over HTTP; returns the address to open."""
        uri = self.rr.serve_grpc(grpc_port=grpc_port, default_blueprint=blueprint(), server_memory_limit=memory_limit)
        self.rr.serve_web_viewer(web_port=web_port, open_browser=False, connect_to=uri)
        from urllib.parse import quote

        self.url = f"http://localhost:{web_port}/?url={quote(uri, safe='')}"
        return self.url

    def save(self, path: Path) -> None:
        self.rr.save(str(path), default_blueprint=blueprint())

    def close(self) -> None:
        self.rr.disconnect()

    # -- content
    def time(self, stamp_s: float | None = None, **sequences: int) -> None:
        if stamp_s is not None:
            self.rr.set_time("ros_time", timestamp=stamp_s if stamp_s > 0 else time.time())
        for name, value in sequences.items():
            self.rr.set_time(name, sequence=int(value))

    def image(self, path: str, rgb: np.ndarray, jpeg_quality: int | None = None) -> None:
        img = self.rr.Image(np.ascontiguousarray(rgb, dtype=np.uint8))
        # JPEG keeps a long live session within the server's memory limit; goal and rollout stay exact.
        self.rr.log(path, img.compress(jpeg_quality=jpeg_quality) if jpeg_quality else img)

    def joints(self, group: str, names, positions) -> None:
        """One entity per joint group, one named series per joint: a single log call per message
        (an entity per joint made 23 calls per joint-state pair and slowed the web viewer's ingest)."""
        names = tuple(names)
        if self._series_names.get(group) != names:
            self._series_names[group] = names
            self.rr.log(f"joints/{group}", self.rr.SeriesLines(names=list(names)), static=True)
        self.rr.log(f"joints/{group}", self.rr.Scalars(np.asarray(positions, dtype=np.float64)))

    def keypoints(self, path: str, points: np.ndarray, colour=(255, 102, 255), radius: float = 0.008) -> None:
        """Hand keypoints (N, 3) [m] in the world frame, with the MANO finger chains as lines."""
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        self.rr.log(path, self.rr.Points3D(pts, radii=radius, colors=[colour]))
        if len(pts) == 21:   # wrist, then 4 points per finger from the knuckle out
            chains = [np.concatenate([pts[:1], pts[1 + 4 * f: 5 + 4 * f]]) for f in range(5)]
            self.rr.log(f"{path}/bones", self.rr.LineStrips3D(chains, colors=[colour], radii=radius / 3))

    def clear(self, path: str) -> None:
        self.rr.log(path, self.rr.Clear(recursive=True))

    def scalar(self, path: str, value: float) -> None:
        if np.isfinite(value):
            self.rr.log(path, self.rr.Scalars(float(value)))

    def text(self, path: str, text: str, level: str = "INFO") -> None:
        self.rr.log(path, self.rr.TextLog(text, level=level))


# ---------------------------------------------------------------------------------- saved episodes
def load_eval_results(path: Path) -> dict:
    """A dexwm-eval result JSON; a clear error when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or "outcomes" not in data or "task" not in data:
        raise ValueError(f"{path}: not a dexwm-eval result (no 'task' and 'outcomes')")
    for o in data["outcomes"]:
        if not {"seed", "success", "costs"} <= set(o):
            raise ValueError(f"{path}: an outcome lacks seed, success or costs")
    return data


def log_eval(view: ViewerLog, results: dict, episodes: int, render: bool) -> int:
    """Log every saved episode's costs per MPC step and outcome; with ``render``, the first
    ``episodes`` episodes' start view, goal image and start hand keypoints from their seeds."""
    task = results["task"]
    outcomes = results["outcomes"]
    for i, o in enumerate(outcomes):
        name = f"seed_{o['seed']}"
        view.time(episode=i)
        view.text("planner/log", f"{task} episode {i} (seed {o['seed']}): {'success' if o['success'] else 'failure'}"
                  f" ({o.get('reason', '')}) after {o.get('steps', len(o['costs']))} steps, final distance "
                  f"{o.get('final_distance', float('nan')):.3f} m", level="INFO" if o["success"] else "WARN")
        for step, cost in enumerate(o["costs"]):
            view.time(episode=i, mpc_step=step)
            view.scalar(f"planner/cost/{name}", cost)
        view.scalar("planner/cost/final_distance", o.get("final_distance", float("nan")))
    if render and outcomes:
        _render_episodes(view, task, outcomes[:episodes])
    return len(outcomes)


def _render_episodes(view: ViewerLog, task: str, outcomes: list[dict]) -> None:
    from dexwm_robot.joints import ARM_DOF, ARM_JOINT_NAMES
    from dexwm_robot.kinematics import RobotKinematics
    from dexwm_ros.evaluate import sim_camera_size
    from dexwm_sim import tasks
    from dexwm_sim.scene import SimEnv

    size = sim_camera_size()
    env = SimEnv(render_size=size)
    kin = RobotKinematics.from_description()
    try:
        for i, o in enumerate(outcomes):
            episode = env.reset(task, int(o["seed"]))
            goal = tasks.make_goal(env, episode, sizes=(size,))
            view.time(episode=i, mpc_step=0)
            view.image("camera", env.render(*size))
            view.image("planner/goal", goal.image)
            view.keypoints("world/hand/start", kin.keypoints_world(env.joint_positions()))
            view.keypoints("world/hand/goal", kin.keypoints_world(goal.joints), colour=(80, 220, 120))
            view.joints("arm", ARM_JOINT_NAMES, env.joint_positions()[:ARM_DOF])
    finally:
        env.close()


# ---------------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dexwm-viz", description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="?", choices=["live", "eval"], default="live")
    ap.add_argument("results", nargs="?", type=Path, help="eval: a dexwm-eval result JSON")
    ap.add_argument("--web-port", type=int, default=9090, help="HTTP port of the web viewer")
    ap.add_argument("--grpc-port", type=int, default=9876, help="port the viewer reads the data from")
    ap.add_argument("--save", type=Path, help="write a .rrd recording instead of serving")
    ap.add_argument("--camera-hz", type=float, default=10.0, help="live: camera frames shown per second")
    ap.add_argument("--joints-hz", type=float, default=30.0, help="live: joint states shown per second and group")
    ap.add_argument("--episodes", type=int, default=3, help="eval --render: episodes to re-create")
    ap.add_argument("--render", action="store_true", help="eval: re-create start and goal views from the seeds")
    ap.add_argument("--no-install", action="store_true", help="fail instead of installing rerun-sdk")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.mode == "eval" and args.results is None:
        ap.error("eval needs a dexwm-eval result JSON")
    if args.mode == "live" and args.results is not None:
        ap.error("live takes no file (did you mean: dexwm-viz eval FILE?)")
    if not (args.camera_hz > 0 and args.joints_hz > 0 and args.episodes > 0):
        ap.error("--camera-hz, --joints-hz and --episodes must be positive")
    try:
        results = load_eval_results(args.results) if args.mode == "eval" else None
    except ValueError as exc:
        print(f"dexwm-viz: error: {exc}", file=sys.stderr)
        return 2
    rr = ensure_rerun(install=not args.no_install)
    view = ViewerLog(rr, args.mode if results is None else f"eval-{results['task']}")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        view.save(args.save)
    else:
        url = view.serve(args.web_port, args.grpc_port)
        print(f"dexwm-viz: open {url}", flush=True)
    if results is not None:
        n = log_eval(view, results, args.episodes, args.render)
        print(f"dexwm-viz: {n} {results['task']} episode(s) from {args.results}", flush=True)
        if args.save:
            view.close()
            print(f"dexwm-viz: wrote {args.save}", flush=True)
            return 0
        try:
            while True:   # the server lives in this process
                time.sleep(1.0)
        except KeyboardInterrupt:
            return 0
    from dexwm_ros.viz_node import run

    try:
        return run(view, camera_hz=args.camera_hz, joints_hz=args.joints_hz)
    finally:
        view.close()


if __name__ == "__main__":
    sys.exit(main())
