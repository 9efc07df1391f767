"""
The W_d gradient spike and gradient clipping, measured: fine-tune a checkpoint with SSMLoRA through train.py's own
loop once per --clip-mode and print, side by side, the training loss, the gradient norms before clipping and the
size of each step's update, per kind of trained tensor (W_a, W_b, W_c, W_d, head), plus the dev accuracy.

    python spike.py --model path/to/all-MiniLM-L6-v2      # a synthetic SST-2, written to a temporary folder
    python spike.py --model roberta-base --data-dir glue --task sst2 --max-train 4096

Synthetic data (no --data-dir): sentences of filler words with one sentiment word; the label is its polarity.
"""
import argparse
import json
import math
import random
import sys
import tempfile
from pathlib import Path

import train

KINDS = ("W_a", "W_b", "W_c", "W_d", "head")
POS = "good great excellent wonderful lovely superb fine delightful".split()
NEG = "bad awful terrible horrible poor dreadful boring lousy".split()
FILL = "the movie was a and it film story plot acting really quite very".split()


def synthetic_sst2(folder, n_train, n_dev, seed=0):
    """SST-2's official layout (SST-2/train.tsv, dev.tsv) holding the sentiment rows described above."""
    rng = random.Random(seed)

    def rows(n):
        out = []
        for _ in range(n):
            y, words = rng.randrange(2), [rng.choice(FILL) for _ in range(rng.randint(3, 8))]
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS if y else NEG))
            out.append(f"{' '.join(words)} \t{y}")
        return "sentence\tlabel\n" + "\n".join(out) + "\n"
    (Path(folder) / "SST-2").mkdir(parents=True, exist_ok=True)
    (Path(folder) / "SST-2" / "train.tsv").write_text(rows(n_train))
    (Path(folder) / "SST-2" / "dev.tsv").write_text(rows(n_dev))


def kind(name):
    return "head" if name.startswith("head.") else name.rsplit(".", 1)[-1]


def run(mode, args, data_dir, out):
    """One fine-tuning run through train.run, recording per step: the training loss, the gradient norms before
    clipping and the update sizes."""
    targs = train.get_args(["--task", args.task, "--model", args.model, "--data-dir", str(data_dir), "--out", str(out),
                            "--epochs", str(args.epochs), "--clip-mode", mode, "--seed", str(args.seed),
                            "--max-train", str(args.max_train), "--patience", "0", "--lr", str(args.lr),
                            "--max-len", "128"])
    log, before, params = {"loss": [], "grad": [], "update": []}, {}, {}
    build, clip = train.build_model, train.clip_gradients

    def recording_build(*a, **k):  # the model train.run builds, its forward wrapped to keep each step's loss
        model = build(*a, **k)
        params.update((n, p) for n, p in model.named_parameters() if p.requires_grad)
        forward = model.forward

        def recording_forward(*fa, **fk):
            logits, loss = forward(*fa, **fk)
            if model.training and loss is not None:
                log["loss"].append(loss.item())
            return logits, loss
        model.forward = recording_forward
        return model

    def recording_clip(others, state, max_norm, how):  # gradient norms per kind, before clipping
        log["grad"].append(norms({n: p.grad for n, p in params.items() if p.grad is not None}))
        before.update({n: p.detach().clone() for n, p in params.items()})
        return clip(others, state, max_norm, how)

    def after_step(step):  # the size of the update each kind of tensor took
        log["update"].append(norms({n: p.detach() - before[n] for n, p in params.items()}))
    train.build_model, train.clip_gradients = recording_build, recording_clip
    try:
        results = train.run(targs, on_step=after_step)
    finally:
        train.build_model, train.clip_gradients = build, clip
    task = train.get_task(targs.task)
    lines = [json.loads(line) for line in (Path(out) / "eval.jsonl").read_text().splitlines()]
    log["dev"] = [line[task.dev[0]][task.select] for line in lines]
    log["results"] = results
    return log


def norms(tensors):
    """Frobenius norm over all tensors of each kind."""
    sq = dict.fromkeys(KINDS, 0.0)
    for n, t in tensors.items():
        sq[kind(n)] += float(t.float().pow(2).sum())
    return {k: math.sqrt(v) for k, v in sq.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint folder or hub name")
    p.add_argument("--task", default="sst2")
    p.add_argument("--data-dir", default=None, help="a GLUE folder; default: synthetic SST-2")
    p.add_argument("--modes", default="global,state")
    p.add_argument("--max-train", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write every per-step number here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(tmp) / "glue"
            synthetic_sst2(data_dir, args.max_train, 256)
        logs = {m: run(m, args, data_dir, Path(tmp) / m) for m in args.modes.split(",")}
    if args.json:
        Path(args.json).write_text(json.dumps({m: {k: v for k, v in log.items() if k != "results"}
                                               for m, log in logs.items()}))
    report(logs)


def report(logs):
    modes = list(logs)
    steps = len(next(iter(logs.values()))["update"])
    print("gradient norm before clipping, per kind (steps 1-4)")
    for m in modes:
        for s in range(min(4, steps)):
            g = logs[m]["grad"][s]
            print(f"  {m:<7} step {s + 1}: " + "  ".join(f"{k} {g[k]:.2e}" for k in KINDS))
    print("update norm per kind (steps 1-4)")
    for m in modes:
        for s in range(min(4, steps)):
            u = logs[m]["update"][s]
            print(f"  {m:<7} step {s + 1}: " + "  ".join(f"{k} {u[k]:.2e}" for k in KINDS))
    marks = sorted({1, 2, 3, 5, 10, 20, 50, 100, 200, steps} & set(range(1, steps + 1)))
    print("W_d update norm at step  " + " ".join(f"{s:>9}" for s in marks) + "   total distance")
    for m in modes:
        u = [x["W_d"] for x in logs[m]["update"]]
        print(f"  {m:<22}" + " ".join(f"{u[s - 1]:9.2e}" for s in marks) + f"   {sum(u):.3e}")
    print("W_c update norm at step  " + " ".join(f"{s:>9}" for s in marks) + "   total distance")
    for m in modes:
        u = [x["W_c"] for x in logs[m]["update"]]
        print(f"  {m:<22}" + " ".join(f"{u[s - 1]:9.2e}" for s in marks) + f"   {sum(u):.3e}")
    window = max(1, steps // 12)
    print(f"training loss, mean over windows of {window} steps")
    for m in modes:
        loss = logs[m]["loss"]
        print(f"  {m:<7} " + " ".join(f"{sum(loss[i:i + window]) / len(loss[i:i + window]):.3f}"
                                      for i in range(0, len(loss), window)))
    print("dev accuracy after each epoch")
    for m in modes:
        print(f"  {m:<7} " + " ".join(f"{a:.4f}" for a in logs[m]["dev"]))


if __name__ == "__main__":
    sys.exit(main())
