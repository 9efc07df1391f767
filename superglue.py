"""SuperGLUE v2 (Wang et al. 2019): the task table, readers for the official JSONL files, and the official metrics.

Each task is cast the way the literature does, into one of two example shapes that tokenization and batching share:

    Pair(text_a, text_b, label, group)   classification of a text pair. text_a is the passage: the part that is cut
                                         when a row is too long; text_b (question, hypothesis, answer) never is.
                                         group: MultiRC's question, whose answers are scored together (exact match)
    Choice(context, choices, gold, ...)  multiple choice: the context is paired with each choice, each pair scored to
                                         one logit, one softmax over a question's choices. gold: the right choices

    boolq    Pair(passage, question)                          accuracy
    cb       Pair(premise, hypothesis), 3 classes             accuracy, macro-F1
    wic      Pair("word: sentence1", "word: sentence2")       accuracy
    wsc      Pair(text, "Does #span2# refer to *span1*?")     accuracy (both spans marked in the text too)
    multirc  Pair(paragraph, "question answer") per answer    F1a over all answers, exact match per question
    copa     Choice(premise, "What was the cause? choice_i")  accuracy
    record   Choice(passage, query with each candidate entity in place of @placeholder)
                                                              max-over-gold token F1 and exact match
RTE is GLUE's rte (the same data). Files: <data_dir>/BoolQ/train.jsonl, val.jsonl (one JSON object a line, the
official field names); the model is selected and reported on val, as the paper does on dev.
"""
import json
import os
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from data import DataError, f1


class Pair(NamedTuple):
    text_a: str            # the passage: cut from its end when the row is too long
    text_b: str            # never cut
    label: int
    group: str = ""        # MultiRC: "<paragraph idx>/<question idx>", the answers that exact match scores together


class Choice(NamedTuple):
    context: str           # the passage: cut from its end when a row is too long
    choices: tuple         # the texts paired with the context, one row each; never cut
    gold: tuple            # indices of the right choices (several in ReCoRD, when an entity has several spellings)
    level: str = ""        # RACE: "middle" or "high"
    entities: tuple = ()   # ReCoRD: the candidate entity of each choice ...
    answers: tuple = ()    # ... and the gold answer texts, which the metrics compare with the chosen entity

    @property
    def label(self):       # the one right choice; -1 when none is (a ReCoRD query whose answer is no entity)
        return self.gold[0] if self.gold else -1


# ----------------------------------------------------------------------------- readers: one JSON object -> examples

def _label(value, allowed):
    """Index of value in allowed, comparing types too (JSON true is not 1)."""
    for i, a in enumerate(allowed):
        if type(a) is type(value) and a == value:
            return i
    raise ValueError(f"label {value!r}, expected {' or '.join(json.dumps(a) for a in allowed)}")


BOOL = (False, True)


def read_boolq(r):
    return [Pair(r["passage"], r["question"], _label(r["label"], BOOL))]


def read_cb(r):
    return [Pair(r["premise"], r["hypothesis"], _label(r["label"], ("entailment", "contradiction", "neutral")))]


def read_wic(r):
    return [Pair(f"{r['word']}: {r['sentence1']}", f"{r['word']}: {r['sentence2']}", _label(r["label"], BOOL))]


def read_wsc(r):
    """The sentence with the candidate referent marked *so* and the pronoun #so# (as T5 casts WSC), and the question
    whether the pronoun refers to the candidate. The span indices count whitespace-separated words."""
    words, t = r["text"].split(), r["target"]
    for index, text, mark in sorted([(t["span1_index"], t["span1_text"], "*"), (t["span2_index"], t["span2_text"], "#")],
                                    reverse=True):           # the later span first: marking it moves no index
        n = len(text.split())
        if not 0 <= index <= len(words) - n:
            raise ValueError(f"span {text!r} at word {index} lies outside the {len(words)}-word text")
        words[index:index + n] = [mark + " ".join(words[index:index + n]) + mark]
    question = f"Does #{t['span2_text']}# refer to *{t['span1_text']}*?"
    return [Pair(" ".join(words), question, _label(r["label"], BOOL))]


def read_multirc(r):
    p = r["passage"]
    return [Pair(p["text"], f"{q['question']} {a['text']}", _label(a["label"], (0, 1)), f"{r['idx']}/{q['idx']}")
            for q in p["questions"] for a in q["answers"]]


def read_copa(r):
    if r["question"] not in ("cause", "effect"):
        raise ValueError(f"question {r['question']!r}, expected \"cause\" or \"effect\"")
    ask = "What was the cause?" if r["question"] == "cause" else "What happened as a result?"
    return [Choice(r["premise"], (f"{ask} {r['choice1']}", f"{ask} {r['choice2']}"), (_label(r["label"], (0, 1)),))]


def read_record(r):
    """One Choice per query: every distinct entity of the passage (spans with inclusive ends), in order of first
    appearance, put in place of @placeholder. The passage's @highlight lines become "- " bullets."""
    text = r["passage"]["text"]
    spans = sorted((e["start"], e["end"]) for e in r["passage"]["entities"])
    entities = tuple(dict.fromkeys(text[start:end + 1] for start, end in spans))
    if not entities:
        raise ValueError("a passage without candidate entities")
    context = text.replace("@highlight\n", "- ")
    out = []
    for q in r["qas"]:
        if "@placeholder" not in q["query"]:
            raise ValueError("a query without @placeholder")
        answers = tuple(dict.fromkeys(a["text"] for a in q["answers"]))
        out.append(Choice(context, tuple(q["query"].replace("@placeholder", e) for e in entities),
                          tuple(i for i, e in enumerate(entities) if e in answers), entities=entities, answers=answers))
    return out


# ----------------------------------------------------------------------------- the task table

@dataclass(frozen=True)
class Task:
    name: str                  # our key: "boolq"
    folder: str                # folder in the official archive and under data_dir: "BoolQ"
    read: Callable             # one JSON object -> a list of Pair or Choice
    shape: str                 # "pair" or "choice"
    num_labels: int            # classes of a pair task; 1 (a logit per choice) for multiple choice
    metrics: tuple             # what is reported, in the paper's order
    select: str                # the metric used for model selection / early stopping
    dev: tuple = ("val",)      # the split(s) evaluated, file names without .jsonl

    @property
    def splits(self):
        return ("train",) + self.dev

    @property
    def archive(self):         # the task's own zip on the official server, holding <folder>/train.jsonl, ...
        return self.folder + ".zip"


# CB selects on macro-F1, which does not reward predicting its majority class; ReCoRD on F1, MultiRC on F1a: the
# first number the paper reports.
TASKS = {t.name: t for t in [
    Task("boolq", "BoolQ", read_boolq, "pair", 2, ("accuracy",), "accuracy"),
    Task("cb", "CB", read_cb, "pair", 3, ("accuracy", "macro_f1"), "macro_f1"),
    Task("copa", "COPA", read_copa, "choice", 1, ("accuracy",), "accuracy"),
    Task("multirc", "MultiRC", read_multirc, "pair", 2, ("f1a", "em"), "f1a"),
    Task("record", "ReCoRD", read_record, "choice", 1, ("f1", "em"), "f1"),
    Task("wic", "WiC", read_wic, "pair", 2, ("accuracy",), "accuracy"),
    Task("wsc", "WSC", read_wsc, "pair", 2, ("accuracy",), "accuracy"),
]}


# ----------------------------------------------------------------------------- files

def records(path):
    """(line number, object) for each non-empty line of a JSONL file; a line that is not a JSON object is a
    DataError naming the file and the line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").removeprefix("\ufeff").strip()
                if line:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError(f"a JSON {type(obj).__name__}, not an object")
                    yield lineno, obj
            except (UnicodeDecodeError, ValueError) as e:    # json.JSONDecodeError is a ValueError
                raise DataError(f"{path}, line {lineno}: not a JSON object ({e}); is this an official file?") from None


def read_split(task, path):
    examples = []
    for lineno, r in records(path):
        try:
            examples += task.read(r)
        except KeyError as e:
            raise DataError(f"{path}, line {lineno}: no field {e.args[0]!r}, which the official {task.folder} "
                            "files have") from None
        except (TypeError, ValueError, AttributeError) as e:   # a field of the wrong kind, a bad label
            raise DataError(f"{path}, line {lineno}: {e}; is this the official {task.folder} file?") from None
    return examples


def get_task(name):
    key = str(name).lower()
    if key not in TASKS:
        raise DataError(f"Unknown SuperGLUE task {name!r}. Valid names: {', '.join(TASKS)} (RTE: GLUE's rte).")
    return TASKS[key]


def task_folder(task, data_dir):
    """data_dir/<Folder> (the root of the SuperGLUE download) or data_dir itself (the task folder)."""
    for folder in (os.path.join(data_dir, task.folder), data_dir):
        if all(os.path.isfile(os.path.join(folder, s + ".jsonl")) for s in task.splits):
            return folder
    raise DataError(f"SuperGLUE task {task.name}: data_dir {data_dir!r} lacks "
                    f"{', '.join(f'{task.folder}/{s}.jsonl' for s in task.splits)}. Put the files of the official "
                    f"{task.folder} download there (data_dir/{task.folder}/train.jsonl).")


def load_superglue(task, data_dir):
    """{split: [Pair or Choice]} for "train" and "val" of a local SuperGLUE folder; test files are never read."""
    task = get_task(task)
    folder = task_folder(task, data_dir)
    return {s: read_split(task, os.path.join(folder, s + ".jsonl")) for s in task.splits}


# ----------------------------------------------------------------------------- the official metrics

def macro_f1(preds, labels):
    """CB's F1: the unweighted mean over classes of each class's F1 (one class against the rest), over the classes
    that occur in labels or predictions (as scikit-learn's f1_score(average="macro") does)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    scores = []
    for c in np.union1d(preds, labels):
        tp = np.sum((preds == c) & (labels == c))
        scores.append(2 * tp / (np.sum(preds == c) + np.sum(labels == c)))
    return float(np.mean(scores))


def multirc_scores(preds, labels, groups):
    """F1a: binary F1 over every answer of every question; EM: the fraction of questions with all answers right."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    _, question = np.unique(np.asarray(groups), return_inverse=True)
    wrong = np.bincount(question, weights=preds != labels)       # wrong answers per question
    return {"f1a": f1(preds, labels), "em": float(np.mean(wrong == 0))}


PUNCTUATION = set(string.punctuation)


def normalize_answer(s):
    """The official ReCoRD (and SQuAD) answer normalisation: lower case, no punctuation, no articles (a, an, the),
    single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def token_f1(pred, gold):
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    return 0.0 if same == 0 else 2 * same / (len(p) + len(g))    # 2PR / (P + R) with P = same/|p|, R = same/|g|


def record_scores(pred_texts, answers):
    """ReCoRD: for each query, the best token F1 and exact match of the chosen entity over its gold answers."""
    f1s = [max((token_f1(p, a) for a in golds), default=0.0) for p, golds in zip(pred_texts, answers)]
    ems = [max((float(normalize_answer(p) == normalize_answer(a)) for a in golds), default=0.0)
           for p, golds in zip(pred_texts, answers)]
    return {"f1": float(np.mean(f1s)), "em": float(np.mean(ems))}


def score(task, preds, examples):
    """{metric: value} of predictions for examples: class ids for a pair task, the chosen index per question for
    multiple choice."""
    preds = np.asarray(preds)
    if len(preds) != len(examples) or not len(examples):
        raise DataError(f"score({task.name}): {len(preds)} predictions for {len(examples)} examples")
    labels = np.array([e.label for e in examples])
    if task.name == "multirc":
        return multirc_scores(preds, labels, [e.group for e in examples])
    if task.name == "record":
        return record_scores([e.entities[p] for p, e in zip(preds, examples)], [e.answers for e in examples])
    out = {"accuracy": float(np.mean(preds == labels))}
    return {**out, "macro_f1": macro_f1(preds, labels)} if task.name == "cb" else out
