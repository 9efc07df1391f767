"""
The W_d gradient spike and gradient clipping, measured: train.py fine-tunes a checkpoint with SSMLoRA once per
--clip-mode, recording each step with --trace-gradients (training/trace.py is that hook in train.py's loop), and
this prints side by side the training loss, the gradient norms before clipping and the size of each step's update,
per kind of trained tensor (W_a, W_b, W_c, W_d, head), plus the dev accuracy.

    python -m reproduce.spike --model path/to/all-MiniLM-L6-v2      # a synthetic SST-2, in a temporary folder
    python -m reproduce.spike --model roberta-base --data-dir glue --task sst2 --max-train 4096
    python -m reproduce.spike --model M --max-train 64 --epochs 1 --warmup 0   # other flags go to train.py

Synthetic data (no --data-dir): reproduce/synthetic.py's SST-2, sentences of filler words with one sentiment word.
"""
import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from training.trace import KINDS


ROOT = Path(__file__).resolve().parent.parent  # where train.py is


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m reproduce.spike", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint folder or hub name")
    p.add_argument("--task", default="sst2")
    p.add_argument("--data-dir", default=None, help="a GLUE folder; default: synthetic SST-2")
    p.add_argument("--modes", default="global,state", help="the --clip-mode of each run (default: %(default)s)")
    p.add_argument("--max-train", type=int, default=1024, help="training sentences (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=3, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=5e-4, help="default: %(default)s")
    p.add_argument("--max-len", type=int, default=128, help="tokens per sentence; the synthetic ones are short "
                   "(default: %(default)s, not train.py's 512)")
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write every per-step number here")
    args, train_flags = p.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        data_dir = args.data_dir
        if data_dir is None:
            from reproduce.synthetic import write_sst2
            data_dir = out / "glue"
            write_sst2(data_dir, args.max_train, 256, random.Random(0))
        modes = args.modes.split(",")
        steps = args.epochs * math.ceil(args.max_train / 16)
        print(f"{len(modes)} train.py runs ({', '.join(modes)} clipping) of at most {steps} steps each "
              f"(--max-train {args.max_train}, --epochs {args.epochs}, batch 16); each shows its own progress",
              flush=True)
        logs = {m: run(m, args, data_dir, out / m, train_flags) for m in modes}
    if args.json:
        Path(args.json).write_text(json.dumps(logs))
    report(logs)


def run(mode, args, data_dir, out, train_flags):
    """One train.py run, with its per-step trace and its dev accuracy after each epoch."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--task", args.task, "--model", args.model, "--data-dir",
           str(data_dir), "--max-train", str(args.max_train), "--epochs", str(args.epochs), "--lr", str(args.lr),
           "--max-len", str(args.max_len), "--clip-mode", mode, "--patience", "0", "--length-bins", "0",
           "--trace-gradients", str(out / "trace.jsonl"), "--out", str(out), *train_flags]
    print(f"\n{mode}: {' '.join(cmd[1:])}", flush=True)
    if subprocess.run(cmd).returncode:
        sys.exit(f"error: the {mode} run failed (its message is above)")
    steps = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    select = json.loads((out / "results.json").read_text())["select"]
    return {"loss": [s["loss"] for s in steps], "grad": [s["grad"] for s in steps],
            "update": [s["update"] for s in steps], "dev": [e["dev"][select] for e in evals if "dev" in e]}


def report(logs):
    modes = list(logs)
    steps = len(next(iter(logs.values()))["update"])
    for what in ("grad", "update"):
        print(f"{'gradient norm before clipping' if what == 'grad' else 'update norm'}, per kind (steps 1-4)")
        for m in modes:
            for s in range(min(4, steps)):
                g = logs[m][what][s]
                print(f"  {m:<7} step {s + 1}: " + "  ".join(f"{k} {g.get(k, 0.0):.2e}" for k in KINDS))
    marks = sorted({1, 2, 3, 5, 10, 20, 50, 100, 200, steps} & set(range(1, steps + 1)))
    for k in ("W_d", "W_c"):
        print(f"{k} update norm at step  " + " ".join(f"{s:>9}" for s in marks) + "   total distance")
        for m in modes:
            u = [x.get(k, 0.0) for x in logs[m]["update"]]
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
