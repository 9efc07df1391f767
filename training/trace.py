"""train.py --trace-gradients FILE: the loop's hook that records, per step, the loss, the gradient norms before
clipping and the update norms per kind of trained tensor. python -m reproduce.spike compares two such traces (the
W_d gradient spike under each --clip-mode)."""
import json
import math
from pathlib import Path

KINDS = ("W_a", "W_b", "W_c", "W_d", "head")


def kind(name):
    return "head" if name.startswith("head.") else name.rsplit(".", 1)[-1]


class GradientTrace:
    """train.py --trace-gradients FILE: per step, one JSON line with the loss, the gradient norms before clipping and
    the norm of the step's update, each over every trained tensor of a kind (KINDS; a body trained in full: "other")."""

    def __init__(self, path, params):
        self.path, self.params = Path(path), params
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.before = None

    def before_update(self):
        self.grad = norms({n: p.grad for n, p in self.params.items() if p.grad is not None})
        self.before = {n: p.detach().clone() for n, p in self.params.items()}

    def after_update(self, step, loss):
        update = norms({n: p.detach() - self.before[n] for n, p in self.params.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "loss": loss, "grad": self.grad, "update": update}) + "\n")


def norms(tensors):
    """Frobenius norm over all tensors of each kind."""
    sq = {}
    for n, t in tensors.items():
        k = kind(n) if kind(n) in KINDS else "other"
        sq[k] = sq.get(k, 0.0) + float(t.float().pow(2).sum())
    return {k: math.sqrt(v) for k, v in sq.items()}
