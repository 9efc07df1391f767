"""
The authors' state lifetime, `--state carry`: a reproduction kept beside the method, not inside it, so that the
difference from our default (the state starts afresh every forward pass, README decision 10) can be measured.

It follows the authors' code at github.com/yuhkalhic/SSMLoRA, commit a1a74470e5708d2e98e03ed3ae4578f1ee0718ef:
src/models/ssm_lora.py (TimeAxis, and SSMLoRALayer.forward lines 33-60) and src/models/model_utils.py
(prepare_model, lines 26-41).

- One dictionary of states survives across forward passes, in training and evaluation alike.
- Query and value modules are stored under per-layer keys (their f"query_{i}", f"value_{i}"), so each reads *its
  own* state from the previous forward pass and no state moves across layers; "key" (which they never adapt) is
  keyed the same way. attn_out and the FFN linears share one key per kind (their "od", "mlp", "mu", "md"), so there
  the state runs across layers and the first module of the axis reads the last one's state from the previous pass.
- A key never written reads zeros of 12 rows and the current length; a stored state whose shape differs from the
  batch is patched by fit_carried_state(), as they do.
Only the lifetime, the keys and the patching are theirs: the scaling (alpha / r, decision 6) and the dropout
(decision 7) are the same in both modes.
"""
import torch

import ssmlora

H0_ROWS = 12  # their TimeAxis allocates h_0 with 12 rows whatever the batch size
PER_LAYER = ("query", "key", "value")  # the targets they key per layer


def add_adapters(model, adapters):
    """ssmlora.add_adapters with the authors' state lifetime (adapters.state "carry") plugged in."""
    axes = CarriedAxes()
    ssmlora.add_adapters(model, adapters, time_axes=axes)
    axes.layer = {m: i for i, block in enumerate(model.blocks) for m in block.modules()
                  if isinstance(m, ssmlora.SSMLoRALinear)}  # the per-layer keys need each module's layer
    return model


class CarriedAxes:
    """Drop-in for ssmlora.TimeAxes: the same read / write / clear, with the authors' lifetime."""

    def __init__(self):
        self.h, self.layer = {}, {}

    def key(self, m):
        return f"{m.axis}_{self.layer[m]}" if m.axis in PER_LAYER else m.axis

    def read(self, m, x_new):
        B, T, r = x_new.shape
        h = self.h.get(self.key(m))
        if h is None:  # their first read: zeros with a fixed 12 rows, then patched like any carried state
            h = x_new.new_zeros(H0_ROWS, T, r)
        return fit_carried_state(h, B, T).to(x_new.dtype)

    def write(self, m, h_norm):
        self.h[self.key(m)] = h_norm

    def clear(self):
        self.h.clear()


def fit_carried_state(h, B, T):
    """Their patch (ssm_lora.py lines 37-52) of a carried state h (B', T', r) to (B, T, r), in their order: missing
    rows are filled with 0.5, surplus rows dropped by a random choice (random order); surplus positions dropped by a
    random choice kept in order; missing positions filled with zeros at the end."""
    if h.shape[0] < B:
        h = torch.cat([h, h.new_full((B - h.shape[0], h.shape[1], h.shape[2]), 0.5)])
    elif h.shape[0] > B:
        h = h[torch.randperm(h.shape[0])[:B].to(h.device)]
    if h.shape[1] > T:
        h = h[:, torch.randperm(h.shape[1], device=h.device)[:T].sort().values]
    elif h.shape[1] < T:
        h = torch.cat([h, h.new_zeros(B, T - h.shape[1], h.shape[2])], dim=1)
    return h
