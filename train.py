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
import resource
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from tasks import encode, get_task, lengths, load_data
from data import collate
from files.tokenizer import load_tokenizer
from files import atomic_write
from files.adapters import save_adapters
from files.hub import resolve
from baselines import aux_loss
from ssmlora import LOW_RANK, Adapters, format_report, param_report
from training import dist, flags
from training.build import build_model, to_device
from training.cli import TrainError, free_cores, pick_device
from training.evaluate import evaluate, trivial_scores
from training.optim import clip_gradients, lr_lambda, make_optimizer
from training.resume import interrupt_at_step_boundary, load_checkpoint, save_checkpoint


def run(args, on_step=None):
    """Train (or evaluate) as args say; returns the results dict. on_step(step) is called after each step."""
    task = get_task(args.task)
    device = dist.init(pick_device(args.device))  # under torchrun: join the other processes
    args.world_size = dist.world()
    torch.manual_seed(args.seed)  # the same in every process: the same initial adapters and head everywhere
    adapters = None if args.eval_only else Adapters(args.method, args.rank, args.alpha, args.dropout, args.targets,
                                                    args.sparse, args.state)  # checks the settings first
    if args.dry_run:  # on the meta device: counts without allocating, so roberta-large takes no time
        model = build_model(task, args.model, args.random_init, adapters, args.eval_only, meta=args.random_init)
        report = param_report(model)
        print(format_report(report))
        return {"params": report}
    with dist.main_first():  # rank 0 downloads what is missing; the others then read the caches
        print(f"loading {args.model}", flush=True)
        model = build_model(task, args.model, args.random_init, adapters, args.eval_only)
        source = args.tokenizer or (args.model if args.random_init else model.source)
        tok = load_tokenizer(resolve(source), family=model.cfg.family)
        print(f"reading {task.name}", flush=True)
        data = load_data(task, args)
    print(format_report(param_report(model)))
    max_len = args.max_len_used = min(args.max_len, model.cfg.max_tokens)  # results.json records what is used
    if max_len < args.max_len:
        print(f"--max-len {args.max_len} is more than this model's {max_len} positions: using {max_len}")
    train_rows = data["train"][:args.max_train] if args.max_train else data["train"]
    cut = {}
    print("tokenising", flush=True)
    encoded = {split: encode(tok, task, rows, max_len, split, cut, args.doc_stride)
               for split, rows in data.items() if split != "train"}
    model.to(device)
    trivial = trivial_scores(task, encoded[task.dev[0]], data[task.dev[0]])  # what learning nothing scores
    if trivial:
        print(f"{task.dev[0]}: a model that learned nothing scores {fmt(trivial)}")
    if args.eval_only:
        both = {split: evaluate(model, encoded[split], task, args.batch_size, device, data[split], args.bins)
                for split in task.dev}
        metrics = {s: m for s, (m, _) in both.items()}
        by_length = {s: b for s, (_, b) in both.items()} if args.bins else None
        print(json.dumps(metrics))
        print_by_length(by_length)
        return {"eval": metrics, "by_length": by_length}
    encoded["train"] = encode(tok, task, train_rows, max_len, "train", cut, args.doc_stride)
    return fit(model, encoded, task, args, device, on_step, data, cut, trivial)


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


def fit(model, encoded, task, args, device, on_step=None, examples=None, cut=None, trivial=None):
    out = Path(args.out)
    ckpt, log_path, best_path = out / "checkpoint.pt", out / "eval.jsonl", out / "adapters.safetensors"
    n = len(encoded["train"])
    per_step = args.batch_size * dist.world() * args.grad_accum  # the examples of one optimizer step
    steps_per_epoch = math.ceil(n / per_step)
    total = min(args.epochs * steps_per_epoch, args.max_steps or math.inf)
    print(f"{per_step} examples per optimizer step (--batch-size {args.batch_size} x {dist.world()} process"
          f"{'es' if dist.world() > 1 else ''} x --grad-accum {args.grad_accum}), {steps_per_epoch} steps an epoch")
    opt = make_optimizer(model, args.lr, args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(math.ceil(args.warmup * total), total))
    progress = dict(step=0, epoch=0, step_in_epoch=0, best=None, best_metrics=None, bad_evals=0, epoch_times=[],
                    epoch_loss=0.0)  # the sum of this epoch's step losses, carried over a resume
    if dist.world() > 1:  # each process draws its own dropout masks (a resumed run restores each one's state)
        torch.manual_seed(args.seed + 1_000_003 * (dist.rank() + 1))
    earlier = [f.name for f in (ckpt, best_path, log_path, out / "results.json") if f.exists()]
    if earlier and not (args.resume and ckpt.exists()):  # never write over what an earlier run left
        how = "pass --resume to continue it" if ckpt.exists() else "it has no checkpoint.pt to resume from"
        raise TrainError(f"{out} holds an earlier run ({', '.join(earlier)}): {how}, or choose another --out "
                         "(nothing was overwritten)")
    if ckpt.exists():
        print(f"loading the checkpoint {ckpt}", flush=True)
        progress = load_checkpoint(ckpt, model, opt, sched, args)
        print(f"resumed from {ckpt} at step {progress['step']} (epoch {progress['epoch']})")
    elif args.resume:
        print(f"no checkpoint in {out}: starting from the beginning")
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
    model.train()
    select = task.select
    run_info = run_settings(args)

    def evaluation(epoch, **train_stats):
        """Evaluate, log a line, keep the best adapters; True when --patience evaluations brought no improvement."""
        t0 = time.time()
        count = {s: len((examples or encoded)[s]) for s in task.dev}  # QA: questions, not windows
        tqdm.write(f"evaluating on {' and '.join(f'{s} ({count[s]:,} examples)' for s in task.dev)}")
        both = {split: evaluate(model, encoded[split], task, args.batch_size, device, (examples or {}).get(split),
                                args.bins) for split in task.dev}
        metrics = {s: m for s, (m, _) in both.items()}
        tqdm.write(f"evaluated in {time.time() - t0:.1f} s")
        line = {"epoch": epoch, "step": progress["step"], "lr": sched.get_last_lr()[0], **train_stats, **metrics}
        if args.bins:
            line["by_length"] = {s: b for s, (_, b) in both.items()}
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
    with interrupt_at_step_boundary() as interrupt:  # Ctrl-C: stop after the step, saved
        while progress["epoch"] < args.epochs and not stop:
            epoch, t0 = progress["epoch"], time.time()
            bar.set_description(f"{task.name} {args.method} epoch {epoch + 1}/{args.epochs}")
            # The epoch's order depends only on (seed, epoch), the same in every process; a resumed run redraws it
            # and skips what was done. Step i takes the examples order[i * per_step:(i + 1) * per_step], however
            # many processes and passes share them.
            order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch)).numpy()
            for i in range(progress["step_in_epoch"], steps_per_epoch):
                rows = order[i * per_step:(i + 1) * per_step]
                value = forward_backward(model, encoded["train"], rows, args, device)
                if not math.isfinite(value):  # the loss summed over processes: all of them stop here together
                    last = ckpt if ckpt.exists() else "not written yet"
                    raise TrainError(f"non-finite loss ({value}) at step {progress['step'] + 1}; stopped. The last "
                                     f"good checkpoint is {last}: try a lower --lr")
                dist.sum_gradients(state + others)  # every process holds the whole step's gradients: the same step
                clip_gradients(others, state, args.clip, args.clip_mode)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                progress["step"] += 1
                progress["step_in_epoch"] = i + 1
                progress["epoch_loss"] += value
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}", refresh=False)  # update draws
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
                if interrupt.asked:  # Ctrl-C during the step: the step is whole now, so it can be saved exactly
                    save_checkpoint(ckpt, model, opt, sched, progress, args)
                    raise KeyboardInterrupt(f"after step {progress['step']}, saved in {ckpt}")
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
               "by_length": progress["best_metrics"].get("by_length"),  # the best evaluation's, per dev split
               "final": progress.get("last_metrics"), "steps": progress["step"], "examples_per_step": per_step,
               "processes": dist.world(), "epoch_seconds": progress["epoch_times"],
               "peak_memory_bytes": peak_memory(device), "device": str(device), "passage_cut": cut or None,
               "max_len": args.max_len_used, "adapters": vars(model.adapters), "learned_nothing": trivial,
               "args": vars(args)}  # the max_len and adapter settings used
    if dist.is_main():
        atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    others = ", ".join(f"{k} {v:.4f}" for k, v in progress["best_metrics"][task.dev[0]].items() if k != select)
    print(f"best {select} {progress['best']:.4f}{f' ({others})' if others else ''}"
          f"{f'; learning nothing: {fmt(trivial)}' if trivial else ''}; adapters in {best_path}; "
          f"results in {out / 'results.json'}")  # RACE: best all ... (middle ..., high ...)
    print_by_length(results["by_length"], "the best evaluation, ")
    return results


def print_by_length(by_length, which=""):
    """Each dev split's metrics by input length, as the paper's Table 5: bins as columns."""
    for split, bins in (by_length or {}).items():
        print(f"\n{split}, {which}by input tokens (--length-bins):\n{lengths.table(bins)}")


def run_settings(args):
    """What the adapter file keeps of the run, for --eval-only and predict.py: the task, where the base and the
    tokenizer really were (a local folder as its absolute path, a hub name as it is) and the settings that change
    the metric."""
    where = lambda name: str(Path(name).resolve()) if name and Path(name).is_dir() else name  # noqa: E731
    return {"task": args.task, "model": where(args.model), "model_is_folder": Path(args.model).is_dir(),
            "tokenizer": where(args.tokenizer), "random_init": args.random_init, "max_len": args.max_len_used,
            "doc_stride": args.doc_stride}


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class ProgressLog:
    """When stderr is not a terminal (a log file, a batch job) there is no bar: print a line every `every` steps or
    every minute, whichever comes first, with the mean loss since the last line, the examples per second, the time
    since the start and the time left at this pace."""

    def __init__(self, every, total, per_step, enabled, seconds=60.0):
        self.every, self.total, self.per_step, self.enabled, self.seconds = every, total, per_step, enabled, seconds
        self.t, self.losses, self.start, self.first = time.time(), [], time.time(), None

    def step(self, step, epoch, loss, lr):
        if not self.enabled:
            return
        self.losses.append(loss)
        now = time.time()
        if step % self.every and now - self.t < self.seconds and step != self.total:
            return
        rate = len(self.losses) * self.per_step / max(now - self.t, 1e-9)
        if self.first is None:  # the step this run started from (a resumed one: later than 0)
            self.first = step - len(self.losses)
        left = (now - self.start) / (step - self.first) * (self.total - step)
        print(f"step {step}/{self.total} epoch {epoch} loss {sum(self.losses) / len(self.losses):.4f} lr {lr:.2e} "
              f"{rate:.1f} examples/s elapsed {clock(now - self.start)} left {clock(left)}", flush=True)
        self.t, self.losses = now, []


def fmt(scores):
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items())


def clock(seconds):
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def main(argv=None, on_step=None):
    threads = torch.get_num_threads()
    try:
        args = flags.parse(argv)  # CPU threads: under torchrun the free cores are shared by its processes
        torch.set_num_threads(args.threads or max(1, free_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
        run(args, on_step)
        return
    except (ValueError, OSError) as e:  # a mistake the user can fix (every error class here is a ValueError)
        message = f"error: {e}"
    except KeyboardInterrupt as e:
        message = f"interrupted{f' {e}' if str(e) else ''}: continue with the same command plus --resume"
    except SystemExit as e:  # the argument parser's one-line error
        message = e.code
    finally:
        dist.close()
        torch.set_num_threads(threads)  # main may be called in-process (the tests): give the caller its setting back
    sys.exit(message if dist.is_main() else 1)  # under torchrun every process meets the same end: rank 0 says it


if __name__ == "__main__":
    main()
