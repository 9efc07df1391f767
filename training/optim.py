"""The optimizer train.py steps: AdamW with BERT's weight-decay groups, linear warm-up then decay, and gradient
clipping that keeps SSMLoRA's W_d spike from eating the step (docs/differences.md: the W_d gradient spike)."""
import torch


def lr_lambda(warmup_steps, total_steps):
    def f(step):  # linear warm-up, then linear decay to zero
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return f


def make_optimizer(model, lr, weight_decay):
    # no weight decay on biases and LayerNorms (BERT's convention); adapter matrices and head weights decay
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def clip_gradients(others, state, clip, mode):
    """Gradient-norm clipping; `state` holds SSMLoRA's W_c and W_d, `others` every other trained tensor. While
    W_c = W_d = 0, eq. (8) divides by eps alone, so on the step after W_b leaves zero W_d's gradient is some 1e3-1e6
    times any other (docs/differences.md: the W_d gradient spike). One global norm ("global") would then shrink every
    other gradient of that step by as much and lose the step. "state" first clips the state matrices on their own, to at
    most the norm of all the other gradients: the spike can no longer dominate the global norm, and AdamW's second
    moment of W_d takes in a bounded value (its first step, normalised by AdamW, is the same either way)."""
    if mode == "state" and state:
        grads = lambda ps: [p.grad for p in ps if p.grad is not None]
        bound = torch.clamp(torch.nn.utils.get_total_norm(grads(others)), max=clip)  # no device-to-host read
        torch.nn.utils.clip_grads_with_norm_(state, bound, torch.nn.utils.get_total_norm(grads(state)))
    torch.nn.utils.clip_grad_norm_(others + state, clip)
