"""train.py end to end on GLUE-format files the tests write: learning, regression, the real MiniLM, exact resume,
dry-run reports, clear one-line errors."""
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as hf
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import checkpoints
import train
from training.cli import UserError
from training.flags import parse as parse_args
from checkpoints import MINILM
from data import batches
from files.tokenizer import load_tokenizer
from tasks import get_task
from tasks.glue import load_glue
from glue_fixtures import write_glue_task
from reproduce.synthetic import FILL, NEG, POS, sentiment_rows



@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    rng = random.Random(0)
    write_glue_task(root, "sst2", sentiment_rows(256, rng), sentiment_rows(64, rng))
    write_glue_task(root, "stsb", sentiment_rows(256, rng, True), sentiment_rows(64, rng, True))
    return root


@pytest.fixture(scope="module")
def late_glue(tmp_path_factory):
    """SST-2 whose sentiment word is one of a row's last two: what a tiny random decoder read at its last token
    learns with a wide margin (a word anywhere gave 0.53-0.77 over seeds and CPU kernels, a knife edge)."""
    root = tmp_path_factory.mktemp("late-glue")
    rng = random.Random(0)
    write_glue_task(root, "sst2", sentiment_rows(256, rng, late=True), sentiment_rows(64, rng, late=True))
    return root


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return checkpoints.tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def decoder_checkpoint(folder, family, own_pad=False):
    """A tiny random decoder saved as the hub's base checkpoints are (an LM head, no classifier), with a BPE
    tokenizer trained on the synthetic sentences' words. GPT-2: byte-level, vocab.json + merges.txt, no pad token
    (own_pad: a tokenizer.json that declares its own <pad>); LLaMA: SentencePiece-style, tokenizer.json, <s> first."""
    words = [" ".join(POS + NEG + FILL)] * 3
    if family == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        specials = ["<|endoftext|>"] + ["<pad>"] * own_pad
        tok.train_from_iterator(words, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        if own_pad:
            tok.save(str(folder / "tokenizer.json"))
            (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
        else:
            tok.model.save(str(folder))
        eos = tok.token_to_id("<|endoftext|>")
        config = hf.GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                               bos_token_id=eos, eos_token_id=eos)
        model = hf.GPT2LMHeadModel
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.train_from_iterator(words, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
        tok.save(str(folder / "tokenizer.json"))
        config = hf.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
        model = hf.LlamaForCausalLM
    torch.manual_seed(0)
    model = model(config)
    with torch.no_grad():  # O(1) activations, as a trained model has: with the default init's 0.02 the attention
        for name, p in model.named_parameters():  # moved next to nothing, so only the last token reached the head
            if p.dim() == 2:
                fan_in = p.shape[0] if family == "gpt2" and "wte" not in name and "wpe" not in name else p.shape[1]
                p.normal_(0, 0.1 if "wpe" in name else 1.0 if "wte" in name or "embed" in name else fan_in ** -0.5)
    model.save_pretrained(folder)
    return tok


def argv(task, model, glue, out, *extra):
    return ["--task", task, "--model", str(model), "--data-dir", str(glue), "--out", str(out), "--batch-size", "16",
            *extra]


@pytest.mark.parametrize("method", ["ssmlora", "lora"])
def test_frozen_random_model_learns_with_adapters(method, tiny_bert, glue, tmp_path, seed, learned):
    out = tmp_path / method
    # 40 epochs, no early stop: on a random body SSMLoRA can sit at chance for several epochs before it takes off
    # (one seed of 5 was still at 0.53 when 20 epochs with --patience 5 stopped it)
    r = train.run(parse_args(argv("sst2", tiny_bert, glue, out, "--method", method, "--epochs", "40", "--patience", "0",
                                      "--lr", "1e-2", "--dropout", "0", "--seed", str(seed))))
    learned.at_least(r["best"]["dev"]["accuracy"], 0.7)  # chance 0.5; worst 0.84 (SSMLoRA), 0.95 (LoRA)
    # LoRA: query and value in all 4 layers; SSMLoRA: one of them per layer, plus W_c and W_d (2 r^2) each
    assert r["params"]["adapter"] == (8 * (32 * 8 + 8 * 32) if method == "lora" else 4 * (32 * 8 + 8 * 32 + 2 * 8 * 8))
    lines = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, len(lines) + 1)) and len(lines) == r["final"]["epoch"]
    assert [b["n"] for b in lines[0]["by_length"]["dev"]] == [64, 0, 0, 0, 0, 0]    # every task, by input length
    assert r["by_length"]["dev"][0]["accuracy"] == r["best"]["dev"]["accuracy"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["best"] == r["best"] and saved["task"] == "sst2" and saved["peak_memory_bytes"] > 0
    assert len(load_file(out / "adapters.safetensors")) > 0


@pytest.mark.parametrize("family, own_pad, flags", [
    ("gpt2", False, ["--method", "ssmlora", "--targets", "qkv"]),            # the paper's GPT-2 SSMLoRA
    ("gpt2", True, ["--method", "lora", "--targets", "qkv,head"]),           # the paper's GPT-2 LoRA
    ("llama", False, ["--method", "ssmlora", "--targets", "query,value,attn_out,ffn_gate,ffn_in,ffn_out,head"]),
])
def test_decoder_checkpoints_fine_tune_end_to_end(family, own_pad, flags, late_glue, tmp_path, seed, learned):
    """GPT-2 (padded with <|endoftext|>, or with the tokenizer's own pad token when it declares one) and LLaMA (with
    </s>), pooled at the last real token, adapted as the paper's Tables 7 and 9, learn the synthetic SST-2."""
    glue = late_glue
    (tmp_path / "ckpt").mkdir()
    tok = decoder_checkpoint(tmp_path / "ckpt", family, own_pad)
    pad = {"gpt2": "<pad>" if own_pad else "<|endoftext|>", "llama": "</s>"}[family]
    ours = load_tokenizer(str(tmp_path / "ckpt"), family)
    assert ours.pad_id == tok.token_to_id(pad)
    batch = next(batches(ours.encode(load_glue(get_task("sst2"), glue)["dev"][:8], 64), 8))
    padded = batch["attention_mask"] == 0
    assert bool(padded.any()) and bool((batch["input_ids"][padded] == ours.pad_id).all())
    r = train.run(parse_args(argv("sst2", tmp_path / "ckpt", glue, tmp_path / "out", *flags, "--epochs", "10",
                                      "--lr", "1e-2", "--dropout", "0", "--seed", str(seed))))
    learned.at_least(r["best"]["dev"]["accuracy"], 0.7)  # chance 0.5; worst 0.875, 0.953, 0.969


def test_state_clipping_keeps_the_step_after_the_spike(glue, tmp_path, capsys, seed, learned):
    """python -m reproduce.spike on the real MiniLM: train.py runs once per clipping mode and --trace-gradients records
    each step. Step 1 moves W_b off zero (W_d stays 0), so step 2 is W_d's gradient spike. With one global norm that
    step's W_a update is ~100x smaller than the next one's; clipping W_c, W_d on their own first keeps it whole.
    (W_a is the one to watch: its gradient is zero on step 1, so AdamW has no earlier momentum to carry it.)"""
    from reproduce import spike
    spike.main(["--model", str(MINILM), "--data-dir", str(glue), "--max-train", "48", "--epochs", "1",
                "--out", str(tmp_path), "--json", str(tmp_path / "s.json"), "--warmup", "0", "--weight-decay", "0",
                "--threads", "1", "--seed", str(seed)])
    logs = json.loads((tmp_path / "s.json").read_text())
    assert set(logs) == {"global", "state"} and "W_d update norm at step" in capsys.readouterr().out
    for log in logs.values():
        assert len(log["loss"]) == len(log["update"]) == 3 and len(log["dev"]) == 1
        assert log["update"][0]["W_d"] == 0 and log["update"][1]["W_d"] > 0
    moves = {m: [u["W_a"] for u in log["update"]] for m, log in logs.items()}
    assert moves["global"][0] == moves["state"][0] == 0  # step 1: W_b = 0, so W_a has no gradient yet
    # step 2, the spike: measured 0.033 with state clipping (step 3: 0.013) and 0.00014 with one global norm
    # worst 2.18 and 0.0051
    learned.at_least(moves["state"][1] / moves["state"][2], 0.5, "W_a update at the spike / next, state clipping")
    learned.below(moves["global"][1] / moves["state"][1], 0.05, "W_a update at the spike, global / state")


@pytest.mark.parametrize("flags, message", [
    (["--json", "{tmp}"], "--json {tmp} is a folder: pass a file name (see python -m reproduce.spike --help)"),
    (["--json", "{tmp}/mine"], "--json {tmp}/mine already exists: choose another file"),
    (["--out", "{tmp}"], "--out {tmp} already holds files: choose another folder"),
    (["--max-train", "0"], "--max-train, --epochs and --max-len must be at least 1, --lr above 0"),
    (["--modes", "state,state"], "--modes: global, state or both, each once, got 'state,state'"),
    (["--task", "rte"], "the synthetic data is SST-2's: --task rte needs --data-dir"),
    (["--clip-mode", "global"], "--clip-mode: this command sets it for each run itself"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0 (see python train.py --help)"),  # train.py's
])
def test_spike_checks_flags_and_destinations_before_the_runs(flags, message, tmp_path):
    from reproduce import spike
    (tmp_path / "mine").write_text("mine")
    with pytest.raises(SystemExit) as e:
        spike.main(["--model", "m", *(f.format(tmp=tmp_path) for f in flags)])
    assert e.value.code.startswith(f"error: {message.format(tmp=tmp_path)}") and "\n" not in e.value.code
    assert [f.name for f in tmp_path.iterdir()] == ["mine"] and (tmp_path / "mine").read_text() == "mine"


def test_a_failed_spike_run_ends_with_its_error(tmp_path, monkeypatch, capsys):
    from reproduce import spike
    fails = [sys.executable, "-c", "import sys; print('loading', file=sys.stderr); sys.exit('error: no data there')"]
    monkeypatch.setattr(spike, "command", lambda *a: fails)  # what train.py does when it fails: its error, last
    with pytest.raises(SystemExit) as e:
        spike.run("global", None, None, tmp_path, [])
    assert e.value.code == "error: the global run failed: no data there"
    assert capsys.readouterr().err == "loading\nerror: no data there\n"  # what the run said, shown as it came


def test_regression_task_learns(tiny_bert, glue, tmp_path, seed, learned):
    r = train.run(parse_args(argv("stsb", tiny_bert, glue, tmp_path, "--epochs", "20", "--lr", "1e-2",
                                      "--dropout", "0", "--seed", str(seed))))
    learned.at_least(r["best"]["dev"]["pearson"], 0.7, "pearson")  # worst 0.83


def test_real_pretrained_minilm_learns_sentiment_quickly(glue, tmp_path, seed, learned):
    r = train.run(parse_args(argv("sst2", MINILM, glue, tmp_path, "--epochs", "2", "--lr", "1e-3",
                                      "--max-train", "128", "--seed", str(seed))))
    assert r["steps"] == 16
    learned.at_least(r["best"]["dev"]["accuracy"], 0.9)  # 16 steps of SSMLoRA on a real checkpoint: worst 1.0


def test_killed_run_resumes_exactly(tiny_bert, glue, tmp_path):
    flags = ("--epochs", "3", "--lr", "5e-3", "--save-every", "5", "--max-train", "160")  # 10 steps an epoch
    whole = train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path / "a", *flags)))

    def kill(step, model):
        if step == 17:  # mid-epoch 2, after epoch 1's evaluation; the last checkpoint is at step 15
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path / "b", *flags)), on_step=kill)
    with pytest.raises(train.TrainError, match="pass --resume"):  # never silently starts over on top of a run
        train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path / "b", *flags)))
    with pytest.raises(train.TrainError, match="--lr: checkpoint 0.005, now 0.001"):
        train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path / "b", *flags, "--resume", "--lr", "1e-3")))
    resumed = train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path / "b", *flags, "--resume")))

    for r in (whole, resumed):
        for line in (r["final"], r["best"]):
            line.pop("epoch_seconds", None)
    assert resumed["final"] == whole["final"] and resumed["best"] == whole["best"] and resumed["steps"] == 30
    logs = [[json.loads(line) for line in (tmp_path / x / "eval.jsonl").read_text().splitlines()] for x in "ab"]
    for line in logs[0] + logs[1]:
        del line["epoch_seconds"]  # wall-clock time: the one thing a resumed run cannot repeat
    assert logs[0] == logs[1]
    a, b = load_file(tmp_path / "a" / "adapters.safetensors"), load_file(tmp_path / "b" / "adapters.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (torch.load(tmp_path / x / "checkpoint.pt", weights_only=True) for x in "ab")
    assert all(torch.equal(ca["trained"][k], cb["trained"][k]) for k in ca["trained"])


def test_ctrl_c_saves_the_step_it_stopped_after_and_no_earlier_run_is_overwritten(tiny_bert, glue, tmp_path):
    """Ctrl-C at step 7 of 20, with the default --save-every 500 (nothing saved yet): the step ends, is saved, and
    --resume ends where an uninterrupted run does. A finished run whose checkpoint.pt was deleted is not written
    over, with or without --resume."""
    import os
    import signal
    flags = ("--epochs", "2", "--lr", "5e-3", "--max-train", "160")  # 10 steps an epoch
    whole = train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path / "a", *flags)))

    def ctrl_c(step, model):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
    with pytest.raises(SystemExit, match="interrupted after step 7, saved in .*checkpoint.pt: continue with the "
                                         "same command plus --resume"):
        train.main(argv("sst2", tiny_bert, glue, tmp_path / "b", *flags), on_step=ctrl_c)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["progress"]["step"] == 7
    resumed = train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path / "b", *flags, "--resume")))
    assert resumed["final"]["dev"] == whole["final"]["dev"] and resumed["steps"] == 20
    (tmp_path / "a" / "checkpoint.pt").unlink()
    before = {f.name: f.read_bytes() for f in (tmp_path / "a").iterdir()}
    for extra in ((), ("--resume",)):
        with pytest.raises(train.TrainError, match="holds an earlier run .*no checkpoint.pt to resume from"):
            train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path / "a", *flags, "--lr", "1e-3", *extra)))
    assert {f.name: f.read_bytes() for f in (tmp_path / "a").iterdir()} == before


def test_the_adapter_file_keeps_where_the_base_was_and_the_length_used(tiny_bert, glue, tmp_path, monkeypatch):
    """Trained with --model given relative and --max-len above the model's 64 positions: the file records the
    folder's absolute path and 64, results.json the 64 and SSMLoRA's sparse=True; --eval-only from another folder
    finds the base and scores with the length the run used."""
    monkeypatch.chdir(tiny_bert.parent)
    r = train.run(parse_args(argv("sst2", tiny_bert.name, glue, tmp_path, "--epochs", "1", "--max-len", "1000")))
    assert r["max_len"] == 64 and r["args"]["max_len"] == 1000 and r["adapters"]["sparse"] is True
    labels = [line.split("\t")[1] for line in (glue / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    majority = max(labels.count("0"), labels.count("1")) / len(labels)  # what predicting one class scores
    assert r["learned_nothing"] == {"majority_accuracy": pytest.approx(majority)}
    from files.adapters import read_run
    run = read_run(tmp_path / "adapters.safetensors")
    assert run["model"] == str(tiny_bert.resolve()) and run["max_len"] == 64
    monkeypatch.chdir(tmp_path)
    again = train.run(parse_args(["--eval-only", str(tmp_path / "adapters.safetensors")]))  # the run's data folder
    assert again["eval"]["dev"] == r["best"]["dev"]
    assert again["by_length"]["dev"] == r["by_length"]["dev"]
    off = train.run(parse_args(["--task", "sst2", "--model", str(tiny_bert), "--data-dir", str(glue), "--length-bins",
                                "0", "--eval-only", str(tmp_path / "adapters.safetensors")]))
    assert off["eval"] == again["eval"] and off["by_length"] is None


def test_eval_only_reproduces_the_best_evaluation(tiny_bert, glue, tmp_path, capsys):
    r = train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path, "--epochs", "2", "--lr", "5e-3", "--max-eval",
                                  "1000")))
    assert r["max_eval"] is None and json.loads((tmp_path / "results.json").read_text())["max_eval"] is None
    assert "dev: all 64 examples are evaluated (--max-eval 1,000 is more)" in capsys.readouterr().out  # no cap
    again = train.run(parse_args(["--task", "sst2", "--model", str(tiny_bert), "--data-dir", str(glue),
                                  "--batch-size", "16", "--eval-only", str(tmp_path / "adapters.safetensors")]))
    assert again["eval"]["dev"] == r["best"]["dev"]
    for flags, refused in ((["--compile"], "--compile applies"), (["--doc-stride", "64"], "--doc-stride applies to "
                           "the QA tasks (squad, narrativeqa) only, not sst2"),
                           (["--out", "o", "--rank", "4", "--resume"], "--rank, --out, --resume apply")):
        with pytest.raises(SystemExit) as e:  # what --eval-only would not use
            train.main(["--eval-only", str(tmp_path / "adapters.safetensors"), *flags])
        assert str(e.value.code).startswith(f"error: {refused}") and "\n" not in e.value.code
    assert e.value.code == ("error: --rank, --out, --resume apply to training, not to --eval-only, which evaluates "
                            "the file's adapters as trained and writes nothing (see python train.py --help)")


def test_a_trace_is_never_written_over_and_a_resumed_run_continues_its_own(tiny_bert, glue, tmp_path):
    """--trace-gradients refuses a file that exists (two runs in one trace would mix their steps), unless the run
    resumes from its checkpoint: then the lines after the checkpoint's step are cut and done again, exactly."""
    from training.trace import read_trace
    trace = tmp_path / "trace.jsonl"
    flags = ("--max-train", "64", "--epochs", "1", "--save-every", "2", "--trace-gradients", str(trace))

    def kill(step, model):
        if step == 3:  # after step 3's trace line; the checkpoint is step 2's
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path / "run", *flags)), on_step=kill)
    killed = read_trace(trace)
    assert [x["step"] for x in killed] == [1, 2, 3]
    for out in ("run", "other"):  # without --resume: refused, whatever --out
        with pytest.raises(SystemExit) as e:
            train.main(argv("sst2", tiny_bert, glue, tmp_path / out, *flags))
        assert e.value.code == (f"error: --trace-gradients {trace} already exists: choose another file, or move it "
                                "away (nothing was overwritten) (see python train.py --help)")
    assert read_trace(trace) == killed
    train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path / "run", *flags, "--resume")))
    resumed = read_trace(trace)
    assert [x["step"] for x in resumed] == [1, 2, 3, 4] and resumed[:3] == killed  # step 3 again, the same


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_bert, glue, tmp_path):
    def poison(step, model):
        if step == 4:  # after step 4's checkpoint: the next forward pass gives a NaN loss
            with torch.no_grad():
                model.head.classifier.weight.fill_(float("nan"))
    with pytest.raises(train.TrainError, match="non-finite loss .* at step 5.*checkpoint.pt"):
        train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path, "--epochs", "1", "--save-every", "2")),
                  on_step=poison)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["progress"]["step"] == 4 and all(torch.isfinite(t).all() for t in ck["trained"].values())


def test_dry_run_of_llama2_7b_table_9(capsys):
    r = train.run(parse_args(["--task", "sst2", "--model", "llama2-7b", "--random-init", "--dry-run", "--targets",
                                  "query,value,attn_out,ffn_gate,ffn_in,ffn_out,head"]))
    assert r["params"]["adapter"] == 15_847_568 and "15,847,568" in capsys.readouterr().out  # Table 9: 15.8M


def test_dry_run_parameter_report_without_network(capsys):
    # the counts themselves are checked against the paper's tables in test_ssmlora.py; this is the command's path
    r = train.run(parse_args(["--task", "sst2", "--model", "roberta-large", "--random-init", "--dry-run"]))
    assert r["params"]["adapter"] == 396_288 and r["params"]["head"] == 1024 * 1024 + 1024 + 1024 * 2 + 2  # Table 6
    assert "396,288" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--task", "sst3"], "Unknown task 'sst3'. Valid names: GLUE: cola sst2"),
    (["--task", "sst2", "--method", "dora", "--dry-run", "--random-init"], "invalid choice: 'dora'"),
    (["--task", "sst2", "--rank", "0", "--dry-run", "--random-init"], "rank must be an integer >= 1"),
    (["--task", "sst2", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--task", "sst2", "--rank", "eight"], "argument --rank: invalid int value"),
    (["--task", "sst2", "--clip-mode", "tensor"], "argument --clip-mode: invalid choice: 'tensor'"),
])
def test_bad_input_is_one_line_error(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(flags)
    text = str(e.value.code)
    assert message in text and "\n" not in text and e.value.code != 0


def test_tokenizer_without_a_pad_token_names_the_flag(glue, tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    decoder_checkpoint(tmp_path / "ckpt", "gpt2")
    (tmp_path / "tok").mkdir()
    vocab = json.loads((tmp_path / "ckpt" / "vocab.json").read_text())
    (tmp_path / "tok" / "vocab.json").write_text(json.dumps({k: v for k, v in vocab.items() if k != "<|endoftext|>"}))
    shutil.copy(tmp_path / "ckpt" / "merges.txt", tmp_path / "tok")
    with pytest.raises(SystemExit) as e:
        train.main(argv("sst2", tmp_path / "ckpt", glue, tmp_path / "out", "--tokenizer", str(tmp_path / "tok")))
    text = str(e.value.code)
    assert "Cannot tell the padding token" in text and "--tokenizer" in text and "\n" not in text


def test_missing_data_folder_from_the_command_line(tiny_bert, tmp_path):
    p = subprocess.run([sys.executable, "train.py", "--task", "rte", "--model", str(tiny_bert),
                        "--data-dir", str(tmp_path / "no-such-glue"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=120)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no-such-glue" in last


# ----------------------------------------------------------------------------------------------------------
# what a user meets: logs without a terminal, using the trained adapters, empty files, flags

ROOT = Path(__file__).parent.parent


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "train.py", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_logs_progress_without_a_terminal_and_eval_lines_carry_loss_and_time(tiny_bert, glue, tmp_path):
    p = cli(*argv("sst2", tiny_bert, glue, tmp_path, "--epochs", "2", "--max-train", "64", "--log-every", "3",
                  "--threads", "1"))
    assert p.returncode == 0, p.stderr
    steps = [line for line in p.stdout.splitlines() if line.startswith("step ")]
    # 4 steps an epoch, 8 in all: a line at steps 3 and 6 and at the last step, each with its numbers
    assert [s.split()[1] for s in steps] == ["3/8", "6/8", "8/8"]
    assert all(" epoch " in s and " loss " in s and " lr " in s and " examples/s elapsed 0:00:" in s for s in steps)
    assert steps[-1].endswith("left 0:00:00")  # the time left at this pace: none after the last step
    evals = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert [e["epoch"] for e in evals] == [1, 2]
    assert all(e["train_loss"] > 0 and e["epoch_seconds"] > 0 for e in evals)


def test_eval_only_and_predict_need_only_the_adapter_file(tiny_bert, glue, tmp_path):
    import predict
    r = train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path / "run", "--epochs", "2", "--lr", "5e-3")))
    adapters = tmp_path / "run" / "adapters.safetensors"
    # --eval-only: the task, base model and tokenizer come from the file
    again = train.run(parse_args(["--eval-only", str(adapters), "--data-dir", str(glue)]))
    assert again["eval"]["dev"] == r["best"]["dev"]
    with pytest.raises(UserError, match="trained on sst2, not rte"):
        parse_args(["--eval-only", str(adapters), "--task", "rte"])
    with pytest.raises(UserError, match=r"trained on sst2, not rte: use it on sst2 \(leave --task out\)$"):
        predict.load(adapters, task="rte")  # its head would answer RTE's labels, silently
    # predict(): the same predictions as the evaluation, so the same accuracy on the dev texts
    dev = [line.split("\t") for line in (glue / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    p = predict.load(adapters)
    out = predict.predict(p, [text for text, _ in dev])
    assert sum(o["label"] == label for o, (_, label) in zip(out, dev)) / len(dev) == r["best"]["dev"]["accuracy"]
    assert all(0.5 <= o["probability"] <= 1 for o in out)
    shown = subprocess.run([sys.executable, "predict.py", str(adapters), dev[0][0], "--device", "cpu", dev[1][0]],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)  # texts on both sides of a flag
    printed = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [o["label"] for o in printed] == [o["label"] for o in out[:2]]
    assert [o["probability"] for o in printed] == pytest.approx([o["probability"] for o in out[:2]], rel=1e-5)


def test_predict_refuses_wrong_input_in_one_line(tiny_bert, glue, tmp_path, monkeypatch, capsys):
    """A pair adapter given single texts, an empty text, a file that is not UTF-8, an adapter file whose settings
    are cut off: each one `error:` line. Standard input works, and each output line says which input it answers."""
    import io

    import predict
    from safetensors import safe_open
    from safetensors.torch import save_file
    write_glue_task(tmp_path / "glue", "rte", [("a b", "c d", 0), ("e f", "g h", 1)] * 8, [("a b", "c d", 0)] * 2)
    train.run(parse_args(argv("rte", tiny_bert, tmp_path / "glue", tmp_path / "rte", "--max-steps", "1")))
    adapters = str(tmp_path / "rte" / "adapters.safetensors")

    def error(*extra, stdin=None):  # predict.py's main in-process: (exit code, stdout, the error line)
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        try:
            predict.main([adapters, *extra])
            code, err = 0, ""
        except SystemExit as e:
            code, err = 1, str(e.code)
        return code, capsys.readouterr().out, err
    code, _, err = error("only one text")
    assert code == 1 and err == ("error: rte classifies pairs of texts: give two texts with a tab between them "
                                 "per example")
    assert error("a\t ")[2] == "error: example 1: an empty text (or not a text); every text must have words in it"
    (tmp_path / "latin1.tsv").write_bytes(b"ok\tfine\ncaf\xe9\tbar\n")
    assert error("--file", str(tmp_path / "latin1.tsv"))[2] == f"error: {tmp_path / 'latin1.tsv'}, line 2: not UTF-8 " \
        "text"
    code, out, err = error("--file", "-", stdin=b"one\ttwo\n \r\nthree\tfour\n")  # a blank line: an empty text
    assert (code, out, err) == (1, "", "error: -, line 2: an empty text (a blank line); every line is one example")
    code, out, _ = error("--file", "-", stdin=b"one\ttwo\r\nthree\tfour\r\n")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(o["n"], o["text"], o["text_b"]) for o in lines] == [(1, "one", "two"),
                                                                                 (2, "three", "four")]
    with safe_open(adapters, framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, adapters, metadata={**meta, "run": meta["run"][:10]})
    assert "its run settings are cut off or not JSON" in error("a\tb")[2]


@pytest.mark.parametrize("text, message", [
    ('{"context": "a b", "question": 5, "options": ["x", "y"]}', "'question' is a number, where a string with words "
     "is expected"),
    ('{"context": "a b", "question": ["which"], "options": ["x", "y"]}', "'question' is a list, where a string"),
    ('{"context": "a b", "question": null, "options": ["x", "y"]}', "'question' is null, where a string"),
    ('{"context": "a b", "options": ["x", "y"]}', "the field 'question' is missing"),
    ('{"context": "a b", "question": " ", "options": ["x", "y"]}', "'question' is an empty string, where"),
    ('{"context": 5, "question": "q", "options": ["x", "y"]}', "'context' is a number, where a string"),
    ('{"context": "a b", "question": "q", "options": "x y"}', "'options' is a string, not a list of two or more"),
    ('{"context": "a b", "question": "q", "options": ["x"]}', "'options' is a list of 1, not a list of two or more"),
    ('{"context": "a b", "question": "q", "options": ["x", 3]}', "'options' holds a number, where a string"),
    ('["a b", "q"]', "expected a JSON object with the fields context, question, options, got a list"),
])
def test_predict_names_the_line_and_field_of_a_bad_json_input(text, message):
    import predict
    with pytest.raises(UserError) as e:  # a multiple-choice input; the QA one below
        predict.json_line("q.jsonl", 3, text, predict.CHOICE)
    assert str(e.value).startswith(f"q.jsonl, line 3: {message}")
    with pytest.raises(UserError, match=r"^q.jsonl, line 4: 'context' is a list, where a string with words"):
        predict.qa_line("q.jsonl", 4, '{"question": "q", "context": ["c"]}')


@pytest.mark.parametrize("which", ["train", "dev"])
def test_empty_data_file_is_a_one_line_error_naming_it(tiny_bert, tmp_path, which):
    folder = Path(write_glue_task(tmp_path / "glue", "sst2", [("good", None, 1)] * 4, [("bad", None, 0)] * 2))
    (folder / f"{which}.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(SystemExit) as e:  # main() turns every UserError into one line (a subprocess test shows it)
        train.main(argv("sst2", tiny_bert, tmp_path / "glue", tmp_path / "out"))
    assert str(e.value.code).startswith(f"error: {folder / f'{which}.tsv'}: no examples")
    assert "\n" not in str(e.value.code) and not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--max-train", "0"], "--max-train must be at least 1, got 0"),
    (["--max-train", "-5"], "--max-train must be at least 1, got -5"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--warmup", "5"], "--warmup is a fraction of the steps, in [0, 1), got 5.0"),
    (["--patience", "-1"], "--patience and --weight-decay must be at least 0"),
    (["--method", "bitfit", "--rank", "64", "--targets", "ffn_in", "--dense", "--state", "carry"],
     "--rank, --targets, --state, --sparse/--dense apply to --method ssmlora, lora, qlora, mixlora, sdt only, not "
     "bitfit"),
    (["--method", "bitfit", "--rank", "4"], "error: --rank applies to --method ssmlora, lora, qlora, mixlora, sdt "
     "only, not bitfit"),
    (["--sdt-rho", "0.5"], "error: --sdt-rho applies to --method sdt only, not ssmlora"),
    (["--method", "none"], "invalid choice: 'none'"),
    (["--doc-stride", "64"], "--doc-stride applies to the QA tasks (squad, narrativeqa) only, not sst2"),
    (["--method", "lora", "--state", "carry"], "state carry is how SSMLoRA's state lives; lora has no state to carry"),
    (["--max-eval", "0"], "--max-eval must be at least 1, got 0"),
    (["--eval-only", "no-such-file.safetensors"], "could not read adapter file no-such-file.safetensors"),
    (["--lr", "nan"], "--lr and --clip above 0 (--lr and --weight-decay finite)"),  # NaN: no comparison holds
    (["--clip", "nan"], "--lr and --clip above 0"),
    (["--weight-decay", "nan"], "--weight-decay must be at least 0"),
    (["--data-dir", "d", "--cache-dir", "c"], "--cache-dir would change nothing: it is where downloads go"),
    (["--out", f"{__file__}/out"], f"--out {__file__}/out cannot be a folder: {__file__} is a file"),
])
def test_flags_that_would_do_nothing_or_the_wrong_thing_are_refused(flags, message):
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "sst2", *flags])
    assert message in str(e.value.code) and "\n" not in str(e.value.code)


def test_output_folder_and_report_name_what_the_method_trains(capsys):
    args = parse_args(["--task", "sst2", "--method", "bitfit", "--model", "roberta-base", "--random-init",
                           "--dry-run"])
    assert args.out == "out/sst2-bitfit"
    r = train.run(args)
    assert r["params"]["biases"] == 102_144 and "biases" in capsys.readouterr().out      # Table 1: BitFit 102K
    full = train.run(parse_args(["--task", "sst2", "--method", "full", "--model", "roberta-base",
                                     "--random-init", "--dry-run"]))
    assert full["params"]["body"] == 124_647_170 - 592_130 and "adapter" not in full["params"]


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    assert "(default: True)" not in text and "(default: None)" not in text
    for flag in ("--rank", "--batch-size", "--seed", "--weight-decay", "--threads", "--log-every"):
        block = text.split(f"  {flag} ", 1)[1].split("\n  --", 1)[0]
        assert len(block.split()) > 2, flag   # the flag's metavar and a help text


def test_sigterm_saves_and_a_capped_evaluation_is_recorded(tiny_bert, glue, tmp_path, capsys):
    """SIGTERM (a batch system's stop) saves the step it came in, as Ctrl-C does; the resumed run says the epoch as
    the progress lines do, keeps the epoch's seconds from before the stop, and --max-eval is recorded."""
    import os
    import signal
    flags = ("--epochs", "1", "--lr", "5e-3", "--max-train", "64", "--max-eval", "10", "--dtype", "bf16")

    def term(step, model):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(SystemExit, match="interrupted after step 3, saved in"):
        train.main(argv("sst2", tiny_bert, glue, tmp_path, *flags), on_step=term)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["progress"]["epoch_elapsed"] > 0
    r = train.run(parse_args(argv("sst2", tiny_bert, glue, tmp_path, *flags, "--resume")))
    out = capsys.readouterr().out
    assert "after step 3: epoch 1, step 3 of 4" in out and "evaluating the first 10 of 64 examples" in out
    assert r["steps"] == 4 and r["max_eval"] == 10 and r["dtype"] == "bf16"
    assert sum(b["n"] for b in r["by_length"]["dev"]) == 10


def test_bucketed_padding_gives_the_same_logits(tiny_bert, glue):
    """--compile pads batches to powers of two (data.padded): a handful of shapes, and the attention mask keeps every
    row's logits what they are unpadded."""
    from data import collate, padded
    from files.hub import from_pretrained
    assert [padded(n, 64) for n in (1, 16, 17, 33, 64)] == [16, 16, 32, 64, 64] and padded(70, 64) == 70
    enc = load_tokenizer(str(tiny_bert), "bert").encode(load_glue(get_task("sst2"), glue)["dev"][:8], 64)
    model = from_pretrained(tiny_bert, num_labels=2).eval()
    rows = np.arange(8)
    a, b = collate(enc, rows), collate(enc, rows, pad_to=64)
    assert b["input_ids"].shape[1] in (16, 32, 64) and b["input_ids"].shape[1] >= a["input_ids"].shape[1]
    with torch.no_grad():
        la = model(a["input_ids"], a["attention_mask"], a["token_type_ids"])[0]
        lb = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])[0]
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
