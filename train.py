"""
Fine-tune a RoBERTa / BERT / GPT-2 / LLaMA on a GLUE, SuperGLUE or RACE task with SSMLoRA or one of the paper's
baselines.

    python train.py --task sst2 --rank 8                       # roberta-base, SSMLoRA, the LoRA paper's recipe
    python train.py --task boolq --rank 8                      # SuperGLUE, evaluated on val
    python train.py --task race --rank 8                       # RACE: dev accuracy for All, Middle and High
    python train.py --task rte --method lora --model ./roberta-base
    python train.py --task mrpc --dry-run --random-init --model roberta-large    # parameter report, no download
    python train.py --task sst2 --resume                       # continue a killed run from its last checkpoint
    python train.py --task sst2 --eval-only out/sst2-ssmlora-r8/adapters.safetensors
    torchrun --standalone --nproc_per_node=4 train.py --task mnli   # data-parallel: 4 GPUs (or CPU processes)

Writes to --out: eval.jsonl (one line per evaluation), adapters.safetensors (the best adapters + head, small),
checkpoint.pt (everything needed to resume), results.json (at the end). Under torchrun only rank 0 writes.
"""
import json
import math
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adapter_file import add_adapters_from_file, read_run, save_adapters
from baselines import add_adapters, aux_loss
import dist
from data import collate, load_tokenizer
from hub import config_from_hf, read_config, resolve
from metrics import compute_metrics
from model import PRESETS, Model, check_inputs, from_pretrained, preset
from ssmlora import LOW_RANK, METHODS, STATES, Adapters, format_report, param_report
from tasks import FULL_RECIPE, RECIPE, TASK_NAMES, encode, get_task, is_reading, load_data
from util import OneLineParser, UserError, atomic_write, pick_device

CLIP_MODES = ("state", "global")


class TrainError(UserError):
    """A run that cannot go on (non-finite loss, a checkpoint of another run): the message says what to do."""


ADAPTER_FLAGS = {"rank": 8, "alpha": 16.0, "dropout": 0.1, "targets": "query,value", "state": "reset"}


def get_args(argv=None):
    p = OneLineParser(prog="train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", help=f"{TASK_NAMES} (with --eval-only: the file's own)")
    p.add_argument("--model", help="hub name, local checkpoint folder, or (with --random-init) a preset: "
                   f"{', '.join(PRESETS)} (default: roberta-base; with --eval-only: the file's own)")
    p.add_argument("--method", default="ssmlora", choices=[m for m in METHODS if m != "none"],
                   help="default: ssmlora; qlora and mixlora: the Table 1 baselines in baselines/")
    a = p.add_argument_group("adapters (--method ssmlora, lora, qlora or mixlora only)")
    a.add_argument("--rank", type=int, help="r, the rank of W_a and W_b (default: 8)")
    a.add_argument("--alpha", type=float, help="scaling s = alpha / rank (default: 16). The authors' code scales "
                   "by alpha itself: pass their alpha times the rank to match it")
    a.add_argument("--dropout", type=float, help="adapter dropout: on h_norm for SSMLoRA, on x for LoRA (default: 0.1)")
    a.add_argument("--targets", help="comma-separated, of query,key,value,attn_out,ffn_in,ffn_out; qkv (query, key "
                   "and value as one projection: GPT-2 as the paper adapts it); ffn_gate (LLaMA's gate); head (an "
                   "adapter on the task head's last linear, which then stays frozen) (default: query,value)")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--sparse", dest="sparse", action="store_true", default=None,
                   help="alternate the attention targets over the layers: query in even layers, value in odd; "
                   "a single one, every other layer (SSMLoRA's default)")
    g.add_argument("--dense", dest="sparse", action="store_false",
                   help="every target in every layer (LoRA's default)")
    a.add_argument("--state", help=f"SSMLoRA state lifetime: {' or '.join(STATES)} (the authors' code; "
                   "default: reset)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, help="learning rate (default: the task's recipe, see README)")
    o.add_argument("--batch-size", type=int, default=16, help="examples per forward pass, in each process "
                   "(default: 16)")
    o.add_argument("--grad-accum", type=int, default=1, help="forward passes per optimizer step: a step sees "
                   "batch-size x processes x grad-accum examples (default: 1)")
    o.add_argument("--epochs", type=int, help="at most this many epochs (default: the task's recipe)")
    o.add_argument("--max-len", type=int, default=512, help="tokens per example, special tokens included "
                   "(default: 512, or fewer if the model's position table is shorter)")
    o.add_argument("--warmup", type=float, default=0.06, help="fraction of the steps spent warming up, in [0, 1) "
                   "(default: 0.06)")
    o.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's, on matrices only (default: 0.01)")
    o.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (default: 1.0)")
    o.add_argument("--clip-mode", default="state", choices=CLIP_MODES, help="state: SSMLoRA's W_c, W_d first clipped "
                   "on their own to at most the norm of the other gradients, then everything together; global: one "
                   "norm over every trained tensor (default: state; README: the W_d gradient spike)")
    o.add_argument("--patience", type=int, default=5, help="stop after this many evaluations without improvement "
                   "on the task's selection metric; 0: never (default: 5)")
    o.add_argument("--seed", type=int, default=0, help="seeds the adapters, the head and the data order (default: 0)")
    o.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    o.add_argument("--max-train", type=int, help="use only the first N training examples")
    o.add_argument("--eval-every", type=int, default=0, help="also evaluate every N optimizer steps; 0: only at "
                   "the end of each epoch (default: 0)")
    f = p.add_argument_group("files and machine")
    f.add_argument("--data-dir", help="local data folder, offline: GLUE's (data-dir/SST-2/train.tsv), SuperGLUE's "
                   "(data-dir/BoolQ/train.jsonl) or RACE's (data-dir/RACE/train/middle/1.txt)")
    f.add_argument("--cache-dir", help="where downloaded files are kept (default: ~/.cache/ssmlora/glue, "
                   "superglue or race)")
    f.add_argument("--tokenizer", help="tokenizer folder (default: the checkpoint's)")
    f.add_argument("--out", help="output folder (default: out/<task>-<method>[-r<rank>])")
    f.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if available")
    f.add_argument("--threads", type=int, help="CPU threads (default: torch's own). On a machine that other work "
                   "is using, fewer threads than cores avoids waiting for a busy core")
    f.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps, and every epoch "
                   "(default: 500)")
    f.add_argument("--log-every", type=int, default=100, help="when output is not a terminal, a progress line every "
                   "N steps or every minute, whichever comes first (default: 100)")
    r = p.add_argument_group("modes")
    r.add_argument("--dry-run", action="store_true", help="build the model, print the parameter report, exit")
    r.add_argument("--random-init", action="store_true", help="random weights: a preset or a folder's config.json")
    r.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    r.add_argument("--eval-only", metavar="ADAPTERS", help="evaluate a saved adapters.safetensors on the dev set")
    args = p.parse_args(argv)
    if args.eval_only:
        from_file(args)
    if args.task is None:
        p.error("the following arguments are required: --task")
    args.task = get_task(args.task).name  # unknown task: an error before anything is loaded
    args.model = args.model or "roberta-base"
    adapted = args.method in LOW_RANK
    given = [f"--{k}" for k in ADAPTER_FLAGS if getattr(args, k) is not None] + ["--sparse/--dense"] * (
        args.sparse is not None)
    if given and not adapted and not args.eval_only:
        p.error(f"{', '.join(given)} apply to --method {', '.join(LOW_RANK)} only, not {args.method}")
    for k, v in ADAPTER_FLAGS.items():
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    lr, epochs = FULL_RECIPE if args.method == "full" else RECIPE[args.task]
    args.lr = lr if args.lr is None else args.lr
    args.epochs = epochs if args.epochs is None else args.epochs
    args.out = args.out or f"out/{args.task}-{args.method}" + (f"-r{args.rank}" if adapted else "")
    if args.random_init and not (args.dry_run or args.tokenizer or Path(args.model).is_dir()):
        p.error(f"--random-init with the preset {args.model} has no tokenizer to read the data with: pass "
                f"--tokenizer with a checkpoint folder of the same family (or use --dry-run)")
    checks = [("batch-size", args.batch_size >= 1), ("grad-accum", args.grad_accum >= 1), ("epochs", args.epochs >= 1),
              ("max-len", args.max_len >= 1), ("save-every", args.save_every >= 1), ("log-every", args.log_every >= 1),
              ("max-steps", args.max_steps is None or args.max_steps >= 1),
              ("max-train", args.max_train is None or args.max_train >= 1),
              ("threads", args.threads is None or args.threads >= 1)]
    for flag, ok in checks:
        if not ok:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag.replace('-', '_'))}")
    if not 0 <= args.warmup < 1:
        p.error(f"--warmup is a fraction of the steps, in [0, 1), got {args.warmup}")
    if args.patience < 0 or args.lr <= 0 or args.clip <= 0 or args.weight_decay < 0:
        p.error("--patience and --weight-decay must be at least 0, --lr and --clip above 0")
    if args.eval_every < 0:
        p.error(f"--eval-every must be at least 0 (0: only at the end of each epoch), got {args.eval_every}")
    if args.state == "carry" and dist.world() > 1:
        p.error("--state carry keeps one state per process under torchrun, which is not the authors' "
                "single-process behaviour: run it as one process (python train.py)")
    return args


def from_file(args):
    """--eval-only: the task, base model and tokenizer the adapters were trained with, unless given again."""
    run = read_run(args.eval_only)
    if args.task and run.get("task") and get_task(args.task).name != run["task"]:
        raise UserError(f"{args.eval_only} holds adapters trained on {run['task']}, not {args.task}: evaluate it on "
                        f"{run['task']} (leave --task out)")
    for k in ("task", "model", "tokenizer"):
        if getattr(args, k) is None:
            setattr(args, k, run.get(k))
    args.random_init = args.random_init or run.get("random_init", False)


# ----------------------------------------------------------------------------------------------------------
# building

def build_model(args, task, meta=False):
    """The base model with its task head, then the method's adapters; only the trained parameters need grads."""
    adapters = None if args.eval_only else Adapters(args.method, args.rank, args.alpha, args.dropout, args.targets,
                                                    args.sparse, args.state)  # checks the settings first
    num_labels, head = task.num_labels, "choice" if getattr(task, "shape", "") == "choice" else "cls"
    with torch.device("meta" if meta else "cpu"):
        if args.random_init and Path(args.model).is_dir():
            model = Model(replace(config_from_hf(read_config(args.model), num_labels), head=head))
        elif args.random_init:
            model = Model(preset(args.model, head=head, num_labels=num_labels))
        else:
            model = from_pretrained(args.model, num_labels=num_labels, head=head)
    if args.eval_only:
        return add_adapters_from_file(model, args.eval_only)
    if getattr(model, "new_head", None):
        what = "multiple-choice" if head == "choice" else f"{num_labels}-label classification"
        print(f"{args.model}: the checkpoint has no {what} head; initialised a new one ({', '.join(model.new_head)})")
    return add_adapters(model, adapters)


def to_device(batch, cfg, device):
    """The batch checked (on the CPU, before the forward pass, so the forward never reads the device) and moved."""
    check_inputs(cfg, batch["input_ids"], batch["attention_mask"])
    return {k: v if v is None else v.to(device, non_blocking=True) for k, v in batch.items()}


def lr_lambda(warmup_steps, total_steps):
    def f(step):  # linear warm-up, then linear decay to zero
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return f


def make_optimizer(model, args):
    # no weight decay on biases and LayerNorms (BERT's convention); adapter matrices and head weights decay
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)


def clip_gradients(others, state, clip, mode):
    """Gradient-norm clipping; `state` holds SSMLoRA's W_c and W_d, `others` every other trained tensor. While
    W_c = W_d = 0, eq. (8) divides by eps alone, so on the step after W_b leaves zero W_d's gradient is some 1e3-1e6
    times any other (README: the W_d gradient spike). One global norm ("global") would then shrink every other
    gradient of that step by as much and lose the step. "state" first clips the state matrices on their own, to at
    most the norm of all the other gradients: the spike can no longer dominate the global norm, and AdamW's second
    moment of W_d takes in a bounded value (its first step, normalised by AdamW, is the same either way)."""
    if mode == "state" and state:
        grads = lambda ps: [p.grad for p in ps if p.grad is not None]
        bound = torch.clamp(torch.nn.utils.get_total_norm(grads(others)), max=clip)  # no device-to-host read
        torch.nn.utils.clip_grads_with_norm_(state, bound, torch.nn.utils.get_total_norm(grads(state)))
    torch.nn.utils.clip_grad_norm_(others + state, clip)


# ----------------------------------------------------------------------------------------------------------
# evaluating

@torch.no_grad()
def evaluate(model, encoded, task, args, device, examples):
    """Metrics on a whole dev set. Under torchrun each process evaluates its own contiguous share of the examples
    and the outputs are gathered: every example is evaluated once, and every process gets the same metrics."""
    model.eval()
    rows, outs = dist.my_share(np.arange(len(encoded)))[0], []
    rows = rows if len(rows) else np.arange(1)  # none here (fewer examples than processes): one, dropped when gathered
    for start in range(0, len(rows), 2 * args.batch_size):
        batch = to_device(collate(encoded, rows[start:start + 2 * args.batch_size]), model.cfg, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out, _ = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                           choices=batch.get("choices"))
        # the reading tasks keep the predicted class or choice (a batch's choices are as many as its longest
        # question has); GLUE keeps the logits
        outs.append(out.float().argmax(-1) if is_reading(task) else out.float())
    model.train()
    outs = dist.gather_rows(torch.cat(outs), len(encoded))
    if is_reading(task):  # the task scores its predictions with what its examples hold
        return task.score(outs.tolist(), examples)
    return compute_metrics(task, outs, torch.from_numpy(encoded.labels))


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------------------
# checkpoints: everything a resumed run needs to end exactly where an uninterrupted one would

RUN_KEYS = ("task", "model", "method", "rank", "alpha", "dropout", "targets", "sparse", "state", "lr", "batch_size",
            "grad_accum", "world_size", "epochs", "max_len", "warmup", "weight_decay", "clip", "clip_mode", "seed",
            "max_steps", "max_train", "random_init")


def save_checkpoint(path, model, opt, sched, progress, args):
    """Called by every process (each one's random state is kept, for its own dropout masks); rank 0 writes."""
    rng = dist.gather_objects(torch.get_rng_state())
    cuda_rng = dist.gather_objects(torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    if not dist.is_main():
        return
    trained = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    carried = dict(model.time_axes.h) if getattr(model, "time_axes", None) and model.adapters.state == "carry" else {}
    obj = {"run": {k: getattr(args, k) for k in RUN_KEYS}, "trained": trained, "optimizer": opt.state_dict(),
           "scheduler": sched.state_dict(), "progress": progress, "carried_state": carried, "rng": rng,
           "cuda_rng": cuda_rng}
    atomic_write(path, lambda tmp: torch.save(obj, tmp))  # a kill during the save leaves the previous one whole


def load_checkpoint(path, model, opt, sched, args):
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainError(f"could not read {path} ({type(e).__name__}); it is corrupt: delete it to start over") from None
    flag = lambda k: "processes" if k == "world_size" else f"--{k.replace('_', '-')}"
    diff = [f"{flag(k)}: checkpoint {v!r}, now {getattr(args, k)!r}" for k, v in ck["run"].items()
            if v != getattr(args, k)]
    if diff:
        raise TrainError(f"{path} belongs to a run with other settings ({'; '.join(diff)}); "
                         f"resume with the same flags or choose another --out")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in ck["trained"].items():
            params[n].copy_(t)
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    if ck["carried_state"]:
        device = next(model.parameters()).device
        model.time_axes.h.update({k: v.to(device) for k, v in ck["carried_state"].items()})
    torch.set_rng_state(ck["rng"][dist.rank()])
    if ck["cuda_rng"][dist.rank()] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["cuda_rng"][dist.rank()])
    return ck["progress"]


# ----------------------------------------------------------------------------------------------------------
# the run

def run(args, on_step=None):
    """Train (or evaluate) as args say; returns the results dict. on_step(step) is called after each step."""
    task = get_task(args.task)
    device = dist.init(pick_device(args.device))  # under torchrun: join the other processes
    args.world_size = dist.world()
    torch.manual_seed(args.seed)  # the same in every process: the same initial adapters and head everywhere
    if args.dry_run:  # on the meta device: counts without allocating, so roberta-large takes no time
        model = build_model(args, task, meta=args.random_init)
        report = param_report(model)
        print(format_report(report))
        return {"params": report}
    with dist.main_first():  # rank 0 downloads what is missing; the others then read the caches
        model = build_model(args, task)
        source = args.tokenizer or (args.model if args.random_init else model.source)
        tok = load_tokenizer(resolve(source), family=model.cfg.family)
        data = load_data(task, args)
    print(format_report(param_report(model)))
    max_len = min(args.max_len, model.cfg.max_tokens)
    train_rows = data["train"][:args.max_train] if args.max_train else data["train"]
    cut = {}
    encoded = {split: encode(tok, task, rows, max_len, split, cut) for split, rows in data.items() if split != "train"}
    model.to(device)
    if args.eval_only:
        metrics = {split: evaluate(model, encoded[split], task, args, device, data[split]) for split in task.dev}
        print(json.dumps(metrics))
        return {"eval": metrics}
    encoded["train"] = encode(tok, task, train_rows, max_len, "train", cut)
    return fit(model, encoded, task, args, device, on_step, data, cut)


def forward_backward(model, encoded, rows, args, device):
    """The forward and backward passes of one optimizer step whose examples are `rows`, over this process's share
    of them, in --grad-accum passes. Each pass's mean loss is weighted by its share of the step's examples, so the
    gradients summed over passes and processes are those of the mean loss over all the rows, even when the short
    last batch of an epoch splits unevenly. Returns that mean loss, the same in every process."""
    loss_sum = torch.zeros((), device=device)
    for part in dist.my_share(rows, args.grad_accum):
        if len(part) == 0:  # a short last batch can leave a pass (or a whole process) without examples
            continue
        batch = to_device(collate(encoded, part), model.cfg, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            _, loss = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"],
                            batch.get("choices"))
        weight = len(part) / len(rows)  # 1.0 in one process without accumulation: exactly the plain mean loss
        loss = loss + aux_loss(model)  # MixLoRA's load-balancing loss (0 for every other method)
        (loss * weight).backward()
        loss_sum += loss.detach() * weight
    return dist.sum_(loss_sum).item()  # the step's one device-to-host read, for the non-finite check and the log


def fit(model, encoded, task, args, device, on_step=None, examples=None, cut=None):
    out = Path(args.out)
    ckpt, log_path, best_path = out / "checkpoint.pt", out / "eval.jsonl", out / "adapters.safetensors"
    n = len(encoded["train"])
    per_step = args.batch_size * dist.world() * args.grad_accum  # the examples of one optimizer step
    steps_per_epoch = math.ceil(n / per_step)
    total = min(args.epochs * steps_per_epoch, args.max_steps or math.inf)
    print(f"{per_step} examples per optimizer step (--batch-size {args.batch_size} x {dist.world()} process"
          f"{'es' if dist.world() > 1 else ''} x --grad-accum {args.grad_accum}), {steps_per_epoch} steps an epoch")
    opt = make_optimizer(model, args)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(math.ceil(args.warmup * total), total))
    progress = dict(step=0, epoch=0, step_in_epoch=0, best=None, best_metrics=None, bad_evals=0, epoch_times=[],
                    epoch_loss=0.0)  # the sum of this epoch's step losses, carried over a resume
    if dist.world() > 1:  # each process draws its own dropout masks (a resumed run restores each one's state)
        torch.manual_seed(args.seed + 1_000_003 * (dist.rank() + 1))
    if ckpt.exists() and not args.resume:
        raise TrainError(f"{out} holds a checkpoint of an earlier run: pass --resume to continue it, or choose "
                         f"another --out (nothing was overwritten)")
    if ckpt.exists():
        progress = load_checkpoint(ckpt, model, opt, sched, args)
        print(f"resumed from {ckpt} at step {progress['step']} (epoch {progress['epoch']})")
    elif args.resume:
        print(f"no checkpoint in {out}: starting from the beginning")
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        if progress["step"] == 0 and log_path.exists():
            log_path.unlink()  # a fresh run: no lines from a run that never checkpointed
    model.train()
    select = task.select
    run_info = {"task": task.name, "model": args.model, "tokenizer": args.tokenizer, "random_init": args.random_init}

    def evaluation(epoch, **train_stats):
        """Evaluate, log a line, keep the best adapters; True when --patience evaluations brought no improvement."""
        metrics = {split: evaluate(model, encoded[split], task, args, device, (examples or {}).get(split))
                   for split in task.dev}
        line = {"epoch": epoch, "step": progress["step"], "lr": sched.get_last_lr()[0], **train_stats, **metrics}
        if dist.is_main():
            with open(log_path, "a") as f:
                f.write(json.dumps(line) + "\n")
        tqdm.write(json.dumps(line))
        progress["last_metrics"] = line
        score = metrics[task.dev[0]][select]  # the same in every process, and so is the early-stop decision
        if progress["best"] is None or score > progress["best"]:
            progress.update(best=score, best_metrics=line, bad_evals=0)
            if dist.is_main():
                save_adapters(model, best_path, run_info)
            return False
        progress["bad_evals"] += 1
        if args.patience and progress["bad_evals"] >= args.patience:
            tqdm.write(f"early stop: no better {select} for {args.patience} evaluations")
            return True
        return False

    bar = tqdm(total=total, initial=progress["step"], dynamic_ncols=True,
               disable=None if dist.is_main() else True)  # None: no bar when stderr is not a terminal: log lines
    log = ProgressLog(args.log_every, total, per_step, enabled=bar.disable and dist.is_main())
    stop = progress["step"] >= total or 0 < args.patience <= progress["bad_evals"]
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    state = [p for n, p in trained.items() if n.endswith((".W_c", ".W_d"))]  # SSMLoRA's state matrices
    others = [p for n, p in trained.items() if not n.endswith((".W_c", ".W_d"))]
    while progress["epoch"] < args.epochs and not stop:
        epoch, t0 = progress["epoch"], time.time()
        bar.set_description(f"{task.name} {args.method} epoch {epoch + 1}/{args.epochs}")
        # The epoch's order depends only on (seed, epoch), the same in every process; a resumed run redraws it and
        # skips what was done. Step i takes the examples order[i * per_step:(i + 1) * per_step], however many
        # processes and passes share them.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch)).numpy()
        for i in range(progress["step_in_epoch"], steps_per_epoch):
            value = forward_backward(model, encoded["train"], order[i * per_step:(i + 1) * per_step], args, device)
            if not math.isfinite(value):  # the loss summed over processes: all of them stop here together
                raise TrainError(f"non-finite loss ({value}) at step {progress['step'] + 1}; stopped. The last "
                                 f"good checkpoint is {ckpt if ckpt.exists() else 'not written yet'}: try a lower --lr")
            dist.sum_gradients(state + others)  # every process now holds the whole step's gradients: the same step
            clip_gradients(others, state, args.clip, args.clip_mode)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            progress["step"] += 1
            progress["step_in_epoch"] = i + 1
            progress["epoch_loss"] += value
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}", refresh=False)  # drawn by update
            bar.update(1)
            log.step(progress["step"], epoch + 1, value, sched.get_last_lr()[0])
            if args.eval_every and progress["step"] % args.eval_every == 0 and i + 1 < steps_per_epoch \
                    and progress["step"] < total:  # (an epoch's last step is evaluated below)
                stop = evaluation(round(epoch + (i + 1) / steps_per_epoch, 4),
                                  train_loss=progress["epoch_loss"] / progress["step_in_epoch"])
                save_checkpoint(ckpt, model, opt, sched, progress, args)  # so that a resumed run logs it once
            elif progress["step"] % args.save_every == 0:
                save_checkpoint(ckpt, model, opt, sched, progress, args)
            if on_step:
                on_step(progress["step"])
            if stop or progress["step"] >= total:
                break
        if stop:  # an early stop in the middle of an epoch
            break
        # an epoch ends (or the step budget does): evaluate, keep the best, maybe stop early
        progress["epoch_times"].append(time.time() - t0)
        stop = evaluation(epoch + 1, train_loss=progress["epoch_loss"] / progress["step_in_epoch"],
                          epoch_seconds=round(progress["epoch_times"][-1], 2)) or progress["step"] >= total
        progress.update(epoch=epoch + 1, step_in_epoch=0, epoch_loss=0.0)
        save_checkpoint(ckpt, model, opt, sched, progress, args)
    bar.close()
    results = {"task": task.name, "model": args.model, "method": args.method,
               "rank": args.rank if args.method in LOW_RANK else None,
               "params": param_report(model), "select": select, "best": progress["best_metrics"],
               "final": progress.get("last_metrics"), "steps": progress["step"], "examples_per_step": per_step,
               "processes": dist.world(), "epoch_seconds": progress["epoch_times"],
               "peak_memory_bytes": peak_memory(device), "device": str(device), "passage_cut": cut or None,
               "args": vars(args)}
    if dist.is_main():
        atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    others = ", ".join(f"{k} {v:.4f}" for k, v in progress["best_metrics"][task.dev[0]].items() if k != select)
    print(f"best {select} {progress['best']:.4f}{f' ({others})' if others else ''}; adapters in {best_path}; "
          f"results in {out / 'results.json'}")  # RACE: best all ... (middle ..., high ...)
    return results


class ProgressLog:
    """When stderr is not a terminal (a log file, a batch job) there is no bar: print a line every `every` steps or
    every minute, whichever comes first, with the mean loss since the last line and the examples per second."""

    def __init__(self, every, total, per_step, enabled, seconds=60.0):
        self.every, self.total, self.per_step, self.enabled, self.seconds = every, total, per_step, enabled, seconds
        self.t, self.losses = time.time(), []

    def step(self, step, epoch, loss, lr):
        if not self.enabled:
            return
        self.losses.append(loss)
        now = time.time()
        if step % self.every and now - self.t < self.seconds and step != self.total:
            return
        rate = len(self.losses) * self.per_step / max(now - self.t, 1e-9)
        print(f"step {step}/{self.total} epoch {epoch} loss {sum(self.losses) / len(self.losses):.4f} lr {lr:.2e} "
              f"{rate:.1f} examples/s", flush=True)
        self.t, self.losses = now, []


def main(argv=None, on_step=None):
    try:
        args = get_args(argv)
        if args.threads:
            torch.set_num_threads(args.threads)
        run(args, on_step)
        return
    except (UserError, ValueError, OSError) as e:
        message = f"error: {e}"
    except KeyboardInterrupt:
        message = "interrupted: continue with the same command plus --resume"
    except SystemExit as e:  # the argument parser's one-line error
        message = e.code
    finally:
        dist.close()
    sys.exit(message if dist.is_main() else 1)  # under torchrun every process meets the same end: rank 0 says it


if __name__ == "__main__":
    main()
