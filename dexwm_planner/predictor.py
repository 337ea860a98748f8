"""CDiT predictor: next-latent regression conditioned on actions and time gaps.

Every frame of a window is a stream of P tokens. Per block: self-attention among the tokens of the
same frame; cross-attention from frame i to the tokens of frames < i (causal; a learned "null"
key/value lets the first frame attend to something); an MLP. Each frame's stream is conditioned by
adaLN-Zero on (its action to the next frame + the time gap), so the output of frame i is the
prediction of frame i+1 and a whole window trains in parallel (teacher forcing).

Because frame i only ever sees frames <= i, a rollout can run frame by frame with a cache of each
block's cross-attention keys/values of the earlier frames (``init_cache`` / ``step``). A cache built
once from a single context is shared by all candidate action sequences without copying: in CPU
inference the whole batch's queries attend to it as one long query sequence, merged with the
per-sample keys by log-sum-exp (``_attend_folded``); elsewhere it is copied out to the batch for one
fused attention call when small enough (``MATERIALISE_BYTES``), else its scores are computed with the
batch folded into the query rows.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass
class PredictorConfig:
    latent_dim: int = 64       # d of the encoder latents
    num_patches: int = 49      # P
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    max_frames: int = 8        # context length (paper: 8)
    action_dim: int = 132
    residual: bool = True      # predict z_{t+1} - z_t (an easier target for small models and data)

    @classmethod
    def paper(cls, latent_dim: int = 1024, num_patches: int = 448) -> "PredictorConfig":
        """The paper's size: width 1024, depth 32, 16 heads (about 450M parameters with DINOv2-L)."""
        return cls(latent_dim=latent_dim, num_patches=num_patches, width=1024, depth=32, heads=16,
                   mlp_ratio=4.0)

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")


# Both in one fused pass over the (B, C, P, W) activations: on CPU the predictor is bound by these
# elementwise passes as much as by its matmuls (dexwm-bench wm).
def _modulate(x, shift, scale):
    return torch.addcmul(shift, x, 1 + scale)


def _gated_residual(x, gate, y):
    return torch.addcmul(x, gate, y)


# Keys/values of a shared (batch-1) context are copied out to the whole batch, for one fused
# attention call, while that copy stays under this size; above it they are read by broadcast.
# The fused call is about 3x faster at the CPU preset (512 samples, 1-7 context frames of 49
# tokens); the broadcast path keeps the paper's size (448 tokens x 8 frames, 16 heads) in memory.
MATERIALISE_BYTES = 256 * 2**20


# CPU flash attention that also returns each query's log-sum-exp of scores (torch's own kernel
# behind scaled_dot_product_attention on CPU); None where this torch lacks it.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend(q, parts, scale):
    """Softmax attention of q (B, h, L, hd) over the concatenation of key/value parts, each
    (Bk, h, N, hd) with Bk in {1, B}."""
    B, h, L, hd = q.shape
    if B > 1 and _FLASH_CPU is not None and q.device.type == "cpu" and not torch.is_grad_enabled() \
            and any(k.shape[0] == 1 for k, _ in parts):
        return _attend_folded(q, parts, scale)
    tokens = sum(k.shape[2] for k, _ in parts)
    if 2 * B * h * tokens * hd * q.element_size() <= MATERIALISE_BYTES:
        k = torch.cat([k.expand(B, -1, -1, -1) for k, _ in parts], 2)
        v = torch.cat([v.expand(B, -1, -1, -1) for _, v in parts], 2)
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return _attend_broadcast(q, parts, scale)


def _attend_folded(q, parts, scale):
    """:func:`_attend` for CPU inference: the batch-1 parts (the null token and a shared context,
    most of the keys in a planner's rollout) are attended to by all B x L queries at once, as one
    long query sequence (no copy of their keys per sample, and kernel tiles B times longer); the
    per-sample parts by a batched call; the two partial softmaxes are merged exactly by their
    log-sum-exps. The same attention as one call over all keys, up to float rounding."""
    B, h, L, hd = q.shape
    shared = [p for p in parts if p[0].shape[0] == 1]
    own = [p for p in parts if p[0].shape[0] != 1]

    def joined(group, i):
        return group[0][i] if len(group) == 1 else torch.cat([p[i] for p in group], 2)

    folded = q.transpose(0, 1).reshape(1, h, B * L, hd)
    out, lse = _FLASH_CPU(folded, joined(shared, 0), joined(shared, 1), scale=scale)[:2]
    out = out.reshape(h, B, L, hd).transpose(0, 1)
    if not own:
        return out
    lse = lse.reshape(h, B, L).transpose(0, 1)
    out_own, lse_own = _FLASH_CPU(q, joined(own, 0), joined(own, 1), scale=scale)[:2]
    top = torch.maximum(lse, lse_own)
    w, w_own = torch.exp(lse - top)[..., None], torch.exp(lse_own - top)[..., None]
    return (out * w + out_own * w_own) / (w + w_own)


def _attend_broadcast(q, parts, scale):
    """:func:`_attend` without copies: batch-1 parts are used by broadcast."""
    B, h, L, hd = q.shape
    scores = []
    for k, _ in parts:
        if k.shape[0] == 1 and B > 1:
            s = torch.matmul(q.transpose(0, 1).reshape(h, B * L, hd), k[0].transpose(-1, -2))
            scores.append(s.reshape(h, B, L, -1).transpose(0, 1))
        else:
            scores.append(torch.matmul(q, k.transpose(-1, -2)))
    p = torch.softmax(torch.cat(scores, -1) * scale, dim=-1)
    out, start = 0, 0
    for (_, v), s in zip(parts, scores):
        n = s.shape[-1]
        pp = p[..., start:start + n]
        start += n
        if v.shape[0] == 1 and B > 1:
            o = torch.matmul(pp.transpose(0, 1).reshape(h, B * L, n), v[0]).reshape(h, B, L, hd).transpose(0, 1)
        else:
            o = torch.matmul(pp, v)
        out = out + o
    return out


class CDiTBlock(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        W, self.h = cfg.width, cfg.heads
        self.hd = W // cfg.heads
        self.norm1 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(W, 3 * W)
        self.proj_sa = nn.Linear(W, W)
        self.norm2 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.norm_kv = nn.LayerNorm(W, eps=1e-6)
        self.q_ca = nn.Linear(W, W)
        self.kv_ca = nn.Linear(W, 2 * W)
        self.null_kv = nn.Parameter(torch.randn(2, cfg.heads, 1, self.hd) * 0.02)
        self.proj_ca = nn.Linear(W, W)
        self.norm3 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        hidden = int(W * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(W, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, W))
        # adaLN-Zero: shift/scale/gate for the three sub-layers, zero-initialised so that every
        # block starts as the identity.
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(W, 9 * W))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def _heads(self, x):  # (..., N, W) -> (..., h, N, hd)
        return x.unflatten(-1, (self.h, self.hd)).transpose(-3, -2)

    def cross_kv(self, x):
        """Keys/values that later frames read from frames x (B, C, P, W): (B, h, C*P, hd) each."""
        B, C, P, W = x.shape
        k, v = self.kv_ca(self.norm_kv(x.reshape(B, C * P, W))).chunk(2, -1)
        return self._heads(k), self._heads(v)

    def _modulation(self, x, c):
        return self.ada(c).unsqueeze(-2).chunk(9, -1)  # each (B, C, 1, W)

    def forward(self, x, c, attn_mask):
        """Parallel (teacher-forced) pass. x (B, C, P, W), c (B, C, W), attn_mask (C*P, 1+C*P)."""
        B, C, P, W = x.shape
        sh1, sc1, g1, sh2, sc2, g2, sh3, sc3, g3 = self._modulation(x, c)
        k_prev, v_prev = self.cross_kv(x)  # from the block input, as in the incremental pass
        q, k, v = self.qkv(_modulate(self.norm1(x), sh1, sc1)).chunk(3, -1)
        q, k, v = (self._heads(t.reshape(B * C, P, W)) for t in (q, k, v))
        sa = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, C, P, W)
        x = _gated_residual(x, g1, self.proj_sa(sa))
        qc = self._heads(self.q_ca(_modulate(self.norm2(x), sh2, sc2)).reshape(B, C * P, W))
        nk, nv = (t.expand(B, -1, -1, -1) for t in self.null_kv)
        kc, vc = torch.cat([nk, k_prev], 2), torch.cat([nv, v_prev], 2)
        ca = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=attn_mask)
        x = _gated_residual(x, g2, self.proj_ca(ca.transpose(1, 2).reshape(B, C, P, W)))
        x = _gated_residual(x, g3, self.mlp(_modulate(self.norm3(x), sh3, sc3)))
        return x

    def step(self, x, c, cache, keep_keys: bool = True):
        """Incremental pass of one new frame x (B, 1, P, W) given the keys/values of the earlier
        frames ``cache`` (a list of (k, v) parts, batch 1 or B). Returns (x, (k_new, v_new)), or
        (x, None) with ``keep_keys=False`` (no later frame will read this one's keys/values)."""
        B, _, P, W = x.shape
        sh1, sc1, g1, sh2, sc2, g2, sh3, sc3, g3 = self._modulation(x, c)
        kv_new = self.cross_kv(x) if keep_keys else None
        q, k, v = (self._heads(t.reshape(B, P, W)) for t in self.qkv(_modulate(self.norm1(x), sh1, sc1)).chunk(3, -1))
        sa = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, P, W)
        x = _gated_residual(x, g1, self.proj_sa(sa))
        qc = self._heads(self.q_ca(_modulate(self.norm2(x), sh2, sc2)).reshape(B, P, W))
        parts = [(self.null_kv[0][None], self.null_kv[1][None])] + list(cache)
        ca = _attend(qc, parts, 1.0 / math.sqrt(self.hd))
        x = _gated_residual(x, g2, self.proj_ca(ca.transpose(1, 2).reshape(B, 1, P, W)))
        x = _gated_residual(x, g3, self.mlp(_modulate(self.norm3(x), sh3, sc3)))
        return x, kv_new


def _timestep_features(dt, dim):
    """Sinusoidal features of the time gap in seconds (periods from 0.02 s to 20 s)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(math.log(2 * math.pi / 20.0), math.log(2 * math.pi / 0.02), half,
                                     device=dt.device))
    ang = dt[..., None].float() * freqs
    return torch.cat([torch.sin(ang), torch.cos(ang)], -1)


class CDiTPredictor(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.in_proj = nn.Linear(cfg.latent_dim, W)
        self.pos = nn.Parameter(torch.randn(cfg.max_frames, cfg.num_patches, W) * 0.02)
        self.action_embed = nn.Sequential(nn.Linear(cfg.action_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.dt_embed = nn.Sequential(nn.Linear(64, W), nn.SiLU(), nn.Linear(W, W))
        self.blocks = nn.ModuleList(CDiTBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.out = nn.Linear(W, cfg.latent_dim)
        for m in (self.ada_out[1], self.out):  # DiT: zero-initialised final layer
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- helpers
    def condition(self, actions, dt):
        """actions (B, C, A) normalised, dt (B, C) seconds -> (B, C, W)."""
        return self.action_embed(actions) + self.dt_embed(_timestep_features(dt, 64))

    def _check(self, z, actions, dt):
        cfg = self.cfg
        if z.ndim != 4 or z.shape[-2:] != (cfg.num_patches, cfg.latent_dim):
            raise ValueError(f"latents must be (B, C, {cfg.num_patches}, {cfg.latent_dim}), got {tuple(z.shape)}")
        if actions.shape[-1] != cfg.action_dim:
            raise ValueError(f"actions must have {cfg.action_dim} dims, got {tuple(actions.shape)}")

    def _head(self, x, c, z):
        sh, sc = self.ada_out(c).unsqueeze(-2).chunk(2, -1)
        delta = self.out(_modulate(self.norm_out(x), sh, sc))
        return z + delta if self.cfg.residual else delta

    @staticmethod
    def causal_mask(C, P, device=None):
        """(C*P, 1+C*P) bool, True = may attend: the null token, and tokens of strictly earlier frames."""
        f = torch.arange(C, device=device).repeat_interleave(P)
        allowed = f[None, :] < f[:, None]
        return torch.cat([torch.ones(C * P, 1, dtype=torch.bool, device=device), allowed], 1)

    # ---- teacher forcing
    def forward(self, z, actions, dt, rollout_from: int | None = None):
        """z (B, C, P, d) frames 0..C-1; actions (B, C, A) and dt (B, C) from frame i to i+1.
        Returns (B, C, P, d): the predictions of frames 1..C (teacher forcing).

        With ``rollout_from=c``: only z[:, :c] is used as context and frames c..C are predicted
        autoregressively from the actions (multistep training through the DDP wrapper)."""
        if rollout_from is not None:
            c = int(rollout_from)
            return self.rollout(z[:, :c], actions[:, :c - 1], dt[:, :c - 1], actions[:, c - 1:], dt[:, c - 1:])
        self._check(z, actions, dt)
        B, C, P, _ = z.shape
        if C > self.cfg.max_frames:
            raise ValueError(f"at most {self.cfg.max_frames} frames per window, got {C}")
        c = self.condition(actions, dt)
        x = self.in_proj(z) + self.pos[:C]
        mask = self.causal_mask(C, P, z.device)
        for blk in self.blocks:
            x = blk(x, c, mask)
        return self._head(x, c, z)

    # ---- incremental rollout
    def init_cache(self, z, actions, dt):
        """Keys/values of context frames z (Bc, C, P, d) conditioned on their actions (Bc, C, A)."""
        cache = [[] for _ in self.blocks]
        if z.shape[1] == 0:
            return cache
        self._check(z, actions, dt)
        B, C, P, _ = z.shape
        c = self.condition(actions, dt)
        x = self.in_proj(z) + self.pos[:C]
        mask = self.causal_mask(C, P, z.device)
        for blk, kv in zip(self.blocks, cache):
            kv.append(blk.cross_kv(x))
            x = blk(x, c, mask)
        return cache

    def step(self, z_last, action, dt, cache, frame_index, keep_keys: bool = True):
        """Predict the frame after z_last (B, P, d) given action (B, A), dt (B,), the cache of the
        earlier frames; appends z_last's keys/values to the cache (unless ``keep_keys`` is False:
        the last step of a rollout, whose keys no frame reads, skips them). Returns (B, P, d)."""
        z = z_last[:, None]
        c = self.condition(action[:, None], dt[:, None])
        x = self.in_proj(z) + self.pos[frame_index]
        for blk, kv in zip(self.blocks, cache):
            x, kv_new = blk.step(x, c, kv, keep_keys)
            if keep_keys:
                kv.append(kv_new)
        return self._head(x, c, z)[:, 0]

    def rollout(self, context, context_actions, context_dt, actions, dt):
        """Autoregressive rollout with a sliding window of ``max_frames`` frames.

        context (Bc, C, P, d) with Bc 1 (shared by all samples) or B; context_actions (Bc, C-1, A)
        and context_dt (Bc, C-1) between the context frames; actions (B, T, A) and dt (B, T) from
        the last context frame on. Returns (B, T, P, d). Differentiable (multistep training)."""
        B, T, _ = actions.shape
        Bc, C = context.shape[:2]
        if C < 1 or C > self.cfg.max_frames:
            raise ValueError(f"context must have 1..{self.cfg.max_frames} frames, got {C}")
        if Bc not in (1, B):
            raise ValueError(f"context batch {Bc} must be 1 or the number of action sequences {B}")
        frames = [context[:, i] for i in range(C)]
        acts = [context_actions[:, i] for i in range(C - 1)]
        gaps = [context_dt[:, i] for i in range(C - 1)]
        preds, cache, cache_start = [], None, None
        for t in range(T):
            acts.append(actions[:, t])
            gaps.append(dt[:, t])
            start = max(0, len(frames) - self.cfg.max_frames)
            if cache is None or start != cache_start:
                # Window moved (or first step): positions shifted, rebuild the prefix cache.
                pre = frames[start:-1]
                pre_acts = acts[start:len(frames) - 1]
                pre_gaps = gaps[start:len(frames) - 1]
                # Shared (batch 1) context and per-sample predictions/actions mix in the window.
                bp = max((x.shape[0] for x in (*pre, *pre_acts, *pre_gaps)), default=1)
                if pre:
                    zp = torch.stack([f.expand(bp, -1, -1) for f in pre], 1)
                    ap = torch.stack([a.expand(bp, -1) for a in pre_acts], 1)
                    gp = torch.stack([g.expand(bp) for g in pre_gaps], 1)
                    cache = self.init_cache(zp, ap, gp)
                else:
                    cache = [[] for _ in self.blocks]
                cache_start = start
            z_last = frames[-1].expand(B, -1, -1)
            nxt = self.step(z_last, actions[:, t], dt[:, t], cache, len(frames) - 1 - start,
                            keep_keys=t < T - 1)
            frames.append(nxt)
            preds.append(nxt)
        return torch.stack(preds, 1)
