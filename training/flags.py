"""
train.py's command line: every flag with its default and its help, the checks that turn a mistake into one line,
and, for --eval-only, the settings the adapter file recorded. The adapter defaults (rank 8, alpha 16, dropout 0.1,
the targets) are ssmlora.Adapters' own; the task's learning rate and epochs are tasks.RECIPE's.
"""
import math
from dataclasses import fields
from pathlib import Path

import torch

from files import check_new
from files.adapters import check_base_is_there, read_run
from interop.peft import is_peft_folder, read_peft_run
from mamba.model import PRESETS as MAMBA_PRESETS
from mamba.sdt import RHOS
from model import PRESETS
from ssmlora import DEFAULT_TARGETS, LOW_RANK, METHODS, STATES, Adapters, default_targets
from tasks import FULL_RECIPE, RECIPE, TASK_NAMES, get_task, lengths
from training import dist
from training.build import check_preset
from training.cli import OneLineParser, UserError, check_backend
from training.evaluate import DTYPES, default_dtype

ADAPTER = {f.name: f.default for f in fields(Adapters) if f.name in ("rank", "alpha", "dropout", "state")}
SDT = {"sdt_warmup": 250, "sdt_rho": 0.75, "alpha": 8.0}  # the authors' configs: 250 or 500 warm-up steps, rho 0.75,
# 0.9 or 0.95, and their LoRA beside SDT scaled by 1 (alpha = r = 8), where ours defaults to alpha 16
# what --eval-only never reads: the file holds the adapters as trained (--seed: from_file, which may need it)
TRAINING_ONLY = ("method", "rank", "alpha", "dropout", "targets", "sparse", "state", "sdt_warmup", "sdt_rho", "lr",
                 "epochs", "grad_accum", "warmup", "weight_decay", "clip", "clip_mode", "patience", "max_steps",
                 "max_train", "eval_every", "out", "save_every", "log_every", "trace_gradients", "resume", "compile")
DESCRIPTION = ("Fine-tune a transformer on a GLUE, SuperGLUE, RACE, SQuAD or NarrativeQA task with SSMLoRA or one of "
               "the paper's baselines.")


def parser():
    p = OneLineParser(prog="train.py", description=DESCRIPTION)
    p.add_argument("--task", help=f"{TASK_NAMES} (with --eval-only: the file's own)")
    p.add_argument("--model", help="hub name, local checkpoint folder, or (with --random-init) a preset: "
                   f"{', '.join([*PRESETS, *MAMBA_PRESETS])} (default: roberta-base; with --eval-only: the file's "
                   "own)")
    p.add_argument("--method", choices=[m for m in METHODS if m != "none"],
                   help="default: ssmlora; qlora and mixlora: the Table 1 baselines in baselines/; sdt: Sparse "
                   "Dimension Tuning + LoRA, Mamba only (mamba/sdt.py, docs/mamba.md)")
    a = p.add_argument_group("adapters (--method ssmlora, lora, qlora, mixlora or sdt only)")
    a.add_argument("--rank", type=int, help=f"r, the rank of W_a and W_b (default: {ADAPTER['rank']})")
    a.add_argument("--alpha", type=float, help=f"scaling s = alpha / rank (default: {ADAPTER['alpha']:g}; sdt: "
                   f"{SDT['alpha']:g}). The authors' code scales by alpha itself: pass their alpha times the rank to "
                   "match it")
    a.add_argument("--dropout", type=float, help=f"adapter dropout: on h_norm for SSMLoRA, on x for LoRA (default: "
                   f"{ADAPTER['dropout']})")
    a.add_argument("--targets", help="comma-separated, of query,key,value,attn_out,ffn_in,ffn_out; qkv (query, key "
                   "and value as one projection: GPT-2 as the paper adapts it); ffn_gate (LLaMA's gate); head (an "
                   "adapter on the task head's last linear, which then stays frozen); Mamba's in_proj, x_proj, "
                   "dt_proj, out_proj (default: query,value; "
                   + "; ".join(f"{m}: {','.join(t)}" for m, t in DEFAULT_TARGETS.items())
                   + f"; qlora's and mixlora's are Table 1's, qlora's every linear of a block: ffn_gate on LLaMA "
                   f"only; on a Mamba, lora's and ssmlora's: {','.join(default_targets('lora', 'mamba'))})")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--sparse", dest="sparse", action="store_true", default=None,
                   help="alternate the attention targets over the layers: query in even layers, value in odd; "
                   "a single one, every other layer (SSMLoRA's default)")
    g.add_argument("--dense", dest="sparse", action="store_false",
                   help="every target in every layer (LoRA's default)")
    a.add_argument("--state", help=f"SSMLoRA's state lifetime: {' or '.join(STATES)} (the authors' code; "
                   f"default: {ADAPTER['state']})")
    a.add_argument("--sdt-warmup", type=int, help="--method sdt: optimizer steps of the warm-up that picks the "
                   f"channels and states (default: {SDT['sdt_warmup']}; the authors' configs: 250 or 500)")
    a.add_argument("--sdt-rho", type=float, help="--method sdt: the share of a kept channel's states left frozen, in "
                   f"[0, 1) (default: {SDT['sdt_rho']}; the authors' configs: {', '.join(map(str, RHOS))})")
    o = p.add_argument_group("optimisation (the defaults: the LoRA paper's RoBERTa-base recipe, README)")
    o.add_argument("--lr", type=float, help="learning rate (default: the task's recipe)")
    o.add_argument("--epochs", type=int, help="at most this many epochs (default: the task's recipe)")
    o.add_argument("--batch-size", type=int, default=16, help="examples per forward pass, in each process "
                   "(default: %(default)s)")
    o.add_argument("--grad-accum", type=int, default=1, help="forward passes per optimizer step: a step sees "
                   "batch-size x processes x grad-accum examples (default: %(default)s)")
    o.add_argument("--max-len", type=int, help="tokens per example (QA: per window), special tokens included "
                   "(default: 512, QA 384, or fewer if the model's position table is shorter; with --eval-only: the "
                   "file's own)")
    o.add_argument("--doc-stride", type=int, help="QA (squad, narrativeqa) only: context tokens two consecutive "
                   "windows of a long context share (default: 128; with --eval-only: the file's own)")
    o.add_argument("--warmup", type=float, default=0.06, help="fraction of the steps spent warming up, in [0, 1) "
                   "(default: %(default)s)")
    o.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's, on matrices only (default: %(default)s)")
    o.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (default: %(default)s)")
    o.add_argument("--clip-mode", default="state", choices=("state", "global"), help="state: SSMLoRA's W_c, W_d "
                   "first clipped on their own to at most the norm of the other gradients, then everything together; "
                   "global: one norm over every trained tensor (default: state; README: the W_d gradient spike)")
    o.add_argument("--patience", type=int, default=5, help="stop after this many evaluations without improvement "
                   "on the task's selection metric; 0: never (default: %(default)s)")
    o.add_argument("--seed", type=int, help="seeds the adapters, the head, the data order and a --random-init base "
                   "(default: 0; with --eval-only: the file's own)")
    o.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (SDT: its warm-up too)")
    o.add_argument("--max-train", type=int, help="use only the first N training examples")
    o.add_argument("--max-eval", type=int, help="evaluate only the first N examples (questions) of each dev split: "
                   "a quick look, recorded in results.json; the paper's numbers use them all")
    o.add_argument("--eval-every", type=int, default=0, help="also evaluate every N optimizer steps; 0: only at "
                   "the end of each epoch (default: %(default)s)")
    m = p.add_argument_group("machine")
    m.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if available")
    m.add_argument("--dtype", choices=DTYPES, help="autocast precision of the forward pass; eqs. (3)-(8) stay in "
                   "float32 (default: bf16 on CUDA, fp32 on the CPU)")
    m.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND", help="torch.compile the model (whole "
                   "graph; backend inductor, or the one named: eager traces only, as the tests do); batches are padded "
                   "to powers of two, so only a few lengths compile")
    m.add_argument("--threads", type=int, help="CPU threads (default: the cores not kept busy by other work, from "
                   "the load average, at least 1: all of them on a quiet machine, 1 on a busy small one)")
    f = p.add_argument_group("files")
    f.add_argument("--data-dir", help="local data folder, offline: GLUE's (data-dir/SST-2/train.tsv), SuperGLUE's "
                   "(data-dir/BoolQ/train.jsonl), RACE's (data-dir/RACE/train/middle/1.txt), SQuAD's "
                   "(data-dir/SQuAD/train-v1.1.json) or NarrativeQA's (data-dir/NarrativeQA/qaps.csv and "
                   "summaries.csv); with --eval-only: the run's own, if it is still there")
    f.add_argument("--cache-dir", help="where downloaded files are kept (default: ~/.cache/ssmlora/<benchmark>: "
                   "glue, superglue, race, squad or narrativeqa)")
    f.add_argument("--tokenizer", help="tokenizer folder (default: the checkpoint's)")
    f.add_argument("--out", help="output folder (default: out/<task>-<method>[-r<rank>])")
    f.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps, and at every evaluation "
                   "(default: %(default)s)")
    f.add_argument("--log-every", type=int, default=100, help="when output is not a terminal, a progress line every "
                   "N steps or every minute, whichever comes first (default: %(default)s)")
    f.add_argument("--length-bins", default=lengths.DEFAULT, help="every evaluation also reports its metric per "
                   "bin of input tokens: a width (200: 0-200, ..., 800-1000, 1000+), width:top (200:1400, Table 5's "
                   "columns), or edges (0,256,512,1024); 0: off (default: %(default)s)")
    f.add_argument("--trace-gradients", metavar="FILE", help="write each step's loss, gradient norms before "
                   "clipping and update norms per kind of tensor (W_a, W_b, W_c, W_d, head) to FILE, as JSON lines: "
                   "what python -m reproduce.spike compares. A new file; a run continued with --resume goes on with "
                   "its own, from its checkpoint's step")
    r = p.add_argument_group("modes")
    r.add_argument("--dry-run", action="store_true", help="build the model, print the parameter report, exit")
    r.add_argument("--random-init", action="store_true", help="random weights: a preset or a folder's config.json")
    r.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    r.add_argument("--eval-only", metavar="ADAPTERS", help="evaluate a saved adapters.safetensors, or a PEFT LoRA "
                   "folder, on the dev set (as trained: the flags of training are refused)")
    return p


def parse(argv=None):
    """The run's settings from the command line, checked and completed with the task's recipe."""
    p = parser()
    args = p.parse_args(argv)
    stride_given = args.doc_stride is not None  # --eval-only fills it in from the file below
    if args.data_dir and args.cache_dir:
        p.error("--cache-dir would change nothing: it is where downloads go, and with --data-dir (offline) nothing is "
                "downloaded")
    if args.eval_only:
        default = vars(p.parse_args([]))
        idle = [f"--{k.replace('_', '-')}" for k in TRAINING_ONLY if getattr(args, k) != default[k]]
        if idle:
            p.error(f"{apply(idle)} to training, not to --eval-only, which evaluates the file's adapters as trained "
                    "and writes nothing")
        from_file(args)
    if args.task is None:
        p.error("the following arguments are required: --task")
    task = get_task(args.task)  # unknown task: an error before anything is loaded
    args.task, args.model = task.name, args.model or "roberta-base"
    if task.shape != "span" and stride_given:
        p.error(f"--doc-stride applies to the QA tasks (squad, narrativeqa) only, not {task.name}")
    args.max_len = (384 if task.shape == "span" else 512) if args.max_len is None else args.max_len
    args.doc_stride = 128 if args.doc_stride is None else args.doc_stride
    args.dtype = args.dtype or default_dtype(torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available()
                                                          else "cpu"))
    try:
        args.bins = None if args.length_bins.strip() in ("0", "off") else lengths.edges(args.length_bins)
    except ValueError as e:
        p.error(str(e))
    given = [f"--{k}" for k in ("rank", "alpha", "dropout", "targets", "state") if getattr(args, k) is not None]
    given += ["--sparse/--dense"] * (args.sparse is not None)
    sdt_given = [f"--{k.replace('_', '-')}" for k in ("sdt_warmup", "sdt_rho") if getattr(args, k) is not None]
    args.method = args.method or "ssmlora"
    args.seed = 0 if args.seed is None else args.seed
    adapted = args.method in LOW_RANK
    if given and not adapted and not args.eval_only:
        p.error(f"{apply(given)} to --method {', '.join(LOW_RANK)} only, not {args.method}")
    if sdt_given and args.method != "sdt" and not args.eval_only:
        p.error(f"{apply(sdt_given)} to --method sdt only, not {args.method}")
    defaults = {**ADAPTER, **SDT, "alpha": SDT["alpha"] if args.method == "sdt" else ADAPTER["alpha"]}
    for k, v in defaults.items():
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    lr, epochs = FULL_RECIPE if args.method == "full" else RECIPE[args.task]
    args.lr = lr if args.lr is None else args.lr
    args.epochs = epochs if args.epochs is None else args.epochs
    args.out = args.out or f"out/{args.task}-{args.method}" + (f"-r{args.rank}" if adapted else "")
    resumed = args.resume and (Path(args.out) / "checkpoint.pt").exists()  # it continues its own trace, if any
    if args.trace_gradients and not (resumed and Path(args.trace_gradients).is_file()):
        try:  # two runs into one trace would mix their steps
            check_new(args.trace_gradients, "--trace-gradients")
        except OSError as e:
            p.error(str(e))
    if args.random_init:
        try:
            check_preset(args.model)
        except ValueError as e:
            p.error(str(e))
    if args.random_init and not (args.dry_run or args.tokenizer or Path(args.model).is_dir()):
        p.error(f"--random-init with the preset {args.model} has no tokenizer to read the data with: pass "
                f"--tokenizer with a checkpoint folder of the same family (or use --dry-run)")
    at_least_1 = ("batch_size", "grad_accum", "epochs", "max_len", "doc_stride", "save_every", "log_every",
                  "max_steps", "max_train", "max_eval", "threads")
    for k in at_least_1:
        if getattr(args, k) is not None and getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be at least 1, got {getattr(args, k)}")
    if args.sdt_warmup < 1 or not 0 <= args.sdt_rho < 1:
        p.error(f"--sdt-warmup must be at least 1 and --sdt-rho lie in [0, 1), got {args.sdt_warmup} and "
                f"{args.sdt_rho}")
    if not 0 <= args.warmup < 1:
        p.error(f"--warmup is a fraction of the steps, in [0, 1), got {args.warmup}")
    if args.patience < 0 or args.eval_every < 0 or not (0 <= args.weight_decay < math.inf and 0 < args.lr < math.inf
                                                          and args.clip > 0):  # written so that NaN fails too
        p.error("--patience and --weight-decay must be at least 0 (--eval-every too), --lr and --clip above 0 "
                "(--lr and --weight-decay finite)")
    where = next(f for f in (Path(args.out), *Path(args.out).absolute().parents) if f.exists())
    if not args.dry_run and not where.is_dir():  # before the model and the data are loaded
        p.error(f"--out {args.out} cannot be a folder: {where} is a file")
    if args.state == "carry" and dist.world() > 1:
        p.error("--state carry keeps one state per process under torchrun, which is not the authors' "
                "single-process behaviour: run it as one process (python train.py)")
    if args.compile:  # an unknown backend was a traceback at the first step: after loading, tokenising, SDT's warm-up
        try:
            check_backend(args.compile, "--compile")
        except ValueError as e:
            p.error(str(e))
    return args


def apply(flags):
    """"--rank applies", "--rank, --alpha apply": the verb agrees with the flags given."""
    return f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'}"


def trained_task(run, task, adapters):
    """The task an adapter file's run trained on; --task only where the file names none (a PEFT folder)."""
    if task and run.get("task") and get_task(task).name != run["task"]:
        raise UserError(f"{adapters} holds adapters trained on {run['task']}, not {task}: use it on {run['task']} "
                        "(leave --task out)")
    return run.get("task") or task


def from_file(args):
    """--eval-only: the task, base model, tokenizer and data the adapters were trained with, unless given again."""
    run = read_peft_run(args.eval_only) if is_peft_folder(args.eval_only) else read_run(args.eval_only)
    run["task"] = trained_task(run, args.task, args.eval_only)
    if args.seed is not None and (run.get("seed") is not None or not run.get("random_init")):
        raise UserError(f"--seed would do nothing with --eval-only: {args.eval_only} " + (
            f"records its run's seed ({run['seed']}), from which its random base is drawn" if run.get("random_init")
            else "was trained on a checkpoint, not a random base") + "; leave --seed out")
    for k in ("task", "model", "tokenizer", "max_len", "doc_stride", "seed"):  # these change the metric: the run's
        if getattr(args, k) is None:
            setattr(args, k, run.get(k))
    if args.data_dir is None and run.get("data_dir") and Path(run["data_dir"]).is_dir():
        args.data_dir = run["data_dir"]  # the data it trained on, if it is still there (else the download cache)
    if args.model == run.get("model"):  # the file's own base, not one given with --model
        check_base_is_there(run, args.eval_only)
    if args.random_init and not run.get("random_init"):  # random weights under adapters trained on a checkpoint
        raise UserError(f"--random-init with --eval-only: {args.eval_only} was trained on the checkpoint "
                        f"{run.get('model')}, not on random weights; leave --random-init out")
    args.random_init = args.random_init or run.get("random_init", False)
    if is_peft_folder(args.eval_only) and not args.model:
        raise UserError(f"{args.eval_only} does not name its base model (base_model_name_or_path): pass --model")
