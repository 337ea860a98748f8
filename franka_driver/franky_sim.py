"""Start franky-sim (MuJoCo FR3 behind the libfranka network protocol) for tests and demos without a robot."""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from typing import Optional

_sim_counter = itertools.count(1)


def start_franky_sim(log_path, host: Optional[str] = None, timeout_s: float = 60.0):
    """Start franky-sim (MuJoCo FR3 behind the libfranka protocol) as its own process group.

    Returns (Popen, host). ``host`` defaults to a loopback address unique to this process so that
    parallel runs on one machine do not collide on franky-sim's fixed port. For demos without a
    robot: start it, then run the node with ``-p robot_ip:=<host>``.
    """
    if host is None:
        host = f"127.77.{os.getpid() % 250 + 1}.{next(_sim_counter) % 250 + 1}"
    log = open(log_path, "wb")
    # SIGINT back to its default in the child: started from a background job of a non-interactive
    # shell (a script, CI) it would inherit SIGINT as ignored and sleep through the Ctrl-C that stops it.
    proc = subprocess.Popen([sys.executable, "-m", "franky_sim.run_server", "-s", "mujoco", "--hostname", host],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            cwd=os.path.dirname(os.path.abspath(log_path)),  # MuJoCo writes MUJOCO_LOG.TXT here
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.close()
    deadline = time.monotonic() + timeout_s
    while True:
        text = open(log_path, "rb").read().decode(errors="replace")
        if "Connect to the server" in text:
            return proc, host
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            raise RuntimeError(f"franky-sim did not start on {host}:\n{text[-2000:]}")
        time.sleep(0.05)
