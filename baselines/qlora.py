"""
QLoRA (Dettmers et al. 2023), from scratch: the frozen linears of the blocks stored in 4-bit NormalFloat, LoRA on top.

  NF4            16 code values: quantiles of N(0, 1) scaled to [-1, 1], with an exact 0 (paper §3, Appendix E)
  blockwise      each block of 64 consecutive weights (row-major, nn.Linear's (out, in) layout) is divided by its
                 absmax c and each value replaced by the index of the nearest code value; two indices per byte
  double quant   the absmax constants c (one per 64 weights) are quantized once more: their mean is subtracted
                 (the offset), then blocks of 256 constants are stored as 8-bit codes with one float32 scale each.
                 Our 8-bit code is symmetric linear int8 (round(c / scale * 127)); bitsandbytes uses its dynamic
                 8-bit map. tests/test_baselines.py measures the difference.
  forward        W0 is dequantized to the compute dtype, then y = x W0 + s * x W_a W_b exactly as LoRALinear (eq. 1);
                 the backward pass dequantizes W0 again (as bitsandbytes' MatMul4Bit), so autograd keeps the 4-bit
                 weight, not a full-precision copy of it, for the backward: that is QLoRA's training memory saving

One call: add_qlora(model, Adapters(method="qlora", rank=8, targets=...)).
"""
import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import ModelError
from ssmlora import DEFAULT_TARGETS, TARGETS, LoRALinear, add_adapters

BLOCK, BLOCK2 = 64, 256  # weights per absmax constant; constants per 8-bit scale (double quantization)
# The 16 NF4 values as bitsandbytes and the paper's code have them (tests derive them from the normal quantiles)
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)


def nf4_code(device=None):
    return torch.tensor(NF4, dtype=torch.float32, device=device)


def compute_dtype(x):
    """The dtype x's matrix products run in: autocast's when it is on, else x's own."""
    on = torch.is_autocast_enabled(x.device.type)
    return torch.get_autocast_dtype(x.device.type) if on else x.dtype


class NF4Matmul(torch.autograd.Function):
    """x W0^T + bias, W0 dequantized in forward and again in backward. Plain F.linear over the dequantized W0 would
    have autograd save that full-precision matrix for the backward pass: all of the base's weights, per step."""

    @staticmethod
    def forward(ctx, x, nf4, bias, dtype):
        ctx.nf4, ctx.dtype = nf4, dtype
        return F.linear(x.to(dtype), nf4(dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad):  # the gradient of x only: W0 and its bias are frozen
        return grad.to(ctx.dtype) @ ctx.nf4(ctx.dtype), None, None, None


def quantize_blocks(w, block=BLOCK):
    """(codes uint8 of 0..15 per weight, absmax per block) of a flat float tensor whose length divides by block."""
    x = w.float().reshape(-1, block)
    absmax = x.abs().amax(-1)
    scaled = x / absmax.clamp(min=torch.finfo(torch.float32).tiny)[:, None]  # an all-zero block stays zero
    code = nf4_code(w.device)
    mids = (code[1:] + code[:-1]) / 2  # nearest code value: the index of the interval between midpoints
    return torch.bucketize(scaled, mids).to(torch.uint8).reshape(-1), absmax


def pack(codes):
    """Two 4-bit codes per byte, the first in the high nibble (as bitsandbytes)."""
    return (codes[0::2] << 4) | codes[1::2]


def unpack(packed):
    return torch.stack([packed >> 4, packed & 15], dim=-1).reshape(-1)


def quantize_constants(c, block=BLOCK2):
    """Double quantization: (int8 codes, float32 scale per block of `block`, offset) of the absmax constants."""
    offset = c.mean()
    n = math.ceil(c.numel() / block) * block
    x = F.pad(c - offset, (0, n - c.numel())).reshape(-1, block)
    scale = x.abs().amax(-1).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(x / scale[:, None] * 127).to(torch.int8).reshape(-1)[:c.numel()], scale, offset


def dequantize_constants(q, scale, offset, block=BLOCK2):
    n = math.ceil(q.numel() / block) * block
    x = F.pad(q.float(), (0, n - q.numel())).reshape(-1, block) * (scale[:, None] / 127)
    return x.reshape(-1)[:q.numel()] + offset


class NF4Weight(nn.Module):
    """A frozen weight matrix in NF4 with double-quantized constants, held as buffers (nothing to train).
    Calling it returns the dequantized matrix in the asked dtype."""

    def __init__(self, weight, double_quant=True):
        super().__init__()
        self.shape, self.numel, self.double_quant = tuple(weight.shape), weight.numel(), double_quant
        n = math.ceil(self.numel / BLOCK) * BLOCK  # a last partial block is padded with zeros
        if weight.is_meta:  # a dry run: the buffers' shapes, nothing computed
            self.register_buffer("code", torch.empty(len(NF4), device="meta"), persistent=False)
            self.register_buffer("packed", torch.empty(n // 2, dtype=torch.uint8, device="meta"))
            self.register_buffer("absmax_q", torch.empty(n // BLOCK, dtype=torch.int8, device="meta"))
            self.register_buffer("absmax_scale", torch.empty(math.ceil(n / BLOCK / BLOCK2), device="meta"))
            self.register_buffer("absmax_offset", torch.empty((), device="meta"))
            return
        self.register_buffer("code", nf4_code(weight.device), persistent=False)  # once, where the weight is
        codes, absmax = quantize_blocks(F.pad(weight.detach().reshape(-1), (0, n - self.numel)))
        self.register_buffer("packed", pack(codes))
        if double_quant:
            q, scale, offset = quantize_constants(absmax)
            self.register_buffer("absmax_q", q)
            self.register_buffer("absmax_scale", scale)
            self.register_buffer("absmax_offset", offset)
        else:
            self.register_buffer("absmax", absmax)

    def absmax_constants(self):
        if not self.double_quant:
            return self.absmax
        return dequantize_constants(self.absmax_q, self.absmax_scale, self.absmax_offset)

    def forward(self, dtype=torch.float32):
        w = self.code[unpack(self.packed).long()].reshape(-1, BLOCK) * self.absmax_constants()[:, None]
        return w.reshape(-1)[:self.numel].reshape(self.shape).to(dtype)

    def nbytes(self):  # what is stored: the code table's 64 bytes are shared knowledge, not the weight's
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers() if name != "code")

    def extra_repr(self):
        return f"shape={self.shape}, nf4, double_quant={self.double_quant}"


class NF4Linear(nn.Module):
    """A frozen nn.Linear whose weight is stored in NF4; the bias stays as it was (frozen, full precision)."""

    def __init__(self, linear, double_quant=True):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.nf4 = NF4Weight(linear.weight, double_quant)
        self.bias = linear.bias

    def forward(self, x):
        return NF4Matmul.apply(x, self.nf4, self.bias, compute_dtype(x))  # W0 dequantized to the compute dtype


class QLoRALinear(LoRALinear):
    """LoRALinear over an NF4 base: the same W_a, W_b, scaling and dropout, with W0 dequantized in forward."""

    def __init__(self, lora, double_quant=True):
        super().__init__(lora, lora.W_a.shape[1], lora.scaling * lora.W_a.shape[1], lora.drop_x.p)
        self.W_a, self.W_b = lora.W_a, lora.W_b  # the pair the LoRA model drew, trainable as they were
        self.nf4 = NF4Weight(self.weight, double_quant)
        del self.weight  # no full-precision copy of W0 is kept
        self.train(lora.training)

    def forward(self, x):
        return self.update(x, NF4Matmul.apply(x, self.nf4, self.bias, compute_dtype(x)))  # eq. (1) on the NF4 W0

    def lora(self, x):
        """LowRankLinear.lora on the dequantized W0 (QLoRA keeps no self.weight): DeBERTa's relative positions
        through a shared query or key (model.project)."""
        return super().lora(x, self.nf4(x.dtype))

    def merge(self):
        raise ModelError("QLoRA cannot be merged: W0 is 4-bit; dequantize it first (a LoRA model of the same weights)")


def add_qlora(model, adapters, double_quant=True):
    """QLoRA: LoRA (as --method lora, on adapters' targets), then every linear of every block in NF4: the adapted
    ones under their LoRA, the others frozen. The task head and the embeddings stay in full precision, as QLoRA
    keeps them."""
    if adapters.method != "qlora":
        raise ValueError(f"add_qlora adds qlora, not {adapters.method}")
    if adapters.targets == DEFAULT_TARGETS["qlora"]:  # every linear of a block: those this family's blocks have
        block = model.blocks[0]  # (LLaMA alone has ffn_gate)
        adapters = replace(adapters, targets=tuple(t for t in adapters.targets if getattr(
            getattr(block, TARGETS[t][0], None), TARGETS[t][1], None) is not None))
    add_adapters(model, replace(adapters, method="lora"))
    # DeBERTa's own position projections (share_att_key false) are block linears too, though no target wraps them
    own = {("attn", "pos_key"), ("attn", "pos_query")}
    for block in model.blocks:
        for part, name in set(TARGETS.values()) - {("head", None)} | own:
            parent = getattr(block, part)
            m = getattr(parent, name, None)
            if isinstance(m, LoRALinear):
                setattr(parent, name, QLoRALinear(m, double_quant))
            elif isinstance(m, nn.Linear):
                setattr(parent, name, NF4Linear(m, double_quant))
    model.adapters = adapters
    return model


def weight_bytes(model):
    """(bytes of the blocks' linear weights as stored, bytes the same weights take in float32)."""
    stored = full = 0
    for m in model.modules():
        if isinstance(m, NF4Weight):
            stored, full = stored + m.nbytes(), full + 4 * m.numel
    return stored, full


def weight_memory(cfg, adapters):
    """weight_bytes of a QLoRA model of this config, built on the meta device (no memory, nothing computed)."""
    from model import Model
    with torch.device("meta"):
        model = Model(cfg)
    return weight_bytes(add_qlora(model, adapters))


def saved_bytes(model, step):
    """(what step() returns, bytes of the tensors autograd saves for the backward pass while it runs): each storage
    once, the model's own weights and buffers aside (they are resident anyway). QLoRA's saving is all here: F.linear
    over a dequantized W0 would keep that full-precision matrix alive until the backward pass."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            saved[s.data_ptr()] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    return out, sum(saved.values())

