"""reproduce/gpu.py --smoke: every stage of the one command prepared for a GPU runs here on a CPU at tiny sizes, so
that the script cannot rot between the rare times a GPU is lent. Only the torchrun stage starts processes."""
import json
import re
import tempfile

import pytest

from reproduce import gpu


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out, tmp = tmp_path_factory.mktemp("gpu"), tmp_path_factory.mktemp("tmp")
    before, tempfile.tempdir = tempfile.tempdir, str(tmp)  # where the run's temporary --work folder goes
    try:
        report = gpu.main([str(out), "--smoke"])
    finally:
        tempfile.tempdir = before
    assert [f.name for f in tmp.iterdir() if f.name.startswith("ssmlora-gpu-")] == []  # no --work: removed at the end
    return out, report


def test_every_stage_runs_and_the_report_is_written(smoke):
    out, report = smoke
    assert json.loads((out / "gpu.json").read_text()) == json.loads(json.dumps(report, default=str))
    e = report["environment"]
    assert e["smoke"] and e["device"] == "cpu" and e["torch"] and e["date"]
    assert list(report["stages"]) == list(gpu.STAGES)
    assert all(s["status"] == "done" for s in report["stages"].values()), report["stages"]
    md = (out / "gpu.md").read_text()
    assert md.startswith("# GPU run (smoke, CPU): cpu, torch ") and "| SSMLoRA/LoRA |" in md and "## train.py" in md
    eager_only, compiled = md.split("## table12-eager: ok")[1], md.split("## table12-compiled: ok")[1]
    assert "its eager" not in eager_only.split("##")[0] and "| SSMLoRA/its eager |" in compiled.split("##")[0]
    qlora = md.split("## qlora: ok\n")[1]  # the QLoRA stage's figures, as gpu.json has them
    saved = re.findall(r"^(q?lora) +saved for backward +([\d.]+) MB", qlora, re.M)  # same targets, same saved
    assert "`python -m reproduce.qlora --preset roberta-base" in qlora and [m for m, _ in saved] == ["lora", "qlora"] \
        and saved[0][1] == saved[1][1]


def test_bench_stages_measure_every_method(smoke):
    _, report = smoke
    for stage in ("table12", "memory47", "small"):
        for run in report["stages"][stage]["result"]:
            assert run["status"] == "ok", run
            rows = run["result"]["results"]
            assert rows and all(set(r["ms"]) == {"none", "lora", "ssmlora"} for r in rows)
    variants = {r["variant"] for run in report["stages"]["table12"]["result"] for r in run["result"]["results"]}
    assert variants == {"eager", "compiled"}  # a CUDA graph only on CUDA


def test_train_and_torchrun_stages(smoke):
    _, report = smoke
    runs = report["stages"]["train"]["result"]["runs"]
    assert len(runs) == len(gpu.TRAIN_RUNS)
    assert sum(r["status"] == "ok" for r in runs) == len(gpu.SMOKE_RUNS)
    for r in runs:
        assert r["status"] == "ok" or r["status"] == "skipped: smoke, the same code path as another run", r
        if r["status"] == "ok":
            assert r["examples_per_second"] > 0 and r["steps"] > 0 and 0 <= r["dev_accuracy"] <= 1
    dist = report["stages"]["torchrun"]["result"]
    assert all(dist[k]["status"] == "ok" for k in ("nccl-1", "one")), dist  # smoke: no gloo-2 (test_distributed)
    assert dist["nccl-1 vs one"]["within_cpu_tolerance"]
    assert "saved for backward" in report["stages"]["qlora"]["result"]["output"]


def test_an_earlier_report_is_never_written_over(smoke, tmp_path):
    out, _ = smoke
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(SystemExit) as e:
        gpu.main([str(out), "--smoke", "--stages", "qlora"])
    assert e.value.code == (f"error: OUT {out} holds an earlier report (gpu.json, gpu.md, gpu.log): choose another "
                            "folder, or move them away (nothing was overwritten) (see python -m reproduce.gpu --help)")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


@pytest.mark.parametrize("flags, message", [
    (["{tmp}/file"], "OUT {tmp}/file/gpu.json cannot be made: {tmp}/file is a file"),
    (["{tmp}/out", "--work", "{tmp}/file"], "--work {tmp}/file is a file: pass a folder"),
    (["{tmp}/out", "--work", "{tmp}"], "--work {tmp} already holds files: choose another folder"),
    (["{tmp}/out", "--budget", "0"], "--budget is the seconds all stages may take, above 0, got 0"),
    (["{tmp}/out", "--budget", "-5"], "--budget is the seconds all stages may take, above 0, got -5"),
    (["{tmp}/out", "--stages", ""], "--stages: expected some of table12,"),
    (["{tmp}/out", "--stages", "qlora,qlora"], f"--stages: expected some of {','.join(gpu.STAGES)}, each once, got "
     "'qlora,qlora'"),
])
def test_bad_flags_are_refused_before_any_stage(flags, message, tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SystemExit) as e:
        gpu.main([f.format(tmp=tmp_path) for f in flags] + ["--smoke"])
    assert e.value.code.startswith(f"error: {message.format(tmp=tmp_path)}") and "\n" not in e.value.code
    assert sorted(f.name for f in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "mine"
