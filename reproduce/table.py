"""
Run a paper-style table: every (task, method, rank, seed) as its own `python train.py` process, then the table.

    python -m reproduce.table --tasks sst2,mrpc --methods lora,ssmlora --ranks 4,8 --seeds 0,1 --out tables/t1 \
        -- --model roberta-base --device cuda          # everything after -- goes to every train.py run

Each run writes into OUT/<task>/<method>[-r<rank>]/seed<seed>. A run whose results.json exists (with the settings
this command gives it) is skipped; one with a checkpoint.pt is continued with --resume; so the same command, run
again, finishes what an interrupted one left.
Ctrl-C is passed to the running train.py, which stops after its step and saves it (a second Ctrl-C: at once).
QLoRA and MixLoRA get their own papers' targets (ssmlora.DEFAULT_TARGETS, written into each command) unless
--targets is passed after --. Flags after -- that a method does not take (the adapter flags for bitfit and full, --state for all but ssmlora) are left out of its runs.
Writes OUT/table.md (one row per method and rank, one column per task: the task's selection metric on its first dev
split, x100, mean ± standard deviation over the seeds, and the trained parameter count as the paper counts it),
OUT/runs.json (every run) and with --plot OUT/table.png (the metric against the rank, per method and task).
"""
import argparse
import json
import signal
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # where train.py is
TRAIN = [sys.executable, "train.py"]  # run in ROOT
RANKED = ("ssmlora", "lora", "qlora", "mixlora")  # methods that take --rank; bitfit and full run once per seed
METHODS = RANKED + ("bitfit", "full")
# train.py flags (after --) that only some methods take: train.py refuses them for the others, so each run gets
# those of its own method, as --ranks goes to the low-rank methods only. (flag: takes a value)
ADAPTER_FLAGS = {"--alpha": True, "--dropout": True, "--targets": True, "--sparse": False, "--dense": False}
SSMLORA_FLAGS = {"--state": True}
GRID_FLAGS = ("--task", "--method", "--rank", "--seed", "--out", "--resume", "--eval-only", "--dry-run")


class TableError(ValueError):
    """A grid that cannot run, or a finished run that cannot be read: printed as one error line."""


def get_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m reproduce.table", description=__doc__.split("\n\n")[0])
    p.error = lambda message: sys.exit(f"error: {message} (see python -m reproduce.table --help)")  # one line
    p.add_argument("--tasks", required=True, help="comma-separated GLUE / SuperGLUE task names")
    p.add_argument("--methods", default="lora,ssmlora", help=f"comma-separated, of {', '.join(METHODS)} "
                   "(default: lora,ssmlora)")
    p.add_argument("--ranks", default="8", help="comma-separated positive integers (default: 8); ignored by "
                   "bitfit and full")
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
    for flag, values in (("--tasks", args.tasks), ("--methods", args.methods), ("--ranks", args.ranks),
                         ("--seeds", args.seeds)):  # a seed listed twice would count one run as two
        twice = sorted({v for v in values if values.count(v) > 1}, key=values.index)
        if twice:
            p.error(f"{flag} lists {', '.join(map(str, twice))} more than once: list each once")
    if any(r < 1 for r in args.ranks):
        p.error(f"--ranks must be positive integers, got {', '.join(str(r) for r in args.ranks if r < 1)}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    bad = [f for f in GRID_FLAGS if any(x == f or x.startswith(f + "=") for x in passed)]
    if bad:
        p.error(f"{', '.join(bad)} after -- would fight the grid: the table sets the task, method, rank, seed, "
                f"output and resumption of each run, and each must train and leave its results.json")
    args.train_flags = passed
    return args


def check_before(args):
    """What would fail only after hours of runs, checked before the first: the task names, the output folder,
    matplotlib for --plot, and every results.json already there (a broken one is named, with what to do)."""
    from tasks import get_task  # imports torch: here, not at the top, so --help stays quick
    for t in args.tasks:
        get_task(t)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TableError(f"--out {out} is a file: pass a folder")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise TableError("--plot needs the matplotlib package (pip install matplotlib), or leave --plot out") \
                from None
    for run in grid(args):
        if (folder(args, *run) / "results.json").exists():
            read_results(folder(args, *run), run)
            same_settings(folder(args, *run), command(args, *run))


def same_settings(out, cmd):
    """A run done before counts only if it had the settings this command gives it (--epochs 1 then, 10 now would
    mix the two in one table): those a resumed run must keep (training.resume.RUN_KEYS), as train.py parses them."""
    from training.flags import parse
    from training.resume import RUN_KEYS
    path = out / "results.json"
    then = json.loads(path.read_text()).get("args") or {}
    now = vars(parse(cmd[len(TRAIN):]))
    if now["targets"] is None:  # the method's default for the model's family, which train.py records once built
        from ssmlora import default_targets
        defaults = {None, *(",".join(default_targets(now["method"], family)) for family in (None, "mamba"))}
        now["targets"] = then.get("targets") if then.get("targets") in defaults else "the method's default"
    differ = [k for k in RUN_KEYS if k in then and k in now and then[k] != now[k]]
    if differ:
        was = ", ".join(f"{k} {then[k]!r} (now {now[k]!r})" for k in differ[:3])
        raise TableError(f"{path} was trained with {was}: use another --out for these settings, or remove that run "
                         f"folder to train it again")


def command(args, task, method, rank, seed):
    """The train.py command of one run (without --resume)."""
    out = folder(args, task, method, rank, seed)
    flags = flags_for(method, args.train_flags)
    given = any(x.split("=", 1)[0] == "--targets" for x in flags)
    from ssmlora import DEFAULT_TARGETS  # train.py's own defaults, spelled out in the command (torch: not at the top)
    targets = [] if given or method not in DEFAULT_TARGETS else ["--targets", ",".join(DEFAULT_TARGETS[method])]
    return [*TRAIN, "--task", task, "--method", method, "--seed", str(seed), "--out", str(out.resolve()),
            *([] if rank is None else ["--rank", str(rank)]), *targets, *flags]


def grid(args):
    """(task, method, rank or None, seed) of every run, in the order they run."""
    for task in args.tasks:
        for method in args.methods:
            for rank in (args.ranks if method in RANKED else [None]):
                for seed in args.seeds:
                    yield task, method, rank, seed


def folder(args, task, method, rank, seed):
    return Path(args.out) / task / (method + ("" if rank is None else f"-r{rank}")) / f"seed{seed}"


def read_results(out, run):
    """A finished run's record: (metric, split, value, params, trainable) from its results.json; one that is cut
    off, or is not the run the grid expects there, is a TableError naming it."""
    path = out / "results.json"
    task, method, rank, seed = run
    try:
        r = json.loads(path.read_text())
        split = next(k for k, v in r["best"].items() if isinstance(v, dict) and k != "by_length")  # the selection one
        params = r["params"]
        record = dict(metric=r["select"], split=split, value=r["best"][split][r["select"]],
                      params=params[{"bitfit": "biases", "full": "body"}.get(method, "adapter")],
                      trainable=params["trainable"])
        ran = (r.get("method", method), r.get("rank", rank), (r.get("args") or {}).get("seed", seed))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration) as e:  # ValueError: bad JSON
        raise TableError(f"{path} is cut off or not a train.py results file ({type(e).__name__}: {e}); remove it "
                         f"(and its checkpoint.pt to start that run over) and run the same command again") from None
    if ran != (method, rank, seed):  # a folder renamed or copied: its numbers would land in the wrong cell
        raise TableError(f"{path} is a run of method {ran[0]}, rank {ran[1]}, seed {ran[2]}, not the {method}, "
                         f"rank {rank}, seed {seed} the grid expects there: use another --out")
    return record


def train(cmd, out):
    """Run one train.py; returns its exit code. It runs in its own process group, so a Ctrl-C at the terminal
    reaches only us: we pass each one on (train.py stops after its step and saves it; a second stops it at once),
    and a SIGTERM too, wait for it to end, then raise KeyboardInterrupt naming what it left."""
    child, got = None, []

    def forward(signum, frame):
        got.append(signum)
        if child is not None:
            child.send_signal(signum)
    try:
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay as they are
        previous = {}
    try:
        child = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        for signum in got:  # one that came while it was starting
            child.send_signal(signum)
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if got:
        saved = "its checkpoint.pt is saved" if (out / "checkpoint.pt").exists() else "it had no checkpoint yet"
        raise KeyboardInterrupt(f"{out} stopped ({saved})")
    return code


def flags_for(method, flags):
    """The flags after -- that this method takes: the adapter flags go to the low-rank methods, --state to SSMLoRA."""
    drop = ({} if method in RANKED else ADAPTER_FLAGS) | ({} if method == "ssmlora" else SSMLORA_FLAGS)
    out, skip = [], False
    for x in flags:
        name = x.split("=", 1)[0]
        if skip:
            skip = False
        elif name in drop:
            skip = drop[name] and "=" not in x  # its value is the next word
        else:
            out.append(x)
    return out


def run_one(task, method, rank, seed, args):
    """One run as its own process; returns its record for runs.json."""
    out = folder(args, task, method, rank, seed)
    record = dict(task=task, method=method, rank=rank, seed=seed, out=str(out))
    if (out / "results.json").exists():
        record["status"] = "done before"
    else:
        cmd = command(args, task, method, rank, seed)
        if (out / "checkpoint.pt").exists():
            cmd.append("--resume")
        print(f"[table] {' '.join(cmd[1:])}", flush=True)
        record["command"] = cmd[1:]  # runs.json says what each run was given (its targets among them)
        code = train(cmd, out)
        record["status"] = "ran" if code == 0 else f"failed (exit {code})"
        if code:
            return record
    try:
        record.update(read_results(out, (task, method, rank, seed)))
    except TableError as e:  # a run that just ended with a broken results.json: a failure, not a value
        record["status"] = f"failed ({e})"
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
    return "\n".join(lines) + "\n\nmean ± std over seeds of the best dev metric x100; (n): runs that finished\n"


def plot(records, args, path):
    from matplotlib.figure import Figure  # only when asked: the table needs no plotting library; no pyplot state
    fig = Figure(figsize=(4 * len(args.tasks), 3.2))
    axes = fig.subplots(1, len(args.tasks), squeeze=False)
    for ax, task in zip(axes[0], args.tasks):
        for method in args.methods:
            pts = [(rank, [100 * r["value"] for r in records if "value" in r and r["task"] == task
                           and r["method"] == method and r["rank"] == rank]) for rank in args.ranks]
            pts = [(rank, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for rank, v in pts if v]
            if pts and method in RANKED:
                ax.errorbar(*zip(*[(p[0], p[1]) for p in pts]), yerr=[p[2] for p in pts], marker="o", label=method,
                            capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.ranks, [str(r) for r in args.ranks])  # 1, 2, 4, 8: not 2^0 ... 2^3
        ax.minorticks_off()
        ax.set_xlabel("rank")
        metric = next((r["metric"] for r in records if "value" in r and r["task"] == task), "metric")
        ax.set_ylabel(f"dev {metric} x100 (mean ± std over seeds)")
        ax.set_title(task)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def main(argv=None):
    args = get_args(argv)
    try:
        check_before(args)
        records = [run_one(*run, args) for run in grid(args)]
    except (ValueError, OSError) as e:  # TableError, an unknown task: one line
        sys.exit(f"error: {e}")
    except SystemExit as e:  # train.py's own flag check (same_settings), one line already
        sys.exit(f"{e.code} (after -- in python -m reproduce.table)" if isinstance(e.code, str) else e.code)
    except KeyboardInterrupt as e:
        sys.exit(f"interrupted{f': {e}' if str(e) else ''}; run the same command again to continue (finished runs "
                 f"are skipped, a run with a checkpoint.pt gets --resume)")
    out = Path(args.out)
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
