"""reproduce/gpu.py --smoke: every stage of the one command prepared for a GPU runs here on a CPU at tiny sizes, so
that the script cannot rot between the rare times a GPU is lent. Only the torchrun stage starts processes."""
import json
import re

import pytest

from reproduce import gpu


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    return out, gpu.main([str(out), "--smoke"])


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
