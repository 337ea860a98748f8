"""dexwm-up: start a DexWM-ROS graph without a ROS distribution (no `launch`, no `ros2` CLI).

    dexwm-up GRAPH [name:=value ...] [--duration SECONDS]

Starts the nodes that config/graph.yaml lists for GRAPH (the launch files read the same file), each
in its own process with the same parameters, prefixes their output with the node name, forwards
Ctrl-C to all of them, and stops everything with a non-zero exit code when a required node dies.
It is deliberately small: launch files remain the way to start the stack in a ROS 2 workspace.

Discovery: the nodes dexwm-up starts keep DDS discovery on this host
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) on the caller's ROS_DOMAIN_ID. The nodes themselves set
nothing: under ``ros2 launch`` the user's environment decides (see the README's lab section).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dexwm_ros.graph import (PACKAGE, GraphError, NodeSpec, graph_names, installed_executable, load_description,
                             parse_assignments, resolve_graph)

STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


def install_prefixes() -> list[Path]:
    """Prefixes that may hold this package's executables, best first: the prefix the dexwm_ros package
    in use was installed into (<prefix>/lib/pythonX.Y/site-packages/dexwm_ros; a colcon install or
    the venv), the ament index (a sourced ROS workspace), then sys.prefix."""
    import dexwm_ros

    prefixes = []
    for package_dir in map(Path, dexwm_ros.__path__):
        if package_dir.parent.name in ("site-packages", "dist-packages"):
            prefixes.append(package_dir.parents[3])
    try:
        from ament_index_python.packages import get_package_prefix

        prefixes.append(Path(get_package_prefix("dexwm_ros")))
    except Exception:  # no ROS environment, or the package is not in the index
        pass
    prefixes.append(Path(sys.prefix))
    return list(dict.fromkeys(prefixes))


def _find(relative: Path) -> Path:
    candidates = [prefix / relative for prefix in install_prefixes()]
    return next((c for c in candidates if c.is_file()), candidates[0])


def node_executable(name: str) -> Path:
    """lib/dexwm_ros/NAME of the prefix this package is installed in (first that has it)."""
    return _find(Path("lib") / "dexwm_ros" / name)


def tool_executable(name: str) -> Path:
    """bin/NAME (dexwm-up, ...) of the prefix this package is installed in (first that has it)."""
    return _find(Path("bin") / name)


# The variables that decide which DDS graph a process joins.
GRAPH_VARIABLES = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")


def ros_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the processes dexwm-up and the test harnesses start: DDS discovery stays
    on this host (the caller's os.environ is not changed)."""
    env = dict(os.environ if base is None else base)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def join_graph(env: dict[str, str]) -> None:
    """Let this process's own rclpy clients join the graph whose processes run with ``env``.

    For harnesses (demo, dexwm-faults) that start a private graph and talk to it: rclpy takes the
    discovery range only from the environment, so it is set here, at run time, right before
    ``rclpy.init``; never at import.
    """
    for name in GRAPH_VARIABLES:
        if name in env:
            os.environ[name] = env[name]


def default_signals():
    """For a child process (``preexec_fn``): SIGINT and SIGTERM at their default dispositions. A
    process started in the background by a non-interactive shell (nohup, CI, ``cmd &`` in a script)
    has SIGINT ignored, and its children inherit that: a node would then lose a Ctrl-C that comes
    before it installs its own handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _die_with_parent():
    """Children get SIGTERM if dexwm-up itself is killed, so no node is ever orphaned."""
    default_signals()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def stop_process_group(proc: subprocess.Popen, timeout: float = 20.0, abort_grace: float = 5.0) -> int | None:
    """Stop a process started in its own session: SIGINT (a clean rclpy shutdown), and if it has not
    exited within ``timeout`` SIGABRT, so that Python's fault handler (PYTHONFAULTHANDLER) writes
    where each thread was stuck, then SIGKILL after ``abort_grace``. Returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)    # a stopped process cannot handle SIGINT
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=abort_grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


class Bringup:
    """A set of node processes that live and die together."""

    def __init__(self, nodes: list[NodeSpec], env: dict[str, str], out=sys.stdout):
        self.nodes = nodes
        self.env = env
        self.out = out
        self.procs: dict[str, tuple[NodeSpec, subprocess.Popen]] = {}
        self._print_lock = threading.Lock()

    def _say(self, label: str, text: str):
        with self._print_lock:
            self.out.write(f"[{label}] {text}\n")
            self.out.flush()

    def _pump(self, label: str, stream):
        for raw in iter(stream.readline, b""):
            self._say(label, raw.decode(errors="replace").rstrip())
        stream.close()

    def start(self, extra: list[tuple[str, list[str], bool]] = ()):
        for spec in self.nodes:
            if spec.package != PACKAGE:   # another ROS package's executable (C++ or Python): run as is
                exe = installed_executable(spec.package, spec.executable)
                if exe is None:
                    raise GraphError(f"node executable not found: {spec.package}/{spec.executable}")
                self._spawn(spec.full_name, [str(exe), *spec.ros_args()], spec)
                continue
            exe = node_executable(spec.executable)
            if not exe.is_file():
                raise GraphError(f"node executable not found: {exe} (looked in "
                                 f"{', '.join(str(p) for p in install_prefixes())}; run `make setup` or "
                                 "build the workspace)")
            self._spawn(spec.full_name, [sys.executable, str(exe), *spec.ros_args()], spec)
        for label, cmd, _required in extra:
            self._spawn(label, cmd, None)

    def _spawn(self, label: str, cmd: list[str], spec: NodeSpec | None):
        try:
            proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        except OSError as e:
            raise GraphError(f"cannot start {label}: {e}") from e
        self.procs[label] = (spec, proc)
        threading.Thread(target=self._pump, args=(label, proc.stdout), daemon=True).start()
        self._say("dexwm-up", f"started {label} (pid {proc.pid})")

    def dead_required(self) -> tuple[str, int] | None:
        for label, (spec, proc) in self.procs.items():
            code = proc.poll()
            if code is not None and (spec is None or spec.required):
                return label, code
        return None

    def stop(self):
        """SIGINT to every node (a clean rclpy shutdown), then SIGTERM, then SIGKILL."""
        for sig, grace in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            alive = [(label, p) for label, (_, p) in self.procs.items() if p.poll() is None]
            if not alive:
                return
            for _, p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            for label, p in alive:
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    if sig != signal.SIGKILL:
                        self._say("dexwm-up", f"{label} did not stop on {signal.Signals(sig).name}")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="dexwm-up", description=__doc__.split("\n\n")[0],
        epilog="Arguments (name:=value) are those of the launch files; see the README table.")
    parser.add_argument("graph", help="graph to start: grasp, reach or place")
    parser.add_argument("assignments", nargs="*", metavar="name:=value", help="launch arguments")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop cleanly after this many seconds (default: run until Ctrl-C)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        description = load_description()
        if args.graph not in graph_names(description):
            raise GraphError(f"unknown graph '{args.graph}' (choose from: {', '.join(graph_names(description))})")
        arguments = parse_assignments(args.assignments)
        notices: list[str] = []
        nodes = resolve_graph(args.graph, arguments, description, notices)
    except GraphError as e:
        print(f"dexwm-up: error: {e}", file=sys.stderr)
        return 2
    for notice in notices:
        print(f"dexwm-up: {notice}", file=sys.stderr)

    extra = []
    use_rviz = arguments.get("use_rviz", "false").lower() in ("true", "1", "yes", "on")
    if use_rviz:
        rviz = shutil.which("rviz2")
        rviz_config = nodes[0].params_file.parent / "dexwm.rviz" if nodes else None
        if rviz:
            extra.append(("rviz", [rviz, "-d", str(rviz_config)], False))
        else:
            print("dexwm-up: warning: use_rviz:=true but rviz2 is not installed; continuing without it",
                  file=sys.stderr)

    bringup = Bringup(nodes, ros_environment())
    stop_requested = threading.Event()

    def request_stop(signum, _frame):
        bringup._say("dexwm-up", f"{signal.Signals(signum).name}: stopping all nodes")
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    exit_code = 0
    try:
        bringup.start(extra)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop_requested.is_set():
            dead = bringup.dead_required()
            if dead:
                label, code = dead
                print(f"dexwm-up: error: required node {label} exited with code {code}; stopping the graph",
                      file=sys.stderr)
                exit_code = 1
                break
            if deadline is not None and time.monotonic() >= deadline:
                bringup._say("dexwm-up", f"--duration {args.duration:g} s elapsed: stopping all nodes")
                break
            stop_requested.wait(0.2)
    except GraphError as e:
        print(f"dexwm-up: error: {e}", file=sys.stderr)
        exit_code = 2
    finally:
        bringup.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
