"""
Fine-tune a RoBERTa / BERT / GPT-2 / LLaMA / DeBERTa on a GLUE, SuperGLUE, RACE, SQuAD or NarrativeQA task with
SSMLoRA or one of the paper's baselines.

    python train.py --task sst2 --rank 8                       # roberta-base, SSMLoRA, the LoRA paper's recipe
    python train.py --task boolq --rank 8                      # SuperGLUE, evaluated on val
    python train.py --task race --rank 8                       # RACE: dev accuracy for All, Middle and High
    python train.py --task squad --model microsoft/deberta-v3-base   # extractive QA (Table 3): F1 and EM
    python train.py --task narrativeqa --length-bins 200:1400  # ROUGE-L, and by input length as Table 5
    python train.py --task rte --method lora --model ./roberta-base
    python train.py --task mrpc --dry-run --random-init --model roberta-large    # parameter report, no download
    python train.py --task sst2 --resume                       # continue a killed run from its last checkpoint
    python train.py --task sst2 --eval-only out/sst2-ssmlora-r8/adapters.safetensors
    torchrun --standalone --nproc_per_node=4 train.py --task mnli   # data-parallel: 4 GPUs (or CPU processes)

Writes to --out: eval.jsonl (one line per evaluation), adapters.safetensors (the best adapters + head, small),
checkpoint.pt (everything needed to resume), results.json (at the end). Every evaluation also reports its metric
by bins of input length (--length-bins), printed as a table at the end. Under torchrun only rank 0 writes.
"""
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from baselines import aux_loss
from data import collate
from files import atomic_write
from files.adapters import save_adapters
from files.hub import resolve
from files.tokenizer import load_tokenizer
from mamba import sdt
from ssmlora import LOW_RANK, Adapters, format_report, param_report
from tasks import encode, get_task, lengths, load_data
from training import dist, flags
from training.build import build_model, to_device
from training.cli import TrainError, free_cores, pick_device
from training.evaluate import autocast, evaluate_dev, trivial_scores
from training.optim import clip_gradients, lr_lambda, make_optimizer
from training.progress import ProgressLog, fmt, peak_memory
from training.trace import GradientTrace
from training.resume import (interrupt_at_step_boundary, load_checkpoint, read_checkpoint, save_checkpoint,
                             sigterm_stops_at_once)


def run(args, on_step=None):
    """Train (or evaluate) as args say; returns the results dict. on_step(step, model) is called after each step."""
    task = get_task(args.task)
    device = dist.init(pick_device(args.device))  # under torchrun: join the other processes
    args.world_size = dist.world()
    torch.manual_seed(args.seed)  # the same in every process: the same initial adapters and head everywhere
    adapters = None if args.eval_only else Adapters(args.method, args.rank, args.alpha, args.dropout, args.targets,
                                                    args.sparse, args.state)  # checks the settings first
    family_targets = adapters is not None and args.targets is None  # the default for the base's family
    if args.dry_run:  # on the meta device: counts without allocating, so roberta-large takes no time
        model = build_model(task, args.model, args.random_init, adapters, args.eval_only, meta=args.random_init,
                            family_targets=family_targets)
        if adapters is not None and adapters.method == "sdt":  # the warm-up's count, then the main run's
            print(f"SDT warm-up: {param_report(model)['trainable']:,} trainable (a dense delta on A_log, LoRA, head)")
            model = build_model(task, args.model, args.random_init, model.adapters, meta=args.random_init,
                                selection=sdt.placeholder(model.cfg, args.sdt_rho))
        print(format_report(report := param_report(model)))
        return {"params": report}
    with dist.main_first():  # rank 0 downloads what is missing; the others then read the caches
        print(f"loading {args.model}", flush=True)
        model = build_model(task, args.model, args.random_init, adapters, args.eval_only,
                            family_targets=family_targets, seed=args.seed)
        if adapters is not None:
            args.targets = ",".join(model.adapters.targets)  # recorded as used (results.json, checkpoint.pt)
        tok = load_tokenizer(resolve(args.tokenizer or (args.model if args.random_init else model.source)),
                             family=model.cfg.family)
        print(f"reading {task.name}", flush=True)
        data = load_data(task, args)
    print(format_report(param_report(model)))
    max_len = args.max_len_used = min(args.max_len, model.cfg.max_tokens)  # results.json records what is used
    args.pad_to = max_len if args.compile else None  # compiled: batches padded to a few lengths (data.padded)
    if max_len < args.max_len:
        print(f"--max-len {args.max_len} is more than this model's {max_len} positions: using {max_len}")
    args.capped = {}  # the dev splits --max-eval cuts, and to how many: results.json records a cap only if one did
    for split in task.dev if args.max_eval else ():  # the first N, so that every run evaluates the same ones
        if len(data[split]) > args.max_eval:
            print(f"{split}: evaluating the first {args.max_eval:,} of {len(data[split]):,} examples (--max-eval)")
            data[split], args.capped[split] = data[split][:args.max_eval], args.max_eval
        else:
            print(f"{split}: all {len(data[split]):,} examples are evaluated (--max-eval {args.max_eval:,} is more)")
    cut = {}
    print("tokenising", flush=True)
    encoded = {split: encode(tok, task, data[split], max_len, split, cut, args.doc_stride) for split in task.dev}
    model.to(device)
    trivial = trivial_scores(task, encoded[task.dev[0]], data[task.dev[0]])  # what learning nothing scores
    if trivial:
        print(f"{task.dev[0]}: a model that learned nothing scores {fmt(trivial)}")
    if args.eval_only:
        metrics, by_length = evaluate_dev(model, encoded, data, task, args, device)
        print(json.dumps(metrics))
        print_by_length(by_length, capped=args.capped)
        return {"eval": metrics, "by_length": by_length, "max_eval": args.max_eval if args.capped else None}
    train_rows = data["train"][:args.max_train] if args.max_train else data["train"]
    encoded["train"] = encode(tok, task, train_rows, max_len, "train", cut, args.doc_stride)
    if len(encoded["train"]) == 0:
        raise TrainError(f"{task.name}: no training examples are left to train on (see the data: lines above)")
    if adapters.method == "sdt":
        model = sdt_main_model(model, encoded["train"], task, args, device)
    return fit(model, encoded, data, task, args, device, cut, trivial, on_step)


def fit(model, encoded, data, task, args, device, cut, trivial, on_step=None):
    """The training loop: a step, maybe an evaluation, maybe a checkpoint, until the steps or the patience run out."""
    out = Path(args.out)
    ckpt, best_path = out / "checkpoint.pt", out / "adapters.safetensors"
    n, per_step = len(encoded["train"]), args.batch_size * dist.world() * args.grad_accum  # examples of one step
    steps_per_epoch = math.ceil(n / per_step)
    total = min(args.epochs * steps_per_epoch, args.max_steps or math.inf)
    print(f"{per_step} examples per optimizer step (--batch-size {args.batch_size} x {dist.world()} process"
          f"{'es' if dist.world() > 1 else ''} x --grad-accum {args.grad_accum}), {steps_per_epoch} steps an epoch")
    refuse_earlier_run(out, args.resume)
    opt = make_optimizer(model, args.lr, args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(math.ceil(args.warmup * total), total))
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")  # fp16's small gradients underflow
    progress = dict(step=0, best=None, best_metrics=None, last_metrics=None, bad_evals=0, epoch_times=[],
                    epoch_loss=0.0, epoch_elapsed=0.0)  # epoch_loss: the sum of this epoch's step losses
    if dist.world() > 1:  # each process draws its own dropout masks (a resumed run restores each one's state)
        torch.manual_seed(args.seed + 1_000_003 * (dist.rank() + 1))
    if ckpt.exists():
        print(f"loading the checkpoint {ckpt}", flush=True)
        progress = {**progress, **load_checkpoint(ckpt, model, opt, sched, args, scaler)}
        epoch, i = divmod(progress["step"], steps_per_epoch)
        print(f"resumed from {ckpt} after step {progress['step']:,}: epoch {epoch + 1}, step {i} of {steps_per_epoch}")
    elif args.resume:
        print(f"no checkpoint in {out}: starting from the beginning")
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
    forward = compiled(model, args.compile)
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    state = [p for name, p in trained.items() if name.endswith((".W_c", ".W_d"))]  # SSMLoRA's state matrices
    others = [p for name, p in trained.items() if not name.endswith((".W_c", ".W_d"))]
    trace = GradientTrace(args.trace_gradients, trained, progress["step"]) if args.trace_gradients and dist.is_main() \
        else None
    bar = tqdm(total=total, initial=progress["step"], dynamic_ncols=True,
               disable=None if dist.is_main() else True)  # None: no bar when stderr is not a terminal: log lines
    log = ProgressLog(args.log_every, total, per_step, enabled=bar.disable and dist.is_main())
    stop = 0 < args.patience <= progress["bad_evals"]
    order, t0 = None, time.time() - progress["epoch_elapsed"]
    model.train()
    with interrupt_at_step_boundary() as interrupt:  # Ctrl-C or SIGTERM: stop after the step, saved
        while progress["step"] < total and not stop:
            epoch, i = divmod(progress["step"], steps_per_epoch)
            if order is None or i == 0:  # the epoch's order depends only on (seed, epoch): a resumed run redraws it
                order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
                bar.set_description(f"{task.name} {args.method} epoch {epoch + 1}/{args.epochs}")
                t0 = t0 if i else time.time()
            rows = order[i * per_step:(i + 1) * per_step].numpy()  # however many processes and passes share them
            where = (f"step {progress['step'] + 1} (the last good checkpoint is "
                     f"{ckpt if ckpt.exists() else 'not written yet'})")
            loss = optimizer_step(forward, model, encoded["train"], rows, opt, scaler, state, others, args, device,
                                  where, trace)
            sched.step()
            progress["step"] += 1
            progress["epoch_loss"] += loss
            step, lr, end_of_epoch = progress["step"], sched.get_last_lr()[0], i + 1 == steps_per_epoch
            if trace:
                trace.after_update(step, loss)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            bar.update(1)
            log.step(step, epoch + 1, loss, lr)
            evaluate_now = end_of_epoch or step == total or (args.eval_every and step % args.eval_every == 0)
            if evaluate_now:  # keeps the best adapters; stop: --patience evaluations brought no improvement
                seconds = time.time() - t0
                line = {"epoch": epoch + 1 if end_of_epoch or step == total else round(epoch + (i + 1) /
                        steps_per_epoch, 4), "step": step, "lr": lr, "train_loss": progress["epoch_loss"] / (i + 1)}
                if end_of_epoch or step == total:
                    progress["epoch_times"].append(round(seconds, 2))
                    line["epoch_seconds"] = round(seconds, 2)
                metrics, by_length = evaluate_dev(forward, encoded, data, task, args, device)
                line.update(metrics, **({"by_length": by_length} if by_length else {}))
                stop = keep_best(model, line, progress, task, args, best_path)
            if end_of_epoch:
                progress.update(epoch_loss=0.0)
            progress["epoch_elapsed"] = 0.0 if end_of_epoch else time.time() - t0
            if evaluate_now or step % args.save_every == 0:
                save_checkpoint(ckpt, model, opt, sched, progress, args, scaler)
            if on_step:
                on_step(step, model)
            if interrupt.asked:  # the step is whole now, so it can be saved exactly
                save_checkpoint(ckpt, model, opt, sched, progress, args, scaler)
                raise KeyboardInterrupt(f"after step {step}, saved in {ckpt}")
    bar.close()
    return finish(model, progress, task, args, device, out, per_step, cut, trivial)


def sdt_main_model(warm, encoded, task, args, device):
    """SDT's steps 1 and 2 (mamba/sdt.py): --sdt-warmup optimizer steps (at most --max-steps) of the warm-up model
    (a dense delta on A_log, LoRA, head) as fit's steps but at a constant --lr and with no evaluation, then the
    selection; returns the main run's model, built again from the pretrained weights (a random base: from the same
    seed). A resumed run reuses its checkpoint's selection."""
    ckpt = Path(args.out) / "checkpoint.pt"
    if args.resume and ckpt.exists():
        selection = read_checkpoint(ckpt, args).get("places")  # its settings are checked first: the same method
        try:
            if not selection:
                raise ValueError("it has none")
            sdt.from_indices(selection, warm.cfg)
        except ValueError as e:
            raise TrainError(f"{ckpt}: its SDT selection does not fit this model ({e}); it is corrupt: delete it "
                             "to start over") from None
        print(f"SDT: the channels and states chosen before, from {ckpt}")
    else:
        refuse_earlier_run(Path(args.out), args.resume)  # before the warm-up's time is spent
        selection = warm_up(warm, encoded, args, device)
    adapters = warm.adapters
    del warm  # the warm-up's weights are discarded
    model = build_model(task, args.model, args.random_init, adapters, selection=selection, seed=args.seed).to(device)
    print(format_report(param_report(model)))
    return model


def warm_up(warm, encoded, args, device):
    """SDT's warm-up steps, then its selection. Nothing is saved before the main run: interrupted (Ctrl-C, SIGTERM),
    the same command starts the warm-up again."""
    steps = min(args.sdt_warmup, args.max_steps or math.inf)
    opt, n = make_optimizer(warm, args.lr, args.weight_decay), len(encoded)
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")
    per_step = args.batch_size * dist.world() * args.grad_accum
    order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 100_003 - 1)).numpy()
    trained = [p for p in warm.parameters() if p.requires_grad]
    print(f"SDT warm-up: {steps} optimizer steps" + (f" (--max-steps {args.max_steps}, not --sdt-warmup "
          f"{args.sdt_warmup})" if steps < args.sdt_warmup else "") + ", then the channels and states are chosen",
          flush=True)
    bar = tqdm(total=steps, desc="SDT warm-up", dynamic_ncols=True, disable=None if dist.is_main() else True)
    log = ProgressLog(args.log_every, steps, per_step, enabled=bar.disable and dist.is_main(), label="SDT warm-up ")
    warm.train()
    step = 0
    try:
        with sigterm_stops_at_once():
            for step in range(steps):
                rows = order.take(range(step * per_step, (step + 1) * per_step), mode="wrap")  # epochs, end to end
                loss = optimizer_step(warm, warm, encoded, rows, opt, scaler, [], trained, args, device,
                                      f"SDT warm-up step {step + 1}")
                bar.update(1)
                log.step(step + 1, step * per_step // n + 1, loss, args.lr)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"in the SDT warm-up, at step {step + 1} of {steps}") from None
    finally:
        bar.close()
    return sdt.selection(warm, args.sdt_rho)


def optimizer_step(forward, model, encoded, rows, opt, scaler, state, others, args, device, where, trace=None):
    """One optimizer step on the examples `rows`: forward and backward (each process its share), the gradients
    summed over processes (so every process takes the same step), clipped, applied. Returns the step's mean loss.
    state: SSMLoRA's W_c, W_d, clipped on their own first (--clip-mode state); others: every other trained tensor."""
    loss = forward_backward(forward, model, encoded, rows, args, device, scaler)
    if not math.isfinite(loss):  # the loss summed over processes: all of them stop here together
        raise TrainError(f"non-finite loss ({loss}) at {where}; stopped: try a lower --lr")
    dist.sum_gradients(state + others)
    scaler.unscale_(opt)
    if trace:
        trace.before_update()  # the gradients before clipping, and the weights before the step
    clip_gradients(others, state, args.clip, args.clip_mode)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return loss


def forward_backward(forward, model, encoded, rows, args, device, scaler):
    """The forward and backward passes of one optimizer step whose examples are `rows`, over this process's share
    of them, in --grad-accum passes. Each pass's mean loss is weighted by its share of the step's examples, so the
    gradients summed over passes and processes are those of the mean loss over all the rows, even when the short
    last batch of an epoch splits unevenly. Returns that mean loss, the same in every process."""
    loss_sum = torch.zeros((), device=device)
    for part in dist.my_share(rows, args.grad_accum):
        if len(part) == 0:  # a short last batch can leave a pass (or a whole process) without examples
            continue
        batch = to_device(collate(encoded, part, args.pad_to), model.cfg, device)
        with autocast(device, args.dtype):
            _, loss = forward(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"],
                              batch.get("choices"))
        loss = loss + aux_loss(model)  # MixLoRA's load-balancing loss (0 for every other method)
        weight = len(part) / len(rows)  # 1.0 in one process without accumulation: exactly the plain mean loss
        scaler.scale(loss * weight).backward()
        loss_sum += loss.detach() * weight
    return dist.sum_(loss_sum).item()  # the step's one device-to-host read, for the non-finite check and the log


def keep_best(model, line, progress, task, args, best_path):
    """Log an evaluation, keep the best adapters; True when --patience evaluations in a row brought no better score
    on the task's selection metric (the same in every process, and so is the decision)."""
    if dist.is_main():
        with open(Path(args.out) / "eval.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
    tqdm.write(json.dumps(line))
    progress["last_metrics"] = line
    score = line[task.dev[0]][task.select]
    if progress["best"] is None or score > progress["best"]:
        progress.update(best=score, best_metrics=line, bad_evals=0)
        if dist.is_main():
            save_adapters(model, best_path, run_settings(args))
        return False
    progress["bad_evals"] += 1
    if args.patience and progress["bad_evals"] >= args.patience:
        tqdm.write(f"early stop: no better {task.select} for {args.patience} evaluations")
        return True
    return False


def finish(model, progress, task, args, device, out, per_step, cut, trivial):
    """results.json, and the best score printed."""
    best, select = progress["best_metrics"], task.select
    results = {"task": task.name, "model": args.model, "method": args.method,
               "rank": args.rank if args.method in LOW_RANK else None, "params": param_report(model),
               "select": select, "best": best, "by_length": best.get("by_length"),  # the best evaluation's
               "final": progress["last_metrics"], "steps": progress["step"], "examples_per_step": per_step,
               "processes": dist.world(), "epoch_seconds": progress["epoch_times"],
               "peak_memory_bytes": peak_memory(device), "device": str(device), "dtype": args.dtype,
               "compile": args.compile, "passage_cut": cut or None, "max_len": args.max_len_used,
               "max_eval": args.max_eval if args.capped else None, "adapters": vars(model.adapters),
               "learned_nothing": trivial,
               "args": vars(args)}  # the max_len and adapter settings used
    if dist.is_main():
        atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    others = fmt({k: v for k, v in best[task.dev[0]].items() if k != select})
    print(f"best {select} {progress['best']:.4f}{f' ({others})' if others else ''}"
          f"{f'; learning nothing: {fmt(trivial)}' if trivial else ''}; adapters in {out / 'adapters.safetensors'}; "
          f"results in {out / 'results.json'}")  # RACE: best all ... (middle ..., high ...)
    print_by_length(results["by_length"], "the best evaluation, ", args.capped)
    return results


def refuse_earlier_run(out, resume):
    """Never write over what an earlier run left, unless it is resumed from its checkpoint."""
    ckpt = out / "checkpoint.pt"
    earlier = [f.name for f in (ckpt, out / "adapters.safetensors", out / "eval.jsonl", out / "results.json")
               if f.exists()]
    if earlier and not (resume and ckpt.exists()):
        how = "pass --resume to continue it" if ckpt.exists() else "it has no checkpoint.pt to resume from"
        raise TrainError(f"{out} holds an earlier run ({', '.join(earlier)}): {how}, or choose another --out "
                         "(nothing was overwritten)")


def compiled(model, backend):
    """--compile: the model's forward compiled whole (fullgraph, no graph break allowed). Batches are padded to a few
    lengths (data.padded), so a run compiles a handful of shapes, not one per length."""
    if not backend:
        return model
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)  # shapes x train/eval
    return torch.compile(model, backend=backend, fullgraph=True, dynamic=False)


def print_by_length(by_length, which="", capped=None):
    """Each dev split's metrics by input length, as the paper's Table 5: bins as columns. capped: {split: the
    examples --max-eval kept of it}."""
    for split, bins in (by_length or {}).items():
        cut = f", the first {capped[split]:,} examples (--max-eval)" if split in (capped or {}) else ""
        print(f"\n{split}{cut}, {which}by input tokens (--length-bins):\n{lengths.table(bins)}")


def run_settings(args):
    """What the adapter file keeps of the run, for --eval-only and predict.py: the task, where the base, the
    tokenizer and the data really were (a local folder as its absolute path, a hub name as it is) and the settings
    that change the metric."""
    where = lambda name: str(Path(name).resolve()) if name and Path(name).is_dir() else name  # noqa: E731
    return {"task": args.task, "model": where(args.model), "model_is_folder": Path(args.model).is_dir(),
            "tokenizer": where(args.tokenizer), "random_init": args.random_init, "max_len": args.max_len_used,
            "doc_stride": args.doc_stride, "data_dir": where(args.data_dir), "seed": args.seed}  # seed: a random base


def main(argv=None, on_step=None):
    threads, args = torch.get_num_threads(), None
    try:
        args = flags.parse(argv)  # CPU threads: under torchrun the free cores are shared by its processes
        torch.set_num_threads(args.threads or max(1, free_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
        run(args, on_step)
        return
    except (ValueError, OSError) as e:  # a mistake the user can fix (every error class here is a ValueError)
        message = f"error: {e}"
    except KeyboardInterrupt as e:
        message = interrupted(e, args)
    except SystemExit as e:  # the argument parser's one-line error
        message = e.code
    finally:
        dist.close()
        torch.set_num_threads(threads)  # main may be called in-process (the tests): give the caller its setting back
    sys.exit(message if dist.is_main() else 1)  # under torchrun every process meets the same end: rank 0 says it


def interrupted(e, args):
    """The last line after Ctrl-C or SIGTERM: how to go on from what was saved (--resume needs a checkpoint.pt)."""
    what = f"interrupted{f' {e}' if str(e) else ''}"
    if args is None or args.eval_only:
        return what
    if (Path(args.out) / "checkpoint.pt").exists():
        return f"{what}: continue with the same command plus --resume"
    return (f"{what}, before anything was saved: the same command starts again from the beginning"
            f"{' (the SDT warm-up included)' if args.method == 'sdt' else ''}")


if __name__ == "__main__":
    main()
