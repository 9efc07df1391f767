"""
GLUE: the task table, the official files (downloaded once into a cache, MRPC assembled as GLUE's script does) and
their exact TSV parsing.

    TASKS                       cola sst2 mrpc stsb qqp mnli qnli rte wnli
    load_glue(task, data_dir=None, cache_dir=None, base_url=None) -> {split: [Example, ...]}

Where the files come from: data_dir (a local GLUE folder, data_dir/SST-2/train.tsv; fully offline), else a cache
folder (cache_dir, $SSMLORA_GLUE_CACHE, default ~/.cache/ssmlora/glue) filled once from the official files
(base_url or $SSMLORA_GLUE_URL replaces the official servers; a mirror serves every file by its plain name).
"""
import math
import os

from tasks.task import Task
from data import DataError, Example
from files.downloads import benchmark_folder, download, download_zip, mirror, missing


def glue_task(name, folder, archive, text_a, text_b, label, labels, metrics, select, **kw):
    return Task(name=name, benchmark="glue", folder=folder, shape="text", archive=archive, text_a=text_a,
                text_b=text_b, label=label, labels=labels, metrics=metrics, select=select,
                num_labels=1 if labels is None else len(labels), **kw)


# Selection: MRPC and QQP select on F1 (the first number the paper reports, and the one that does not reward
# predicting the majority class); STS-B selects on Pearson (reported first, and the one LoRA's paper uses).
TASKS = {t.name: t for t in [
    glue_task("cola", "CoLA", "CoLA.zip", "sentence", None, "label", ("0", "1"), ("mcc",), "mcc",
              columns=("source", "label", "original_label", "sentence")),
    glue_task("sst2", "SST-2", "SST-2.zip", "sentence", None, "label", ("0", "1"), ("accuracy",), "accuracy"),
    glue_task("mrpc", "MRPC", None, "#1 String", "#2 String", "Quality", ("0", "1"), ("f1", "accuracy"), "f1"),
    glue_task("stsb", "STS-B", "STS-B.zip", "sentence1", "sentence2", "score", None, ("pearson", "spearman"),
              "pearson"),
    glue_task("qqp", "QQP", "QQP-clean.zip", "question1", "question2", "is_duplicate", ("0", "1"),
              ("f1", "accuracy"), "f1", skip_broken=True),
    glue_task("mnli", "MNLI", "MNLI.zip", "sentence1", "sentence2", "gold_label",
              ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy",
              dev=("dev_matched", "dev_mismatched")),
    glue_task("qnli", "QNLI", "QNLIv2.zip", "question", "sentence", "label", ("entailment", "not_entailment"),
              ("accuracy",), "accuracy"),
    glue_task("rte", "RTE", "RTE.zip", "sentence1", "sentence2", "label", ("entailment", "not_entailment"),
              ("accuracy",), "accuracy"),
    glue_task("wnli", "WNLI", "WNLI.zip", "sentence1", "sentence2", "label", ("0", "1"), ("accuracy",), "accuracy"),
]}


# ----------------------------------------------------------------------------- where the files come from

# The classic download_glue_data.py maps QQP to STS-B.zip and STS to QQP-clean.zip; here every task names its
# own archive in the table above, so that swap cannot happen. MRPC has no zip: GLUE splits Microsoft's train
# file into train and dev with its list of dev ids.
GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/"
MSR_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data/"
MSR_FILES = ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "mrpc_dev_ids.tsv")
OFFICIAL_URLS = {**{t.archive: GLUE_URL + t.archive for t in TASKS.values() if t.archive},
                 "msr_paraphrase_train.txt": MSR_URL + "msr_paraphrase_train.txt",
                 "msr_paraphrase_test.txt": MSR_URL + "msr_paraphrase_test.txt",
                 "mrpc_dev_ids.tsv": GLUE_URL + "mrpc_dev_ids.tsv"}


def _complete(task, folder):
    return all(os.path.isfile(os.path.join(folder, s + ".tsv")) for s in task.splits)


def task_folder(task, data_dir=None, cache_dir=None, base_url=None):
    """The folder of a task's TSV files: in data_dir, or downloaded once into the cache (files.downloads)."""
    names = [task.archive] if task.archive else list(MSR_FILES)
    url = lambda name: mirror(name, base_url, "glue", OFFICIAL_URLS[name])  # noqa: E731
    build = (lambda tmp: _unpack(url(task.archive), task, tmp)) if task.archive else \
        (lambda tmp: _assemble_mrpc({n: url(n) for n in names}, tmp))
    return benchmark_folder(f"GLUE task {task.folder}", task.folder, data_dir, cache_dir, lambda f: _complete(task, f),
                            build, _expected_files(task), [OFFICIAL_URLS[n] for n in names], "glue",
                            lambda folders: missing(folders, [s + ".tsv" for s in task.splits], task.folder + "/"))


def _expected_files(task):
    return ", ".join(f"{task.folder}/{s}.tsv" for s in task.splits)


def _unpack(url, task, tmp):
    download_zip(url, tmp, task.archive)
    if not _complete(task, os.path.join(tmp, task.folder)):
        raise DataError(f"{url} does not contain {_expected_files(task)}")


def _read_lines(path, url):
    try:
        with open(path, encoding="utf-8-sig") as f:               # -sig: drop the byte-order mark MSR's files have
            return [line.strip() for line in f.read().split("\n")]  # strip(), as download_glue_data.py does
    except UnicodeDecodeError:
        raise DataError(f"{url} is not UTF-8 text") from None


def _read_msr(path, url):
    """Microsoft's paraphrase file: a header and 5 tab-separated fields a row."""
    lines = _read_lines(path, url)
    rows = [line.split("\t") for line in lines[1:] if line]
    if not lines[0].startswith("Quality\t#1 ID") or any(len(r) != 5 for r in rows):
        raise DataError(f"{url} is not Microsoft's paraphrase file (header {lines[0][:40]!r})")
    return rows


def _assemble_mrpc(urls, tmp):
    """GLUE's MRPC, built exactly as download_glue_data.py does: Microsoft's train file split by GLUE's dev ids."""
    paths = {n: os.path.join(tmp, n) for n in urls}
    for name, url in urls.items():
        download(url, paths[name])
    dev_ids = {tuple(line.split("\t")[:2]) for line in _read_lines(paths["mrpc_dev_ids.tsv"], urls["mrpc_dev_ids.tsv"])}
    train = _read_msr(paths["msr_paraphrase_train.txt"], urls["msr_paraphrase_train.txt"])
    test = _read_msr(paths["msr_paraphrase_test.txt"], urls["msr_paraphrase_test.txt"])
    dev = [r for r in train if (r[1], r[2]) in dev_ids]
    if not dev:
        raise DataError(f"none of the ids in {urls['mrpc_dev_ids.tsv']} occur in the MSR train file")
    head = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    files = {"train": [head] + ["\t".join(r) for r in train if (r[1], r[2]) not in dev_ids],
             "dev": [head] + ["\t".join(r) for r in dev],
             "test": ["index" + head[len("Quality"):]] + [f"{i}\t" + "\t".join(r[1:]) for i, r in enumerate(test)]}
    os.makedirs(os.path.join(tmp, "MRPC"))
    for split, lines in files.items():
        with open(os.path.join(tmp, "MRPC", split + ".tsv"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- parsing the official TSV files

def _rows(path):
    """(line number, fields, whether the line ends with a newline) for each line of a TSV file: only the last one
    may not. Only tab and newline are structure: quote characters are text (GLUE's files are not CSV-quoted), and a
    lone carriage return inside a line stays in the text."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise DataError(f"{path}, line {lineno}: not UTF-8 text; is this an official GLUE file?") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")       # MRPC's files start with a byte-order mark
            if line:
                yield lineno, line.split("\t"), raw.endswith(b"\n")


def _label(task, value, path, lineno):
    if task.labels is None:
        try:
            if math.isfinite(score := float(value)):
                return score
        except ValueError:
            pass
    elif value in task.labels:
        return task.labels.index(value)
    expected = "a number" if task.labels is None else " or ".join(task.labels)
    raise DataError(f"{path}, line {lineno}: label {value!r} in column {task.label!r}, expected {expected}")


def _cut(path, lineno, what):
    """The last line broken off, without its newline: a download cut off, not QQP's known defect (whole rows)."""
    return DataError(f"{path}, line {lineno}: the last line breaks off ({what}, no newline): the file is cut off (an "
                     "interrupted download?); fetch it again")


def _read_split(task, path):
    rows = _rows(path)
    header = task.columns or next(rows, (0, [], True))[1]
    wanted = [c for c in (task.text_a, task.text_b, task.label) if c is not None]
    if any(c not in header for c in wanted):
        raise DataError(f"{path}: the header {header} lacks the columns {wanted} of the official {task.folder} "
                        "file. Use the files of the official GLUE download, unchanged.")
    a, label = header.index(task.text_a), header.index(task.label)
    b = header.index(task.text_b) if task.text_b else None
    examples, broken = [], []
    for lineno, fields, ended in rows:
        if len(fields) != len(header):
            if not ended and len(fields) < len(header):  # (a cut adds no field)
                raise _cut(path, lineno, f"{len(fields)} of the {len(header)} fields")
            if task.skip_broken:
                broken.append(lineno)
                continue
            raise DataError(f"{path}, line {lineno}: {len(fields)} tab-separated fields where the official "
                            f"{task.folder} file has {len(header)} ({', '.join(header)}). Fix or delete that line.")
        try:
            y = _label(task, fields[label], path, lineno)
        except DataError:
            if not ended:
                raise _cut(path, lineno, f"label {fields[label]!r}") from None
            raise
        examples.append(Example(fields[a], None if b is None else fields[b], y))
    if not examples:
        raise DataError(f"{path}: no examples in this file (only a header, or empty): use the official "
                        f"{task.folder} file, unchanged")
    if broken:
        print(f"data: skipped {len(broken)} rows with missing fields in {path} (lines {broken[:5]}"
              f"{', ...' if len(broken) > 5 else ''}), a known defect of the official {task.folder} file")
    return examples


def load_glue(task, data_dir=None, cache_dir=None, base_url=None):
    """{split: [Example]} for "train" and the task's dev split(s); test files are never read (no labels)."""
    task = TASKS[task.lower().replace("-", "").replace("_", "")] if isinstance(task, str) else task  # SST-2 too
    folder = task_folder(task, data_dir, cache_dir, base_url)
    return {split: _read_split(task, os.path.join(folder, split + ".tsv")) for split in task.splits}
