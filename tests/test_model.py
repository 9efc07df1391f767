"""model.py: output parity with `transformers` on tiny random checkpoints and on the real MiniLM, hub layouts,
presets and clear errors."""
import json
import os
import shutil

import pytest
import torch
import transformers as hf

import model as M
from files import hub
from checkpoints import KINDS, MINILM, make, rewrite

B, T = 3, 12


def inputs(kind, seed=1):
    """A padded batch: row 0 full, rows 1 and 2 right-padded, token types for BERT."""
    g = torch.Generator().manual_seed(seed)
    cfg = KINDS[kind][1]
    pad = cfg.pad_token_id
    ids = torch.randint(3, cfg.vocab_size - 1, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = pad
    types = (torch.arange(T) >= 4).long().expand(B, T) * mask if kind.startswith("bert") else None
    return ids, mask, types


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("kind", ["roberta-2", "roberta-3", "roberta-reg", "bert", "gpt2-lm", "gpt2-cls", "llama-lm",
                                  "llama-cls"])
def test_parity_with_transformers(kind, fmt, tmp_path):
    ref = make(kind, tmp_path, fmt)
    ours = hub.from_pretrained(tmp_path).eval()
    ids, mask, types = inputs(kind)
    kw = {"token_type_ids": types} if types is not None else {}
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kw)
        hidden = ours.encode(ids, mask, types)
        logits, _ = ours(ids, mask, types)
    # every position, padding included: our masking must match theirs row for row
    assert (hidden - out.hidden_states[-1]).abs().max() < 1e-5
    assert logits.shape == out.logits.shape
    assert (logits - out.logits).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["roberta-mc", "bert-mc"])
def test_multiple_choice_parity_with_transformers(kind, tmp_path):
    """*ForMultipleChoice loads into our choice head exactly: 3 questions x 4 choices (padded rows included), then
    the same questions with 4, 3 and 2 choices in one batch, as ReCoRD's variable candidate lists."""
    ref = make(kind, tmp_path)
    ours = hub.from_pretrained(tmp_path)
    assert ours.cfg.head == "choice"
    rows = [inputs(kind, seed) for seed in (1, 2, 3, 4)]         # choice c of question q: row q of batch c
    ids, mask, types = (torch.stack([r[i] for r in rows], 1) if rows[0][i] is not None else None for i in range(3))
    gold = torch.tensor([0, 3, 2])
    kw = {"token_type_ids": types} if types is not None else {}
    flat = lambda t: None if t is None else t.flatten(0, 1)        # (questions * choices, T): question-major rows
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, labels=gold, **kw)
        choices = torch.arange(12).view(3, 4)
        logits, loss = ours(flat(ids), flat(mask), flat(types), torch.eye(4, dtype=torch.bool)[gold], choices)
        assert (logits - out.logits).abs().max() < 1e-5 and abs(loss - out.loss) < 1e-5
        keep = torch.tensor([0, 1, 2, 3, 4, 5, 6, 8, 9])                # question 1 has 3 choices, question 2 has 2
        choices = torch.tensor([[0, 1, 2, 3], [4, 5, 6, -1], [7, 8, -1, -1]])
        logits, _ = ours(flat(ids)[keep], flat(mask)[keep], None if types is None else flat(types)[keep], None, choices)
    assert (logits[0] - out.logits[0]).abs().max() < 1e-5
    assert (logits[1, :3] - out.logits[1, :3]).abs().max() < 1e-5 and (logits[2, :2] - out.logits[2, :2]).abs().max() < 1e-5
    assert logits[1, 3] == logits[2, 2] == logits[2, 3] == float("-inf")


def test_gpt2_multiple_choice_scores_each_row_at_its_last_token(tmp_path):
    ref = make("gpt2-score", tmp_path)                          # a 1-output score head, read as a choice head
    ours = hub.from_pretrained(tmp_path, head="choice")
    ids, mask, _ = inputs("gpt2-score")
    with torch.no_grad():
        scores = ref(input_ids=ids, attention_mask=mask).logits[:, 0]
        logits, _ = ours(ids, mask, choices=torch.tensor([[0, 1], [2, -1]]))
    assert (logits[0] - scores[:2]).abs().max() < 1e-5 and abs(logits[1, 0] - scores[2]) < 1e-5
    assert logits[1, 1] == float("-inf")


def test_losses_match_transformers(tmp_path):
    for kind, labels in [("roberta-3", torch.tensor([0, 2, 1])), ("roberta-reg", torch.tensor([0.5, 3.0, 4.5])),
                         ("gpt2-lm", None), ("llama-lm", None), ("llama-cls", torch.tensor([2, 0, 1]))]:
        folder = tmp_path / kind
        ref = make(kind, folder)
        ours = hub.from_pretrained(folder).eval()
        ids, mask, _ = inputs(kind)
        if labels is None:  # LM: labels are the ids, padding ignored
            labels = ids.masked_fill(mask == 0, -100)
        with torch.no_grad():
            assert abs(ref(input_ids=ids, attention_mask=mask, labels=labels).loss - ours(ids, mask, labels=labels)[1]) < 1e-5


def test_gpt2_hub_layout(tmp_path):
    """The real `gpt2` file: no `transformer.` prefix, plus h.N.attn.bias / masked_bias buffers."""
    ref = make("gpt2-lm", tmp_path)
    n = ref.config.n_positions

    def hub_layout(state):
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        for i in range(ref.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.ones(1, 1, n, n).tril()
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        return state
    rewrite(tmp_path, hub_layout)
    ours = hub.from_pretrained(tmp_path).eval()
    ids, mask, _ = inputs("gpt2-lm")
    with torch.no_grad():
        assert (ours(ids, mask)[0] - ref(input_ids=ids, attention_mask=mask).logits).abs().max() < 1e-5


def test_roberta_masked_lm_checkpoint_gets_a_new_head(tmp_path):
    """`roberta-base` on the hub is a masked-LM checkpoint: lm_head.* and a pooler, no classifier."""
    ref = make("roberta-mlm", tmp_path)
    d = ref.config.hidden_size
    rewrite(tmp_path, lambda s: {**s, "roberta.pooler.dense.weight": torch.randn(d, d),
                                 "roberta.pooler.dense.bias": torch.randn(d),
                                 "roberta.embeddings.position_ids": torch.arange(40)[None]})
    base = hub.from_pretrained(tmp_path).eval()
    assert base.cfg.head == "none" and base.head is None
    ours = hub.from_pretrained(tmp_path, num_labels=3).eval()
    assert sorted(ours.new_head) == ["head.dense.bias", "head.dense.weight", "head.out_proj.bias",
                                     "head.out_proj.weight"] and base.new_head == []
    assert ours.head.out_proj.weight.shape == (3, d)
    ids, mask, _ = inputs("roberta-mlm")
    with torch.no_grad():
        ref_hidden = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        assert (ours.encode(ids, mask) - ref_hidden).abs().max() < 1e-5
        assert (base(ids, mask)[0] - ref_hidden).abs().max() < 1e-5


@pytest.mark.parametrize("layout", ["sentence-transformers", "old-bert"])
def test_bert_layouts(layout, tmp_path):
    """sentence-transformers: no `bert.` prefix + position_ids buffer; original bert-base-uncased: `bert.`
    prefix, pre-training heads (cls.*) and LayerNorm gamma/beta names."""
    kind = "bert-base" if layout == "sentence-transformers" else "bert-pretraining"
    ref = make(kind, tmp_path)
    if layout == "sentence-transformers":
        rewrite(tmp_path, lambda s: {**s, "embeddings.position_ids": torch.arange(40)[None]})
    else:
        rewrite(tmp_path, lambda s: {k.replace("LayerNorm.weight", "LayerNorm.gamma")
                                     .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in s.items()})
    ours = hub.from_pretrained(tmp_path, num_labels=2).eval()
    base = ref if layout == "sentence-transformers" else ref.bert
    ids, mask, types = inputs("bert")
    with torch.no_grad():
        out = base(input_ids=ids, attention_mask=mask, token_type_ids=types)
        assert (ours.encode(ids, mask, types) - out.last_hidden_state).abs().max() < 1e-5
        # the pooler came from the checkpoint, only the classifier is new
        assert (torch.tanh(ours.head.pooler(ours.encode(ids, mask, types)[:, 0])) - out.pooler_output).abs().max() < 1e-5


def test_llama_older_layouts(tmp_path):
    """Llama-2's own files: rope_theta at the top of config.json (newer ones nest it in rope_parameters) and, in
    older checkpoints, a rotary_emb.inv_freq buffer per layer."""
    ref = make("llama-lm", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    theta = cfg.pop("rope_parameters")["rope_theta"]
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "rope_theta": theta, "rope_scaling": None}))
    inv_freq = 1.0 / theta ** (torch.arange(0, 8, 2).float() / 8)
    buffers = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq.clone() for i in range(2)}
    rewrite(tmp_path, lambda s: {**s, **buffers})
    ours = hub.from_pretrained(tmp_path).eval()
    assert ours.cfg.rope_theta == 500.0 and ours.cfg.kv_heads == 2 and ours.lm_head is not None
    ids, mask, _ = inputs("llama-lm")
    with torch.no_grad():
        assert (ours(ids, mask)[0] - ref(input_ids=ids, attention_mask=mask).logits).abs().max() < 1e-5
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}))
    with pytest.raises(M.ModelError, match="unsupported rotary scaling 'linear'"):
        hub.from_pretrained(tmp_path)


def test_real_minilm_matches_transformers():
    """The real pretrained all-MiniLM-L6-v2 (BERT architecture) on real sentences."""
    tok = hf.AutoTokenizer.from_pretrained(MINILM)
    ref = hf.BertModel.from_pretrained(MINILM).eval()
    ours = hub.from_pretrained(MINILM).eval()
    sentences = ["A man is playing a guitar on the street.", "The new movie is awesome!",
                 "It was the best of times, it was the worst of times, it was the age of wisdom."]
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = ref(**batch).last_hidden_state
        got = ours.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert (got - want).abs().max() < 1e-4
    assert ours.cfg.head == "none" and ours.cfg.n_layer == 6 and ours.cfg.d_model == 384


def test_presets_build_with_known_sizes():
    # parameter totals of the published models (transformers' own counts), built on the meta device: no memory
    known = {("roberta-base", "cls"): 124_647_170, ("bert-base-uncased", "cls"): 109_483_778,
             ("gpt2", "lm"): 124_439_808, ("roberta-large", "cls"): 355_361_794, ("gpt2-medium", "lm"): 354_823_168,
             ("llama2-7b", "lm"): 6_738_415_616, ("llama2-13b", "lm"): 13_015_864_320}
    for (name, head), total in known.items():
        with torch.device("meta"):
            m = M.Model(M.preset(name, head=head, num_labels=2))
        assert sum(p.numel() for p in m.parameters()) == total, name
    with pytest.raises(M.ModelError, match="unknown preset"):
        M.preset("roberta-huge")


def test_random_preset_runs_and_sdpa_fast_path_equals_masked_path():
    cfg = M.Config(family="gpt2", vocab_size=50, n_positions=16, n_layer=2, n_head=2, d_model=16, d_ff=32,
                   type_vocab_size=0, pad_token_id=0, activation="gelu_tanh", head="lm")
    m = M.Model(cfg).eval()
    ids = torch.randint(1, 50, (2, 10))
    with torch.no_grad():
        fast = m(ids)[0]                                      # no mask: SDPA's is_causal kernel
        masked = m(ids, torch.ones_like(ids).index_fill_(1, torch.tensor([9]), 0))[0]  # explicit mask
    assert (fast[:, :9] - masked[:, :9]).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------- errors

def test_errors_name_the_problem(tmp_path):
    make("roberta-2", tmp_path / "ok")
    m = hub.from_pretrained(tmp_path / "ok").eval()

    with pytest.raises(M.ModelError, match="longer than this model's position table"):
        M.check_inputs(m.cfg, torch.full((1, 39), 5))  # RoBERTa: 39 tokens need positions up to 40 (pad + 39)
    M.check_inputs(m.cfg, torch.full((1, 38), 5))
    m(torch.full((1, 38), 5))
    with pytest.raises(M.ModelError, match=r"token ids must lie in \[0, 120\)"):
        M.check_inputs(m.cfg, torch.tensor([[0, 5, 120]]))
    with pytest.raises(M.ModelError, match="input_ids must be"):
        M.check_inputs(m.cfg, torch.tensor([1, 2, 3]))
    with pytest.raises(M.ModelError, match="attention_mask shape"):
        M.check_inputs(m.cfg, torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4))

    empty = tmp_path / "empty"
    shutil.copytree(tmp_path / "ok", empty)
    os.remove(empty / "model.safetensors")
    with pytest.raises(M.ModelError, match="no weights in .*expected one of model.safetensors, pytorch_model.bin"):
        hub.from_pretrained(empty)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tmp_path / "ok", corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(M.ModelError, match="corrupt or truncated"):
        hub.from_pretrained(corrupt)
    os.remove(corrupt / "model.safetensors")
    (corrupt / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(M.ModelError, match="corrupt or truncated"):
        hub.from_pretrained(corrupt)

    t5 = tmp_path / "t5"
    shutil.copytree(tmp_path / "ok", t5)
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}))
    with pytest.raises(M.ModelError, match="unsupported architecture.*t5"):
        hub.from_pretrained(t5)

    with pytest.raises(M.ModelError, match="not a checkpoint folder"):
        hub.from_pretrained(tmp_path / "nowhere")


def test_every_tensor_is_accounted_for(tmp_path):
    make("roberta-2", tmp_path)
    cases = [
        (lambda s: {k: v for k, v in s.items() if "layer.1.attention.self.value.weight" not in k},
         "missing from the checkpoint.*blocks.1.attn.value.weight"),
        (lambda s: {**s, "roberta.encoder.layer.0.adapter.weight": torch.zeros(2)},
         "unexpected tensors.*encoder.layer.0.adapter.weight"),
        (lambda s: {**s, "roberta.encoder.layer.0.intermediate.dense.weight": torch.zeros(65, 32)},
         r"blocks.0.mlp.fc_in.weight has shape \(65, 32\), the model expects \(64, 32\)"),
    ]
    original = (tmp_path / "model.safetensors").read_bytes()
    for edit, message in cases:
        (tmp_path / "model.safetensors").write_bytes(original)
        rewrite(tmp_path, edit)
        with pytest.raises(M.ModelError, match=message):
            hub.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(original)
    with pytest.raises(M.ModelError, match="classification head has 2 labels, not the 3 asked for"):
        hub.from_pretrained(tmp_path, num_labels=3)


def test_hub_name_offline_and_uncached_says_what_to_download(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(M.ModelError, match="Download config.json, model.safetensors.*pass that folder"):
        hub.from_pretrained("roberta-base")


def test_hub_name_loads_from_the_cache_offline(tmp_path, monkeypatch):
    """A model downloaded once sits in huggingface_hub's cache; the next run needs no network."""
    from huggingface_hub import constants
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-roberta"
    make("roberta-2", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    m = hub.from_pretrained("someone/tiny-roberta")
    assert m.cfg.num_labels == 2 and m.source.endswith(commit)


def test_sharded_safetensors_checkpoint(tmp_path):
    """Large hub models split their weights over model-0000N-of-0000M.safetensors with an index file."""
    from safetensors.torch import load_file, save_file
    ref = make("bert", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    os.remove(tmp_path / "model.safetensors")
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / file)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    ours = hub.from_pretrained(tmp_path).eval()
    ids, mask, types = inputs("bert")
    with torch.no_grad():
        assert (ours(ids, mask, types)[0] - ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits).abs().max() < 1e-5
