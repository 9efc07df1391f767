"""metrics.py against values computed by hand, degenerate inputs included (no warnings)."""
import warnings

import numpy as np
import pytest
import torch

from tasks import metrics
from tasks import get_task


def no_warnings(fn, *args):
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        return fn(*args)


def test_accuracy_and_f1_by_hand():
    p, y = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0])
    # correct at positions 0, 2, 4, 5 -> 4/6; tp = 2 (0, 4), fp = 1 (1), fn = 1 (3) -> F1 = 2·2 / (2·2 + 1 + 1) = 2/3
    assert no_warnings(metrics.accuracy, p, y) == pytest.approx(4 / 6)
    assert no_warnings(metrics.f1, p, y) == pytest.approx(2 / 3)
    assert no_warnings(metrics.f1, np.zeros(4), np.zeros(4)) == 0.0      # no positives at all: 0, not 0/0


def test_matthews_by_hand():
    p, y = np.array([1, 1, 1, 0, 0, 0, 1, 0]), np.array([1, 1, 0, 0, 0, 1, 1, 1])
    # tp = 3 (0, 1, 6), tn = 2 (3, 4), fp = 1 (2), fn = 2 (5, 7)
    # MCC = (3·2 − 1·2) / sqrt((3+1)(3+2)(2+1)(2+2)) = 4 / sqrt(240) = 0.2581989
    assert no_warnings(metrics.matthews, p, y) == pytest.approx(4 / np.sqrt(240))
    assert no_warnings(metrics.matthews, y, y) == pytest.approx(1.0)
    assert no_warnings(metrics.matthews, 1 - y, y) == pytest.approx(-1.0)
    assert no_warnings(metrics.matthews, np.ones(8, int), y) == 0.0      # constant predictions: 0, no warning
    assert no_warnings(metrics.matthews, np.zeros(8, int), np.zeros(8, int)) == 0.0


def test_pearson_and_spearman_by_hand():
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 1.0, 4.0, 3.0])
    # centred: x' = (-1.5, -0.5, 0.5, 1.5), y' = (-0.5, -1.5, 1.5, 0.5)
    # sum x'y' = 0.75 + 0.75 + 0.75 + 0.75 = 3; sum x'^2 = sum y'^2 = 5 -> r = 3/5 = 0.6
    assert no_warnings(metrics.pearson, x, y) == pytest.approx(0.6)
    # ranks equal the values here, so Spearman = Pearson = 0.6
    assert no_warnings(metrics.spearman, x, y) == pytest.approx(0.6)
    # ties: a = (10, 20, 20, 30) ranks (1, 2.5, 2.5, 4); b = (1, 3, 2, 4) ranks (1, 3, 2, 4)
    # centred a: (-1.5, 0, 0, 1.5), b: (-1.5, 0.5, -0.5, 1.5): sum = 4.5, |a|^2 = 4.5, |b|^2 = 5 -> 4.5/sqrt(22.5)
    assert no_warnings(metrics.spearman, np.array([10, 20, 20, 30]), np.array([1, 3, 2, 4])) == pytest.approx(
        4.5 / np.sqrt(22.5))
    assert no_warnings(metrics._ranks, np.array([3.0, 1.0, 3.0, 3.0, 0.5])).tolist() == [4, 2, 4, 4, 1]
    # constant predictions, including 0.1 whose float mean is not exactly 0.1: 0, no warning
    assert no_warnings(metrics.pearson, np.full(3, 0.1), np.array([1.0, 2.0, 3.0])) == 0.0
    assert no_warnings(metrics.spearman, np.full(3, 0.1), np.array([1.0, 2.0, 3.0])) == 0.0


def test_compute_metrics():
    y = np.array([1, 0, 1, 1])
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])     # argmax: 1, 0, 1, 0
    # tp = 2, fn = 1: F1 = 4/5; accuracy 3/4
    assert metrics.compute_metrics(get_task("mrpc"), logits, y) == pytest.approx({"f1": 0.8, "accuracy": 0.75})
    assert set(metrics.compute_metrics(get_task("cola"), [1, 0, 1, 1], y)) == {"mcc"}
    scores = metrics.compute_metrics(get_task("stsb"), torch.tensor([[1.0], [2.0], [3.0], [4.0]]), np.array([2.0, 1.0, 4.0, 3.0]))
    assert scores == pytest.approx({"pearson": 0.6, "spearman": 0.6})
    with pytest.raises(ValueError, match="equally many"):
        metrics.compute_metrics(get_task("sst2"), [1, 0], [1, 0, 1])


# ----------------------------------------------------------------------------- SuperGLUE's and RACE's metrics

def test_macro_f1_by_hand():
    # class 0: tp 1, 2 predicted, 2 true -> 1/2; class 1: tp 1, 1, 2 -> 2/3; class 2: tp 2, 3, 2 -> 4/5
    preds, labels = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    assert no_warnings(metrics.macro_f1, preds, labels) == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    # a class that occurs in neither predictions nor labels does not count (scikit-learn's convention)
    assert metrics.macro_f1([0, 0], [0, 1]) == pytest.approx((2 / 3 + 0) / 2)


def test_exact_match_per_group_by_hand():
    # group "a": both right; "b": one of two wrong; "c": its one item right -> 2 of 3 groups
    preds, labels = [1, 0, 1, 1, 0], [1, 0, 1, 0, 0]
    assert metrics.exact_match_per_group(preds, labels, ["a", "a", "b", "b", "c"]) == pytest.approx(2 / 3)


def test_answer_normalisation_and_token_f1_by_hand():
    assert metrics.normalize_answer("The  U.S.-led Coalition!") == "usled coalition"
    assert metrics.normalize_answer("A banana, an apple; THE anthem") == "banana apple anthem"  # whole words only
    assert metrics.token_f1("the Eiffel Tower", "Eiffel tower in Paris") == pytest.approx(2 * 2 / (2 + 4))
    assert metrics.token_f1("Paris", "London") == 0.0
    assert metrics.token_f1("the", "a") == 0.0          # both empty once normalised: no common token, 0 (as SQuAD's)
    # "an Apple" equals gold "apple" once normalised; "Barack Obama" against "Obama": P 1/2, R 1 -> F1 2/3
    scores = metrics.max_over_gold(["an Apple", "Barack Obama"], [("Apple Inc.", "apple"), ("Obama",)])
    assert scores == pytest.approx({"f1": (1 + 2 / 3) / 2, "em": 1 / 2})

