"""glue.py: task names, parsing of the official GLUE layout (exact TSV, labels, known defects, errors with file and
line), and download + cache against a loopback server (atomic, MRPC assembled from Microsoft's files)."""
import io
import os
import socket
import zipfile

import pytest

from tasks import get_task, glue
from data import DataError, Example
from glue_fixtures import glue_zip, msr_files, write_glue_task

# Quote characters that a CSV reader would take as quoting: an unclosed one would swallow the following lines.
QUOTED = ['He said "hello', '"Quoted" at the start', "it's a 'test'", 'a """ b']


def test_task_names():
    for name in ["SST-2", "sst-2", "STS-B", "sts_b", "MNLI", "CoLA"]:
        assert get_task(name).name == name.lower().replace("-", "").replace("_", "")
    with pytest.raises(DataError, match="Unknown task 'nosuch'. Valid names: GLUE: cola sst2"):
        get_task("nosuch")


# ----------------------------------------------------------------------------- parsing

def rows_for(task, n, offset=0):
    """n rows of the task with quote characters in the texts; labels cycle through the classes."""
    pair = task not in ("cola", "sst2")
    k = glue.TASKS[task].num_labels
    rows = []
    for i in range(offset, offset + n):
        label = round(i * 0.37 % 5, 3) if task == "stsb" else i % k
        rows.append((f"{QUOTED[i % 4]} {i}", f"second {QUOTED[(i + 1) % 4]} {i}" if pair else None, label))
    return rows


@pytest.mark.parametrize("task", list(glue.TASKS))
def test_parse_official_layout(tmp_path, task):
    train, dev = rows_for(task, 7), rows_for(task, 5, offset=100)
    write_glue_task(tmp_path, task, train, dev)
    splits = glue.load_glue(task, data_dir=str(tmp_path))
    assert tuple(splits) == glue.TASKS[task].splits
    for split in glue.TASKS[task].splits:
        expected = train if split == "train" else dev
        if task == "sst2":          # SST-2's sentences end with a space in the official files; kept as they are
            expected = [(a + " ", b, label) for a, b, label in expected]
        assert splits[split] == [Example(a, b, float(lab) if task == "stsb" else lab) for a, b, lab in expected]
    if task == "stsb":
        assert isinstance(splits["train"][1].label, float)


def test_parse_label_values(tmp_path):
    # The values as written in the files map to class ids in the table's order.
    write_glue_task(tmp_path, "mnli", [("p", "h", "contradiction"), ("p", "h", "entailment"), ("p", "h", "neutral")],
                    [("p", "h", "neutral")], dev_mismatched_rows=[("p", "h", "contradiction")])
    write_glue_task(tmp_path, "qnli", [("q?", "s", "not_entailment"), ("q?", "s", "entailment")], [("q", "s", 0)])
    mnli = glue.load_glue("MNLI", data_dir=str(tmp_path))
    assert [e.label for e in mnli["train"]] == [2, 0, 1]
    assert (mnli["dev_matched"][0].label, mnli["dev_mismatched"][0].label) == (1, 2)
    assert [e.label for e in glue.load_glue("qnli", data_dir=str(tmp_path / "QNLI"))["train"]] == [1, 0]


def test_qqp_broken_rows_skipped_and_counted(tmp_path, capsys):
    folder = write_glue_task(tmp_path, "qqp", rows_for("qqp", 4), rows_for("qqp", 2))
    with open(os.path.join(folder, "train.tsv"), "a", encoding="utf-8") as f:
        # a question with a newline inside splits one record over two lines, each with missing fields
        f.write("4\t9\t10\tWhy is the sky\n blue?\t0\n")
    splits = glue.load_glue("qqp", data_dir=str(tmp_path))
    assert len(splits["train"]) == 4 and len(splits["dev"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "skipped 2 rows" in out[0] and "lines [6, 7]" in out[0]


@pytest.mark.parametrize("task, cut, what", [("qqp", 6, "5 of the 6 fields"), ("rte", 20, "3 of the 4 fields"),
                                             ("rte", 6, "label 'not_entai'")])
def test_a_file_cut_inside_its_last_line_is_said_to_be_cut(tmp_path, task, cut, what, capsys):
    """QQP skips its known broken rows; a last line broken off (no newline, fields missing or a label cut short) is
    no such row, and in any task it is a cut file, said so."""
    path = os.path.join(write_glue_task(tmp_path, task, rows_for(task, 4), rows_for(task, 3)), "train.tsv")
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) - cut)
    with pytest.raises(DataError) as e:
        glue.load_glue(task, data_dir=str(tmp_path))
    assert str(e.value) == f"{path}, line 5: the last line breaks off ({what}, no newline): the file is cut off (an " \
        "interrupted download?); fetch it again"
    assert capsys.readouterr().out == ""  # nothing said of a known defect


@pytest.mark.parametrize("task, line, message", [
    ("rte", "9\tonly two", "line 4: 2 tab-separated fields where the official RTE file has 4"),   # header + 2 rows
    ("sst2", "good film \t2", "line 4: label '2' in column 'label', expected 0 or 1"),
    ("stsb", "\t".join(["9"] * 9 + ["high"]), "line 4: label 'high' in column 'score', expected a number"),
    ("cola", "gj04\t1\t\tone\textra", "line 3: 5 tab-separated fields"),                        # CoLA: no header
])
def test_malformed_row_names_file_and_line(tmp_path, task, line, message):
    folder = write_glue_task(tmp_path, task, rows_for(task, 2), [])
    with open(os.path.join(folder, "train.tsv"), "a", encoding="utf-8") as f:
        f.write(line + "\n")
    with pytest.raises(DataError) as e:
        glue.load_glue(task, data_dir=str(tmp_path))
    assert f"{os.path.join(folder, 'train.tsv')}, {message}" in str(e.value)


def test_bad_header_and_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"lacks RTE/train.tsv, RTE/dev.tsv"):
        glue.load_glue("rte", data_dir=str(tmp_path))
    folder = write_glue_task(tmp_path, "rte", rows_for("rte", 2), rows_for("rte", 1))
    with open(os.path.join(folder, "dev.tsv"), "w") as f:
        f.write("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match="lacks the columns"):
        glue.load_glue("rte", data_dir=str(tmp_path))
    os.remove(os.path.join(folder, "dev.tsv"))
    with pytest.raises(DataError, match=r"lacks RTE/dev.tsv\. "):          # not train.tsv, which is there
        glue.load_glue("rte", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- download + cache

def test_download_cache_and_reuse(tmp_path, serve):
    cache = tmp_path / "cache"
    zipped = glue_zip("stsb", rows_for("stsb", 6), rows_for("stsb", 3))
    server = serve({"STS-B.zip": zipped, "QQP-clean.zip": b"not this one"})
    splits = glue.load_glue("sts-b", cache_dir=str(cache), base_url=server.url)
    assert server.requests == ["/STS-B.zip"]          # STS-B's own archive, not QQP's (the classic script's swap)
    assert len(splits["train"]) == 6 and len(splits["dev"]) == 3
    assert sorted(os.listdir(cache)) == ["STS-B"]     # no temporary files left next to it
    server.stop()
    again = glue.load_glue("stsb", cache_dir=str(cache), base_url=server.url)   # network gone: the cache serves
    assert again == splits


def stored_zip(files):
    """An uncompressed zip: flipping a byte of a member's text leaves a readable archive with a wrong CRC."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, body in files.items():
            z.writestr(name, body)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["truncated", "not_a_zip", "bad_crc", "wrong_content"])
def test_broken_download_leaves_nothing(tmp_path, serve, mode, monkeypatch):
    cache = tmp_path / "cache"
    good = glue_zip("rte", rows_for("rte", 4), rows_for("rte", 2))
    body = {"truncated": good, "not_a_zip": b"<html>rate limited</html>",
            "bad_crc": stored_zip({"RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n"}).replace(b"index", b"INDEX"),
            "wrong_content": stored_zip({"README": "hi"})}[mode]
    bad = serve({"RTE.zip": body}, mode="truncate" if mode == "truncated" else "ok")
    with pytest.raises(DataError, match="Could not get GLUE task RTE") as e:
        glue.load_glue("rte", cache_dir=str(cache), base_url=bad.url)
    assert "--data-dir" in str(e.value) and "RTE/train.tsv" in str(e.value)
    assert os.listdir(cache) == []
    # a later call with a good server succeeds; the environment variables work as the arguments do
    monkeypatch.setenv("SSMLORA_GLUE_CACHE", str(cache))
    monkeypatch.setenv("SSMLORA_GLUE_URL", serve({"RTE.zip": good}).url)
    assert len(glue.load_glue("rte")["train"]) == 4
    assert os.listdir(cache) == ["RTE"]


def test_mrpc_assembled_from_msr_files(tmp_path, serve):
    rows = [(str(100 + i), str(200 + i), f'MSR "a" {i}', f"MSR b {i}", i % 2) for i in range(6)]
    dev_pairs = [("101", "201"), ("104", "204")]
    test_rows = [("900", "901", "x", "y", 1)]
    server = serve(msr_files(rows, dev_pairs, test_rows))
    splits = glue.load_glue("mrpc", cache_dir=str(tmp_path), base_url=server.url)
    assert sorted(server.requests) == ["/mrpc_dev_ids.tsv", "/msr_paraphrase_test.txt", "/msr_paraphrase_train.txt"]
    assert splits["dev"] == [Example('MSR "a" 1', "MSR b 1", 1), Example('MSR "a" 4', "MSR b 4", 0)]
    assert [e.text_a for e in splits["train"]] == [f'MSR "a" {i}' for i in (0, 2, 3, 5)]
    assert sorted(os.listdir(tmp_path / "MRPC")) == ["dev.tsv", "test.tsv", "train.tsv"]
    with open(tmp_path / "MRPC" / "test.tsv", encoding="utf-8") as f:
        assert f.read() == "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t900\t901\tx\ty\n"


def test_local_files_by_file_url(tmp_path):
    # the offline route for files fetched elsewhere, MRPC's sources included: base_url = file:// folder
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "WNLI.zip").write_bytes(glue_zip("wnli", rows_for("wnli", 3), rows_for("wnli", 2)))
    for name, body in msr_files([("1", "2", "a", "b", 1), ("3", "4", "c", "d", 0)], [("3", "4")]).items():
        (tmp_path / "files" / name).write_bytes(body)
    url = (tmp_path / "files").as_uri()
    assert len(glue.load_glue("wnli", cache_dir=str(tmp_path / "cache"), base_url=url)["dev"]) == 2
    assert glue.load_glue("mrpc", cache_dir=str(tmp_path / "cache"), base_url=url)["dev"] == [Example("c", "d", 0)]


def test_offline_without_cache_is_a_clear_error(tmp_path):
    with socket.socket() as s:          # a port that nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError) as e:
        glue.load_glue("mnli", cache_dir=str(tmp_path), base_url=f"http://127.0.0.1:{port}")
    message = str(e.value)
    for part in ["MNLI/train.tsv", "MNLI/dev_matched.tsv", "--data-dir", "SSMLORA_GLUE_URL=file:///",
                 "https://dl.fbaipublicfiles.com/glue/data/MNLI.zip"]:
        assert part in message
    assert os.listdir(tmp_path) == []
