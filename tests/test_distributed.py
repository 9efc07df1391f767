"""Data-parallel training started by torchrun, here two CPU processes talking over gloo: the same numbers as one
process with the same examples per optimizer step, one set of outputs, exact resume after an interruption; and
gradient accumulation, which must equal the batch it splits.

The runs compared across batch splits use LoRA. Splitting a batch changes the order of float additions, and SSMLoRA's
eq. (8) divides by max - min + 1e-8 over states that start constant, so its runs drift apart within a few steps
(a difference of 2e-7 after step 1 was 2e-2 after step 5, for accumulation in one process as for two processes).
Runs with the same split are compared bit for bit with SSMLoRA."""
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import checkpoints
import train
from training.flags import parse as parse_args
from glue_fixtures import write_glue_task
from reproduce.synthetic import sentiment_rows

REPO = Path(__file__).parent.parent
# 229 training rows: in steps of 16, 14 full steps and one of 5 examples, shared 3 and 2 between processes or
# passes (so each must weigh by its size); in steps of 6, 38 full ones and one of 1 example, which leaves one
# process with none. 37 dev rows: shares of 19 and 18, padded and trimmed when gathered.
N_TRAIN, N_DEV = 229, 37


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    rng = random.Random(1)
    write_glue_task(root, "sst2", sentiment_rows(N_TRAIN, rng), sentiment_rows(N_DEV, rng))
    return root


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """Without dropout: processes draw their own dropout masks, so only a model without dropout can give the same
    numbers in one process and in two."""
    return checkpoints.tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"), dropout=0.0)


def flags(model, glue, out, *extra, epochs=2):
    return ["--task", "sst2", "--model", str(model), "--data-dir", str(glue), "--out", str(out), "--epochs",
            str(epochs), "--lr", "1e-2", "--patience", "0", *extra]


def torchrun(script, args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def evals(out):
    """eval.jsonl's lines, less the wall-clock time, the one thing no two runs repeat."""
    lines = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("epoch_seconds", None)
    return lines


def adapters(out):
    return load_file(out / "adapters.safetensors")


def assert_close_runs(a, b):
    """The same evaluations at the same steps and learning rates, with the same training loss and metrics, and
    adapters equal to float tolerance: AdamW divides each gradient by its own running size, so rounding differences
    in the smallest gradients grow to ~1e-5 in the weights."""
    ea, eb = evals(a), evals(b)
    assert [(x["epoch"], x["step"]) for x in ea] == [(x["epoch"], x["step"]) for x in eb]
    for x, y in zip(ea, eb):
        assert x["lr"] == pytest.approx(y["lr"], rel=1e-12) and x["dev"] == pytest.approx(y["dev"], abs=1e-6)
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-5)  # the loss is summed, not averaged, too
    wa, wb = adapters(a), adapters(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=5e-5, msg=k)


def test_two_processes_equal_one_process_with_twice_the_batch(tiny_bert, glue, tmp_path):
    common = ("--method", "lora", "--dropout", "0", "--eval-every", "9", "--epochs", "4")
    p = torchrun("train.py", flags(tiny_bert, glue, tmp_path / "two", "--batch-size", "8", *common))
    assert p.returncode == 0, p.stderr[-3000:]
    one = train.run(parse_args(flags(tiny_bert, glue, tmp_path / "one", "--batch-size", "16", *common)))

    # one set of outputs, written by rank 0 alone; rank 0 alone printed
    assert sorted(f.name for f in (tmp_path / "two").iterdir()) == \
        ["adapters.safetensors", "checkpoint.pt", "eval.jsonl", "results.json"]
    assert p.stdout.count("16 examples per optimizer step (--batch-size 8 x 2 processes x --grad-accum 1), "
                          "15 steps an epoch") == 1
    assert p.stdout.count("best accuracy") == 1 and p.stdout.count("trainable") == 1
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["processes"] == 2 and two["examples_per_step"] == 16 and two["steps"] == one["steps"] == 60

    # every 9 steps and at each epoch's end (every 15 steps); step 45 is both, and evaluated once
    assert [x["step"] for x in evals(tmp_path / "two")] == sorted({*range(9, 61, 9), *range(15, 61, 15)})
    assert_close_runs(tmp_path / "two", tmp_path / "one")
    # the adapters really moved (W_b starts at zero), so the equality covers 60 real steps; a sharding mistake
    # (a process on the wrong rows, a wrong weight) shows at the first step, far above the tolerance
    assert max(float(t.abs().max()) for k, t in adapters(tmp_path / "two").items() if k.endswith("W_b")) > 1e-2

    # one process accumulating the same two passes of 8 adds the same numbers in the same order: bit for bit
    train.run(parse_args(flags(tiny_bert, glue, tmp_path / "accum", "--batch-size", "8", "--grad-accum", "2",
                                   *common)))
    a, b = adapters(tmp_path / "two"), adapters(tmp_path / "accum")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_equals_the_whole_batch(tiny_bert, glue, tmp_path):
    def run(name, batch, accum):
        r = train.run(parse_args(flags(tiny_bert, glue, tmp_path / name, "--method", "lora", "--dropout", "0",
                                           "--batch-size", str(batch), "--grad-accum", str(accum))))
        assert r["examples_per_step"] == batch * accum and r["steps"] == 2 * math.ceil(N_TRAIN / (batch * accum))
        return tmp_path / name
    whole = run("whole", 16, 1)
    assert_close_runs(run("halves", 8, 2), whole)    # the last step's 5 examples: passes of 3 and 2
    assert_close_runs(run("eighths", 2, 8), whole)   # passes of 1, 1, 1, 1, 1 and three empty ones
    assert_close_runs(run("thirds", 3, 3), run("nine", 9, 1))  # 229 = 25 x 9 + 4: passes of 2, 1 and 1


INTERRUPT = """import sys
sys.path.insert(0, {repo!r})
import train


def interrupt(step, model):  # what Ctrl-C does: it interrupts every process (here all after the same step)
    if step == {step}:
        raise KeyboardInterrupt


train.main(sys.argv[1:], on_step=interrupt)
"""


def test_interrupted_two_process_run_resumes_exactly(tiny_bert, glue, tmp_path):
    # SSMLoRA with adapter dropout: each process's own random state must come back from the checkpoint.
    # 6 examples a step, 39 steps in the one epoch; evaluations at steps 15, 30 and 39; checkpoints every 10 steps
    # and after each evaluation. Interrupted at step 23, mid-epoch, after an evaluation: it resumes from step 20.
    common = ("--batch-size", "3", "--dropout", "0.1", "--eval-every", "15", "--save-every", "10", "--epochs", "1")
    whole = torchrun("train.py", flags(tiny_bert, glue, tmp_path / "whole", *common))
    assert whole.returncode == 0, whole.stderr[-3000:]

    script = tmp_path / "interrupt_at_23.py"
    script.write_text(INTERRUPT.format(repo=str(REPO), step=23))
    cut = torchrun(script, flags(tiny_bert, glue, tmp_path / "cut", *common))
    assert cut.returncode != 0 and cut.stderr.count("interrupted: continue with the same command plus --resume") == 1
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["progress"]["step"] == 20 and len(ck["rng"]) == 2 and not torch.equal(*ck["rng"])
    with pytest.raises(train.TrainError, match="processes: checkpoint 2, now 1"):  # one process cannot resume it
        train.run(parse_args(flags(tiny_bert, glue, tmp_path / "cut", *common, "--resume")))

    resumed = torchrun("train.py", flags(tiny_bert, glue, tmp_path / "cut", *common, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "after step 20: epoch 1, step 20 of" in resumed.stdout
    assert evals(tmp_path / "whole") == evals(tmp_path / "cut")
    assert [x["step"] for x in evals(tmp_path / "cut")] == [15, 30, 39]
    a, b = adapters(tmp_path / "whole"), adapters(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (torch.load(tmp_path / x / "checkpoint.pt", weights_only=True) for x in ("whole", "cut"))
    assert all(torch.equal(ca["trained"][k], cb["trained"][k]) for k in ca["trained"])


def test_carry_state_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "sst2", "--state", "carry"])
    assert "--state carry keeps one state per process" in str(e.value.code) and "\n" not in str(e.value.code)
