"""SuperGLUE v2 (Wang et al. 2019): the task table, readers for the official JSONL files, and each task's scoring
with its official metrics (tasks/metrics.py).

Each task is cast the way the literature does, into one of the two shapes of data.py that tokenization and batching
share: Pair(text_a, text_b, label, group), a passage and a text classified together (group: MultiRC's question,
whose answers exact match scores together), and Choice(context, choices, gold, ...), the passage paired with each
choice, one softmax over them. Only the passage is ever cut to fit.

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

from tasks.metrics import accuracy, exact_match_per_group, f1, macro_f1, max_over_gold
from tasks.task import Task, kind, text
from data import Choice, DataError, Pair
from files.downloads import benchmark_folder, download_zip, mirror, missing


# ----------------------------------------------------------------------------- readers: one JSON object -> examples

def _label(value, allowed):
    """Index of value in allowed, comparing types too (JSON true is not 1)."""
    for i, a in enumerate(allowed):
        if type(a) is type(value) and a == value:
            return i
    raise ValueError(f"label {value!r}, expected {' or '.join(json.dumps(a) for a in allowed)}")


BOOL = (False, True)
CB_LABELS = ("entailment", "contradiction", "neutral")


def _index(obj, key):
    """obj[key] when it is a whole number (JSON true is none)."""
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"field {key!r} is {kind(value)}, not a whole number")
    return value


def read_boolq(r):
    return [Pair(text(r, "passage"), text(r, "question"), _label(r["label"], BOOL))]


def read_cb(r):
    return [Pair(text(r, "premise"), text(r, "hypothesis"), _label(r["label"], CB_LABELS))]


def read_wic(r):
    word = text(r, "word")
    return [Pair(f"{word}: {text(r, 'sentence1')}", f"{word}: {text(r, 'sentence2')}", _label(r["label"], BOOL))]


def read_wsc(r):
    """The sentence with the candidate referent marked *so* and the pronoun #so# (as T5 casts WSC), and the question
    whether the pronoun refers to the candidate. The span indices count whitespace-separated words."""
    words, t = text(r, "text").split(), r["target"]
    spans = [(_index(t, f"span{i}_index"), text(t, f"span{i}_text"), mark) for i, mark in ((1, "*"), (2, "#"))]
    for index, span, mark in sorted(spans, reverse=True):    # the later span first: marking it moves no index
        n = len(span.split())
        if not 0 <= index <= len(words) - n:
            raise ValueError(f"span {span!r} at word {index} lies outside the {len(words)}-word text")
        words[index:index + n] = [mark + " ".join(words[index:index + n]) + mark]
    question = f"Does #{t['span2_text']}# refer to *{t['span1_text']}*?"
    return [Pair(" ".join(words), question, _label(r["label"], BOOL))]


def read_multirc(r):
    p = r["passage"]
    if not p["questions"] or not all(q["answers"] for q in p["questions"]):
        raise ValueError("a passage without questions, or a question without answers")
    return [Pair(text(p, "text"), f"{text(q, 'question')} {text(a, 'text')}", _label(a["label"], (0, 1)),
                 f"{r['idx']}/{q['idx']}")
            for q in p["questions"] for a in q["answers"]]


def read_copa(r):
    if r["question"] not in ("cause", "effect"):
        raise ValueError(f"question {r['question']!r}, expected \"cause\" or \"effect\"")
    ask = "What was the cause?" if r["question"] == "cause" else "What happened as a result?"
    return [Choice(text(r, "premise"), (f"{ask} {text(r, 'choice1')}", f"{ask} {text(r, 'choice2')}"),
                   (_label(r["label"], (0, 1)),))]


def read_record(r):
    """One Choice per query: every distinct entity of the passage (spans with inclusive ends), in order of first
    appearance, put in place of @placeholder. The passage's @highlight lines become "- " bullets."""
    passage = text(r["passage"], "text")
    spans = sorted((e["start"], e["end"]) for e in r["passage"]["entities"])
    bad = [(a, b) for a, b in spans if not (isinstance(a, int) and isinstance(b, int) and 0 <= a <= b < len(passage))]
    if bad:
        raise ValueError(f"entity span {bad[0][0]}..{bad[0][1]} lies outside the {len(passage)}-character passage")
    entities = tuple(dict.fromkeys(passage[start:end + 1] for start, end in spans))
    if not entities:
        raise ValueError("a passage without candidate entities")
    context = passage.replace("@highlight\n", "- ")
    out = []
    for q in r["qas"]:
        query = text(q, "query")
        if "@placeholder" not in query:
            raise ValueError("a query without @placeholder")
        answers = tuple(dict.fromkeys(text(a, "text") for a in q["answers"]))
        out.append(Choice(context, tuple(query.replace("@placeholder", e) for e in entities),
                          tuple(i for i, e in enumerate(entities) if e in answers), entities=entities, answers=answers))
    return out


# ----------------------------------------------------------------------------- scoring with the official metrics
# preds: a class id per Pair, or the index of the chosen choice per Choice.

def accuracy_of(preds, examples):
    return {"accuracy": accuracy(preds, [e.label for e in examples])}


def cb_scores(preds, examples):
    labels = [e.label for e in examples]
    return {"accuracy": accuracy(preds, labels), "macro_f1": macro_f1(preds, labels)}


def multirc_scores(preds, examples):
    """F1a: binary F1 over every answer of every question; EM: the fraction of questions with all answers right."""
    labels = [e.label for e in examples]
    return {"f1a": f1(preds, labels), "em": exact_match_per_group(preds, labels, [e.group for e in examples])}


def record_scores(preds, examples):
    """The chosen entity's best token F1 and exact match over the query's gold answers."""
    return max_over_gold([e.entities[p] for p, e in zip(preds, examples)], [e.answers for e in examples])


# ----------------------------------------------------------------------------- the task table

def superglue_task(name, folder, read, scores, shape, num_labels, metrics, select, labels=None):
    return Task(name=name, benchmark="superglue", folder=folder, read=read, scores=scores, shape=shape, labels=labels,
                num_labels=num_labels, metrics=metrics, select=select, dev=("val",), archive=folder + ".zip")


# CB selects on macro-F1, which does not reward predicting its majority class; ReCoRD on F1, MultiRC on F1a: the
# first number the paper reports.
TASKS = {t.name: t for t in [
    superglue_task("boolq", "BoolQ", read_boolq, accuracy_of, "pair", 2, ("accuracy",), "accuracy", BOOL),
    superglue_task("cb", "CB", read_cb, cb_scores, "pair", 3, ("accuracy", "macro_f1"), "macro_f1", CB_LABELS),
    superglue_task("copa", "COPA", read_copa, accuracy_of, "choice", 1, ("accuracy",), "accuracy"),
    superglue_task("multirc", "MultiRC", read_multirc, multirc_scores, "pair", 2, ("f1a", "em"), "f1a", (0, 1)),
    superglue_task("record", "ReCoRD", read_record, record_scores, "choice", 1, ("f1", "em"), "f1"),
    superglue_task("wic", "WiC", read_wic, accuracy_of, "pair", 2, ("accuracy",), "accuracy", BOOL),
    superglue_task("wsc", "WSC", read_wsc, accuracy_of, "pair", 2, ("accuracy",), "accuracy", BOOL),
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
    if not examples:
        raise DataError(f"{path}: no examples in this file (empty): use the official {task.folder} file, unchanged")
    return examples


SUPERGLUE_URL = "https://dl.fbaipublicfiles.com/glue/superglue/data/v2/"   # one zip per task: BoolQ.zip, ...


def _complete(task, folder):
    return all(os.path.isfile(os.path.join(folder, s + ".jsonl")) for s in task.splits)


def task_folder(task, data_dir=None, cache_dir=None, base_url=None):
    """The folder of a task's JSONL files: in data_dir, or downloaded once into the cache (files.downloads)."""
    expected = ", ".join(f"{task.folder}/{s}.jsonl" for s in task.splits)
    url = mirror(task.archive, base_url, "superglue", SUPERGLUE_URL + task.archive)

    def build(tmp):
        download_zip(url, tmp, task.archive)
        if not _complete(task, os.path.join(tmp, task.folder)):
            raise DataError(f"{url} does not contain {expected}")
    return benchmark_folder(f"SuperGLUE task {task.folder}", task.folder, data_dir, cache_dir,
                            lambda f: _complete(task, f), build, expected, [SUPERGLUE_URL + task.archive], "superglue",
                            lambda folders: missing(folders, [s + ".jsonl" for s in task.splits], task.folder + "/"))


def load_superglue(task, data_dir=None, cache_dir=None, base_url=None):
    """{split: [Pair or Choice]} for "train" and "val"; test files are never read (no labels)."""
    task = TASKS[task.lower()] if isinstance(task, str) else task
    folder = task_folder(task, data_dir, cache_dir, base_url)
    return {s: read_split(task, os.path.join(folder, s + ".jsonl")) for s in task.splits}
