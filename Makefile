# The README's two commands: `make demo` and `make test`. Both set up everything first
# (Debian packages, .venv with pinned packages, interface build); a re-run skips what is done.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# DDS discovery of everything these targets start stays on this host (the nodes themselves set no
# policy: under `ros2 launch` the user's environment decides); tests and the demo pick their own
# ROS_DOMAIN_ID.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export FASTDDS_BUILTIN_TRANSPORTS := LARGE_DATA
export PYTHONUNBUFFERED := 1
PYTEST_ARGS ?=
# pytest-xdist workers of `make test`: most tests wait on node processes, so two workers overlap
# those waits on a 2-core machine (TEST_WORKERS=0 runs every test in one process). A test that fails
# is run once more (pytest-rerunfailures; the summary counts it as "rerun"): two workers load the
# machine more, and timing-bound node tests then fail now and then, as ROS 2's own CI retests them.
TEST_WORKERS ?= 2
TEST_RERUNS ?= 1
# Options of dexwm_ros/demo.py, e.g. `make demo DEMO_ARGS=--subgoals` (pick-and-place through subgoals).
DEMO_ARGS ?=

.PHONY: setup setup-viz demo test bench clean

setup:
	@bash scripts/setup.sh

# The tests also cover the optional viewer (dexwm-viz): rerun-sdk and Debian's chromium.
setup-viz:
	@bash scripts/setup.sh --with-viz

demo: setup
	$(PY) -m dexwm_ros.demo $(DEMO_ARGS)

test: setup-viz
	$(PY) -m pytest -q -n $(TEST_WORKERS) --reruns $(TEST_RERUNS) $(PYTEST_ARGS)

bench: setup
	@for b in sim allegro camera wm planner; do echo "== dexwm-bench $$b"; $(VENV)/bin/dexwm-bench $$b || exit 1; done

clean:
	rm -rf build build.log
