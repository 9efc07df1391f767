"""
Mamba-1 (S6), hand-written: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023).
It loads Hugging Face Mamba checkpoints (state-spaces/mamba-*-hf) exactly, and is the base model on which
mamba/sdt.py and ssmlora.py fine-tune a state space model (Galim et al., arXiv 2410.09016).

Glossary (the paper's letters; the shape comments use them)
  b       batch size                      l   sequence length (positions)
  d       d_model, the residual width     D   d_inner = expand * d, the channels the SSM runs on
  n       d_state, states per channel     R   dt_rank, the rank of the projection that gives Δ
  k       d_conv, the width of the causal depthwise convolution
  x       the SSM's input (in_proj, conv, SiLU)   z   the gate, the other half of in_proj's output
  A       (D, n) state matrix, diagonal; A = -exp(A_log) < 0, so Ā = exp(ΔA) lies in (0, 1)
  B, C    (b, l, n) input and output matrices, functions of x: the "selection" (§3.2, Algorithm 2)
  Δ (dt)  (b, l, D) step size, softplus(dt_proj(x_proj(x))): one per channel and position
  h       (b, D, n) the state; D_skip is the parameter `D` (D,), the skip y += D ⊙ x (the paper also calls
          the channel count D: the shapes say which)

Equations (Gu & Dao): (1a) h'(t) = A h(t) + B x(t), (1b) y(t) = C h(t); (2a) h_t = Ā h_t-1 + B̄ x_t,
(2b) y_t = C h_t; (4) zero-order hold Ā = exp(ΔA), and B̄ = ΔB, the simplification the reference code makes.
Padding: Mamba has no attention mask. A padded position's mixer input and SSM input are zeroed, so the state
stays 0 through left padding and the convolution sees zeros there, as at the start of a row; right padding
comes after every real token and a causal model never reads it. So a padded row equals the same row alone.
"""
import difflib
import json
import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Head, Model, ModelError


@dataclass
class MambaConfig:
    family: str = "mamba"
    vocab_size: int = 50280     # GPT-NeoX's 50277 tokens, padded to a multiple of 8
    d_model: int = 768          # d
    n_layer: int = 24
    d_state: int = 16           # n
    expand: int = 2             # D = expand * d
    d_conv: int = 4             # k
    dt_rank: int = None         # R; None: ceil(d / 16), config.json's "auto"
    ln_eps: float = 1e-5
    bias: bool = False          # in_proj / out_proj biases: no released checkpoint has them
    conv_bias: bool = True
    pad_token_id: int = 0       # = eos: padding is read from attention_mask, never from token ids
    head: str = "lm"            # "lm" (tied to the embeddings), "cls", "choice", "span" (model.Head), "none"
    num_labels: int = 2
    head_dropout: float = 0.0   # model.Head's; Mamba has no dropout anywhere

    def __post_init__(self):
        self.dt_rank = self.dt_rank or math.ceil(self.d_model / 16)
        small = [f"{k} {getattr(self, k)}" for k in ("vocab_size", "d_model", "n_layer", "d_state", "expand", "d_conv",
                                                      "dt_rank") if getattr(self, k) < 1]
        if small:
            raise ModelError(f"Mamba sizes must all be >= 1, not {', '.join(small)}")

    @property
    def d_inner(self):
        return self.expand * self.d_model

    @property
    def max_tokens(self):  # no position table: any length (check_inputs reads this)
        return 1 << 31


PRESETS = {  # the state-spaces/mamba-*-hf checkpoints' config.json
    "mamba-130m": dict(d_model=768, n_layer=24),
    "mamba-370m": dict(d_model=1024, n_layer=48),
    "mamba-790m": dict(d_model=1536, n_layer=48),
    "mamba-1.4b": dict(d_model=2048, n_layer=48),
    "mamba-2.8b": dict(d_model=2560, n_layer=64),
}


def preset(name, **overrides):
    """MambaConfig of a preset by name, e.g. preset("mamba-130m", head="cls", num_labels=3)."""
    if name not in PRESETS:
        raise ModelError(f"unknown Mamba preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return MambaConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------------------
# the selective SSM and the block

def selective_scan(x, dt, A, B, C):
    """The S6 recurrence (Algorithm 2), every batch row and channel at once, one step per position.
    x, dt: (b, l, D); A: (D, n); B, C: (b, l, n). Returns y (b, l, D) in float32. The loop walks `unbind` views:
    indexing dA[:, i] instead makes the backward allocate a full-size gradient per step (~10x slower on CPU)."""
    x, dt, B, C = (t.float() for t in (x, dt, B, C))
    dA = torch.exp(dt[..., None] * A)                     # (b, l, D, n)  Ā = exp(ΔA), eq. (4)
    dBx = (dt * x)[..., None] * B[:, :, None, :]          # (b, l, D, n)  B̄ x = Δ B x, eq. (4) simplified
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])   # (b, D, n)     h_0 = 0
    ys = []
    for dA_t, dBx_t, C_t in zip(dA.unbind(1), dBx.unbind(1), C.unbind(1)):
        h = dA_t * h + dBx_t                              # eq. (2a)
        ys.append(h @ C_t[:, :, None])                    # eq. (2b): (b, D, n) @ (b, n, 1)
    return torch.cat(ys, -1).transpose(1, 2)              # (b, l, D)


class Mixer(nn.Module):
    """The Mamba block's body (§3.4, Figure 3): in_proj -> (x, z); x -> causal conv -> SiLU -> selective SSM;
    y ⊙ SiLU(z) -> out_proj. Its linears are what LoRA and SSMLoRA adapt (ssmlora.MAMBA_TARGETS)."""

    def __init__(self, cfg):
        super().__init__()
        d, D, n, R = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank
        self.n, self.R = n, R
        self.in_proj = nn.Linear(d, 2 * D, bias=cfg.bias)
        self.conv1d = nn.Conv1d(D, D, cfg.d_conv, groups=D, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(D, R + 2 * n, bias=False)  # s_Δ (rank R), s_B, s_C of Algorithm 2
        self.dt_proj = nn.Linear(R, D)                      # s_Δ back to D; its bias: the "Parameter" of Δ
        self.A_log = nn.Parameter(torch.empty(D, n))        # A = -exp(A_log): real, diagonal (S4D-real)
        self.D = nn.Parameter(torch.empty(D))               # the skip, y += D ⊙ x
        self.out_proj = nn.Linear(D, d, bias=cfg.bias)
        self.A_log_delta = None  # SDT's delta on A_log (mamba/sdt.py); None: A_log as loaded

    def forward(self, u, mask=None):
        """u: (b, l, d), normalised; mask: (b, l), 1 = real token, or None. Returns (b, l, d)."""
        l = u.shape[1]
        xz = self.in_proj(u)                                        # (b, l, 2D)
        if mask is not None:  # padded positions: zero input, so the conv and the state see nothing there
            xz = xz * mask[..., None].to(xz.dtype)
        x, z = xz.chunk(2, dim=-1)                                  # (b, l, D) each
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :l].transpose(1, 2))  # causal: the first l outputs
        if mask is not None:  # the conv's bias would leak into the state at padded positions
            x = x * mask[..., None].to(x.dtype)
        dt, B, C = self.x_proj(x).split([self.R, self.n, self.n], dim=-1)  # (b, l, R), (b, l, n), (b, l, n)
        dt = F.softplus(self.dt_proj(dt))                           # (b, l, D)  Δ = τ_Δ(Parameter + s_Δ(x))
        A_log = self.A_log if self.A_log_delta is None else self.A_log_delta(self.A_log)
        A = -torch.exp(A_log.float())                               # (D, n)     real, negative: stable
        y = selective_scan(x, dt, A, B, C) + x.float() * self.D.float()  # (b, l, D)  eqs. (2a), (2b) + skip
        y = y * F.silu(z.float())                                   # the gate (Figure 3)
        return self.out_proj(y.to(u.dtype))


class Block(nn.Module):
    """Pre-norm residual block: x + Mixer(RMSNorm(x)); the residual stream is kept in float32."""

    def __init__(self, cfg):
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.ln_eps)
        self.mixer = Mixer(cfg)

    def forward(self, x, mask=None):
        return x + self.mixer(self.norm(x.to(self.norm.weight.dtype)), mask)


class Mamba(nn.Module):
    """Embeddings, n_layer Blocks, a final RMSNorm, then the same heads as model.Model: the LM head tied to the
    embeddings (MambaForCausalLM), or model.Head, which scores the last real token (transformers has no
    MambaForSequenceClassification: this head is ours, as GPT-2's and LLaMA's)."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.head not in ("lm", "cls", "choice", "span", "none"):
            raise ModelError(f"unknown head {cfg.head!r} for Mamba; choose lm, cls, choice, span or none")
        self.cfg = cfg
        self.embed = nn.ModuleDict(dict(tok=nn.Embedding(cfg.vocab_size, cfg.d_model)))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=cfg.ln_eps)
        self.head = Head(cfg) if cfg.head in ("cls", "choice", "span") else None
        self.lm_head = None  # tied: Model.forward multiplies by embed.tok.weight
        self.apply(_init_weights)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None):
        """Last hidden states (b, l, d) after the final norm. Mamba has no token types: they are ignored."""
        x = self.embed.tok(input_ids).float()  # the residual stream in float32 (residual_in_fp32)
        for block in self.blocks:
            x = block(x, attention_mask)
        return self.norm_f(x.to(self.norm_f.weight.dtype))

    forward = Model.forward  # the transformers' heads and losses, unchanged: one code path for every task


@torch.no_grad()
def _init_weights(module):
    """Random weights (--random-init) as transformers' MambaPreTrainedModel: S4D-real A, D = 1, Δ in
    [0.001, 0.1], N(0, 0.02) linears and embeddings."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, Mixer):
        D, n = module.A_log.shape
        module.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(D, n))  # A = -(1..n)
        module.D.fill_(1.0)
        bound = module.R ** -0.5
        nn.init.uniform_(module.dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(D) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        module.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        nn.init.kaiming_uniform_(module.conv1d.weight, a=math.sqrt(5))
        if module.conv1d.bias is not None:
            nn.init.zeros_(module.conv1d.bias)


# ----------------------------------------------------------------------------------------------------------
# Hugging Face checkpoints (files/hub.py finds the folder and reads the files)

# config.json's keys this code reads: (default, what the value must be); a default None: the key is required
KEYS = {"vocab_size": (None, "the number of token ids, an integer >= 1"),
        "hidden_size": (None, "the width d_model, an integer >= 1"),
        "num_hidden_layers": (None, "the number of blocks, an integer >= 1"),
        "state_size": (16, "d_state, the states per channel, an integer >= 1"),
        "expand": (2, "d_inner / d_model, an integer >= 1"),
        "conv_kernel": (4, "the causal convolution's width d_conv, an integer >= 1"),
        "time_step_rank": ("auto", "dt_rank, an integer >= 1 or \"auto\" (ceil(hidden_size / 16))"),
        "intermediate_size": ("expand x hidden_size", "d_inner, expand x hidden_size"),
        "layer_norm_epsilon": (1e-5, "the RMSNorms' epsilon, a number > 0"),
        "pad_token_id": (0, "a token id, an integer >= 0, or null"),
        "use_bias": (False, "true or false (in_proj / out_proj biases; false in every released checkpoint)"),
        "use_conv_bias": (True, "true or false"),
        "tie_word_embeddings": (True, "true: this code ties the LM head to the embeddings"),
        "hidden_act": ("silu", "\"silu\", as every state-spaces/mamba-*-hf checkpoint"),
        "residual_in_fp32": (True, "true: this code keeps the residual stream in float32")}


def config_from_hf(hf, num_labels=None, **overrides):
    """MambaConfig from a MambaConfig config.json dict; num_labels: a classification head (else the LM head).
    A key missing or of the wrong kind is an error that names it and says what it should be (check_hf)."""
    check_hf(hf)
    rank, pad = hf.get("time_step_rank", "auto"), hf.get("pad_token_id")
    cfg = dict(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layer=hf["num_hidden_layers"],
               d_state=hf.get("state_size", 16), expand=hf.get("expand", 2), d_conv=hf.get("conv_kernel", 4),
               dt_rank=None if rank == "auto" else rank, ln_eps=hf.get("layer_norm_epsilon", 1e-5),
               bias=hf.get("use_bias", False), conv_bias=hf.get("use_conv_bias", True),
               pad_token_id=0 if pad is None else pad, head="lm" if num_labels is None else "cls",
               num_labels=num_labels or 2)
    return MambaConfig(**{**cfg, **overrides})


def check_hf(hf):
    """Refuse, by key, a config.json this code would misread: a transformer's labelled mamba, a key missing or
    misspelt, a value of the wrong kind, a Mamba variant this code does not compute."""
    architectures = hf.get("architectures") if isinstance(hf.get("architectures"), list) else []
    foreign = [a for a in architectures if not str(a).startswith("Mamba")]
    attention = [k for k in ("num_attention_heads", "n_head", "n_embd") if k in hf]
    if foreign or attention:
        raise ModelError(f"config.json says model_type \"mamba\" but describes a transformer "
                         f"({', '.join(map(str, foreign)) or ', '.join(attention)}): is its model_type wrong?")
    integer = lambda v, low: isinstance(v, int) and not isinstance(v, bool) and v >= low  # noqa: E731
    ok = {k: lambda v: integer(v, 1) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "state_size",
                                                "expand", "conv_kernel", "intermediate_size")}
    ok.update(time_step_rank=lambda v: v == "auto" or integer(v, 1), pad_token_id=lambda v: v is None or integer(v, 0),
              layer_norm_epsilon=lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
              use_bias=lambda v: isinstance(v, bool), use_conv_bias=lambda v: isinstance(v, bool),
              tie_word_embeddings=lambda v: v is True, hidden_act=lambda v: v == "silu",
              residual_in_fp32=lambda v: v is True)
    for key, (default, what) in KEYS.items():
        if key not in hf and default is None:
            typo = difflib.get_close_matches(key, [k for k in hf if k not in KEYS], n=1)
            raise ModelError(f"config.json has no {key} ({what})"
                             f"{f'; is {typo[0]} a misspelling of it?' if typo else ''}")
        if key in hf and not ok[key](hf[key]):
            raise ModelError(f"config.json: {key} is {json.dumps(hf[key])}, it should be {what}")
    if hf.get("intermediate_size", hf.get("expand", 2) * hf["hidden_size"]) != hf.get("expand", 2) * hf["hidden_size"]:
        raise ModelError(f"config.json: intermediate_size is {hf['intermediate_size']}, not expand x hidden_size = "
                         f"{hf.get('expand', 2)} x {hf['hidden_size']}: a Mamba variant this code does not compute")


_NAMES = [(r"(?:backbone\.)?embeddings?\.weight", "embed.tok.weight"),  # "embedding." in older files
          (r"(?:backbone\.)?layers\.(\d+)\.(norm\.weight|mixer\.\w+(?:\.\w+)?)", r"blocks.\1.\2"),
          (r"(?:backbone\.)?norm_f\.weight", "norm_f.weight")]


def convert_state_dict(state):
    """Rename a Hugging Face Mamba state dict to ours. lm_head.weight is dropped: it is the embeddings, tied."""
    out, unexpected = {}, []
    for name, tensor in state.items():
        if name == "lm_head.weight":
            continue
        ours = next((re.sub(p, r, name) for p, r in _NAMES if re.fullmatch(p, name)), None)
        if ours is None:
            unexpected.append(name)
        else:
            out[ours] = tensor
    if unexpected:
        raise ModelError(f"unexpected tensors in the mamba checkpoint: {', '.join(unexpected[:10])}"
                         f"{' ...' if len(unexpected) > 10 else ''}")
    return out


def from_state(hf, state, num_labels=None, **overrides):
    """A Mamba built from config.json's dict and the checkpoint's tensors; every body tensor must be there, with
    its shape. A classification head is new (model.new_head lists it): Mamba checkpoints carry none."""
    model = Mamba(config_from_hf(hf, num_labels, **overrides))
    ours, state = model.state_dict(), convert_state_dict(state)
    new = [k for k in ours if k.startswith("head.")]
    missing = [k for k in ours if k not in state and k not in new]
    if missing:
        raise ModelError(f"tensors missing from the mamba checkpoint: {', '.join(missing[:10])}"
                         f"{' ...' if len(missing) > 10 else ''}")
    for k, t in state.items():
        if k not in ours or t.shape != ours[k].shape:
            raise ModelError(f"checkpoint tensor {k} {tuple(t.shape)} does not fit this model "
                             f"({tuple(ours[k].shape) if k in ours else 'no such tensor'}): config.json and the "
                             "weights disagree")
    model.load_state_dict({**ours, **state})
    model.new_head = new
    return model.eval()
