"""dexwm-faults: scripted, repeatable fault injection against the real nodes.

    dexwm-faults [--quick] [--only TEXT] [--json] [--out FILE]

Starts the nodes as separate processes on a DDS domain of its own (localhost discovery only): the
simulation, the allegro node on its firmware emulator (virtual CAN bus), the franka node on
franky-sim, and the planner; then tries bad driver commands, bad goals, bad runtime parameters,
stalls (SIGSTOP/SIGCONT), corrupt checkpoints, bring-up errors and CAN silence. Each case has one pass
rule: **the robot holds** (no joint moves), **the error is clear** (the refusal names the cause),
**nothing is forwarded**, **the node stays up**.

The report (``--json``): ``tried``, ``passed``, ``unsafe_executed`` (commands that should have been
refused and moved a joint by more than ``MOVED_RAD``), and one entry per case. The exit code is 0
only when every case passed. ``--quick`` runs the subset that ``make test`` runs (simulation, hand,
start-up errors); the full run adds the franka driver on franky-sim, the planner in a graph and the
bring-up cases.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dexwm_ros.bringup import default_signals, stop_process_group

# A joint that moved more than this [rad] after a command that had to be refused counts as executed.
MOVED_RAD = 0.02
SETTLE_S = 0.6


@dataclass
class CaseResult:
    name: str
    group: str
    kind: str
    passed: bool
    unsafe_executed: bool = False
    detail: str = ""
    moved_rad: float = 0.0
    seconds: float = 0.0


@dataclass
class Report:
    cases: list[CaseResult] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"tried": len(self.cases), "passed": sum(c.passed for c in self.cases),
                "unsafe_executed": sum(c.unsafe_executed for c in self.cases),
                "cases": [asdict(c) for c in self.cases]}


# --------------------------------------------------------------------------------------- processes
def _environment(domain_id: int) -> dict[str, str]:
    from dexwm_ros.bringup import ros_environment

    env = ros_environment()
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("MUJOCO_GL", "egl")
    env["PYTHONFAULTHANDLER"] = "1"     # a hung node's threads are dumped before it is killed
    return env


class Processes:
    """Node processes of one run, each in its own session, stopped (SIGINT, then SIGKILL) at the end."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env, self.log_dir = env, log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def node(self, label: str, executable: str, *ros_args: str) -> subprocess.Popen:
        from dexwm_ros.bringup import node_executable

        cmd = [sys.executable, str(node_executable(executable))]
        if ros_args:
            cmd += ["--ros-args", *ros_args]
        return self.start(label, cmd)

    def start(self, label: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{label}.log", "wb")
        proc = subprocess.Popen(cmd, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=default_signals)
        log.close()
        self.procs[label] = proc
        return proc

    def log(self, label: str) -> str:
        path = self.log_dir / f"{label}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def alive(self, label: str) -> bool:
        return label in self.procs and self.procs[label].poll() is None

    def stop(self, label: str, timeout: float = 15.0) -> int | None:
        proc = self.procs.get(label)
        if proc is None:
            return None
        return stop_process_group(proc, timeout)

    def stop_all(self) -> None:
        for label in list(self.procs):
            self.stop(label)


def _wait(predicate: Callable[[], object], timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# ------------------------------------------------------------------------------------------- probe
class Probe:
    """The test side of the graph: joint states, diagnostics, MoveJoints clients, command topics."""

    def __init__(self, context):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.action import ActionClient
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import JointState
        from trajectory_msgs.msg import JointTrajectory

        from dexwm_ros.action import Execute, MoveJoints

        self.node = Node("dexwm_faults_probe", context=context)
        self.states = {"arm": None, "hand": None}
        self.received = {"arm": 0, "hand": 0}     # messages so far: a stalled publisher is not a still robot
        self.diagnostics: list = []
        self.node.create_subscription(JointState, "/franka/joint_states", lambda m: self._state("arm", m), 10)
        self.node.create_subscription(JointState, "/allegro/joint_states", lambda m: self._state("hand", m), 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._diag, 50)
        self.actions = {"arm": ActionClient(self.node, MoveJoints, "/franka/move_joints"),
                        "hand": ActionClient(self.node, MoveJoints, "/allegro/move_joints")}
        # Every action client before the executor spins: rclpy's ActionClient registers itself with
        # the node before it is complete, and a spinning executor can then touch it half-made.
        self.execute = ActionClient(self.node, Execute, "/dexwm/execute")
        self.arm_pub = self.node.create_publisher(JointTrajectory, "/franka/joint_command", 10)
        self.hand_pub = self.node.create_publisher(JointState, "/allegro/joint_command", 10)
        self.executor = MultiThreadedExecutor(num_threads=3, context=context)
        self.executor.add_node(self.node)
        self._closing = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:
            if not self._closing:   # a late callback racing the shutdown is not a fault
                raise

    def _state(self, part, msg):
        self.states[part] = np.asarray(msg.position, dtype=float)
        self.received[part] += 1

    def _diag(self, msg):
        self.diagnostics.append(msg)
        del self.diagnostics[:-200]

    def close(self):
        self._closing = True
        self.executor.shutdown()
        self._thread.join(timeout=5.0)
        self.node.destroy_node()

    def q(self, part: str) -> np.ndarray | None:
        value = self.states[part]
        return None if value is None else value.copy()

    def wait_still(self, part: str, timeout: float = 30.0) -> bool:
        """True once the part has not moved for half a second (a case must not measure a motion
        that was under way before it), judged on states that kept arriving meanwhile: a driver
        that publishes nothing for a while (a simulation busy resetting its episode) is not still."""
        def still():
            first, seen = self.q(part), self.received[part]
            time.sleep(0.5)
            last = self.q(part)
            return (first is not None and last is not None and self.received[part] - seen >= 3
                    and float(np.max(np.abs(last - first))) < 0.002)
        return bool(_wait(still, timeout, interval=0.0))

    def stamp(self, age: float | None):
        from builtin_interfaces.msg import Time

        if age is None:
            return Time()
        now = self.node.get_clock().now().nanoseconds * 1e-9 - age
        return Time(sec=int(now), nanosec=int((now % 1) * 1e9))

    def goal(self, positions, names=(), tolerance=(), time_limit=0.0, times=None, age=None):
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectoryPoint

        from dexwm_ros.action import MoveJoints

        goal = MoveJoints.Goal()
        goal.trajectory.header.stamp = self.stamp(age)
        goal.trajectory.joint_names = list(names)
        goal.trajectory.points = [JointTrajectoryPoint(positions=[float(v) for v in p])
                                  for p in np.atleast_2d(np.asarray(positions, dtype=float))]
        for point, t in zip(goal.trajectory.points, times or ()):
            point.time_from_start = Duration(sec=int(np.floor(t)), nanosec=int(round((t - np.floor(t)) * 1e9)))
        goal.goal_tolerance = [float(t) for t in tolerance]
        sec = int(np.floor(time_limit))
        goal.time_limit = Duration(sec=sec, nanosec=int(round((time_limit - sec) * 1e9)))
        return goal

    def move(self, part: str, goal, timeout: float = 30.0):
        """Send a goal and wait for its result; None when the server never answered."""
        client = self.actions[part]
        if not client.wait_for_server(timeout_sec=10.0):
            return None
        future = client.send_goal_async(goal)
        if not _wait(future.done, timeout):
            return None
        handle = future.result()
        if not handle.accepted:
            from dexwm_ros.action import MoveJoints
            return MoveJoints.Result(error_code=MoveJoints.Result.INVALID_GOAL, message="goal rejected")
        result = handle.get_result_async()
        if not _wait(result.done, timeout):
            return None
        return result.result().result

    def set_parameter(self, node: str, name: str, value):
        """SetParametersResult of one parameter change (None: no answer)."""
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        client = self.node.create_client(SetParameters, f"{node}/set_parameters")
        try:
            if not client.wait_for_service(timeout_sec=10.0):
                return None
            if isinstance(value, str):
                pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
            elif isinstance(value, int) and not isinstance(value, bool):
                pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
            elif isinstance(value, (list, tuple)):
                pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=[float(v) for v in value])
            else:
                pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(value))
            future = client.call_async(SetParameters.Request(parameters=[Parameter(name=name, value=pv)]))
            if not _wait(future.done, 10.0):
                return None
            return future.result().results[0]
        finally:
            self.node.destroy_client(client)

    def publish(self, part: str, positions, names=(), age=None):
        from sensor_msgs.msg import JointState
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        if part == "arm":
            msg = JointTrajectory(joint_names=list(names),
                                  points=[JointTrajectoryPoint(positions=[float(v) for v in positions])])
        else:
            msg = JointState(name=list(names), position=[float(v) for v in positions])
        msg.header.stamp = self.stamp(age)
        (self.arm_pub if part == "arm" else self.hand_pub).publish(msg)


# ------------------------------------------------------------------------------------------- cases
class Runner:
    def __init__(self, probe: Probe, processes: Processes, report: Report, only: str | None, verbose: bool):
        self.probe, self.processes, self.report, self.only, self.verbose = probe, processes, report, only, verbose

    def wanted(self, name: str) -> bool:
        return self.only is None or self.only in name

    def record(self, result: CaseResult) -> None:
        self.report.cases.append(result)
        if self.verbose:
            mark = "ok  " if result.passed else ("UNSAFE" if result.unsafe_executed else "FAIL")
            print(f"[dexwm-faults] {mark} {result.group}/{result.name}: {result.detail}", file=sys.stderr, flush=True)

    def refused(self, group: str, name: str, kind: str, part: str, process: str, send: Callable,
                expect: str, code: int | None = None) -> None:
        """A command that must be refused: the reason contains ``expect``, no joint moves, the node lives."""
        if not self.wanted(name):
            return
        t0 = time.monotonic()
        before = self.probe.q(part)
        try:
            outcome = send()
        except Exception as exc:  # the case itself failed to run: a failure, never a pass
            outcome = exc
        time.sleep(SETTLE_S)
        after = self.probe.q(part)
        moved = float(np.max(np.abs(after - before))) if before is not None and after is not None else float("nan")
        alive = self.processes.alive(process)
        if outcome is None:
            text, ok_reason = "no answer", False
        elif isinstance(outcome, Exception):
            text, ok_reason = f"{type(outcome).__name__}: {outcome}", False
        elif isinstance(outcome, str):           # topics answer through the node's log/diagnostics
            text, ok_reason = outcome, expect in outcome
        elif hasattr(outcome, "successful"):     # SetParametersResult
            text, ok_reason = outcome.reason, (not outcome.successful) and expect in outcome.reason
        else:                                    # MoveJoints result
            text = f"error {outcome.error_code}: {outcome.message}"
            ok_reason = (outcome.error_code != 0 and expect in outcome.message
                         and (code is None or outcome.error_code == code))
        still = np.isfinite(moved) and moved < MOVED_RAD
        self.record(CaseResult(name=name, group=group, kind=kind, passed=bool(ok_reason and still and alive),
                               unsafe_executed=bool(np.isfinite(moved) and moved >= MOVED_RAD),
                               detail=text + ("" if alive else f"; {process} died"), moved_rad=moved,
                               seconds=round(time.monotonic() - t0, 2)))

    def check(self, group: str, name: str, kind: str, fn: Callable[[], tuple[bool, str]]) -> None:
        """A fault case judged by ``fn`` -> (passed, detail)."""
        if not self.wanted(name):
            return
        t0 = time.monotonic()
        try:
            passed, detail = fn()
        except Exception as exc:
            passed, detail = False, f"{type(exc).__name__}: {exc}"
        self.record(CaseResult(name=name, group=group, kind=kind, passed=bool(passed), detail=detail,
                               seconds=round(time.monotonic() - t0, 2)))

    def log_says(self, label: str, text: str, timeout: float = 3.0) -> str | None:
        """The log line of ``label`` that contains ``text`` (None if it never appears)."""
        def find():
            return next((line for line in self.processes.log(label).splitlines() if text in line), None)
        return _wait(find, timeout)


def _stalled_goal_case(r: Runner, group: str, process: str, part: str, target) -> None:
    """SIGSTOP the driver, send a stamped goal, resume after longer than its max_command_age_s:
    the old goal must be refused (it was computed for a world that has moved on)."""
    name = f"{part}_goal_delivered_after_a_stall"
    if not r.wanted(name):
        return
    proc = r.processes.procs[process]
    result = {}

    def send():
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            goal = r.probe.goal(target, age=0.0)     # stamped now; the driver sees it after the stall
            worker = threading.Thread(target=lambda: result.update(res=r.probe.move(part, goal, timeout=40.0)))
            worker.start()
            time.sleep(4.0)
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        worker.join(timeout=45.0)
        return result.get("res")

    r.refused(group, name, "stale command", part, process, send, "stale goal")


def sim_cases(r: Runner) -> None:
    from dexwm_ros.action import MoveJoints

    R = MoveJoints.Result
    p, g = r.probe, "sim"
    if not _wait(lambda: p.q("arm") is not None and p.q("hand") is not None, 90):
        r.check(g, "sim_started", "bring-up", lambda: (False, r.processes.log("sim")[-1500:]))
        return
    _wait(lambda: p.actions["arm"].server_is_ready() and p.actions["hand"].server_is_ready(), 30)
    p.wait_still("arm")
    p.wait_still("hand")
    q_arm, q_hand = p.q("arm"), p.q("hand")
    lift = q_arm + np.r_[0.05, np.zeros(6)]
    arm = lambda **kw: (lambda: p.move("arm", p.goal(**kw)))  # noqa: E731
    hand = lambda **kw: (lambda: p.move("hand", p.goal(**kw)))  # noqa: E731
    r.refused(g, "arm_step_over_cap_1.0rad", "bad driver command", "arm", "sim",
              arm(positions=q_arm + np.r_[1.0, np.zeros(6)]), "max_joint_step", R.INVALID_JOINTS)
    r.refused(g, "arm_step_over_cap_1.2rad_joint3", "bad driver command", "arm", "sim",
              arm(positions=q_arm + np.r_[0, 0, 1.2, 0, 0, 0, 0]), "max_joint_step", R.INVALID_JOINTS)
    r.refused(g, "arm_waypoint_step_over_cap", "bad driver command", "arm", "sim",
              arm(positions=[q_arm + np.r_[0.3, np.zeros(6)], q_arm + np.r_[0.9, np.zeros(6)]]), "max_joint_step")
    r.refused(g, "arm_outside_limits", "bad driver command", "arm", "sim",
              arm(positions=q_arm + np.r_[5.0, np.zeros(6)]), "outside its limits", R.INVALID_JOINTS)
    r.refused(g, "arm_nan", "bad driver command", "arm", "sim", arm(positions=[np.nan] * 7), "non-finite")
    r.refused(g, "arm_unknown_joint_names", "bad driver command", "arm", "sim",
              arm(positions=q_arm, names=[f"joint{i}" for i in range(7)]), "joint_names", R.INVALID_JOINTS)
    r.refused(g, "arm_stale_goal_16s", "stale command", "arm", "sim", arm(positions=lift, age=16.0), "stale goal")
    r.refused(g, "arm_goal_from_the_future", "stale command", "arm", "sim", arm(positions=lift, age=-30.0),
              "in the future")
    r.refused(g, "arm_negative_time_from_start", "bad timing", "arm", "sim",
              arm(positions=lift, times=[-1.0]), "time_from_start")
    r.refused(g, "arm_non_monotonic_time_from_start", "bad timing", "arm", "sim",
              arm(positions=[lift, q_arm + np.r_[0.1, np.zeros(6)]], times=[1.0, 0.5]), "strictly increasing")
    r.refused(g, "arm_negative_time_limit", "bad timing", "arm", "sim", arm(positions=lift, time_limit=-1.0),
              "time_limit")
    r.refused(g, "arm_tolerance_1e9", "absurd tolerance", "arm", "sim", arm(positions=lift, tolerance=[1e9]),
              "goal_tolerance")
    r.refused(g, "arm_topic_step_over_cap", "bad driver command", "arm", "sim",
              lambda: (p.publish("arm", q_arm + np.r_[1.0, np.zeros(6)]),
                       r.log_says("sim", "/franka/joint_command rejected"))[1] or "", "max_joint_step")
    r.refused(g, "arm_topic_stale", "stale command", "arm", "sim",
              lambda: (p.publish("arm", lift, age=16.0),
                       r.log_says("sim", "stale joint_command"))[1] or "", "stale joint_command")
    r.refused(g, "hand_target_1e6", "bad driver command", "hand", "sim",
              hand(positions=np.r_[q_hand[:15], 1e6]), "outside its limits", R.INVALID_JOINTS)
    r.refused(g, "hand_topic_5rad", "bad driver command", "hand", "sim",
              lambda: (p.publish("hand", np.r_[q_hand[:15], 5.0]),
                       r.log_says("sim", "/allegro/joint_command rejected"))[1] or "", "outside its limits")
    r.refused(g, "hand_tolerance_1e9", "absurd tolerance", "hand", "sim",
              hand(positions=q_hand, tolerance=[1e9]), "goal_tolerance")
    r.refused(g, "param_arm_goal_tolerance_inf", "bad runtime parameter", "arm", "sim",
              lambda: p.set_parameter("/sim", "arm_goal_tolerance", float("inf")), "arm_goal_tolerance")
    r.refused(g, "param_max_command_age_1e9", "bad runtime parameter", "arm", "sim",
              lambda: p.set_parameter("/sim", "max_command_age_s", 1e9), "max_command_age_s")
    r.refused(g, "param_task_fly", "bad runtime parameter", "arm", "sim",
              lambda: p.set_parameter("/sim", "task", "fly"), "read-only")

    def reset_unknown_task():
        from dexwm_ros.srv import ResetEpisode

        client = p.node.create_client(ResetEpisode, "/sim/reset")
        if not client.wait_for_service(timeout_sec=10.0):
            return False, "no /sim/reset"
        future = client.call_async(ResetEpisode.Request(task="fly", seed=1))
        if not _wait(future.done, 30):
            return False, "no answer"
        res = future.result()
        return (not res.success and "unknown task" in res.message and r.processes.alive("sim")), res.message
    r.check(g, "reset_unknown_task", "bad goal", reset_unknown_task)
    _stalled_goal_case(r, g, "sim", "arm", q_arm + np.r_[0.2, np.zeros(6)])
    # after all that the simulation still obeys a good command
    def good_move():
        res = p.move("arm", p.goal(positions=lift))
        ok = res is not None and res.error_code == 0
        return ok, "good goal after the faults: " + (res.message if res is not None else "no answer")
    r.check(g, "sim_still_obeys_a_good_goal", "node stays up", good_move)


def hand_cases(r: Runner) -> None:
    """The allegro node on its emulator: refusals, gains, and no hand answering (error state)."""
    from dexwm_robot.allegro import JOINT_NAMES as HAND_NAMES
    from dexwm_ros.action import MoveJoints

    R = MoveJoints.Result
    p, g = r.probe, "allegro"
    if not _wait(lambda: p.q("hand") is not None, 60):
        r.check(g, "allegro_started", "bring-up", lambda: (False, r.processes.log("allegro")[-1500:]))
        return
    _wait(lambda: p.actions["hand"].server_is_ready(), 30)
    p.wait_still("hand")
    q = p.q("hand")
    hand = lambda **kw: (lambda: p.move("hand", p.goal(**kw)))  # noqa: E731
    r.refused(g, "hand_target_1e6", "bad driver command", "hand", "allegro",
              hand(positions=np.r_[q[:15], 1e6]), "outside its limits", R.INVALID_JOINTS)
    r.refused(g, "hand_named_target_5rad", "bad driver command", "hand", "allegro",
              hand(positions=[5.0], names=[HAND_NAMES[1]]), "outside its limits", R.INVALID_JOINTS)
    r.refused(g, "hand_topic_5rad", "bad driver command", "hand", "allegro",
              lambda: (p.publish("hand", [5.0], names=[HAND_NAMES[15]]),
                       r.log_says("allegro", "joint_command rejected"))[1] or "", "outside its limits")
    r.refused(g, "hand_stale_goal_16s", "stale command", "hand", "allegro", hand(positions=q, age=16.0), "stale goal")
    r.refused(g, "hand_negative_time_limit", "bad timing", "hand", "allegro",
              hand(positions=q, time_limit=-1.0), "time_limit")
    r.refused(g, "hand_non_monotonic_time", "bad timing", "hand", "allegro",
              hand(positions=[q, q], times=[0.5, 0.2]), "strictly increasing")
    r.refused(g, "hand_tolerance_1e9", "absurd tolerance", "hand", "allegro",
              hand(positions=q, tolerance=[1e9]), "goal_tolerance")
    r.refused(g, "hand_nan", "bad driver command", "hand", "allegro", hand(positions=[np.nan] * 16), "non-finite")
    for name, value in (("kp", [1000.0] * 16), ("kp", [1e6] * 16), ("kd", [5.0] * 16), ("kp", [float("nan")] * 16)):
        r.refused(g, f"param_{name}_{value[0]:g}", "bad runtime parameter", "hand", "allegro",
                  lambda name=name, value=value: p.set_parameter("/allegro", name, value), name)
    r.refused(g, "param_goal_tolerance_1e9", "bad runtime parameter", "hand", "allegro",
              lambda: p.set_parameter("/allegro", "goal_tolerance", 1e9), "goal_tolerance")
    from dexwm_robot.allegro import LOWER, UPPER
    _stalled_goal_case(r, g, "allegro", "hand", np.clip(q + 0.2, LOWER, UPPER))


def hand_silence_case(r: Runner, channel: str) -> None:
    """No hand answering on the bus: the node enters its error state and stays up, error on /diagnostics."""
    def silent():
        from diagnostic_msgs.msg import DiagnosticStatus

        r.processes.node("allegro_silent", "allegro", "-r", "__node:=allegro_silent",
                         "-p", "can_interface:=virtual", "-p", f"can_channel:={channel}-silent",
                         "-p", "emulate_hand:=false")
        seen = _wait(lambda: any(s.level == DiagnosticStatus.ERROR and "no encoder data" in s.message
                                 for d in list(r.probe.diagnostics) for s in d.status), 20)
        time.sleep(1.5)   # several more state ticks: a crash on the error path would end the process
        alive = r.processes.alive("allegro_silent")
        code = r.processes.stop("allegro_silent")
        text = r.processes.log("allegro_silent")
        ok = bool(seen) and alive and "Traceback" not in text and code == 0
        return ok, (f"error on /diagnostics: {bool(seen)}, alive: {alive}, exit code {code}"
                    + ("; traceback in the log" if "Traceback" in text else ""))
    r.check("allegro", "hand_silent_on_the_bus_error_state", "CAN silence", silent)


def franka_cases(r: Runner) -> None:
    from dexwm_ros.action import MoveJoints

    R = MoveJoints.Result
    p, g = r.probe, "franka"
    if not _wait(lambda: p.q("arm") is not None, 90):
        r.check(g, "franka_started", "bring-up", lambda: (False, r.processes.log("franka")[-1500:]))
        return
    _wait(lambda: p.actions["arm"].server_is_ready(), 30)
    p.wait_still("arm")
    q = p.q("arm")
    lift = q + np.r_[0.05, np.zeros(6)]
    arm = lambda **kw: (lambda: p.move("arm", p.goal(**kw)))  # noqa: E731
    r.refused(g, "arm_step_over_cap_1.0rad", "bad driver command", "arm", "franka",
              arm(positions=q + np.r_[1.0, np.zeros(6)]), "max_joint_step", R.INVALID_JOINTS)
    r.refused(g, "arm_outside_limits", "bad driver command", "arm", "franka",
              arm(positions=q + np.r_[0, 0, 0, 5.0, 0, 0, 0]), "outside its limits", R.INVALID_JOINTS)
    r.refused(g, "arm_stale_goal_16s", "stale command", "arm", "franka", arm(positions=lift, age=16.0), "stale goal")
    r.refused(g, "arm_negative_time_limit", "bad timing", "arm", "franka", arm(positions=lift, time_limit=-1.0),
              "time_limit")
    r.refused(g, "arm_negative_time_from_start", "bad timing", "arm", "franka",
              arm(positions=lift, times=[-0.5]), "time_from_start")
    r.refused(g, "arm_tolerance_1e9", "absurd tolerance", "arm", "franka", arm(positions=lift, tolerance=[1e9]),
              "goal_tolerance")
    for name, value in (("max_joint_step", 5.0), ("max_joint_step", 1.0), ("watchdog_timeout_s", float("inf")),
                        ("goal_tolerance", 1e9), ("relative_dynamics_factor", 2.0)):
        r.refused(g, f"param_{name}_{value:g}", "bad runtime parameter", "arm", "franka",
                  lambda name=name, value=value: p.set_parameter("/franka", name, value), name)
    r.refused(g, "arm_step_1.0rad_after_the_param_attack", "bad driver command", "arm", "franka",
              arm(positions=q + np.r_[1.0, np.zeros(6)]), "max_joint_step = 0.5000")
    _stalled_goal_case(r, g, "franka", "arm", q + np.r_[0.2, np.zeros(6)])


def startup_cases(r: Runner, work: Path) -> None:
    """Start-up errors: one clear line, a non-zero exit code, no traceback."""
    import torch

    from dexwm_planner.world_model import DexWM, default_checkpoint

    def nan_checkpoint():
        ck = torch.load(default_checkpoint(), map_location="cpu", weights_only=True)
        ck["predictor"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                           for k, v in ck["predictor"].items()}
        path = work / "all_nan.pt"
        torch.save(ck, path)
        try:
            DexWM.load(str(path))
        except ValueError as exc:
            message = str(exc)
            return ("NaN/inf" in message and "\n" not in message), message
        return False, "the all-NaN checkpoint loaded"
    r.check("startup", "checkpoint_all_nan_refused_at_load", "corrupt checkpoint", nan_checkpoint)

    def sim_bad(label, args, expect):
        def run():
            proc = r.processes.node(label, "sim", "-p", args)
            try:
                code = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                r.processes.stop(label)
                return False, f"sim started with {args}"
            text = r.processes.log(label)
            return (code != 0 and expect in text and "Traceback" not in text), text.strip().splitlines()[-1:]
        return run
    r.check("startup", "sim_seed_negative", "bad parameter", sim_bad("sim_seed_neg", "seed:=-5", "seed"))
    r.check("startup", "sim_seed_1e23", "bad parameter", sim_bad("sim_seed_big", "seed:=99999999999999999999999",
                                                                  "seed must be an integer"))
    r.check("startup", "sim_task_fly", "bad parameter", sim_bad("sim_task", "task:=fly", "unknown task"))

    def graph_seed_too_big():
        from dexwm_ros.bringup import tool_executable

        out = subprocess.run([sys.executable, str(tool_executable("dexwm-up")), "grasp",
                              "seed:=99999999999999999999999", "--duration", "1"], env=r.processes.env,
                             capture_output=True, text=True, timeout=60)
        return (out.returncode == 2 and "does not fit a 64-bit integer" in out.stderr), out.stderr.strip()
    r.check("startup", "dexwm_up_seed_too_big", "bring-up error", graph_seed_too_big)

    def bad_dds_environment(label, **overrides):
        """A node started with a broken DDS environment: one clear line, a non-zero exit, no traceback."""
        def run():
            from dexwm_ros.bringup import node_executable

            env = dict(r.processes.env, **overrides)
            proc = r.processes.start(label, [sys.executable, str(node_executable("allegro")), "--ros-args",
                                             "-p", "can_interface:=virtual", "-p", "emulate_hand:=true"], env=env)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                r.processes.stop(label)
                return False, f"the allegro node ran with {overrides}"
            text = r.processes.log(label)
            return (code != 0 and "Traceback" not in text and ("domain" in text.lower())), text.strip().splitlines()[-1:]
        return run
    r.check("startup", "dds_domain_id_not_a_number", "DDS environment",
            bad_dds_environment("dds_domain_text", ROS_DOMAIN_ID="abc"))
    r.check("startup", "dds_domain_id_out_of_range", "DDS environment",
            bad_dds_environment("dds_domain_300", ROS_DOMAIN_ID="300"))

    def interrupted_startup():
        proc = r.processes.node("planner_interrupted", "planner")
        time.sleep(2.0)    # in the middle of importing torch / loading the model
        code = r.processes.stop("planner_interrupted", timeout=60)
        text = r.processes.log("planner_interrupted")
        ok = "Traceback" not in text and code is not None and code >= 0
        return ok, f"exit code {code}, {len(text)} bytes of output" + ("" if ok else f": {text[-4000:]}")
    r.check("startup", "planner_ctrl_c_during_startup", "bring-up error", interrupted_startup)


def planner_cases(r: Runner) -> None:
    """The planner in the simulated graph: capture failures, degenerate goals, bad parameters."""
    from std_srvs.srv import Trigger

    from dexwm_ros.action import Execute
    from dexwm_ros.image_conversion import numpy_to_image

    p, g = r.probe, "planner"
    capture = p.node.create_client(Trigger, "/dexwm/capture_goal")
    execute = p.execute
    if not (capture.wait_for_service(timeout_sec=120) and execute.wait_for_server(timeout_sec=60)):
        r.check(g, "planner_started", "bring-up", lambda: (False, r.processes.log("planner")[-1500:]))
        return

    def call(future, timeout=30):
        return future.result() if _wait(future.done, timeout) else None

    # Set-up of every planner case, and a case itself: a capture before the first frame fails (it
    # used to kill the planner at the next, successful capture), and one after it succeeds.
    first = call(capture.call_async(Trigger.Request()))
    r.processes.node("sim", "sim", "--params-file", str(_config("sim.yaml")))
    _wait(lambda: p.q("arm") is not None, 90)
    second = _wait(lambda: (lambda res: res if res is not None and res.success else None)(
        call(capture.call_async(Trigger.Request()))), 60, interval=1.0)
    r.check(g, "capture_fails_then_succeeds", "bad goal",
            lambda: (first is not None and not first.success and second is not None and r.processes.alive("planner"),
                     f"first: {first.message if first else None}; then: {second.message if second else None}; "
                     f"planner alive: {r.processes.alive('planner')}"))

    def execute_refused(name, goal, expect):
        def run():
            moved_before = p.q("arm")
            future = execute.send_goal_async(goal)
            handle = call(future)
            if handle is None or not handle.accepted:
                return False, "goal not accepted"
            res = call(handle.get_result_async(), 60)
            time.sleep(SETTLE_S)
            moved = float(np.max(np.abs(p.q("arm") - moved_before)))
            reason = res.result.reason if res else "no result"
            return (expect in reason and moved < MOVED_RAD and r.processes.alive("planner")), reason
        r.check(g, name, "bad goal", run)
    tiny = numpy_to_image(np.zeros((1, 1, 3), np.uint8), 0.0, "", "rgb8")
    execute_refused("goal_image_1x1", Execute.Goal(goal_image=tiny, max_steps=1), "too small")
    execute_refused("max_steps_4294967295", Execute.Goal(use_captured_goal=True, max_steps=4294967295),
                    "max_steps 4294967295")
    r.refused(g, "param_elites_over_samples", "bad runtime parameter", "arm", "planner",
              lambda: p.set_parameter("/dexwm/planner", "elites", 1000), "elites")

    def sim_paused_mid_goal():
        """The simulation freezes (SIGSTOP) while the planner executes, then resumes: the planner has
        given up by then (driver_error), and nothing it sent before is executed late."""
        handle = call(execute.send_goal_async(Execute.Goal(use_captured_goal=True, max_steps=50)))
        if handle is None or not handle.accepted:
            return False, "goal not accepted"
        start = p.q("arm")
        if not _wait(lambda: float(np.max(np.abs(p.q("arm") - start))) > 0.005, 120, interval=0.1):
            return False, "the planner never moved the arm"
        sim = r.processes.procs["sim"]
        os.killpg(sim.pid, signal.SIGSTOP)
        try:
            frozen = p.q("arm")
            time.sleep(10.0)    # longer than the planner waits for a driver (move_timeout_s + 5 s)
        finally:
            os.killpg(sim.pid, signal.SIGCONT)
        result = call(handle.get_result_async(), 60)
        reason = result.result.reason if result else "no result"
        time.sleep(3.0)
        held = p.q("arm")
        time.sleep(2.0)
        drift = float(np.max(np.abs(p.q("arm") - held)))
        after = float(np.max(np.abs(held - frozen)))
        stale = "stale goal" in r.processes.log("sim")
        # at most the step that was under way when the world froze (the planner's cap is 0.25 rad)
        ok = reason.startswith(("driver_error", "stale_input")) and drift < 0.005 and after <= 0.26
        return ok, (f"planner: {reason}; moved {after:.3f} rad after the resume, then drift {drift:.4f} rad; "
                    f"stale goal refused by the sim: {stale}")
    r.check(g, "sim_paused_mid_goal_nothing_late_executed", "pause", sim_paused_mid_goal)

    def planner_killed_mid_goal():
        """kill -9 of the planner while it executes: no new command comes, the robot holds."""
        handle = call(execute.send_goal_async(Execute.Goal(use_captured_goal=True, max_steps=50)))
        if handle is None or not handle.accepted:
            return False, "goal not accepted"
        start = p.q("arm")
        moving = _wait(lambda: float(np.max(np.abs(p.q("arm") - start))) > 0.005, 120, interval=0.1)
        if not moving:
            return False, "the planner never moved the arm"
        os.killpg(r.processes.procs["planner"].pid, signal.SIGKILL)
        time.sleep(2.0)     # the step under way ends (move_duration_s) and nothing follows
        held = p.q("arm")
        time.sleep(2.0)
        drift = float(np.max(np.abs(p.q("arm") - held)))
        return drift < 0.005 and r.processes.alive("sim"), f"arm drift {drift:.4f} rad in the 2 s after the kill"
    r.check(g, "planner_killed_mid_goal_robot_holds", "kill", planner_killed_mid_goal)


def _config(name: str) -> Path:
    from dexwm_ros.graph import config_dir

    return config_dir() / name


# ---------------------------------------------------------------------------------------------- main
def run(quick: bool, only: str | None, verbose: bool) -> Report:
    import rclpy
    from rclpy.context import Context

    from dexwm_ros.bringup import join_graph

    domain_id = int(os.environ.get("DEXWM_FAULTS_DOMAIN_ID", 1 + (os.getpid() * 7) % 100))
    env = _environment(domain_id)
    join_graph(env)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="dexwm-faults-") as tmp:
        work = Path(tmp)
        processes = Processes(env, work)
        context = Context()
        rclpy.init(context=context, domain_id=domain_id)
        probe = Probe(context)
        runner = Runner(probe, processes, report, only, verbose)
        try:
            # 1. the simulation (arm + hand interfaces)
            processes.node("sim", "sim", "--params-file", str(_config("sim.yaml")), "-p", "task:=reach",
                           "-p", "seed:=3")
            sim_cases(runner)
            processes.stop("sim")
            probe.states = {"arm": None, "hand": None}
            # 2. the allegro node on its emulator, and a hand that never answers
            channel = f"dexwm-faults-{os.getpid()}"
            processes.node("allegro", "allegro", "--params-file", str(_config("allegro.yaml")),
                           "-p", "can_interface:=virtual", "-p", f"can_channel:={channel}", "-p", "emulate_hand:=true")
            hand_cases(runner)
            processes.stop("allegro")
            probe.states = {"arm": None, "hand": None}
            hand_silence_case(runner, channel)
            # 3. start-up errors
            startup_cases(runner, work)
            if not quick:
                # 4. the franka node on franky-sim
                from franka_driver.franky_sim import start_franky_sim

                sim_proc, host = start_franky_sim(work / "franky_sim.log")
                try:
                    processes.node("franka", "franka", "--params-file", str(_config("franka.yaml")),
                                   "-p", f"robot_ip:={host}")
                    franka_cases(runner)
                    processes.stop("franka")
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(sim_proc.pid, signal.SIGKILL)
                    sim_proc.wait()
                probe.states = {"arm": None, "hand": None}
                # 5. the planner (started before the simulation: its first capture must fail)
                processes.node("planner", "planner", "--params-file", str(_config("planner.yaml")),
                               "-r", "__ns:=/dexwm")
                planner_cases(runner)
        finally:
            probe.close()
            processes.stop_all()
            rclpy.shutdown(context=context)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dexwm-faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the fast subset (simulation, hand, start-up errors), as run by make test")
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this text")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    try:
        report = run(args.quick, args.only, verbose=not args.json)
    except KeyboardInterrupt:
        print("dexwm-faults: interrupted", file=sys.stderr)
        return 130
    data = report.as_dict()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"dexwm-faults: tried {data['tried']}, passed {data['passed']}, "
              f"unsafe_executed {data['unsafe_executed']}")
    return 0 if data["tried"] and data["passed"] == data["tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
