"""reproduce/timeshare.py: SSMLoRA with its state's term taken out is sparse LoRA, exactly; the command measures a
run."""
import json
import random

import pytest
import torch

import checkpoints
import train
from files.hub import from_pretrained
from glue_fixtures import write_glue_task
from reproduce import timeshare
from reproduce.synthetic import sentiment_rows
from ssmlora import Adapters, SSMLoRALinear, add_adapters
from training.flags import parse as parse_args


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return checkpoints.tiny_bert(tmp_path_factory.mktemp("tiny-bert"), dropout=0.0)


def adapted(folder, method):
    torch.manual_seed(0)
    model = add_adapters(from_pretrained(folder, num_labels=2), Adapters(method, 4, 16.0, 0.0, sparse=True))
    return model.eval()


def test_without_the_state_ssmlora_is_sparse_lora_with_its_W_a_and_W_b(tiny):
    ssm, lora = adapted(tiny, "ssmlora"), adapted(tiny, "lora")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking adapters: no zero W_b, W_c, W_d (their init), so every term counts
        for name, p in ssm.named_parameters():
            if name.endswith(("W_b", "W_c", "W_d")):
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if name.endswith("W_b") else 1.0))
        lora.load_state_dict({k: v for k, v in ssm.state_dict().items() if not k.endswith(("W_c", "W_d"))})
    ids = torch.randint(1000, 2000, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, 5:] = mask[2, 7:] = 0  # padding: not counted in the means and sizes
    run = lambda m, **kw: m(ids, mask, None)[0]
    with torch.no_grad():
        trained = run(ssm)
        with timeshare.StateTerm(ssm) as kept:
            assert torch.equal(run(ssm), trained)  # only measured: the output is the model's own
        with timeshare.StateTerm(ssm, 0):
            zero = run(ssm)
        means = kept.mean_states()
        with timeshare.StateTerm(ssm, means):
            mean = run(ssm)
        assert not torch.allclose(zero, trained, atol=1e-3)  # the state's term mattered
        torch.testing.assert_close(zero, run(lora), atol=1e-5, rtol=1e-5)
        # h_norm held at its mean: a constant s mean W_b per module, as a bias added to the frozen layer
        for name, m in lora.named_modules():
            if name in means:
                m.bias += m.scaling * means[name] @ m.W_b
        torch.testing.assert_close(mean, run(lora), atol=1e-5, rtol=1e-5)
    ssm_modules = [n for n, m in ssm.named_modules() if isinstance(m, SSMLoRALinear)]
    assert sorted(means) == sorted(ssm_modules) and len(ssm_modules) == 4
    assert all(0 <= float(v.min()) and float(v.max()) <= 1 for v in means.values())  # h_norm lies in [0, 1]
    assert all(0 < r < float("inf") for r in kept.ratios().values())


def test_the_command_measures_a_trained_run_and_refuses_what_it_cannot(tiny, tmp_path, capsys):
    rng = random.Random(0)
    write_glue_task(tmp_path / "glue", "sst2", sentiment_rows(64, rng), sentiment_rows(32, rng))
    runs = {}
    for method in ("ssmlora", "lora"):
        runs[method] = tmp_path / method
        train.main(["--task", "sst2", "--model", str(tiny), "--data-dir", str(tmp_path / "glue"), "--method", method,
                    "--epochs", "2", "--lr", "1e-2", "--out", str(runs[method]), "--max-len", "32"])
    out = tmp_path / "share.json"
    [r] = timeshare.main([str(runs["ssmlora"]), "--json", str(out), "--length-bins", "0,10"])
    again = train.run(parse_args(["--eval-only", str(runs["ssmlora"] / "adapters.safetensors"),
                                  "--length-bins", "0,10"]))
    assert r["trained"] == again["eval"] and r["trained_by_length"] == again["by_length"]  # the run as trained
    assert json.loads(out.read_text())[0]["zero"] == r["zero"]
    assert [b["n"] for b in r["mean_by_length"]["dev"]] == [b["n"] for b in again["by_length"]["dev"]]
    printed = capsys.readouterr().out
    assert "h_norm = 0" in printed and "h_norm = its mean" in printed and "RMS of s h_norm W_b" in printed
    for argv, message in [([str(runs["lora"])], "holds lora adapters: only SSMLoRA's have a state"),
                          ([str(tmp_path / "none")], "does not exist: give a run folder"),
                          ([str(runs["ssmlora"]), "--json", str(out)], "already exists"),
                          ([str(runs["ssmlora"]), "--max-eval", "0"], "--max-eval must be at least 1, got 0"),
                          ([str(runs["ssmlora"]), "--length-bins", "abc"], "--length-bins 'abc': give a bin width")]:
        with pytest.raises(SystemExit, match=f"^error: .*{message}"):
            timeshare.main(argv)
