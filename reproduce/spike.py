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
import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from files import atomic_write, check_new
from training.cli import OneLineParser
from training.flags import parse as parse_train, parser as train_parser
from training.trace import KINDS, read_trace


ROOT = Path(__file__).resolve().parent.parent  # where train.py is


def main(argv=None):
    args, train_flags = get_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        data_dir = args.data_dir
        if data_dir is None:
            from reproduce.synthetic import write_sst2
            data_dir = out / "glue"
            write_sst2(data_dir, args.max_train, 256, random.Random(0))
        steps = args.epochs * math.ceil(args.max_train / 16)
        print(f"{len(args.modes)} train.py runs ({', '.join(args.modes)} clipping) of at most {steps} steps each "
              f"(--max-train {args.max_train}, --epochs {args.epochs}, batch 16); each shows its own progress",
              flush=True)
        logs = {m: run(m, args, data_dir, out / m, train_flags) for m in args.modes}
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(logs)))
    report(logs)


def get_args(argv):
    """Spike's own flags and the ones it passes to train.py, all checked before the first run: a mistake in either
    (or a --json that could not be written) would otherwise surface only after the runs."""
    p = OneLineParser(prog="-m reproduce.spike", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint folder or hub name")
    p.add_argument("--task", default="sst2", help="a GLUE task, with --data-dir (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="a GLUE folder; default: synthetic SST-2")
    p.add_argument("--modes", default="global,state", help="the --clip-mode of each run (default: %(default)s)")
    p.add_argument("--max-train", type=int, default=1024, help="training sentences (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=3, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=5e-4, help="default: %(default)s")
    p.add_argument("--max-len", type=int, default=128, help="tokens per sentence; the synthetic ones are short "
                   "(default: %(default)s, not train.py's 512)")
    p.add_argument("--out", default=None, help="a new or empty folder to keep the runs in (default: a temporary "
                   "folder)")
    p.add_argument("--json", default=None, help="also write every per-step number to this new file")
    args, train_flags = p.parse_known_args(argv)
    args.modes = args.modes.split(",")
    if len(set(args.modes)) < len(args.modes) or not set(args.modes) <= {"global", "state"}:
        p.error(f"--modes: global, state or both, each once, got {','.join(args.modes)!r}")
    if min(args.max_train, args.epochs, args.max_len) < 1 or not args.lr > 0:
        p.error("--max-train, --epochs and --max-len must be at least 1, --lr above 0")
    if args.data_dir is None and args.task != "sst2":
        p.error(f"the synthetic data is SST-2's: --task {args.task} needs --data-dir")
    given, default = (vars(train_parser().parse_known_args(f)[0]) for f in (train_flags, []))
    if own := [f"--{k.replace('_', '-')}" for k in ("clip_mode", "trace_gradients") if given[k] != default[k]]:
        p.error(f"{', '.join(own)}: this command sets {'it' if len(own) == 1 else 'them'} for each run itself")
    try:
        if args.out:
            check_new(args.out, "--out", folder=True)
        if args.json:
            check_new(args.json, "--json")
        # train.py's own checks of every flag, as the first run would make them
        parse_train(command(args.modes[0], args, args.data_dir or "glue", Path(args.out or "spike") / "x", [])[2:] +
                    train_flags)
    except (ValueError, OSError) as e:
        p.error(str(e))
    return args, train_flags


def command(mode, args, data_dir, out, train_flags):
    return [sys.executable, str(ROOT / "train.py"), "--task", args.task, "--model", args.model, "--data-dir",
            str(data_dir), "--max-train", str(args.max_train), "--epochs", str(args.epochs), "--lr", str(args.lr),
            "--max-len", str(args.max_len), "--clip-mode", mode, "--patience", "0", "--length-bins", "0",
            "--trace-gradients", str(out / "trace.jsonl"), "--out", str(out), *train_flags]


def run(mode, args, data_dir, out, train_flags):
    """One train.py run, with its per-step trace and its dev accuracy after each epoch."""
    cmd = command(mode, args, data_dir, out, train_flags)
    print(f"\n{mode}: {' '.join(cmd[1:])}", flush=True)
    p, last = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True), ""
    for line in p.stderr:  # shown as it comes; its last line is train.py's error, if it fails
        sys.stderr.write(line)
        last = line.strip() or last
    if p.wait():
        sys.exit(f"error: the {mode} run failed: {last.removeprefix('error: ')}")
    steps = read_trace(out / "trace.jsonl")
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
