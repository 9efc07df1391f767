"""
Pictures of what the JSON says: bench.py's latency and peak memory against sequence length per method (the paper's
Table 12 view), and a run's training loss and dev metric over its steps (eval.jsonl), with, when the run has them,
its best evaluation's metrics by input length (the paper's Figure 2 view).

    python -m reproduce.plots out/sst2-ssmlora-r8              # -> out/sst2-ssmlora-r8/curves.png
    python -m reproduce.plots out/bench.json --out bench.png   # a bench.py result file
    python bench.py --quick --plot bench.png                 # the same, straight after the sweep

matplotlib is optional: it is imported only here, when a plot is asked for.
"""
import json
import sys
from pathlib import Path

from files import atomic_write, check_new
from training.cli import OneLineParser, UserError

STYLE = {"none": ("tab:gray", ":"), "lora": ("tab:blue", "-"), "ssmlora": ("tab:red", "-"),
         "transformers": ("tab:green", "--")}


def figure(rows, cols, size):
    """A matplotlib Figure with its Agg canvas (no pyplot, no display), or a one-line error naming the package."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plotting needs the matplotlib package (pip install matplotlib)") from None
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_bench(result, path=None):
    """bench.py's result dict (out/bench.json): median latency (top) and memory (bottom) against length, inference
    and training step side by side, one line per method, batch size and variant (eager, compiled, CUDA graph). The
    memory axis starts at zero, so that a difference of a few MB on a model of hundreds does not look large: the
    peak where it was measured (CUDA), else what a training step saves for the backward pass. Saved to path."""
    rows = result.get("results") if isinstance(result, dict) else None
    if not rows:
        raise UserError("not a bench.py result (no \"results\" rows): run python bench.py first")
    keys = {"mode": str, "batch": int, "length": int, "ms": dict, "peak_mb": dict}
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)
                or not all(isinstance(r.get(k), t) for k, t in keys.items())), None)
    if bad is not None:  # an older or hand-edited file: say which row, not a KeyError
        raise UserError(f"bench.py result row {bad} lacks one of {', '.join(keys)} (or has another type): "
                        f"run python bench.py again")
    modes = [m for m in ("inference", "train") if any(r["mode"] == m for r in rows)]
    lengths = sorted({r["length"] for r in rows})
    groups = sorted({(r["batch"], r.get("variant", "eager")) for r in rows})
    fig, ax = figure(2, len(modes), (5.2 * len(modes), 6.4))
    for j, mode in enumerate(modes):
        memory = "peak_mb" if any(r["mode"] == mode and any(r["peak_mb"].values()) for r in rows) else "saved_mb"
        for k, (B, variant) in enumerate(groups):
            rs = sorted((r for r in rows if r["mode"] == mode and r["batch"] == B and r.get("variant", "eager")
                         == variant), key=lambda r: r["length"])
            for n in rs[0]["ms"] if rs else []:
                color, ls = STYLE.get(n, (None, "-"))
                label = n if len(groups) == 1 else f"{n}, batch {B}, {variant}"
                marker = "osv^D"[k % 5]
                ax[0, j].plot([r["length"] for r in rs], [r["ms"][n] for r in rs], ls, color=color, marker=marker,
                              label=label)
                mb = [(r["length"], (r.get(memory) or {}).get(n)) for r in rs]
                mb = [(t, v) for t, v in mb if v is not None]
                if mb:
                    ax[1, j].plot(*zip(*mb), ls, color=color, marker=marker, label=label)
        if not ax[1, j].lines:  # a CPU keeps no peak statistics, and inference saves nothing for a backward pass
            ax[1, j].text(0.5, 0.5, "memory not measured here", ha="center", va="center", transform=ax[1, j].transAxes)
            ax[1, j].set_xlim(min(lengths) / 1.2, max(lengths) * 1.2)
        ax[0, j].set_title("inference (forward, no grad)" if mode == "inference" else "training step")
        ax[0, j].set_ylabel("median latency (ms)")
        ax[1, j].set_ylabel("peak memory (MB)" if memory == "peak_mb" else "saved for backward (MB)")
        ax[1, j].set_ylim(bottom=0)  # from zero: the methods' difference in proportion to the whole
        for a in ax[:, j]:
            a.set_xlabel("sequence length (tokens)")
            a.set_xscale("log", base=2)
            a.set_xticks(lengths, [str(n) for n in lengths])
            a.minorticks_off()
            a.grid(alpha=0.3)
        ax[0, j].legend(fontsize="small")
    s = result.get("settings", {})
    n = s.get("threads")
    threads = f" ({n} thread{'s' * (n > 1)})" if s.get("device") == "cpu" and n else ""
    fig.suptitle(f"{s.get('model', '')}, {s.get('device', '')}{threads}, {s.get('dtype', '')}, "
                 f"rank {s.get('rank', '')}")
    return save(fig, path)


def read_run(folder):
    """(eval.jsonl lines, the metric train.py selects on, the best evaluation's metrics by input length or None) of
    a run's output folder."""
    folder = Path(folder)
    log = folder / "eval.jsonl"
    if not log.exists():
        raise UserError(f"no eval.jsonl in {folder}: is this a train.py --out folder?")
    lines = read_jsonl(log)
    if not lines:
        raise UserError(f"{log} has no evaluations yet")
    results = read_json(folder / "results.json") if (folder / "results.json").exists() else {}
    return lines, results.get("select"), results.get("by_length", lines[-1].get("by_length"))


def read_json(path):
    """A JSON object from a file, or a UserError naming the file (json's own message names only line and column)."""
    try:
        out = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not a text file ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}): cut off?") from None
    if not isinstance(out, dict):
        raise UserError(f"{path} holds a JSON {type(out).__name__}, not an object")
    return out


def read_jsonl(path):
    """The JSON objects of a file of one per line, or a UserError naming the file and its line (a run killed while
    writing its last line leaves it cut off: say which)."""
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not a text file ({e})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {n} is not valid JSON ({e.msg} at column {e.colno}): cut off? Remove "
                            f"that line to plot the others") from None
        if not isinstance(out[-1], dict) or not isinstance(out[-1].get("step"), int):
            raise UserError(f"{path} line {n} is not an evaluation of train.py (no \"step\")")
    return out


def plot_run(folder, path=None):
    """A run's training loss (left) and dev metric (middle) over its optimizer steps, from its eval.jsonl, and the
    best evaluation's dev metric per bin of input length (right), if the run reported it."""
    lines, select, by_length = read_run(folder)
    splits = [k for k, v in lines[0].items() if isinstance(v, dict) and k != "by_length"]  # {"dev": {"f1": ...}}
    if not splits:
        raise UserError(f"{Path(folder) / 'eval.jsonl'} has no dev metrics to plot")
    select = select or next(iter(lines[0][splits[0]]))
    steps = [line["step"] for line in lines]
    fig, ax = figure(1, 3 if by_length else 2, (15 if by_length else 10, 3.8))
    ax[0, 0].plot(steps, [line.get("train_loss") for line in lines], "o-", color="tab:blue")
    ax[0, 0].set_ylabel("training loss (mean over the epoch so far)")
    for split in splits:
        ax[0, 1].plot(steps, [(line.get(split) or {}).get(select) for line in lines], "o-", label=split)
    ax[0, 1].set_ylabel(f"dev {select}")
    ax[0, 1].legend(fontsize="small")
    for a in ax[0, :2]:
        a.set_xlabel("optimizer step")
        a.grid(alpha=0.3)
    for split, bins in (by_length or {}).items():
        y = [b.get(select) for b in bins]
        ax[0, 2].plot(range(len(bins)), [float("nan") if v is None else v for v in y], "o-", label=split)
        ax[0, 2].set_xticks(range(len(bins)), [f"{b['bin']}\n({b['n']})" for b in bins], fontsize="small")
    if by_length:
        ax[0, 2].set_xlabel("input tokens (examples)")
        ax[0, 2].set_ylabel(f"{select}, best evaluation")
        ax[0, 2].legend(fontsize="small")
        ax[0, 2].grid(alpha=0.3)
    fig.suptitle(Path(folder).resolve().name)
    return save(fig, path)


def plot_by_length(records, path=None):
    """The paper's Figure 2 over seeds: each row's dev metric (mean ± std over its seeds) per bin of input length,
    from reproduce.table's records (method, rank, metric, by_length)."""
    import statistics
    first = records[0]
    bins, metric = first["by_length"], first["metric"]
    fig, ax = figure(1, 1, (6.5, 4))
    for row in dict.fromkeys((r["method"], r["rank"]) for r in records):
        runs = [r for r in records if (r["method"], r["rank"]) == row]
        values = [[100 * r["by_length"][i][metric] for r in runs if r["by_length"][i].get(metric) is not None]
                  for i in range(len(bins))]
        mean = [statistics.fmean(v) if v else float("nan") for v in values]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        label = f"{row[0]}{'' if row[1] is None else f' r{row[1]}'} ({len(runs)} seed{'s' * (len(runs) != 1)})"
        ax[0, 0].errorbar(range(len(bins)), mean, yerr=std, marker="o", capsize=3, label=label)
    ax[0, 0].set_xticks(range(len(bins)), [f"{b['bin']}\n({b['n']})" for b in bins])
    ax[0, 0].set_xlabel("input tokens before any cut (dev examples)")
    ax[0, 0].set_ylabel(f"dev {metric} x100, mean ± std over seeds")
    ax[0, 0].legend(fontsize="small")
    ax[0, 0].grid(alpha=0.3)
    return save(fig, path)


def png(path, flag):
    """A destination for a picture: a new file named .png."""
    if Path(path).suffix.lower() != ".png":
        raise UserError(f"{flag} {path}: the picture is a PNG; name it .png")
    check_new(path, flag)


def save(fig, path):
    if path is not None:  # a PNG under the name given (matplotlib would add .png to a name without it), whole
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=72, format="png"))
    return fig


def main(argv=None):
    p = OneLineParser(prog="-m reproduce.plots", description=__doc__.strip().split("\n\n")[0])
    p.add_argument("source", help="a train.py --out folder (its eval.jsonl), or a bench.py result .json")
    p.add_argument("--out", help="a new .png file to write (default: <folder>/curves.png, or the .json's name as "
                   ".png)")
    args = p.parse_args(argv)
    src = Path(args.source)
    src = src.parent if src.name == "eval.jsonl" and src.is_file() else src  # the run's log itself: its folder
    out = args.out or (src.with_suffix(".png") if src.suffix == ".json" else src / "curves.png")
    try:
        png(out, "--out" if args.out else "the picture")  # before the source is read: never drawn over one
        if src.suffix == ".json":
            try:
                plot_bench(read_json(src), out)
            except UserError as e:  # name the file the rows came from
                raise UserError(str(e) if str(src) in str(e) else f"{src}: {e}") from None
        else:
            plot_run(src, out)
    except (UserError, OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
