"""GLUE for SSMLoRA: the task table, download + cache, TSV parsing, tokenization, batching and metrics.

Public API (train.py is written against these names):
    TASKS                      dict name -> Task, names: cola sst2 mrpc stsb qqp mnli qnli rte wnli
    get_task(name) -> Task     also accepts the official spellings ("SST-2", "sts-b", ...)
    Task.splits                ("train", "dev") or, for MNLI, ("train", "dev_matched", "dev_mismatched");
                               the first dev split is the one to select models on
    Task.metrics, Task.select  the reported metrics and the one used for model selection
    load_glue(task, data_dir=None, cache_dir=None, base_url=None) -> {split: [Example, ...]}
    Example(text_a, text_b, label)   text_b None for single-sentence tasks; label: class index, or float for STS-B
    load_tokenizer(folder, family=None) -> Tok     family "bert" | "roberta" | "gpt2" (default: config.json)
    Tok.encode(examples, max_len) -> Encoded;  Tok.pad_id;  Tok.family
    batches(encoded, batch_size, shuffle=False, generator=None, drop_last=False) -> iterator of dicts with
        input_ids, attention_mask, token_type_ids (long, [B, T], T = longest row of that batch, right padding)
        and labels (long, or float for regression)
    compute_metrics(task, preds, labels) -> {metric: float};  accuracy, f1, matthews, pearson, spearman
    DataError                  every problem with files, downloads or arguments; the message says how to fix it

Where the data comes from: data_dir (a local GLUE folder, data_dir/SST-2/train.tsv; fully offline), else a cache
folder (cache_dir, $SSMLORA_GLUE_CACHE, default ~/.cache/ssmlora/glue) filled once from the official files
(base_url or $SSMLORA_GLUE_URL replaces the official servers; a mirror serves every file by its plain name).
"""
import json
import math
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from http.client import HTTPException
from itertools import chain
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tqdm import tqdm


class DataError(Exception):
    """Bad task name, missing or malformed data files, failed download, unusable tokenizer folder."""


# ----------------------------------------------------------------------------- the task table

@dataclass(frozen=True)
class Task:
    name: str                        # our key: "sst2"
    folder: str                      # folder in the official zip and under data_dir: "SST-2"
    archive: str | None              # official zip; None for MRPC, which GLUE builds from Microsoft's files
    text_a: str                      # header names of the columns holding the text(s) and the label
    text_b: str | None
    label: str
    labels: tuple | None             # label values as written in the files; class id = position. None: regression
    metrics: tuple                   # what is reported, in the paper's order
    select: str                      # the metric used for model selection / early stopping
    dev: tuple = ("dev",)            # dev split names (= file names without .tsv)
    columns: tuple | None = None     # the columns of a header-less file (CoLA)
    skip_broken: bool = False        # rows with missing fields are a known defect of the official file: skip

    @property
    def splits(self):
        return ("train",) + self.dev

    @property
    def is_regression(self):
        return self.labels is None

    @property
    def num_labels(self):
        return 1 if self.labels is None else len(self.labels)


# Selection: MRPC and QQP select on F1 (the first number the paper reports, and the one that does not reward
# predicting the majority class); STS-B selects on Pearson (reported first, and the one LoRA's paper uses).
TASKS = {t.name: t for t in [
    Task("cola", "CoLA", "CoLA.zip", "sentence", None, "label", ("0", "1"), ("mcc",), "mcc",
         columns=("source", "label", "original_label", "sentence")),
    Task("sst2", "SST-2", "SST-2.zip", "sentence", None, "label", ("0", "1"), ("accuracy",), "accuracy"),
    Task("mrpc", "MRPC", None, "#1 String", "#2 String", "Quality", ("0", "1"), ("f1", "accuracy"), "f1"),
    Task("stsb", "STS-B", "STS-B.zip", "sentence1", "sentence2", "score", None, ("pearson", "spearman"), "pearson"),
    Task("qqp", "QQP", "QQP-clean.zip", "question1", "question2", "is_duplicate", ("0", "1"), ("f1", "accuracy"),
         "f1", skip_broken=True),
    Task("mnli", "MNLI", "MNLI.zip", "sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"),
         ("accuracy",), "accuracy", dev=("dev_matched", "dev_mismatched")),
    Task("qnli", "QNLI", "QNLIv2.zip", "question", "sentence", "label", ("entailment", "not_entailment"),
         ("accuracy",), "accuracy"),
    Task("rte", "RTE", "RTE.zip", "sentence1", "sentence2", "label", ("entailment", "not_entailment"),
         ("accuracy",), "accuracy"),
    Task("wnli", "WNLI", "WNLI.zip", "sentence1", "sentence2", "label", ("0", "1"), ("accuracy",), "accuracy"),
]}


def get_task(name):
    if isinstance(name, Task):
        return name
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise DataError(f"Unknown GLUE task {name!r}. Valid names: {', '.join(TASKS)} "
                        "(official spellings such as SST-2 or STS-B work too).")
    return TASKS[key]


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


def default_cache_dir():
    return os.environ.get("SSMLORA_GLUE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ssmlora", "glue")


def _url(name, base_url):
    base_url = base_url or os.environ.get("SSMLORA_GLUE_URL")
    return f"{base_url.rstrip('/')}/{name}" if base_url else OFFICIAL_URLS[name]


def _complete(task, folder):
    return all(os.path.isfile(os.path.join(folder, s + ".tsv")) for s in task.splits)


def _expected_files(task):
    return ", ".join(f"{task.folder}/{s}.tsv" for s in task.splits)


def _task_folder(task, data_dir, cache_dir, base_url):
    if data_dir is not None:
        for folder in (os.path.join(data_dir, task.folder), data_dir):   # the GLUE root, or the task folder itself
            if _complete(task, folder):
                return folder
        raise DataError(f"GLUE task {task.name}: data_dir {data_dir!r} lacks {_expected_files(task)}. Put the "
                        f"files of the official {task.folder} download there (GLUE layout: data_dir/{task.folder}/"
                        "train.tsv), or leave data_dir out to download them into the cache.")
    cache_dir = cache_dir or default_cache_dir()
    folder = os.path.join(cache_dir, task.folder)
    if not _complete(task, folder):
        _fetch(task, cache_dir, base_url)
    return folder


def _fetch(task, cache_dir, base_url):
    """Download a task into cache_dir/<folder>, all or nothing: everything is built in a temporary folder next
    to its final place and moved there with one os.replace, so an interrupted run leaves no half-written task."""
    names = [task.archive] if task.archive else list(MSR_FILES)
    print(f"data: downloading GLUE {task.folder} into {cache_dir}")
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{task.folder}-partial-", dir=cache_dir)
    try:
        if task.archive:
            _unpack(_url(task.archive, base_url), task, tmp)
        else:
            _assemble_mrpc({n: _url(n, base_url) for n in names}, tmp)
        final = os.path.join(cache_dir, task.folder)
        if not _complete(task, final):                # else another process finished first
            shutil.rmtree(final, ignore_errors=True)  # an incomplete folder: files removed by hand
            os.replace(os.path.join(tmp, task.folder), final)
    except DataError as e:
        raise DataError(
            f"Could not get GLUE task {task.folder}: {e}. Nothing was written to the cache. To work offline, fetch "
            f"{' + '.join(OFFICIAL_URLS[n] for n in names)} on a machine with internet, put them in a folder and "
            "pass base_url='file:///that/folder' (or $SSMLORA_GLUE_URL); or pass data_dir (train.py --data-dir) "
            f"naming a folder that holds {_expected_files(task)} as the GLUE download scripts write them.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(url, dest):
    """Stream url into the file dest with a progress bar; any failure, a short body included, is a DataError."""
    done = total = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
                    done += len(chunk)
    except (OSError, HTTPException) as e:        # URLError, HTTPError, timeouts, refused connections, IncompleteRead
        raise DataError(f"download of {url} failed ({e})") from None
    if total and done != total:
        raise DataError(f"download of {url} stopped after {done} of {total} bytes")


def _unpack(url, task, tmp):
    archive = os.path.join(tmp, task.archive)
    _download(url, archive)
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()                      # reads every member and checks its CRC
            if bad is not None:
                raise DataError(f"{url}: member {bad} is corrupt")
            z.extractall(tmp)                      # extractall keeps member paths inside tmp
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"{url} is not a valid zip archive ({e})") from None
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
        _download(url, paths[name])
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

class Example(NamedTuple):
    text_a: str
    text_b: str | None
    label: int | float


def _rows(path):
    """(line number, fields) for each line of a TSV file. Only tab and newline are structure: quote characters are
    text (GLUE's files are not CSV-quoted), and a lone carriage return inside a line stays in the text."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise DataError(f"{path}, line {lineno}: not UTF-8 text; is this an official GLUE file?") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")       # MRPC's files start with a byte-order mark
            if line:
                yield lineno, line.split("\t")


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


def _read_split(task, path):
    rows = _rows(path)
    header = task.columns or next(rows, (0, []))[1]
    wanted = [c for c in (task.text_a, task.text_b, task.label) if c is not None]
    if any(c not in header for c in wanted):
        raise DataError(f"{path}: the header {header} lacks the columns {wanted} of the official {task.folder} "
                        "file. Use the files of the official GLUE download, unchanged.")
    a, label = header.index(task.text_a), header.index(task.label)
    b = header.index(task.text_b) if task.text_b else None
    examples, broken = [], []
    for lineno, fields in rows:
        if len(fields) != len(header):
            if task.skip_broken:
                broken.append(lineno)
                continue
            raise DataError(f"{path}, line {lineno}: {len(fields)} tab-separated fields where the official "
                            f"{task.folder} file has {len(header)} ({', '.join(header)}). Fix or delete that line.")
        examples.append(Example(fields[a], None if b is None else fields[b], _label(task, fields[label], path, lineno)))
    if broken:
        print(f"data: skipped {len(broken)} rows with missing fields in {path} (lines {broken[:5]}"
              f"{', ...' if len(broken) > 5 else ''}), a known defect of the official {task.folder} file")
    return examples


def load_glue(task, data_dir=None, cache_dir=None, base_url=None):
    """{split: [Example]} for "train" and the task's dev split(s); test files are never read (no labels)."""
    task = get_task(task)
    folder = _task_folder(task, data_dir, cache_dir, base_url)
    return {split: _read_split(task, os.path.join(folder, split + ".tsv")) for split in task.splits}


# ----------------------------------------------------------------------------- tokenization

# GPT-2 has no padding token: pad with its end-of-text token, which the attention mask hides anyway.
PAD_TOKENS = {"bert": "[PAD]", "roberta": "<pad>", "gpt2": "<|endoftext|>"}
SPECIAL_TOKENS = {"bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                  "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "gpt2": ["<|endoftext|>"]}


def _read_json(path):
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not valid JSON ({e})") from None


def _with_specials(tok, family):
    """Built from vocabulary files, a tokenizer must still map a special token's spelling in a text to that token,
    as Hugging Face's do (a tokenizer.json lists its special tokens itself)."""
    tok.add_special_tokens([AddedToken(t, special=True, lstrip=t == "<mask>", normalized=False)
                            for t in SPECIAL_TOKENS[family] if tok.token_to_id(t) is not None])
    return tok


def _wordpiece(folder):
    """BERT's tokenizer from vocab.txt, with the options tokenizer_config.json sets (uncased by default)."""
    cfg = _read_json(os.path.join(folder, "tokenizer_config.json"))
    tok = Tokenizer(models.WordPiece.from_file(os.path.join(folder, "vocab.txt"), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=cfg.get("tokenize_chinese_chars", True),
        strip_accents=cfg.get("strip_accents"), lowercase=cfg.get("do_lower_case", True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise DataError(f"{folder}/vocab.txt has no [CLS] or [SEP]: not a BERT vocabulary")
    tok.post_processor = processors.TemplateProcessing(     # [CLS] a [SEP] b [SEP], token types 0 then 1
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return _with_specials(tok, "bert")


def _byte_level_bpe(folder, family):
    """RoBERTa's or GPT-2's tokenizer from vocab.json + merges.txt. RoBERTa wraps texts as <s> a </s></s> b </s>;
    GPT-2 adds nothing and simply concatenates the two texts of a pair."""
    tok = Tokenizer(models.BPE.from_file(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    family = family or ("roberta" if tok.token_to_id("<s>") is not None else "gpt2")
    if family == "roberta":
        bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        if bos is None or eos is None:
            raise DataError(f"{folder}/vocab.json has no <s> or </s>: not a RoBERTa vocabulary")
        tok.post_processor = processors.RobertaProcessing(("</s>", eos), ("<s>", bos))
    return _with_specials(tok, family), family


def load_tokenizer(folder, family=None):
    """The checkpoint's own tokenizer: tokenizer.json, else vocab.json + merges.txt, else vocab.txt. family
    ("bert", "roberta", "gpt2") defaults to config.json's model_type, then to what the vocabulary contains."""
    if family is None:
        family = _read_json(os.path.join(folder, "config.json")).get("model_type")
        family = family if family in PAD_TOKENS else None
    elif family not in PAD_TOKENS:
        raise DataError(f"Unknown model family {family!r}: use one of {', '.join(PAD_TOKENS)}.")
    has = lambda name: os.path.isfile(os.path.join(folder, name))
    bpe = has("vocab.json") and has("merges.txt")
    if not (has("tokenizer.json") or bpe or has("vocab.txt")):
        raise DataError(f"No tokenizer in {folder!r}: expected tokenizer.json, or vocab.json + merges.txt "
                        "(RoBERTa, GPT-2), or vocab.txt (BERT), as in a Hugging Face checkpoint folder.")
    try:
        if has("tokenizer.json"):
            tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))   # brings its own special tokens
        elif bpe:
            tok, family = _byte_level_bpe(folder, family)
        elif family in (None, "bert"):
            tok, family = _wordpiece(folder), "bert"
        else:
            raise DataError(f"{folder!r} holds BERT's vocab.txt, not a {family} tokenizer")
    except DataError:
        raise
    except Exception as e:                        # tokenizers raises plain Exception for unreadable files
        raise DataError(f"Cannot load the tokenizer files in {folder!r} ({e})") from None
    family = family or next((f for f, pad in PAD_TOKENS.items() if tok.token_to_id(pad) is not None), None)
    if family is None or tok.token_to_id(PAD_TOKENS[family]) is None:
        raise DataError(f"Cannot tell the padding token of the tokenizer in {folder!r}: pass family= one of "
                        f"{', '.join(PAD_TOKENS)}, matching the vocabulary.")
    return Tok(tok, family, tok.token_to_id(PAD_TOKENS[family]))


@dataclass
class Encoded:
    """Tokenized examples stored flat: row i is ids[offsets[i]:offsets[i + 1]]. A few arrays instead of a Python
    list per example keep QQP and MNLI (~400k rows) small in memory and make batching a vectorized gather."""
    ids: np.ndarray         # int32, all rows concatenated
    type_ids: np.ndarray    # int8, the same shape
    offsets: np.ndarray     # int64, len(rows) + 1
    labels: np.ndarray      # int64 class ids, or float32 scores
    pad_id: int

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):      # one row as lists, for inspection; subset examples before encoding instead
        if not isinstance(i, (int, np.integer)):
            raise TypeError("Encoded rows are read one at a time; to use a subset, encode a subset of the examples")
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        start, stop = self.offsets[i], self.offsets[i + 1]
        return {"input_ids": self.ids[start:stop].tolist(), "token_type_ids": self.type_ids[start:stop].tolist(),
                "label": self.labels[i].item()}


class Tok:
    """A tokenizers.Tokenizer plus what batching needs: the family and the padding id."""

    def __init__(self, tokenizer, family, pad_id):
        self.tokenizer, self.family, self.pad_id = tokenizer, family, pad_id

    def encode(self, examples, max_len, chunk=8192):
        """Tokenize (and truncate to max_len tokens, specials included) a list of Examples."""
        pair = any(e.text_b is not None for e in examples)
        specials = self.tokenizer.post_processor.num_special_tokens_to_add(pair) if self.tokenizer.post_processor else 0
        if max_len < specials + 1 + pair:     # tokenizers would silently return rows longer than max_len
            raise DataError(f"max_len={max_len} leaves no room for text: this tokenizer adds {specials} special "
                            f"tokens to {'a pair' if pair else 'a text'}; use at least {specials + 1 + pair}.")
        self.tokenizer.no_padding()                      # batches() pads, per batch
        self.tokenizer.enable_truncation(max_len)        # longest_first, as Hugging Face's truncation=True
        # Chunks turned into arrays at once bound the memory of tokenizers' Encoding objects and Python int lists.
        ids, types, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int8)], [np.zeros(0, np.int64)]
        for start in range(0, len(examples), chunk):
            texts = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples[start:start + chunk]]
            try:
                encodings = self.tokenizer.encode_batch(texts)
            except Exception as e:                       # tokenizers raises plain Exception, e.g. for a None text
                raise DataError(f"Cannot tokenize examples {start}..{start + len(texts) - 1}: {e}") from None
            lengths.append(np.array([len(e.ids) for e in encodings], dtype=np.int64))
            ids.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int32))
            types.append(np.fromiter(chain.from_iterable(e.type_ids for e in encodings), np.int8))
        offsets = np.r_[0, np.cumsum(np.concatenate(lengths))]
        flat_types = np.concatenate(types)
        if self.family != "bert":         # RoBERTa has a single token type and GPT-2 none: all zeros
            flat_types[:] = 0
        is_float = bool(examples) and isinstance(examples[0].label, float)
        labels = np.array([e.label for e in examples], dtype=np.float32 if is_float else np.int64)
        return Encoded(np.concatenate(ids), flat_types, offsets.astype(np.int64), labels, self.pad_id)


# ----------------------------------------------------------------------------- batching

def _collate(enc, rows):
    """Pad the chosen rows to the longest of them (right padding), gathering all tokens in one indexing step."""
    starts = enc.offsets[rows]
    lengths = enc.offsets[rows + 1] - starts
    cols = np.arange(lengths.max())
    mask = cols < lengths[:, None]
    where = np.where(mask, starts[:, None] + cols, 0)          # padded cells read token 0, then get overwritten
    ids = np.where(mask, enc.ids[where], enc.pad_id)
    types = np.where(mask, enc.type_ids[where], 0)
    long = lambda a: torch.from_numpy(a.astype(np.int64))
    return {"input_ids": long(ids), "attention_mask": long(mask), "token_type_ids": long(types),
            "labels": torch.from_numpy(enc.labels[rows])}


def batches(encoded, batch_size, shuffle=False, generator=None, drop_last=False):
    """Iterator of padded batches. With shuffle, the order is drawn now from generator (a seeded torch.Generator),
    so the same seed and the same number of earlier draws give the same order, e.g. in a resumed run."""
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, not {batch_size}")
    n = len(encoded)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    return (_collate(encoded, order[i:i + batch_size]) for i in range(0, stop, batch_size))


# ----------------------------------------------------------------------------- metrics (numpy only)

def accuracy(preds, labels):
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def f1(preds, labels):
    """Binary F1 of the positive class 1; 0.0 when there is no true positive (precision or recall is 0)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = np.sum((preds == 1) & (labels == 1))
    wrong = np.sum(preds != labels)                # false positives + false negatives
    return float(2 * tp / (2 * tp + wrong)) if tp else 0.0


def matthews(preds, labels):
    """Matthews correlation in its multi-class form (Gorodkin 2004); for two classes it is
    (tp·tn − fp·fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)). 0.0 when either side is constant."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    _, inverse = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    k, n = inverse.max() + 1, len(labels)
    t = np.bincount(inverse[:n], minlength=k).astype(np.float64)       # true count per class
    p = np.bincount(inverse[n:], minlength=k).astype(np.float64)       # predicted count per class
    c = float(np.sum(preds == labels))
    denom = (n * n - p @ p) * (n * n - t @ t)
    return float((c * n - t @ p) / math.sqrt(denom)) if denom > 0 else 0.0


def pearson(preds, labels):
    """Pearson correlation; 0.0 when either side is constant. Constancy is checked on the values: the float mean
    of equal values can miss them by an ulp, which would turn a constant into noise correlated at ±1."""
    x, y = np.asarray(preds, np.float64), np.asarray(labels, np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    return float(np.clip(x @ y / math.sqrt((x @ x) * (y @ y)), -1.0, 1.0))


def _ranks(x):
    """Ranks 1..n, ties sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts_run = np.r_[True, xs[1:] != xs[:-1]]             # True where a run of equal values begins
    first = np.flatnonzero(starts_run)                       # sorted position of each run's first and last value
    last = np.r_[first[1:], len(x)] - 1
    ranks = np.empty(len(x))
    ranks[order] = ((first + last) / 2 + 1)[np.cumsum(starts_run) - 1]
    return ranks


def spearman(preds, labels):
    return pearson(_ranks(np.asarray(preds)), _ranks(np.asarray(labels)))


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": matthews, "pearson": pearson, "spearman": spearman}


def _numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def compute_metrics(task, preds, labels):
    """{metric: value} for the task's metrics. preds: class ids or [n, num_labels] logits; scores for STS-B."""
    task = get_task(task)
    preds, labels = _numpy(preds), _numpy(labels)
    if task.is_regression:
        preds = preds.reshape(-1) if preds.ndim == 2 and preds.shape[1] == 1 else preds
    elif preds.ndim == 2:
        preds = preds.argmax(axis=1)
    if preds.shape != labels.shape or preds.ndim != 1 or len(labels) == 0:
        raise DataError(f"compute_metrics({task.name}): need equally many predictions and labels (at least one), "
                        f"got shapes {preds.shape} and {labels.shape}")
    return {name: METRICS[name](preds, labels) for name in task.metrics}
