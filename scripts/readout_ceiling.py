"""What the object read-out target (2x below "nothing moves" at 2 s) asks for, without any latent.

Over every pair of frames k model steps apart in recorded exploration episodes, for the objects
that moved more than 1 cm: the mean error of "nothing moves" against two oracles that know the
hand's *true* motion (the recorded right wrist, which no read-out of a latent has):
  * follow: an object within ``--near`` of the wrist at the first frame moves as the wrist did,
    any other stays;
  * best of: per object, whichever of "moves as the wrist did" and "stays" is closer to the truth
    (a read-out that always knows which of the two happened).
A read-out that only reads the hand and where each object was is bounded by these; models/README.md
records the figures.

    python scripts/readout_ceiling.py data/explore_probe [--stride 3] [--near 0.12]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dexwm_planner.datasets import load_episodes  # noqa: E402
from dexwm_planner.keypoints import HEATMAP_KEYPOINTS, RIGHT_HAND_HEATMAPS  # noqa: E402
from dexwm_planner.object_probe import MOVED_M  # noqa: E402

WRIST = HEATMAP_KEYPOINTS[RIGHT_HAND_HEATMAPS][0]


def ceiling(episodes, stride: int, near: float, steps=(1, 2, 3, 7)) -> dict:
    out = {}
    for k in steps:
        gap = k * stride
        still, follow, best = [], [], []
        for ep in episodes:
            pos, wrist = np.asarray(ep.object_positions, np.float64), ep.keypoints_world[:, WRIST]
            if len(pos) <= gap:
                continue
            moved_by = pos[gap:] - pos[:-gap]
            hand_by = (wrist[gap:] - wrist[:-gap])[:, None]
            held = np.linalg.norm(pos[:-gap] - wrist[:-gap, None], axis=-1) < near
            err_follow = np.linalg.norm(np.where(held[..., None], hand_by, 0.0) - moved_by, axis=-1)
            err_still = np.linalg.norm(moved_by, axis=-1)
            moved = err_still > MOVED_M
            still.append(err_still[moved])
            follow.append(err_follow[moved])
            best.append(np.minimum(np.linalg.norm(hand_by - moved_by, axis=-1), err_still)[moved])
        s, f, b = (np.concatenate(x) * 100 for x in (still, follow, best))
        out[k] = {"moved_objects": int(s.size), "nothing_moves_cm": float(s.mean()),
                  "follow_cm": float(f.mean()), "best_of_cm": float(b.mean())}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", help="folder of dexwm-collect episodes (with object poses)")
    ap.add_argument("--stride", type=int, default=3, help="recorded frames per model step (0.6 s / 0.2 s)")
    ap.add_argument("--near", type=float, default=0.12, help="'held' radius around the wrist [m]")
    args = ap.parse_args(argv)
    episodes = [e for e in load_episodes(args.data)[0] if e.object_positions is not None]
    if not episodes:
        print(f"no episode with object poses in {args.data}", file=sys.stderr)
        return 1
    dt = episodes[0].dt * args.stride
    print(f"{len(episodes)} episodes; objects moved > 1 cm; mean error [cm]")
    print("| horizon | moved objects | nothing moves | follow the true wrist | best of follow / stay | nothing moves / best of |")
    print("|---|---|---|---|---|---|")
    for k, r in ceiling(episodes, args.stride, args.near).items():
        print(f"| {k * dt:.1f} s | {r['moved_objects']} | {r['nothing_moves_cm']:.2f} | {r['follow_cm']:.2f} "
              f"| {r['best_of_cm']:.2f} | {r['nothing_moves_cm'] / r['best_of_cm']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
