"""train.py --trace-gradients FILE: the loop's hook that records, per step, the loss, the gradient norms before
clipping and the update norms per kind of trained tensor. python -m reproduce.spike compares two such traces (the
W_d gradient spike under each --clip-mode)."""
import json
import math
from pathlib import Path

from files import atomic_write

KINDS = ("W_a", "W_b", "W_c", "W_d", "head")


def kind(name):
    return "head" if name.startswith("head.") else name.rsplit(".", 1)[-1]


class GradientTrace:
    """train.py --trace-gradients FILE: per step, one JSON line with the loss, the gradient norms before clipping and
    the norm of the step's update, each over every trained tensor of a kind (KINDS; a body trained in full: "other")."""

    def __init__(self, path, params, resumed_at=0):
        self.path, self.params = Path(path), params
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.before = None
        if resumed_at and self.path.exists():  # a resumed run's own trace: the steps after its checkpoint are redone
            keep = [line for line in read_trace(self.path) if line["step"] <= resumed_at]
            atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(json.dumps(x) + "\n" for x in keep)))

    def before_update(self):
        self.grad = norms({n: p.grad for n, p in self.params.items() if p.grad is not None})
        self.before = {n: p.detach().clone() for n, p in self.params.items()}

    def after_update(self, step, loss):
        update = norms({n: p.detach() - self.before[n] for n, p in self.params.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "loss": loss, "grad": self.grad, "update": update}) + "\n")


def read_trace(path):
    """A trace's lines, in order; a line that is not one is named."""
    lines = []
    for n, text in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            line = json.loads(text)
        except ValueError:
            line = None
        if not isinstance(line, dict) or not isinstance(line.get("step"), int):
            raise ValueError(f"{path}, line {n}: not a --trace-gradients line (is the file this run's trace?)")
        lines.append(line)
    return lines


def norms(tensors):
    """Frobenius norm over all tensors of each kind."""
    sq = {}
    for n, t in tensors.items():
        k = kind(n) if kind(n) in KINDS else "other"
        sq[k] = sq.get(k, 0.0) + float(t.float().pow(2).sum())
    return {k: math.sqrt(v) for k, v in sq.items()}
