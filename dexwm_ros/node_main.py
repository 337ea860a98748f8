"""The ``main()`` every node executable shares: start, spin, and stop cleanly on Ctrl-C/SIGTERM."""
from __future__ import annotations

import faulthandler
import signal
import sys
from typing import Callable

import rclpy
from rclpy.exceptions import InvalidParameterTypeException, ParameterException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


SIGNAL_POLL_S = 0.25
# Tearing a node down (executor, destroy_node, rclpy/DDS shutdown) after Ctrl-C must not take
# longer than this; past it the process writes every thread's stack to stderr and exits with 1.
TEARDOWN_LIMIT_S = 20.0


class _StopRequest:
    """What Ctrl-C and SIGTERM do. During start-up they raise KeyboardInterrupt (a constructor that
    loads a model may take seconds); while the node spins, the first one only sets ``requested``,
    which the spin loop reads: an exception raised at an arbitrary point inside rclpy's executor
    could leave one of its locks taken and the teardown waiting on it for ever. A second signal
    raises again (the user insists). From the first signal on, the rest of the process's life is
    bounded by ``teardown_limit_s`` (a C-level watchdog: it runs even while Python is blocked)."""

    def __init__(self, teardown_limit_s: float):
        self.teardown_limit_s = teardown_limit_s
        self.spinning = False
        self.requested = False

    def arm_watchdog(self) -> None:
        faulthandler.dump_traceback_later(self.teardown_limit_s, exit=True)

    def __call__(self, signum, frame):
        first = not self.requested
        self.requested = True
        if first:
            self.arm_watchdog()
            if self.spinning:
                return
        raise KeyboardInterrupt


def run_node(name: str, make_node: Callable[[], Node], args=None, *,
             startup_errors: tuple[type[BaseException], ...] = (ValueError,), startup_exit_code: int = 2,
             num_threads: int = 4, teardown_limit_s: float = TEARDOWN_LIMIT_S) -> int:
    """Create the node, spin it, and tear it down; returns the process exit code.

    Ctrl-C and SIGTERM are handled here rather than by rclpy's handler, so that ``destroy_node``
    (which stops worker threads, drivers and the robot) runs while the ROS context is still valid;
    rclpy's own handler would invalidate the context first. A startup error of one of
    ``startup_errors`` (a bad parameter, a missing device or checkpoint) is one line on stderr and
    ``startup_exit_code``, without a traceback; so is a parameter value outside its declared range
    or of the wrong type. Ctrl-C during start-up ends the process quietly: a node whose constructor
    was interrupted is torn down by its own ``destroy_node``, which copes with a partial object.
    A teardown that hangs (a driver that does not answer, DDS) ends the process after
    ``teardown_limit_s`` with the stack of every thread on stderr and exit code 1, so that a
    launcher's Ctrl-C always ends it.
    """
    startup_errors = tuple(startup_errors) + (ParameterException, InvalidParameterTypeException)
    # Discovery (ROS_AUTOMATIC_DISCOVERY_RANGE, ROS_DOMAIN_ID) is the environment's: dexwm-up and the
    # tests keep it on the host; under `ros2 launch` in a lab the user decides.
    # SIGINT too, explicitly: a process started in the background by a non-interactive shell
    # (`dexwm-up ... &` in a script, nohup, CI) inherits SIGINT as ignored, and Python then installs
    # no KeyboardInterrupt handler: the node would sleep through dexwm-up's Ctrl-C.
    stop = _StopRequest(teardown_limit_s)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        with rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO):
            try:
                node = make_node()
            except startup_errors as exc:
                print(f"{name}: error: {exc}", file=sys.stderr, flush=True)
                return startup_exit_code
            executor = MultiThreadedExecutor(num_threads=num_threads) if num_threads > 1 else SingleThreadedExecutor()
            executor.add_node(node)
            try:
                # Python runs the SIGINT/SIGTERM handlers only between waits: a node that receives
                # nothing (the merger once its sources have stopped) would sleep in rcl_wait through
                # a Ctrl-C, so the executor never waits longer than SIGNAL_POLL_S at a time.
                stop.spinning = True
                while rclpy.ok() and not stop.requested:
                    executor.spin_once(timeout_sec=SIGNAL_POLL_S)
            finally:
                stop.arm_watchdog()    # also when rclpy ended the loop: the context was shut down
                executor.shutdown(timeout_sec=2.0)
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except _rclpy.RCLError as exc:
        # ROS itself cannot start (a ROS_DOMAIN_ID that is not a number or out of range, a broken
        # RMW set-up): one line, not a traceback.
        print(f"{name}: error: ROS could not start: {exc} (check ROS_DOMAIN_ID (0-232) and the RMW settings)",
              file=sys.stderr, flush=True)
        return startup_exit_code
    finally:
        faulthandler.cancel_dump_traceback_later()
    return 0
