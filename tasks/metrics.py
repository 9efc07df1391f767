"""Metrics, in numpy: accuracy, binary and macro F1, Matthews correlation, Pearson and Spearman correlation; exact
match over groups (MultiRC); the official answer normalisation with token F1 and exact match (ReCoRD, SQuAD)."""
import math
import re
import string
from collections import Counter

import numpy as np
import torch


def accuracy(preds, labels):
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def f1(preds, labels):
    """Binary F1 of the positive class 1; 0.0 when there is no true positive (precision or recall is 0)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = np.sum((preds == 1) & (labels == 1))
    wrong = np.sum(preds != labels)                # false positives + false negatives
    return float(2 * tp / (2 * tp + wrong)) if tp else 0.0


def macro_f1(preds, labels):
    """The unweighted mean over classes of each class's F1 (one class against the rest), over the classes that occur
    in labels or predictions, as scikit-learn's f1_score(average="macro")."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float(np.mean([2 * np.sum((preds == c) & (labels == c)) / (np.sum(preds == c) + np.sum(labels == c))
                          for c in np.union1d(preds, labels)]))


def exact_match_per_group(preds, labels, groups):
    """The fraction of groups (MultiRC: a question's answers) whose every item is predicted right."""
    _, group = np.unique(np.asarray(groups), return_inverse=True)
    wrong = np.bincount(group, weights=np.asarray(preds) != np.asarray(labels))
    return float(np.mean(wrong == 0))


PUNCTUATION = set(string.punctuation)


def normalize_answer(s):
    """The official answer normalisation of ReCoRD's (and SQuAD's) evaluation script: lower case, no punctuation,
    no articles (a, an, the), single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def token_f1(pred, gold):
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    return 0.0 if same == 0 else 2 * same / (len(p) + len(g))    # 2PR / (P + R) with P = same/|p|, R = same/|g|


def max_over_gold(pred_texts, golds):
    """{"f1", "em"}: for each prediction its best token F1 and exact match over its gold answers, averaged."""
    f1s = [max((token_f1(p, g) for g in gs), default=0.0) for p, gs in zip(pred_texts, golds)]
    ems = [max((float(normalize_answer(p) == normalize_answer(g)) for g in gs), default=0.0)
           for p, gs in zip(pred_texts, golds)]
    return {"f1": float(np.mean(f1s)), "em": float(np.mean(ems))}


def matthews(preds, labels):
    """Matthews correlation in its multi-class form (Gorodkin 2004); for two classes it is
    (tp·tn − fp·fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)). 0.0 when either side is constant."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    _, inverse = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    k, n = inverse.max() + 1, len(labels)
    t = np.bincount(inverse[:n], minlength=k).astype(np.float64)       # true count per class
    p = np.bincount(inverse[n:], minlength=k).astype(np.float64)       # predicted count per class
    c = float(np.sum(preds == labels))
    denom = (n * n - p @ p) * (n * n - t @ t)
    return float((c * n - t @ p) / math.sqrt(denom)) if denom > 0 else 0.0


def pearson(preds, labels):
    """Pearson correlation; 0.0 when either side is constant. Constancy is checked on the values: the float mean
    of equal values can miss them by an ulp, which would turn a constant into noise correlated at ±1."""
    x, y = np.asarray(preds, np.float64), np.asarray(labels, np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    return float(np.clip(x @ y / math.sqrt((x @ x) * (y @ y)), -1.0, 1.0))


def _ranks(x):
    """Ranks 1..n, ties sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts_run = np.r_[True, xs[1:] != xs[:-1]]             # True where a run of equal values begins
    first = np.flatnonzero(starts_run)                       # sorted position of each run's first and last value
    last = np.r_[first[1:], len(x)] - 1
    ranks = np.empty(len(x))
    ranks[order] = ((first + last) / 2 + 1)[np.cumsum(starts_run) - 1]
    return ranks


def spearman(preds, labels):
    return pearson(_ranks(np.asarray(preds)), _ranks(np.asarray(labels)))


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": matthews, "pearson": pearson, "spearman": spearman}


def _numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def compute_metrics(task, preds, labels):
    """{metric: value} for a task's metrics (task.metrics, task.is_regression). preds: class ids or
    [n, num_labels] logits; scores for regression."""
    preds, labels = _numpy(preds), _numpy(labels)
    if task.is_regression:
        preds = preds.reshape(-1) if preds.ndim == 2 and preds.shape[1] == 1 else preds
    elif preds.ndim == 2:
        preds = preds.argmax(axis=1)
    if preds.shape != labels.shape or preds.ndim != 1 or len(labels) == 0:
        raise ValueError(f"compute_metrics({task.name}): need equally many predictions and labels (at least one), "
                        f"got shapes {preds.shape} and {labels.shape}")
    return {name: METRICS[name](preds, labels) for name in task.metrics}


def words(s):
    """ROUGE's tokens: lower-cased runs of letters and digits; punctuation is dropped (as coco-caption's PTB
    tokenizer does), articles are kept."""
    return re.findall(r"\w+", s.lower())


def lcs(a, b):
    """Length of the longest common subsequence of two token lists: one DP row per token of a, vectorised over b."""
    if not a or not b:
        return 0
    b = np.asarray(b, dtype=object)
    row = np.zeros(len(b) + 1, np.int64)
    for x in a:
        hit = np.r_[0, row[:-1] + 1]                  # extend a match on the diagonal where x == b[k-1]
        up = np.where(np.r_[False, b == x], hit, row)
        row = np.maximum.accumulate(up)               # max(left, up): rows of an LCS table never decrease
    return int(row[-1])


ROUGE_BETA = 1.2  # coco-caption's, which the NarrativeQA paper's ROUGE-L comes from


def rouge_l(pred, refs, beta=ROUGE_BETA):
    """ROUGE-L (Lin 2004): the LCS F-measure (1 + b^2) P R / (R + b^2 P), P = LCS / |pred|, R = LCS / |ref|, over
    words(); the maximum over the references."""
    p, best = words(pred), 0.0
    for ref in [refs] if isinstance(refs, str) else refs:
        r = words(ref)
        n = lcs(p, r)
        if n:
            prec, rec = n / len(p), n / len(r)
            best = max(best, (1 + beta ** 2) * prec * rec / (rec + beta ** 2 * prec))
    return best
