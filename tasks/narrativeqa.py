"""
NarrativeQA (Kočiský et al. 2018), the summary setting: questions about a story answered from its Wikipedia
summary. The official repository's files: third_party/wikipedia/summaries.csv (document_id, set, summary,
summary_tokenized) and qaps.csv (document_id, set, question, answer1, answer2, question_tokenized, ...), sets
train / valid / test.

The answers are free text written by people, so an encoder extracts a span of the summary instead (squad.py's
windows and decoding): its training target is the summary span of at most `max_span` words with the best ROUGE-L
against either answer (the oracle, computed once and cached beside the data); evaluation is ROUGE-L (metrics.rouge_l)
of the extracted span against both answers.
"""
import csv
import json
import os
import re
import sys

import numpy as np

from tasks.metrics import ROUGE_BETA, rouge_l, words
from files.downloads import find_or_download
from tasks.squad import Question
from tasks.task import Task
from data import DataError
from files import atomic_write

REPO = "https://raw.githubusercontent.com/deepmind/narrativeqa/master/"
SUMMARIES, QAPS = "third_party/wikipedia/summaries.csv", "qaps.csv"
SETS = ("train", "valid", "test")


def _read_csv(path, fields):
    """The rows of an official CSV file as dicts; a file cut off inside a row (an interrupted download), a row of
    the wrong number of fields or a file without rows is a DataError naming the file and the line."""
    csv.field_size_limit(sys.maxsize)   # a summary can be longer than csv's default field limit
    try:
        rows = _rows(path, strict=True)
    except csv.Error:                   # not strictly CSV (a quote inside a field): read as csv does by default
        rows = _rows(path, strict=False)
    missing = [c for c in fields if rows and c not in rows[0][1]]
    if not rows or missing:
        raise DataError(f"{path}: {'no rows' if not rows else 'no column ' + ', '.join(missing)}; the official "
                        f"file has the columns {', '.join(fields)}")
    odd = next(((n, r["set"]) for n, r in rows if r["set"] not in SETS), None)   # such a row would go unused
    if odd:
        raise DataError(f"{path}, line {odd[0]}: set {odd[1]!r}, where the official file has {', '.join(SETS)}")
    return [r for _, r in rows]


def _rows(path, strict):
    """[(line, row)]; strict: a csv.Error other than a quoted field left open at the end of the file propagates."""
    rows = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, strict=strict)
            for r in reader:
                if None in r or None in r.values():     # csv's marks of too many fields, or too few
                    n = sum(v is not None for k, v in r.items() if k is not None) + len(r.get(None, ()))
                    raise DataError(f"{path}, line {reader.line_num}: {n} fields where its header has "
                                    f"{len(reader.fieldnames)}: a file cut off (fetch it again) or not the official "
                                    "NarrativeQA file")
                rows.append((reader.line_num, r))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a CSV file ({e}); is this the official NarrativeQA file?") from None
    except csv.Error as e:
        cut = "unexpected end of data" in str(e)
        if strict and not cut:
            raise
        raise DataError(f"{path}, line {reader.line_num + 1}: " + (
            "a quoted field runs to the end of the file: the file is cut off (an interrupted download?); fetch it "
            "again" if cut else f"not CSV ({e}); is this the official NarrativeQA file?")) from None
    return rows


def oracle_span(summary, answers, max_span=20, beta=ROUGE_BETA):
    """(first char, end char, ROUGE-L) of the span of at most max_span words of summary with the best ROUGE-L
    against any of the answers; the earliest, then shortest, of equals. All starts at once: one LCS row per start,
    extended by one summary word at a time."""
    # the words of metrics.words (of summary.lower()), placed in summary itself: a character's lower case can be
    # longer ("İ" is "i" and a combining dot), which would shift every later place
    low = [(i, c) for i, ch in enumerate(summary) for c in ch.lower()]
    found = list(re.finditer(r"\w+", "".join(c for _, c in low)))
    spans = [(low[m.start()][0], low[m.end() - 1][0] + 1) for m in found]
    vocab = {}
    S = np.array([vocab.setdefault(m[0], len(vocab)) for m in found], np.int64)
    best, where = 0.0, (0, 0)
    for answer in answers:
        A = np.array([vocab.get(w, -1) for w in words(answer)], np.int64)
        m, n = len(A), len(S)
        if not m or not n:
            continue
        row = np.zeros((n, m + 1), np.int64)            # row[i, k]: LCS(summary words i..i+t, answer[:k])
        for t in range(min(max_span, n)):
            row = row[:n - t]
            hit = np.concatenate([np.zeros((n - t, 1), np.int64), row[:, :-1] + 1], 1)
            match = np.concatenate([np.zeros((n - t, 1), bool), S[t:, None] == A[None, :]], 1)
            row = np.maximum.accumulate(np.where(match, hit, row), axis=1)
            lcs = row[:, m]
            p, r = lcs / (t + 1), lcs / m
            f = np.where(lcs > 0, (1 + beta ** 2) * p * r / np.maximum(r + beta ** 2 * p, 1e-12), 0.0)
            i = int(f.argmax())
            if f[i] > best + 1e-12:
                best, where = float(f[i]), (i, i + t)
    if best == 0.0:
        return 0, 0, 0.0
    return spans[where[0]][0], spans[where[1]][1], best


def _cached(cache, key, n):
    """The oracle spans saved in cache, or None when there are none for this key; a file that is not what this
    module writes (cut off, edited) is said and computed again, as it is only a cache."""
    try:
        with open(cache) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        print(f"data: NarrativeQA: {cache} is unreadable ({e}); computing it again")
        return None
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None
    spans = saved.get("spans")
    if isinstance(spans, list) and len(spans) == n and all(
            isinstance(s, list) and len(s) == 3 and all(isinstance(x, (int, float)) for x in s) for s in spans):
        return spans
    print(f"data: NarrativeQA: {cache} does not hold {n:,} spans; computing it again")
    return None


def _oracles(path, rows, summaries, max_span):
    """Every training question's oracle span, from the cache file beside qaps.csv, else computed and saved."""
    cache = os.path.join(os.path.dirname(path), f"oracle-spans-{max_span}.json")
    key = {"qaps_bytes": os.path.getsize(path), "rows": len(rows), "max_span": max_span, "beta": ROUGE_BETA,
           "places": 2}  # caches from before it placed spans in the summary itself (shifted after an "İ"): redone
    spans = _cached(cache, key, len(rows))
    if spans is not None:
        return spans
    print(f"data: NarrativeQA: the oracle span of {len(rows):,} training questions (once; cached in {cache})")
    spans = [oracle_span(summaries[r["document_id"]], (r["answer1"], r["answer2"]), max_span) for r in rows]

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump({"key": key, "spans": spans}, f)
    try:
        atomic_write(cache, write)
    except OSError as e:  # a read-only --data-dir: the oracle is recomputed next time
        print(f"data: NarrativeQA: could not cache the oracle spans ({e})")
    return spans


def load_narrativeqa(data_dir=None, cache_dir=None, base_url=None, max_span=20):
    """{"train": [Question], "valid": [Question], "test": [Question]}. Training questions carry their oracle span
    as the one answer (those with no word in common with either answer are left out); valid and test carry the
    two written answers, which ROUGE-L compares the extracted span with. In --data-dir, the two CSVs may be in the
    repository's layout or side by side."""
    paths = find_or_download("NarrativeQA", {SUMMARIES: REPO + SUMMARIES, QAPS: REPO + QAPS}, data_dir, cache_dir,
                             base_url, also={SUMMARIES: os.path.basename(SUMMARIES)})
    summaries = {r["document_id"]: r["summary"] for r in _read_csv(paths[SUMMARIES], ("document_id", "set", "summary"))}
    qaps = _read_csv(paths[QAPS], ("document_id", "set", "question", "answer1", "answer2"))
    unknown = next((r["document_id"] for r in qaps if r["document_id"] not in summaries), None)
    if unknown is not None:
        raise DataError(f"{paths[QAPS]}: document {unknown} has no summary in {paths[SUMMARIES]}")
    out = {s: [] for s in SETS}
    train = [r for r in qaps if r["set"] == "train"]
    for r, (a, b, score) in zip(train, _oracles(paths[QAPS], train, summaries, max_span)):
        text = summaries[r["document_id"]]
        if score > 0:
            out["train"].append(Question(f"train-{len(out['train'])}", r["question"], text, (text[a:b],), (a,)))
    for i, r in enumerate(qaps):
        if r["set"] in ("valid", "test"):
            out[r["set"]].append(Question(f"{r['set']}-{i}", r["question"], summaries[r["document_id"]],
                                          (r["answer1"], r["answer2"])))
    for s in SETS:
        if not out[s]:
            why = " whose answers share a word with its summary" if s == "train" and train else ""
            raise DataError(f"{paths[QAPS]}: no {s} questions{why}; the official file has train, valid and test "
                            "rows (column set)")
    return out


def scores(texts, questions):
    """ROUGE-L of each extracted span against the question's two answers (the better of the two)."""
    return {"rouge_l": np.array([rouge_l(t, q.answers) for t, q in zip(texts, questions)])}


# the paper's Table 5 and Figure 2 report the test set; valid selects the model
TASK = Task(name="narrativeqa", benchmark="narrativeqa", folder="NarrativeQA", shape="span", metrics=("rouge_l",),
            select="rouge_l", dev=("valid", "test"), per_question=scores)
