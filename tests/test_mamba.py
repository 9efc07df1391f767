"""Mamba (mamba/model.py) against transformers, and PEFT of it: LoRA, SSMLoRA and SDT (mamba/sdt.py)."""
import copy
import json
import random

import pytest
import torch
import transformers as hf
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import predict
import train
from files import hub
from files.hub import read_weights
from files.tokenizer import load_tokenizer
from glue_fixtures import write_glue_task
from mamba import sdt
from mamba.model import Mamba, MambaConfig, from_state, selective_scan
from mamba.model import config_from_hf as mamba_config_from_hf  # files.hub has the transformers'
from model import ModelError
from reproduce.synthetic import FILL, NEG, POS, sentiment_rows
from ssmlora import Adapters, add_adapters, param_report
from training.flags import parse as parse_args

# non-default sizes everywhere: d 20, D 60 (expand 3), n 5, R 4, k 3
TINY = dict(vocab_size=61, hidden_size=20, state_size=5, num_hidden_layers=3, expand=3, conv_kernel=3,
            time_step_rank=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random MambaForCausalLM saved as a Hugging Face folder; A_log, D, Δ's bias and the norms moved off
    their initial values, so a wrong sign or a missed parameter shows."""
    torch.manual_seed(0)
    ref = hf.MambaForCausalLM(hf.MambaConfig(**TINY)).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("A_log", ".D", "norm.weight", "norm_f.weight", "conv1d.bias", "dt_proj.bias")):
                p.add_(torch.randn_like(p) * 0.5)
    folder = tmp_path_factory.mktemp("mamba")
    ref.save_pretrained(folder)
    return ref, folder


def load(folder, **kw):
    return hub.from_pretrained(folder, **kw)  # the transformers' loader: it hands a Mamba folder to mamba/model.py


def padded_batch():
    """Three rows of 9: left-padded by 3, right-padded by 3, unpadded; the pad id is 0 = eos, as Mamba's."""
    ids = torch.randint(1, 61, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :3], mask[1, 6:] = 0, 0
    return ids.masked_fill(mask == 0, 0), mask


def test_equals_transformers_logits_and_hidden_states_padded_batch_included(checkpoint):
    ref, folder = checkpoint
    ours = load(folder)
    ids, mask = padded_batch()
    with torch.no_grad():
        assert (ours(ids)[0] - ref(ids).logits).abs().max() < 1e-5
        got, want = ours(ids, mask)[0], ref(ids, attention_mask=mask).logits
        assert (got - want).abs().max() < 1e-5
        hidden = ref.backbone(ids, attention_mask=mask).last_hidden_state
        assert (ours.encode(ids, mask) - hidden).abs().max() < 1e-5
        # a padded row equals the same row alone, left padding and right padding
        assert (ours(ids[:1, 3:])[0] - got[:1, 3:]).abs().max() < 1e-6
        assert (ours(ids[1:2, :6])[0] - got[1:2, :6]).abs().max() < 1e-6
    assert (got[0] - got[2]).abs().max() > 1e-3  # the rows are not all alike


def test_classification_head_reads_the_last_real_token(checkpoint):
    _, folder = checkpoint
    model = load(folder, num_labels=3)
    assert model.new_head == ["head.score.weight"]
    ids, mask = padded_batch()
    with torch.no_grad():
        logits = model(ids, mask)[0]
        alone = [model(ids[:1, 3:])[0], model(ids[1:2, :6])[0], model(ids[2:])[0]]
    assert logits.shape == (3, 3)
    assert torch.allclose(logits, torch.cat(alone), atol=1e-6)


def test_bad_checkpoints_are_one_line_errors(checkpoint):
    assert isinstance(load(checkpoint[1]), Mamba)
    ref, folder = checkpoint
    hf_cfg = json.loads((folder / "config.json").read_text())
    state = read_weights(folder)
    with pytest.raises(ModelError, match="tie_word_embeddings is false, it should be true"):
        from_state({**hf_cfg, "tie_word_embeddings": False}, state)
    with pytest.raises(ModelError, match="missing.*A_log"):
        from_state(hf_cfg, {k: v for k, v in state.items() if not k.endswith("1.mixer.A_log")})
    with pytest.raises(ModelError, match="does not fit"):
        from_state({**hf_cfg, "state_size": 6}, state)
    with pytest.raises(ModelError, match="unexpected tensors"):
        from_state(hf_cfg, {**state, "backbone.extra.weight": torch.zeros(1)})


BAD_CONFIGS = [  # (what is done to a Mamba config.json, the error line it must give)
    (lambda c: c.pop("hidden_size"), r"config.json has no hidden_size \(the width d_model, an integer >= 1\)$"),
    (lambda c: c.update(hidden_sise=c.pop("hidden_size")), "no hidden_size .*; is hidden_sise a misspelling of it"),
    (lambda c: c.update(hidden_size="abc"), 'hidden_size is "abc", it should be the width d_model, an integer'),
    (lambda c: c.update(state_size=0), "state_size is 0, it should be d_state, the states per channel, an integer"),
    (lambda c: c.update(time_step_rank="big"), 'time_step_rank is "big", it should be dt_rank, an integer >= 1 or'),
    (lambda c: c.update(architectures=["GPT2LMHeadModel"], n_embd=c.pop("hidden_size")),
     r'says model_type "mamba" but describes a transformer \(GPT2LMHeadModel\)'),
]


@pytest.mark.parametrize("edit, error", BAD_CONFIGS)
def test_a_bad_mamba_config_json_names_the_key_and_what_it_should_be(checkpoint, edit, error):
    """Each of these was a KeyError or TypeError traceback, the whole MambaConfig printed, or another key blamed."""
    hf_cfg = json.loads((checkpoint[1] / "config.json").read_text())
    edit(hf_cfg)
    with pytest.raises(ModelError, match=error) as e:
        mamba_config_from_hf(hf_cfg, 2)
    assert len(str(e.value)) < 160 and "\n" not in str(e.value)


def test_scan_is_the_recurrence_written_out():
    """selective_scan against eqs. (2a), (2b) and (4) written per batch row, channel and state, small enough."""
    g = torch.Generator().manual_seed(0)
    b, l, D, n = 2, 5, 3, 4
    x, dt = torch.randn(b, l, D, generator=g), torch.rand(b, l, D, generator=g)
    A, B, C = -torch.rand(D, n, generator=g) * 3, torch.randn(b, l, n, generator=g), torch.randn(b, l, n, generator=g)
    y = selective_scan(x, dt, A, B, C)
    for i in range(b):
        for c in range(D):
            h = torch.zeros(n)
            for t in range(l):
                h = torch.exp(dt[i, t, c] * A[c]) * h + dt[i, t, c] * B[i, t] * x[i, t, c]
                assert torch.allclose(y[i, t, c], (C[i, t] * h).sum(), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# PEFT of Mamba

CFG = dict(vocab_size=12, d_model=16, n_layer=2, d_state=4, head="cls")
METHODS = [dict(method="none"), dict(method="full"), dict(method="bitfit"),
           dict(method="lora", targets="in_proj,x_proj,dt_proj,out_proj,head"),
           dict(method="ssmlora", targets="in_proj,out_proj"),
           dict(method="ssmlora", targets="in_proj,x_proj,dt_proj,out_proj", sparse=False)]


def base_model():
    torch.manual_seed(0)
    model = Mamba(MambaConfig(**CFG))
    with torch.no_grad():  # O(1) activations, as a trained model has (the default init's are ~0.02)
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m is not model.head.score and m.in_features != model.cfg.dt_rank:
                m.weight.normal_(0, m.in_features ** -0.5)
        model.embed.tok.weight.normal_()
    return model.eval()


def sdt_models(base, warmup_steps=0, train=None):
    """(warm-up model, SDT model) as sdt's three steps: warm-up, select, fresh copy of base with sparse deltas."""
    a = Adapters(method="sdt", rank=4, alpha=4, targets="out_proj", dropout=0.0)
    warm = sdt.add_warmup(copy.deepcopy(base), a)
    if warmup_steps:
        train(warm, warmup_steps)
    else:
        with torch.no_grad():
            for m in sdt.mixers(warm):
                m.A_log_delta.sd_delta.normal_()
    return warm, sdt.add_sdt(copy.deepcopy(base), a, sdt.selection(warm, rho=0.5, channels=0.1))


def test_every_method_is_the_base_model_at_init():
    base = base_model().requires_grad_(False)  # CPU F.linear's last bits depend on whether its weight is trained;
    # frozen weights on both sides: equal to the bit, as the transformers' methods (test_ssmlora)
    ids, mask = torch.randint(0, 12, (3, 7)), torch.ones(3, 7, dtype=torch.long)
    mask[0, :2] = 0
    with torch.no_grad():
        want = base(ids, mask)[0]
        for settings in METHODS:
            model = add_adapters(copy.deepcopy(base), Adapters(dropout=0.0, rank=4, **settings)).eval()
            if settings["method"] in ("full", "bitfit"):
                model.requires_grad_(False)
            assert torch.equal(model(ids, mask)[0], want), settings
        for model in sdt_models(base):
            if model.adapters.method == "sdt" and model.blocks[0].mixer.A_log_delta.index is None:
                for m in sdt.mixers(model):
                    m.A_log_delta.sd_delta.zero_()  # the warm-up model: its delta starts at zero too
            assert torch.equal(model.eval()(ids, mask)[0], want)


def test_ssmlora_alternates_in_proj_and_out_proj_one_time_axis_each():
    model = add_adapters(base_model(), Adapters(method="ssmlora", rank=4, targets="in_proj,out_proj"))
    m0, m1 = model.blocks[0].mixer, model.blocks[1].mixer
    assert (m0.in_proj.axis, m0.in_proj.position, m1.out_proj.axis, m1.out_proj.position) == \
        ("in_proj", 0, "out_proj", 0)
    assert not hasattr(m0.out_proj, "W_a") and not hasattr(m1.in_proj, "W_a")
    # in_proj (16 -> 64) at rank 4, plus W_c and W_d (2 x 4 x 4), in layer 0; out_proj (32 -> 16), plus its own, in 1
    assert param_report(model)["adapter"] == 4 * (16 + 64) + 32 + 4 * (32 + 16) + 32


def test_sdt_selection_keeps_the_known_top_channels_and_states():
    delta = torch.full((200, 8), 0.01)
    delta[42, [1, 6]] = torch.tensor([-3.0, 2.0])   # channel 42: sum of squares 13
    delta[7, [0, 5, 2]] = torch.tensor([1.0, -2.5, 1.5])   # channel 7: 9.5, second
    delta[100, 3] = 2.9  # one state above channel 7's best, but the channel's sum (8.41) ranks third
    channels, states = sdt.select(delta, rho=0.75)  # 1 % of 200 channels: 2; 25 % of 8 states: 2
    assert channels.tolist() == [42, 7]
    assert states.tolist() == [[1, 6], [5, 2]]
    channels, states = sdt.select(delta, rho=0.95)  # 8 - round(7.6) = 0 states: at least 1 is kept
    assert states.tolist() == [[1], [5]]
    assert sdt.select(delta[:50], rho=0.75)[0].tolist() == [42]  # 50 - round(49.5) = 0: at least one
    assert sdt.select(delta[:30], rho=0.75)[0].tolist() == [7]  # 1 % of 30 rounds to none: at least one
    assert sdt.kept(1536, 0.99) == 15 and sdt.kept(16, 0.75) == 4  # mamba-130m: 15 channels, 4 states


def test_sdt_step_changes_exactly_the_selected_entries():
    base = base_model()
    _, model = sdt_models(base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    A_log0 = [m.A_log_delta(m.A_log).detach().clone() for m in sdt.mixers(model)]
    W0 = [m.x_proj.sdt(m.x_proj.weight).detach().clone() for m in sdt.mixers(model)]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)  # each step ~lr: visible
    model.train()(torch.randint(0, 12, (4, 9)), labels=torch.tensor([0, 1, 1, 0]))[1].backward()
    opt.step()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n not in trained)
    assert all("sd_delta" in n or ".W_" in n or n.startswith("head.") for n in trained)
    for m, a0, w0 in zip(sdt.mixers(model), A_log0, W0):
        a_changed = (m.A_log_delta(m.A_log) != a0).nonzero().T
        assert sorted(map(tuple, a_changed.T.tolist())) == sorted(map(tuple, m.A_log_delta.index.T.tolist()))
        w_changed = (m.x_proj.sdt(m.x_proj.weight) != w0).nonzero().T
        assert sorted(map(tuple, w_changed.T.tolist())) == sorted(map(tuple, m.x_proj.sdt.index.T.tolist()))
        # 10 % of D = 32 channels: 3; 50 % of n = 4 states: 2; B and C rows: 2n = 8 per channel
        assert a_changed.shape[1] == 3 * 2 and w_changed.shape[1] == 8 * 3
        assert set(w_changed[0].tolist()) == set(range(m.R, m.R + 8))  # B and C rows only, never Δ's


def test_sdt_refuses_what_it_cannot_do():
    a = Adapters(method="sdt", targets="x_proj,out_proj")
    with pytest.raises(ModelError, match="leave x_proj out"):
        sdt.add_warmup(base_model(), a)
    with pytest.raises(ModelError, match="no warm-up deltas"):
        sdt.selection(base_model(), rho=0.75)
    with pytest.raises(ModelError, match="mamba.sdt"):
        add_adapters(base_model(), Adapters(method="sdt", targets="out_proj"))


BAD_SELECTIONS = [  # (what is done to the file's tensors, the error it must give)
    (lambda t: t["blocks.0.mixer.A_log_delta.index"][1].__setitem__(0, -1), "holds state -1, outside 0 to 3"),
    (lambda t: t["blocks.1.mixer.A_log_delta.index"][0].fill_(32), "holds channel 32, outside 0 to 31"),
    (lambda t: t.update({"blocks.0.mixer.A_log_delta.index": t["blocks.0.mixer.A_log_delta.index"].float()}),
     "is torch.float32 .* an SDT index is an integer tensor"),
    (lambda t: t.update({"blocks.0.mixer.A_log_delta.index": t["blocks.0.mixer.A_log_delta.index"][0].clone()}),
     r"is torch.int64 \(6,\)"),
    (lambda t: t.pop("blocks.1.mixer.x_proj.sdt.index"), r"x_proj.sdt.index for layers \[0\], the model has 2"),
    (lambda t: t["blocks.0.mixer.x_proj.sdt.index"][1].__setitem__(0, -1), "not the B and C columns"),
    (lambda t: [t.pop(k) for k in [k for k in t if k.endswith(".index")]], "without their selection"),
]


@pytest.mark.parametrize("edit, error", BAD_SELECTIONS)
def test_an_sdt_file_whose_selection_does_not_fit_is_refused_by_name(tmp_path, edit, error):
    """A -1 would wrap to the last state and score another model without a word; the others fail deep in torch."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from files.adapters import AdapterFileError, add_adapters_from_file, save_adapters
    from training.build import attach
    path = tmp_path / "sdt.safetensors"
    save_adapters(sdt_models(base_model())[1], path)
    with safe_open(path, framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    add_adapters_from_file(base_model(), path, add=attach)  # the file as written loads
    edit(tensors)
    save_file(tensors, path, metadata=meta)
    with pytest.raises(AdapterFileError, match=error) as e:
        add_adapters_from_file(base_model(), path, add=attach)
    assert str(e.value).startswith(f"adapter file {path}")


def test_an_adapter_file_of_a_mamba_with_another_d_state_is_refused(tmp_path):
    from files.adapters import AdapterFileError, add_adapters_from_file, save_adapters
    from training.build import attach
    path = tmp_path / "sdt.safetensors"
    save_adapters(sdt_models(base_model())[1], path)
    with pytest.raises(AdapterFileError, match="belongs to another base model: d_state: file 4, model 5$"):
        add_adapters_from_file(Mamba(MambaConfig(**{**CFG, "d_state": 5})), path, add=attach)
    from model import Config, Model  # a transformer has no d_state: only what it has is compared
    with pytest.raises(AdapterFileError, match="another base model: family: file 'mamba', model 'roberta'; d_model: "
                                               "file 16, model 768$"):
        add_adapters_from_file(Model(Config(n_layer=2)), path, add=attach)


def test_a_merged_export_of_mamba_is_refused_by_name(tmp_path):
    from interop.merged import export_merged
    m = add_adapters(base_model(), Adapters(method="lora", targets="in_proj,out_proj"))
    with pytest.raises(ModelError, match="transformers has none for Mamba"):
        export_merged(m, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_peft_export_of_mamba_lora_is_refused_with_what_works_instead(tmp_path):
    """It said "no Hugging Face names for the mamba family here", with no way forward."""
    from files.adapters import save_adapters
    from interop import export
    from interop.peft import PeftError, export_peft
    m = add_adapters(base_model(), Adapters(method="lora", targets="in_proj,out_proj"))
    with pytest.raises(PeftError, match="peft refuses LoRA on Mamba's out_proj .* The adapters.safetensors itself "
                                        "works: train.py --eval-only and predict.py take it$"):
        export_peft(m, tmp_path / "peft")
    save_adapters(m, tmp_path / "a.safetensors", {"task": "sst2", "model": "mamba-130m", "random_init": True})
    with pytest.raises(SystemExit, match="^error: a Mamba's LoRA has no PEFT export: transformers has no Mamba "
                                         "classifier"):
        export.main(["peft", str(tmp_path / "a.safetensors"), str(tmp_path / "peft")])  # before mamba-130m is built
    assert not (tmp_path / "peft").exists()
    from interop.peft import add_peft_adapters  # nor does a PEFT folder load into a Mamba (it was AttributeError)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    with pytest.raises(PeftError, match="loads into a transformer here, not a Mamba"):
        add_peft_adapters(base_model(), tmp_path / "in")


def test_eval_only_refuses_the_adapter_settings_it_would_ignore_and_compile_an_unknown_backend(tmp_path):
    """--sdt-rho (and --rank, --method, ... ) with --eval-only were accepted and ignored; --compile nosuch was a
    traceback after the whole SDT warm-up, leaving an empty --out."""
    from files.adapters import save_adapters
    path = tmp_path / "a.safetensors"
    save_adapters(sdt_models(base_model())[1], path, {"task": "sst2", "model": "m", "random_init": True, "seed": 1})
    for extra, error in [(["--sdt-rho", "0.9"], "--sdt-rho applies to training, not to --eval-only"),
                         (["--method", "lora", "--rank", "4", "--sdt-warmup", "9"], "--method, --rank, --sdt-warmup "
                                                                                    "apply to training"),
                         (["--seed", "2"], r"--seed would do nothing .*records its run's seed \(1\)")]:
        with pytest.raises((SystemExit, ValueError), match=error):  # ValueError: train.main's one line too
            parse_args(["--eval-only", str(path), *extra])
    save_adapters(sdt_models(base_model())[1], tmp_path / "b.safetensors", {"task": "sst2", "model": "m"})
    with pytest.raises(ValueError, match="--random-init with --eval-only: .* was trained on the checkpoint m, not"):
        parse_args(["--eval-only", str(tmp_path / "b.safetensors"), "--random-init"])  # random weights under it
    with pytest.raises(SystemExit, match="--compile 'nosuch' is not a torch.compile backend: choose one of .*inductor"):
        parse_args(["--task", "sst2", "--method", "sdt", "--compile", "nosuch", "--out", str(tmp_path / "out")])
    assert parse_args(["--task", "sst2", "--compile", "eager"]).compile == "eager"


def test_the_tokenizer_of_another_family_is_refused(tiny_mamba, tmp_path):
    """A Mamba --random-init run took a BERT tokenizer without a word, though the message asks for the same family."""
    import shutil
    from checkpoints import MINILM
    from data import DataError
    with pytest.raises(DataError, match="is a bert checkpoint's .its config.json., not a mamba model's: pass "
                                        "--tokenizer with a mamba checkpoint folder"):
        load_tokenizer(str(MINILM), family="mamba")
    shutil.copy(MINILM / "tokenizer.json", tmp_path)  # no config.json to say whose it is
    with pytest.raises(DataError, match=r"has \[PAD\] but no <\|endoftext\|>: it is not a mamba model's \(a bert one"):
        load_tokenizer(str(tmp_path), family="mamba")
    with pytest.raises(DataError, match="is a mamba checkpoint's"):
        load_tokenizer(str(tiny_mamba[0]), family="bert")
    assert load_tokenizer(str(tiny_mamba[0]), family="mamba").pad_id == 0


def copy_task(n, g):
    """Label: is the token three from the end a 3 (else a 2)? The last token must read back across positions."""
    x = torch.randint(4, 12, (n, 8), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    x[:, -3] = torch.where(y == 1, 3, 2)
    return x, y


def test_tiny_mamba_learns_a_synthetic_task_with_lora_sdt_and_ssmlora(seed, learned):
    g = torch.Generator().manual_seed(seed)
    test_x, test_y = copy_task(256, g)

    def train(model, steps):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
        model.train()
        for _ in range(steps):
            x, y = copy_task(32, g)
            loss = model(x, labels=y)[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return (model.eval()(test_x)[0].argmax(-1) == test_y).float().mean().item()

    base = base_model()
    torch.manual_seed(seed)  # the adapters' initialisation
    head_only = train(add_adapters(copy.deepcopy(base), Adapters(method="none")), 60)
    lora = train(add_adapters(copy.deepcopy(base), Adapters(method="lora", rank=4, alpha=4, dropout=0.0,
                                                            targets="in_proj,out_proj")), 60)
    ssm = train(add_adapters(copy.deepcopy(base), Adapters(method="ssmlora", rank=4, alpha=4, dropout=0.0,
                                                           targets="in_proj,out_proj")), 60)
    _, model = sdt_models(base, warmup_steps=10, train=train)
    sdt_acc = train(model, 60)
    learned.below(head_only, 0.85, "head only")  # the frozen body does not hand the head the answer: worst 0.74
    learned.at_least(lora, 0.85, "lora")  # chance 0.5; worst 1.0
    learned.at_least(ssm, 0.85, "ssmlora")  # worst 0.977
    learned.at_least(sdt_acc, 0.85, "sdt")  # worst 0.949


# ----------------------------------------------------------------------------------------------------------
# train.py, --eval-only and predict.py on a tiny Mamba checkpoint

@pytest.fixture(scope="module")
def tiny_mamba(tmp_path_factory):
    """(checkpoint folder, GLUE folder): a tiny random MambaForCausalLM with O(1) weights and a byte-level BPE
    tokenizer.json whose id 0 is <|endoftext|> (GPT-NeoX's layout: pad = eos = 0); an SST-2 whose sentiment word
    is among a row's last two words."""
    root = tmp_path_factory.mktemp("tiny-mamba")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator([" ".join(POS + NEG + FILL)] * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (root / "ckpt").mkdir()
    tok.save(str(root / "ckpt" / "tokenizer.json"))
    torch.manual_seed(0)
    ref = hf.MambaForCausalLM(hf.MambaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                             state_size=8))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.dim() == 2 and "dt_proj" not in name:
                p.normal_(0, 1.0 if "embeddings" in name else p.shape[1] ** -0.5)
    ref.save_pretrained(root / "ckpt")
    rng = random.Random(0)
    write_glue_task(root / "glue", "sst2", sentiment_rows(256, rng, late=True), sentiment_rows(64, rng, late=True))
    return root / "ckpt", root / "glue"


def argv(tiny_mamba, out, *extra):
    ckpt, glue = tiny_mamba
    return ["--task", "sst2", "--model", str(ckpt), "--data-dir", str(glue), "--out", str(out), "--batch-size", "16",
            "--lr", "1e-2", "--dropout", "0", "--length-bins", "0", "--threads", "1", *extra]


def test_the_tokenizer_is_the_checkpoints_and_pads_with_eos_id_0(tiny_mamba):
    tok = load_tokenizer(str(tiny_mamba[0]))
    assert (tok.family, tok.pad_id) == ("mamba", 0)


def test_sdt_through_train_py_eval_only_resume_and_predict(tiny_mamba, tmp_path, capsys, seed, learned):
    """Warm-up, selection, the main run from the checkpoint's weights again; the adapter file keeps the selection,
    so --eval-only and predict.py rebuild the same model from it, and --resume reuses the checkpoint's."""
    out = tmp_path / "sdt"
    flags = ["--method", "sdt", "--sdt-warmup", "16", "--epochs", "10", "--lr", "2e-2", "--seed", str(seed)]
    r = train.run(parse_args(argv(tiny_mamba, out, *flags)))
    learned.at_least(r["best"]["dev"]["accuracy"], 0.7)  # chance 0.5; worst 0.84
    # D = 64: kept(64, 0.99) = 1 channel, kept(8, 0.75) = 2 states; B and C: 16; LoRA r 8 on out_proj (64 -> 32)
    assert r["params"]["adapter"] == 2 * (1 * 2 + 16 + 8 * (64 + 32))
    assert tuple(r["adapters"]["targets"]) == ("out_proj",) and r["adapters"]["alpha"] == 8.0
    saved = load_file(out / "adapters.safetensors")
    places = {k: v for k, v in saved.items() if k.endswith(".index")}
    assert sorted(places) == [f"blocks.{i}.mixer.{m}.index" for i in (0, 1) for m in ("A_log_delta", "x_proj.sdt")]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(ck["places"][k], v) for k, v in places.items())
    again = train.run(parse_args(["--eval-only", str(out / "adapters.safetensors"), "--data-dir", str(tiny_mamba[1]),
                                  "--length-bins", "0", "--threads", "1"]))
    assert again["eval"]["dev"] == r["best"]["dev"]
    resumed = train.run(parse_args(argv(tiny_mamba, out, *flags, "--resume")))
    assert "chosen before" in capsys.readouterr().out and resumed["best"] == r["best"]
    p = predict.load(str(out / "adapters.safetensors"))  # the dev rows again, through predict.py
    dev = [line.split("\t") for line in (tiny_mamba[1] / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    got = predict.predict(p, [text for text, _ in dev])
    assert sum(g["label"] == y for g, (_, y) in zip(got, dev)) / len(dev) == r["best"]["dev"]["accuracy"]


def test_random_init_sdt_reproduces_through_eval_only_and_predict_and_max_steps_caps_its_warm_up(tiny_mamba,
                                                                                                    tmp_path, capsys):
    """The main run's random base was drawn after the warm-up had drawn numbers, so --eval-only and predict.py (which
    draw it from the seed) scored another model (0.594 trained, 0.494 evaluated); --max-steps 2 still ran 250
    warm-up steps."""
    out, bases = tmp_path / "sdt", []
    flags = ["--method", "sdt", "--random-init", "--seed", "3", "--max-steps", "6", "--eval-every", "3"]
    r = train.run(parse_args(argv(tiny_mamba, out, *flags)), on_step=lambda step, m: bases.append(
        m.embed.tok.weight.detach().clone()))
    assert "SDT warm-up: 6 optimizer steps (--max-steps 6, not --sdt-warmup 250)" in capsys.readouterr().out
    assert r["steps"] == 6
    again = train.run(parse_args(["--eval-only", str(out / "adapters.safetensors"), "--data-dir", str(tiny_mamba[1]),
                                  "--length-bins", "0", "--threads", "1"]))
    assert again["eval"]["dev"] == r["best"]["dev"]
    p = predict.load(str(out / "adapters.safetensors"))
    assert torch.equal(p.model.embed.tok.weight, bases[-1])  # the same random base, drawn from the file's seed 3
    dev = [line.split("\t") for line in (tiny_mamba[1] / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    got = predict.predict(p, [text for text, _ in dev])
    assert sum(g["label"] == y for g, (_, y) in zip(got, dev)) / len(dev) == r["best"]["dev"]["accuracy"]


def test_an_sdt_resume_reads_its_checkpoint_guarded_and_says_which_setting_differs(tiny_mamba, tmp_path):
    """A cut checkpoint.pt was [Errno 22], an empty one an EOFError traceback, one without its selection a KeyError;
    one of another method said "the SDT selection has 0 layers"."""
    out = tmp_path / "sdt"
    flags = ["--method", "sdt", "--sdt-warmup", "2", "--max-steps", "2"]
    train.run(parse_args(argv(tiny_mamba, out, *flags)))
    ckpt, whole = out / "checkpoint.pt", (out / "checkpoint.pt").read_bytes()
    ck = torch.load(ckpt, weights_only=True)
    for content, error in [(whole[:len(whole) // 2], "could not read .*checkpoint.pt .*it is corrupt: delete it"),
                           (b"", "could not read .*checkpoint.pt .*it is corrupt: delete it"),
                           ({k: v for k, v in ck.items() if k != "places"}, "its SDT selection does not fit this "
                                                                             "model .it has none.; it is corrupt"),
                           ({**ck, "run": {**ck["run"], "method": "lora"}},
                            r"belongs to a run with other settings \(--method: checkpoint 'lora', now 'sdt'")]:
        if isinstance(content, bytes):
            ckpt.write_bytes(content)
        else:
            torch.save(content, ckpt)
        with pytest.raises(train.TrainError, match=error):
            train.run(parse_args(argv(tiny_mamba, out, *flags, "--resume")))


def test_sigterm_in_the_sdt_warm_up_says_that_nothing_was_saved(tiny_mamba, tmp_path, monkeypatch):
    """It ended the process (143) with a progress line as the last word; Ctrl-C there promised --resume."""
    import os
    import signal
    calls, step = [], train.optimizer_step

    def term_at_the_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what a batch system sends
        return step(*a, **kw)
    monkeypatch.setattr(train, "optimizer_step", term_at_the_second)
    out = tmp_path / "sdt"
    with pytest.raises(SystemExit, match="^interrupted in the SDT warm-up, at step 2 of 250, before anything was "
                                         "saved: the same command starts again from the beginning .the SDT warm-up "
                                         "included.$"):
        train.main(argv(tiny_mamba, out, "--method", "sdt"))
    assert len(calls) == 2 and not out.exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # given back


def test_dry_run_counts_of_mamba_130m_equal_docs_mamba(capsys):
    """docs/mamba.md derives these by hand (and lists 370m's and 1.4b's, which take longer to build, even on the
    meta device); the SST-2 head (768 x 2) comes on top."""
    common = ["--task", "sst2", "--model", "mamba-130m", "--random-init", "--dry-run"]
    for method, want in (("lora", 1_179_648), ("ssmlora", 592_896), ("sdt", 455_328)):  # Mamba's default targets:
        assert train.run(parse_args(common + ["--method", method]))["params"]["adapter"] == want, method  # in, out
    with pytest.raises(ModelError, match="qlora is one of the transformers' Table 1 baselines"):
        train.run(parse_args(common + ["--method", "qlora"]))
    with pytest.raises(ModelError, match="SDT tunes a state space model's A_log"):
        train.run(parse_args(["--task", "sst2", "--model", "roberta-base", "--random-init", "--dry-run", "--method",
                              "sdt"]))


def test_an_unknown_random_init_preset_lists_the_mamba_presets_too():
    from tasks import get_task
    from training.build import build_model
    with pytest.raises(SystemExit, match="unknown preset 'mamba-999m' for --random-init; choose one of: roberta-base, "
                       ".*deberta-v3-large, mamba-130m, mamba-370m, mamba-790m, mamba-1.4b, mamba-2.8b, or a folder"):
        parse_args(["--task", "sst2", "--model", "mamba-999m", "--random-init"])
    with pytest.raises(ModelError, match="unknown preset 'mamba-999m' .*mamba-130m"):  # an adapter file's base
        build_model(get_task("sst2"), "mamba-999m", random_init=True, meta=True)
    with pytest.raises(ModelError, match="^mamba-130m is a --random-init preset .*state-spaces/mamba-130m-hf$"):
        build_model(get_task("sst2"), "mamba-130m")  # it was sent to the hub as a name


def test_bench_compares_none_lora_ssmlora_and_sdt_on_a_mamba_preset(tmp_path, capsys):
    import bench
    result = bench.main(["--preset", "mamba-130m", "--quick", "--lengths", "8", "--repeats", "1", "--warmup", "0",
                         "--json", str(tmp_path / "bench.json")])
    assert {r["mode"] for r in result["results"]} == {"inference", "train"}
    assert all(set(r["ms"]) == {"none", "lora", "ssmlora", "sdt"} and "sdt/lora" in r["time_ratios"]
               for r in result["results"])
    # the --quick config: d 32, D 64, 4 layers, n 16; SDT: 1 channel of 64, 4 of its 16 states; LoRA r 8 on out_proj
    assert result["params"]["sdt"]["adapter"] == 4 * (1 * 4 + 2 * 16 * 1 + 8 * (64 + 32))
    assert result["params"]["lora"]["adapter"] == 4 * 8 * (32 + 128 + 64 + 32)
