"""Write small GLUE tasks in the official layout: same folders, file names, headers and column counts as the
official downloads, so that data.py reads them exactly as it reads the real thing.

    write_glue_task(root, "rte", train_rows, dev_rows)    -> root/RTE/train.tsv, root/RTE/dev.tsv
    glue_zip("rte", train_rows, dev_rows)                  -> bytes of RTE.zip as GLUE serves it
    msr_files(rows, dev_pairs)                             -> Microsoft's MRPC source files, as served

A row is (text_a, text_b or None, label). label is a class index (0, 1, 2), the value as written in the file
("entailment"), or a float score for STS-B. This table is written independently of data.py on purpose.
"""
import io
import os
import zipfile

FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
           "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
ARCHIVES = {"cola": "CoLA.zip", "sst2": "SST-2.zip", "stsb": "STS-B.zip", "qqp": "QQP-clean.zip", "mnli": "MNLI.zip",
            "qnli": "QNLIv2.zip", "rte": "RTE.zip", "wnli": "WNLI.zip"}
LABEL_VALUES = {"cola": ("0", "1"), "sst2": ("0", "1"), "mrpc": ("0", "1"), "qqp": ("0", "1"), "wnli": ("0", "1"),
                "mnli": ("entailment", "neutral", "contradiction"), "qnli": ("entailment", "not_entailment"),
                "rte": ("entailment", "not_entailment"), "stsb": None}
MNLI_TRAIN = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse sentence1_parse "
              "sentence2_parse sentence1 sentence2 label1 gold_label").split()
MNLI_DEV = MNLI_TRAIN[:-1] + "label2 label3 label4 label5 gold_label".split()
HEADERS = {  # None: the file has no header (CoLA's train and dev)
    "cola": None,
    "sst2": ["sentence", "label"],
    "mrpc": ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],   # GLUE's MRPC keeps MSR's byte-order mark
    "stsb": "index genre filename year old_index source1 source2 sentence1 sentence2 score".split(),
    "qqp": "id qid1 qid2 question1 question2 is_duplicate".split(),
    "qnli": "index question sentence label".split(),
    "rte": "index sentence1 sentence2 label".split(),
    "wnli": "index sentence1 sentence2 label".split(),
}


def _value(task, label):
    if task == "stsb":
        return f"{float(label):.3f}"
    return LABEL_VALUES[task][label] if isinstance(label, int) else str(label)


def _parse(text):
    """A fake constituency parse, as in MNLI's parse columns."""
    return "( " + " ".join(text.split()) + " )"


def tsv_line(task, i, row, split="train"):
    """One line (no newline) of the task's train or dev file for row (text_a, text_b, label), i = its index."""
    a, b, label = row
    v = _value(task, label)
    if task == "cola":
        return "\t".join(["gj04", v, "" if v == "1" else "*", a])
    if task == "sst2":
        return f"{a} \t{v}"                                   # SST-2's sentences end with a space
    if task == "mrpc":
        return "\t".join([v, str(1000 + 2 * i), str(1001 + 2 * i), a, b])
    if task == "stsb":
        return "\t".join([str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b, v])
    if task == "qqp":
        return "\t".join([str(i), str(2 * i + 1), str(2 * i + 2), a, b, v])
    if task == "mnli":
        head = [str(i), str(31193 + i), f"{31193 + i}n", "government", _parse(a), _parse(b), _parse(a), _parse(b), a, b]
        return "\t".join(head + [v] * (2 if split == "train" else 6))
    return "\t".join([str(i), a, b, v])                      # QNLI, RTE, WNLI


def task_files(task, train_rows, dev_rows, dev_mismatched_rows=None):
    """{file name: text} of a task folder; MNLI gets dev_matched and dev_mismatched (dev_rows unless given)."""
    if task == "mnli":
        splits = {"train": train_rows, "dev_matched": dev_rows,
                  "dev_mismatched": dev_rows if dev_mismatched_rows is None else dev_mismatched_rows}
    else:
        splits = {"train": train_rows, "dev": dev_rows}
    files = {}
    for split, rows in splits.items():
        header = (MNLI_TRAIN if split == "train" else MNLI_DEV) if task == "mnli" else HEADERS[task]
        lines = ([] if header is None else ["\t".join(header)]) + [tsv_line(task, i, r, split) for i, r in enumerate(rows)]
        files[split + ".tsv"] = "\n".join(lines) + "\n"
    return files


def write_glue_task(root, task, train_rows, dev_rows, dev_mismatched_rows=None):
    """Write root/<Folder>/train.tsv and dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv). Returns the folder."""
    folder = os.path.join(root, FOLDERS[task])
    os.makedirs(folder, exist_ok=True)
    for name, text in task_files(task, train_rows, dev_rows, dev_mismatched_rows).items():
        with open(os.path.join(folder, name), "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return folder


def glue_zip(task, train_rows, dev_rows):
    """The task's official zip: everything under one folder named as in GLUE (QQP-clean.zip holds QQP/)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in task_files(task, train_rows, dev_rows).items():
            z.writestr(f"{FOLDERS[task]}/{name}", text)
        z.writestr(f"{FOLDERS[task]}/test.tsv", "index\tsentence\n0\tunlabelled\n")
    return buf.getvalue()


def msr_files(rows, dev_pairs, test_rows=()):
    """Microsoft's msr_paraphrase_train.txt / _test.txt (byte-order mark, CRLF) and GLUE's mrpc_dev_ids.tsv.
    rows: (id1, id2, text_a, text_b, label); dev_pairs: the (id1, id2) GLUE puts in dev."""
    head = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
    msr = lambda rs: (head + "".join(f"{lab}\t{i1}\t{i2}\t{a}\t{b}\r\n" for i1, i2, a, b, lab in rs)).encode()
    return {"msr_paraphrase_train.txt": msr(rows), "msr_paraphrase_test.txt": msr(test_rows),
            "mrpc_dev_ids.tsv": "".join(f"{i1}\t{i2}\n" for i1, i2 in dev_pairs).encode()}
