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
    chosen = from_indices(chosen) if isinstance(chosen, dict) else chosen
    if len(chosen) != len(ms):
        raise ModelError(f"the SDT selection has {len(chosen)} layers, the model {len(ms)}")
    _lora(model, adapters)
    for m, (channels, states) in zip(ms, chosen):
        dev = m.A_log.device
        channels, states = channels.to(dev), states.to(dev)
        rows = channels[:, None].expand_as(states)                           # A_log entries (channel, state)
        m.A_log_delta = SparseDelta(None, torch.stack([rows.flatten(), states.flatten()]), device=dev)
        bc = torch.arange(m.R, m.R + 2 * m.n, device=dev)                    # x_proj's B rows, then C rows
        m.x_proj = SparseDeltaLinear(m.x_proj, torch.stack([bc.repeat_interleave(len(channels)),
                                                            channels.repeat(len(bc))]))
    return _freeze(model, adapters)


def from_indices(tensors):
    """The selection back from the A_log index buffers ({name: (2, c * s)}, as an adapter file or a checkpoint keeps
    them): per layer, each kept channel's row repeated once per kept state."""
    names = sorted((k for k in tensors if k.endswith("A_log_delta.index")), key=lambda k: int(k.split(".")[1]))
    out = []
    for name in names:
        rows, states = tensors[name]
        s = int((rows == rows[0]).sum())
        out.append((rows.view(-1, s)[:, 0], states.view(-1, s)))
    return out


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
