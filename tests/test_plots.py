"""reproduce.plots on CPU: files written, axes labelled, and the one-line error when matplotlib is missing."""
import builtins
import json

import pytest

pytest.importorskip("matplotlib")
from reproduce import plots  # noqa: E402
from training.cli import UserError  # noqa: E402


def bench_result():
    rows = [dict(mode=mode, batch=1, length=T, ms={"none": T * 0.1, "lora": T * 0.12, "ssmlora": T * 0.15},
                 peak_mb={"none": 10.0 + T, "lora": 11.0 + T, "ssmlora": None if mode == "train" else 12.0 + T})
            for mode in ("inference", "train") for T in (8, 16, 32)]
    return dict(settings=dict(model="tiny", device="cpu", dtype="fp32", rank=8), results=rows)


def write_run(folder, select="accuracy"):
    folder.mkdir()
    lines = [{"epoch": e, "step": 10 * e, "lr": 1e-4, "train_loss": 1.0 / e, "validation": {"accuracy": 0.5 + e / 10,
              "f1": 0.4 + e / 10}} for e in (1, 2, 3)]
    (folder / "eval.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (folder / "results.json").write_text(json.dumps({"select": select}))
    return folder


def test_bench_plot_has_labelled_axes_and_a_line_per_method(tmp_path):
    fig = plots.plot_bench(bench_result(), tmp_path / "b.png")
    ax = fig.axes
    assert len(ax) == 4 and [a.get_xlabel() for a in ax] == ["sequence length (tokens)"] * 4
    assert [a.get_ylabel() for a in ax] == ["median latency (ms)", "median latency (ms)", "peak memory (MB)",
                                            "peak memory (MB)"]
    assert [line.get_label() for line in ax[0].lines] == ["none", "lora", "ssmlora"]
    assert list(ax[0].lines[1].get_ydata()) == pytest.approx([0.96, 1.92, 3.84])
    assert len(ax[3].lines) == 2  # training step: ssmlora's memory was not measured, so no line
    assert ax[2].get_ylim()[0] == ax[3].get_ylim()[0] == 0  # memory from zero: 1 MB in 480 must not look large
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "b.png").stat().st_size > 5000


def test_run_plot_from_eval_jsonl_and_the_command(tmp_path, capsys):
    run = write_run(tmp_path / "run", select="f1")
    fig = plots.plot_run(run)
    loss, metric = fig.axes
    assert (loss.get_xlabel(), metric.get_xlabel()) == ("optimizer step", "optimizer step")
    assert loss.get_ylabel().startswith("training loss") and metric.get_ylabel() == "dev f1"
    assert list(metric.lines[0].get_xdata()) == [10, 20, 30]
    assert list(metric.lines[0].get_ydata()) == pytest.approx([0.5, 0.6, 0.7])
    plots.main([str(run / "eval.jsonl")])  # the log itself: its run folder
    assert (run / "curves.png").stat().st_size > 5000 and "curves.png" in capsys.readouterr().out
    (tmp_path / "bench.json").write_text(json.dumps(bench_result()))
    plots.main([str(tmp_path / "bench.json"), "--out", str(tmp_path / "x.png")])
    assert (tmp_path / "x.png").stat().st_size > 5000
    drawn = (run / "curves.png").read_bytes()
    for argv, message in (([str(run)], f"the picture {run / 'curves.png'} already exists: choose another file"),
                          ([str(run), "--out", str(tmp_path / "x")], f"--out {tmp_path / 'x'}: the picture is a PNG; "
                           "name it .png")):  # matplotlib wrote x.png and said x
        with pytest.raises(SystemExit) as e:
            plots.main(argv)
        assert e.value.code.startswith(f"error: {message}")
    assert (run / "curves.png").read_bytes() == drawn and not (tmp_path / "x").exists()


def test_run_plot_draws_the_best_evaluation_by_input_length(tmp_path):
    run = write_run(tmp_path / "run", select="f1")
    bins = [{"bin": "0-200", "n": 3, "f1": 0.5}, {"bin": "200-400", "n": 0}, {"bin": "400+", "n": 1, "f1": 0.25}]
    line = {"epoch": 4, "step": 40, "train_loss": 0.2, "validation": {"f1": 0.9}, "by_length": {"validation": bins}}
    with open(run / "eval.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    loss, metric, by_length = plots.plot_run(run).axes
    assert [x.get_text() for x in by_length.get_xticklabels()] == ["0-200\n(3)", "200-400\n(0)", "400+\n(1)"]
    assert list(by_length.lines[0].get_ydata()) == pytest.approx([0.5, float("nan"), 0.25], nan_ok=True)
    assert len(metric.lines) == 1 and by_length.get_ylabel() == "f1, best evaluation"


def test_missing_matplotlib_and_bad_input_are_one_line_errors(tmp_path, monkeypatch):
    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(UserError, match=r"^plotting needs the matplotlib package \(pip install matplotlib\)$"):
        plots.plot_run(write_run(tmp_path / "run"))
    monkeypatch.undo()
    with pytest.raises(SystemExit, match="^error: no eval.jsonl in"):
        plots.main([str(tmp_path)])
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a bench.py result"):
        plots.main([str(tmp_path / "other.json")])


def test_broken_json_names_the_file_and_line(tmp_path):
    """A run killed while writing eval.jsonl, a cut results.json or bench.json: the file (and line) is named, not
    only "Unterminated string at line 1 column 101" (issue 29); a bench row without its fields is no KeyError."""
    run = write_run(tmp_path / "run")
    log = run / "eval.jsonl"
    log.write_text(log.read_text()[:-30])
    with pytest.raises(SystemExit, match=f"^error: {log} line 3 is not valid JSON .*cut off. Remove that line"):
        plots.main([str(run)])
    write_run(tmp_path / "run2")
    (tmp_path / "run2" / "results.json").write_text('{"select": "acc')
    with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'run2' / 'results.json'} is not valid JSON "
                                         r"\(Unterminated string.*line 1"):
        plots.main([str(tmp_path / "run2")])
    (tmp_path / "bench.json").write_text(json.dumps(bench_result())[:200])
    with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'bench.json'} is not valid JSON"):
        plots.main([str(tmp_path / "bench.json")])
    result = bench_result()
    del result["results"][2]["ms"]
    (tmp_path / "bench.json").write_text(json.dumps(result))
    with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'bench.json'}: bench.py result row 2 lacks one of"):
        plots.main([str(tmp_path / "bench.json")])
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="list.json holds a JSON list, not an object"):
        plots.main([str(tmp_path / "list.json")])


def test_by_length_over_seeds_is_the_mean_and_spread_of_each_row(tmp_path):
    """reproduce.table's Figure 2: each row's metric per length bin, mean over its seeds with their spread."""
    def record(method, rank, values):
        return dict(method=method, rank=rank, metric="accuracy", by_length=[
            {"bin": "0-100", "n": 7, "accuracy": values[0]}, {"bin": "100+", "n": 5, "accuracy": values[1]}])
    records = [record("ssmlora", 8, (0.8, 0.6)), record("ssmlora", 8, (0.6, 0.6)), record("lora+sparse", 8, (0.7, 0.5))]
    fig = plots.plot_by_length(records, tmp_path / "f.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0-100\n(7)", "100+\n(5)"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ssmlora r8 (2 seeds)", "lora+sparse r8 (1 seed)"]
    line = ax.get_lines()[0]
    assert list(line.get_ydata()) == pytest.approx([70.0, 60.0])  # the mean of the two seeds, x100
    assert (tmp_path / "f.png").stat().st_size > 1000
