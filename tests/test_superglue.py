"""superglue.py: every task read from the official JSONL layout and cast as the README says; one-line errors naming
file and line; the official metrics against values computed by hand."""
import json
import os

import pytest

from tasks import get_task
from tasks import superglue as sg
from data import Choice, DataError, Pair
from superglue_fixtures import boolq, cb, copa, multirc, record, superglue_zip, wic, write_superglue_task, wsc

WSC_TEXT = "Mark told Pete many lies about himself, which Pete included in his book. He should have been more truthful."
TROPHY = "The trophy does not fit into the brown suitcase because it is too large."
PASSAGE = "Paris is in France.\n@highlight\nObama visited Paris"

# (official folder, train objects, val objects, the examples expected from train)
CASES = {
    "boolq": ("BoolQ", [boolq("is the sky blue", "The sky is blue.", True), boolq("is ice hot", "Ice is cold.", False)],
              [boolq("q", "p", True)],
              [Pair("The sky is blue.", "is the sky blue", 1), Pair("Ice is cold.", "is ice hot", 0)]),
    "cb": ("CB", [cb("It rains.", "It is wet.", "entailment"), cb("A", "B", "contradiction"), cb("C", "D", "neutral")],
           [cb("p", "h", "neutral")], [Pair("It rains.", "It is wet.", 0), Pair("A", "B", 1), Pair("C", "D", 2)]),
    "wic": ("WiC", [wic("bank", "He sat on the bank.", "The bank closed.", False)], [wic("w", "w a", "w b", True)],
            [Pair("bank: He sat on the bank.", "bank: The bank closed.", 0)]),
    "wsc": ("WSC", [wsc(WSC_TEXT, (0, "Mark"), (13, "He"), False), wsc(TROPHY, (0, "The trophy"), (10, "it"), True)],
            [wsc("a b", (0, "a"), (1, "b"), True)],
            [Pair("*Mark* told Pete many lies about himself, which Pete included in his book. #He# should have been "
                  "more truthful.", "Does #He# refer to *Mark*?", 0),
             Pair("*The trophy* does not fit into the brown suitcase because #it# is too large.",
                  "Does #it# refer to *The trophy*?", 1)]),
    "copa": ("COPA", [copa("The man broke his toe.", "He dropped a hammer.", "He got a hole in his sock.", "cause", 0),
                      copa("I tipped the bottle.", "The liquid froze.", "The liquid spilled.", "effect", 1)],
             [copa("p", "a", "b", "cause", 1)],
             [Choice("The man broke his toe.", ("What was the cause? He dropped a hammer.",
                                                "What was the cause? He got a hole in his sock."), (0,)),
              Choice("I tipped the bottle.", ("What happened as a result? The liquid froze.",
                                              "What happened as a result? The liquid spilled."), (1,))]),
    "multirc": ("MultiRC", [multirc("Para one.", [("Who?", [("Ann", 1), ("Bob", 0)]), ("Where?", [("Rome", 1)])]),
                            multirc("Para two.", [("When?", [("May", 0), ("June", 1)])])],
                [multirc("p", [("q", [("a", 1)])])],
                [Pair("Para one.", "Who? Ann", 1, "0/0"), Pair("Para one.", "Who? Bob", 0, "0/0"),
                 Pair("Para one.", "Where? Rome", 1, "0/1"), Pair("Para two.", "When? May", 0, "1/0"),
                 Pair("Para two.", "When? June", 1, "1/0")]),
    "record": ("ReCoRD", [record(PASSAGE, ["Obama", "France", "Paris"],
                                 [("@placeholder is the capital of France", ["Paris"]), ("@placeholder left", ["Bush"])])],
               [record("A met B", ["A", "B"], [("@placeholder met B", ["A"])])],
               [Choice("Paris is in France.\n- Obama visited Paris",
                       ("Paris is the capital of France", "France is the capital of France",
                        "Obama is the capital of France"), (0,), entities=("Paris", "France", "Obama"),
                       answers=("Paris",)),
                Choice("Paris is in France.\n- Obama visited Paris", ("Paris left", "France left", "Obama left"), (),
                       entities=("Paris", "France", "Obama"), answers=("Bush",))]),
}


def test_task_table():
    assert list(sg.TASKS) == ["boolq", "cb", "copa", "multirc", "record", "wic", "wsc"]
    assert {n: t.folder for n, t in sg.TASKS.items()} == {n: c[0] for n, c in CASES.items()}
    assert {n: (t.metrics, t.select) for n, t in sg.TASKS.items() if t.metrics != ("accuracy",)} == {
        "cb": (("accuracy", "macro_f1"), "macro_f1"), "multirc": (("f1a", "em"), "f1a"), "record": (("f1", "em"), "f1")}
    assert [n for n, t in sg.TASKS.items() if t.shape == "choice"] == ["copa", "record"]
    assert sg.TASKS["cb"].num_labels == 3 and sg.TASKS["copa"].num_labels == 1
    assert get_task("BoolQ").name == "boolq"
    assert get_task("rte").benchmark == "glue"  # SuperGLUE's RTE is GLUE's rte: one registry, one name


@pytest.mark.parametrize("task", list(CASES))
def test_parse_official_layout(tmp_path, task):
    folder, train, val, expected = CASES[task]
    write_superglue_task(tmp_path, folder, train, val)
    splits = sg.load_superglue(task, str(tmp_path))
    assert list(splits) == ["train", "val"]            # test.jsonl (no labels) is never read
    assert splits["train"] == expected
    assert len(splits["val"]) == 1
    assert sg.load_superglue(task, str(tmp_path / folder)) == splits     # the task folder itself works too


def test_record_gold_spellings_and_no_gold():
    r = record("The U.S. and the United States and Canada", ["U.S.", "United States", "Canada"],
               [("@placeholder met", ["U.S.", "United States"])])
    (ex,) = sg.read_record(r)
    assert ex.entities == ("U.S.", "United States", "Canada") and ex.gold == (0, 1) and ex.label == 0
    assert sg.read_record(CASES["record"][1][0])[1].label == -1


def bad_line(tmp_path, folder, objs, line):
    """Write train.jsonl with objs and line appended (as text); returns its path."""
    path = write_superglue_task(tmp_path, folder, objs, objs[:1])
    with open(os.path.join(path, "train.jsonl"), "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return os.path.join(path, "train.jsonl")


@pytest.mark.parametrize("task, line, message", [
    ("boolq", '{"question": "is it", "passage": ', "not a JSON object (Expecting value"),
    ("boolq", '["a", "list"]', "not a JSON object (a JSON list, not an object)"),
    ("boolq", '{"question": "is it", "label": true}', "no field 'passage', which the official BoolQ files"),
    ("boolq", '{"question": "q", "passage": "p", "label": "yes"}', "label 'yes', expected false or true"),
    ("cb", '{"premise": "p", "hypothesis": "h", "label": "maybe"}', 'label \'maybe\', expected "entailment" or'),
    ("multirc", json.dumps({"idx": 5, "passage": {"text": "t", "questions": [{"idx": 0, "question": "q",
                                                                              "answers": [{"text": "a"}]}]}}),
     "no field 'label'"),
    ("wsc", json.dumps(wsc("a b", (0, "a"), (7, "b"), True)), "span 'b' at word 7 lies outside the 2-word"),
    ("record", json.dumps(record("A met B", ["A"], [("A met B", ["A"])])), "a query without @placeholder"),
    ("record", json.dumps({**record("A met B", ["A"], [("@placeholder met B", ["A"])]),
                           "passage": {"text": "A met B", "entities": [{"start": 4, "end": 9}]}}),
     "entity span 4..9 lies outside the 7-character passage"),
    ("multirc", json.dumps({"idx": 5, "passage": {"text": "t", "questions": []}}),
     "a passage without questions, or a question without answers"),
    # a text field that is null or a number is refused, not read as the text "None" or "5"
    ("boolq", json.dumps(boolq(None, "p", True)), "field 'question' is null, not a string"),
    ("cb", json.dumps(cb("p", 5, "neutral")), "field 'hypothesis' is a number, not a string"),
    ("copa", json.dumps(copa("p", None, "b", "cause", 0)), "field 'choice1' is null, not a string"),
    ("wic", json.dumps(wic("w", "a w", "b w", True) | {"sentence2": ["b w"]}), "field 'sentence2' is a list, not a"),
    ("wsc", json.dumps(wsc("a b", ("0", "a"), (1, "b"), True)), "field 'span1_index' is a string, not a whole num"),
    ("multirc", json.dumps({"idx": 5, "passage": {"text": "t", "questions": [{"idx": 0, "question": None, "answers": [
        {"text": "a", "idx": 0, "label": 1}]}]}}), "field 'question' is null, not a string"),
    ("record", json.dumps(record("A met B", ["A"], [("@placeholder met B", ["A"])]) | {"qas": [
        {"query": "@placeholder met B", "idx": 0, "answers": [{"start": 0, "end": 0, "text": None}]}]}),
     "field 'text' is null, not a string"),
])
def test_malformed_line_names_file_and_line(tmp_path, task, line, message):
    folder, train, _, _ = CASES[task]
    path = bad_line(tmp_path, folder, train[:2], line)
    with pytest.raises(DataError) as e:
        sg.load_superglue(task, str(tmp_path))
    assert f"{path}, line {len(train[:2]) + 1}: {message}" in str(e.value) and "\n" not in str(e.value)


def test_empty_train_file_names_it(tmp_path):
    write_superglue_task(tmp_path, "BoolQ", [], CASES["boolq"][2])
    with pytest.raises(DataError, match=r"BoolQ/train.jsonl: no examples in this file"):
        sg.load_superglue("boolq", str(tmp_path))


def test_missing_files(tmp_path):
    write_superglue_task(tmp_path, "CB", CASES["cb"][1], CASES["cb"][2])
    os.remove(tmp_path / "CB" / "val.jsonl")
    with pytest.raises(DataError, match=r"lacks CB/val.jsonl\. "):           # not train.jsonl, which is there
        sg.load_superglue("cb", str(tmp_path))


# ----------------------------------------------------------------------------- download + cache

def test_download_cache_and_reuse(tmp_path, serve):
    _, train, val, expected = CASES["record"]
    server = serve({"ReCoRD.zip": superglue_zip("ReCoRD", train, val), "BoolQ.zip": b"not this one"})
    splits = sg.load_superglue("record", cache_dir=str(tmp_path), base_url=server.url)
    assert server.requests == ["/ReCoRD.zip"] and splits["train"] == expected
    assert os.listdir(tmp_path) == ["ReCoRD"]        # no archive or temporary folder left beside it
    assert sorted(os.listdir(tmp_path / "ReCoRD")) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    server.stop()
    assert sg.load_superglue("record", cache_dir=str(tmp_path), base_url=server.url) == splits   # the cache serves


@pytest.mark.parametrize("mode", ["truncated", "not_a_zip", "wrong_task"])
def test_broken_download_leaves_nothing(tmp_path, serve, mode, monkeypatch):
    _, train, val, _ = CASES["boolq"]
    good = superglue_zip("BoolQ", train, val)
    body = {"truncated": good, "not_a_zip": b"<html>rate limited</html>", "wrong_task": superglue_zip("CB", [], [])}
    bad = serve({"BoolQ.zip": body[mode]}, mode="truncate" if mode == "truncated" else "ok")
    with pytest.raises(DataError, match="Could not get SuperGLUE task BoolQ") as e:
        sg.load_superglue("boolq", cache_dir=str(tmp_path), base_url=bad.url)
    assert "https://dl.fbaipublicfiles.com/glue/superglue/data/v2/BoolQ.zip" in str(e.value)
    assert "--data-dir" in str(e.value) and os.listdir(tmp_path) == []
    monkeypatch.setenv("SSMLORA_SUPERGLUE_CACHE", str(tmp_path))     # the environment works as the arguments do
    monkeypatch.setenv("SSMLORA_SUPERGLUE_URL", serve({"BoolQ.zip": good}).url)
    assert len(sg.load_superglue("boolq")["train"]) == 2 and os.listdir(tmp_path) == ["BoolQ"]


# ----------------------------------------------------------------------------- scoring (the metrics: test_metrics.py)

def test_cb_scores():
    preds, labels = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]     # macro-F1 (1/2 + 2/3 + 4/5) / 3, see test_metrics
    examples = [Pair("p", "h", y) for y in labels]
    assert sg.TASKS["cb"].score(preds, examples) == pytest.approx({"accuracy": 4 / 6, "macro_f1": 59 / 90})


def test_multirc_groups_answers_by_paragraph_and_question():
    examples = CASES["multirc"][3]                   # questions 0/0 (2 answers), 0/1 (1), 1/0 (2)
    # 0/0 all right; 0/1 its only answer missed; 1/0 one of two wrong -> EM 1/3.
    # F1a over answers: tp = 2 (Ann, June), fn = 1 (Rome), fp = 1 (May) -> 2·2 / (2·2 + 2) = 2/3
    preds = [1, 0, 0, 1, 1]
    assert sg.TASKS["multirc"].score(preds, examples) == pytest.approx({"f1a": 2 / 3, "em": 1 / 3})
    # had the groups been the question idx alone, 0/0 and 1/0 would merge into one question: EM 0/2
    merged = [e._replace(group=e.group[-1]) for e in examples]
    assert sg.TASKS["multirc"].score(preds, merged)["em"] == 0.0


def test_record_scores_the_chosen_entity():
    examples = CASES["record"][3]                    # entities Paris, France, Obama; gold Paris, then Bush
    assert sg.TASKS["record"].score([0, 2], examples) == pytest.approx({"f1": 1 / 2, "em": 1 / 2})
    assert sg.TASKS["record"].score([1, 0], examples) == {"f1": 0.0, "em": 0.0}


def test_accuracy_for_pair_and_choice_tasks():
    assert sg.TASKS["copa"].score([0, 0], CASES["copa"][3]) == {"accuracy": 0.5}
    assert sg.TASKS["boolq"].score([1, 0], CASES["boolq"][3]) == {"accuracy": 1.0}
    with pytest.raises(DataError, match="1 predictions for 2 examples"):
        sg.TASKS["boolq"].score([1], CASES["boolq"][3])
