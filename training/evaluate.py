"""The metrics of a model on a dev set (each process its share under torchrun), as train.py evaluates after each
epoch and --eval-only once."""
import numpy as np
import torch

from benchmarks import compute_metrics
from data import collate
from training import dist
from training.build import to_device


@torch.no_grad()
def evaluate(model, encoded, task, batch_size, device, examples):
    """Metrics on a whole dev set. Under torchrun each process evaluates its own contiguous share of the examples
    and the outputs are gathered: every example is evaluated once, and every process gets the same metrics."""
    model.eval()
    rows, outs = dist.my_share(np.arange(len(encoded)))[0], []
    rows = rows if len(rows) else np.arange(1)  # none here (fewer examples than processes): one, dropped when gathered
    for start in range(0, len(rows), 2 * batch_size):
        batch = to_device(collate(encoded, rows[start:start + 2 * batch_size]), model.cfg, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out, _ = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                           choices=batch.get("choices"))
        # the reading tasks keep the predicted class or choice (a batch's choices are as many as its longest
        # question has); GLUE keeps the logits
        outs.append(out.float().argmax(-1) if task.is_reading else out.float())
    model.train()
    outs = dist.gather_rows(torch.cat(outs), len(encoded))
    if task.is_reading:  # the task scores its predictions with what its examples hold
        return task.score(outs.tolist(), examples)
    return compute_metrics(task, outs, torch.from_numpy(encoded.labels))


def trivial_scores(task, encoded, examples):
    """What a model that learned nothing scores, to read a dev metric against: the majority class, scored with the
    task's own metrics (classification), or the expected accuracy of a random choice (multiple choice); None for
    regression."""
    if task.is_regression:
        return None
    if task.shape == "choice":
        return {"chance_accuracy": float(np.mean([len(e.gold) / len(e.choices) for e in examples]))}
    labels = np.asarray(encoded.labels)
    majority = int(np.bincount(labels).argmax())
    if task.is_reading:
        return {f"majority_{k}": v for k, v in task.score([majority] * len(labels), examples).items()}
    return {f"majority_{k}": v for k, v in compute_metrics(task, np.full(len(labels), majority), labels).items()}
