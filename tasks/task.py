"""The one Task type every benchmark's table is made of."""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from data import DataError


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str                        # our key: "sst2", "boolq", "race"
    benchmark: str                   # the reader that loads it: "glue", "superglue", "race", "squad", "narrativeqa"
    folder: str                      # its folder in the official archive and under --data-dir: "SST-2", "BoolQ"
    shape: str                       # "text": GLUE's texts and text pairs (data.Example), truncated as a pair;
                                     # "pair" / "choice": passage-first rows (data.Pair / data.Choice), only the
                                     # passage cut to fit; "span": extractive QA (squad.Question), the
                                     # context split into windows, the answer a span of it
    metrics: tuple                   # what is reported, in the paper's order
    select: str                      # the metric used for model selection and early stopping
    dev: tuple = ("dev",)            # the split(s) evaluated, file names without their extension
    num_labels: int = 2              # classes; 1: a regression score (STS-B) or one logit per choice
    scores: Callable = None          # "pair" and "choice": (predicted classes or choices, examples) -> {metric: value}
    per_question: Callable = None    # "span": (answer texts, questions) -> {metric: per-question values}, whose
                                     # means are the metrics (so the bins of input length can average them)
    read: Callable = None            # SuperGLUE: one JSON object -> a list of Pair or Choice
    # GLUE's TSV files: the official archive, the columns of the text(s) and of the label, the label values as
    # written (class id = position; None: regression), the columns of a header-less file, and whether rows with
    # missing fields are a known defect of the official file, to be skipped
    archive: str = None
    text_a: str = None
    text_b: str = None
    label: str = None
    labels: tuple = None
    columns: tuple = None
    skip_broken: bool = False

    @property
    def splits(self):
        return ("train",) + self.dev

    @property
    def is_regression(self):
        return self.num_labels == 1 and self.shape == "text"

    def score(self, preds, examples):
        """A reading task's metrics, {metric: value}, from one prediction per example: its class or choice, or (span)
        its answer text."""
        if len(preds) != len(examples) or not len(examples):
            raise DataError(f"{self.name}: {len(preds)} predictions for {len(examples)} examples")
        if self.shape == "span":
            return {k: float(np.mean(v)) for k, v in self.per_question(list(preds), examples).items()}
        return self.scores(list(map(int, preds)), examples)

    @property
    def is_reading(self):  # scored by the task from its examples, not from labels alone
        return self.shape != "text"


def kind(value):
    """What JSON calls a value's type, for messages."""
    return {str: "a string", bool: "true or false", int: "a number", float: "a number", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def text(obj, key):
    """obj[key] when it is a string (a KeyError when missing, as the readers report); a null or a number is a
    ValueError, where an f-string would read it as the text "None" or "5"."""
    value = obj[key]
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} is {kind(value)}, not a string")
    return value
