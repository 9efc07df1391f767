"""DeBERTa-v2/v3 (the fifth family): parity with transformers' DebertaV2* on tiny random checkpoints, for settings that
exercise every term of the disentangled attention; adapters on it; its SentencePiece tokenizer converted offline."""
import pytest
import torch
import transformers as hf

import model
import ssmlora
from files import hub
from files.tokenizer import load_tokenizer

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            relative_attention=True, position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
            norm_rel_ebd="layer_norm", pad_token_id=0)
# position buckets on (8: sequences of 20 tokens reach the log buckets) and off; shared and own position
# projections; both position terms and each alone. One model class per setting.
SETTINGS = [
    ("model", dict(pos_att_type="p2c|c2p", position_buckets=8, share_att_key=True)),
    ("cls", dict(pos_att_type="p2c|c2p", position_buckets=-1, max_relative_positions=-1, share_att_key=False)),
    ("choice", dict(pos_att_type="c2p", position_buckets=8, share_att_key=False)),
    ("cls", dict(pos_att_type="p2c", position_buckets=-1, max_relative_positions=24, share_att_key=True,
                 norm_rel_ebd="none", position_biased_input=True, type_vocab_size=2, embedding_size=24)),
]
CLASSES = {"model": hf.DebertaV2Model, "cls": hf.DebertaV2ForSequenceClassification,
           "choice": hf.DebertaV2ForMultipleChoice}


def make(kind, folder, seed=0, **settings):
    """A random DeBERTa-v2 checkpoint saved by transformers, with random norms and biases (a mis-mapped tensor
    cannot hide behind 1s and 0s)."""
    torch.manual_seed(seed)
    ref = CLASSES[kind](hf.DebertaV2Config(**{**TINY, **settings}, num_labels=3)).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(folder)
    return ref


def batch(rows=3, T=20, seed=1):
    """Padded rows: lengths T, T - 7, 5 (right padding), token types 0 then 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (rows, T), generator=g)
    mask = torch.ones(rows, T, dtype=torch.long)
    for i, n in enumerate([T, T - 7, 5][:rows]):
        mask[i, n:] = 0
    types = (torch.arange(T) >= T // 2).long().expand(rows, T).contiguous()
    return ids.masked_fill(mask == 0, 0), mask, types


@pytest.mark.parametrize("kind,settings", SETTINGS, ids=["model-buckets-shared-both", "cls-exact-own-both",
                                                        "choice-buckets-own-c2p", "cls-exact-shared-p2c-table"])
def test_parity_with_transformers(tmp_path, kind, settings):
    ref = make(kind, tmp_path, **settings)
    ours = hub.from_pretrained(tmp_path)
    assert ours.cfg.head == {"model": "none", "cls": "cls", "choice": "choice"}[kind]
    ids, mask, types = batch()
    types = types if settings.get("type_vocab_size") else None
    with torch.no_grad():
        if kind == "choice":  # one question, three (context, choice) rows
            want = ref(ids[None], attention_mask=mask[None]).logits
            got, _ = ours(ids, mask, choices=torch.tensor([[0, 1, 2]]))
        else:
            want = ref(ids, attention_mask=mask, token_type_ids=types)
            want = want.logits if kind == "cls" else want.last_hidden_state
            got, _ = ours(ids, mask, types)
    if kind == "model":  # padded positions differ by design (DeBERTa masks their queries too); real ones must not
        want, got = want[mask.bool()], got[mask.bool()]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_log_buckets_match_transformers():
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position
    cfg = model.Config(family="deberta-v2", position_buckets=256, max_relative_positions=512, n_positions=512)
    x = torch.zeros(1, 512, 1)
    want = build_relative_position(x, x, bucket_size=256, max_position=512)[0]
    got = model.relative_positions(512, cfg, "cpu") - cfg.rel_span
    assert torch.equal(got, want)
    assert got.min() == -255 and got.max() == 255 and got[0, 100] == -100  # exact up to 128, log-bucketed beyond


@pytest.mark.parametrize("method,sparse", [("ssmlora", True), ("ssmlora", False), ("lora", False)])
def test_adapters_start_at_the_base_and_learn(tmp_path, method, sparse):
    make("cls", tmp_path, pos_att_type="p2c|c2p", position_buckets=8, share_att_key=True)
    ids, mask, _ = batch()
    base = hub.from_pretrained(tmp_path, dropout=0.0, attn_dropout=0.0, head_dropout=0.0)
    m = ssmlora.add_adapters(hub.from_pretrained(tmp_path, dropout=0.0, attn_dropout=0.0, head_dropout=0.0),
                             method=method, rank=4, targets="query,value", sparse=sparse, dropout=0.0)
    adapted = [n for n, mod in m.named_modules() if isinstance(mod, ssmlora.LowRankLinear)]
    assert adapted == (["blocks.0.attn.query", "blocks.1.attn.value"] if sparse else
                       ["blocks.0.attn.query", "blocks.0.attn.value", "blocks.1.attn.query", "blocks.1.attn.value"])
    with torch.no_grad():
        torch.testing.assert_close(m(ids, mask)[0], base(ids, mask)[0], atol=0, rtol=0)
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    _, loss = m(ids, mask, labels=torch.tensor([0, 1, 2]))
    loss.backward()
    assert m.blocks[0].attn.query.W_b.grad.abs().sum() > 0
    opt.step()
    m.eval()
    with torch.no_grad():
        assert (m(ids, mask)[0] - base(ids, mask)[0]).abs().max() > 1e-4


def test_lora_on_the_shared_position_projection_merges_exactly(tmp_path):
    """share_att_key: the query / key linears project the relative embeddings too, with LoRA's update (as PEFT on
    transformers' DeBERTa), so merging LoRA into W0 changes nothing."""
    make("cls", tmp_path, pos_att_type="p2c|c2p", position_buckets=8, share_att_key=True)
    m = ssmlora.add_adapters(hub.from_pretrained(tmp_path), method="lora", rank=4, targets="query,key")
    with torch.no_grad():
        for mod in ssmlora.adapter_modules(m):
            mod.W_b.normal_()
    ids, mask, _ = batch()
    with torch.no_grad():
        before = m(ids, mask)[0]
        ssmlora.merge_lora(m)
        torch.testing.assert_close(m(ids, mask)[0], before, atol=1e-5, rtol=1e-5)


def test_presets_and_config_round_trip():
    from files.hub import config_from_hf, config_to_hf
    for name in ("deberta-v3-base", "deberta-v3-large"):
        cfg = model.preset(name, dropout=0.0, attn_dropout=0.0, head_dropout=0.0)
        assert config_from_hf(config_to_hf(cfg).to_dict(), cfg.num_labels) == cfg
    cfg = model.preset("deberta-v3-base", head="none")
    with torch.device("meta"):
        m, ref = model.Model(cfg), hf.DebertaV2Model(config_to_hf(cfg))
    # 98.4M of embeddings (128100 x 768) + 85.4M in the blocks: DeBERTaV3-base's published "86M + 98M"
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in ref.parameters()) == 183_831_552
    with pytest.raises(model.ModelError, match="qkv"):
        ssmlora.add_adapters(m, method="lora", targets="qkv")


@pytest.mark.parametrize("method,adapter", [("ssmlora", 148_992), ("lora", 294_912)])
def test_deberta_v3_base_adapter_counts(method, adapter, capsys):
    """README's parameter table: r 8 on query and value (SSMLoRA sparse, LoRA dense), a 2-label head."""
    import train
    from training.flags import parse
    train.run(parse(["--task", "rte", "--random-init", "--dry-run", "--model", "deberta-v3-base",
                              "--method", method]))
    out = capsys.readouterr().out
    assert f"adapter      {adapter:>11,}" in out and "head             592,130" in out


# ----------------------------------------------------------------------------------------------------------
# the tokenizer: spm.model converted to a `tokenizers` Tokenizer

CORPUS = ["The quick brown fox jumps over the lazy dog.", "A second line, with commas; and: punctuation!",
          "Numbers 12345 and UNICODE café naïve", "DeBERTa uses disentangled attention over relative positions."]
TEXTS = ["The quick brown fox", "  leading, and   many spaces  ", "tab\there\nnewline", "café naïve Ünicode",
         "unknown ☃ snowman zzz", "ｆｕｌｌ width ＡＢＣ", "", "jumps over 12345 lazy dogs!"]


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory):
    """A tiny SentencePiece Unigram model with DeBERTa-v3's special pieces ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3)."""
    import sentencepiece
    folder = tmp_path_factory.mktemp("spm")
    (folder / "corpus.txt").write_text("\n".join(CORPUS * 20))
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "spm"), vocab_size=120, model_type="unigram",
        pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3,
        unk_piece="[UNK]", control_symbols=["[MASK]"], minloglevel=2, hard_vocab_limit=False)
    return folder


def test_spm_tokenizer_segments_as_sentencepiece(spm_folder, tmp_path, monkeypatch):
    import sentencepiece

    import data
    from files import spm
    monkeypatch.setenv("SSMLORA_TOKENIZER_CACHE", str(tmp_path))
    tok = load_tokenizer(spm_folder)
    assert (tok.family, tok.pad_id) == ("deberta-v2", 0)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_folder / "spm.model"))
    for text in TEXTS:  # SentencePiece itself (what DeBERTa's own code runs), NFKC and spaces included
        assert tok.tokenizer.encode(text).ids == [1] + sp.encode(text) + [2], text
    pair = tok.tokenizer.encode("The quick fox", "a lazy dog")
    a, b = sp.encode("The quick fox"), sp.encode("a lazy dog")
    assert pair.ids == [1] + a + [2] + b + [2]
    assert pair.type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    # transformers' DebertaV2Tokenizer on the same pieces and scores agrees where its normaliser (NFC, no
    # character map) does, and writes [CLS] in a text as the special token, as ours
    ref = hf.DebertaV2Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())])
    for text in [t for t in TEXTS if t.isascii()] + ["[CLS] inside"]:
        assert tok.tokenizer.encode(text).ids == ref(text)["input_ids"], text
    assert tok.tokenizer.encode("The quick", "dog").ids == ref("The quick", "dog")["input_ids"]
    # converted once: the second load reads the cache
    assert len(list(tmp_path.glob("spm-*.json"))) == 1
    monkeypatch.setattr(spm, "convert", lambda data: pytest.fail("converted again"))
    assert load_tokenizer(spm_folder).tokenizer.encode(TEXTS[0]).ids == [1] + sp.encode(TEXTS[0]) + [2]


def test_spm_tokenizer_errors(tmp_path, monkeypatch):
    import data
    monkeypatch.setenv("SSMLORA_TOKENIZER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "spm.model").write_bytes(b"\x0a\x05short")  # a truncated proto
    with pytest.raises(data.DataError, match="not a SentencePiece Unigram model.*tokenizer.json"):
        load_tokenizer(tmp_path)


def test_spm_model_cut_off_is_an_error_naming_it(spm_folder, tmp_path, monkeypatch):
    """An interrupted download: cut inside a piece, between two pieces, inside a number, or an added_tokens.json cut
    off. Each once loaded as a smaller vocabulary (plus an empty piece) or failed with no file named."""
    import data
    from files import spm
    monkeypatch.setenv("SSMLORA_TOKENIZER_CACHE", str(tmp_path / "cache"))
    whole = (spm_folder / "spm.model").read_bytes()
    first = list(spm._fields(whole))
    ends, at = [], 0
    for number, value in first:  # where each top-level field ends: key byte, length varint, value
        at += 1 + max(1, (len(value).bit_length() + 6) // 7) + len(value)
        ends.append(at)
    assert ends[-1] == len(whole)
    cuts = {"inside a piece": ends[40] - 3, "between two pieces": ends[40], "inside a number": ends[40] + 1,
            "inside the character map": len(whole) - 1000}
    for why, n in cuts.items():
        (tmp_path / "spm.model").write_bytes(whole[:n])
        with pytest.raises(data.DataError, match=f"{tmp_path}/spm.model is not a SentencePiece .*cut off.*again"):
            load_tokenizer(tmp_path)
    (tmp_path / "spm.model").write_bytes(whole)
    (tmp_path / "added_tokens.json").write_text('{"[MASK]": 12')
    with pytest.raises(data.DataError, match=r"added_tokens.json is not valid JSON .*line 1 column"):
        load_tokenizer(tmp_path)


def test_deberta_with_its_spm_tokenizer_fine_tunes_end_to_end(tmp_path, monkeypatch, seed, learned):
    """train.py on RTE-format files: a random tiny DeBERTa with a SentencePiece tokenizer of the words, SSMLoRA on
    query / value, learns which word (good or bad) the premise holds."""
    import random

    import sentencepiece

    import train
    from training.flags import parse
    from glue_fixtures import write_glue_task
    monkeypatch.setenv("SSMLORA_TOKENIZER_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    pos, neg, fill = "good great fine lovely".split(), "bad awful poor dull".split(), "the film was a it plot".split()

    def rows(n):
        out = []
        for _ in range(n):
            y, words = rng.randrange(2), [rng.choice(fill) for _ in range(rng.randint(3, 6))]
            words.insert(rng.randrange(len(words) + 1), rng.choice(pos if y else neg))
            out.append((" ".join(words), "it was " + rng.choice(fill), y))
        return out
    write_glue_task(tmp_path / "glue", "rte", rows(160), rows(64))
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(rng.sample(pos + neg + fill, 10)) for _ in range(100)))
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    hf.DebertaV2Model(hf.DebertaV2Config(**TINY, pos_att_type="p2c|c2p", position_buckets=8,
                                         share_att_key=True)).save_pretrained(ckpt)
    sentencepiece.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(ckpt / "spm"), vocab_size=50, model_type="unigram",
        pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3,
        unk_piece="[UNK]", minloglevel=2, hard_vocab_limit=False)
    r = train.run(parse(["--task", "rte", "--model", str(ckpt), "--random-init", "--data-dir",
                                  str(tmp_path / "glue"), "--out", str(tmp_path / "out"), "--epochs", "12",
                                  "--lr", "1e-2", "--dropout", "0", "--seed", str(seed)]))
    learned.at_least(r["best"]["dev"]["accuracy"], 0.7)  # chance 0.5; worst 0.81


def test_pretraining_checkpoint_layout_loads(tmp_path):
    """microsoft/deberta-v3-base's layout: "deberta." names, the masked-LM head (lm_predictions), the
    replaced-token-detection head (mask_predictions) and an unused position table, which are left out; a task head
    is new."""
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    ref = hf.DebertaV2ForMaskedLM(hf.DebertaV2Config(**TINY, pos_att_type="p2c|c2p", position_buckets=8,
                                                     share_att_key=True, legacy=False)).eval()
    ref.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert any(k.startswith("lm_predictions.") for k in state)
    state.update({"mask_predictions.dense.weight": torch.zeros(32, 32), "mask_predictions.classifier.weight":
                  torch.zeros(1, 32), "deberta.embeddings.position_embeddings.weight": torch.zeros(64, 32)})
    save_file(state, tmp_path / "model.safetensors")
    ours = hub.from_pretrained(tmp_path, num_labels=2)
    assert ours.new_head == ["head.pooler.weight", "head.pooler.bias", "head.classifier.weight",
                             "head.classifier.bias"]
    ids, mask, _ = batch()
    with torch.no_grad():
        want = ref.deberta(ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(ours.encode(ids, mask)[mask.bool()], want[mask.bool()], atol=1e-5, rtol=1e-5)
