"""The ``main()`` every node executable shares: start, spin, and stop cleanly on Ctrl-C/SIGTERM."""
from __future__ import annotations

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


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_node(name: str, make_node: Callable[[], Node], args=None, *,
             startup_errors: tuple[type[BaseException], ...] = (ValueError,), startup_exit_code: int = 2,
             num_threads: int = 4) -> int:
    """Create the node, spin it, and tear it down; returns the process exit code.

    Ctrl-C and SIGTERM are handled here rather than by rclpy's handler, so that ``destroy_node``
    (which stops worker threads, drivers and the robot) runs while the ROS context is still valid;
    rclpy's own handler would invalidate the context first. A startup error of one of
    ``startup_errors`` (a bad parameter, a missing device or checkpoint) is one line on stderr and
    ``startup_exit_code``, without a traceback; so is a parameter value outside its declared range
    or of the wrong type. Ctrl-C during start-up ends the process quietly: a node whose constructor
    was interrupted is torn down by its own ``destroy_node``, which copes with a partial object.
    """
    startup_errors = tuple(startup_errors) + (ParameterException, InvalidParameterTypeException)
    # Discovery (ROS_AUTOMATIC_DISCOVERY_RANGE, ROS_DOMAIN_ID) is the environment's: dexwm-up and the
    # tests keep it on the host; under `ros2 launch` in a lab the user decides.
    # SIGINT too, explicitly: a process started in the background by a non-interactive shell
    # (`dexwm-up ... &` in a script, nohup, CI) inherits SIGINT as ignored, and Python then installs
    # no KeyboardInterrupt handler: the node would sleep through dexwm-up's Ctrl-C.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
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
                while rclpy.ok():
                    executor.spin_once(timeout_sec=SIGNAL_POLL_S)
            finally:
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
    return 0
