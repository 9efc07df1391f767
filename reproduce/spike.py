"""
The W_d gradient spike and gradient clipping, measured: fine-tune a checkpoint with SSMLoRA once per --clip-mode,
with train.py's recipe (its optimizer, schedule, clipping and evaluation, from training/), and print side by side the
training loss, the gradient norms before clipping and the size of each step's update, per kind of trained tensor
(W_a, W_b, W_c, W_d, head), plus the dev accuracy.

    python -m reproduce.spike --model path/to/all-MiniLM-L6-v2      # a synthetic SST-2, in a temporary folder
    python -m reproduce.spike --model roberta-base --data-dir glue --task sst2 --max-train 4096

Synthetic data (no --data-dir): reproduce/synthetic.py's SST-2, sentences of filler words with one sentiment word.
"""
import argparse
import json
import math
import random
import sys
import tempfile
from pathlib import Path

import torch

from tasks import encode, get_task, load_data
from data import collate
from files.tokenizer import load_tokenizer
from files.hub import resolve
from reproduce.synthetic import write_sst2
from ssmlora import Adapters
from training.build import build_model
from training.evaluate import evaluate
from training.optim import clip_gradients, lr_lambda, make_optimizer

KINDS = ("W_a", "W_b", "W_c", "W_d", "head")
def kind(name):
    return "head" if name.startswith("head.") else name.rsplit(".", 1)[-1]


def run(mode, args, data_dir):
    """One fine-tuning run (batch 16, warm-up 6%, weight decay 0.01, clip 1, 128 tokens, as train.py's defaults),
    recording per step the training loss, the gradient norms before clipping and the update sizes."""
    task = get_task(args.task)
    torch.manual_seed(args.seed)
    model = build_model(task, args.model, adapters=Adapters("ssmlora", 8, 16.0, 0.1, "query,value")).train()
    tok = load_tokenizer(resolve(model.source), family=model.cfg.family)
    data = load_data(task, argparse.Namespace(data_dir=str(data_dir), cache_dir=None))
    train_set = encode(tok, task, data["train"][:args.max_train], 128, "train", {})
    dev = {s: encode(tok, task, data[s], 128, s, {}) for s in task.dev}
    steps_per_epoch = math.ceil(len(train_set) / 16)
    total = args.epochs * steps_per_epoch
    opt = make_optimizer(model, args.lr, 0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(math.ceil(0.06 * total), total))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    state = [p for n, p in params.items() if n.endswith((".W_c", ".W_d"))]
    others = [p for n, p in params.items() if not n.endswith((".W_c", ".W_d"))]
    log = {"loss": [], "grad": [], "update": [], "dev": []}
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
        for i in range(steps_per_epoch):
            batch = collate(train_set, order[i * 16:(i + 1) * 16].numpy())
            _, loss = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"])
            loss.backward()
            log["loss"].append(loss.item())
            log["grad"].append(norms({n: p.grad for n, p in params.items() if p.grad is not None}))
            before = {n: p.detach().clone() for n, p in params.items()}
            clip_gradients(others, state, 1.0, mode)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            log["update"].append(norms({n: p.detach() - before[n] for n, p in params.items()}))
        metrics = evaluate(model, dev[task.dev[0]], task, 16, torch.device("cpu"), data[task.dev[0]])[0]
        log["dev"].append(metrics[task.select])
    return log


def norms(tensors):
    """Frobenius norm over all tensors of each kind."""
    sq = dict.fromkeys(KINDS, 0.0)
    for n, t in tensors.items():
        sq[kind(n)] += float(t.float().pow(2).sum())
    return {k: math.sqrt(v) for k, v in sq.items()}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m reproduce.spike", description=__doc__.split("\n\n")[0])
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
            write_sst2(data_dir, args.max_train, 256, random.Random(0))
        logs = {m: run(m, args, data_dir) for m in args.modes.split(",")}
    if args.json:
        Path(args.json).write_text(json.dumps(logs))
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
