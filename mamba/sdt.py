"""
Sparse Dimension Tuning (SDT; Galim et al., "Parameter-Efficient Fine-Tuning of State Space Models", arXiv
2410.09016) on mamba/model.py's Mamba, as the authors' released code does it (their sd_lora configs): SDT on the
SSM, LoRA (ssmlora.LoRALinear, r 8, alpha 8) on out_proj.

  1. warm-up  a dense delta on every layer's A_log, beside LoRA on out_proj, trained a few hundred steps
              (add_warmup; train.py runs the steps);
  2. select   per layer: channels ranked by the sum over states of (ΔA_log)^2, the top 1 % kept (at least one);
              in each kept channel, its states ranked by (ΔA_log)^2, the top (1 - rho) kept (select);
  3. train    from the pretrained weights again, the warm-up's weights discarded: a sparse delta, zero at start,
              on exactly those entries of A_log and on the kept channels' columns of x_proj's B and C rows (all
              states), plus a fresh LoRA (add_sdt). Everything else stays frozen.
"""
import re
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import ModelError
from ssmlora import add_adapters, frozen_head, is_trained

CHANNELS = 0.01  # the share of channels kept per layer (their configs freeze 0.99)
RHOS = (0.75, 0.9, 0.95)  # the shares of states frozen in a kept channel, in their configs


class SparseDelta(nn.Module):
    """w + Δ, Δ trainable on a few entries of w: sd_delta (k,) at index (2, k) = (rows, cols), zero at start so
    the model is unchanged at initialisation. index None: a dense delta, shaped like w (the warm-up's)."""

    def __init__(self, shape, index=None, device=None):
        super().__init__()
        self.register_buffer("index", index)
        self.sd_delta = nn.Parameter(torch.zeros(shape if index is None else index.shape[1], device=device))

    def forward(self, w):
        if self.index is None:
            return w + self.sd_delta.to(w.dtype)
        return w.index_put(tuple(self.index), self.sd_delta.to(w.dtype), accumulate=True)  # a new tensor


class SparseDeltaLinear(nn.Linear):
    """A frozen nn.Linear whose weight gets a SparseDelta (x_proj's B and C columns). It adopts the base's weight
    and bias, so their names stay as they were."""

    def __init__(self, base, index):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        self.sdt = SparseDelta(None, index.to(base.weight.device), device=base.weight.device)

    def forward(self, x):
        return F.linear(x, self.sdt(self.weight), self.bias)


def kept(size, frozen):
    """How many of `size` rows stay trainable when a share `frozen` is frozen: their int(round(...)), >= 1."""
    return max(1, size - int(round(frozen * size)))


def select(delta, rho, channels=CHANNELS):
    """One layer's choice from its warm-up change of A_log, delta (D, n): the kept channels (c,) and, for each,
    its kept states (c, s), the largest (ΔA_log)^2 first."""
    score = delta.detach().float().square()                                  # (D, n)
    top = score.sum(1).argsort(descending=True, stable=True)                 # channels by sum over states
    chosen = top[:kept(score.shape[0], 1 - channels)]                        # (c,)
    states = score[chosen].argsort(dim=1, descending=True, stable=True)      # per kept channel, by its own states
    return chosen, states[:, :kept(score.shape[1], rho)]                     # (c,), (c, s)


def mixers(model):
    if not all(hasattr(b, "mixer") for b in getattr(model, "blocks", [None])):
        raise ModelError(f"SDT tunes a state space model's A_log, B and C: a {model.cfg.family} model has none "
                         "(use --model with a Mamba checkpoint or preset)")
    return [b.mixer for b in model.blocks]


def add_warmup(model, adapters):
    """Step 1: LoRA on adapters.targets (theirs: out_proj) and a dense delta on every layer's A_log."""
    _lora(model, adapters)
    for m in mixers(model):
        m.A_log_delta = SparseDelta(m.A_log.shape, device=m.A_log.device)
    return _freeze(model, adapters)


def selection(model, rho, channels=CHANNELS):
    """Step 2 on a warmed-up model: [(channels, states)] per layer, from its dense deltas."""
    deltas = [m.A_log_delta for m in mixers(model)]
    if any(d is None or d.index is not None for d in deltas):
        raise ModelError("no warm-up deltas on this model: add them with add_warmup and train it first")
    return [select(d.sd_delta, rho, channels) for d in deltas]


def add_sdt(model, adapters, chosen):
    """Step 3 on a fresh pretrained model: sparse deltas at the chosen entries (from selection, or the index
    buffers of from_indices), a fresh LoRA."""
    ms = mixers(model)
    chosen = from_indices(chosen, model.cfg) if isinstance(chosen, dict) else chosen
    if len(chosen) != len(ms):
        raise ModelError(f"the SDT selection has {len(chosen)} layers, the model {len(ms)}")
    _lora(model, adapters)
    for m, (channels, states) in zip(ms, chosen):
        dev = m.A_log.device
        channels, states = channels.to(dev), states.to(dev)
        rows = channels[:, None].expand_as(states)                           # A_log entries (channel, state)
        m.A_log_delta = SparseDelta(None, torch.stack([rows.flatten(), states.flatten()]), device=dev)
        m.x_proj = SparseDeltaLinear(m.x_proj, bc_index(channels, m.R, m.n))
    return _freeze(model, adapters)


def bc_index(channels, R, n):
    """x_proj's entries SDT trains: the kept channels' columns of its B rows, then C rows (R .. R + 2n - 1)."""
    bc = torch.arange(R, R + 2 * n, device=channels.device)
    return torch.stack([bc.repeat_interleave(len(channels)), channels.repeat(len(bc))])


INDEX = re.compile(r"blocks\.(\d+)\.mixer\.(A_log_delta|x_proj\.sdt)\.index")


def from_indices(tensors, cfg):
    """The selection back from the index buffers ({name: (2, k)}, as an adapter file or a checkpoint keeps them):
    per layer, each kept channel's row repeated once per kept state. Each tensor is checked against the model's
    sizes (cfg) first: a bad index would fail deep in torch, or worse, a -1 would wrap to the last state."""
    layers = {}
    for name, t in tensors.items():
        m = INDEX.fullmatch(name)
        if m is None:
            raise ModelError(f"{name} is no SDT index tensor (blocks.<i>.mixer.A_log_delta.index or "
                             "x_proj.sdt.index)")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool or t.dim() != 2 or \
                t.shape[0] != 2 or t.shape[1] == 0:
            raise ModelError(f"{name} is {t.dtype} {tuple(t.shape)}: an SDT index is an integer tensor (2, k), k >= 1")
        layers.setdefault(m[2], {})[int(m[1])] = t.long()
    for kind in ("A_log_delta", "x_proj.sdt"):
        if sorted(layers.get(kind, {})) != list(range(cfg.n_layer)):
            raise ModelError(f"the SDT selection has {kind}.index for layers {sorted(layers.get(kind, {}))}, the "
                             f"model has {cfg.n_layer} (0 to {cfg.n_layer - 1})")
    out = []
    for i in range(cfg.n_layer):
        name = f"blocks.{i}.mixer.A_log_delta.index"
        rows, states = layers["A_log_delta"][i]
        _in_range(name, "channel", rows, cfg.d_inner, "d_inner = expand x d_model")
        _in_range(name, "state", states, cfg.d_state, "d_state")
        s = int((rows == rows[0]).sum())
        channels = rows[::s]
        if len(rows) % s or not torch.equal(rows.view(-1, s), channels[:, None].expand(-1, s)) or \
                len(channels.unique()) != len(channels) or \
                any(len(c.unique()) != s for c in states.view(-1, s)):
            raise ModelError(f"{name}: its entries are not whole channels, each with the same number of distinct "
                             "states, as select writes them")
        if not torch.equal(layers["x_proj.sdt"][i], bc_index(channels, cfg.dt_rank, cfg.d_state)):
            raise ModelError(f"blocks.{i}.mixer.x_proj.sdt.index is not the B and C columns of the channels of "
                             f"{name} (for dt_rank {cfg.dt_rank}, d_state {cfg.d_state})")
        out.append((channels, states.view(-1, s)))
    return out


def _in_range(name, what, t, size, which):
    bad = t[(t < 0) | (t >= size)]
    if len(bad):
        raise ModelError(f"{name} holds {what} {bad[0].item()}, outside 0 to {size - 1} (this model's {which} is "
                         f"{size})")


def placeholder(cfg, rho, channels=CHANNELS):
    """A selection of the right sizes (the first channels and states), for parameter counts (--dry-run)."""
    return [select(torch.zeros(cfg.d_inner, cfg.d_state), rho, channels) for _ in range(cfg.n_layer)]


def _lora(model, adapters):
    if adapters.method != "sdt":
        raise ModelError(f"mamba.sdt adds sdt, not {adapters.method}")
    if "x_proj" in adapters.targets:
        raise ModelError("SDT trains x_proj's B and C columns itself: leave x_proj out of the LoRA targets")
    mixers(model)
    add_adapters(model, replace(adapters, method="lora"))


def _freeze(model, adapters):
    model.adapters = adapters
    frozen = frozen_head(model)
    for name, p in model.named_parameters():
        p.requires_grad_(is_trained(name, "sdt", frozen))
    return model
