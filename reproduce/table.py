"""
Run a paper-style table: every (task, method, rank, seed) as its own `python train.py` process, then the table.

    python -m reproduce.table --tasks sst2,mrpc --methods lora,ssmlora --ranks 4,8 --seeds 0,1 --out tables/t1 \
        -- --model roberta-base --device cuda          # everything after -- goes to every train.py run
    python -m reproduce.table --tasks sst2 --methods ssmlora@8,lora@8,lora+sparse@8,lora@4 --jobs 2 ...

A method may carry its insertion (+sparse: SSMLoRA's layers, +dense: every layer) and its own rank (@4, instead of
--ranks), so one table holds e.g. LoRA on SSMLoRA's sparse layers, or LoRA at SSMLoRA's parameter budget.
Each run writes into OUT/<task>/<method>[-<insertion>][-r<rank>]/seed<seed>. A run whose results.json exists (with
the settings this command gives it) is skipped; one with a checkpoint.pt is continued with --resume; so the same
command, run again, finishes what an interrupted one left. --jobs N runs N at a time (each then writes its output to
its folder's train.log; give each run its threads with --threads after --).
Ctrl-C is passed to the running train.py processes, which stop after their step and save it (a second: at once).
QLoRA and MixLoRA get their own papers' targets (ssmlora.DEFAULT_TARGETS, written into each command) unless
--targets is passed after --. Flags after -- that a method does not take (the adapter flags for bitfit and full,
--state for all but ssmlora) are left out of its runs.
Writes OUT/table.md: one row per method and rank, one column per task (the task's selection metric on its first dev
split, x100, mean ± standard deviation over the seeds, and the trained parameter count as the paper counts it); then
every run's value, steps and minutes; each row's difference from the first row, seed by seed, with a paired t-test;
and the metric by input length where the runs report it (--length-bins). Also OUT/runs.json (every run) and with
--plot OUT/table.png (the metric against the rank) and OUT/by-length.png (against input length, the paper's Fig. 2).
"""
import argparse
import json
import math
import re
import signal
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # where train.py is
TRAIN = [sys.executable, "train.py"]  # run in ROOT
RANKED = ("ssmlora", "lora", "qlora", "mixlora")  # methods that take --rank; bitfit and full run once per seed
METHODS = RANKED + ("bitfit", "full")
ITEM = re.compile(r"(?P<method>[a-z]+)(?:\+(?P<insertion>sparse|dense))?(?:@(?P<rank>-?\d+))?")  # lora+sparse@4
# train.py flags (after --) that only some methods take: train.py refuses them for the others, so each run gets
# those of its own method, as --ranks goes to the low-rank methods only. (flag: takes a value)
ADAPTER_FLAGS = {"--alpha": True, "--dropout": True, "--targets": True, "--sparse": False, "--dense": False}
SSMLORA_FLAGS = {"--state": True}
GRID_FLAGS = ("--task", "--method", "--rank", "--seed", "--out", "--resume", "--eval-only", "--dry-run",
              "--trace-gradients")
# Two-sided 95% points of Student's t with 1 ... 10 degrees of freedom (the paired test over a few seeds).
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


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
                   "(default: lora,ssmlora); a low-rank method may add +sparse or +dense and @RANK (lora+sparse@8)")
    p.add_argument("--ranks", default="8", help="comma-separated positive integers (default: 8); ignored by "
                   "bitfit and full, and by a method given with its own @RANK")
    p.add_argument("--seeds", default="0", help="comma-separated (default: 0)")
    p.add_argument("--out", default="tables/table", help="folder for the runs and the table (default: tables/table)")
    p.add_argument("--jobs", type=int, default=1, help="train.py runs at a time (default: 1)")
    p.add_argument("--plot", action="store_true", help="also draw OUT/table.png and OUT/by-length.png (matplotlib)")
    args = p.parse_args(argv)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]
    args.tasks, args.methods = split(args.tasks), split(args.methods)
    try:
        args.ranks, args.seeds = [int(r) for r in split(args.ranks)], [int(s) for s in split(args.seeds)]
    except ValueError:
        p.error("--ranks and --seeds are comma-separated integers")
    if not (args.tasks and args.methods and args.ranks and args.seeds):
        p.error("--tasks, --methods, --ranks and --seeds each need at least one value")
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    for flag, values in (("--tasks", args.tasks), ("--methods", args.methods), ("--ranks", args.ranks),
                         ("--seeds", args.seeds)):  # a seed listed twice would count one run as two
        twice = sorted({v for v in values if values.count(v) > 1}, key=values.index)
        if twice:
            p.error(f"{flag} lists {', '.join(map(str, twice))} more than once: list each once")
    items = [ITEM.fullmatch(m) for m in args.methods]
    unknown = [m for m, item in zip(args.methods, items) if not item or item["method"] not in METHODS]
    if unknown:
        p.error(f"unknown method {', '.join(unknown)}: choose from {', '.join(METHODS)}, a low-rank one optionally "
                "with +sparse or +dense and @RANK")
    own = [int(i["rank"]) for i in items if i["rank"] is not None]
    if any(r < 1 for r in args.ranks + own):
        p.error(f"--ranks must be positive integers, got {', '.join(str(r) for r in args.ranks + own if r < 1)}")
    fixed = [m for m, i in zip(args.methods, items) if (i["insertion"] or i["rank"]) and i["method"] not in RANKED]
    if fixed:
        p.error(f"{', '.join(fixed)}: only {', '.join(RANKED)} take +sparse, +dense or @RANK")
    bad = [f for f in GRID_FLAGS if any(x == f or x.startswith(f + "=") for x in passed)]
    if bad:
        p.error(f"{', '.join(bad)} after -- would fight the grid: the table sets the task, method, rank, seed, "
                f"output and resumption of each run, and each must train and leave its results.json"
                + ("; one --trace-gradients file cannot take every run's steps" * ("--trace-gradients" in bad)))
    if any(i["insertion"] for i in items) and any(x in ("--sparse", "--dense") for x in passed):
        p.error("--sparse or --dense after -- would override a method's own +sparse or +dense: give it there only")
    args.train_flags = passed
    return args


def parts(name):
    """(method, insertion or None) of a row's name: lora+sparse -> (lora, sparse)."""
    method, _, insertion = name.partition("+")
    return method, insertion or None


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


def command(args, task, name, rank, seed):
    """The train.py command of one run (without --resume)."""
    out = folder(args, task, name, rank, seed)
    method, insertion = parts(name)
    flags = flags_for(method, args.train_flags)
    given = any(x.split("=", 1)[0] == "--targets" for x in flags)
    from ssmlora import DEFAULT_TARGETS  # train.py's own defaults, spelled out in the command (torch: not at the top)
    targets = [] if given or method not in DEFAULT_TARGETS else ["--targets", ",".join(DEFAULT_TARGETS[method])]
    return [*TRAIN, "--task", task, "--method", method, "--seed", str(seed), "--out", str(out.resolve()),
            *([] if rank is None else ["--rank", str(rank)]), *([f"--{insertion}"] if insertion else []), *targets,
            *flags]


def grid(args):
    """(task, method name, rank or None, seed) of every run, in the order they run."""
    for task in args.tasks:
        for item in args.methods:
            name, _, own = item.partition("@")
            ranks = [int(own)] if own else args.ranks if parts(name)[0] in RANKED else [None]
            for rank in ranks:
                for seed in args.seeds:
                    yield task, name, rank, seed


def folder(args, task, name, rank, seed):
    return Path(args.out) / task / (name.replace("+", "-") + ("" if rank is None else f"-r{rank}")) / f"seed{seed}"


def read_results(out, run):
    """A finished run's record (metric, split, value, params, trainable, steps, seconds, by_length) from its
    results.json; one that is cut off, or is not the run the grid expects there, is a TableError naming it."""
    path = out / "results.json"
    task, name, rank, seed = run
    method, insertion = parts(name)
    try:
        r = json.loads(path.read_text())
        split = next(k for k, v in r["best"].items() if isinstance(v, dict) and k != "by_length")  # the selection one
        params = r["params"]
        record = dict(metric=r["select"], split=split, value=r["best"][split][r["select"]],
                      params=params[{"bitfit": "biases", "full": "body"}.get(method, "adapter")],
                      trainable=params["trainable"], steps=r.get("steps"),
                      seconds=sum(r.get("epoch_seconds") or []) or None,
                      by_length=(r.get("by_length") or {}).get(split))
        sparse = (r.get("adapters") or {}).get("sparse")
        ran = (r.get("method", method), r.get("rank", rank), (r.get("args") or {}).get("seed", seed),
               insertion and ("sparse" if sparse else "dense"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration) as e:  # ValueError: bad JSON
        raise TableError(f"{path} is cut off or not a train.py results file ({type(e).__name__}: {e}); remove it "
                         f"(and its checkpoint.pt to start that run over) and run the same command again") from None
    if ran != (method, rank, seed, insertion):  # a folder renamed or copied: its numbers would land in another cell
        raise TableError(f"{path} is a run of method {ran[0]}{f' ({ran[3]})' if ran[3] else ''}, rank {ran[1]}, "
                         f"seed {ran[2]}, not the {name}, rank {rank}, seed {seed} the grid expects there: use "
                         "another --out")
    return record


class Signals:
    """The train.py processes running now. A Ctrl-C or SIGTERM to the table goes on to each of them (train.py stops
    after its step and saves it; a second stops it at once), and no run starts after it."""

    def __init__(self):
        self.children, self.got = set(), []

    def __enter__(self):
        try:
            self.previous = {s: signal.signal(s, self.forward) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: signals stay as they are
            self.previous = {}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def forward(self, signum, frame):  # runs in the main thread, between two bytecodes: no lock may be taken here
        self.got.append(signum)
        for child in tuple(self.children):
            child.forwarded += 1
            child.send_signal(signum)

    def run(self, cmd, out, log=None):
        """Run one train.py in its own process group (so a Ctrl-C at the terminal reaches only us); its exit code,
        or None if a signal came before it started."""
        before = len(self.got)
        if before:
            return None
        child = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=log,
                                 stderr=None if log is None else subprocess.STDOUT)
        child.forwarded = 0
        self.children.add(child)
        for signum in self.got[before + child.forwarded:]:  # those that came while it was starting
            child.send_signal(signum)
        try:
            return child.wait()
        finally:
            self.children.discard(child)


SIGNALS = Signals()


def train(cmd, out, log=None):
    """Run one train.py; returns its exit code, or None if a signal came before it started."""
    return SIGNALS.run(cmd, out, log)


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


def run_one(task, name, rank, seed, args):
    """One run as its own process; returns its record for runs.json."""
    out = folder(args, task, name, rank, seed)
    record = dict(task=task, method=name, rank=rank, seed=seed, out=str(out))
    if (out / "results.json").exists():
        record["status"] = "done before"
    else:
        cmd = command(args, task, name, rank, seed)
        if (out / "checkpoint.pt").exists():
            cmd.append("--resume")
        print(f"[table] {' '.join(cmd[1:])}", flush=True)
        record["command"] = cmd[1:]  # runs.json says what each run was given (its targets among them)
        if args.jobs == 1:
            code = train(cmd, out)
        else:  # side by side: each run's lines in its own log, not interleaved on the terminal
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "train.log", "a") as log:
                code = train(cmd, out, log)
        if code is None or SIGNALS.got:
            saved = "its checkpoint.pt is saved" if (out / "checkpoint.pt").exists() else "it had no checkpoint yet"
            record["status"] = "interrupted" if code is None else f"interrupted: {out} stopped ({saved})"
            return record
        print(f"[table] {out}: {'done' if code == 0 else f'failed (exit {code})'}", flush=True)
        record["status"] = "ran" if code == 0 else f"failed (exit {code})"
        if code:
            return record
    try:
        record.update(read_results(out, (task, name, rank, seed)))
    except TableError as e:  # a run that just ended with a broken results.json: a failure, not a value
        record["status"] = f"failed ({e})"
    return record


def run_all(args):
    """Every run of the grid, --jobs at a time; their records in the grid's order. KeyboardInterrupt after a signal,
    naming each run it stopped."""
    with SIGNALS:
        if args.jobs == 1:
            records = []
            for run in grid(args):
                records.append(run_one(*run, args))
                if SIGNALS.got:
                    break
        else:
            with ThreadPoolExecutor(args.jobs) as pool:
                records = list(pool.map(lambda run: run_one(*run, args), grid(args)))
    stopped = [r["status"].split(": ", 1)[1] for r in records if r["status"].startswith("interrupted: ")]
    if SIGNALS.got:
        SIGNALS.got.clear()
        raise KeyboardInterrupt("; ".join(stopped))
    return records


def mean_std(values):
    if not values:
        return "–"
    m = 100 * statistics.fmean(values)
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ± {100 * statistics.stdev(values):.2f}"


def rows_of(records):
    return list(dict.fromkeys((r["method"], r["rank"]) for r in records))


def row_label(method, rank):
    return method + ("" if rank is None else f" r{rank}")


def table(records, args):
    """The markdown table: rows (method, rank), columns tasks; params as the paper counts them. Then every run,
    the paired differences from the first row, and the metric by input length."""
    done = [r for r in records if "value" in r]
    metric = {t: next((r["metric"] for r in done if r["task"] == t), "") for t in args.tasks}
    head = "| method | rank | params | " + " | ".join(f"{t} {metric[t]}" for t in args.tasks) + " |"
    lines = [head, "|" + "---|" * (3 + len(args.tasks))]
    for method, rank in rows_of(records):
        mine = [r for r in done if (r["method"], r["rank"]) == (method, rank)]
        params = sorted({r["params"] for r in mine})
        cells = [mean_std([r["value"] for r in mine if r["task"] == t]) + f" ({sum(r['task'] == t for r in mine)})"
                 for t in args.tasks]
        lines.append(f"| {method} | {rank or '–'} | {'/'.join(f'{p:,}' for p in params) or '–'} | "
                     + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\nmean ± std over seeds of the best dev metric x100; (n): runs that finished\n"
    if len(args.seeds) > 1 or len(done) > 1:
        text += every_run(done, args) + paired(done, args) + by_length(done, args)
    return text


def every_run(done, args):
    lines = ["\n## Every run\n", "| task | method | seed | value | steps | minutes |", "|---|---|---|---|---|---|"]
    for r in done:
        minutes = "–" if r.get("seconds") is None else f"{r['seconds'] / 60:.1f}"
        lines.append(f"| {r['task']} | {row_label(r['method'], r['rank'])} | {r['seed']} | {100 * r['value']:.2f} | "
                     f"{r.get('steps') or '–'} | {minutes} |")
    return "\n".join(lines) + "\n\nvalue: the best dev metric x100; minutes: training time, evaluations left out\n"


def differences(done, task, first, other, value=lambda r: r["value"]):
    """{seed: first row's value minus the other's} over the seeds both rows finished, x100."""
    of = lambda row: {r["seed"]: value(r) for r in done if r["task"] == task and (r["method"], r["rank"]) == row}
    a, b = of(first), of(other)
    return {s: 100 * (a[s] - b[s]) for s in a if s in b and a[s] is not None and b[s] is not None}


def t_test(values):
    """(mean, std, t, Student's two-sided 95% point) of paired differences; beyond seed noise when |t| > the point."""
    mean, std = statistics.fmean(values), statistics.stdev(values)
    t = math.inf * (mean or 1) if std == 0 else mean / (std / math.sqrt(len(values)))
    return mean, std, t, T_95[min(len(values) - 1, len(T_95)) - 1]


def paired(done, args):
    """Each row's difference from the first, seed by seed (the same seed: the same split, data order and head init),
    with the paired t statistic."""
    rows = rows_of(done)
    if len(rows) < 2:
        return ""
    first = rows[0]
    lines = [f"\n## {row_label(*first)} minus each row, seed by seed\n",
             "| task | minus | per seed | mean ± std | t | beyond seed noise (95%) |", "|---|---|---|---|---|---|"]
    for task in args.tasks:
        for other in rows[1:]:
            d = differences(done, task, first, other)
            if not d:
                continue
            per_seed = ", ".join(f"{s}: {v:+.2f}" for s, v in d.items())
            if len(d) < 2:
                lines.append(f"| {task} | {row_label(*other)} | {per_seed} | {d.popitem()[1]:+.2f} | – | one seed |")
                continue
            mean, std, t, crit = t_test(list(d.values()))
            lines.append(f"| {task} | {row_label(*other)} | {per_seed} | {mean:+.2f} ± {std:.2f} | {t:+.2f} | "
                         f"{'yes (|t| >' if abs(t) > crit else 'no (|t| ≤'} {crit}) |")
    return "\n".join(lines) + "\n"


def by_length(done, args):
    """Per task whose runs report it: the metric (mean ± std over seeds, x100) in each bin of input tokens, then the
    first row minus each row in each bin, paired by seed (mean ± std, t; * beyond seed noise at 95%)."""
    text = ""
    for task in args.tasks:
        mine = [r for r in done if r["task"] == task and r.get("by_length")]
        if not mine:
            continue
        bins = [b["bin"] for b in mine[0]["by_length"]]
        metric = mine[0]["metric"]
        in_bin = lambda i: lambda r: r["by_length"][i].get(metric)
        lines = [f"\n## {task}: {metric} by input tokens (before any cut), mean ± std over seeds x100\n",
                 "| method | " + " | ".join(bins) + " |", "|---|" + "---|" * len(bins)]
        rows = rows_of(mine)
        for row in rows:
            runs = [r for r in mine if (r["method"], r["rank"]) == row]
            cells = [mean_std([in_bin(i)(r) for r in runs if in_bin(i)(r) is not None]) for i in range(len(bins))]
            lines.append(f"| {row_label(*row)} | " + " | ".join(cells) + " |")
        lines.append("| dev examples | " + " | ".join(str(b["n"]) for b in mine[0]["by_length"]) + " |")
        if len(rows) > 1:
            lines += [f"\n{row_label(*rows[0])} minus each row in each bin, paired by seed: mean ± std (t), "
                      "* beyond seed noise (95%)\n", "| minus | " + " | ".join(bins) + " |",
                      "|---|" + "---|" * len(bins)]
            for other in rows[1:]:
                cells = []
                for i in range(len(bins)):
                    d = list(differences(mine, task, rows[0], other, in_bin(i)).values())
                    if len(d) < 2:
                        cells.append(f"{d[0]:+.2f}" if d else "–")
                        continue
                    mean, std, t, crit = t_test(d)
                    cells.append(f"{mean:+.2f} ± {std:.2f} ({t:+.2f}){'*' if abs(t) > crit else ''}")
                lines.append(f"| {row_label(*other)} | " + " | ".join(cells) + " |")
        text += "\n".join(lines) + "\n"
    return text


def plot(records, args, path):
    from matplotlib.figure import Figure  # only when asked: the table needs no plotting library; no pyplot state
    fig = Figure(figsize=(4 * len(args.tasks), 3.2))
    axes = fig.subplots(1, len(args.tasks), squeeze=False)
    names = list(dict.fromkeys(r["method"] for r in records))
    for ax, task in zip(axes[0], args.tasks):
        for method in names:
            ranks = sorted({r["rank"] for r in records if r["method"] == method and r["rank"] is not None})
            pts = [(rank, [100 * r["value"] for r in records if "value" in r and r["task"] == task
                           and r["method"] == method and r["rank"] == rank]) for rank in ranks]
            pts = [(rank, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for rank, v in pts if v]
            if pts:
                ax.errorbar(*zip(*[(p[0], p[1]) for p in pts]), yerr=[p[2] for p in pts], marker="o", label=method,
                            capsize=3)
        ranks = sorted({r["rank"] for r in records if r["rank"] is not None})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])  # 1, 2, 4, 8: not 2^0 ... 2^3
        ax.minorticks_off()
        ax.set_xlabel("rank")
        metric = next((r["metric"] for r in records if "value" in r and r["task"] == task), "metric")
        ax.set_ylabel(f"dev {metric} x100")  # a longer label is cut off at this width
        ax.set_title(f"{task}: mean ± std over seeds")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def main(argv=None):
    args = get_args(argv)
    try:
        check_before(args)
        records = run_all(args)
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
        done = [r for r in records if r.get("by_length")]
        if done:
            from reproduce.plots import plot_by_length
            plot_by_length(done, out / "by-length.png")
            print(f"plot in {out / 'by-length.png'}")
    failed = [r for r in records if r["status"].startswith("failed")]
    if failed:
        sys.exit(f"error: {len(failed)} of {len(records)} runs failed, first: {failed[0]['out']} "
                 f"({failed[0]['status']}); rerun the same command to retry them")


if __name__ == "__main__":
    main()
