"""
SQuAD v1.1 (Rajpurkar et al. 2016): extractive QA, the answer a span of a Wikipedia paragraph. Official files
train-v1.1.json and dev-v1.1.json: {"version": "1.1", "data": [{"title", "paragraphs": [{"context", "qas": [{"id",
"question", "answers": [{"text", "answer_start"}]}]}]}]}; dev has up to three gold answers a question.

The reader, shared with NarrativeQA (narrativeqa.py): each (question, context) becomes one or more windows of at
most max_len tokens, question first, then a part of the context; consecutive windows share `stride` tokens (the
tokenizer's stride, as Hugging Face's run_qa; BERT's run_squad.py called the step between windows its stride). A
window whose context holds the answer is labelled with its start and end token, every other window with its first
token. A question's answer is the best-scoring start/end pair over all its windows, among the n_best starts and ends
of each window, at most max_answer tokens long. Scored with the official v1.1 rules (metrics.normalize_answer).
"""
import json
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from tasks.metrics import max_over_gold
from tasks.task import Task, kind
from data import DataError, Rows, batches, segments, template, tokenize
from files.downloads import find_or_download

URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
FILES = {"train": "train-v1.1.json", "dev": "dev-v1.1.json"}


class Question(NamedTuple):
    id: str
    question: str
    context: str
    answers: tuple      # gold answer texts (the official scorer compares with each)
    starts: tuple = ()  # the character where each answer starts in context (training targets use the first)


# ----------------------------------------------------------------------------- files: found or downloaded once

NEAR = 16   # characters searched on each side of a misplaced answer_start


def locate(context, text, start):
    """(start, text) of an answer in its context: at `start` as written, else stripped of white space, else its
    occurrence nearest `start` within NEAR characters (a few official answers start with a space, or one character
    off their answer_start, which reference SQuAD pipelines also search around); None when not found."""
    text = text.strip()
    if not text or not isinstance(start, int):
        return None
    lo, hi = max(0, start - NEAR), max(0, start) + len(text) + NEAR
    found, at = [], context.find(text, lo, hi)
    while at >= 0:                                      # every occurrence, overlapping ones too
        found.append(at)
        at = context.find(text, at + 1, hi)
    return (min(found, key=lambda a: abs(a - start)), text) if found else None


def _field(path, obj, key, want, where, need=True):
    """obj[key], checked to be of type `want`; a missing or wrongly typed field is a DataError naming it."""
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {where} is {kind(obj)}, not an object; is this an official SQuAD v1.1 file?")
    if key not in obj and not need:
        return None
    if key not in obj:
        raise DataError(f"{path}: {where} has no field {key!r}, which the official SQuAD v1.1 files have")
    value = obj[key]
    if not isinstance(value, want) or isinstance(value, bool):          # JSON true is no number
        raise DataError(f"{path}: {where}: {key!r} is {kind(value)}, not {kind(want())}; is this an official SQuAD "
                        "v1.1 file?")
    return value


def _load(path):
    """The parsed file, refused with one line when it is no JSON object or is SQuAD 2.0."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e}); is this an official SQuAD v1.1 file? (A file cut off "
                        "by an interrupted download: fetch it again.)") from None
    version = doc.get("version") if isinstance(doc, dict) else None
    if isinstance(version, str) and version.lstrip("v").startswith("2"):
        raise DataError(f"{path}: SQuAD {version}, whose unanswerable questions need a no-answer threshold this "
                        "reader does not have; use the v1.1 files (train-v1.1.json, dev-v1.1.json)")
    return doc


def read_squad(path, train=False):
    """(questions, unlocated) of an official SQuAD v1.1 file, in file order. A dev question keeps every gold text
    (EM and F1 need no answer_start; starts: where each was located, -1 where not). A training question keeps its
    first answer found near its answer_start (locate); `unlocated` counts those left out, none of whose answers
    was found."""
    doc, out, unlocated = _load(path), [], 0
    for i, article in enumerate(_field(path, doc, "data", list, "the file")):
        for j, p in enumerate(_field(path, article, "paragraphs", list, f"data[{i}]")):
            where = f"data[{i}].paragraphs[{j}]"
            context = _field(path, p, "context", str, where)
            for k, qa in enumerate(_field(path, p, "qas", list, where)):
                q = _question(path, qa, context, f"{where}.qas[{k}]", train)
                unlocated += q is None
                out += [q] if q else []
    if not out:
        raise DataError(f"{path}: no questions" + (" whose answer is found in its context" if unlocated else "")
                        + "; use the official SQuAD v1.1 file, unchanged")
    return out, unlocated


def _question(path, qa, context, where, train):
    """One Question (above), or None: a training question none of whose answers is found."""
    qid = _field(path, qa, "id", str, where)
    where = f"question {qid}"
    if qa.get("is_impossible"):
        raise DataError(f"{path}: {where} is marked is_impossible, as in SQuAD 2.0, whose unanswerable questions "
                        "this reader cannot score; use the v1.1 files")
    question = _field(path, qa, "question", str, where)
    golds = _field(path, qa, "answers", list, where)
    texts, starts = [], []
    for n, a in enumerate(golds):
        texts.append(_field(path, a, "text", str, f"{where}, answer {n + 1}"))
        starts.append(_field(path, a, "answer_start", int, f"{where}, answer {n + 1}", need=train))
    if not texts:
        raise DataError(f"{path}: {where} has no answer; SQuAD v1.1 gives every question one (is this SQuAD 2.0?)")
    found = [locate(context, t, s) for t, s in zip(texts, starts)]
    if not train:
        return Question(qid, question, context, tuple(texts), tuple(f[0] if f else -1 for f in found))
    first = next((f for f in found if f), None)
    return first and Question(qid, question, context, (first[1],), (first[0],))


def load_squad(data_dir=None, cache_dir=None, base_url=None):
    """{"train": [Question], "dev": [Question]} from --data-dir or the cache (downloaded once)."""
    paths = find_or_download("SQuAD", {f: URL + f for f in FILES.values()}, data_dir, cache_dir, base_url)
    splits = {}
    for s, f in FILES.items():
        splits[s], unlocated = read_squad(paths[f], train=s == "train")
        if unlocated:
            print(f"data: SQuAD {s}: {unlocated:,} of {unlocated + len(splits[s]):,} answers are not where "
                  f"answer_start says and were not found near it; left out")
    return splits


# ----------------------------------------------------------------------------- windows

@dataclass
class Windows:
    """Every question's windows as data.Rows (one row each: prefix, question, middle, context part, suffix; labels
    (windows, 2) the answer's start and end positions), and what decoding needs to map positions back to text."""
    rows: Rows
    question: np.ndarray     # (windows,) the question of each window; a question's windows are consecutive
    first: np.ndarray        # (windows,) the context token the window starts at
    at: np.ndarray           # (windows,) the row position of the window's first context token
    size: np.ndarray         # (windows,) context tokens in the window
    token0: np.ndarray       # (questions,) where the question's context tokens begin in char_start / char_end
    char_start: np.ndarray   # (context tokens,) character span of every distinct context's tokens
    char_end: np.ndarray
    lengths: np.ndarray      # (questions,) tokens of the whole input, question + context + specials, unwindowed

    def __len__(self):
        return len(self.question)


def windows(tok, questions, max_len=384, stride=128, max_query=64):
    """Windows (above) of Questions for data.Tok tok. stride: context tokens two consecutive windows share."""
    t = tok.tokenizer
    t.no_truncation()
    t.no_padding()
    (prefix, middle, suffix), types = template(t)
    n_special = len(prefix) + len(middle) + len(suffix)
    contexts = list(dict.fromkeys(q.context for q in questions))
    index = {c: i for i, c in enumerate(contexts)}
    ctx = np.array([index[q.context] for q in questions], np.int64)
    q_ids, _, q_len, _ = tokenize(t, [q.question for q in questions])
    c_ids, _, c_len, c_span = tokenize(t, contexts, spans=True)
    c_start, c_end = c_span.T
    q_tok0, c_tok0 = np.r_[0, np.cumsum(q_len)[:-1]], np.r_[0, np.cumsum(c_len)[:-1]]
    q_keep = np.minimum(q_len, max_query)
    room = max_len - n_special - q_keep                               # context tokens a window can hold
    if len(questions) and (room.min() < 1 or room.min() <= stride):
        raise DataError(f"--max-len {max_len} leaves {room.min()} context tokens a window beside the question, not "
                        f"more than --doc-stride {stride}: raise --max-len or lower --doc-stride")
    step, L = room - stride, c_len[ctx]
    count = 1 + np.ceil(np.maximum(L - room, 0) / step).astype(np.int64)  # windows per question
    qi = np.repeat(np.arange(len(questions)), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    first = k * step[qi]
    size = np.minimum(room[qi], L[qi] - first)
    at = len(prefix) + q_keep[qi] + len(middle)
    # the answer's tokens: the first ending after its first character, the last starting before its end
    BIG = int(max((len(c) for c in contexts), default=0)) + 1   # keeps each context's offsets apart in one sort
    tok_ctx = np.repeat(np.arange(len(contexts)), c_len)
    a0 = np.array([q.starts[0] if q.starts else -1 for q in questions], np.int64)
    a1 = a0 + np.array([len(q.answers[0]) if q.starts else 0 for q in questions], np.int64)
    ts = np.searchsorted(c_end + tok_ctx * BIG, a0 + ctx * BIG, side="right") - c_tok0[ctx]
    te = np.searchsorted(c_start + tok_ctx * BIG, a1 + ctx * BIG, side="left") - 1 - c_tok0[ctx]
    inside = (a0[qi] >= 0) & (ts[qi] >= first) & (te[qi] < first + size) & (ts[qi] <= te[qi])
    labels = np.where(inside[:, None], np.stack([ts[qi], te[qi]], 1) - first[:, None] + at[:, None], 0)
    specials = np.array(prefix + middle + suffix, np.int32)
    base_q, base_c = len(specials), len(specials) + len(q_ids)
    n = len(qi)
    starts, lens = segments((prefix, middle, suffix), base_q + q_tok0[qi], q_keep[qi], base_c + c_tok0[ctx[qi]] + first,
                            size)
    rows = Rows(np.concatenate([specials, q_ids, c_ids]), starts, lens, np.array(types, np.int64),
                np.arange(n + 1, dtype=np.int64), labels.astype(np.int64), None, tok.pad_id,
                int(np.sum(count > 1)), int(np.sum(q_keep < q_len)))
    return Windows(rows, qi, first, at, size, c_tok0[ctx], c_start, c_end, n_special + q_len + L)


# ----------------------------------------------------------------------------- decoding and scoring

@torch.no_grad()
def span_logits(model, win, batch_size=32, device="cpu"):
    """Start and end logits (windows, longest row) of a span-head model over every window, -inf past a row."""
    out = torch.full((len(win), int(win.rows.lengths.sum(1).max(initial=1)), 2), -torch.inf)
    i = 0
    for b in batches(win.rows, batch_size):
        b = {k: v.to(device) for k, v in b.items() if v is not None and k != "labels"}
        logits = model(**b)[0].float().cpu()
        out[i:i + len(logits), :logits.shape[1]] = logits
        i += len(logits)
    return out[..., 0], out[..., 1]


def best_spans(at, size, start_logits, end_logits, n_best=20, max_answer=30):
    """Each window's best (score, start, end) positions: among its n_best starts and n_best ends inside its context
    (row positions at..at + size - 1), end >= start, at most max_answer tokens; score = start + end logit.
    start_logits, end_logits: (windows, positions), any padding past a row's end; at, size: (windows,)."""
    s, e = torch.as_tensor(start_logits).float(), torch.as_tensor(end_logits).float()
    pos = torch.arange(s.shape[1], device=s.device)
    at, size = torch.as_tensor(at, device=s.device)[:, None], torch.as_tensor(size, device=s.device)[:, None]
    context = (pos >= at) & (pos < at + size)                                 # only context tokens can answer
    k = min(n_best, s.shape[1])
    s_val, s_pos = s.masked_fill(~context, -torch.inf).topk(k, dim=1)
    e_val, e_pos = e.masked_fill(~context, -torch.inf).topk(k, dim=1)
    score = s_val[:, :, None] + e_val[:, None, :]                             # (windows, k starts, k ends)
    span = e_pos[:, None, :] - s_pos[:, :, None]
    score = score.masked_fill((span < 0) | (span >= max_answer), -torch.inf).flatten(1)
    best, pair = score.max(1)
    return best, s_pos.gather(1, (pair // k)[:, None])[:, 0], e_pos.gather(1, (pair % k)[:, None])[:, 0]


def answers(win, questions, best, start, end):
    """(answer texts, scores) of every question: the best of its windows' best spans (best_spans), the first
    window of equals; the text is the context's characters from the start token's first to the end token's last."""
    best, start, end = (torch.as_tensor(x).cpu() for x in (best, start, end))
    q = torch.as_tensor(win.question)
    top = torch.full((len(questions),), -torch.inf).scatter_reduce(0, q, best, "amax")
    hit = torch.nonzero(best == top[q]).squeeze(1)
    w = torch.full((len(questions),), len(win), dtype=torch.long).scatter_reduce(0, q[hit], hit, "amin")
    w = w.clamp(max=len(win) - 1).numpy()
    shift = win.first[w] - win.at[w] + win.token0                             # row position -> context token
    tok_s, tok_e, top = start.long().numpy()[w] + shift, end.long().numpy()[w] + shift, top.numpy()
    texts = [q.context[win.char_start[a]:win.char_end[b]].strip() if np.isfinite(sc) else ""
             for q, a, b, sc in zip(questions, tok_s, tok_e, top)]
    return texts, top


def decode(win, questions, start_logits, end_logits, n_best=20, max_answer=30):
    """(answer texts, scores) of every question from the logits of all its windows (best_spans, then answers)."""
    return answers(win, questions, *best_spans(win.at, win.size, start_logits, end_logits, n_best, max_answer))


def scores(texts, golds):
    """Per question (arrays): the official v1.1 exact match and token F1, each the maximum over its gold answers."""
    each = [max_over_gold([p], [gs]) for p, gs in zip(texts, golds)]
    return {m: np.array([x[m] for x in each]) for m in ("f1", "em")}


TASK = Task(name="squad", benchmark="squad", folder="SQuAD", shape="span", metrics=("f1", "em"), select="f1",
            per_question=lambda texts, questions: scores(texts, [q.answers for q in questions]))
