"""The metrics of a model on a dev set (each process its share under torchrun), as train.py evaluates after each
epoch and --eval-only once, with the same metrics per bin of input length (tasks/lengths.py)."""
import time

import numpy as np
import torch
from tqdm import tqdm

from tasks import compute_metrics, squad
from tasks.lengths import by_length, input_lengths
from data import collate
from training import dist
from training.build import to_device


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device, dtype, cache=True):
    """--dtype: bf16 or fp16 autocast on the device's type; eqs. (3)-(8) stay in float32 inside (ssmlora.EPS).
    cache: autocast's cast cache, which a CUDA graph capture must go without."""
    return torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32", cache_enabled=cache)


def default_dtype(device):
    """bf16 on CUDA, fp32 elsewhere: train.py's default, and so predict.py's."""
    return "bf16" if device.type == "cuda" else "fp32"


def evaluate_dev(model, encoded, examples, task, args, device):
    """({split: metrics}, {split: by length} or None) on every dev split of the task, as the run's flags say."""
    t0, count = time.time(), {s: len(examples[s]) for s in task.dev}  # QA: questions, not windows
    tqdm.write(f"evaluating on {' and '.join(f'{s} ({count[s]:,} examples)' for s in task.dev)}")
    both = {s: evaluate(model, encoded[s], task, args.batch_size, device, examples[s], args.bins, args.dtype,
                        args.pad_to) for s in task.dev}
    tqdm.write(f"evaluated in {time.time() - t0:.1f} s")
    by_length = {s: b for s, (_, b) in both.items()} if args.bins else None
    return {s: m for s, (m, _) in both.items()}, by_length


@torch.no_grad()
def evaluate(model, encoded, task, batch_size, device, examples, bins=None, dtype="fp32", pad_to=None):
    """(metrics, by length) on a whole dev set; by length is None without bins (length edges). Under torchrun each
    process evaluates its own contiguous share of the rows (QA: of the windows) and the outputs are gathered: every
    row is evaluated once, and every process gets the same metrics. dtype: autocast (train.py's --dtype)."""
    span = task.shape == "span"
    rows_of = encoded.rows if span else encoded  # QA: the windows' rows; decoding needs the rest of encoded
    model.eval()
    rows, outs = dist.my_share(np.arange(len(encoded)))[0], []
    rows = rows if len(rows) else np.arange(1)  # none here (fewer examples than processes): one, dropped when gathered
    said = time.time()
    for start in range(0, len(rows), 2 * batch_size):
        part = rows[start:start + 2 * batch_size]
        batch = to_device(collate(rows_of, part, pad_to), model.cfg, device)
        with autocast(device, dtype):
            out, _ = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                           choices=batch.get("choices"))
        if time.time() - said > 30 and dist.is_main():  # a long evaluation says how far it is
            tqdm.write(f"  evaluated {start + len(part):,} of {len(rows):,} {'windows' if span else 'rows'}")
            said = time.time()
        if span:  # each window's best span: (score, start, end), its positions exact in float32
            out = torch.stack(squad.best_spans(encoded.at[part], encoded.size[part], out[..., 0], out[..., 1]), 1)
        # the reading tasks keep the predicted class or choice (a batch's choices are as many as its longest
        # question has); GLUE keeps the logits
        outs.append(out.float() if span or not task.is_reading else out.float().argmax(-1))
    model.train()
    outs = dist.gather_rows(torch.cat(outs), len(encoded))
    if span:  # each question's answer, the best span over its windows; F1, EM or ROUGE-L per question, once
        per = task.per_question(squad.answers(encoded, examples, *outs.cpu().T)[0], examples)
        whole = {k: float(np.mean(v)) for k, v in per.items()}
        return whole, None if bins is None else by_length(input_lengths(encoded), per, bins)
    preds = outs.cpu().tolist() if task.is_reading else outs.cpu()
    labels = None if task.is_reading else torch.from_numpy(encoded.labels)

    def metrics(idx):  # the task's metrics on some examples: all of them, or one bin of lengths
        if task.is_reading:  # scored with what its examples hold
            return task.score([preds[i] for i in idx], [examples[i] for i in idx])
        return compute_metrics(task, preds[idx], labels[idx])
    whole = metrics(np.arange(len(examples) if task.is_reading else len(labels)))
    return whole, None if bins is None else by_length(input_lengths(encoded), metrics, bins)


def trivial_scores(task, encoded, examples):
    """What a model that learned nothing scores, to read a dev metric against: the majority class, scored with the
    task's own metrics (classification), or the expected accuracy of a random choice (multiple choice); None for
    regression and QA."""
    if task.is_regression or task.shape == "span":
        return None
    if task.shape == "choice":
        return {"chance_accuracy": float(np.mean([len(e.gold) / len(e.choices) for e in examples]))}
    labels = np.asarray(encoded.labels)
    majority = int(np.bincount(labels).argmax())
    if task.is_reading:
        return {f"majority_{k}": v for k, v in task.score([majority] * len(labels), examples).items()}
    return {f"majority_{k}": v for k, v in compute_metrics(task, np.full(len(labels), majority), labels).items()}
