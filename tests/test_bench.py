"""bench.py: --quick end to end (the table, every method, variant and shape in the JSON), --compile through the same
code path with dynamo's eager backend (inductor's CPU compile would take minutes), and one-line errors. No test
asserts a timing: machines are noisy."""
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(tmp_path, *flags):
    """bench.main in-process with --quick; returns (stdout, stderr, the JSON it wrote, its return value)."""
    path = tmp_path / "bench.json"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = bench.main(["--quick", "--json", str(path), *flags])
    return out.getvalue(), err.getvalue(), json.loads(path.read_text()), result


@pytest.fixture(scope="module")
def quick(tmp_path_factory):  # one --quick --compile run serves several tests: it is the slow part
    threads = torch.get_num_threads()
    folder = tmp_path_factory.mktemp("bench")
    plot = ["--plot", str(folder / "bench.png")] if importlib.util.find_spec("matplotlib") else []
    run = run_quick(folder, "--compile", "--backend", "eager", "--cuda-graph", *plot)
    assert torch.get_num_threads() == threads  # --quick runs on one thread and gives the caller's setting back
    return run


def test_quick_prints_the_table_with_ratios(quick):
    out = quick[0]
    for text in ("inference: forward, no grad, eval mode", "training step: forward, backward, AdamW step",
                 "lora ms", "ssm/lora", "lora/ssm", "lora/none", "lora/eager", "ssm/eager", "ssm saved MB",
                 "lora     dense", "ssmlora  sparse: query,value: query and value alternating over the layers",
                 "--dense compares dense with dense", "float32_matmul_precision",
                 "--cuda-graph skipped: CUDA graphs need a CUDA device", "no peak memory is measured"):
        assert text in out, text
    # one table line per variant, shape and mode, starting with the variant, batch and length
    lines = [line.split()[:3] for line in out.splitlines()]
    assert sum(cells in ([v, "2", "8"], [v, "2", "16"]) for cells in lines for v in ("eager", "compiled")) == 8


@pytest.mark.parametrize("preset, alternating", [("roberta-base", "query and value"),
                                                 ("mamba-130m", "in_proj and out_proj")])
def test_eager_alone_has_no_ratio_to_eager_and_each_model_its_own_targets(tmp_path, preset, alternating):
    out = run_quick(tmp_path, "--preset", preset, "--modes", "inference", "--lengths", "8")[0]
    heads = next(line for line in out.splitlines() if line.lstrip().startswith("variant"))
    assert heads.split()[:12] == ["variant", "batch", "len", "none", "ms", "lora", "ms", "ssm", "ms", "ssm/lora",
                                  "lora/ssm", "lora/none"] and "eager" not in heads  # nothing else was timed
    targets = bench.MAMBA_ADAPTED if preset.startswith("mamba") else bench.ADAPTED
    assert f"sparse: {targets}: {alternating} alternating over the layers (paper §3.4)" in out and "Mamba" not in out


def test_quick_json_has_every_method_variant_and_shape(quick):
    _, _, data, result = quick
    assert data == json.loads(json.dumps(result))  # what main returns is what it wrote
    s = data["settings"]
    assert (s["lengths"], s["batch_sizes"], s["rank"], s["targets"]) == ([8, 16], [2], 8, "query,value")
    assert s["lora_sparse"] is False and s["ssmlora_sparse"] is True  # each method's own default
    assert s["compile"] == "eager" and s["cuda_graph"] is False and "cuda_matmul_allow_tf32" in s["flags"]
    assert [(r["mode"], r["variant"], r["batch"], r["length"]) for r in data["results"]] == [
        (m, v, 2, t) for m in ("inference", "train") for t in (8, 16) for v in ("eager", "compiled")]
    for r in data["results"]:
        assert set(r["ms"]) == set(bench.COMPARED) and set(r["time_ratios"]) == {"ssmlora/lora", "lora/ssmlora",
                                                                                  "lora/none"}
        assert all(v is None for v in r["peak_mb"].values())  # no peak memory on a CPU
        # one compilation per model and mode, at the first length; the second reuses it (length marked dynamic)
        assert r["graphs_compiled"] == (3 if r["variant"] == "compiled" and r["length"] == 8 else 0)
    train = [r for r in data["results"] if r["mode"] == "train" and r["variant"] == "eager"]
    assert all(0 < r["saved_mb"]["ssmlora"] < r["saved_mb"]["lora"] for r in train)  # half the modules adapted
    # tiny config: 4 layers, d = 32, r = 8; LoRA on q and v everywhere, SSMLoRA one of them a layer plus W_c, W_d
    assert data["params"]["lora"]["adapter"] == 8 * 2 * 32 * 8
    assert data["params"]["ssmlora"]["adapter"] == 4 * (2 * 32 * 8 + 2 * 8 * 8)
    assert data["params"]["none"]["adapter"] == 0


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_plot_drawn_from_the_run(quick):
    out = quick[0]
    png = out.split("plot in ")[1].strip()
    assert png.endswith("bench.png") and os.path.getsize(png) > 5000


def test_bf16_frozen_weights_and_dense_flag(tmp_path):
    _, _, data, _ = run_quick(tmp_path, "--dense", "--dtype", "bf16", "--weights", "bf16", "--modes", "train",
                              "--lengths", "8")
    assert data["settings"]["ssmlora_sparse"] is False and data["settings"]["weights"] == "bf16"
    assert [r["mode"] for r in data["results"]] == ["train"]
    models = bench.build(bench.preset("roberta-base", head="cls", **bench.QUICK),
                         bench.get_args(["--quick", "--dtype", "bf16", "--weights", "bf16"]))
    dtypes = {(p.requires_grad, p.dtype) for m in models.values() for p in m.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}  # frozen in bf16, trained in float32


@pytest.mark.parametrize("flags, message", [
    (["--preset", "roberta-huge"], "invalid choice: 'roberta-huge'"),
    (["--lengths", "16,x"], "expected comma-separated positive integers, got '16,x'"),
    (["--batch-sizes", "0"], "expected comma-separated positive integers"),
    (["--repeats", "0"], "must be at least 1"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--quick", "--lengths", "100"], "longer than this model's"),
    (["--weights", "bf16", "--dtype", "fp32"], "--weights bf16 needs --dtype bf16 or fp16"),
    (["--modes", "serve"], "--modes: expected inference, train or both"),
    (["--layers", "0"], "--layers must be at least 1"),
    (["--threads", "0"], "--threads and --layers must be at least 1"),
    (["--alpha", "nan"], "--alpha above 0"),
    (["--compile", "--backend", "nosuch"], "--backend 'nosuch' is not a torch.compile backend: choose one of "),
    (["--backend", "eager"], "--backend would change nothing without --compile"),
    (["--modes", "inference", "--train-lengths", "8"], "--train-lengths would change nothing without --modes train"),
    (["--modes", "train", "--cuda-graph"], "--cuda-graph would change nothing without --modes inference"),
    (["--modes", "train", "--lengths", "8", "--train-lengths", "8"], "--lengths would change nothing beside "
     "--train-lengths without --modes inference"),
    (["--plot", "{tmp}/bench"], "--plot {tmp}/bench: the picture is a PNG; name it .png"),
    pytest.param(["--device", "cuda"], "sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_flags_give_one_line_errors(flags, message, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main([*(f.format(tmp=tmp_path) for f in flags), "--json", str(tmp_path / "x.json")])
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ") and "\n" not in e.value.code
    assert message.format(tmp=tmp_path) in e.value.code and not (tmp_path / "x.json").exists()


def test_an_earlier_result_is_never_written_over(tmp_path):
    (tmp_path / "bench.json").write_text("mine")
    with pytest.raises(SystemExit) as e:
        bench.main(["--quick", "--json", str(tmp_path / "bench.json")])
    assert e.value.code == (f"error: --json {tmp_path / 'bench.json'} already exists: choose another file, or move "
                            "it away (nothing was overwritten) (see python bench.py --help)")
    assert (tmp_path / "bench.json").read_text() == "mine"


def test_without_json_a_second_run_writes_beside_the_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "bench.json").write_text("mine")
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        bench.main(["--quick", "--modes", "inference", "--batch-sizes", "1", "--lengths", "8"])
    assert "written to out/bench2.json" in out.getvalue() and (tmp_path / "out" / "bench.json").read_text() == "mine"
    assert json.loads((tmp_path / "out" / "bench2.json").read_text())["results"][0]["length"] == 8


def test_command_line_error_has_no_traceback():
    flags = ["--lengths", "abc"] if torch.cuda.is_available() else ["--device", "cuda"]
    p = subprocess.run([sys.executable, "bench.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stdout == ""
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("error: ")
