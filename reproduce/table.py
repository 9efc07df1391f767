"""
Run a paper-style table: every (task, method, rank, seed) as its own `python train.py` process, then the table.

    python -m reproduce.table --tasks sst2,mrpc --methods lora,ssmlora --ranks 4,8 --seeds 0,1 --out tables/t1 \
        -- --model roberta-base --device cuda          # everything after -- goes to every train.py run

Each run writes into OUT/<task>/<method>[-r<rank>]/seed<seed>. A run whose results.json exists is skipped; one with a
checkpoint.pt is continued with --resume; so the same command, run again, finishes what an interrupted one left.
Writes OUT/table.md (one row per method and rank, one column per task: the task's selection metric on its first dev
split, x100, mean ± standard deviation over the seeds, and the trained parameter count as the paper counts it),
OUT/runs.json (every run) and with --plot OUT/table.png (the metric against the rank, per method and task).
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # where train.py is
RANKED = ("ssmlora", "lora", "qlora", "mixlora")  # methods that take --rank; bitfit and full run once per seed


def get_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m reproduce.table", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", required=True, help="comma-separated GLUE / SuperGLUE task names")
    p.add_argument("--methods", default="lora,ssmlora", help="comma-separated (default: lora,ssmlora)")
    p.add_argument("--ranks", default="8", help="comma-separated (default: 8); ignored by bitfit and full")
    p.add_argument("--seeds", default="0", help="comma-separated (default: 0)")
    p.add_argument("--out", default="tables/table", help="folder for the runs and the table (default: tables/table)")
    p.add_argument("--plot", action="store_true", help="also draw OUT/table.png (needs matplotlib)")
    args = p.parse_args(argv)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]
    args.tasks, args.methods = split(args.tasks), split(args.methods)
    try:
        args.ranks, args.seeds = [int(r) for r in split(args.ranks)], [int(s) for s in split(args.seeds)]
    except ValueError:
        p.error("--ranks and --seeds are comma-separated integers")
    if not (args.tasks and args.methods and args.ranks and args.seeds):
        p.error("--tasks, --methods, --ranks and --seeds each need at least one value")
    bad = [f for f in ("--task", "--method", "--rank", "--seed", "--out", "--resume") if f in passed]
    if bad:
        p.error(f"{', '.join(bad)} after -- would fight the grid: the table sets them for each run")
    args.train_flags = passed
    return args


def grid(args):
    """(task, method, rank or None, seed) of every run, in the order they run."""
    for task in args.tasks:
        for method in args.methods:
            for rank in (args.ranks if method in RANKED else [None]):
                for seed in args.seeds:
                    yield task, method, rank, seed


def run_one(task, method, rank, seed, args):
    """One run as its own process; returns its record for runs.json."""
    out = Path(args.out) / task / (method + (f"-r{rank}" if rank else "")) / f"seed{seed}"
    record = dict(task=task, method=method, rank=rank, seed=seed, out=str(out))
    if (out / "results.json").exists():
        record["status"] = "done before"
    else:
        cmd = [sys.executable, "train.py", "--task", task, "--method", method, "--seed", str(seed), "--out",
               str(out.resolve()), *(["--rank", str(rank)] if rank else []), *args.train_flags]
        if (out / "checkpoint.pt").exists():
            cmd.append("--resume")
        print(f"[table] {' '.join(cmd[1:])}", flush=True)
        code = subprocess.run(cmd, cwd=ROOT).returncode
        record["status"] = "ran" if code == 0 else f"failed (exit {code})"
        if code:
            return record
    r = json.loads((out / "results.json").read_text())
    # the first dev split: the selection one
    split = next(k for k, v in r["best"].items() if isinstance(v, dict) and k != "by_length")
    params = r["params"]
    record.update(metric=r["select"], split=split, value=r["best"][split][r["select"]],
                  params=params[{"bitfit": "biases", "full": "body"}.get(method, "adapter")],
                  trainable=params["trainable"])
    return record


def mean_std(values):
    if not values:
        return "–"
    m = 100 * statistics.fmean(values)
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ± {100 * statistics.stdev(values):.2f}"


def table(records, args):
    """The markdown table: rows (method, rank), columns tasks; params as the paper counts them."""
    done = [r for r in records if "value" in r]
    metric = {t: next((r["metric"] for r in done if r["task"] == t), "") for t in args.tasks}
    head = "| method | rank | params | " + " | ".join(f"{t} {metric[t]}" for t in args.tasks) + " |"
    lines = [head, "|" + "---|" * (3 + len(args.tasks))]
    rows = dict.fromkeys((r["method"], r["rank"]) for r in records)
    for method, rank in rows:
        mine = [r for r in done if (r["method"], r["rank"]) == (method, rank)]
        params = sorted({r["params"] for r in mine})
        cells = [mean_std([r["value"] for r in mine if r["task"] == t]) + f" ({sum(r['task'] == t for r in mine)})"
                 for t in args.tasks]
        lines.append(f"| {method} | {rank or '–'} | {'/'.join(f'{p:,}' for p in params) or '–'} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nmean ± std over seeds of the best dev metric x100; (n): runs that finished\n"


def plot(records, args, path):
    import matplotlib  # only when asked: the table needs no plotting library
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(args.tasks), figsize=(4 * len(args.tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], args.tasks):
        for method in args.methods:
            pts = [(rank, [100 * r["value"] for r in records if "value" in r and r["task"] == task
                           and r["method"] == method and r["rank"] == rank]) for rank in args.ranks]
            pts = [(rank, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for rank, v in pts if v]
            if pts and method in RANKED:
                ax.errorbar(*zip(*[(p[0], p[1]) for p in pts]), yerr=[p[2] for p in pts], marker="o", label=method,
                            capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank")
        ax.set_title(task)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    args = get_args(argv)
    out = Path(args.out)
    records = [run_one(*run, args) for run in grid(args)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps(records, indent=2))
    text = table(records, args)
    (out / "table.md").write_text(text)
    print(text)
    if args.plot:
        plot(records, args, out / "table.png")
        print(f"plot in {out / 'table.png'}")
    failed = [r for r in records if r["status"].startswith("failed")]
    if failed:
        sys.exit(f"error: {len(failed)} of {len(records)} runs failed, first: {failed[0]['out']} "
                 f"({failed[0]['status']}); rerun the same command to retry them")


if __name__ == "__main__":
    main()
