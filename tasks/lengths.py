"""
Results by input length (the paper's Table 5 and Figure 2): a task's metric within bins of input tokens.

    edges("200") -> [0, 200, 400, 600, 800, 1000]  bins 0-200 ... 800-1000, and 1000+ (the last bin is open)
    edges("200:1400"), edges("0,256,512,1024")      a top other than 1000; explicit edges
    input_lengths(encoded)                          each example's input tokens, before any truncation or window
    by_length(lengths, score, edges) -> [{"bin": "0-200", "n": count, metric: value, ...}, ...]
    table(bins) -> Table 5's layout: one column per bin, one row per metric, then the number of examples
"""
import math

import numpy as np

from tasks.squad import Windows
from data import DataError, Encoded, Rows

DEFAULT = "200"


def edges(spec=DEFAULT):
    """Bin edges from --length-bins: a width ("200": up to 1000, then one open bin), "width:top", or edges "a,b,c"
    (increasing; the bin above the last is open)."""
    spec = str(spec).strip()
    try:
        if "," in spec:
            out = [int(x) for x in spec.split(",")]
        else:
            width, _, top = spec.partition(":")
            width = int(width)
            top = int(top) if top else 5 * width
            out = list(range(0, top + 1, width)) if width > 0 else []
    except ValueError:
        out = []
    if len(out) < 2 or any(b <= a for a, b in zip(out, out[1:])) or out[0] < 0:
        raise DataError(f"--length-bins {spec!r}: give a bin width (200), width:top (200:1400), or increasing "
                        "edges (0,256,512,1024)")
    return out


def input_lengths(enc):
    """Tokens of each example's whole input, special tokens included, before truncation: a GLUE text or pair, a
    passage-first row (a multiple-choice question: its longest option's row), a QA question with its whole context."""
    if isinstance(enc, Windows):
        return enc.lengths
    if isinstance(enc, Rows):
        return np.maximum.reduceat(enc.full, enc.offsets[:-1])
    if isinstance(enc, Encoded):
        return enc.full
    raise TypeError(f"no input lengths for {type(enc).__name__}")


def labels(e):
    return [f"{a}-{b}" for a, b in zip(e, e[1:])] + [f"{e[-1]}+"]


def by_length(lengths, score, e):
    """The metric per bin of input length. lengths: tokens of each example. score: {metric: per-example values}
    (the bin's value is their mean: accuracy from 0/1, F1, EM, ROUGE-L per question), or a function of the
    examples' indices returning {metric: value} (a metric that is no mean: MCC, F1 over a set, Pearson)."""
    lengths = np.asarray(lengths)
    b = np.searchsorted(np.asarray(e), lengths, side="right") - 1     # bin i holds e[i] <= length < e[i + 1]
    below = b < 0                                                     # shorter than the first edge: in no bin
    if callable(score):
        fn = score
    else:
        values = {k: np.asarray(v, np.float64) for k, v in score.items()}
        fn = lambda idx: {k: float(v[idx].mean()) for k, v in values.items()}
    out = []
    for i, name in enumerate(labels(e)):
        idx = np.flatnonzero((b == i) & ~below)
        got = fn(idx) if len(idx) else {}   # a correlation of one example is none: null, not NaN, in JSON
        out.append({"bin": name, "n": int(len(idx)), **{k: v if v is not None and math.isfinite(v) else None
                                                        for k, v in got.items()}})
    return out


def table(bins, title="tokens"):
    """Table 5's layout as text: bins as columns, each metric a row (empty bins show -), then the counts."""
    names = list(dict.fromkeys(k for b in bins for k in b if k not in ("bin", "n")))
    w = max(9, *(len(b["bin"]) + 1 for b in bins))
    cell = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = [f"{title:<10}" + "".join(f"{b['bin']:>{w}}" for b in bins)]
    lines += [f"{m:<10}" + "".join(f"{cell(b.get(m)):>{w}}" for b in bins) for m in names]
    lines.append(f"{'samples':<10}" + "".join(f"{b['n']:>{w}}" for b in bins))
    return "\n".join(lines)
