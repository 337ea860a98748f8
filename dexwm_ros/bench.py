"""dexwm-bench: the project's one benchmark command.

usage: dexwm-bench SUBCOMMAND [--json] [options]

Each subcommand is the ``main(argv)`` of a benchmark module; with --json it prints one JSON object.
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "sim": ("dexwm_sim.bench", "physics steps/s and render frames/s of the MuJoCo scene"),
    "allegro": ("allegro_driver.bench", "Allegro 333 Hz control-loop period error, CAN decoder fuzzing"),
    "camera": ("dexwm_ros.camera_bench", "640x480 rgb at 30 Hz through Fast DDS to another process"),
    "wm": ("dexwm_planner.bench", "world-model predictor throughput and FLOP/s vs a plain matmul"),
    "planner": ("dexwm_ros.planner_bench", "time per CEM replan at the CPU preset"),
    "optimiser": ("dexwm_ros.optimiser_bench", "planned cost each search finds vs random shooting, same budget"),
}


def usage() -> str:
    lines = [__doc__.strip(), "", "subcommands:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"dexwm-bench: error: unknown benchmark '{name}' (choose from: {', '.join(SUBCOMMANDS)})",
              file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
