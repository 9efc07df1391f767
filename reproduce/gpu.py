"""
One command for the rare GPU: what issues 31 and 32 measure on one H200, in at most 7 minutes, written to
OUT/gpu.json and OUT/gpu.md with the device, torch version and date. Each stage runs as its own processes and records
its own failure or time-out, so one stage failing loses none of the others; stages run in this order, the most
wanted first, until the time budget (--budget) is spent.

    python -m reproduce.gpu OUT            # on the GPU machine (offline: random weights, data made on the spot)
    python -m reproduce.gpu OUT --smoke    # the same stages on a CPU at tiny sizes, in seconds (tests/test_gpu.py)

  table12   bench.py, llama2-7b shapes, random weights stored in bf16, batch-1 inference at 16 to 1024 tokens: eager
            and CUDA graph replay, then --compile (paper Table 12: LoRA dense q/v against SSMLoRA sparse q/v)
  train     train.py end to end on a synthetic SST-2 of 20,000 rows (reproduce/synthetic.py), a small BERT with random
            weights from a config and a vocabulary made here: SSMLoRA and LoRA, fp32 and bf16, eager and --compile;
            seconds per epoch, examples per second, peak memory and dev accuracy
  memory47  bench.py training steps at 1024 tokens, batch 4 and 8 (paper section 4.7)
  torchrun  train.py under torchrun: NCCL at world size 1 (and an all_reduce over it), then two processes over gloo
            on the one GPU against one process with twice the batch (NCCL refuses two ranks on one device)
  small     bench.py on roberta-base and gpt2 at batch 1 and 16
  qlora     python -m reproduce.qlora: what a training forward saves for the backward pass, LoRA against QLoRA
"""
import contextlib
import datetime
import io
import json
import math
import os
import random
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from files import atomic_write, check_new
from reproduce.synthetic import FILL, NEG, POS, write_sst2
from training.cli import OneLineParser

REPO = Path(__file__).resolve().parent.parent
LENGTHS = "16,32,64,128,256,512,1024"
# sizes: the GPU run, and the smoke run on a CPU that takes the same code paths in seconds
SIZES = {"gpu": dict(n_train=20_000, n_dev=2_000, d=256, layers=4, heads=4, batch=32, max_len=64, steps=20),
         "smoke": dict(n_train=200, n_dev=40, d=32, layers=2, heads=2, batch=16, max_len=32, steps=4)}
TRAIN_RUNS = [(m, dtype, compiled) for dtype, compiled in (("fp32", False), ("bf16", False), ("bf16", True))
              for m in ("ssmlora", "lora")]  # both methods of a setting before the next: time may run out
SMOKE_RUNS = {("ssmlora", "fp32", False), ("lora", "bf16", False), ("ssmlora", "bf16", True)}  # every code path once
# the train stage's runs on a CPU (train.py, fp32, eager, the GPU sizes above, --threads 1 on a shared 2-core AMD EPYC,
# torch 2.13.0): what the GPU runs' dev accuracy and training loss should repeat within noise
CPU_REFERENCE = {"ssmlora": dict(dev_accuracy=1.0, train_loss=0.1718, epoch_seconds=120.2),
                 "lora": dict(dev_accuracy=1.0, train_loss=0.1042, epoch_seconds=135.3)}
CAPS = dict(table12=200, train=130, memory47=45, torchrun=40, small=50, qlora=20)  # seconds at most, per stage


def bench_calls(stage, out, smoke):
    """bench.py argument lists of a stage; smoke: the tiny --quick model on a CPU, dynamo's eager backend."""
    tiny = ["--quick", "--layers", "2", "--device", "cpu", "--repeats", "1", "--warmup", "0"] if smoke \
        else ["--device", "cuda"]
    compile_ = ["--compile", "--backend", "eager"] if smoke else ["--compile"]
    lengths = "8" if smoke else LENGTHS
    if stage == "table12":
        common = [*tiny, "--preset", "llama2-7b", "--dtype", "bf16", "--weights", "bf16", "--modes", "inference",
                  "--batch-sizes", "1", "--lengths", lengths]
        return [[*common, "--cuda-graph", "--json", f"{out}/table12-eager.json"],   # first: what compiling can lose
                [*common, *compile_, "--json", f"{out}/table12-compiled.json"]]
    if stage == "memory47":
        return [[*tiny, "--preset", "llama2-7b", "--dtype", "bf16", "--weights", "bf16", "--modes", "train",
                 "--train-batch-sizes", "4,8", "--train-lengths", "16" if smoke else "1024",
                 *([] if smoke else ["--repeats", "5", "--warmup", "1"]), "--json", f"{out}/memory47.json"]]
    # small; the smoke run has taken bench's --compile path in table12 already
    return [[*tiny, "--preset", name, "--dtype", "bf16", "--batch-sizes", "1" if smoke else "1,16", "--lengths",
             "8" if smoke else "16,128,512", *([] if smoke else ["--repeats", "10", "--compile"]), "--modes",
             "inference", "--json", f"{out}/small-{name}.json"] for name in ("roberta-base", "gpt2")]


# ----------------------------------------------------------------------------------------------------------
# what train.py reads: a synthetic GLUE task and a BERT folder with a config and a vocabulary, no weights

def make_task(folder, size):
    write_sst2(folder, size["n_train"], size["n_dev"], random.Random(0))  # folder/SST-2/{train,dev}.tsv
    return folder


def make_model(folder, size, dropout=0.1):
    """A BERT checkpoint folder without weights (train.py --random-init reads its config.json) and a WordPiece
    vocabulary of the synthetic task's words."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(POS + NEG + FILL))]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    d = size["d"]
    config = dict(model_type="bert", architectures=["BertModel"], vocab_size=len(words), hidden_size=d,
                  num_hidden_layers=size["layers"], num_attention_heads=size["heads"], intermediate_size=4 * d,
                  max_position_embeddings=128, type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=dropout,
                  attention_probs_dropout_prob=dropout, layer_norm_eps=1e-12, pad_token_id=0)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def train_flags(model, data, out, size, *extra):
    return ["--task", "sst2", "--model", str(model), "--random-init", "--data-dir", str(data), "--out", str(out),
            "--batch-size", str(size["batch"]), "--max-len", str(size["max_len"]), "--epochs", "1", "--lr", "1e-2",
            "--patience", "0", "--seed", "0", *extra]


def train_help(smoke):
    """train.py --help (whether it takes --dtype and --compile, which come with its new loop)."""
    if smoke:
        return in_process(["train.py", "--help"], None)[1]
    return subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120).stdout


# ----------------------------------------------------------------------------------------------------------
# running a command: a subprocess with a time limit on the GPU; in-process in the smoke run (no interpreter start)

def execute(argv, timeout, smoke, log, env=None):
    """Run `python argv...` (a script or -m module) from the repository root; (return code, seconds, output tail)."""
    t0 = time.perf_counter()
    if smoke and argv[0] in ("bench.py", "train.py", "-m") and argv[1] != "torch.distributed.run":
        code, text = in_process(argv, env)
    else:
        p = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            text = p.communicate(timeout=max(timeout, 1))[0]
            code = p.returncode
        except subprocess.TimeoutExpired:  # its whole process group: torchrun's workers hold the GPU too
            os.killpg(p.pid, signal.SIGKILL)
            code, text = "timeout", p.communicate()[0] + f"\nstopped after {timeout:.0f} s"
    log.write(f"$ python {' '.join(argv)}\n{text}\n")
    return code, round(time.perf_counter() - t0, 1), text[-1500:]


def in_process(argv, env):
    """The smoke run's shortcut: the same command, run by runpy in this process, its output captured."""
    out, saved = io.StringIO(), (sys.argv[:], dict(os.environ))
    os.environ.update(env or {})
    module = argv[1] if argv[0] == "-m" else None
    sys.argv = [module or argv[0], *argv[2 if module else 1:]]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), compile_disabled(env):
            if module == "reproduce.gpu":  # the torchrun worker: this module is imported already
                main(sys.argv[1:])
            elif module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(REPO / argv[0]), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (1 if e.code else 0)
        print(e.code if isinstance(e.code, str) else "", file=out)
    except Exception as e:  # noqa: BLE001 - recorded, as a subprocess's traceback would be
        code = f"{type(e).__name__}: {e}"
    finally:
        sys.argv = saved[0]
        os.environ.clear()
        os.environ.update(saved[1])
    return code, out.getvalue()


@contextlib.contextmanager
def compile_disabled(env):
    """TORCH_COMPILE_DISABLE=1 read at import time by a subprocess; in-process it is dynamo's config switch."""
    before = torch._dynamo.config.disable
    torch._dynamo.config.disable = (env or {}).get("TORCH_COMPILE_DISABLE") == "1" or before
    try:
        yield
    finally:
        torch._dynamo.config.disable = before


# ----------------------------------------------------------------------------------------------------------
# the stages

def stage_bench(name, out, smoke, deadline, log):
    runs = []
    for argv in bench_calls(name, out, smoke):
        left = deadline - time.monotonic()
        if left < 10:
            runs.append(dict(argv=argv, status="skipped: out of time"))
            continue
        code, sec, tail = execute(["bench.py", *argv], left, smoke, log)
        path = Path(argv[argv.index("--json") + 1])
        result = json.loads(path.read_text()) if path.exists() else None
        runs.append(dict(argv=argv, status="ok" if code == 0 else f"failed ({code})", seconds=sec,
                         tail=None if code == 0 else tail, result=result))
    return runs


def stage_train(out, smoke, deadline, log):
    size = SIZES["smoke" if smoke else "gpu"]
    data, model = make_task(out / "data", size), make_model(out / "model", size)
    text = train_help(smoke)
    has = {flag: flag in text for flag in ("--dtype", "--compile")}
    runs, seen = [], {}
    for method, dtype, compiled in TRAIN_RUNS:
        name = f"{method}-{dtype}-{'compiled' if compiled else 'eager'}"
        extra = ["--method", method]  # the smoke run leaves out a flag train.py lacks (and says so); the GPU never
        extra += ["--dtype", dtype] if has["--dtype"] or not smoke else []
        extra += (["--compile", "eager"] if smoke else ["--compile"]) if compiled and (has["--compile"] or not smoke) \
            else []  # smoke: dynamo traces the whole graph, as on the GPU, but compiles nothing
        left = deadline - time.monotonic()
        if smoke and (method, dtype, compiled) not in SMOKE_RUNS:  # the suite's time: each path once is enough here
            runs.append(dict(name=name, status="skipped: smoke, the same code path as another run"))
            continue
        if tuple(extra) in seen or left < 15:
            runs.append(dict(name=name, status=f"skipped: the same flags as {seen[tuple(extra)]}" if tuple(extra)
                             in seen else "skipped: out of time"))
            continue
        seen[tuple(extra)] = name
        env = None
        code, sec, tail = execute(["train.py", *train_flags(model, data, out / "train" / name, size, *extra)],
                                  left, smoke, log, env)
        runs.append(dict(name=name, method=method, dtype=dtype, compiled=compiled, argv_extra=extra, seconds=sec,
                         status="ok" if code == 0 else f"failed ({code})", tail=None if code == 0 else tail,
                         **train_figures(out / "train" / name, size)))
    return dict(size=size, train_flags_present=has, runs=runs)


def train_figures(folder, size):
    path = folder / "results.json"
    if not path.exists():
        return {}
    r = json.loads(path.read_text())
    epoch = (r.get("epoch_seconds") or [None])[0]
    seen = min(size["n_train"], (r.get("steps") or 0) * (r.get("examples_per_step") or 0))  # a cut epoch: its part
    last = r.get("final") or {}
    return dict(dev_accuracy=((r.get("best") or {}).get("dev") or {}).get("accuracy"), epoch_seconds=epoch,
                train_loss=last.get("train_loss"),
                examples_per_second=round(seen / epoch, 1) if epoch and seen else None, steps=r.get("steps"),
                peak_memory_mb=round(r["peak_memory_bytes"] / 2**20, 1) if r.get("peak_memory_bytes") else None,
                device=r.get("device"))


def stage_torchrun(out, smoke, deadline, log):
    """NCCL at world size 1 (train.py then runs as one process; the worker's all_reduce checks NCCL itself), then
    two processes over gloo against one process with twice the batch, a few steps, LoRA without dropout (the
    comparison tests/test_distributed.py makes on CPU processes)."""
    size = SIZES["smoke" if smoke else "gpu"]
    # no dropout anywhere: each process draws its own masks, so only then can two processes equal one
    data, model = make_task(out / "data", size), make_model(out / "model-no-dropout", size, dropout=0.0)
    steps = ["--method", "lora", "--dropout", "0", "--max-steps", str(size["steps"]), "--eval-every",
             str(size["steps"])]
    half = str(size["batch"] // 2)
    calls = {"nccl-1": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
                        "reproduce.gpu", "--worker", "nccl", *train_flags(model, data, out / "dist" / "nccl-1", size,
                                                                          *steps)],
             "gloo-2": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                        "reproduce.gpu", "--worker", "gloo", *train_flags(model, data, out / "dist" / "gloo-2", size,
                                                                          *steps), "--batch-size", half],
             "one": ["train.py", *train_flags(model, data, out / "dist" / "one", size, *steps)]}
    if smoke:  # at world size 1 torchrun adds nothing train.py sees; the smoke run spares its interpreter start.
        calls["nccl-1"] = calls["nccl-1"][calls["nccl-1"].index("-m", 1):]  # Two processes against one is
        del calls["gloo-2"]  # tests/test_distributed.py's check on CPU processes, so the suite makes it once
    runs = {}
    for name, argv in calls.items():
        left = deadline - time.monotonic()
        if left < 15:
            runs[name] = dict(status="skipped: out of time")
            continue
        code, sec, tail = execute(argv, left, smoke, log)
        runs[name] = dict(status="ok" if code == 0 else f"failed ({code})", seconds=sec,
                          tail=None if code == 0 else tail, **train_figures(out / "dist" / name, size))
    pair = ("gloo-2" if "gloo-2" in calls else "nccl-1", "one")
    runs[f"{pair[0]} vs one"] = compare_adapters(*(out / "dist" / name for name in pair))
    return runs


def compare_adapters(a, b):
    """The largest difference of the adapters two runs saved (tests/test_distributed.py allows 5e-5 on CPU)."""
    from safetensors.torch import load_file
    if not ((a / "adapters.safetensors").exists() and (b / "adapters.safetensors").exists()):
        return dict(status="not compared: a run saved no adapters")
    wa, wb = load_file(a / "adapters.safetensors"), load_file(b / "adapters.safetensors")
    diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    return dict(status="ok", max_abs_diff=diff, within_cpu_tolerance=diff <= 5e-5)


def worker(backend, argv):
    """What torchrun starts here: train.py's main, with the process group on `backend` and every process on the one
    GPU (cuda:0), which train.py would otherwise look for at cuda:LOCAL_RANK. NCCL: an all_reduce of each rank's
    number first, so that NCCL itself is exercised even at world size 1, where train.py makes no process group."""
    import torch.distributed as td
    init = td.init_process_group
    td.init_process_group = lambda *a, **kw: init(backend, **kw)
    if torch.cuda.is_available():
        os.environ["LOCAL_RANK"] = "0"
    if backend == "nccl" and torch.cuda.is_available():
        init("nccl", device_id=torch.device("cuda", 0))
        x = torch.full((1,), float(td.get_rank() + 1), device="cuda")
        td.all_reduce(x)
        print(f"nccl all_reduce at world size {td.get_world_size()}: {x.item():g}", flush=True)
        td.destroy_process_group()
    import train
    return train.main(argv)


def stage_qlora(out, smoke, deadline, log):
    argv = ["-m", "reproduce.qlora", "--preset", "roberta-base", "--batch-size", "1" if smoke else "8", "--length",
            "8" if smoke else "128", "--device", "cpu" if smoke else "cuda", *(["--layers", "1"] if smoke else [])]
    code, sec, tail = execute(argv, deadline - time.monotonic(), smoke, log)
    return dict(argv=argv, status="ok" if code == 0 else f"failed ({code})", seconds=sec, output=tail)


# ----------------------------------------------------------------------------------------------------------
# the report

def environment(smoke):
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               torch=torch.__version__, python=sys.version.split()[0], smoke=smoke, cuda=torch.version.cuda,
               device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        env["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def markdown(report):
    e = report["environment"]
    lines = [f"# GPU run{' (smoke, CPU)' if e['smoke'] else ''}: {e['device']}, torch {e['torch']}, {e['date']}", ""]
    for stage, s in report["stages"].items():
        lines.append(f"- {stage}: {s['status']} in {s['seconds']} s")
    for stage in ("table12", "memory47", "small"):
        for run in (report["stages"].get(stage, {}).get("result") or []):
            rows = ((run.get("result") or {}).get("results")) or []
            name = Path(run["argv"][run["argv"].index("--json") + 1]).stem
            lines += ["", f"## {name}: {run['status']}", "", f"`python bench.py {' '.join(run['argv'][:-2])}`"]
            vs_eager = any(r["variant"] != "eager" for r in rows)  # eager alone: 1 everywhere, nothing measured
            if rows:
                heads = ["mode", "variant", "batch", "length", "none ms", "LoRA ms", "SSMLoRA ms", "SSMLoRA/LoRA",
                         *["SSMLoRA/its eager"] * vs_eager, "LoRA MB", "SSMLoRA MB"]
                lines += ["", f"| {' | '.join(heads)} |", "|---" * len(heads) + "|"]
                for r in rows:
                    mb = r["peak_mb"] if any(r["peak_mb"].values()) else r.get("saved_mb") or r["peak_mb"]
                    cell = lambda v: "not measured" if v is None else f"{v:.4g}"  # noqa: E731
                    lines.append(f"| {r['mode']} | {r['variant']} | {r['batch']} | {r['length']} | "
                                 f"{r['ms']['none']:.2f} | {r['ms']['lora']:.2f} | {r['ms']['ssmlora']:.2f} | "
                                 f"{r['time_ratios']['ssmlora/lora']:.3f} | "
                                 + f"{r['vs_eager']['ssmlora']:.3f} | " * vs_eager
                                 + f"{cell(mb['lora'])} | {cell(mb['ssmlora'])} |")
    train = (report["stages"].get("train", {}).get("result") or {}).get("runs") or []
    if train:
        lines += ["", "## train.py", "", "| run | status | s/epoch | examples/s | peak MB | dev accuracy | train "
                  "loss |", "|---|---|---|---|---|---|---|"]
        for r in train:
            cells = [r.get(k) for k in ("epoch_seconds", "examples_per_second", "peak_memory_mb", "dev_accuracy",
                                        "train_loss")]
            cells = ["not measured" if v is None else f"{v:.4g}" for v in cells]
            lines.append(f"| {r['name']} | {r['status']} | " + " | ".join(cells) + " |")
        lines += [f"| {m}, CPU reference | (fp32 eager, 1 thread) | {c['epoch_seconds']} | "
                  f"{SIZES['gpu']['n_train'] / c['epoch_seconds']:.4g} | not measured | {c['dev_accuracy']} | "
                  f"{c['train_loss']} |" for m, c in CPU_REFERENCE.items()]
    dist = report["stages"].get("torchrun", {}).get("result") or {}
    if dist:
        lines += ["", "## torchrun", ""] + [f"- {k}: {json.dumps(v)}" for k, v in dist.items()]
    qlora = report["stages"].get("qlora", {}).get("result")
    if qlora:  # its figures as it prints them: per method, saved for backward and the block weights (CUDA: peak)
        lines += ["", f"## qlora: {qlora['status']}", "", f"`python {' '.join(qlora['argv'])}`", "", "```",
                  qlora["output"].strip(), "```"]
    return "\n".join(lines) + "\n"


STAGES = {"table12": lambda o, s, d, log: stage_bench("table12", o, s, d, log), "train": stage_train,
          "memory47": lambda o, s, d, log: stage_bench("memory47", o, s, d, log), "torchrun": stage_torchrun,
          "small": lambda o, s, d, log: stage_bench("small", o, s, d, log), "qlora": stage_qlora}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1], argv[2:])
    a = get_args(argv)
    with contextlib.ExitStack() as stack:  # no --work: a temporary folder, removed at the end
        work = Path(a.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="ssmlora-gpu-"))).resolve()
        return run(a, work)


def get_args(argv):
    p = OneLineParser(prog="-m reproduce.gpu", description=__doc__.split("\n\n")[0].strip())
    p.add_argument("out", help="folder for gpu.json, gpu.md and gpu.log (it may hold other files, not these)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU: the same stages, in seconds")
    p.add_argument("--budget", type=float, default=420, help="seconds for all stages together (default 420)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    p.add_argument("--work", help="a new or empty folder for the data, model config, runs and raw bench JSON "
                   "(default: a temporary folder, removed at the end; OUT holds only gpu.json, gpu.md and gpu.log, "
                   "which embed what matters)")
    a = p.parse_args(argv)
    a.stages = [s for s in a.stages.split(",") if s]
    if set(a.stages) - set(STAGES) or not a.stages or len(set(a.stages)) < len(a.stages):
        p.error(f"--stages: expected some of {','.join(STAGES)}, each once, got {','.join(a.stages)!r}")
    if not 0 < a.budget < math.inf:  # 0 would still run a stage: each stage has at least its own seconds
        p.error(f"--budget is the seconds all stages may take, above 0, got {a.budget:g}")
    if not a.smoke and not torch.cuda.is_available():
        p.error("no CUDA device: run with --smoke on a CPU")
    earlier = [name for name in REPORT if (Path(a.out) / name).exists()]  # OUT may hold other files
    if earlier:  # checked before the first stage, as a stage's run into an earlier --work is
        p.error(f"OUT {a.out} holds an earlier report ({', '.join(earlier)}): choose another folder, or move them "
                "away (nothing was overwritten)")
    try:
        check_new(Path(a.out) / REPORT[0], "OUT")  # OUT (or a folder above it) a file
        if a.work:
            check_new(a.work, "--work", folder=True)
    except OSError as e:
        p.error(str(e))
    return a


REPORT = ("gpu.json", "gpu.md", "gpu.log")


def run(a, work):
    """Every stage in turn into work, the report into a.out after each."""
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    report = dict(environment=environment(a.smoke), work=str(work) if a.work else "a temporary folder, removed",
                  stages={})
    end = time.monotonic() + a.budget
    with open(out / "gpu.log", "x") as log:
        for name in a.stages:
            t0 = time.monotonic()
            deadline = min(end, t0 + CAPS[name] * (100 if a.smoke else 1))
            print(f"[{time.strftime('%H:%M:%S')}] {name} (up to {deadline - t0:.0f} s)", flush=True)
            try:
                result, status = STAGES[name](work, a.smoke, deadline, log), "done"
            except Exception as e:  # noqa: BLE001 - one stage's failure must not lose the others
                result, status = None, f"failed: {type(e).__name__}: {e}"
            report["stages"][name] = dict(status=status, seconds=round(time.monotonic() - t0, 1), result=result)
            atomic_write(out / "gpu.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2,
                                                                                       default=str)))  # each stage
            log.flush()
    atomic_write(out / "gpu.md", lambda tmp: Path(tmp).write_text(markdown(report)))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
