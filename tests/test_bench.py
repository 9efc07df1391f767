"""bench.py: --quick end to end (the table, every method and shape in the JSON), the transformers reference row
checked against our logits, and one-line errors. No test asserts a timing: machines are noisy."""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest
import torch

import bench

HAS_HF = importlib.util.find_spec("transformers") is not None
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(tmp_path, *flags):
    """bench.main in-process with --quick; returns (stdout, stderr, the JSON it wrote, its return value)."""
    path = tmp_path / "bench.json"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = bench.main(["--quick", "--json", str(path), *flags])
    return out.getvalue(), err.getvalue(), json.loads(path.read_text()), result


@pytest.fixture(scope="module")
def quick(tmp_path_factory):  # one default --quick run serves several tests: it is the slow part
    threads = torch.get_num_threads()
    folder = tmp_path_factory.mktemp("bench")
    plot = ["--plot", str(folder / "bench.png")] if importlib.util.find_spec("matplotlib") else []
    run = run_quick(folder, *plot)
    assert torch.get_num_threads() == threads  # --quick runs on one thread and gives the caller's setting back
    return run


def test_quick_prints_the_table_with_ratios(quick):
    out = quick[0]
    for text in ("inference: forward, no grad, eval mode", "training step: forward, backward, AdamW step",
                 "lora ms", "ssm MB", "ssm/lora", "lora/none",
                 "lora     dense", "ssmlora  sparse", "--dense compares dense with dense"):
        assert text in out, text
    # one table line per shape and mode, starting with batch and length
    assert sum(line.split()[:2] in (["2", "8"], ["2", "16"]) for line in out.splitlines()) == 4


def test_quick_json_has_every_method_and_shape_and_consistent_ratios(quick):
    _, _, data, result = quick
    assert data == json.loads(json.dumps(result))  # what main returns is what it wrote
    s = data["settings"]
    assert (s["lengths"], s["batch_sizes"], s["rank"], s["targets"]) == ([8, 16], [2], 8, "query,value")
    assert s["lora_sparse"] is False and s["ssmlora_sparse"] is True  # each method's own default
    assert {(r["mode"], r["batch"], r["length"]) for r in data["results"]} == {
        (m, 2, t) for m in ("inference", "train") for t in (8, 16)}
    assert len(data["results"]) == 4
    for r in data["results"]:
        assert set(bench.COMPARED) <= set(r["ms"]) and set(r["time_ratios"]) >= {"ssmlora/lora", "lora/none"}
        if sys.platform.startswith("linux"):  # where peak memory is measured on CPU too
            assert set(r["peak_mb"]) >= set(bench.COMPARED) and "ssmlora/lora" in r["memory_ratios"]
    # tiny config: 4 layers, d = 32, r = 8; LoRA on q and v everywhere, SSMLoRA one of them a layer plus W_c, W_d
    assert data["params"]["lora"]["adapter"] == 8 * 2 * 32 * 8
    assert data["params"]["ssmlora"]["adapter"] == 4 * (2 * 32 * 8 + 2 * 8 * 8) and data["params"]["none"]["adapter"] == 0
    assert "peak MB =" in data["memory_note"]


@pytest.mark.skipif(not HAS_HF, reason="transformers is not installed")
@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_plot_drawn_from_the_run(quick):
    out = quick[0]
    png = out.split("plot in ")[1].strip()
    assert png.endswith("bench.png") and os.path.getsize(png) > 5000


def test_reference_row_when_transformers_is_importable(quick):
    out, _, data, _ = quick
    assert data["reference"]["used"] and data["reference"]["max_abs_logit_diff"] <= 1e-4
    assert "logits agree to" in out and "none/hf" in out
    for r in data["results"]:  # inference only: transformers' model is not trained here
        assert ("transformers" in r["ms"]) == (r["mode"] == "inference")


@pytest.mark.skipif(not HAS_HF, reason="transformers is not installed")
def test_reference_row_left_out_when_logits_disagree(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "TOLERANCE", -1.0)  # no difference can pass: the check must fail
    out, err, data, _ = run_quick(tmp_path)
    assert "reference row is left out" in err
    assert not data["reference"]["used"]
    assert all("transformers" not in r["ms"] for r in data["results"])
    assert "disagreed" in data["reference"]["note"]


def test_runs_without_transformers_and_dense_flag(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails, find_spec says None
    out, _, data, _ = run_quick(tmp_path, "--dense")
    assert not data["reference"]["used"] and "transformers is not installed" in data["reference"]["note"]
    assert data["settings"]["ssmlora_sparse"] is False and "ssmlora  dense" in out
    assert all(set(r["ms"]) == set(bench.COMPARED) for r in data["results"])
    with pytest.raises(SystemExit) as e:
        bench.main(["--quick", "--reference", "--json", str(tmp_path / "x.json")])
    assert "needs the transformers package" in e.value.code


@pytest.mark.parametrize("flags, message", [
    (["--preset", "roberta-huge"], "invalid choice: 'roberta-huge'"),
    (["--lengths", "16,x"], "expected comma-separated positive integers, got '16,x'"),
    (["--batch-sizes", "0"], "expected comma-separated positive integers"),
    (["--repeats", "0"], "must be at least 1"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--quick", "--lengths", "100"], "longer than this model's"),
    pytest.param(["--device", "cuda"], "sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_flags_give_one_line_errors(flags, message, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main([*flags, "--no-reference", "--json", str(tmp_path / "x.json")])
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ") and "\n" not in e.value.code
    assert message in e.value.code


def test_command_line_error_has_no_traceback():
    flags = ["--lengths", "abc"] if torch.cuda.is_available() else ["--device", "cuda"]
    p = subprocess.run([sys.executable, "bench.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stdout == ""
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("error: ")
