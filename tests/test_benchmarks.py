"""train.py end to end on SuperGLUE and RACE files the tests write in the official layouts: every task trains and
reports its metrics in results.json; a tiny random model with SSMLoRA adapters really learns BoolQ-, COPA- and
RACE-shaped data (the multiple-choice head included), with RACE's articles cut to fit --max-len."""
import json
import random

import pytest

import checkpoints
from tasks import race
from tasks import superglue
import train
from tasks import get_task
from training.flags import parse as parse_args
from checkpoints import MINILM
from reproduce.synthetic import FILL, NEG, POS, filler
from superglue_fixtures import (boolq, cb, copa, multirc, race_article, record, wic, write_race, write_superglue_task,
                                wsc)



text = filler


def polar(rng, positive):
    return rng.choice(POS if positive else NEG)


# The learnable sets: the answer is the positive word, in the passage (BoolQ) or in one choice (COPA, RACE).

def boolq_set(n, rng):
    return [boolq(text(rng, 4) + "?", text(rng, 8, polar(rng, y)), bool(y)) for y in (rng.randrange(2) for _ in range(n))]


def copa_set(n, rng):
    out = []
    for _ in range(n):
        label = rng.randrange(2)
        choices = [text(rng, 3, polar(rng, i == label)) for i in range(2)]
        out.append(copa(text(rng, 6), *choices, rng.choice(["cause", "effect"]), label))
    return out


def race_set(n, rng):
    """Articles of 60 filler words (longer than --max-len 32 allows: cut), two questions each, four options."""
    out = []
    for _ in range(n // 2):
        questions = []
        for _ in range(2):
            right = rng.randrange(4)
            questions.append((text(rng, 4) + "?", [text(rng, 2, polar(rng, i == right)) for i in range(4)], "ABCD"[right]))
        out.append(race_article(text(rng, 60), questions))
    return out


def write_race_set(root, train_n, dev_n, rng):
    """Both levels in both splits, half each."""
    sets = {(s, lv): race_set(n // 2, rng) for s, n in (("train", train_n), ("dev", dev_n)) for lv in race.LEVELS}
    return write_race(root, sets)


def small_sets(rng):
    """A few examples of every other task, in its official form."""
    word = lambda: rng.choice(FILL)
    return {
        "CB": [cb(text(rng, 6), text(rng, 4), rng.choice(["entailment", "contradiction", "neutral"])) for _ in range(6)],
        "WiC": [wic("film", f"the film {text(rng, 3)}", f"a {text(rng, 3)} film", rng.random() < 0.5) for _ in range(6)],
        "WSC": [wsc("the film was bad so it lost", (0, "the film"), (5, "it"), rng.random() < 0.5) for _ in range(6)],
        "MultiRC": [multirc(text(rng, 30), [(text(rng, 3) + "?", [(word(), rng.randrange(2)) for _ in range(3)])
                                            for _ in range(2)]) for _ in range(3)],
        "ReCoRD": [record(f"Anna met Bob in Rome. {text(rng, 30)}", ["Anna", "Bob", "Rome"],
                          [("@placeholder met Bob", ["Anna"]), ("Anna went to @placeholder", ["Rome"])])
                   for _ in range(3)],
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("superglue"), random.Random(0)
    write_superglue_task(root, "BoolQ", boolq_set(192, rng), boolq_set(64, rng))
    write_superglue_task(root, "COPA", copa_set(192, rng), copa_set(64, rng))
    for folder, objs in small_sets(rng).items():
        write_superglue_task(root, folder, objs, objs)
    write_race_set(root, 192, 64, rng)
    return root


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return checkpoints.tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def run(task, model, files, out, *extra):
    return train.run(parse_args(["--task", task, "--model", str(model), "--data-dir", str(files), "--out", str(out),
                                     "--max-len", "32", "--batch-size", "8", *extra]))


@pytest.mark.parametrize("task", list(superglue.TASKS) + ["race"])
def test_every_task_trains_end_to_end_and_reports_its_metrics(task, tiny_bert, files, tmp_path):
    r = run(task, tiny_bert, files, tmp_path, "--max-steps", "2", "--max-train", "16")
    t = get_task(task)
    saved = json.loads((tmp_path / "results.json").read_text())
    metrics = saved["best"][t.dev[0]]
    assert list(metrics) == list(t.metrics) and all(0 <= v <= 1 for v in metrics.values()), metrics
    assert saved["steps"] == 2 and saved["task"] == task and saved == json.loads(json.dumps(r))
    import predict  # every task train.py trains, predict.py runs: one input of the kind it takes
    p = predict.load(str(tmp_path / "adapters.safetensors"), device="cpu")
    if t.shape == "choice":
        q = {"copa": {"context": "the film was bad", "question": "effect", "options": ["we left", "we stayed"]},
             "record": {"context": "Anna met Bob.", "question": "@placeholder met Bob", "options": ["Anna", "Bob"]},
             "race": {"context": "the film was bad", "question": "It was _ .", "options": ["good", "bad", "long"]}}
        [out] = predict.choose(p, [q[task]])
        assert out["n"] == 1 and out["option"] == q[task]["options"][out["choice"]] and 0 < out["probability"] <= 1
    else:
        [out] = predict.predict(p, ["the film was bad"], ["was it good?"])
        assert out["n"] == 1 and out["label"] in map(predict.spelled, t.labels) and 0 < out["probability"] <= 1
        assert isinstance(out["label"], str)  # one convention: a string, as the task's files spell it
    cut = saved["passage_cut"]
    assert set(cut) == {"train", t.dev[0]} and cut[t.dev[0]]["rows"] > 0
    if task in ("race", "multirc", "record"):        # passages of 30-60 words do not fit 32 tokens
        assert cut[t.dev[0]]["passage_cut"] > 0 and cut[t.dev[0]]["text_cut"] == 0


@pytest.mark.parametrize("task, floor", [("copa", 0.7), ("race", 0.55)])
def test_tiny_random_model_learns_multiple_choice(task, floor, tiny_bert, files, tmp_path, capsys, seed, learned):
    """The multiple-choice head on a random frozen model: only SSMLoRA's adapters and the head learn."""
    r = run(task, tiny_bert, files, tmp_path, "--epochs", "8", "--lr", "1e-2", "--dropout", "0", "--patience", "0",
            "--seed", str(seed))
    score = r["best"][get_task(task).dev[0]][r["select"]]
    learned.at_least(score, floor)    # chance: 0.5 (COPA), 0.25 (RACE); worst 0.81 and 0.70
    if task == "copa":  # predict.py, from the official val lines, picks what the evaluation picked
        import predict
        val = [json.loads(line) for line in (files / "COPA" / "val.jsonl").read_text().splitlines()]
        p = predict.load(str(tmp_path / "adapters.safetensors"), device="cpu")
        out = predict.choose(p, [{"context": v["premise"], "question": v["question"],
                                  "options": [v["choice1"], v["choice2"]]} for v in val])
        assert sum(o["choice"] == v["label"] for o, v in zip(out, val)) / len(val) == score
    if task == "race":
        assert set(r["best"]["dev"]) == {"all", "middle", "high"}
        out = capsys.readouterr().out
        assert "data: dev: the passage was cut to fit --max-len 32 in 256 of 256 rows" in out   # 64 questions x 4
        assert r["passage_cut"]["train"] == {"rows": 768, "passage_cut": 768, "text_cut": 0}
        again = train.run(parse_args(["--eval-only", str(tmp_path / "adapters.safetensors"), "--data-dir",
                                          str(files), "--max-len", "32"]))
        assert again["eval"]["dev"] == r["best"]["dev"]      # the saved choice head and adapters, rebuilt
        assert f"best all {score:.4f} (middle " in out


def test_pretrained_minilm_learns_boolq_quickly(files, tmp_path, seed, learned):
    """Pair classification (passage, question): 20 steps of SSMLoRA on the real MiniLM."""
    r = run("boolq", MINILM, files, tmp_path, "--max-steps", "20", "--lr", "2e-3", "--seed", str(seed))
    learned.at_least(r["best"]["val"]["accuracy"], 0.85)    # chance 0.5; worst 1.0
    import predict  # a pair task: passage, then question; labels as BoolQ writes them
    val = [json.loads(line) for line in (files / "BoolQ" / "val.jsonl").read_text().splitlines()]
    p = predict.load(str(tmp_path / "adapters.safetensors"), device="cpu")
    out = predict.predict(p, [v["passage"] for v in val], [v["question"] for v in val])
    assert {o["label"] for o in out} <= {"true", "false"}  # BoolQ's JSON true, spelled as a string
    assert sum(o["label"] == json.dumps(v["label"]) for o, v in zip(out, val)) / len(val) == r["best"]["val"]["accuracy"]
