"""RACE (Lai et al. 2017): multiple-choice reading comprehension from English exams, middle and high school.

The official release: RACE/{train,dev,test}/{middle,high}/<n>.txt, each file one JSON object holding an article and
its questions: {"article": str, "questions": [str], "options": [[4 str]], "answers": ["A".."D"], "id": str}.
Each question is one Choice: the article is the context (cut from its end when a row is too long), and each option
is paired with it together with the question; a cloze question ("... because _ .") takes the option in its blank.
Accuracy on dev is reported for All, Middle and High, as the paper's Table 4.
"""
import json
import os

import numpy as np

from tasks.task import Task, kind, text
from data import Choice, DataError
from files.downloads import benchmark_folder, download, missing, mirror, untar

LEVELS = ("middle", "high")
RACE_URL = "http://www.cs.cmu.edu/~glai1/data/race/RACE.tar.gz"


def levels_accuracy(preds, examples):
    """Accuracy over all questions, and over the middle- and high-school ones."""
    right = np.asarray(preds) == np.array([e.label for e in examples])
    level = np.array([e.level for e in examples])
    # none: a level with no questions (--max-eval's first N can hold no high-school ones), null in JSON, not NaN
    acc = lambda keep: float(np.mean(right[keep])) if keep.any() else None
    return {"all": acc(np.ones_like(right)), "middle": acc(level == "middle"), "high": acc(level == "high")}


TASK = Task(name="race", benchmark="race", folder="RACE", shape="choice", scores=levels_accuracy, num_labels=1,
            metrics=("all", "middle", "high"), select="all")


def fill(question, option):
    return question.replace("_", option) if "_" in question else f"{question} {option}"


def read_file(path, level):
    try:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; is this an official RACE file?") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    try:
        article, questions, options, answers = text(r, "article"), r["questions"], r["options"], r["answers"]
        if not all(isinstance(x, list) for x in (questions, options, answers)):
            raise ValueError("questions, options and answers must be lists")
        if not len(questions) == len(options) == len(answers):
            raise ValueError(f"{len(questions)} questions, {len(options)} option lists and {len(answers)} answers")
        out = []
        for n, (q, opts, a) in enumerate(zip(questions, options, answers), 1):
            # a null or a number would otherwise be read as the text "None" or "5"
            if not isinstance(q, str):
                raise ValueError(f"question {n} is {kind(q)}, not a string")
            if not isinstance(opts, list):
                raise ValueError(f"question {n}: its options are {kind(opts)}, not a list of strings")
            if bad := [o for o in opts if not isinstance(o, str)]:
                raise ValueError(f"question {n}: its options hold {kind(bad[0])}, where a list of strings is expected")
            gold = "ABCDEFGH".find(a) if isinstance(a, str) and len(a) == 1 else -1
            if not 0 <= gold < len(opts):
                raise ValueError(f"answer {a!r} for {len(opts)} options (A, B, ...)")
            out.append(Choice(article, tuple(fill(q, o) for o in opts), (gold,), level))
        return out
    except KeyError as e:
        raise DataError(f"{path}: no field {e.args[0]!r}, which the official RACE files have") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: {e}; is this an official RACE file?") from None


def _complete(folder):
    return all(os.path.isdir(os.path.join(folder, s, lv)) for s in TASK.splits for lv in LEVELS)


def race_folder(data_dir=None, cache_dir=None, base_url=None):
    """The RACE folder: in data_dir, or downloaded once into the cache from the official RACE.tar.gz."""
    url = mirror("RACE.tar.gz", base_url, "race", RACE_URL)
    wanted = [f"{s}/{lv}" for s in TASK.splits for lv in LEVELS]
    lacks = lambda folders: f"the folders {missing(folders, wanted, 'RACE/', os.path.isdir)} of the official release"
    return benchmark_folder("RACE", "RACE", data_dir, cache_dir, _complete, lambda tmp: _unpack(url, tmp),
                            "the folders RACE/{train,dev}/{middle,high} of the official release", [RACE_URL], "race",
                            lacks)


def _unpack(url, tmp):
    archive = os.path.join(tmp, "RACE.tar.gz")
    download(url, archive)
    untar(archive, url, tmp)
    if not _complete(os.path.join(tmp, "RACE")):
        raise DataError(f"{url} does not contain RACE/{{train,dev}}/{{middle,high}}")


def load_race(data_dir=None, cache_dir=None, base_url=None):
    """{"train": [Choice], "dev": [Choice]}, middle school first, files in numeric order; test is never read."""
    folder, splits = race_folder(data_dir, cache_dir, base_url), {}
    for s in TASK.splits:
        splits[s] = []
        for level in LEVELS:
            where = os.path.join(folder, s, level)
            names = sorted((n for n in os.listdir(where) if n.endswith(".txt")), key=lambda n: (len(n), n))
            if not names:
                raise DataError(f"RACE: {where} holds no .txt files; unpack the official RACE.tar.gz again")
            for n in names:
                splits[s] += read_file(os.path.join(where, n), level)
        if not splits[s]:
            raise DataError(f"RACE: {os.path.join(folder, s)} holds no questions; unpack the official RACE.tar.gz "
                            "again")
    return splits
