"""PEFT folders out and in, merged checkpoints, our names back to Hugging Face's: against peft and transformers."""
import json

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
import transformers as hf  # noqa: E402

from checkpoints import make as make_checkpoint  # noqa: E402
from interop.merged import export_merged  # noqa: E402
from interop.names import to_hf  # noqa: E402
from interop.peft import PeftError, add_peft_adapters, export_peft  # noqa: E402
from files.hub import from_pretrained  # noqa: E402
from model import ModelError  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from ssmlora import add_adapters  # noqa: E402

# kind, PEFT's target_modules for our default query,value, the pad id (tests/checkpoints.py's configs)
FAMILIES = {"roberta-2": (["query", "value"], 1), "bert": (["query", "value"], 0),
            "gpt2-cls": (["c_attn"], 119), "llama-cls": (["q_proj", "v_proj"], 0),
            "deberta": (["query_proj", "value_proj"], 0)}


def make(kind, folder):
    if kind != "deberta":
        return make_checkpoint(kind, folder)
    from test_deberta import make as make_deberta  # every term of the disentangled attention (vocabulary 100)
    return make_deberta("cls", folder, pos_att_type="p2c|c2p", position_buckets=8, share_att_key=True)


def batch(pad):
    """Two rows, the second right-padded: padding must change nothing on either side."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 99, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = pad, 0
    return ids, mask


def ours_logits(m, ids, mask):
    with torch.no_grad():
        return m(ids, mask)[0]


def hf_logits(m, ids, mask):
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=mask).logits


def randomise(model, names=("W_a", "W_b", "head.")):
    """LoRA's W_b and a fresh head start at zero or near it: random values, so a mis-mapped tensor shows."""
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(n.endswith(k) or n.startswith(k) for k in names):
                p.copy_(torch.randn_like(p) * 0.3)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {k: (make(k, root / k), root / k) for k in FAMILIES}


@pytest.mark.parametrize("kind,targets", [("roberta-2", "query,value"), ("bert", "query,value,ffn_out"),
                                          ("gpt2-cls", "qkv"), ("gpt2-cls", "query,value"),
                                          ("llama-cls", "query,value,ffn_gate"), ("deberta", "query,value")])
def test_export_runs_in_peft_with_our_logits(bases, tmp_path, kind, targets):
    _, folder = bases[kind]
    ours = add_adapters(from_pretrained(folder), method="lora", rank=4, alpha=8, targets=targets).eval()
    randomise(ours)
    export_peft(ours, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(folder) and config["task_type"] == "SEQ_CLS"
    theirs = peft.PeftModel.from_pretrained(hf.AutoModelForSequenceClassification.from_pretrained(folder),
                                            tmp_path / "peft").eval()
    ids, mask = batch(FAMILIES[kind][1])
    a, b = ours_logits(ours, ids, mask), hf_logits(theirs, ids, mask)
    assert (a - b).abs().max() < 1e-5 and a.abs().max() > 0.1  # and the adapters and head are not all zeros
    assert (a - ours_logits(from_pretrained(folder), ids, mask)).abs().max() > 1e-2  # they change the logits


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_peft_folder_loads_with_peft_logits(bases, tmp_path, kind):
    hf_model, folder = bases[kind]
    targets, pad = FAMILIES[kind]
    torch.manual_seed(0)
    theirs = peft.get_peft_model(hf.AutoModelForSequenceClassification.from_pretrained(folder), peft.LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=12, lora_dropout=0.1, target_modules=targets))
    with torch.no_grad():  # lora_B starts at zero: give it values, and the head too
        for n, p in theirs.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.add_(torch.randn_like(p) * 0.3)
    theirs.save_pretrained(tmp_path / "peft")
    ours = add_peft_adapters(from_pretrained(folder), tmp_path / "peft").eval()
    assert ours.adapters.rank == 4 and ours.adapters.alpha == 12 and ours.adapters.dropout == 0.1
    ids, mask = batch(pad)
    a, b = ours_logits(ours, ids, mask), hf_logits(theirs.eval(), ids, mask)
    assert (a - b).abs().max() < 1e-5 and (a - hf_logits(hf_model, ids, mask)).abs().max() > 1e-2


def test_ssmlora_and_other_settings_are_refused(bases, tmp_path):
    _, folder = bases["bert"]
    with pytest.raises(PeftError, match="SSMLoRA has no PEFT counterpart: its state h and W_c, W_d"):
        export_peft(add_adapters(from_pretrained(folder), method="ssmlora", rank=4), tmp_path / "x")
    with pytest.raises(PeftError, match="task head"):
        export_peft(add_adapters(from_pretrained(folder), method="lora", targets="query,head"), tmp_path / "x")
    theirs = peft.get_peft_model(hf.AutoModelForSequenceClassification.from_pretrained(folder),
                                 peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    theirs.save_pretrained(tmp_path / "p")
    config_path = tmp_path / "p" / "adapter_config.json"
    good = json.loads(config_path.read_text())
    for edit, message in [({"use_dora": True}, "use_dora=True .DoRA"),
                          ({"use_rslora": True}, "use_rslora=True .rsLoRA"),
                          ({"bias": "all"}, "bias='all'"), ({"rank_pattern": {"query": 8}}, "rank_pattern"),
                          ({"peft_type": "IA3"}, "PEFT IA3 adapter"), ({"task_type": "CAUSAL_LM"}, "CAUSAL_LM"),
                          ({"r": "4"}, "adapter_config.json: r is '4', not a positive integer"),
                          ({"lora_alpha": None}, "lora_alpha is None, not a number"),
                          ({"lora_dropout": 1.5}, r"lora_dropout is 1.5, not a number in \[0, 1\)")]:
        config_path.write_text(json.dumps({**good, **edit}))
        with pytest.raises(PeftError, match=message):
            add_peft_adapters(from_pretrained(folder), tmp_path / "p")
    config_path.write_text(json.dumps(good))
    (tmp_path / "p" / "adapter_model.safetensors").rename(tmp_path / "p" / "adapter_model.bin")
    with pytest.raises(PeftError, match="holds adapter_model.bin .PEFT's older pickle format.*safe_serialization"):
        add_peft_adapters(from_pretrained(folder), tmp_path / "p")
    config_path.write_text('{"peft_type": "LORA", "r": 4')
    with pytest.raises(PeftError, match=f"could not read {config_path} .JSONDecodeError: .*line 1"):
        add_peft_adapters(from_pretrained(folder), tmp_path / "p")
    # "dense" in PEFT also hits the pooler and the classifier's dense: no target of ours wraps those
    peft.get_peft_model(hf.AutoModelForSequenceClassification.from_pretrained(folder), peft.LoraConfig(
        task_type="SEQ_CLS", r=4, target_modules=["dense"])).save_pretrained(tmp_path / "d")
    with pytest.raises(PeftError, match="adapts bert.pooler.dense, which no LoRA target of ours wraps"):
        add_peft_adapters(from_pretrained(folder), tmp_path / "d")
    peft.get_peft_model(hf.AutoModelForSequenceClassification.from_pretrained(folder), peft.LoraConfig(
        task_type="SEQ_CLS", r=4, target_modules=["query"], layers_to_transform=[1])).save_pretrained(tmp_path / "l")
    with pytest.raises(PeftError, match=r"adapts \['query'\] in layers \[1\]"):
        add_peft_adapters(from_pretrained(folder), tmp_path / "l")


@pytest.mark.parametrize("kind,targets", [("roberta-2", "query,value,head"), ("gpt2-cls", "qkv,ffn_in"),
                                          ("llama-cls", "query,key,value,ffn_out"),
                                          ("deberta", "query,value,attn_out")])
def test_merged_export_loads_in_transformers(bases, tmp_path, kind, targets):
    _, folder = bases[kind]
    ours = add_adapters(from_pretrained(folder), method="lora", rank=4, targets=targets).eval()
    randomise(ours)
    ids, mask = batch(FAMILIES[kind][1])
    before = ours_logits(ours, ids, mask)
    export_merged(ours, tmp_path / "merged")
    theirs, info = hf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged",
                                                                         output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (hf_logits(theirs.eval(), ids, mask) - before).abs().max() < 1e-5
    assert torch.equal(ours_logits(ours, ids, mask), before)  # the model itself is left unmerged


def test_merged_multiple_choice_and_ssmlora_refused(tmp_path):
    make("bert-mc", tmp_path / "mc")
    ours = add_adapters(from_pretrained(tmp_path / "mc"), method="lora", rank=2).eval()
    randomise(ours)
    ids, mask = batch(0)
    theirs = hf.AutoModelForMultipleChoice.from_pretrained(export_merged(ours, tmp_path / "out")).eval()
    with torch.no_grad():
        want = theirs(input_ids=ids[None], attention_mask=mask[None]).logits  # one question, two choices
        got = ours(ids, mask, choices=torch.tensor([[0, 1]]))[0]
    assert (got - want).abs().max() < 1e-5
    with pytest.raises(ModelError, match="SSMLoRA cannot be merged"):
        export_merged(add_adapters(from_pretrained(tmp_path / "mc"), method="ssmlora"), tmp_path / "no")
    import baselines
    from ssmlora import Adapters
    for method, why in (("qlora", "4-bit NF4"), ("mixlora", "routed experts")):  # not a stray-tensor error
        with pytest.raises(ModelError, match=f"^{method} cannot be merged .*{why}"):
            model = baselines.add_adapters(from_pretrained(tmp_path / "mc"), Adapters(method, 2))
            export_merged(model, tmp_path / "no")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_names_invert_convert_state_dict(bases, kind):
    _, folder = bases[kind]
    m = from_pretrained(folder)
    original = load_file(folder / "model.safetensors")
    back = to_hf(m.state_dict(), m.cfg)
    assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in back)


def test_commands_export_merge_and_predict_from_the_peft_folder(tmp_path, capsys):
    """train.py's adapter file -> python -m interop.export peft / merge; predict.py reads the PEFT folder (the task
    from the file exported beside it) with the adapter file's probabilities, and transformers the merged one."""
    import predict
    from checkpoints import tiny_bert
    from files.adapters import save_adapters
    from interop.export import main
    base = tiny_bert(tmp_path / "base", dropout=0.0)
    ours = add_adapters(from_pretrained(base, num_labels=2), method="lora", rank=2)
    randomise(ours)
    save_adapters(ours, tmp_path / "adapters.safetensors", {"task": "sst2", "model": str(base), "tokenizer": None,
                                                            "max_len": 48, "data_dir": str(tmp_path / "glue")})
    main(["peft", str(tmp_path / "adapters.safetensors"), str(tmp_path / "peft")])
    main(["merge", str(tmp_path / "adapters.safetensors"), str(tmp_path / "merged")])
    assert capsys.readouterr().out.count("written to") == 2
    texts = ["a gripping, funny film", "dull and far too long, with nothing in it"]
    want = predict.predict(predict.load(str(tmp_path / "adapters.safetensors"), device="cpu"), texts)
    got = predict.predict(predict.load(str(tmp_path / "peft"), device="cpu"), texts)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["probability"] for g in got] == pytest.approx([w["probability"] for w in want], abs=1e-6)
    tok = hf.AutoTokenizer.from_pretrained(tmp_path / "merged")  # the tokenizer files came along
    merged = hf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        probs = merged(**tok(texts, padding=True, return_tensors="pt")).logits.softmax(-1).max(-1).values
    assert probs.tolist() == pytest.approx([w["probability"] for w in want], abs=1e-5)
    # train.py --eval-only: the PEFT folder evaluates as the adapter file does; without our run file, --task
    import random
    import train
    from glue_fixtures import write_glue_task
    from reproduce.synthetic import sentiment_rows
    from training.flags import parse
    rng = random.Random(0)
    write_glue_task(tmp_path / "glue", "sst2", sentiment_rows(8, rng), sentiment_rows(24, rng))
    # the run's data folder and input length come along (README: train.py --eval-only out/sst2-peft, offline)
    args = [parse(["--eval-only", str(tmp_path / f)]) for f in ("adapters.safetensors", "peft")]
    assert [(a.data_dir, a.max_len) for a in args] == [(str(tmp_path / "glue"), 48)] * 2
    metrics = [train.run(a)["eval"] for a in args]
    (tmp_path / "peft" / "ssmlora_run.json").unlink()
    metrics.append(train.run(parse(["--eval-only", str(tmp_path / "peft"), "--task", "sst2",
                                    "--data-dir", str(tmp_path / "glue")]))["eval"])
    assert metrics[0] == metrics[1] == metrics[2] and 0 < metrics[0]["dev"]["accuracy"] < 1
    with pytest.raises(SystemExit, match="^error: .*no PEFT counterpart"):
        ssm = add_adapters(from_pretrained(base, num_labels=2), method="ssmlora", rank=2)
        save_adapters(ssm, tmp_path / "ssm.safetensors", {"task": "sst2", "model": str(base)})
        main(["peft", str(tmp_path / "ssm.safetensors"), str(tmp_path / "no")])


@pytest.mark.parametrize("field, value, what", [("data_dir", 5, "a text"), ("max_len", "64", "a positive integer"),
                                               ("model_is_folder", "yes", "true or false")])
def test_peft_run_file_with_a_field_of_the_wrong_type_is_one_error_line(tmp_path, field, value, what):
    import train
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "base_model_name_or_path": "b"}')
    (tmp_path / "ssmlora_run.json").write_text(json.dumps({"task": "sst2", field: value}))
    with pytest.raises(SystemExit) as e:
        train.main(["--eval-only", str(tmp_path)])
    assert e.value.code == f"error: {tmp_path / 'ssmlora_run.json'}: {field} is {value!r}, not {what}; export the " \
        "folder again, or remove the file and pass --task"


def test_peft_folder_without_the_head_its_base_lacks_is_refused(tmp_path):
    from safetensors.torch import save_file
    make("llama-lm", tmp_path / "base")  # a causal LM: no classification head, so the PEFT folder must bring it
    export_peft(add_adapters(from_pretrained(tmp_path / "base", num_labels=2), method="lora", rank=2), tmp_path / "p")
    weights = load_file(tmp_path / "p" / "adapter_model.safetensors")
    save_file({k: t for k, t in weights.items() if "lora_" in k}, tmp_path / "p" / "adapter_model.safetensors")
    with pytest.raises(PeftError, match=r"has no trained task head \(head.score.weight is not in its modules_to_save"):
        add_peft_adapters(from_pretrained(tmp_path / "base", num_labels=2), tmp_path / "p")


def lora_file(tmp_path, run):
    """A LoRA adapter file of a tiny BERT at tmp_path/run/adapters.safetensors, its base at tmp_path/base."""
    from checkpoints import tiny_bert
    from files.adapters import save_adapters
    base = tiny_bert(tmp_path / "base", dropout=0.0)
    ours = add_adapters(from_pretrained(base, num_labels=2), method="lora", rank=2)
    randomise(ours)
    path = tmp_path / "run" / "adapters.safetensors"
    save_adapters(ours, path, {"task": "sst2", "model": str(base), **run})
    return base, path


def snapshot(folder):
    return {f.name: (f.read_bytes(), f.stat().st_mode) for f in sorted(folder.iterdir())}


def test_export_never_writes_into_its_sources_or_over_an_earlier_export(tmp_path, monkeypatch):
    """The merge that overwrote its own base (issue 29): the sources and an earlier export are refused, untouched; a
    failed export leaves nothing; the weights files get the umask's mode like the others, not safetensors' 0600."""
    import os
    from interop import merged
    from interop.export import main
    base, path = lora_file(tmp_path, {})
    before = {"base": snapshot(base), "run": snapshot(path.parent)}
    for cmd, out, what in [("merge", base, "the base checkpoint folder"), ("peft", base, "the base checkpoint folder"),
                           ("merge", path.parent, "the adapter file's folder"),
                           ("merge", base / "config.json", "a file, not a folder")]:
        with pytest.raises(SystemExit, match=f"^error: {out} is {what}"):
            main([cmd, str(path), str(out)])
    main(["merge", str(path), str(tmp_path / "tok"), "--tokenizer", str(base)])  # the tokenizer folder is the base's
    assert before == {"base": snapshot(base), "run": snapshot(path.parent)}
    main(["peft", str(path), str(tmp_path / "peft")])
    first = snapshot(tmp_path / "peft")
    for cmd in ("peft", "merge"):
        with pytest.raises(SystemExit, match="peft already holds files .an earlier export.*pass a new folder"):
            main([cmd, str(path), str(tmp_path / "peft")])
    assert snapshot(tmp_path / "peft") == first
    umask = os.umask(0)
    os.umask(umask)
    modes = {f: m & 0o777 for d in ("peft", "tok") for f, (_, m) in snapshot(tmp_path / d).items()}
    assert set(modes.values()) == {0o666 & ~umask} and "model.safetensors" in modes
    assert "adapter_model.safetensors" in modes
    monkeypatch.setattr(merged, "to_hf", lambda *a: {"x": torch.zeros(1)})
    monkeypatch.setattr(merged.shutil, "copy", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(SystemExit, match="^error: disk full$"):
        main(["merge", str(path), str(tmp_path / "half")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "peft", "run", "tok"]  # no half folder, no tmp


def test_export_of_a_file_without_base_or_task_asks_for_the_flag(tmp_path):
    """save_adapters from Python may store no model (KeyError: 'model' before) or no task: as predict.py, ask."""
    from files.adapters import save_adapters
    from interop.export import main
    base, path = lora_file(tmp_path, {})
    ours = add_adapters(from_pretrained(base, num_labels=2), method="lora", rank=2)
    save_adapters(ours, tmp_path / "bare.safetensors", {"task": "sst2"})
    with pytest.raises(SystemExit, match="bare.safetensors does not name its base model: pass --model$"):
        main(["peft", str(tmp_path / "bare.safetensors"), str(tmp_path / "p")])
    save_adapters(ours, tmp_path / "none.safetensors")
    with pytest.raises(SystemExit, match="none.safetensors does not say which task it was trained on: pass --task$"):
        main(["peft", str(tmp_path / "none.safetensors"), str(tmp_path / "p")])
    save_adapters(ours, tmp_path / "list.safetensors", ["sst2"])
    with pytest.raises(SystemExit, match="list.safetensors: its run settings are a JSON list, not an object$"):
        main(["peft", str(tmp_path / "list.safetensors"), str(tmp_path / "p")])
    main(["peft", str(tmp_path / "none.safetensors"), str(tmp_path / "p"), "--model", str(base), "--task", "sst2"])
    assert json.loads((tmp_path / "p" / "ssmlora_run.json").read_text())["model"] == str(base)
    from interop.peft import read_peft_run
    (tmp_path / "p" / "ssmlora_run.json").write_text('{"task": "sst2", "mod')
    with pytest.raises(PeftError, match=r"p/ssmlora_run.json is not valid JSON \(Unterminated string.*line 1"):
        read_peft_run(tmp_path / "p")


def test_export_input_mistakes_are_one_line_and_deberta_keeps_its_spm_model(tmp_path):
    """A folder given as the adapter file ("No such device"), an OUT under a file ("File exists"), a --tokenizer
    with no tokenizer in it (the export went through without one); DeBERTa's spm.model was not copied."""
    from interop.export import main
    base, path = lora_file(tmp_path, {})
    for argv, message in [(["peft", str(base), str(tmp_path / "a")], f"{base} is a folder, neither an adapter file"),
                          (["merge", str(path), str(path / "x")], f"{path / 'x'} cannot be made: {path} is a file"),
                          (["merge", str(path), str(tmp_path / "b"), "--tokenizer", str(tmp_path / "run")],
                           f"--tokenizer {tmp_path / 'run'} holds no tokenizer files")]:
        with pytest.raises(SystemExit, match=f"^error: {message}"):
            main(argv)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    main(["peft", str(path), str(tmp_path / "p")])
    with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'p'} is a PEFT folder, exported already"):
        main(["merge", str(tmp_path / "p"), str(tmp_path / "m")])
    tok = tmp_path / "deberta-tok"
    tok.mkdir()
    (tok / "spm.model").write_bytes(b"pieces")
    main(["merge", str(path), str(tmp_path / "c"), "--tokenizer", str(tok)])
    assert (tmp_path / "c" / "spm.model").read_bytes() == b"pieces"
