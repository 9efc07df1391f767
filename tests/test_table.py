"""reproduce.table: a tiny grid run as train.py processes, the table, and a rerun that skips what is done."""
import json
import random
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import checkpoints
from glue_fixtures import write_glue_task
from reproduce import table
from reproduce.synthetic import sentiment_rows


def test_tiny_grid_runs_skips_and_resumes(tmp_path, monkeypatch, capsys):
    model = checkpoints.tiny_bert(tmp_path / "bert")
    rng = random.Random(0)
    write_glue_task(tmp_path / "glue", "sst2", sentiment_rows(48, rng), sentiment_rows(16, rng))
    calls = []
    real = table.train
    monkeypatch.setattr(table, "train", lambda cmd, out: calls.append(cmd) or real(cmd, out))
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

    def resumed(cmd, out):  # what train.py --resume leaves: the run's results.json
        calls.append(cmd)
        results.write_text(kept)
        return 0
    monkeypatch.setattr(table, "train", resumed)
    table.main(argv)
    assert len(calls) == 1 and calls[0][-1] == "--resume" and calls[0][calls[0].index("--out") + 1] == str(
        results.parent.resolve())


def fake_results(cmd, value=0.5):
    """What a finished train.py leaves in its --out, enough for the table."""
    arg = lambda flag, default=None: cmd[cmd.index(flag) + 1] if flag in cmd else default
    rank = arg("--rank")
    from training.flags import parse
    r = {"task": arg("--task"), "method": arg("--method"), "rank": None if rank is None else int(rank),
         "select": "accuracy", "best": {"dev": {"accuracy": value}}, "params": {"adapter": 10, "biases": 5,
         "body": 100, "trainable": 12}, "args": vars(parse(cmd[2:])),
         "adapters": {"sparse": "--sparse" in cmd or ("--dense" not in cmd and arg("--method") == "ssmlora")}}
    os.makedirs(arg("--out"), exist_ok=True)
    with open(os.path.join(arg("--out"), "results.json"), "w") as f:
        json.dump(r, f)
    return 0


def test_the_grid_and_what_is_there_are_checked_before_any_run(tmp_path, monkeypatch):
    """--ranks 0 once trained at rank 8 and printed "-"; --seeds 0,0 counted one run twice; a cut results.json, a
    file as --out, --plot without matplotlib failed only after the grid, with tracebacks (issue 29)."""
    calls = []
    monkeypatch.setattr(table, "train", lambda cmd, out: calls.append(cmd) or fake_results(cmd))
    out = str(tmp_path / "t")
    base = ["--tasks", "sst2", "--out", out]
    for argv, message in [(["--ranks", "0"], "--ranks must be positive integers, got 0"),
                          (["--ranks", "4,-1"], "got -1"),
                          (["--seeds", "0,1,0"], "--seeds lists 0 more than once: list each once"),
                          (["--methods", "lora,lora"], "--methods lists lora more than once"),
                          (["--methods", "lora,lorra"], "unknown method lorra"),
                          (["--tasks", "sst2,sst3"], "Unknown task 'sst3'"),
                          (["--", "--method=full"], "--method after -- would fight the grid"),
                          (["--", "--dry-run"], "--dry-run after -- would fight the grid"),
                          (["--", "--trace-gradients", "t.jsonl"], "one --trace-gradients file cannot take every "
                           "run's steps")]:
        with pytest.raises(SystemExit, match=f"^error: .*{message}"):
            table.main(base + argv)
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=f"^error: --out {tmp_path / 'file'} is a file: pass a folder$"):
        table.main(["--tasks", "sst2", "--out", str(tmp_path / "file")])
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(builtins, "__import__", no_matplotlib)
        with pytest.raises(SystemExit, match="^error: --plot needs the matplotlib package"):
            table.main(base + ["--plot"])
    assert calls == []
    table.main(base + ["--methods", "lora,bitfit", "--seeds", "0,1"])
    assert len(calls) == 4
    cut = tmp_path / "t" / "sst2" / "bitfit" / "seed1" / "results.json"
    cut.write_text(cut.read_text()[:40])
    calls.clear()
    with pytest.raises(SystemExit, match=f"^error: {cut} is cut off or not a train.py results file .JSONDecodeError"):
        table.main(base + ["--methods", "lora,bitfit,ssmlora", "--seeds", "0,1"])
    assert calls == []  # the ssmlora runs did not start
    cut.unlink()
    with pytest.raises(SystemExit, match=r"lora-r8/seed0/results.json was trained with lr 0.0005 \(now 0.001\), "
                                         r"epochs 60 \(now 3\): use another --out"):
        table.main(base + ["--methods", "lora,bitfit", "--seeds", "0,1", "--", "--epochs", "3", "--lr", "1e-3"])
    with pytest.raises(SystemExit, match="^error: --warmup is a fraction.*after -- in python -m reproduce.table"):
        table.main(base + ["--", "--warmup", "2"])
    assert calls == []
    os.rename(tmp_path / "t" / "sst2" / "lora-r8" / "seed0", tmp_path / "t" / "sst2" / "lora-r8" / "seed5")
    with pytest.raises(SystemExit, match="seed5/results.json is a run of method lora, rank 8, seed 0, not the lora, "
                                         "rank 8, seed 5"):
        table.main(base + ["--seeds", "5"])


def test_qlora_and_mixlora_get_their_papers_targets(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(table, "train", lambda cmd, out: calls.append(cmd) or fake_results(cmd))
    table.main(["--tasks", "sst2", "--methods", "lora,qlora,mixlora", "--out", str(tmp_path / "a")])
    targets = [c[c.index("--targets") + 1] if "--targets" in c else None for c in calls]
    assert targets == [None, "query,key,value,attn_out,ffn_gate,ffn_in,ffn_out", "query,key,value"]
    calls.clear()
    table.main(["--tasks", "sst2", "--methods", "mixlora", "--out", str(tmp_path / "b"), "--", "--targets", "query"])
    assert calls[0].count("--targets") == 1 and calls[0][-2:] == ["--targets", "query"]
    # each method gets the flags it takes: train.py refuses adapter flags for bitfit, --state for all but SSMLoRA
    calls.clear()
    table.main(["--tasks", "sst2", "--methods", "bitfit,lora,ssmlora", "--out", str(tmp_path / "c"), "--", "--alpha",
                "32", "--state", "carry", "--epochs", "1", "--targets=query", "--dense"])
    assert [c[c.index("--seed") + 4:] for c in calls] == [
        ["--epochs", "1"], ["--rank", "8", "--alpha", "32", "--epochs", "1", "--targets=query", "--dense"],
        ["--rank", "8", "--alpha", "32", "--state", "carry", "--epochs", "1", "--targets=query", "--dense"]]


def test_plot_has_a_whole_y_label_and_plain_rank_ticks(tmp_path):
    pytest.importorskip("matplotlib")
    args = table.get_args(["--tasks", "sst2", "--methods", "lora", "--ranks", "1,2,4,8", "--seeds", "0,1"])
    records = [dict(task="sst2", method="lora", rank=r, seed=s, metric="accuracy", value=0.5 + r / 100 + s / 100)
               for r in args.ranks for s in args.seeds]
    fig = table.plot(records, args, tmp_path / "t.png")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "dev accuracy x100" and ax.get_xlabel() == "rank"
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig).draw()  # the label drawn inside the picture, not cut off at its edge
    label, page = ax.yaxis.label.get_window_extent(), fig.bbox
    assert page.x0 <= label.x0 and page.y0 <= label.y0 and label.y1 <= page.y1, (label, page)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8"]
    assert (tmp_path / "t.png").stat().st_size > 1000


FAKE_TRAIN = """
import os, signal, sys, time
out = sys.argv[sys.argv.index("--out") + 1]
os.makedirs(out, exist_ok=True)
def save(signum, frame):  # as train.py: the first Ctrl-C stops after the step, which is saved
    with open(os.path.join(out, "checkpoint.pt"), "a") as f:
        f.write("saved\\n")
    sys.exit("interrupted after step 3: continue with the same command plus --resume")
signal.signal(signal.SIGINT, save)
open(os.path.join(out, "started"), "w").close()
time.sleep(30)
"""


def test_ctrl_c_reaches_the_run_which_saves_then_one_line(tmp_path):
    """Ctrl-C once killed train.py before it saved, with a KeyboardInterrupt traceback (issue 28). The terminal
    sends it to the table's process group: here, to the table alone."""
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    fake = str(tmp_path / "fake_train.py")
    code = (f"import sys; from reproduce import table; table.TRAIN = [sys.executable, {fake!r}]; "
            f"table.main(['--tasks', 'sst2', '--seeds', '0,1', '--out', {str(tmp_path / 't')!r}])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(table.__file__)))
    p = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    run = tmp_path / "t" / "sst2" / "lora-r8" / "seed0"
    deadline = time.time() + 60
    while not (run / "started").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert (run / "checkpoint.pt").read_text() == "saved\n"  # one Ctrl-C reached it, once
    assert not (tmp_path / "t" / "sst2" / "lora-r8" / "seed1").exists()  # and the grid stopped
    assert "Traceback" not in stderr and p.returncode == 1
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: {run} stopped (its checkpoint.pt is saved); run the same command again to continue (finished "
        "runs are skipped, a run with a checkpoint.pt gets --resume)")


def test_rows_with_their_own_insertion_and_rank_side_by_side_paired_and_by_length(tmp_path, monkeypatch):
    """The grid that separates the Time Module from sparse insertion and compares at an equal budget: LoRA on
    SSMLoRA's layers (+sparse) and LoRA at rank 4 (@4) beside the paper's two rows, two runs at a time; the table
    gives every seed, each row's paired difference from the first, and the metric by input length."""
    base = {"ssmlora": 0.80, "lora": 0.78, "lora+sparse": 0.79}
    calls = []

    def fake(cmd, out, log=None):
        calls.append(cmd)
        name = cmd[cmd.index("--method") + 1] + ("+sparse" if "--sparse" in cmd else "")
        seed, rank = int(cmd[cmd.index("--seed") + 1]), cmd[cmd.index("--rank") + 1]
        value = base[name] + seed / 100 + (0.01 * (seed == 1) if name == "lora+sparse" else 0) - (rank == "4") / 10
        fake_results(cmd, value)
        path = Path(cmd[cmd.index("--out") + 1]) / "results.json"
        r = json.loads(path.read_text())
        r.update(steps=30, epoch_seconds=[60.0, 60.0], by_length={"dev": [
            {"bin": "0-100", "n": 5, "accuracy": value},
            {"bin": "100+", "n": 3, "accuracy": value - 0.1 + 0.03 * (name == "ssmlora")}]})
        path.write_text(json.dumps(r))
        return 0
    monkeypatch.setattr(table, "train", fake)
    out = tmp_path / "t"
    argv = ["--tasks", "sst2", "--methods", "ssmlora@8,lora@8,lora+sparse@8,lora@4", "--ranks", "2",
            "--seeds", "0,1,2", "--jobs", "2", "--out", str(out)]
    table.main(argv)
    assert len(calls) == 12
    sparse = [c for c in calls if "--sparse" in c]
    assert len(sparse) == 3 and all(c[c.index("--rank") + 1] == "8" and c[c.index("--method") + 1] == "lora"
                                    for c in sparse)
    assert (out / "sst2" / "lora-sparse-r8" / "seed2" / "results.json").exists()
    assert sorted(c[c.index("--rank") + 1] for c in calls if "--sparse" not in c) == ["4"] * 3 + ["8"] * 6
    text = (out / "table.md").read_text()
    assert "| lora+sparse | 8 | 10 | 80.33 ± 1.15 (3) |" in text and "| lora | 4 | 10 | 69.00 ± 1.00 (3) |" in text
    assert "| sst2 | lora+sparse r8 | 1 | 81.00 | 30 | 2.0 |" in text
    # the same +2.00 in every seed is beyond seed noise; +1, 0, +1 (t = 2.0 with 2 degrees of freedom) is not
    assert "| sst2 | lora r8 | 0: +2.00, 1: +2.00, 2: +2.00 | +2.00 ± 0.00 | +inf | yes (|t| > 4.303) |" in text
    assert ("| sst2 | lora+sparse r8 | 0: +1.00, 1: +0.00, 2: +1.00 | +0.67 ± 0.58 | +2.00 | no (|t| ≤ 4.303) |"
            in text)
    assert "| ssmlora r8 | 81.00 ± 1.00 | 74.00 ± 1.00 |" in text and "| dev examples | 5 | 3 |" in text
    # and the same paired differences bin by bin: the long bin's gap is its own, not the overall one
    assert "| lora r8 | +2.00 ± 0.00 (+inf)* | +5.00 ± 0.00 (+inf)* |" in text
    assert "| lora+sparse r8 | +0.67 ± 0.58 (+2.00) | +3.67 ± 0.58 (+11.00)* |" in text
    # a dense LoRA run where the grid expects the sparse one is refused, as any run in the wrong cell
    results = out / "sst2" / "lora-sparse-r8" / "seed0" / "results.json"
    r = json.loads(results.read_text())
    results.write_text(json.dumps({**r, "adapters": {"sparse": False}}))
    with pytest.raises(SystemExit, match=r"is a run of method lora \(dense\), rank 8, seed 0, not the lora\+sparse"):
        table.main(argv)
    for bad, message in [(["--methods", "bitfit@4"], "bitfit@4: only ssmlora, lora, qlora, mixlora take"),
                         (["--methods", "lora+sparse", "--", "--dense"], "--sparse or --dense after -- would"),
                         (["--methods", "lora@0"], "--ranks must be positive integers, got 0"),
                         (["--methods", "lora+wide"], r"unknown method lora\+wide"),
                         (["--jobs", "0"], "--jobs must be at least 1")]:
        with pytest.raises(SystemExit, match=f"^error: {message}"):
            table.main(["--tasks", "sst2", "--out", str(tmp_path / "u")] + bad)
