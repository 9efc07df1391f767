"""
One hand-written transformer for the five families SSMLoRA is evaluated on:

  BERT / RoBERTa  encoder, bidirectional attention, post-LayerNorm, erf GELU, learned positions
  GPT-2           decoder, causal attention, pre-LayerNorm, tanh GELU ("gelu_new"), learned positions
  LLaMA           decoder, causal attention, pre-RMSNorm, rotary positions, SwiGLU MLP, grouped-query
                  attention, no biases
  DeBERTa-v2/v3   encoder as BERT, but disentangled attention (He et al.): content and relative-position terms,
                  log-bucketed relative positions, no absolute position table (family "deberta-v2", config.json's
                  model_type)

Every attention block has *separate* query, key, value and output projections (nn.Linear), so an adapter
can wrap `blocks[i].attn.query` or `.value` directly. GPT-2's fused Conv1D `c_attn` is split at load time;
Attention.fuse_qkv() joins the three again when one adapter must span them (GPT-2 as the paper adapted it).

convert_state_dict() maps an original Hugging Face checkpoint's tensor names onto ours; files/hub.py finds the
checkpoint, reads its files and calls it (from_pretrained). This file imports only the standard library and torch.
"""
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelError(ValueError):
    """Bad checkpoint, bad config or bad input: the message says what was wrong and how to fix it. A ValueError:
    every entry point prints it as one `error: ...` line."""


@dataclass
class Config:
    family: str = "roberta"      # "bert" | "roberta" (encoder, post-LN) | "gpt2" | "llama" (decoders, pre-norm)
    vocab_size: int = 50265
    n_positions: int = 514       # rows of the position table (RoBERTa's first two are never used); rotary: the
                                 # longest sequence the model was trained on (no table)
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int = 3072
    type_vocab_size: int = 1     # token-type rows: BERT 2, RoBERTa 1, GPT-2 0 (none)
    pad_token_id: int = 1
    ln_eps: float = 1e-5
    activation: str = "gelu"     # "gelu" (erf) | "gelu_tanh" (GPT-2's gelu_new) | "relu" | "silu" (LLaMA)
    dropout: float = 0.1         # embeddings and residual branches
    attn_dropout: float = 0.1    # attention probabilities
    head_dropout: float = 0.1    # inside the classification head
    head: str = "cls"            # "cls": sequence classification / regression, "choice": multiple choice,
                                 # "span": extractive QA (start and end logits per token), "lm": decoder LM, "none"
    num_labels: int = 2          # 1 means regression (STS-B)
    # what LLaMA changes; the defaults are BERT's, RoBERTa's and GPT-2's
    norm: str = "layernorm"      # "layernorm" | "rmsnorm"
    positions: str = "learned"   # "learned" (a table added to the embeddings) | "rotary" (q and k rotated) |
                                 # "relative" (DeBERTa: relative positions inside attention only, no table)
    mlp: str = "plain"           # "plain": fc_out(act(fc_in x)) | "gated": fc_out(act(fc_gate x) * fc_in x)
    n_kv_head: int = None        # key / value heads (grouped-query attention); None: n_head
    rope_theta: float = 10000.0  # rotary base
    bias: bool = True            # biases in the block linears (LLaMA has none)
    tied_lm_head: bool = True    # the "lm" head reuses the token embeddings (GPT-2) or has its own (LLaMA)
    # what DeBERTa-v2/v3 adds: disentangled attention over relative positions (positions "relative": no table)
    embedding_size: int = None   # token embeddings narrower than d_model, projected up (None: d_model)
    pos_att_type: str = ""       # the position terms besides content-to-content: "p2c|c2p", "c2p", "p2c"
    position_buckets: int = -1   # relative positions log-bucketed into 2 x this many (-1: exact)
    max_relative_positions: int = 512  # the farthest relative position (the bucketing's log range)
    share_att_key: bool = False  # positions projected by the query / key linears (else their own pos_query / pos_key)
    norm_rel_ebd: bool = False   # LayerNorm over the relative position embeddings ("layer_norm")

    @property
    def causal(self):
        return self.family in ("gpt2", "llama")

    @property
    def pre_ln(self):
        return self.family in ("gpt2", "llama")

    @property
    def rel_span(self):  # DeBERTa: relative positions run over [-span, span), one embedding row each
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    @property
    def kv_heads(self):
        return self.n_kv_head or self.n_head

    @property
    def max_tokens(self):  # RoBERTa numbers positions from pad_token_id + 1: its first rows are never used
        return self.n_positions - (self.pad_token_id + 1 if self.family == "roberta" else 0)


_ROBERTA = dict(family="roberta", vocab_size=50265, n_positions=514, type_vocab_size=1, pad_token_id=1,
                ln_eps=1e-5, activation="gelu")
_BERT = dict(family="bert", vocab_size=30522, n_positions=512, type_vocab_size=2, pad_token_id=0,
             ln_eps=1e-12, activation="gelu")
_GPT2 = dict(family="gpt2", vocab_size=50257, n_positions=1024, type_vocab_size=0, pad_token_id=50256,
             ln_eps=1e-5, activation="gelu_tanh", head_dropout=0.0)  # GPT-2 pads with <|endoftext|>
_LLAMA = dict(family="llama", vocab_size=32000, n_positions=4096, type_vocab_size=0, pad_token_id=0, ln_eps=1e-5,
              activation="silu", dropout=0.0, attn_dropout=0.0, head_dropout=0.0, norm="rmsnorm",
              positions="rotary", mlp="gated", bias=False, tied_lm_head=False)  # Llama-2's config.json
_DEBERTA3 = dict(family="deberta-v2", vocab_size=128100, n_positions=512, type_vocab_size=0, pad_token_id=0,
                 ln_eps=1e-7, activation="gelu", positions="relative", pos_att_type="p2c|c2p", position_buckets=256,
                 max_relative_positions=512, share_att_key=True, norm_rel_ebd=True)  # microsoft/deberta-v3-*
_BASE = dict(n_layer=12, n_head=12, d_model=768, d_ff=3072)
_LARGE = dict(n_layer=24, n_head=16, d_model=1024, d_ff=4096)

PRESETS = {
    "roberta-base": {**_ROBERTA, **_BASE},
    "roberta-large": {**_ROBERTA, **_LARGE},
    "bert-base-uncased": {**_BERT, **_BASE},
    "bert-large-uncased": {**_BERT, **_LARGE},
    "gpt2": {**_GPT2, **_BASE},
    "gpt2-medium": {**_GPT2, **_LARGE},
    "gpt2-large": {**_GPT2, "n_layer": 36, "n_head": 20, "d_model": 1280, "d_ff": 5120},
    "llama2-7b": {**_LLAMA, "n_layer": 32, "n_head": 32, "d_model": 4096, "d_ff": 11008},
    "llama2-13b": {**_LLAMA, "n_layer": 40, "n_head": 40, "d_model": 5120, "d_ff": 13824},
    "deberta-v3-base": {**_DEBERTA3, **_BASE},
    "deberta-v3-large": {**_DEBERTA3, **_LARGE},
}


FAMILIES = ("bert", "roberta", "gpt2", "llama", "deberta-v2")


def preset(name, **overrides):
    """Config of a preset by name, e.g. preset("roberta-base", num_labels=3)."""
    if name not in PRESETS:
        raise ModelError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return Config(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------------------
# the transformer

def norm(cfg):
    """LayerNorm, or LLaMA's RMSNorm: x / rms(x) * weight, no centring and no bias."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.ln_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)


class Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        e = cfg.embedding_size or cfg.d_model
        self.tok = nn.Embedding(cfg.vocab_size, e)
        self.pos = nn.Embedding(cfg.n_positions, e) if cfg.positions == "learned" else None
        self.typ = nn.Embedding(cfg.type_vocab_size, e) if cfg.type_vocab_size else None
        self.proj = nn.Linear(e, cfg.d_model, bias=False) if e != cfg.d_model else None  # DeBERTa's embed_proj
        self.ln = None if cfg.pre_ln else norm(cfg)  # post-LN embeds are normed
        self.drop = nn.Dropout(cfg.dropout)

    def position_ids(self, input_ids):
        if self.cfg.family == "roberta":
            # RoBERTa (fairseq) numbers real tokens from pad_token_id + 1 and gives padding pad_token_id
            real = input_ids.ne(self.cfg.pad_token_id).long()
            return torch.cumsum(real, dim=1) * real + self.cfg.pad_token_id
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)

    def forward(self, input_ids, token_type_ids=None):
        x = self.tok(input_ids)
        if self.pos is not None:  # LLaMA has no table: its positions are rotations inside attention
            x = x + self.pos(self.position_ids(input_ids))
        if self.typ is not None:
            x = x + self.typ(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
        if self.proj is not None:
            x = self.proj(x)
        if self.ln is not None:
            x = self.ln(x)
        return self.drop(x)


def rotary(T, head_dim, theta, device):
    """cos and sin (T, head_dim) of rotary position embeddings (Su et al.), laid out as Hugging Face's LLaMA:
    channel j and channel j + head_dim/2 form a pair rotated by the angle position * theta^(-2j/head_dim)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(T, device=device).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    """Rotate each (x_j, x_{j + d/2}) pair of x (..., T, d) by its angle: x cos + rotate_half(x) sin."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat([-x2, x1], dim=-1) * sin.to(x.dtype)


def relative_positions(T, cfg, device):
    """(T, T): the row of the relative position embeddings for query i and key j. delta = i - j, exact up to
    position_buckets / 2 and log-bucketed beyond, up to max_relative_positions (DeBERTaV3); shifted by the span."""
    i = torch.arange(T, device=device)
    delta = i[:, None] - i[None, :]
    if cfg.position_buckets > 0:
        mid = cfg.position_buckets // 2
        far = delta.abs().clamp(min=mid)  # only |delta| > mid is used: clamped, so that log() sees no 0
        log_range = torch.log(torch.tensor((cfg.max_relative_positions - 1) / mid))  # float32, as DeBERTa's
        log_pos = torch.ceil(torch.log(far / mid) / log_range * (mid - 1)) + mid
        delta = torch.where(delta.abs() <= mid, delta, (log_pos * delta.sign()).long())
    return (delta + cfg.rel_span).clamp(0, 2 * cfg.rel_span - 1)


def reached_rows(T, cfg):
    """[lo, hi): the rows of the relative embeddings that T tokens reach. Short sequences reach only |delta| < T
    (exact, unbucketed): projecting just those rows gives the same scores for less work (half, at 128 of 512)."""
    span = cfg.rel_span
    if cfg.position_buckets > 0 and T - 1 > cfg.position_buckets // 2:  # log buckets reach the far rows
        return 0, 2 * span
    return max(span - (T - 1), 0), min(span + T, 2 * span)


def project(linear, r):
    """A linear of the attention applied to the relative embeddings r. The one thing this file knows of adapters:
    an adapted linear may offer lora(r), its low-rank update without the Time Module's state, which runs over tokens
    (r holds none). ssmlora.LowRankLinear.lora is it."""
    return getattr(linear, "lora", linear)(r)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.head_dim = cfg.d_model, cfg.d_model // cfg.n_head
        kv = cfg.kv_heads * self.head_dim  # grouped-query attention: fewer key / value heads, each shared
        self.query, self.out = nn.Linear(d, d, bias=cfg.bias), nn.Linear(d, d, bias=cfg.bias)
        self.key, self.value = nn.Linear(d, kv, bias=cfg.bias), nn.Linear(d, kv, bias=cfg.bias)
        self.qkv = None  # query, key and value as one linear, after fuse_qkv()
        self.sizes = (d, kv, kv)
        self.p_drop, self.causal = cfg.attn_dropout, cfg.causal
        self.scale, self.terms = None, ()  # SDPA's 1 / sqrt(head_dim)
        if cfg.family == "deberta-v2":
            self.terms = tuple(t for t in ("c2p", "p2c") if t in cfg.pos_att_type.split("|"))
            self.scale = (self.head_dim * (1 + len(self.terms))) ** -0.5  # 1/sqrt(3d), both terms (DeBERTa's eq. 4)
            self.pos_drop = nn.Dropout(cfg.dropout)
            own = not cfg.share_att_key  # else the positions go through query and key themselves
            self.pos_key = nn.Linear(d, d) if own and "c2p" in self.terms else None
            self.pos_query = nn.Linear(d, d) if own and "p2c" in self.terms else None

    @torch.no_grad()
    def fuse_qkv(self):
        """Join query, key and value into one linear d -> d + 2 kv, GPT-2's c_attn exactly (same weights), so one
        adapter can span all three (the paper's GPT-2 setting). Separate projections are the default: every other
        target wraps one of them, and every family's checkpoint maps onto them."""
        if self.terms:
            raise ModelError("target qkv: DeBERTa projects its relative positions with the query and key linears "
                             "apart; adapt query,key,value instead")
        parts = (self.query, self.key, self.value)
        fused = nn.Linear(self.sizes[0], sum(self.sizes), bias=self.query.bias is not None, device="meta")
        fused.weight = nn.Parameter(torch.cat([p.weight for p in parts]), requires_grad=self.query.weight.requires_grad)
        if fused.bias is not None:
            fused.bias = nn.Parameter(torch.cat([p.bias for p in parts]), requires_grad=self.query.bias.requires_grad)
        self.qkv, self.query, self.key, self.value = fused.train(self.query.training), None, None, None

    def position_scores(self, q, k, r, idx):
        """DeBERTa's content-to-position plus position-to-content scores (the DeBERTa paper, He et al. 2021, eq. 4),
        scaled as the content term. r: the relative position embeddings (2 span, d); idx (T, T): the row of r for
        each (i, j)."""
        B, H, T, hd = q.shape
        r = self.pos_drop(r)
        heads = lambda t: t.view(-1, H, hd).transpose(0, 1)  # (2 span, d) -> (heads, 2 span, head_dim)
        idx = idx.expand(B, H, T, T)
        s = 0
        if "c2p" in self.terms:  # c2p: query i . position key of delta(i, j)
            k_r = heads(project(self.key if self.pos_key is None else self.pos_key, r))
            s = s + torch.gather(q @ k_r.transpose(-1, -2), -1, idx)
        if "p2c" in self.terms:  # p2c: key j . position query of delta(i, j), gathered key-major then transposed
            q_r = heads(project(self.query if self.pos_query is None else self.pos_query, r))
            s = s + torch.gather(k @ q_r.transpose(-1, -2), -1, idx.transpose(-1, -2)).transpose(-1, -2)
        return s * self.scale

    def forward(self, x, mask, rope=None, rel=None):
        B, T, _ = x.shape
        if self.qkv is not None:
            q, k, v = self.qkv(x).split(self.sizes, dim=-1)
        else:
            q, k, v = self.query(x), self.key(x), self.value(x)
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, head_dim)
        if rope is not None:  # LLaMA: positions enter here, as rotations of q and k
            q, k = rotate(q, *rope), rotate(k, *rope)
        if rel is not None:  # DeBERTa: the position terms, added to the content term q k^T as a float mask
            bias = self.position_scores(q, k, *rel)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        # mask is None when nothing is padded: SDPA can then use its fused causal / flash kernels
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p_drop if self.training else 0.0,
                                           is_causal=self.causal and mask is None, scale=self.scale,
                                           enable_gqa=k.shape[1] != q.shape[1])
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)   # LLaMA's up_proj
        self.fc_gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias) if cfg.mlp == "gated" else None  # gate_proj
        self.fc_out = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)  # LLaMA's down_proj
        self.act = {"gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"), "relu": nn.ReLU(),
                    "silu": nn.SiLU()}[cfg.activation]

    def forward(self, x):
        if self.fc_gate is not None:  # SwiGLU (LLaMA): the activated gate scales the up projection
            return self.fc_out(self.act(self.fc_gate(x)) * self.fc_in(x))
        return self.fc_out(self.act(self.fc_in(x)))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn, self.mlp = Attention(cfg), MLP(cfg)
        self.ln_attn, self.ln_mlp = norm(cfg), norm(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.pre_ln = cfg.pre_ln

    def forward(self, x, mask, rope=None, rel=None):
        if self.pre_ln:  # GPT-2, LLaMA: normalise the input of each branch
            x = x + self.drop(self.attn(self.ln_attn(x), mask, rope))
            return x + self.drop(self.mlp(self.ln_mlp(x)))
        x = self.ln_attn(x + self.drop(self.attn(x, mask, rel=rel)))  # encoders: normalise after the residual
        return self.ln_mlp(x + self.drop(self.mlp(x)))


class Head(nn.Module):
    """Sequence classification (num_labels > 1), regression (num_labels == 1), multiple choice (one score per
    (context, choice) row), each family its own way, as transformers' *ForSequenceClassification and
    *ForMultipleChoice; or extractive QA, the same for every family (*ForQuestionAnswering)."""

    def __init__(self, cfg):
        super().__init__()
        d, n = cfg.d_model, 1 if cfg.head == "choice" else cfg.num_labels
        self.kind = {"bert": "pooler", "roberta": "dense" if cfg.head == "cls" else "pooler",
                     "deberta-v2": "pooler"}.get(cfg.family, "last")
        self.kind = "span" if cfg.head == "span" else self.kind
        self.drop = nn.Dropout(cfg.head_dropout)
        self.act = nn.GELU() if cfg.family == "deberta-v2" else nn.Tanh()  # DeBERTa's ContextPooler: GELU
        if self.kind == "span":        # every token: start and end logits, no dropout (as transformers)
            self.qa_outputs = nn.Linear(d, 2)
        elif self.kind == "dense":     # RoBERTa classification: first token -> dense -> tanh -> out_proj
            self.dense, self.out_proj = nn.Linear(d, d), nn.Linear(d, n)
        elif self.kind == "pooler":    # BERT, RoBERTa choice, DeBERTa: pooler (dense + act on [CLS]) -> classifier
            self.pooler, self.classifier = nn.Linear(d, d), nn.Linear(d, n)
        else:                          # GPT-2, LLaMA: score the last real token (it has seen the whole text)
            self.score = nn.Linear(d, n, bias=False)

    @property
    def output(self):
        """Name of the linear that gives the logits (the one a "head" adapter wraps)."""
        return {"dense": "out_proj", "pooler": "classifier", "span": "qa_outputs"}.get(self.kind, "score")

    def forward(self, x, attention_mask):
        if self.kind == "span":
            return self.qa_outputs(x)
        if self.kind == "dense":
            return self.out_proj(self.drop(torch.tanh(self.dense(self.drop(x[:, 0])))))
        if self.kind == "pooler":
            return self.classifier(self.drop(self.act(self.pooler(x[:, 0]))))
        if attention_mask is None:  # nothing padded: the last position
            last = torch.full((x.shape[0],), x.shape[1] - 1, device=x.device)
        else:  # index of the last attended position, for right or left padding alike
            last = (attention_mask.long() * torch.arange(x.shape[1], device=x.device)).argmax(-1)
        return self.score(x[torch.arange(x.shape[0], device=x.device), last])


class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.family not in FAMILIES:
            raise ModelError(f"unknown family {cfg.family!r}: expected one of {', '.join(FAMILIES)}")
        if cfg.d_model % cfg.n_head or cfg.n_head % cfg.kv_heads:
            raise ModelError(f"d_model {cfg.d_model} must be divisible by n_head {cfg.n_head}, and n_head by "
                             f"n_kv_head {cfg.kv_heads}")
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = norm(cfg) if cfg.pre_ln else None
        if cfg.family == "deberta-v2":  # relative position embeddings, shared by every layer, and their norm
            self.rel = nn.Embedding(2 * cfg.rel_span, cfg.d_model)
            self.ln_rel = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps) if cfg.norm_rel_ebd else None
        self.head = Head(cfg) if cfg.head in ("cls", "choice", "span") else None
        # GPT-2's "lm" head is tied to embed.tok; LLaMA's has its own weights
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False) \
            if cfg.head == "lm" and not cfg.tied_lm_head else None
        self.apply(_init_weights)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None):
        """Last hidden states (B, T, d_model), after the decoders' final norm. Pass attention_mask=None when
        nothing is padded (data.batches does): SDPA then runs its fused causal / flash kernels."""
        T = input_ids.shape[1]
        mask = None
        if attention_mask is not None:  # (B, 1, 1, T), True = may attend: padded keys are hidden
            mask = attention_mask.bool()[:, None, None, :]
            if self.cfg.causal:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
        rope = rotary(T, self.cfg.d_model // self.cfg.n_head, self.cfg.rope_theta, input_ids.device) \
            if self.cfg.positions == "rotary" else None
        rel = None
        if self.cfg.family == "deberta-v2" and self.blocks[0].attn.terms:  # (embeddings, row of each (i, j))
            lo, hi = reached_rows(T, self.cfg)
            r = self.rel.weight[lo:hi]
            rel = r if self.ln_rel is None else self.ln_rel(r), relative_positions(T, self.cfg, input_ids.device) - lo
        x = self.embed(input_ids, token_type_ids)
        for block in self.blocks:
            x = block(x, mask, rope, rel)
        return self.ln_f(x) if self.ln_f is not None else x

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, choices=None):
        """Returns (logits, loss); loss is None without labels. With head "none", logits are hidden states.
        Multiple choice: the rows are every question's (context, choice) pairs, and choices (questions, most choices)
        holds the row of each choice, -1 where a question has fewer; logits come out in that shape (-inf where -1),
        and labels is a bool mask of the right choices. Span: logits (B, T, 2), start and end; labels (B, 2) their
        positions."""
        x = self.encode(input_ids, attention_mask, token_type_ids)
        if self.cfg.head == "none":
            return x, None
        if self.cfg.head == "lm":
            logits = F.linear(x, self.embed.tok.weight if self.lm_head is None else self.lm_head.weight)
            loss = None if labels is None else F.cross_entropy(  # predict token t+1 from tokens <= t
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
            return logits, loss
        logits = self.head(x, attention_mask)
        if self.cfg.head == "span":  # the mean of the start and end cross-entropies; a position past T is ignored
            if labels is None:
                return logits, None
            T = logits.shape[1]
            pos = labels.clamp(0, T)
            loss = [F.cross_entropy(logits[..., i].float(), pos[:, i], ignore_index=T) for i in (0, 1)]
            return logits, (loss[0] + loss[1]) / 2
        if self.cfg.head == "choice":  # one score per row, gathered into one softmax per question
            logits = logits[:, 0][choices.clamp(min=0)].masked_fill(choices < 0, float("-inf"))
            if labels is None:
                return logits, None
            z = logits.float()  # -log of the probability of the right choices (several only in ReCoRD)
            return logits, (z.logsumexp(-1) - z.masked_fill(~labels, float("-inf")).logsumexp(-1)).mean()
        if labels is None:
            return logits, None
        if self.cfg.num_labels == 1:
            return logits, F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return logits, F.cross_entropy(logits.float(), labels)


def _init_weights(module):
    # BERT / GPT-2 / LLaMA initialisation: N(0, 0.02) weights, zero biases, unit norms
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        nn.init.ones_(module.weight)
    if isinstance(module, nn.LayerNorm):
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------------------
# the names of original Hugging Face checkpoints (files/hub.py finds the files, reads them and loads them)

# Hugging Face name -> our name. Applied with re.fullmatch after the family prefix is stripped.
_SPAN = [(r"qa_outputs\.(weight|bias)", r"head.qa_outputs.\1")]  # *ForQuestionAnswering, every family
_ENCODER_NAMES = _SPAN + [
    (r"embeddings\.word_embeddings\.(\w+)", r"embed.tok.\1"),
    (r"embeddings\.position_embeddings\.(\w+)", r"embed.pos.\1"),
    (r"embeddings\.token_type_embeddings\.(\w+)", r"embed.typ.\1"),
    (r"embeddings\.LayerNorm\.(\w+)", r"embed.ln.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(\w+)", r"blocks.\1.attn.\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(\w+)", r"blocks.\1.attn.out.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(\w+)", r"blocks.\1.ln_attn.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(\w+)", r"blocks.\1.mlp.fc_in.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(\w+)", r"blocks.\1.mlp.fc_out.\2"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(\w+)", r"blocks.\1.ln_mlp.\2"),
]
_NAMES = {
    "bert": _ENCODER_NAMES + [(r"pooler\.dense\.(\w+)", r"head.pooler.\1"),
                              (r"classifier\.(weight|bias)", r"head.classifier.\1")],
    "roberta": _ENCODER_NAMES + [(r"classifier\.dense\.(\w+)", r"head.dense.\1"),
                                 (r"classifier\.out_proj\.(\w+)", r"head.out_proj.\1"),
                                 (r"pooler\.dense\.(\w+)", r"head.pooler.\1"),  # RobertaForMultipleChoice's
                                 (r"classifier\.(weight|bias)", r"head.classifier.\1")],
    "gpt2": _SPAN + [
        (r"wte\.weight", "embed.tok.weight"), (r"wpe\.weight", "embed.pos.weight"),
        (r"h\.(\d+)\.ln_1\.(\w+)", r"blocks.\1.ln_attn.\2"), (r"h\.(\d+)\.ln_2\.(\w+)", r"blocks.\1.ln_mlp.\2"),
        (r"h\.(\d+)\.attn\.c_proj\.(\w+)", r"blocks.\1.attn.out.\2"),
        (r"h\.(\d+)\.mlp\.c_fc\.(\w+)", r"blocks.\1.mlp.fc_in.\2"),
        (r"h\.(\d+)\.mlp\.c_proj\.(\w+)", r"blocks.\1.mlp.fc_out.\2"),
        (r"ln_f\.(\w+)", r"ln_f.\1"), (r"score\.weight", "head.score.weight"),
    ],
    "deberta-v2": _ENCODER_NAMES + [  # DeBERTa's own names; the encoder's LayerNorm is that of rel_embeddings
        (r"embeddings\.embed_proj\.weight", "embed.proj.weight"),
        (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)_proj\.(\w+)", r"blocks.\1.attn.\2.\3"),
        (r"encoder\.layer\.(\d+)\.attention\.self\.pos_(query|key)_proj\.(\w+)", r"blocks.\1.attn.pos_\2.\3"),
        (r"encoder\.rel_embeddings\.weight", "rel.weight"), (r"encoder\.LayerNorm\.(\w+)", r"ln_rel.\1"),
        (r"pooler\.dense\.(\w+)", r"head.pooler.\1"),  # ContextPooler
        (r"classifier\.(weight|bias)", r"head.classifier.\1")],
    "llama": _SPAN + [
        (r"embed_tokens\.weight", "embed.tok.weight"),
        (r"layers\.(\d+)\.self_attn\.q_proj\.(\w+)", r"blocks.\1.attn.query.\2"),
        (r"layers\.(\d+)\.self_attn\.k_proj\.(\w+)", r"blocks.\1.attn.key.\2"),
        (r"layers\.(\d+)\.self_attn\.v_proj\.(\w+)", r"blocks.\1.attn.value.\2"),
        (r"layers\.(\d+)\.self_attn\.o_proj\.(\w+)", r"blocks.\1.attn.out.\2"),
        (r"layers\.(\d+)\.mlp\.gate_proj\.(\w+)", r"blocks.\1.mlp.fc_gate.\2"),
        (r"layers\.(\d+)\.mlp\.up_proj\.(\w+)", r"blocks.\1.mlp.fc_in.\2"),
        (r"layers\.(\d+)\.mlp\.down_proj\.(\w+)", r"blocks.\1.mlp.fc_out.\2"),
        (r"layers\.(\d+)\.input_layernorm\.weight", r"blocks.\1.ln_attn.weight"),
        (r"layers\.(\d+)\.post_attention_layernorm\.weight", r"blocks.\1.ln_mlp.weight"),
        (r"norm\.weight", "ln_f.weight"), (r"score\.weight", "head.score.weight"),
        (r"lm_head\.weight", "lm_head.weight"),
    ],
}
# Tensors that real checkpoints carry and this model does not use, with the reason.
_IGNORED = {
    "bert": [r"embeddings\.position_ids",            # a buffer (arange), not a weight
             r"cls\..*"],                            # pre-training heads (masked LM, next sentence)
    "roberta": [r"embeddings\.position_ids", r"lm_head\..*"],  # masked-LM head of the pre-trained checkpoint
    "gpt2": [r"h\.\d+\.attn\.(bias|masked_bias)",    # causal-mask buffers of old checkpoints
             r"lm_head\.weight"],                    # tied to wte
    "llama": [r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq"],  # a buffer of old checkpoints, computed here
    "deberta-v2": [r"embeddings\.position_ids",     # a buffer (arange), not a weight
                   r"lm_predictions\..*",          # masked-LM head of pre-training (DebertaV2ForMaskedLM)
                   r"cls\..*",                     # the same, in its legacy layout
                   r"mask_predictions\..*"],       # DeBERTaV3's replaced-token-detection head (ELECTRA-style)
}
_PREFIXES = {"bert": ("bert.",), "roberta": ("roberta.",), "gpt2": ("transformer.",),
             "llama": ("model.", "transformer."),  # LlamaForQuestionAnswering keeps GPT-2's "transformer."
             "deberta-v2": ("deberta.",)}


def convert_state_dict(state, family):
    """Rename a Hugging Face state dict to ours; split and transpose GPT-2's Conv1D weights."""
    out, unexpected = {}, []
    for name, tensor in state.items():
        prefix = next((p for p in _PREFIXES[family] if name.startswith(p)), "")
        name = name[len(prefix):]
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))
        if any(re.fullmatch(p, name) for p in _IGNORED[family]):
            continue
        m = re.fullmatch(r"h\.(\d+)\.attn\.c_attn\.(weight|bias)", name)
        if family == "gpt2" and m:  # fused (d, 3d) Conv1D -> separate q, k, v Linear weights (out, in)
            parts = tensor.chunk(3, dim=-1)
            for proj, part in zip(("query", "key", "value"), parts):
                out[f"blocks.{m[1]}.attn.{proj}.{m[2]}"] = part.t().contiguous() if m[2] == "weight" else part
            continue
        for pattern, repl in _NAMES[family]:
            if re.fullmatch(pattern, name):
                ours = re.sub(pattern, repl, name)
                conv1d = family == "gpt2" and re.fullmatch(r"blocks\.\d+\.(attn\.out|mlp\.fc_in|mlp\.fc_out)\.weight", ours)
                out[ours] = tensor.t().contiguous() if conv1d else tensor  # Conv1D stores (in, out)
                break
        else:
            unexpected.append(name)
    if unexpected:
        raise ModelError(f"unexpected tensors in the {family} checkpoint: {', '.join(unexpected[:10])}"
                         f"{' ...' if len(unexpected) > 10 else ''}")
    return out


def head_labels(state):
    """Number of labels of the checkpoint's classification head, or None if it has none."""
    return next((t.shape[0] for k, t in state.items() if re.fullmatch(r"head\.(out_proj|classifier|score)\.weight", k)),
                None)


def check_inputs(cfg, input_ids, attention_mask=None):
    """What the forward pass takes for granted, checked once before it (on CPU tensors it costs nothing): a
    (batch, seq) batch of known token ids that fits the position table."""
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ModelError(f"input_ids must be a non-empty (batch, seq_len) tensor, got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ModelError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids shape "
                         f"{tuple(input_ids.shape)}")
    if input_ids.shape[1] > cfg.max_tokens:
        raise ModelError(f"sequence of {input_ids.shape[1]} tokens is longer than this model's position table "
                         f"allows ({cfg.max_tokens}); truncate it (--max-len)")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= cfg.vocab_size:
        raise ModelError(f"token ids must lie in [0, {cfg.vocab_size}) for this vocabulary, got min {lo} max {hi}: "
                         f"wrong tokenizer?")
