"""Can a read-out find objects in a checkpoint's latent when it sees many object layouts?

The object-position probe of ``dexwm-eval-wm`` is fitted on exploration episodes, whose objects
mostly stand still: 128 episodes are 128 layouts, and its ridge read-out memorises them. This
diagnostic renders many random static layouts instead (the exploration's scene generator,
``dexwm_sim.collect._object_scene``: three objects spread over the table, the hand at rest 20-35 cm
above a random point; the simulation is read for the labels only), encodes them with the
checkpoint's encoder and fits read-outs that share their weights across image positions, so that
they cannot learn a layout by heart as easily as a flat ridge:

* ``softmax``: a spatial softmax over the patches (one logit per patch and object from a linear map
  of its latent) weighting a learned point per patch;
* ``softmax-mlp``: the same with the logit from a small MLP;
* ``per-position``: the logit from a separate linear map per patch position (the latent's
  standardisation is per position, ``EncoderConfig.per_position``).

Each is fitted on all layouts but the last ``--held-out`` and reports its error on those and on the
frames of exploration episodes (``--episodes DIR``, optional) against "every object at the mean
position". Seeds 50,000 on, kept away from the evaluation's.

    .venv/bin/python scripts/probe_layouts.py [--checkpoint C] [--layouts 1200] [--held-out 200]
        [--episodes data/explore_probe [--episode-count 20]] [--iterations 2000]
"""
import argparse
import json
import time

import numpy as np
import torch

from dexwm_planner.world_model import DexWM, default_checkpoint
from dexwm_sim import collect

READOUTS = ("softmax", "softmax-mlp", "per-position")


def render_layouts(wm, count: int, first_seed: int = 50_000):
    """Latents (N, P, d) and object positions (N, K, 3) of ``count`` random static layouts."""
    env = collect._env(224)
    frames, positions = [], []
    for i in range(count):
        seed = first_seed + i
        collect._object_scene(env, seed, np.random.default_rng(seed))
        env.advance(0.05)  # let the objects settle on the table
        frames.append(env.render())
        poses = env.object_poses()
        positions.append(np.stack([poses[k] for k in sorted(poses)])[:, :3])
        if (i + 1) % 200 == 0:
            print(f"rendered {i + 1} / {count}", flush=True)
    frames = np.stack(frames)
    latents = torch.cat([wm.encode(frames[j:j + 64]) for j in range(0, count, 64)]).float()
    return latents, torch.as_tensor(np.stack(positions), dtype=torch.float32)


class SpatialReadout(torch.nn.Module):
    """Object positions as a softmax-weighted mean of learned per-patch points."""

    def __init__(self, kind: str, patches: int, dim: int, objects: int, mean_position: torch.Tensor):
        super().__init__()
        self.kind = kind
        if kind == "softmax":
            self.logits = torch.nn.Linear(dim, objects)
        elif kind == "softmax-mlp":
            self.logits = torch.nn.Sequential(torch.nn.Linear(dim, 128), torch.nn.GELU(), torch.nn.Linear(128, objects))
        else:
            self.weight = torch.nn.Parameter(torch.zeros(patches, dim, objects))
            self.bias = torch.nn.Parameter(torch.zeros(patches, objects))
        self.points = torch.nn.Parameter(mean_position.repeat(patches, 1) + 0.01 * torch.randn(patches, 3))

    def forward(self, latents):
        if self.kind == "per-position":
            logits = torch.einsum("npd,pdk->npk", latents, self.weight) + self.bias
        else:
            logits = self.logits(latents)
        return torch.einsum("npk,pc->nkc", torch.softmax(logits, dim=1), self.points)


def error_cm(predicted, positions) -> float:
    return float((predicted - positions).norm(dim=-1).mean() * 100)


def fit(kind, latents, positions, iterations: int, seed: int = 0):
    torch.manual_seed(seed)
    mean, scale = latents.mean((0, 1)), latents.std((0, 1))
    model = SpatialReadout(kind, latents.shape[1], latents.shape[2], positions.shape[1], positions.mean((0, 1)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-3)
    x = (latents - mean) / scale
    for _ in range(iterations):
        rows = torch.randint(0, len(x), (256,))
        loss = (model(x[rows]) - positions[rows]).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        train_error = error_cm(model(x), positions)
    return (lambda z: model((z - mean) / scale)), train_error


def episode_frames(wm, folder: str, count: int):
    """Latents and object positions of every frame of the last ``count`` episodes of ``folder``."""
    from dexwm_planner.datasets import load_episodes
    episodes, _ = load_episodes(folder, "sim")
    latents, positions = [], []
    for ep in episodes[-count:]:
        if ep.object_positions is None:
            continue
        latents.append(wm.encode(ep.load_frames()).float())
        positions.append(torch.as_tensor(np.asarray(ep.object_positions)[..., :3], dtype=torch.float32))
    return torch.cat(latents), torch.cat(positions)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--layouts", type=int, default=1200)
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--episodes", default=None, help="exploration folder whose frames are also read out")
    ap.add_argument("--episode-count", type=int, default=20, help="the last this many episodes of --episodes")
    ap.add_argument("--iterations", type=int, default=2000)
    args = ap.parse_args(argv)
    if not 0 < args.held_out < args.layouts:
        ap.error("--held-out must be between 0 and --layouts")
    checkpoint = args.checkpoint or default_checkpoint()
    wm = DexWM.load(checkpoint)
    t0 = time.time()
    latents, positions = render_layouts(wm, args.layouts)
    fit_x, fit_y = latents[:-args.held_out], positions[:-args.held_out]
    test_x, test_y = latents[-args.held_out:], positions[-args.held_out:]
    mean_position = fit_y.mean(0)
    result = {"checkpoint": checkpoint, "layouts_fitted": len(fit_x),
              "layouts_held_out": len(test_x),
              "mean_position_error_cm": {"layouts": error_cm(mean_position.expand_as(test_y), test_y)}}
    episodes = episode_frames(wm, args.episodes, args.episode_count) if args.episodes else None
    if episodes is not None:
        result["mean_position_error_cm"]["episodes"] = error_cm(mean_position.expand_as(episodes[1]), episodes[1])
        result["episode_frames"] = len(episodes[0])
    for kind in READOUTS:
        readout, train_error = fit(kind, fit_x, fit_y, args.iterations)
        with torch.no_grad():
            row = {"fitted_layouts_cm": train_error, "held_out_layouts_cm": error_cm(readout(test_x), test_y)}
            if episodes is not None:
                row["episode_frames_cm"] = error_cm(readout(episodes[0]), episodes[1])
        result[kind] = row
        print(kind, json.dumps(row), flush=True)
    result["seconds"] = time.time() - t0
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
