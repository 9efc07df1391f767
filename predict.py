"""
Run trained adapters on new text: the adapter file names its task, base checkpoint and tokenizer.

    python predict.py out/sst2-ssmlora-r8/adapters.safetensors "a gripping, funny film" "dull and far too long"
    python predict.py out/mrpc-ssmlora-r8/adapters.safetensors --file pairs.tsv   # a tab between a pair's texts

prints one JSON line per example: {"label": ..., "probability": ...} (a "score" for regression tasks). In Python:

    from predict import load, predict
    p = load("out/sst2-ssmlora-r8/adapters.safetensors")
    predict(p, ["a gripping, funny film"])            # [{'label': '1', 'probability': ...}]
    predict(p, ["first sentence"], ["second one"])    # pair tasks: text_b
"""
import json
import sys
from typing import NamedTuple

import torch

from benchmarks import glue
from data import DataError, Example, batches, load_tokenizer
from files.adapters import read_run
from files.hub import resolve
from interop.peft import is_peft_folder, read_peft_run
from model import Model
from training.build import build_model, to_device
from training.cli import OneLineParser, UserError, pick_device


class Predictor(NamedTuple):
    model: Model
    tok: object
    task: object
    device: torch.device


def load(adapters, model=None, tokenizer=None, device="auto", task=None):
    """The base model with the trained adapters and head, its tokenizer and the task, from an adapter file that
    train.py wrote (or a PEFT LoRA folder). model / tokenizer / task: instead of what the file names."""
    run = read_peft_run(adapters) if is_peft_folder(adapters) else read_run(adapters)
    run["task"] = task or run.get("task")
    if not run.get("task"):
        raise UserError(f"{adapters} does not say which task it was trained on: pass --task")
    if not (model or run.get("model")):
        raise UserError(f"{adapters} does not name its base model: pass --model")
    if run["task"] not in glue.TASKS:
        raise UserError(f"{adapters} was trained on {run['task']}: predict.py runs GLUE tasks; evaluate SuperGLUE and "
                        f"RACE adapters with python train.py --eval-only {adapters}")
    task, name = glue.TASKS[run["task"]], model or run["model"]
    # train.py's own builder: the base (a checkpoint, or for --random-init runs a preset or config.json), then the
    # adapters and head rebuilt from the file
    m = build_model(task, name, run.get("random_init", False), adapter_file=adapters).eval()
    source = tokenizer or run.get("tokenizer") or (name if run.get("random_init") else m.source)
    device = pick_device(device)
    return Predictor(m.to(device), load_tokenizer(resolve(source), family=m.cfg.family), task, device)


@torch.no_grad()
def predict(p, texts_a, texts_b=None, batch_size=32, max_len=512):
    """One dict per example: the label (as the task's files write it) and its probability, or a regression score."""
    if texts_b is not None and len(texts_b) != len(texts_a):
        raise UserError(f"{len(texts_a)} first texts but {len(texts_b)} second ones")
    label = 0.0 if p.task.is_regression else 0  # a placeholder: batches() carries labels, predict() ignores them
    examples = [Example(a, None if texts_b is None else texts_b[i], label) for i, a in enumerate(texts_a)]
    out = []
    for batch in batches(p.tok.encode(examples, min(max_len, p.model.cfg.max_tokens)), batch_size):
        batch = to_device(batch, p.model.cfg, p.device)
        logits, _ = p.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        if p.task.is_regression:
            out += [{"score": s} for s in logits.float().squeeze(-1).tolist()]
        else:
            probs, ids = logits.float().softmax(-1).max(-1)
            out += [{"label": p.task.labels[i], "probability": q} for i, q in zip(ids.tolist(), probs.tolist())]
    return out


def main(argv=None):
    ap = OneLineParser(prog="predict.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("adapters", help="an adapters.safetensors written by train.py, or a PEFT LoRA folder")
    ap.add_argument("texts", nargs="*", help="texts to classify (single-text tasks)")
    ap.add_argument("--file", help="one example per line; a tab separates the two texts of a pair task")
    ap.add_argument("--model", help="base checkpoint folder (default: the one the file names)")
    ap.add_argument("--tokenizer", help="tokenizer folder (default: the one the file names)")
    ap.add_argument("--task", help="the GLUE task (default: the one the file names; a PEFT folder may not)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args(argv)
    if bool(args.texts) == bool(args.file):
        ap.error("give either texts or --file")
    try:
        rows = [t.split("\t", 1) for t in args.texts] if args.texts else read_lines(args.file)
        texts_b = [r[1] for r in rows] if all(len(r) == 2 for r in rows) else None
        if texts_b is None and any(len(r) == 2 for r in rows):
            raise UserError(f"{args.file}: some lines have a tab (a pair) and some do not")
        p = load(args.adapters, args.model, args.tokenizer, args.device, args.task)
        for result in predict(p, [r[0] for r in rows], texts_b):
            print(json.dumps(result))
    except (ValueError, OSError) as e:  # every error class here is a ValueError
        sys.exit(f"error: {e}")


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


if __name__ == "__main__":
    main()
