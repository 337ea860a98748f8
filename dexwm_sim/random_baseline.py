"""Measure how often random actions solve each task (the tasks must be hard: < 10 % each).

    .venv/bin/python -m dexwm_sim.random_baseline [--episodes 50] [--steps 100] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging

from .tasks import COMPOSITE_TASKS as TASKS, random_policy_success


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--steps", type=int, default=100, help="control steps (10 Hz) per episode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    logging.getLogger("dexwm_sim").setLevel(logging.ERROR)   # clamping notes are expected here
    from .scene import SimEnv

    env = SimEnv()
    rates = {t: random_policy_success(env, t, args.episodes, args.steps, args.seed, progress=not args.json)
             for t in TASKS}
    if args.json:
        print(json.dumps({f"random_success_{t}": r for t, r in rates.items()}))
    else:
        for t, r in rates.items():
            print(f"{t:6s} random-action success {100 * r:5.1f} % ({args.episodes} episodes x {args.steps} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
