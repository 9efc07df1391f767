"""race.py: the official RACE folder tree read into Choices that keep their level; clear errors; All/Middle/High."""
import io
import os
import tarfile

import pytest

from tasks import race
from data import Choice, DataError
from superglue_fixtures import race_article, race_tar, write_race

OPTS = ["red", "green", "blue", "black"]


def articles():
    """Two middle-school files (the second holding two questions, one a cloze) and one high-school file per split;
    eleven middle files in train, to check numeric file order (2.txt before 10.txt)."""
    cloze = ("Tom's hat is _ .", OPTS, "C")
    middle = [race_article(f"Article {n}.", [(f"Question {n}?", OPTS, "ABCD"[n % 4])]) for n in range(1, 12)]
    middle[1] = race_article("Tom has a blue hat.", [("What colour is the hat?", OPTS, "C"), cloze])
    high = [race_article("A long article.", [("Which is right?", ["w", "x", "y", "z"], "D")])]
    return {("train", "middle"): middle, ("train", "high"): high, ("dev", "middle"): middle[:2], ("dev", "high"): high,
            ("test", "middle"): middle[:1], ("test", "high"): high}


def test_parse_official_layout(tmp_path):
    folder = write_race(tmp_path, articles())
    splits = race.load_race(str(tmp_path))
    assert list(splits) == ["train", "dev"]
    train = splits["train"]
    assert len(train) == 11 + 1 + 1                   # one Choice per question
    assert [e.context for e in train[:4]] == ["Article 1.", "Tom has a blue hat.", "Tom has a blue hat.", "Article 3."]
    assert train[-2].context == "Article 11." and train[-1].level == "high"
    assert train[1] == Choice("Tom has a blue hat.", tuple(f"What colour is the hat? {o}" for o in OPTS), (2,), "middle")
    assert train[2].choices == ("Tom's hat is red .", "Tom's hat is green .", "Tom's hat is blue .",
                                "Tom's hat is black .") and train[2].label == 2
    assert train[-1] == Choice("A long article.", ("Which is right? w", "Which is right? x", "Which is right? y",
                                                   "Which is right? z"), (3,), "high")
    assert [e.level for e in splits["dev"]] == ["middle"] * 3 + ["high"]
    assert race.load_race(folder) == splits           # the RACE folder itself works too


@pytest.mark.parametrize("text, message", [
    ('{"article": "a",\n "questions": ["q"], "options": [["a", "b"]], "answers": ["A"],', "line 2: not valid JSON"),
    ('{"article": "a", "questions": ["q"], "answers": ["A"]}', "no field 'options', which the official RACE files have"),
    ('{"article": "a", "questions": ["q"], "options": [["a", "b"]], "answers": ["C"]}', "answer 'C' for 2 options"),
    ('{"article": "a", "questions": ["q", "r"], "options": [["a", "b"]], "answers": ["A"]}',
     "2 questions, 1 option lists and 1 answers"),
    # a null or a number is refused, not read as the text "None" or "5"
    ('{"article": null, "questions": ["q"], "options": [["a", "b"]], "answers": ["A"]}',
     "field 'article' is null, not a string"),
    ('{"article": "a", "questions": ["q"], "options": [["a", null]], "answers": ["A"]}',
     "question 1: its options hold null, where a list of strings is expected"),
    ('{"article": "a", "questions": [5], "options": [["a", "b"]], "answers": ["A"]}',
     "question 1 is a number, not a string"),
    ('{"article": "a", "questions": ["q"], "options": ["ab"], "answers": ["A"]}',
     "question 1: its options are a string, not a list"),
    ('{"article": "a", "questions": "q", "options": ["a"], "answers": "A"}', "questions, options and answers must"),
])
def test_malformed_file_is_named(tmp_path, text, message):
    folder = write_race(tmp_path, articles())
    path = os.path.join(folder, "dev", "high", "1.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    with pytest.raises(DataError) as e:
        race.load_race(str(tmp_path))
    assert f"{path}: {message}" in str(e.value) or f"{path}, {message}" in str(e.value)


def test_missing_folders(tmp_path):
    write_race(tmp_path, {k: v for k, v in articles().items() if k != ("dev", "high")})
    with pytest.raises(DataError, match=r"lacks the folders RACE/dev/high of the official release"):
        race.load_race(str(tmp_path))


def test_download_cache_and_reuse(tmp_path, serve):
    server = serve({"RACE.tar.gz": race_tar(articles())})
    splits = race.load_race(cache_dir=str(tmp_path / "cache"), base_url=server.url)
    assert server.requests == ["/RACE.tar.gz"] and os.listdir(tmp_path / "cache") == ["RACE"]
    assert splits == race.load_race(write_race(tmp_path / "local", articles()))     # as the unpacked release reads
    server.stop()
    assert race.load_race(cache_dir=str(tmp_path / "cache"), base_url=server.url) == splits


def escaping_tar():
    """A .tar.gz with a member that would be written outside the folder it is unpacked into."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("../outside.txt")
        t.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["truncated", "not_gzip", "escaping_member", "no_race_folder"])
def test_broken_download_leaves_nothing(tmp_path, serve, mode):
    body = {"truncated": race_tar(articles()), "not_gzip": b"<html>moved</html>", "escaping_member": escaping_tar(),
            "no_race_folder": race_tar({})}[mode]
    server = serve({"RACE.tar.gz": body}, mode="truncate" if mode == "truncated" else "ok")
    with pytest.raises(DataError, match="Could not get RACE") as e:
        race.load_race(cache_dir=str(tmp_path / "cache"), base_url=server.url)
    assert race.RACE_URL in str(e.value) and "--data-dir" in str(e.value)
    assert os.listdir(tmp_path / "cache") == [] and os.listdir(tmp_path) == ["cache"]


def test_all_middle_high_by_hand():
    examples = [Choice("a", ("x", "y"), (g,), lv) for g, lv in
                [(0, "middle"), (1, "middle"), (1, "middle"), (0, "high"), (1, "high")]]
    # middle: 2 of 3 right, high: 1 of 2 right, all: 3 of 5
    scores = race.TASK.score([0, 1, 0, 0, 0], examples)
    assert scores == pytest.approx({"all": 3 / 5, "middle": 2 / 3, "high": 1 / 2})


def test_a_level_without_questions_scores_none_not_nan():
    """--max-eval's first N questions can all be middle-school ones (middle comes first): high is none evaluated,
    null in JSON and "-" in the length table, not NaN."""
    import json

    from tasks import lengths
    from training.progress import fmt
    examples = [Choice("a", ("x", "y"), (0,), "middle"), Choice("a", ("x", "y"), (1,), "middle")]
    scores = race.TASK.score([0, 0], examples)
    assert scores == {"all": 0.5, "middle": 0.5, "high": None} and "NaN" not in json.dumps(scores)
    assert fmt(scores) == "all 0.5000, middle 0.5000, high: none evaluated"
    bins = lengths.by_length([10, 300], lambda idx: race.TASK.score([0] * len(idx), [examples[i] for i in idx]),
                             lengths.edges("0,256"))
    assert bins == [{"bin": "0-256", "n": 1, "all": 1.0, "middle": 1.0, "high": None},
                    {"bin": "256+", "n": 1, "all": 0.0, "middle": 0.0, "high": None}]
