"""
MixLoRA (Li et al. 2024): a mixture of LoRA experts on each frozen feed-forward block, chosen per token by a top-k
router, plus plain LoRA on the attention linears.

  router        p = softmax(x W_r) over the E experts; the k largest, renormalised to sum to 1, weight the outputs
  expert e      the frozen FFN with its own LoRA pair on each FFN linear (fc_in, fc_out; LLaMA's gate too):
                FFN_e(x) = fc_out_e(act(fc_in_e(x))),  fc_e(x) = x W0 + b + s * x W_a[e] W_b[e]  (eq. 1 per expert)
  output        y = sum over the chosen e of weight_e * FFN_e(x); with every W_b = 0 each FFN_e is the FFN, so y is
                the FFN's output: the adapted model starts as the base
  aux loss      E * sum_e f_e * P_e: f_e the fraction of tokens routed to e (in any of the k slots), P_e the mean
                router probability of e (Switch Transformer's, in the form MixLoRA takes from Mixtral: at perfect
                balance it is k), times AUX_COEF, added to the task loss (aux_loss(model)). As MixLoRA computes it:
                once, over the tokens of every layer together (its router logits of all layers concatenated), padding
                left out of both f and P; not once per layer, which on 12 layers would weigh it about 12 times

Every token is routed, padding included (MixLoRA routes every position its model sees); only the loss leaves padding
out. The experts' LoRA uses the method's rank, alpha and dropout; the number of experts and k are E and K below (see
docs/parameter-counts.md for the 5.7M).
"""
import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import ModelError
from ssmlora import add_adapters

# 7 experts, the top 2 per token. MixLoRA's own default is 8; 7 with LoRA on query, key and value (r = 8) is what
# gives Table 1's 5.7M on RoBERTa-base, counted as the paper counts LoRA's 1.3M (no head): 5,667,840
EXPERTS, TOP_K = 7, 2
AUX_COEF = 0.01            # MixLoRA's router_aux_loss_coef
ROUTER_STD = 0.02          # MixLoRA's router_init_range
ATTENTION = ("query", "key", "value", "qkv", "attn_out")  # the targets plain LoRA may take; the FFN has experts


class Experts(nn.Module):
    """E LoRA pairs for one frozen linear, stacked: W_a (E, d_in, r), W_b (E, r, d_out)."""

    def __init__(self, linear, n, rank, alpha):
        super().__init__()
        kw = dict(device=linear.weight.device, dtype=linear.weight.dtype)
        self.W_a = nn.Parameter(torch.empty(n, linear.in_features, rank, **kw))
        self.W_b = nn.Parameter(torch.zeros(n, rank, linear.out_features, **kw))  # zero: each expert is the FFN
        self.scaling = alpha / rank
        with torch.no_grad():  # LoRA's Kaiming-uniform init, one draw per expert (decision 5)
            for e in range(n):
                nn.init.kaiming_uniform_(self.W_a[e].T, a=math.sqrt(5))

    def forward(self, e, x):
        return (x @ self.W_a[e] * self.scaling) @ self.W_b[e]  # expert e's s x W_a W_b (eq. 1)


class MixLoRAMLP(nn.Module):
    """model.MLP with E LoRA experts routed top-k per token. It adopts the MLP's frozen linears, so their names
    (mlp.fc_in.weight ...) stay; the experts are mlp.fc_in_experts.W_a ..., the router mlp.W_r."""

    def __init__(self, mlp, n, k, rank, alpha, dropout):
        super().__init__()
        if not 1 <= k <= n:
            raise ModelError(f"MixLoRA: top-k must lie in [1, {n}] for {n} experts, got {k}")
        self.fc_in, self.fc_gate, self.fc_out, self.act = mlp.fc_in, mlp.fc_gate, mlp.fc_out, mlp.act
        self.n, self.k = n, k
        self.fc_in_experts = Experts(self.fc_in, n, rank, alpha)
        self.fc_gate_experts = Experts(self.fc_gate, n, rank, alpha) if self.fc_gate is not None else None
        self.fc_out_experts = Experts(self.fc_out, n, rank, alpha)
        w = self.fc_in.weight
        self.W_r = nn.Parameter(torch.empty(self.fc_in.in_features, n, device=w.device, dtype=w.dtype))
        nn.init.normal_(self.W_r, std=ROUTER_STD)
        self.drop = nn.Dropout(dropout)  # on each expert's LoRA input, as LoRALinear (decision 7)
        self.mask = None  # the attention mask (B, T) of the model's forward pass, set around it (add_mixlora)
        self.routed = None  # the last training forward's (probabilities, chosen) of the real tokens, for aux_loss

    def route(self, x):
        """(weights (N, k), experts (N, k), probabilities (N, E)) for the tokens x (N, d)."""
        p = (x @ self.W_r).float().softmax(-1)
        weights, chosen = p.topk(self.k, dim=-1)
        return weights / weights.sum(-1, keepdim=True), chosen, p

    def expert(self, e, x, base_in, base_gate):
        """FFN_e on the tokens x, given the frozen fc_in (and gate) outputs for them."""
        h = base_in + self.fc_in_experts(e, self.drop(x))
        if self.fc_gate is not None:  # SwiGLU: the gate has its experts too
            h = self.act(base_gate + self.fc_gate_experts(e, self.drop(x))) * h
        else:
            h = self.act(h)
        return self.fc_out(h) + self.fc_out_experts(e, self.drop(h))

    def forward(self, x):
        shape, x = x.shape, x.reshape(-1, x.shape[-1])
        weights, chosen, p = self.route(x)
        if self.training:  # for the load balance, over the real tokens only (MixLoRA masks padding out)
            real = self.mask is not None and tuple(self.mask.shape) == tuple(shape[:-1])
            keep = self.mask.reshape(-1).bool() if real else slice(None)
            self.routed = p[keep], chosen[keep]
        base_in = self.fc_in(x)  # the frozen parts once for every token; each expert adds its own LoRA
        base_gate = self.fc_gate(x) if self.fc_gate is not None else None
        y = None
        for e in range(self.n):  # a loop over the few experts; the tokens of each are gathered at once
            rows, slot = torch.where(chosen == e)
            out = self.expert(e, x[rows], base_in[rows], None if base_gate is None else base_gate[rows])
            out = out * weights[rows, slot, None].to(out.dtype)
            y = torch.zeros(x.shape[0], out.shape[-1], dtype=out.dtype, device=x.device) if y is None else y
            y = y.index_add(0, rows, out)
        return y.reshape(*shape[:-1], y.shape[-1])


def add_mixlora(model, adapters, experts=EXPERTS, top_k=TOP_K):
    """MixLoRA: LoRA on the attention targets (dense, as --method lora), experts routed on every block's FFN."""
    if adapters.method != "mixlora":
        raise ValueError(f"add_mixlora adds mixlora, not {adapters.method}")
    ffn = [t for t in adapters.targets if t not in ATTENTION]
    if ffn:
        raise ModelError(f"mixlora: the FFN carries the experts; --targets names the attention linears only "
                         f"({', '.join(ATTENTION)}), not {', '.join(ffn)}")
    add_adapters(model, replace(adapters, method="lora"))
    for block in model.blocks:
        block.mlp = MixLoRAMLP(block.mlp, experts, top_k, adapters.rank, adapters.alpha, adapters.dropout).train(
            block.mlp.training)
        for name, p in block.mlp.named_parameters():
            p.requires_grad_(name.endswith((".W_a", ".W_b")) or name == "W_r")
    # the FFN never sees the attention mask: hand it to the routers for the length of the model's forward pass
    mlps = [block.mlp for block in model.blocks]

    def lend_mask(model, args, kwargs):
        for m in mlps:
            m.mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")

    def take_mask_back(model, args, output):
        for m in mlps:
            m.mask = None
    model.register_forward_pre_hook(lend_mask, with_kwargs=True)
    model.register_forward_hook(take_mask_back)
    model.adapters = adapters
    return model


def aux_loss(model, coef=AUX_COEF):
    """coef times MixLoRA's load-balancing loss of the last training forward pass, E * sum_e f_e P_e computed once
    over the real tokens of every MixLoRA block together, as MixLoRA's own code does (its router logits of all
    layers concatenated, padding masked); 0 without MixLoRA blocks (or in eval). The training loss adds it: loss =
    task loss + aux_loss(model)."""
    if getattr(getattr(model, "adapters", None), "method", None) != "mixlora":  # every step: no module walk for others
        return 0.0
    routed = [m.routed for m in model.modules() if isinstance(m, MixLoRAMLP) and m.routed is not None and m.training]
    if not routed or not sum(len(p) for p, _ in routed):
        return 0.0
    p, chosen = torch.cat([p for p, _ in routed]), torch.cat([c for _, c in routed])
    n = p.shape[-1]
    f = F.one_hot(chosen, n).sum(1).float().mean(0)  # fraction of the tokens sent to each expert, in any slot
    return coef * n * (f * p.mean(0)).sum()
