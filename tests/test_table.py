"""reproduce.table: a tiny grid run as train.py processes, the table, and a rerun that skips what is done."""
import json
import random
import subprocess

import checkpoints
from glue_fixtures import write_glue_task
from reproduce import table
from reproduce.synthetic import sentiment_rows


def test_tiny_grid_runs_skips_and_resumes(tmp_path, monkeypatch, capsys):
    model = checkpoints.tiny_bert(tmp_path / "bert")
    rng = random.Random(0)
    write_glue_task(tmp_path / "glue", "sst2", sentiment_rows(48, rng), sentiment_rows(16, rng))
    calls = []
    real = subprocess.run
    monkeypatch.setattr(table.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real(cmd, **kw))
    argv = ["--tasks", "sst2", "--methods", "lora", "--ranks", "2", "--seeds", "0,1", "--out",
            str(tmp_path / "t"), "--", "--model", str(model), "--data-dir", str(tmp_path / "glue"), "--epochs", "1",
            "--batch-size", "16", "--lr", "5e-3", "--threads", "1"]
    table.main(argv)
    assert len(calls) == 2 and all(c[1] == "train.py" for c in calls)  # two real runs: the suite's time is short
    runs = json.loads((tmp_path / "t" / "runs.json").read_text())
    assert [(r["method"], r["seed"], r["status"]) for r in runs] == [("lora", 0, "ran"), ("lora", 1, "ran")]
    assert {r["params"] for r in runs if r["method"] == "lora"} == {4 * 2 * (32 * 2 + 2 * 32)}  # 4 layers, q and v
    text = (tmp_path / "t" / "table.md").read_text()
    lora = [r["value"] for r in runs if r["method"] == "lora"]
    mean, std = 100 * sum(lora) / 2, 100 * abs(lora[0] - lora[1]) / 2 ** 0.5
    assert f"| lora | 2 | 1,024 | {mean:.2f} ± {std:.2f} (2) |" in text and "sst2 accuracy" in text
    calls.clear()
    table.main(argv)  # everything is done: nothing runs again
    assert calls == [] and all(r["status"] == "done before" for r in json.loads((tmp_path / "t" / "runs.json")
                                                                                   .read_text()))
    results = tmp_path / "t" / "sst2" / "lora-r2" / "seed1" / "results.json"
    kept = results.read_text()
    results.unlink()  # as if killed before the end: its checkpoint.pt is there; train.py --resume would finish it

    def resumed(cmd, **kw):  # what train.py --resume leaves: the run's results.json
        calls.append(cmd)
        results.write_text(kept)
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(table.subprocess, "run", resumed)
    table.main(argv)
    assert len(calls) == 1 and calls[0][-1] == "--resume" and calls[0][calls[0].index("--out") + 1] == str(
        results.parent.resolve())
