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

Read with /work/shared/design.md: "design decision N" in a comment points at its decision N.
One call adapts a model:  add_adapters(model, Adapters(method="ssmlora", rank=8))
"""
import json
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model import ModelError

METHODS = ("ssmlora", "lora", "bitfit", "full", "none")  # none = frozen body, head only (benchmarks)
# target name -> (sub-module of a block, linear in it). GPT-2's fused c_attn is split into query / key / value
# at load time (design decision 12); the paper instead adapted the whole fused c_attn every other layer.
TARGETS = {"query": ("attn", "query"), "key": ("attn", "key"), "value": ("attn", "value"),
           "attn_out": ("attn", "out"), "ffn_in": ("mlp", "fc_in"), "ffn_out": ("mlp", "fc_out")}
ALTERNATING = ("query", "key", "value")  # sparse insertion alternates these; other targets stay dense (§3.4)
STATES = ("reset", "carry")
EPS = 1e-8  # eq. (8), as the authors' code (design decision 1); it rounds to 0 in float16, so eq. (8) runs in float32
AUTHORS_H0_ROWS = 12  # the authors' TimeAxis allocates h_0 with 12 rows whatever the batch size ("carry" only)


@dataclass
class Adapters:
    """What to add to a model. Checked and normalised on creation: bad values raise ValueError."""
    method: str = "ssmlora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    targets: tuple = ("query", "value")   # or a comma-separated string, "query,value"
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
        names = self.targets.split(",") if isinstance(self.targets, str) else list(self.targets)
        names = [n.strip() for n in names if n.strip()]
        unknown = [n for n in names if n not in TARGETS]
        if unknown or not names:
            raise ValueError(f"unknown or no targets {unknown or names}; valid targets: {', '.join(TARGETS)}")
        self.targets = tuple(t for t in TARGETS if t in names)  # canonical order: "value,query" == "query,value"
        if self.sparse is None:
            self.sparse = self.method == "ssmlora"  # SSMLoRA sparse (§3.4), LoRA dense as the paper's baseline
        self.alpha, self.sparse = float(self.alpha), bool(self.sparse)


def insertion_plan(n_layer, targets, sparse):
    """[(layer, target), ...] in forward order. Sparse: layer i adapts one of the query/key/value targets,
    targets[i % n] (design decision 9: query on even layers, value on odd); other targets in every layer."""
    alternating = [t for t in targets if t in ALTERNATING]
    plan = []
    for i in range(n_layer):
        for t in targets:
            if not sparse or t not in ALTERNATING or t == alternating[i % len(alternating)]:
                plan.append((i, t))
    return plan


# ----------------------------------------------------------------------------------------------------------
# LoRA and the Time Module

class LoRALinear(nn.Linear):
    """A frozen nn.Linear plus LoRA (eq. 1). Subclasses nn.Linear and adopts the base's weight and bias, so the
    base's parameter names (…query.weight) stay as they were and only W_a, W_b are new."""

    def __init__(self, base, rank, alpha, dropout):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.W_a = nn.Parameter(torch.randn(base.in_features, rank, **kw) / math.sqrt(rank))  # N(0, 1/r), decision 5
        self.W_b = nn.Parameter(torch.zeros(rank, base.out_features, **kw))  # zero: adapted == base at init
        self.scaling = alpha / rank  # s = alpha / r, LoRA's convention for both methods (design decision 6)
        self.drop = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.merged:  # W0 already holds W0 + s W_a W_b: zero overhead
            return y
        return add_low_rank(y, self.drop(x) @ self.W_a * self.scaling, self.W_b)  # eq. (1); dropout on x: decision 7

    def extra_repr(self):
        return f"{super().extra_repr()}, rank={self.W_a.shape[1]}, scaling={self.scaling:g}, merged={self.merged}"

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


class SSMLoRALinear(LoRALinear):
    """A frozen nn.Linear plus a Time Module (§3.1): W_a, W_b as LoRA, W_c, W_d (r x r) for the state.
    `axes` hands it h_t from the previous module on its time axis (`axis`, `position`) and takes h_t+1 on."""

    def __init__(self, base, rank, alpha, dropout, axes, axis, position, layer):
        super().__init__(base, rank, alpha, dropout)  # self.drop acts on h_norm here, not on x (decision 7)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.W_c = nn.Parameter(torch.zeros(rank, rank, **kw))  # zero, as W_b (design decision 5)
        self.W_d = nn.Parameter(torch.zeros(rank, rank, **kw))
        self.axes, self.axis, self.position, self.layer = axes, axis, position, layer

    def next_state(self, x_new, h):
        """h_norm, the normalised h_t+1, from x_new = x W_a (..., r) and the incoming state h_t (..., r)."""
        h_dot = h @ self.W_c + x_new @ self.W_d               # eq. (2): h'_t, the derivative of the state
        h = (h_dot + h).float()                               # eqs. (3), (4): one Euler step (float32: see EPS)
        lo, hi = torch.aminmax(h, dim=-1, keepdim=True)       # eqs. (6), (7): per token, over the rank, one pass
        return ((h - lo) / (hi - lo + EPS)).to(x_new.dtype)   # eq. (8), typo fixed (design decision 1)

    def forward(self, x):
        x_new = x @ self.W_a                                  # eq. (5); no dropout on x (design decision 7)
        h = self.axes.read(self, x_new)  # h_t from the module before on the axis: sequential, no FFT (decision 11)
        h_norm = self.next_state(x_new, h)
        self.axes.write(self, h_norm.detach())  # the normalised state, detached, goes on (design decision 3)
        # eq. (10), not (9) (design decision 2). Dropout on h_norm, where the authors put it; their leaky ReLU after
        # it is left out: h_norm lies in [0, 1], dropout only zeroes or scales it up, so leaky ReLU is the identity
        # there (design decision 7). The scale s goes on the rank-r factor: cheaper than on the d_out-wide output.
        y = F.linear(x, self.weight, self.bias)  # x W0 (+ bias)
        return add_low_rank(y, (x_new + self.drop(h_norm)) * self.scaling, self.W_b)  # eq. (10)

    def merge(self):
        raise ModelError("SSMLoRA cannot be merged into W0: its h_norm term depends on the input through a "
                         "min-max normalisation (eq. 8); only LoRA merges")


def add_low_rank(y, a, W_b):
    """y + a W_b, accumulated into y's memory by one GEMM (beta = 1): no (batch, seq, d_out) temporary and no
    extra pass over it. Small (~1% of a roberta-base forward on CPU) but free."""
    y.view(-1, y.shape[-1]).addmm_(a.reshape(-1, a.shape[-1]).to(y.dtype), W_b.to(y.dtype))
    return y


class TimeAxes:
    """The states passed along the time axes, one axis per kind of adapted projection (design decision 8).

    state="reset" (default, design decision 10): the first module of an axis starts every forward pass from
    h_0 = 0 (design decision 4) and each later module reads what the module before it wrote in the same pass, so
    outputs never depend on batch-mates, batch size or earlier batches.

    state="carry" reproduces the authors' src/models/ssm_lora.py (TimeAxis, SSMLoRALayer.forward, lines 5-60) and
    src/models/model_utils.py (prepare_model, lines 26-38): one dictionary survives across forward passes (train
    and eval alike). Query and value modules are stored under per-layer keys (their f"query_{i}", f"value_{i}"),
    so each reads *its own* state from the previous forward pass and no state moves across layers; we key "key"
    the same way (they never adapt it). attn_out / ffn modules share one key per kind (their "od", "mlp", "mu", "md"),
    so the state runs across layers and the head of the axis reads the tail's state from the previous pass.
    A key never written reads zeros of AUTHORS_H0_ROWS rows and the current length; a stored state whose shape
    differs is patched by fit_carried_state() as they do. Only the state's lifetime, keys and patching are theirs:
    the scaling (alpha / r, design decision 6) and the dropout (decision 7) are the same in both modes.
    """

    def __init__(self, state="reset"):
        self.state = state
        self.h = {}

    def key(self, m):
        if self.state == "carry":
            return f"{m.axis}_{m.layer}" if m.axis in ALTERNATING else m.axis
        return m.axis

    def read(self, m, x_new):
        if self.state == "reset":  # every forward pass starts afresh; the state crosses layers only (decision 10)
            if m.position == 0:
                return torch.zeros_like(x_new)  # h_0 = 0 shaped like x_new (design decision 4)
            position, h = self.h.pop(m.axis, (None, None))
            if position != m.position - 1 or h.shape != x_new.shape:
                raise ModelError(f"time axis {m.axis!r}: module {m.position} ran without module {m.position - 1} "
                                 f"before it in the same forward pass; run the whole model, not single blocks")
            return h
        B, T, r = x_new.shape
        h = self.h.get(self.key(m))
        if h is None:  # their first read: zeros with a fixed 12 rows, then patched like any carried state
            h = x_new.new_zeros(AUTHORS_H0_ROWS, T, r)
        return fit_carried_state(h, B, T).to(x_new.dtype)

    def write(self, m, h_norm):
        self.h[self.key(m)] = h_norm if self.state == "carry" else (m.position, h_norm)

    def clear(self):
        self.h.clear()


def fit_carried_state(h, B, T):
    """The authors' patch (ssm_lora.py lines 37-52) of a carried state h (B', T', r) to (B, T, r), in their order:
    missing rows are filled with 0.5, surplus rows dropped by a random choice (random order); surplus positions
    dropped by a random choice kept in order; missing positions filled with zeros at the end."""
    if h.shape[0] < B:
        h = torch.cat([h, h.new_full((B - h.shape[0], h.shape[1], h.shape[2]), 0.5)])
    elif h.shape[0] > B:
        h = h[torch.randperm(h.shape[0])[:B].to(h.device)]
    if h.shape[1] > T:
        h = h[:, torch.randperm(h.shape[1], device=h.device)[:T].sort().values]
    elif h.shape[1] < T:
        h = torch.cat([h, h.new_zeros(B, T - h.shape[1], h.shape[2])], dim=1)
    return h


# ----------------------------------------------------------------------------------------------------------
# adapting a model

def add_adapters(model, adapters=None, **settings):
    """Adapt a model.Model in place and return it: add_adapters(m, Adapters(...)) or add_adapters(m, rank=4, ...).
    Freezes everything but what the method trains (see is_trained) and records the settings in model.adapters."""
    if adapters is not None and settings:
        raise ValueError(f"pass either an Adapters object or keyword settings, not both (got {', '.join(settings)})")
    adapters = adapters if adapters is not None else Adapters(**settings)
    if getattr(model, "adapters", None) is not None:
        raise ModelError("this model already has adapters; build a fresh model to add other ones")
    if adapters.method in ("lora", "ssmlora"):
        model.time_axes = TimeAxes(adapters.state)
        positions = {}
        for i, target in insertion_plan(model.cfg.n_layer, adapters.targets, adapters.sparse):
            part, name = TARGETS[target]
            parent = getattr(model.blocks[i], part)
            base = getattr(parent, name)
            if adapters.method == "lora":
                module = LoRALinear(base, adapters.rank, adapters.alpha, adapters.dropout)
            else:  # position on its axis: how many modules of this kind come before it (design decision 8)
                positions[target] = positions.get(target, -1) + 1
                module = SSMLoRALinear(base, adapters.rank, adapters.alpha, adapters.dropout, model.time_axes,
                                       target, positions[target], i)
            setattr(parent, name, module.train(base.training))  # a new module is in train mode: follow the model
    model.adapters = adapters
    for name, p in model.named_parameters():
        p.requires_grad_(is_trained(name, adapters.method))
    return model


def is_trained(name, method):
    """Whether a method trains the parameter `name`. The task head is trained by every method (as PEFT's
    modules_to_save); GPT-2's LM head is tied to the token embeddings and has no parameters of its own."""
    if name.startswith("head.") or method == "full":
        return True
    if method == "bitfit":
        return name.endswith(".bias")
    return method in ("lora", "ssmlora") and name.rsplit(".", 1)[-1] in ("W_a", "W_b", "W_c", "W_d")


def adapter_modules(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model):
    """Fold s W_a W_b into the frozen weights for inference with no overhead (LoRA only)."""
    for m in adapter_modules(model):
        m.merge()


def unmerge_lora(model):
    """Undo merge_lora (to float rounding), e.g. to train again."""
    for m in adapter_modules(model):
        m.unmerge()


def reset_state(model):
    """Forget the carried states (state="carry"); a no-op otherwise."""
    if getattr(model, "time_axes", None) is not None:
        model.time_axes.clear()


def param_report(model):
    """Parameter counts: adapter (trained outside the head: adapter matrices, BitFit's biases, full's body),
    head, trainable, frozen, total. Works on a model built on the meta device (no weights needed)."""
    adapters = getattr(model, "adapters", None)
    r = dict(method=adapters.method if adapters else "(no adapters)", adapter=0, head=0, trainable=0, frozen=0)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            r["frozen"] += p.numel()
            continue
        r["trainable"] += p.numel()
        r["head" if name.startswith("head.") else "adapter"] += p.numel()
    r["total"] = r["trainable"] + r["frozen"]
    return r


def format_report(r):
    def pct(n):
        return f"{n:>13,}  ({100 * n / max(r['total'], 1):.3f}%)"
    return "\n".join([f"method     {r['method']}", f"adapter    {pct(r['adapter'])}", f"head       {pct(r['head'])}",
                      f"trainable  {pct(r['trainable'])}", f"frozen     {pct(r['frozen'])}",
                      f"total      {r['total']:>13,}"])


# ----------------------------------------------------------------------------------------------------------
# saving and loading what was trained

BASE_KEYS = ("family", "n_layer", "d_model", "num_labels", "head")  # the base model's identity
FORMAT = "ssmlora-adapters/1"


def save_adapters(model, path):
    """Write the trained parameters (adapters + head; for bitfit the biases, for full everything) to a
    .safetensors file, with the settings and the base's identity in its metadata. Atomic: temp file + rename."""
    adapters = _require_adapters(model)
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if is_trained(n, adapters.method)}
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in asdict(adapters).items()},
                **{f"base.{k}": json.dumps(getattr(model.cfg, k)) for k in BASE_KEYS}}
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")  # same filesystem
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_settings(path):
    """(Adapters, base identity dict) from a file written by save_adapters."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise ModelError(f"could not read adapter file {path} ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path} is not an adapter file written by save_adapters (no {FORMAT!r} metadata)")
    try:
        adapters = Adapters(**{f.name: json.loads(meta[f.name]) for f in fields(Adapters)})
        return adapters, {k: json.loads(meta[f"base.{k}"]) for k in BASE_KEYS}
    except (KeyError, ValueError) as e:
        raise ModelError(f"adapter file {path} has incomplete or invalid settings in its metadata ({e})") from None


def load_adapters(model, path):
    """Load a file from save_adapters into a model that has adapters with the same settings (dropout may differ:
    it does not change what is computed in eval). Any other difference is a ModelError naming it."""
    adapters = _require_adapters(model)
    saved, base = read_settings(path)
    _check_base(model, base, path)
    diff = [f"{f.name}: file {getattr(saved, f.name)!r}, model {getattr(adapters, f.name)!r}"
            for f in fields(Adapters) if f.name != "dropout" and getattr(saved, f.name) != getattr(adapters, f.name)]
    if diff:
        raise ModelError(f"adapter file {path} was saved with other settings than this model has: {'; '.join(diff)}. "
                         f"Build the model with the file's settings (add_adapters_from_file does that)")
    if any(m.merged for m in adapter_modules(model)):
        raise ModelError("LoRA is merged into the weights; call unmerge_lora(model) before loading adapters")
    tensors = load_file(path)
    params = {n: p for n, p in model.named_parameters() if is_trained(n, adapters.method)}
    if set(tensors) != set(params):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise ModelError(f"adapter file {path} does not fit this model: missing {missing[:5]}, unexpected {extra[:5]}")
    for n, t in tensors.items():
        if t.shape != params[n].shape:
            raise ModelError(f"adapter file {path}: {n} has shape {tuple(t.shape)}, the model {tuple(params[n].shape)}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    reset_state(model)
    return model


def add_adapters_from_file(model, path):
    """Add to a bare model the adapters described in the file, then load them (e.g. for --eval-only)."""
    adapters, base = read_settings(path)
    _check_base(model, base, path)
    return load_adapters(add_adapters(model, adapters), path)


def _require_adapters(model):
    if getattr(model, "adapters", None) is None:
        raise ModelError("this model has no adapters: call add_adapters(model, ...) first "
                         "(or add_adapters_from_file(model, path) to rebuild them from a saved file)")
    return model.adapters


def _check_base(model, base, path):
    diff = [f"{k}: file {v!r}, model {getattr(model.cfg, k)!r}" for k, v in base.items() if getattr(model.cfg, k) != v]
    if diff:
        raise ModelError(f"adapter file {path} belongs to another base model: {'; '.join(diff)}")
