"""dexwm-train CONFIG [key=value ...]: pre-training (teacher forcing) and multistep fine-tuning.

    .venv/bin/dexwm-train config/wm_sim.yaml train.steps=500 out=runs/wm_sim
    torchrun --nproc_per_node=8 -m dexwm_planner.train config/wm_sim.yaml     # same command, DDP

Overrides use dotted keys into the YAML (values parsed as YAML). The run folder ``out`` gets
``model.pt`` (a DexWM checkpoint: config + action statistics + code version), ``train_state.pt``
(optimizer/scheduler/step, for resuming: rerunning the same command continues), ``metrics.csv``
and ``config.yaml``. Losses: MSE(predicted latent, encoded next frame) + lambda * hand-consistency
heatmap loss on the predicted latents; ``train.multistep=N`` replaces teacher forcing with an
N-step autoregressive rollout loss. With ``train.hc=false`` the heatmap head is still trained
(for PCK) but on detached predictions, so the predictor gets no hand-consistency gradient.
``train.init=CHECKPOINT`` fine-tunes an existing model: its encoder projection, sizes and action
statistics are kept (``model.*`` settings are then ignored).
"""
from __future__ import annotations

import argparse
import copy
import csv
import logging
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import yaml

from .actions import ActionNormalizer
from .datasets import EncodedEpisode, WindowSampler, all_actions, cached_tokens, heatmap_targets, load_episodes
from .encoders import EncoderConfig
from .hand_head import HandHeadConfig
from .predictor import PredictorConfig
from .world_model import DexWM, WorldModelConfig

log = logging.getLogger("dexwm_train")

DEFAULTS = {
    "out": "runs/wm",
    "cache_dir": "runs/cache",
    "data": [{"kind": "sim", "path": "data/sim", "target_dt": None}],
    "val_fraction": 0.1,
    "model": {
        "encoder": {"kind": "efficientnet_lite0", "image_size": [224, 224], "proj_dim": 64, "weights": None,
                    "projection": "pca", "crop": None, "zoom": None, "features": "final", "per_position": False},
        "predictor": {"width": 128, "depth": 4, "heads": 4, "mlp_ratio": 2.0, "max_frames": 8},
        "hand_head": {"width": 96, "depth": 1, "heads": 4, "cells_per_patch": 8, "sigma": 2.0},
        "frame_dt": None,     # seconds between model frames; None: the data's frame step
    },
    "train": {
        "steps": 1000, "batch_size": 16, "lr": 3.0e-4, "weight_decay": 0.05, "pct_start": 0.1,
        "grad_clip": 1.0, "lambda_hc": 100.0, "hc": True, "multistep": 0, "context": 8,
        "max_gap": 2, "init": None, "ckpt_every": 200, "log_every": 10, "seed": 0, "threads": 0,
        "export": None, "device": "auto", "max_minutes": None,
    },
}


# ------------------------------------------------------------------------------------------------
# config
def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(cfg: dict, item: str):
    if "=" not in item:
        raise ValueError(f"override {item!r} must be key=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise KeyError(f"unknown config key {key!r}")
        node = node[p]
    if parts[-1] not in node:
        raise KeyError(f"unknown config key {key!r}")
    node[parts[-1]] = yaml.safe_load(value)


def load_config(path: str | None, overrides=()) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        with open(path) as fh:
            user = yaml.safe_load(fh) or {}
        unknown = set(user) - set(DEFAULTS)
        if unknown:
            raise KeyError(f"unknown top-level config keys {sorted(unknown)} in {path}")
        cfg = _merge(cfg, user)
    for item in overrides:
        apply_override(cfg, item)
    if isinstance(cfg["data"], dict):
        cfg["data"] = [cfg["data"]]
    _coerce(cfg, DEFAULTS)
    return cfg


def _coerce(cfg: dict, defaults: dict, prefix: str = ""):
    """YAML 1.1 reads '3e-3' as a string: convert values whose default is a number, or fail clearly."""
    for k, d in defaults.items():
        v = cfg.get(k)
        if isinstance(d, dict) and isinstance(v, dict):
            _coerce(v, d, f"{prefix}{k}.")
        elif isinstance(d, (int, float)) and not isinstance(d, bool) and isinstance(v, str):
            try:
                cfg[k] = type(d)(float(v)) if isinstance(d, int) else float(v)
            except ValueError:
                raise ValueError(f"config key {prefix}{k} must be a number, got {v!r}") from None


def build_model_config(cfg: dict, latent_dim: int, num_patches: int, grid, image_size,
                       frame_dt: float = 0.2) -> WorldModelConfig:
    m = cfg["model"]
    return WorldModelConfig(
        encoder=EncoderConfig(**m["encoder"]),
        predictor=PredictorConfig(latent_dim=latent_dim, num_patches=num_patches, **m["predictor"]),
        hand_head=HandHeadConfig(latent_dim=latent_dim, grid=grid, image_size=image_size, **m["hand_head"]),
        frame_dt=frame_dt)


def data_frame_step(items, configured=None) -> float:
    """The model's frame step: the median frame period of the (kept) training frames. A configured
    ``model.frame_dt`` must agree with it (1 %): a model whose step differs from its data would
    predict the wrong time ahead."""
    dts = np.array([ep.dt for ep, _ in items], dtype=np.float64)
    step = float(np.median(dts))
    if np.any(np.abs(dts - step) > 0.01 * step):
        log.warning("episodes have different frame steps (%.3f-%.3f s); the model's step is their median "
                    "%.3f s (set data[*].target_dt to resample them to one step)", dts.min(), dts.max(), step)
    if configured is not None and abs(float(configured) - step) > 0.01 * step:
        raise ValueError(f"model.frame_dt={configured} but the data's frame step is {step:.4g} s; "
                         f"remove model.frame_dt (it is taken from the data) or resample with data[*].target_dt")
    return step


# ------------------------------------------------------------------------------------------------
# data
def encode_sources(cfg: dict, encoder, rank: int = 0):
    """Read every data source, encode (cached) -> list of (episode, backbone tokens). With a cache
    folder the tokens are not kept: each item holds a function that reads them back, so memory
    holds one episode's tokens at a time (4 h of data at 49 x 2560 float tokens would be ~36 GB)."""
    from tqdm import tqdm
    eps, skipped = [], 0
    for src in cfg["data"]:
        e, s = load_episodes(src["path"], src.get("kind", "sim"), src.get("target_dt"), src.get("limit"))
        eps += e
        skipped += s
    if not eps:
        raise RuntimeError(f"no readable episodes in {[s['path'] for s in cfg['data']]} ({skipped} broken)")
    out = []
    for ep in tqdm(eps, desc="encode", disable=rank != 0, unit="ep"):
        try:
            tokens = cached_tokens(ep, encoder, cfg["cache_dir"])
            if cfg["cache_dir"]:
                del tokens
                tokens = _CachedTokens(ep, encoder, cfg["cache_dir"])
            out.append((ep, tokens))
        except Exception as exc:
            skipped += 1
            log.warning("skipping episode %s (frames unreadable: %s)", ep.name, exc)
    return out, skipped


class _CachedTokens:
    """An episode's backbone tokens, read from the latent cache when called."""

    def __init__(self, episode, encoder, cache_dir):
        self.episode, self.encoder, self.cache_dir = episode, encoder, cache_dir

    def __call__(self) -> torch.Tensor:
        return cached_tokens(self.episode, self.encoder, self.cache_dir)


def _tokens(t) -> torch.Tensor:
    return t() if callable(t) else t


def split_episodes(items, val_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    n_val = int(round(len(items) * val_fraction)) if len(items) > 2 else 0
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def project(items, wm: DexWM):
    enc = wm.encoder
    out = []
    for ep, tok in items:
        lat = enc.project(_tokens(tok))
        uv, vis = heatmap_targets(ep, enc)
        out.append(EncodedEpisode(ep, lat.float(), uv, vis))
    return out


def fit_encoder_projection(encoder, tokens, max_tokens: int = 100_000, seed: int = 0):
    """Fit the encoder's projection on a random subset of the backbone tokens: ``tokens`` lists
    per-episode (N, P, D) tensors or functions returning them. Up to ``max_tokens`` tokens, drawn as
    whole frames spread over the episodes (per-position statistics need every patch of a frame);
    only that subset is ever held in memory."""
    tokens = list(tokens)
    g = torch.Generator().manual_seed(seed)
    first = _tokens(tokens[0])
    P = first.shape[1]
    per_episode = max(1, -(-max_tokens // (P * len(tokens))))
    frames = []
    for i, t in enumerate(tokens):
        t = first if i == 0 else _tokens(t)
        frames.append(t[torch.randperm(len(t), generator=g)[:per_episode]])
    sample = torch.cat(frames)
    sample = sample[torch.randperm(len(sample), generator=g)[:max(1, max_tokens // P)]]
    encoder.fit_projection(sample)


# ------------------------------------------------------------------------------------------------
# losses
def compute_losses(wm: DexWM, predictor, head, batch: dict, tcfg: dict, device):
    z = batch["latents"].to(device)
    a = wm.normalizer.normalize(batch["actions"].to(device))
    dt = batch["dt"].to(device)
    if tcfg["multistep"]:
        pred = predictor(z[:, :1], a, dt, rollout_from=1)
    else:
        pred = predictor(z[:, :-1], a, dt)
    target = z[:, 1:]
    mse = torch.mean((pred.float() - target) ** 2)
    head_in = pred if tcfg["hc"] else pred.detach()
    heat = head(head_in)
    hc = wm.hand_head.loss(heat, batch["uv"][:, 1:].to(device), batch["visible"][:, 1:].to(device))
    return mse, hc


# ------------------------------------------------------------------------------------------------
def max_weight_diff(params) -> float:
    """Largest absolute difference of any trained weight between this rank and the others (all
    ranks must call it): 0 when DDP kept the replicas identical."""
    flat = torch.cat([p.detach().float().reshape(-1) for p in params])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return float(max((g - gathered[0]).abs().max() for g in gathered))


def _setup_distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world


def train(cfg: dict) -> dict:
    rank, world = _setup_distributed()
    tcfg = cfg["train"]
    if tcfg["threads"]:
        torch.set_num_threads(int(tcfg["threads"]))
    dev = tcfg["device"]
    if dev == "auto":
        dev = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    torch.manual_seed(tcfg["seed"] + rank)
    out = cfg["out"]
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.yaml"), "w") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False)

    state_path, model_path = os.path.join(out, "train_state.pt"), os.path.join(out, "model.pt")
    resume = os.path.isfile(state_path) and os.path.isfile(model_path)
    init = tcfg["init"]
    base = DexWM.load(model_path if resume else init) if (resume or init) else None

    # Encoder first (its token grid sizes the predictor), then data.
    if base is not None:
        encoder = base.encoder
    else:
        from .encoders import FrozenEncoder
        encoder = FrozenEncoder(EncoderConfig(**cfg["model"]["encoder"]))
    if rank == 0:
        items, skipped = encode_sources(cfg, encoder, rank)
    if world > 1:
        dist.barrier()
    if rank != 0:
        items, skipped = encode_sources(cfg, encoder, rank)
    train_items, val_items = split_episodes(items, cfg["val_fraction"], tcfg["seed"])

    frame_dt = data_frame_step(items, cfg["model"]["frame_dt"])
    if base is not None:
        wm = base
        if abs(wm.config.frame_dt - frame_dt) > 0.01 * frame_dt:
            log.warning("the initial model's frame step was %.3f s; fine-tuning on data with %.3f s steps "
                        "sets it to %.3f s", wm.config.frame_dt, frame_dt, frame_dt)
        wm.config.frame_dt = frame_dt
    else:
        wm = DexWM(build_model_config(cfg, cfg["model"]["encoder"]["proj_dim"] or encoder.backbone_dim,
                                      encoder.num_patches, encoder.grid, encoder.image_size, frame_dt))
        wm.encoder = encoder
        fit_encoder_projection(encoder, [t for _, t in train_items])
    train_enc, val_enc = project(train_items, wm), project(val_items, wm)
    if base is None:
        wm.normalizer = ActionNormalizer.fit(all_actions(train_enc, tcfg["max_gap"]))
    wm.to(device)

    frames = (tcfg["multistep"] + 1) if tcfg["multistep"] else (tcfg["context"] + 1)
    sampler = WindowSampler(train_enc, frames, tcfg["max_gap"], seed=tcfg["seed"] * 1000 + rank)
    val_batch = None
    if val_enc:
        try:
            val_batch = WindowSampler(val_enc, frames, 1, seed=12345).sample(64)
        except ValueError:
            val_batch = None

    predictor, head = wm.predictor, wm.hand_head
    predictor.train()
    head.train()
    params = list(predictor.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=tcfg["lr"], weight_decay=tcfg["weight_decay"], betas=(0.9, 0.95))
    steps = int(tcfg["steps"])
    if steps < 4:
        raise ValueError(f"train.steps must be >= 4, got {steps}")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg["lr"], total_steps=steps,
                                                # at least 2 warm-up steps (OneCycleLR divides by them)
                                                pct_start=min(0.5, max(tcfg["pct_start"], 2.0 / steps)))
    start_step = 0
    if resume:
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        opt.load_state_dict(st["optimizer"])
        start_step = int(st["step"])
        if st["scheduler"].get("total_steps") == steps:
            sched.load_state_dict(st["scheduler"])
        else:  # more (or fewer) steps than the first run: follow the new schedule from start_step
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(min(start_step, steps)):
                    sched.step()
        if rank == 0:
            log.info("resuming %s at step %d", out, start_step)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [device.index] if device.type == "cuda" else None
        predictor = DDP(predictor, device_ids=ids)
        head = DDP(head, device_ids=ids)

    meta = {"data": [s["path"] for s in cfg["data"]], "episodes": len(items), "skipped": skipped,
            "train_episodes": len(train_items), "val_episodes": len(val_items), "hc": tcfg["hc"],
            "multistep": tcfg["multistep"], "init": init, "frame_dt": frame_dt}
    metrics_path = os.path.join(out, "metrics.csv")
    fields = ["step", "loss", "mse", "hc", "lr", "samples_per_s", "val_mse", "val_hc"]
    if rank == 0 and not (resume and os.path.isfile(metrics_path)):
        with open(metrics_path, "w", newline="") as fh:
            csv.writer(fh).writerow(fields)

    def evaluate():
        # Rank 0 only, so through the unwrapped modules: a DDP forward may start a collective
        # (buffer broadcast) that the other ranks would never join.
        if val_batch is None:
            return float("nan"), float("nan")
        wm.predictor.eval()
        wm.hand_head.eval()
        with torch.no_grad():
            m, h = compute_losses(wm, wm.predictor, wm.hand_head, val_batch, tcfg, device)
        wm.predictor.train()
        wm.hand_head.train()
        return float(m), float(h)

    def save(step):
        wm.save(model_path, meta={**meta, "step": step})
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step}, state_path)

    from tqdm import tqdm
    use_amp = device.type == "cuda"
    t0, seen, last = time.time(), 0, {}
    deadline = time.time() + 60 * tcfg["max_minutes"] if tcfg["max_minutes"] else None
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="train", disable=rank != 0)
    step = start_step
    for step in bar:
        batch = sampler.sample(tcfg["batch_size"])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            mse, hc = compute_losses(wm, predictor, head, batch, tcfg, device)
        loss = mse + tcfg["lambda_hc"] * hc
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg["grad_clip"])
        opt.step()
        sched.step()
        seen += tcfg["batch_size"] * world
        last = {"step": step + 1, "loss": loss.item(), "mse": mse.item(), "hc": hc.item(),
                "lr": sched.get_last_lr()[0], "samples_per_s": seen / max(time.time() - t0, 1e-9)}
        done = step + 1 == steps or (deadline is not None and time.time() > deadline)
        if world > 1:
            if deadline is not None:   # clocks differ: stop when any rank's time is up, all together
                flag = torch.tensor([float(done)])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                done = bool(flag.item())
            if done:
                meta.update(ddp_world_size=world, ddp_max_weight_diff=max_weight_diff(params))
        if rank == 0:
            bar.set_postfix(loss=f"{last['loss']:.4f}", mse=f"{last['mse']:.4f}",
                            hc=f"{last['hc']:.5f}", sps=f"{last['samples_per_s']:.1f}")
            if (step + 1) % tcfg["log_every"] == 0 or done or (step + 1) % tcfg["ckpt_every"] == 0:
                vm, vh = evaluate() if ((step + 1) % tcfg["ckpt_every"] == 0 or done) else ("", "")
                last.update(val_mse=vm, val_hc=vh)
                with open(metrics_path, "a", newline="") as fh:
                    csv.writer(fh).writerow([last.get(k, "") for k in fields])
            if (step + 1) % tcfg["ckpt_every"] == 0 or done:
                save(step + 1)
        if done:
            break
    if rank == 0:
        if start_step >= steps:
            log.info("nothing to do: %s already trained for %d steps", out, steps)
        if tcfg["export"]:
            os.makedirs(os.path.dirname(os.path.abspath(tcfg["export"])), exist_ok=True)
            tmp = f"{tcfg['export']}.tmp{os.getpid()}"
            shutil.copyfile(model_path, tmp)
            os.replace(tmp, tcfg["export"])  # readers never see a half-copied checkpoint
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return last


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dexwm-train", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config (see config/wm_sim.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except (OSError, KeyError, ValueError, yaml.YAMLError) as exc:
        print(f"dexwm-train: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        last = train(cfg)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"dexwm-train: {exc}", file=sys.stderr)
        return 1
    print({k: (round(v, 6) if isinstance(v, float) else v) for k, v in last.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
