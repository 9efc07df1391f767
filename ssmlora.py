"""
LoRA and SSMLoRA (Yu et al., NAACL 2025) for the transformers of model.py.

  LoRA     y = x W0 + s * x W_a W_b                                   (eq. 1, Hu et al.)
  SSMLoRA  the same low-rank pair plus a state h that runs along a "time axis" of layers:
           x_new = x W_a                                              (5)
           h'    = h_t W_c + x_new W_d                                (2)
           h_t+1 = h' + h_t                                           (3), (4)
           h_norm = (h_t+1 - min) / (max - min + eps), per token      (6)-(8)
           y = x W0 + s * (x_new + h_norm) W_b                        (10)
           and h_norm, detached, is the h_t of the next module on the axis.

"Decision N" in a comment is item N of the README's list of design decisions.
One call adapts a model:  add_adapters(model, Adapters(method="ssmlora", rank=8))
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import ModelError

METHODS = ("ssmlora", "lora", "bitfit", "full", "none", "qlora", "mixlora", "sdt")  # none: frozen body, head only
LOW_RANK = ("ssmlora", "lora", "qlora", "mixlora", "sdt")  # the methods that train adapter matrices; qlora and
# mixlora are baselines/ (baselines.add_adapters adds them), sdt is mamba/sdt.py (Sparse Dimension Tuning + LoRA,
# Mamba only): this module never imports either
# target name -> (sub-module of a block, linear in it). GPT-2's fused c_attn is split into query / key / value
# at load time; "qkv" joins them again (Attention.fuse_qkv): one adapter over all three, as the paper adapted
# GPT-2 (decision 12). LLaMA's gate_proj / up_proj / down_proj are ffn_gate / ffn_in / ffn_out. "head" is the
# task head's linear that gives the logits (score, out_proj or classifier): it is then frozen under its adapter.
TARGETS = {"query": ("attn", "query"), "key": ("attn", "key"), "value": ("attn", "value"), "qkv": ("attn", "qkv"),
           "attn_out": ("attn", "out"), "ffn_gate": ("mlp", "fc_gate"), "ffn_in": ("mlp", "fc_in"),
           "ffn_out": ("mlp", "fc_out"), "head": ("head", None)}
# Mamba's linears (mamba/model.py's Mixer), kept apart from TARGETS, which lists the transformers' (baselines and
# interop walk it). SSMLoRA alternates in_proj and out_proj, one kind per layer, one time axis per kind: Mamba's
# counterpart of query / value (docs/mamba.md says why).
MAMBA_TARGETS = {"in_proj": ("mixer", "in_proj"), "x_proj": ("mixer", "x_proj"), "dt_proj": ("mixer", "dt_proj"),
                 "out_proj": ("mixer", "out_proj")}
ALTERNATING = ("query", "key", "value", "qkv", "in_proj", "out_proj")  # sparse insertion alternates these; other
# targets are dense (§3.4)
ADAPTER_WEIGHTS = ("W_a", "W_b", "W_c", "W_d", "W_r", "sd_delta")  # W_r: MixLoRA's router; sd_delta: SDT's deltas
# Each method's default targets: the paper's q/v, and Table 1's configurations of the two baselines (QLoRA: every
# linear of a block, 1.3M on RoBERTa-base, so the gate where a block has one, LLaMA: baselines.qlora leaves it out
# elsewhere; MixLoRA: LoRA on q, k, v beside its FFN experts, 5.7M); SDT's LoRA goes on out_proj, as the authors'
# configs (mamba/sdt.py)
DEFAULT_TARGETS = {"qlora": ("query", "key", "value", "attn_out", "ffn_gate", "ffn_in", "ffn_out"),
                   "mixlora": ("query", "key", "value"), "sdt": ("out_proj",)}
MAMBA_DEFAULT_TARGETS = ("in_proj", "out_proj")  # LoRA's and SSMLoRA's on a Mamba, which has no query or value: the
# projections into and out of its mixer (docs/mamba.md)
STATES = ("reset", "carry")  # carry: the authors' state lifetime, plugged in from reproduce/authors.py (decision 10)
EPS = 1e-8  # eq. (8), as the authors' code (decision 1); it rounds to 0 in float16, so eqs. (3)-(8) run in float32:
# under bf16 autocast the step h_dot + h is summed there too, or a derivative small next to h (bf16 steps of 1/128
# near 1) is lost and the normalisation then blows its rounding up to the whole [0, 1]


def default_targets(method, family=None):
    """A method's default targets on a model of `family` (None: a transformer): every default is here."""
    if family == "mamba" and method not in DEFAULT_TARGETS:
        return MAMBA_DEFAULT_TARGETS
    return DEFAULT_TARGETS.get(method, ("query", "value"))


@dataclass
class Adapters:
    """What to add to a model, with the defaults every command uses (appendix A: r 8, alpha 16, dropout 0.1; q/v).
    Checked and normalised on creation: bad values raise ValueError."""
    method: str = "ssmlora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    targets: tuple = None                 # or "query,value"; None: the method's default on a transformer,
                                          # default_targets(method)
    sparse: bool = None                   # None: the method's default (SSMLoRA sparse, LoRA dense)
    state: str = "reset"                  # SSMLoRA state lifetime: "reset" (default) or "carry" (the authors')

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ValueError(f"alpha must be a number > 0 (the paper uses 16), got {self.alpha!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if self.state not in STATES:
            raise ValueError(f"unknown state {self.state!r}; choose one of: {', '.join(STATES)}")
        if self.state == "carry" and self.method != "ssmlora":
            raise ValueError(f"state carry is how SSMLoRA's state lives; {self.method} has no state to carry")
        if self.targets is None:
            self.targets = default_targets(self.method)
        names = self.targets.split(",") if isinstance(self.targets, str) else list(self.targets)
        names = [n.strip() for n in names if n.strip()]
        valid = (*TARGETS, *MAMBA_TARGETS)
        unknown = [n for n in names if n not in valid]
        if unknown or not names:
            raise ValueError(f"unknown or no targets {unknown or names}; valid targets: {', '.join(valid)}")
        self.targets = tuple(t for t in valid if t in names)  # canonical order: "value,query" == "query,value"
        if "qkv" in self.targets and len(set(self.targets) & set(ALTERNATING)) > 1:
            raise ValueError("qkv is query, key and value as one projection: use it alone or the split ones")
        if self.sparse is None:
            self.sparse = self.method == "ssmlora"  # SSMLoRA sparse (§3.4), LoRA dense as the paper's baseline
        self.alpha, self.sparse = float(self.alpha), bool(self.sparse)


def insertion_plan(n_layer, targets, sparse):
    """[(layer, target), ...] of the block linears, in forward order. Sparse: layer i adapts one of the attention
    targets (query, key, value or the fused qkv), alternating[i % n] (decision 9: query on even layers, value on
    odd); a single one, every other layer (the even ones). Other targets in every layer; "head" is not in a block."""
    alternating = [t for t in targets if t in ALTERNATING]
    cycle = alternating if len(alternating) > 1 else alternating + [None]  # one target: skip every other layer
    plan = []
    for i in range(n_layer):
        for t in targets:
            if t != "head" and (not sparse or t not in ALTERNATING or t == cycle[i % len(cycle)]):
                plan.append((i, t))
    return plan


# ----------------------------------------------------------------------------------------------------------
# LoRA and the Time Module

def addmm(c, a, b, s=1.0):
    """c + s a b for a (..., k), b (k, n), c (..., n): one kernel (torch.addmm), where c + (a b) * s runs three. At
    batch 1 a GPU is bound by kernel launches, so eqs. (1), (2) and (10) each fold their sum and scaling in here."""
    return torch.addmm(c.flatten(0, -2), a.flatten(0, -2), b, alpha=s).view(c.shape)


class LowRankLinear(nn.Linear):
    """A frozen nn.Linear plus the low-rank pair W_a (d_in x r), W_b (r x d_out) that LoRA and SSMLoRA share.
    It adopts the base's weight and bias, so their names (...query.weight) stay as they were."""

    def __init__(self, base, rank, alpha):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.W_a = nn.Parameter(torch.empty(base.in_features, rank, **kw))
        self.init_W_a()  # LoRA's and SSMLoRA's differ (decision 5)
        self.W_b = nn.Parameter(torch.zeros(rank, base.out_features, **kw))  # zero: adapted == base at init
        self.scaling = alpha / rank  # s = alpha / r, LoRA's convention for both methods (decision 6)

    def lora(self, x, W0=None):
        """x W0 + s x W_a W_b (eq. 1), no dropout, no state: what DeBERTa's relative position embeddings go through
        when they share this projection (model.project); they are no tokens, so no time axis runs over them.
        W0: instead of self.weight (QLoRA's, dequantized)."""
        y = F.linear(x, self.weight if W0 is None else W0, self.bias)
        return y if getattr(self, "merged", False) else addmm(y, x @ self.W_a, self.W_b, self.scaling)

    def extra_repr(self):
        return f"{super().extra_repr()}, rank={self.W_a.shape[1]}, scaling={self.scaling:g}"


class LoRALinear(LowRankLinear):
    """LoRA (eq. 1), with dropout on its input x, as Hu et al. (decision 7)."""

    def __init__(self, base, rank, alpha, dropout):
        super().__init__(base, rank, alpha)
        self.drop_x = nn.Dropout(dropout)
        self.merged = False

    @torch.no_grad()
    def init_W_a(self):
        # as Hu et al.'s loralib and PEFT: Kaiming-uniform with a = sqrt(5) over the input dimension, i.e.
        # U(-1/sqrt(d_in), 1/sqrt(d_in)) (their A is (r, d_in): our W_a transposed). Decision 5.
        nn.init.kaiming_uniform_(self.W_a.T, a=math.sqrt(5))

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)  # x W0 (+ bias)
        if self.merged:  # W0 already holds W0 + s W_a W_b: zero overhead
            return y
        return self.update(x, y)

    def update(self, x, y):
        """y + s x W_a W_b: eq. (1)'s low-rank term of x added onto the base's output y."""
        return addmm(y, self.drop_x(x) @ self.W_a, self.W_b, self.scaling)  # eq. (1)

    def delta(self):
        return (self.W_a @ self.W_b * self.scaling).t()  # (d_out, d_in), nn.Linear's weight layout

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.weight += self.delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight -= self.delta()
            self.merged = False


class SSMLoRALinear(LowRankLinear):
    """SSMLoRA's Time Module (§3.1): W_a, W_b as LoRA, plus W_c, W_d (r x r) for the state. `axes` hands it h_t
    from the module before it on its time axis (`axis`, `position`) and passes its h_t+1 on."""

    def __init__(self, base, rank, alpha, dropout, axes, axis, position):
        super().__init__(base, rank, alpha)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.W_c = nn.Parameter(torch.zeros(rank, rank, **kw))  # zero, as W_b (decision 5)
        self.W_d = nn.Parameter(torch.zeros(rank, rank, **kw))
        self.drop_h = nn.Dropout(dropout)  # on h_norm, where the authors put it (decision 7)
        self.axes, self.axis, self.position = axes, axis, position
        self.last = False  # the last module of its axis (add_adapters sets it): no module reads what it writes

    @torch.no_grad()
    def init_W_a(self):
        self.W_a.normal_(0, 1 / math.sqrt(self.W_a.shape[1]))  # §3.5: W_a ~ N(0, 1/r) (decision 5)

    def next_state(self, x_new, h):
        """h_norm, the normalised h_t+1, from x_new = x W_a (B, T, r) and the incoming state h_t (B, T, r)."""
        h_dot = addmm(x_new @ self.W_d, h, self.W_c)          # eq. (2): h'_t = h_t W_c + x_new W_d, (B, T, r)
        h = h_dot + h.float()                                 # eqs. (3), (4): one Euler step, in float32: see EPS
        # amin and amax: torch 2.11's aminmax has no backward (2.13's has), and training would stop at its first step
        lo, hi = h.amin(-1, keepdim=True), h.amax(-1, keepdim=True)  # eqs. (6), (7): per token, over rank: (B, T, 1)
        return ((h - lo) / (hi - lo + EPS)).to(x_new.dtype)   # eq. (8), typo fixed (decision 1): (B, T, r)

    def forward(self, x):
        x_new = x @ self.W_a                                  # eq. (5): (B, T, r); no dropout on x (decision 7)
        h = self.axes.read(self, x_new)                       # h_t from the module before on the axis (§3.2)
        h_norm = self.next_state(x_new, h)
        self.axes.write(self, h_norm.detach())                # h_norm goes on, detached (decision 3)
        y = F.linear(x, self.weight, self.bias)               # x W0 (+ bias): (B, T, d_out)
        return addmm(y, x_new + self.drop_h(h_norm), self.W_b, self.scaling)  # eq. (10), not (9): decision 2


class TimeAxes:
    """The states passed along the time axes within one forward pass, one axis per kind of adapted projection
    (decision 8). The first module of an axis starts from h_0 = 0 (decision 4); each later one reads what the
    module before it wrote, and the last one writes nothing. So nothing outlives the forward pass, and an example's
    output never depends on its batch-mates, the batch size or earlier batches (decision 10). The recurrence over
    layers is sequential by nature: no FFT (decision 11)."""

    def __init__(self):
        self.h = {}

    def read(self, m, x_new):
        if m.position == 0:
            return torch.zeros_like(x_new)  # h_0 = 0, shaped like x_new (decision 4)
        position, h = self.h.pop(m.axis, (None, None))
        if position != m.position - 1 or h.shape != x_new.shape:
            raise ModelError(f"time axis {m.axis!r}: module {m.position} ran without module {m.position - 1} "
                             f"before it in the same forward pass; run the whole model, not single blocks")
        return h

    def write(self, m, h_norm):
        if not m.last:  # the last state is read by no one: keeping it would outlive the forward pass, and under
            self.h[m.axis] = (m.position, h_norm)  # torch.compile cost a recompile and a graph output kept alive

    def clear(self):
        self.h.clear()


# ----------------------------------------------------------------------------------------------------------
# adapting a model

def add_adapters(model, adapters=None, time_axes=None, **settings):
    """Adapt a model.Model in place and return it: add_adapters(m, Adapters(...)) or add_adapters(m, rank=4, ...).
    Freezes everything but what the method trains (see is_trained) and records the settings in model.adapters.
    time_axes: what carries SSMLoRA's states (default TimeAxes; state="carry" needs the authors' lifetime,
    reproduce.authors.add_adapters, which passes its own)."""
    if adapters is not None and settings:
        raise ValueError(f"pass either an Adapters object or keyword settings, not both (got {', '.join(settings)})")
    adapters = adapters if adapters is not None else Adapters(**settings)
    if getattr(model, "adapters", None) is not None:
        raise ModelError("this model already has adapters; build a fresh model to add other ones")
    if adapters.method in ("qlora", "mixlora"):
        raise ModelError(f"{adapters.method} is a baseline in baselines/: add it with baselines.add_adapters")
    if adapters.method == "sdt":
        raise ModelError("sdt (Sparse Dimension Tuning, Mamba only) is in mamba/: add it with mamba.sdt.add_sdt")
    if adapters.method in ("lora", "ssmlora"):
        if "qkv" in adapters.targets:  # one adapter over the fused projection: the paper's GPT-2 (decision 12)
            for block in model.blocks:
                block.attn.fuse_qkv()
        if adapters.method == "ssmlora" and (adapters.state == "carry") != (time_axes is not None):  # decision 10
            raise ModelError("state carry is the authors' lifetime: build it with reproduce.authors.add_adapters; "
                             "the default state reset needs no time_axes")
        model.time_axes = time_axes or TimeAxes()
        positions = {}
        plan = insertion_plan(model.cfg.n_layer, adapters.targets, adapters.sparse) + head_plan(model, adapters)
        for i, target in plan:
            parent, name = linear_of(model, i, target)
            base = getattr(parent, name)
            if adapters.method == "lora":
                module = LoRALinear(base, adapters.rank, adapters.alpha, adapters.dropout)
            else:  # position on its axis: how many modules of this kind come before it (decision 8)
                positions[target] = positions.get(target, -1) + 1
                module = SSMLoRALinear(base, adapters.rank, adapters.alpha, adapters.dropout, model.time_axes,
                                       target, positions[target])
            setattr(parent, name, module.train(base.training))  # a new module is in train mode: follow the model
        for m in adapter_modules(model):  # so that the default TimeAxes is empty again after each forward pass
            if isinstance(m, SSMLoRALinear):
                m.last = m.position == positions[m.axis]
    model.adapters = adapters
    frozen = frozen_head(model)
    for name, p in model.named_parameters():
        p.requires_grad_(is_trained(name, adapters.method, frozen))
    return model


def linear_of(model, layer, target):
    """(parent module, attribute name) of the linear a target names in a layer (or in the task head)."""
    if target == "head":
        return model.head, model.head.output
    part, name = TARGETS[target] if target in TARGETS else MAMBA_TARGETS[target]
    parent = getattr(model.blocks[layer], part, None)  # a transformer block has no mixer, a Mamba block no attn
    if getattr(parent, name, None) is None:
        block = model.blocks[layer]
        has = [t for t, (p, n) in {**TARGETS, **MAMBA_TARGETS}.items()
               if t != "head" and getattr(getattr(block, p, None), n, None) is not None]
        raise ModelError(f"target {target}: a {model.cfg.family} block has no such linear (its targets: "
                         f"{', '.join(has)})")
    return parent, name


def head_plan(model, adapters):
    """[(n_layer, "head")] when the task head is a target: one more module, after the blocks, on its own axis."""
    if "head" not in adapters.targets:
        return []
    if model.head is None:
        raise ModelError(f"target head: this model has no classification head (its head is {model.cfg.head!r})")
    return [(model.cfg.n_layer, "head")]


def frozen_head(model):
    """Name of the head linear that a "head" adapter wraps (its own weight and bias stay frozen), or None."""
    adapters = getattr(model, "adapters", None)
    if adapters is None or adapters.method not in LOW_RANK or "head" not in adapters.targets:
        return None
    return f"head.{model.head.output}"


def is_trained(name, method, frozen=None):
    """Whether a method trains the parameter `name`. The task head is trained by every method (as PEFT's
    modules_to_save), except the linear under a "head" adapter (`frozen`, from frozen_head): there only the adapter
    learns. GPT-2's LM head is tied to the token embeddings and has no parameters of its own."""
    if method == "full":
        return True
    if name.rsplit(".", 1)[-1] in ADAPTER_WEIGHTS:
        return method in LOW_RANK
    if name.startswith("head."):
        return frozen is None or name.rsplit(".", 1)[0] != frozen
    return method == "bitfit" and name.endswith(".bias")


def adapter_modules(model):
    return [m for m in model.modules() if isinstance(m, LowRankLinear)]


def merge_lora(model):
    """Fold s W_a W_b into the frozen weights for inference with no overhead. LoRA only: SSMLoRA's h_norm depends
    on the input through a min-max normalisation (eq. 8), so it cannot be folded into W0."""
    if any(isinstance(m, SSMLoRALinear) for m in adapter_modules(model)):
        raise ModelError("SSMLoRA cannot be merged into W0: its h_norm term depends on the input (eq. 8); "
                         "only LoRA merges")
    for m in adapter_modules(model):
        m.merge()


def unmerge_lora(model):
    """Undo merge_lora (to float rounding), e.g. to train again."""
    for m in adapter_modules(model):
        if isinstance(m, LoRALinear):
            m.unmerge()


def reset_state(model):
    """Forget the carried states (state="carry"); a no-op otherwise."""
    if getattr(model, "time_axes", None) is not None:
        model.time_axes.clear()


BODY = {"bitfit": "biases", "full": "body"}  # what a method trains outside the head; LoRA and SSMLoRA: "adapter"


def param_report(model):
    """Parameter counts: what the method trains outside the task head ("adapter", a head adapter's matrices
    included; BitFit "biases"; full "body"), the head's tensors trained in full, trainable, frozen, total. Works on a
    model built on the meta device (no weights needed)."""
    adapters = getattr(model, "adapters", None)
    method = adapters.method if adapters else "none"
    body = BODY.get(method, "adapter")
    r = {"method": method, body: 0, "head": 0, "trainable": 0, "frozen": 0}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            r["frozen"] += p.numel()
            continue
        r["trainable"] += p.numel()
        in_body = name.rsplit(".", 1)[-1] in ADAPTER_WEIGHTS or not name.startswith("head.")  # a head adapter too
        r[body if in_body else "head"] += p.numel()
    r["total"] = r["trainable"] + r["frozen"]
    r["notes"] = notes(adapters) if adapters else []
    return r


def notes(adapters):
    """Settings that silently do less than they seem to, said where the user sees the parameter report."""
    out = []
    if adapters.method == "ssmlora" and adapters.rank == 1:
        out.append("rank 1: the min and max of eqs. (6)-(7) are over a single value, so h_norm is always 0 and W_c, "
                   "W_d never get a gradient; SSMLoRA at rank 1 is sparse LoRA (W_c, W_d are still counted, as in "
                   "the paper)")
    return out


def format_report(r):
    def pct(n):
        return f"{n:>13,}  ({100 * n / max(r['total'], 1):.3f}%)"
    body = BODY.get(r["method"], "adapter")
    return "\n".join([f"method     {r['method']}", f"{body:<10} {pct(r[body])}", f"head       {pct(r['head'])}",
                      f"trainable  {pct(r['trainable'])}", f"frozen     {pct(r['frozen'])}",
                      f"total      {r['total']:>13,}"] + [f"note: {n}" for n in r.get("notes", [])])
