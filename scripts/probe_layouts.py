"""Can a read-out find objects in a checkpoint's latent when it sees many object layouts?

The object-position probe of ``dexwm-eval-wm`` is fitted on exploration episodes, whose objects
mostly stand still: 128 episodes are 128 layouts, and its ridge read-out memorises them. This
diagnostic renders many random static layouts instead (the exploration's scene generator,
``dexwm_sim.collect._object_scene``: three objects spread over the table, the hand at rest 20-35 cm
above a random point; the simulation is read for the labels only), encodes them with the
checkpoint's encoder and fits read-outs that share their weights across image positions, so that
they cannot learn a layout by heart as easily as a flat ridge. ``--probe positions`` (the default)
reads each object's position:

* ``softmax``: a spatial softmax over the patches (one logit per patch and object from a linear map
  of its latent) weighting a learned point per patch;
* ``softmax-mlp``: the same with the logit from a small MLP;
* ``per-position``: the logit from a separate linear map per patch position (the latent's
  standardisation is per position, ``EncoderConfig.per_position``);
* ``constant``: fitted points that see no input, the floor any read-out must beat.

The three objects are told apart by shape only (their colours are drawn anew for every scene) and
are a few pixels wide, so ``--matching ordered`` (each object's own position) asks for more than
where objects are; ``--matching set`` scores the predicted points against the objects under the
best of their orderings (loss and error alike): where there are objects, whichever they are.

Each is fitted on all layouts but the last ``--held-out`` and reports its error on those and on the
frames of exploration episodes (``--episodes DIR``, optional) against "every object at the mean
position". Seeds 50,000 on, kept away from the evaluation's.

``--representation`` says what the read-outs see per patch: the checkpoint's ``latent`` (what the
predictor and the planner see), its encoder's unprojected ``backbone`` features (main and zoom view
per cell: what the projection starts from), the same with the backbone's stride-16 stage folded
into each cell (``backbone-s16``, the encoder option ``features=final+s16``), or ``pixels``, the
zoom view's own RGB in each cell (8 x 8 pixels per cell at 56 x 56), a control that must localise
objects when the read-outs can.

``--probe occupancy`` asks neither for an object's identity nor for three points that a local
logit cannot tell apart (each spatial softmax above sees every object alike): which cells of the zoom view's
7 x 7 grid (the table, magnified) hold an object's centre, whichever object. A small convolutional
read-out over the grid of patch features (1 x 1, 3 x 3, 1 x 1 convolutions: the same detector at
every cell) gives a logit per cell, next to a per-cell prior that sees no input. Scored on each frame
by the m cells that hold objects: the fraction of the m highest-scoring cells that do
(``precision``), and each object's distance to the nearest of those m cells (a cell placed at the
mean position of the fitted objects it held; ``nearest_cm``), against the prior alone and against
the m true cells themselves (the grid's own floor).

``--frames`` keeps the rendered layouts in a file, so the representations are compared on the same
frames without rendering them again.

    .venv/bin/python scripts/probe_layouts.py [--checkpoint C] [--layouts 1200] [--held-out 200]
        [--episodes data/explore_probe [--episode-count 20]] [--iterations 2000]
        [--probe positions|occupancy] [--representation latent|backbone|backbone-s16|pixels]
        [--matching ordered|set] [--frames runs/probe_layouts_frames.npz]
"""
import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from dexwm_planner import occupancy_probe
from dexwm_planner.occupancy_probe import grid_cells, occupancy, train_adam
from dexwm_planner.world_model import DexWM, default_checkpoint
from dexwm_sim import collect

READOUTS = ("constant", "softmax", "softmax-mlp", "per-position")
MATCHINGS = ("ordered", "set")
REPRESENTATIONS = ("latent", "backbone", "backbone-s16", "pixels")
PIXEL_CELL = 8   # pixels per cell side of the ``pixels`` control (7 x 7 cells at 56 x 56)


def feature_reader(wm, representation: str):
    """``read(uint8 frames (B, H, W, 3)) -> (B, P, D)`` per-patch features of ``representation``."""
    encoder = wm.encoder
    if representation == "latent":
        return lambda frames: wm.encode(frames).float()
    if representation == "backbone":
        return lambda frames: encoder.backbone_tokens(frames).float()
    if representation == "backbone-s16":
        from dataclasses import replace

        from dexwm_planner.encoders import FrozenEncoder
        s16 = FrozenEncoder(replace(encoder.config, proj_dim=None, per_position=False, features="final+s16"))
        return lambda frames: s16.backbone_tokens(frames).float()
    gh, gw = encoder.grid

    @torch.no_grad()
    def pixels(frames):
        x = encoder.preprocess(frames, encoder.config.zoom)
        x = torch.nn.functional.interpolate(x, size=(gh * PIXEL_CELL, gw * PIXEL_CELL), mode="area")
        # (B, 3, gh*c, gw*c) -> (B, gh*gw, 3*c*c): one row of pixels per cell, cells in the grid's order
        x = x.reshape(len(frames), 3, gh, PIXEL_CELL, gw, PIXEL_CELL).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(len(frames), gh * gw, -1).float()
    return pixels


def patch_features(read, frames: np.ndarray) -> torch.Tensor:
    """``read`` (``feature_reader``) over uint8 frames (N, H, W, 3) in chunks of 64 frames."""
    return torch.cat([read(frames[j:j + 64]) for j in range(0, len(frames), 64)])


def render_layouts(count: int, first_seed: int = 50_000, cache: str | None = None):
    """Frames (N, 224, 224, 3) uint8 and object positions (N, K, 3) of ``count`` random static
    layouts; read from (or written to) ``cache`` when given."""
    if cache and Path(cache).is_file():
        saved = np.load(cache)
        if len(saved["frames"]) == count and int(saved["first_seed"]) == first_seed:
            print(f"layouts read from {cache}", flush=True)
            return saved["frames"], torch.as_tensor(saved["positions"])
        print(f"{cache} holds other layouts; rendering anew", flush=True)
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
    positions = np.stack(positions).astype(np.float32)
    if cache:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, frames=frames, positions=positions, first_seed=first_seed)
    return frames, torch.as_tensor(positions)


class SpatialReadout(torch.nn.Module):
    """Object positions as a softmax-weighted mean of learned per-patch points."""

    def __init__(self, kind: str, patches: int, dim: int, objects: int, mean_position: torch.Tensor):
        super().__init__()
        self.kind = kind
        if kind == "constant":
            self.fixed = torch.nn.Parameter(mean_position.repeat(objects, 1) + 0.05 * torch.randn(objects, 3))
            return
        if kind == "softmax":
            self.logits = torch.nn.Linear(dim, objects)
        elif kind == "softmax-mlp":
            self.logits = torch.nn.Sequential(torch.nn.Linear(dim, 128), torch.nn.GELU(), torch.nn.Linear(128, objects))
        else:
            self.weight = torch.nn.Parameter(torch.zeros(patches, dim, objects))
            self.bias = torch.nn.Parameter(torch.zeros(patches, objects))
        self.points = torch.nn.Parameter(mean_position.repeat(patches, 1) + 0.01 * torch.randn(patches, 3))

    def forward(self, latents):
        if self.kind == "constant":
            return self.fixed.expand(len(latents), -1, -1)
        if self.kind == "per-position":
            logits = torch.einsum("npd,pdk->npk", latents, self.weight) + self.bias
        else:
            logits = self.logits(latents)
        return torch.einsum("npk,pc->nkc", torch.softmax(logits, dim=1), self.points)


def distances(predicted, positions, matching: str = "ordered"):
    """(N,) mean distance over the objects of each layout; under ``set`` matching for the best
    ordering of the objects."""
    if matching == "ordered":
        return (predicted - positions).norm(dim=-1).mean(-1)
    orders = itertools.permutations(range(positions.shape[1]))
    return torch.stack([(predicted[:, list(o)] - positions).norm(dim=-1).mean(-1) for o in orders]).min(0).values


def error_cm(predicted, positions, matching: str = "ordered") -> float:
    return float(distances(predicted, positions, matching).mean() * 100)


def fit(kind, latents, positions, iterations: int, matching: str = "ordered", seed: int = 0):
    torch.manual_seed(seed)
    model = SpatialReadout(kind, latents.shape[1], latents.shape[2], positions.shape[1], positions.mean((0, 1)))
    mean, scale = train_adam(model, latents, lambda out, rows: distances(out, positions[rows], matching).mean(),
                             iterations, batch=256, lr=3e-3, weight_decay=1e-3)

    def readout(z):
        return model((z - mean) / scale)
    with torch.no_grad():
        train_error = error_cm(readout(latents), positions, matching)
    return readout, train_error


def zoom_cells(encoder, positions: torch.Tensor, image_size: int = 224) -> torch.Tensor:
    """(N, K) zoom-view grid cell into which each object's centre projects (-1: outside the view);
    the layouts and the exploration frames are rendered at ``image_size`` from the default head
    camera."""
    from dexwm_robot.camera import HeadCamera

    uv, _, visible = HeadCamera().project(positions.numpy().astype(np.float64), image_size, image_size)
    return grid_cells(encoder, uv, visible, (image_size, image_size))


def occupancy_scores(logits, cells, positions, centres) -> dict:
    """Precision of the m best cells and each object's distance to the nearest of them (cm), over
    frames with an object in view; the same distance to the m true cells (the grid's floor)."""
    target = occupancy(cells, logits.shape[1]).bool()
    precision, nearest, floor = [], [], []
    for n in range(len(logits)):
        m = int(target[n].sum())
        if m == 0:
            continue
        top = logits[n].topk(m).indices
        precision.append(float(target[n, top].float().mean()))
        seen = positions[n, cells[n] >= 0, :2]
        nearest.append(float(torch.cdist(seen, centres[top]).min(1).values.mean()) * 100)
        floor.append(float(torch.cdist(seen, centres[target[n]]).min(1).values.mean()) * 100)
    return {"frames": len(precision), "precision": float(np.mean(precision)), "nearest_cm": float(np.mean(nearest)),
            "true_cells_nearest_cm": float(np.mean(floor))}


def run_occupancy(wm, fit_x, fit_y, tests: dict, iterations: int) -> dict:
    encoder = wm.encoder
    fit_cells = zoom_cells(encoder, fit_y)
    result = {"objects_in_view_fraction": float((fit_cells >= 0).float().mean())}
    splits = {"fitted_layouts": (fit_x, fit_y, fit_cells),
              **{split: (x, y, zoom_cells(encoder, y)) for split, (x, y) in tests.items()}}
    for name, prior_only in (("prior", True), ("detector", False)):
        probe = occupancy_probe.fit(fit_x, fit_cells, fit_y, encoder.grid, iterations, prior_only=prior_only)
        row = {}
        with torch.no_grad():
            for split, (x, y, cells) in splits.items():
                row[split] = occupancy_scores(probe.logits(x), cells, y, probe.centres)
        result[name] = row
        print(name, json.dumps(row), flush=True)
    return result


def episode_frames(read, folder: str, count: int):
    """Features and object positions of every frame of the last ``count`` episodes of ``folder``."""
    from dexwm_planner.datasets import load_episodes
    episodes, _ = load_episodes(folder, "sim")
    latents, positions = [], []
    for ep in episodes[-count:]:
        if ep.object_positions is None:
            continue
        latents.append(patch_features(read, ep.load_frames()))
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
    ap.add_argument("--probe", choices=("positions", "occupancy"), default="positions",
                    help="read out each object's position, or which zoom-view cells hold objects")
    ap.add_argument("--representation", choices=REPRESENTATIONS, default="latent",
                    help="what the read-outs see per patch (module docstring)")
    ap.add_argument("--matching", choices=MATCHINGS, default="ordered",
                    help="score each object's own position, or the objects as a set (module docstring)")
    ap.add_argument("--frames", default=None, help="npz file the rendered layouts are kept in and read from")
    args = ap.parse_args(argv)
    if not 0 < args.held_out < args.layouts:
        ap.error("--held-out must be between 0 and --layouts")
    checkpoint = args.checkpoint or default_checkpoint()
    label = args.checkpoint or f"{Path(checkpoint).name} (the default)"   # no machine path in the output
    wm = DexWM.load(checkpoint)
    if wm.encoder.config.zoom is None and (args.probe == "occupancy" or args.representation == "pixels"):
        ap.error("--probe occupancy and --representation pixels read the zoom view; this checkpoint's encoder has none")
    read = feature_reader(wm, args.representation)
    t0 = time.time()
    frames, positions = render_layouts(args.layouts, cache=args.frames)
    latents = patch_features(read, frames)
    fit_x, fit_y = latents[:-args.held_out], positions[:-args.held_out]
    test_x, test_y = latents[-args.held_out:], positions[-args.held_out:]
    episodes = episode_frames(read, args.episodes, args.episode_count) if args.episodes else None
    if args.probe == "occupancy":
        tests = {"held_out_layouts": (test_x, test_y)}
        if episodes is not None:
            tests["episode_frames"] = episodes
        result = {"checkpoint": label, "representation": args.representation, "probe": "occupancy",
                  "layouts_fitted": len(fit_x), "layouts_held_out": len(test_x),
                  **run_occupancy(wm, fit_x, fit_y, tests, args.iterations), "seconds": time.time() - t0}
        print(json.dumps(result, indent=1))
        return 0
    mean_position = fit_y.mean(0)
    result = {"checkpoint": label, "representation": args.representation,
              "matching": args.matching, "layouts_fitted": len(fit_x),
              "layouts_held_out": len(test_x),
              "mean_position_error_cm": {"layouts": error_cm(mean_position.expand_as(test_y), test_y)}}
    if episodes is not None:
        result["mean_position_error_cm"]["episodes"] = error_cm(mean_position.expand_as(episodes[1]), episodes[1])
        result["episode_frames"] = len(episodes[0])
    for kind in READOUTS:
        readout, train_error = fit(kind, fit_x, fit_y, args.iterations, args.matching)
        with torch.no_grad():
            row = {"fitted_layouts_cm": train_error,
                   "held_out_layouts_cm": error_cm(readout(test_x), test_y, args.matching)}
            if episodes is not None:
                row["episode_frames_cm"] = error_cm(readout(episodes[0]), episodes[1], args.matching)
        result[kind] = row
        print(kind, json.dumps(row), flush=True)
    result["seconds"] = time.time() - t0
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
