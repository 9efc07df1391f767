"""
What does SSMLoRA cost compared with LoRA? Median latency and peak memory of the frozen base model ("none"), LoRA
and SSMLoRA side by side, over batch sizes and sequence lengths, in inference and in a full training step; eager,
compiled (--compile) and, on CUDA, replayed as a CUDA graph (--cuda-graph, inference at batch 1).

    python bench.py                  # roberta-base with random weights (they do not change speed)
    python bench.py --compile        # torch.compile'd models too, timed beside the eager ones
    python bench.py --dense          # SSMLoRA dense too: the same modules as LoRA
    python bench.py --quick          # a tiny model in seconds (what the tests run)
    python bench.py --plot docs/bench.png   # latency and peak memory against length, per method (matplotlib)
    python bench.py --preset mamba-130m      # a state space model: none, LoRA, SSMLoRA and SDT (docs/mamba.md)
    python bench.py --preset llama2-7b --device cuda --weights bf16 --compile --cuda-graph --batch-sizes 1 \\
        --train-lengths 1024 --train-batch-sizes 4,8       # the paper's Table 12 and its section 4.7
"""
import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from baselines.qlora import saved_bytes
from files import atomic_write, check_new
from mamba import model as mamba, sdt
from model import PRESETS, Model, preset
from ssmlora import ALTERNATING, Adapters, adapter_modules, add_adapters, default_targets, param_report
from training.cli import OneLineParser, check_backend, free_cores
from training.evaluate import DTYPES, autocast as evaluation_autocast
from training.flags import SDT

COMPARED = ("none", "lora", "ssmlora")  # none: the frozen base and its head (its training step trains the head)
DEFAULT = Adapters()  # rank, alpha and targets: the defaults every command uses (ssmlora.Adapters)
ADAPTED = ",".join(DEFAULT.targets)  # the projections both methods adapt, unless --targets says otherwise
MAMBA_ADAPTED = ",".join(default_targets("lora", "mamba"))  # what LoRA and SSMLoRA adapt on a Mamba
# per device: a GPU gets the paper's Table 12 sweep (16 to 1024 tokens); two CPU cores a few short shapes
SWEEP = {"cuda": ([16, 32, 64, 128, 256, 512, 1024], [1, 16], 20, 3), "cpu": ([16, 64, 128], [1], 5, 1),
         "quick": ([8, 16], [2], 2, 1)}  # lengths, batch sizes, repeats, warm-up rounds
QUICK = dict(n_layer=4, n_head=2, d_model=32, d_ff=64, vocab_size=128, n_positions=40)
MAMBA_QUICK = dict(n_layer=4, d_model=32, vocab_size=128)
NOISY = 0.25  # a spread of the timed rounds above this, relative to the median, makes a row's ratios suspect


def int_list(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def get_args(argv=None):
    p = OneLineParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="roberta-base", choices=[*PRESETS, *mamba.PRESETS], metavar="NAME",
                   help=f"default roberta-base; one of {', '.join(PRESETS)}")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto: cuda if available")
    p.add_argument("--dtype", choices=DTYPES, help="autocast to bf16 or fp16, or fp32 (default: bf16 on CUDA, else "
                   "fp32); eqs. (3)-(8) run in float32 whatever it is")
    p.add_argument("--weights", choices=("fp32", "bf16"), default="fp32", help="how the frozen weights are stored "
                   "(default fp32; bf16 halves them and spares autocast re-casting each one on every forward; the "
                   "trained adapters and head stay fp32)")
    p.add_argument("--lengths", type=int_list, help="inference sequence lengths, e.g. 16,64,128 (default: per device)")
    p.add_argument("--batch-sizes", type=int_list, help="inference batch sizes, e.g. 1,16 (default: per device)")
    p.add_argument("--train-lengths", type=int_list, help="training-step lengths (default: --lengths)")
    p.add_argument("--train-batch-sizes", type=int_list, help="training-step batch sizes (default: --batch-sizes)")
    p.add_argument("--modes", default="inference,train", help="inference, train or both (default both)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model, fullgraph=True) of each")
    p.add_argument("--backend", help="with --compile: torch.compile's backend (default inductor; the tests use eager, "
                   "which traces the same graph without compiling it)")
    p.add_argument("--cuda-graph", action="store_true", help="also time batch-1 inference replayed as one CUDA graph "
                   "(CUDA only: skipped with a note on a CPU)")
    p.add_argument("--repeats", type=int, help="timed rounds, the median is reported (default: CUDA 20, CPU 5)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default: CUDA 3, CPU 1)")
    p.add_argument("--threads", type=int, help="CPU threads (default: the cores other work leaves free, from the "
                   "load average; --quick: 1)")
    p.add_argument("--layers", type=int, help="build only this many of the preset's layers (e.g. llama2-7b on a CPU)")
    p.add_argument("--targets", help=f"what both methods adapt (default {ADAPTED}, Mamba {MAMBA_ADAPTED}; see "
                   "train.py)")
    p.add_argument("--rank", type=int, default=DEFAULT.rank, help="default %(default)s")
    p.add_argument("--alpha", type=float, default=DEFAULT.alpha, help="default %(default)s (scaling s = alpha / rank)")
    p.add_argument("--dense", action="store_true", help="SSMLoRA dense too (query and value in every layer, as LoRA); "
                   "default: each method's own, as the paper compares them: LoRA dense, SSMLoRA sparse")
    p.add_argument("--quick", action="store_true", help="tiny model and shapes, few repeats: a smoke test")
    p.add_argument("--json", help="where the results are written, a new file (default out/bench.json, or the next "
                   "free out/benchN.json, N = 2, 3, ...: a second run keeps the first one's)")
    p.add_argument("--plot", metavar="FILE", help="also draw latency and peak memory against length per method into "
                   "FILE (a .png; needs matplotlib; python -m reproduce.plots redraws it from --json)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but torch sees no CUDA device (a CPU build of torch?)")
    a.device = torch.device("cuda" if a.device != "cpu" and torch.cuda.is_available() else "cpu")
    a.dtype = a.dtype or ("bf16" if a.device.type == "cuda" else "fp32")
    if a.weights == "bf16" and a.dtype == "fp32":
        p.error("--weights bf16 needs --dtype bf16 or fp16: fp32 products cannot take bf16 weights")
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not a.modes or set(a.modes) - {"inference", "train"}:
        p.error(f"--modes: expected inference, train or both, got {','.join(a.modes)!r}")
    idle = [f"{flag} would change nothing {why}" for flag, unused, why in (
        ("--backend", a.backend and not a.compile, "without --compile"),
        ("--train-lengths", a.train_lengths and "train" not in a.modes, "without --modes train"),
        ("--train-batch-sizes", a.train_batch_sizes and "train" not in a.modes, "without --modes train"),
        ("--cuda-graph", a.cuda_graph and "inference" not in a.modes, "without --modes inference"),
        ("--lengths", a.lengths and a.train_lengths and "inference" not in a.modes, "beside --train-lengths "
         "without --modes inference"),
        ("--batch-sizes", a.batch_sizes and a.train_batch_sizes and "inference" not in a.modes, "beside "
         "--train-batch-sizes without --modes inference")) if unused]
    if idle:
        p.error("; ".join(idle))
    lengths, batch_sizes, repeats, warmup = SWEEP["quick" if a.quick else a.device.type]
    a.lengths, a.batch_sizes = a.lengths or lengths, a.batch_sizes or batch_sizes
    a.train_lengths, a.train_batch_sizes = a.train_lengths or a.lengths, a.train_batch_sizes or a.batch_sizes
    a.repeats, a.warmup = (repeats if a.repeats is None else a.repeats), (warmup if a.warmup is None else a.warmup)
    a.threads = (1 if a.quick else free_cores()) if a.threads is None else a.threads
    a.targets = a.targets or (MAMBA_ADAPTED if a.preset in mamba.PRESETS else ADAPTED)
    if min(a.repeats, a.rank, a.threads, 1 if a.layers is None else a.layers) < 1 or a.warmup < 0 or not a.alpha > 0:
        p.error("--repeats, --rank, --threads and --layers must be at least 1, --warmup at least 0, --alpha above 0")
    if a.plot and not _has("matplotlib"):  # before the sweep, not after it
        p.error("--plot needs the matplotlib package (pip install matplotlib)")
    try:  # before the sweep: a wrong backend or an occupied file would fail only after it
        a.backend = check_backend(a.backend, "--backend") if a.backend else "inductor"  # given: with --compile
        free = (f"out/bench{n}.json" for n in ("", *range(2, 10_000)))  # the default never refuses: bench2.json, ...
        a.json = a.json or next(f for f in free if not Path(f).exists())
        check_new(a.json, "--json")
        if a.plot:
            from reproduce.plots import png
            png(a.plot, "--plot")
    except (ValueError, OSError) as e:
        p.error(str(e))
    return a


def _has(package):
    import importlib.util
    return importlib.util.find_spec(package) is not None


# ----------------------------------------------------------------------------------------------------------
# models: one set of frozen weights shared by the three methods, built where they run

def twin(base):
    """A Model holding the base's own weight tensors (no copy) and its own copy of the head: the three methods
    side by side cost one set of weights, and each trains only its own head."""
    with torch.device("meta"):  # nothing allocated or initialised: every tensor is assigned below
        m = type(base)(base.cfg)
    m.load_state_dict({k: v.clone() if k.startswith("head.") else v for k, v in base.state_dict().items()}, assign=True)
    return m


def build(cfg, args):
    """{method: model} on args.device: the base is built there (no host copy: 27 GB for LLaMA-2-7B in fp32), its
    frozen weights stored as --weights says, what each method trains in float32."""
    torch.manual_seed(0)
    with torch.device(args.device):
        base = (mamba.Mamba if cfg.family == "mamba" else Model)(cfg)
        if args.weights == "bf16":
            for name, p in base.named_parameters():
                if not name.startswith("head."):
                    p.data = p.data.to(torch.bfloat16)
        models = {}
        for method in COMPARED:  # sparse=None: the method's own default (SSMLoRA sparse, LoRA dense)
            sparse = False if method == "ssmlora" and args.dense else None
            adapters = Adapters(method, args.rank, args.alpha, targets=args.targets, sparse=sparse)
            m = add_adapters(twin(base), adapters)
            for p in m.parameters():  # adapters follow the base's dtype: the trained ones go back to float32
                if p.requires_grad:
                    p.data = p.data.float()
            models[method] = m
        if cfg.family == "mamba":  # SDT's main run, on a selection of its sizes (the warm-up does not change speed)
            adapters = Adapters("sdt", args.rank, args.rank)  # alpha = rank, as the authors
            m = sdt.add_sdt(twin(base), adapters, sdt.placeholder(cfg, SDT["sdt_rho"]))
            for p in m.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
            models["sdt"] = m
    return models


# ----------------------------------------------------------------------------------------------------------
# timing and memory

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(f, device):
    sync(device)  # CUDA runs asynchronously: wait for queued work on both sides, or we time kernel launches
    t0 = time.perf_counter()
    f()
    sync(device)
    return time.perf_counter() - t0


def added_peak(f, device):
    """Bytes one call of f adds, at its peak, to what was allocated before it (the CUDA allocator's statistics);
    None on a CPU, which keeps no such statistics."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    f()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def resident(model, opt=None):
    """Bytes of the weights, buffers and optimizer state a model keeps between calls (shared storage counted once)."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [t for s in (opt.state.values() if opt else ()) for t in s.values() if torch.is_tensor(t)]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def autocast(args, cache=True):
    return evaluation_autocast(args.device, args.dtype, cache)  # train.py's, so the two measure the same thing


def step_fn(model, mode, batch, opt, args):
    ids, labels = batch
    if mode == "inference":
        def f():
            with torch.no_grad(), autocast(args):
                model(ids)
        return f

    def f():  # a full training step as train.py takes it, less clipping and the scheduler
        with autocast(args):
            _, loss = model(ids, labels=labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return f


def cuda_graph(model, batch, args):
    """Batch-1 inference captured once as a CUDA graph; the returned function replays it: every kernel of the
    forward pass launched by one call, with no Python or launch overhead in between."""
    ids, _ = batch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad(), autocast(args, cache=False):
        for _ in range(3):  # warm up on a side stream, as capture requires
            model(ids)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad(), autocast(args, cache=False):  # no autocast cache in a capture
        model(ids)
    return graph.replay


def measure(fns, device, rounds, warmup):
    """Median seconds per function and its spread ((max - min) / median of the timed rounds), the functions called
    in interleaved rounds so that machine noise hits all alike."""
    names, times = list(fns), {n: [] for n in fns}
    for r in range(rounds):
        k = r % len(names)  # rotate the order: no method always runs first, or always right after the same one
        for n in names[k:] + names[:k]:
            t = timed(fns[n], device)
            if r >= warmup:
                times[n].append(t)
    med = {n: statistics.median(v) for n, v in times.items()}
    return med, {n: (max(v) - min(v)) / med[n] for n, v in times.items()}


def make_batch(cfg, B, T, device):
    g = torch.Generator().manual_seed(B * 100_003 + T)
    ids = torch.randint(3, cfg.vocab_size - 1, (B, T), generator=g)  # no special ids, no padding (GPT-2's is the last)
    return ids.to(device), torch.randint(0, cfg.num_labels, (B,), generator=g).to(device)


def compiled_models(models, backend):
    """torch.compile(fullgraph=True) of each model, dynamo's caches emptied first: the three models share one
    Model.forward code object and so one recompile limit, which three methods x two modes x shapes would reach, and
    past it a compile falls back to eager without a word. The length is marked dynamic, so a sweep over lengths
    compiles once per model and mode, not once per length."""
    torch._dynamo.reset()
    config = torch._dynamo.config
    if hasattr(config, "fail_on_recompile_limit_hit"):  # never fall back to eager without a word
        config.fail_on_recompile_limit_hit = True
    return {n: torch.compile(m, fullgraph=True, backend=backend) for n, m in models.items()}


def graphs_compiled():
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def shapes(args, mode):
    if mode == "inference":
        return [(B, T) for B in args.batch_sizes for T in args.lengths]
    return [(B, T) for B in args.train_batch_sizes for T in args.train_lengths]


def variants(args, mode, B):
    out = ["eager"] + ["compiled"] * args.compile
    if args.cuda_graph and mode == "inference" and B == 1 and args.device.type == "cuda":
        out.append("cuda graph")
    return out


def sweep(cfg, models, args, on_row=lambda rows: None):
    """The rows of every mode, shape and variant; on_row(rows) after each (run() writes the JSON so far)."""
    rows = []
    for mode in args.modes:
        for m in models.values():
            m.train(mode == "train")  # dropout on in the training step, as in training
        opts = {n: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                for n, m in models.items()} if mode == "train" else {}
        runners = {"eager": models, "compiled": compiled_models(models, args.backend) if args.compile else None}
        for B, T in shapes(args, mode):
            batch = make_batch(cfg, B, T, args.device)
            torch._dynamo.maybe_mark_dynamic(batch[0], 1)
            before, kinds = graphs_compiled(), variants(args, mode, B)
            fns = {(v, n): cuda_graph(m, batch, args) if v == "cuda graph" else
                   step_fn(runners[v][n], mode, batch, opts.get(n), args) for v in kinds for n, m in models.items()}
            for (v, _), f in fns.items():
                if v == "compiled":  # compile (or find the compiled graph) outside the timing
                    f()
            compiled = graphs_compiled() - before
            sec, spread = measure(fns, args.device, args.warmup + args.repeats, args.warmup)  # all interleaved
            for v in kinds:
                part = lambda d: {n: d[v, n] for n in models}  # noqa: E731
                rows.append(row(mode, v, B, T, part(sec), part(spread), part(fns), models, opts, batch, args))
                rows[-1]["graphs_compiled"] = compiled if v == "compiled" else 0
                rows[-1]["vs_eager"] = {n: sec[v, n] / sec["eager", n] for n in models}
                print(f"  {mode:9} {v:10} batch {B:3} length {T:4}: "
                      + "  ".join(f"{n} {t:.1f} ms" for n, t in rows[-1]["ms"].items()), file=sys.stderr, flush=True)
            on_row(rows)
            del fns
            del batch
            if args.device.type == "cuda":  # hand this shape's blocks back before the next one
                gc.collect()
                torch.cuda.empty_cache()
    return rows


def row(mode, variant, B, T, sec, spread, fns, models, opts, batch, args):
    ms = {n: 1e3 * s for n, s in sec.items()}
    mb = {}
    for n, f in fns.items():  # the model's own state, plus what one call adds on top of it
        added = None if variant == "cuda graph" else added_peak(f, args.device)  # a graph's pool is set aside
        mb[n] = None if added is None else (resident(models[n], opts.get(n)) + added) / 2**20
    r = dict(mode=mode, variant=variant, batch=B, length=T, ms=ms, spread=max(spread.values()), peak_mb=mb,
             time_ratios={"ssmlora/lora": ms["ssmlora"] / ms["lora"], "lora/ssmlora": ms["lora"] / ms["ssmlora"],
                          "lora/none": ms["lora"] / ms["none"],
                          **({"sdt/lora": ms["sdt"] / ms["lora"]} if "sdt" in ms else {})},
             memory_ratios={"ssmlora/lora": mb["ssmlora"] / mb["lora"]} if mb["lora"] else {})
    if mode == "train" and variant == "eager":  # device-independent: what autograd keeps for the backward pass
        ids, labels = batch
        with autocast(args):
            r["saved_mb"] = {n: saved_bytes(m, lambda m=m: m(ids, labels=labels)[1])[1] / 2**20
                             for n, m in models.items()}
    return r


def flags(device):
    """The switches that change what a figure means: TF32 matmuls, and which fused attention kernels SDPA may use."""
    cuda = torch.backends.cuda
    out = dict(float32_matmul_precision=torch.get_float32_matmul_precision(),
               cuda_matmul_allow_tf32=cuda.matmul.allow_tf32, cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    if device.type == "cuda":
        for name in ("flash", "mem_efficient", "math", "cudnn"):
            enabled = getattr(cuda, f"{name}_sdp_enabled", None)
            out[f"sdpa_{name}"] = enabled() if enabled else None
        out["device_name"] = torch.cuda.get_device_name(device)
    return out


# ----------------------------------------------------------------------------------------------------------
# report

def table(rows, mode):
    """Fixed-width text, one line per variant and shape: median ms per method, the time ratios (x/eager: against the
    same method's eager time, measured in the same interleaved rounds), then LoRA's and SSMLoRA's peak MB (CUDA) or
    what a training step saves for the backward pass (any device), and their ratio."""
    rs = [r for r in rows if r["mode"] == mode]
    mem = "peak" if any(r["peak_mb"]["lora"] for r in rs) else "saved" if mode == "train" else None
    sdt_ms = ["sdt ms", "sdt/lora"] if rs and "sdt" in rs[0]["ms"] else []  # Mamba presets
    vs_eager = any(r["variant"] != "eager" for r in rs)  # eager alone: x/eager would be 1 everywhere, not measured
    heads = ["variant", "batch", "len", "none ms", "lora ms", "ssm ms", "ssm/lora", "lora/ssm", "lora/none",
             *["lora/eager", "ssm/eager"] * vs_eager, *sdt_ms]
    heads += [f"lora {mem} MB", f"ssm {mem} MB", "MB ratio"] if mem else []
    widths = [max(5, len(h)) for h in heads]
    widths[0] = 10
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    for r in rs:
        t = r["time_ratios"]
        cells = [r["variant"], str(r["batch"]), str(r["length"]), *[f"{r['ms'][n]:.1f}" for n in COMPARED],
                 f"{t['ssmlora/lora']:.3f}", f"{t['lora/ssmlora']:.3f}", f"{t['lora/none']:.3f}"]
        cells += [f"{r['vs_eager']['lora']:.3f}", f"{r['vs_eager']['ssmlora']:.3f}"] if vs_eager else []
        cells += [f"{r['ms']['sdt']:.1f}", f"{t['sdt/lora']:.3f}"] if sdt_ms else []
        if mem:
            mb = r["peak_mb"] if mem == "peak" else r.get("saved_mb")
            ok = mb and mb["lora"] is not None and mb["ssmlora"] is not None
            cells += [f"{mb['lora']:.1f}", f"{mb['ssmlora']:.1f}", f"{mb['ssmlora'] / mb['lora']:.3f}"] if ok else \
                ["n/a"] * 3
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def describe(model):
    a = model.adapters  # sparse: with query,value, the query on even layers and the value on odd ones
    alt = [t for t in a.targets if t in ALTERNATING]  # this model's own: query, value or Mamba's in_proj, out_proj
    where = f"{','.join(a.targets)} in every layer"
    if a.sparse and alt:  # as ssmlora.insertion_plan places them
        how = f"{' and '.join(alt)} alternating over the layers" if len(alt) > 1 else f"{alt[0]} on every other layer"
        rest = ", the others in every layer" if len(alt) < len(a.targets) else ""
        where = f"{','.join(a.targets)}: {how}{rest} (paper §3.4)"
    return (f"{'sparse' if a.sparse else 'dense'}: {where}; {len(adapter_modules(model))} modules in "
            f"{model.cfg.n_layer} layers, {param_report(model)['adapter']:,} adapter params")


def report(result, models, args):
    s = result["settings"]
    print(f"\nSSMLoRA vs LoRA on {s['model']}, random weights, {s['device']} ({s['threads']} thread"
          f"{'s' * (s['threads'] > 1)}), {s['dtype']}, frozen weights {s['weights']}, rank {s['rank']}, alpha "
          f"{s['alpha']:g}, targets {s['targets']}")
    for n in ("lora", "ssmlora"):
        print(f"  {n:8} {describe(models[n])}")
    print("  (each method's own default, as the paper compares them; --dense compares dense with dense)"
          if not args.dense else "  (--dense: SSMLoRA dense too; the paper compares sparse SSMLoRA with dense LoRA)")
    print(f"  median of {s['repeats']} timed rounds after {s['warmup']} warm-up, the methods interleaved in each; "
          f"flags {json.dumps(s['flags'])}")
    if args.device.type == "cpu" and (s["load_at_start"] or 0) > (os.cpu_count() or 1) - 0.5:
        print(f"  busy machine: load average {s['load_at_start']:.1f} on {os.cpu_count()} cores at the start, "
              "expect noise")
    if args.cuda_graph and args.device.type != "cuda":
        print("  --cuda-graph skipped: CUDA graphs need a CUDA device")
    for mode, title in (("inference", "inference: forward, no grad, eval mode"),
                        ("train", "training step: forward, backward, AdamW step, zero_grad (none: frozen body, "
                                  "head only)")):
        if mode in args.modes:
            print(f"\n{title}\n" + table(result["results"], mode))
    noisy = [r for r in result["results"] if r["spread"] > NOISY]
    if noisy:
        hint = " (on a shared CPU, try --threads 1)" if s["threads"] > 1 else ""
        print(f"warning: {len(noisy)} of {len(result['results'])} rows spread by more than {NOISY:.0%}: the machine "
              f"was busy, so distrust their ratios and run again{hint}")
    print(result["memory_note"])


def run(args):
    family = mamba if args.preset in mamba.PRESETS else None
    quick = (MAMBA_QUICK if family else QUICK) if args.quick else {}
    cfg = (family.preset if family else preset)(args.preset, head="cls", num_labels=2,
                                                **{**quick, **({"n_layer": args.layers} if args.layers else {})})
    cfg = replace(cfg, pad_token_id=min(cfg.pad_token_id, cfg.vocab_size - 1))  # GPT-2 pads with its last id
    longest = max(args.lengths + args.train_lengths)
    if longest > cfg.max_tokens:
        raise ValueError(f"--lengths: {longest} is longer than this model's {cfg.max_tokens} positions")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other processes on the cores skew timings
    model_name = (f"{args.preset}{' (tiny --quick config)' if args.quick else ''}"
                  f"{f' ({cfg.n_layer} layers)' if args.layers else ''}")
    print(f"building {model_name} on {args.device}...", file=sys.stderr)
    t0 = time.perf_counter()
    models = build(cfg, args)
    partial = lambda rows: atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(  # noqa: E731
        dict(settings=dict(preset=args.preset, device=str(args.device), complete=False), results=rows), indent=2)))
    rows = sweep(cfg, models, args, partial)  # a run stopped half-way (a time limit) keeps the rows it measured
    memory_note = ("peak MB = the weights, buffers and optimizer state the model keeps, plus what one call adds at "
                   "its peak (CUDA allocator statistics); saved MB = what autograd keeps for the backward pass"
                   if args.device.type == "cuda" else "on a CPU no peak memory is measured; the training table's "
                   "saved MB is what autograd keeps for the backward pass (the same on any device)")
    settings = dict(model=model_name, preset=args.preset, quick=args.quick, device=str(args.device), dtype=args.dtype,
                    weights=args.weights, threads=torch.get_num_threads(), torch=torch.__version__, rank=args.rank,
                    alpha=args.alpha, targets=args.targets, lora_sparse=models["lora"].adapters.sparse,
                    ssmlora_sparse=models["ssmlora"].adapters.sparse, lengths=args.lengths,
                    batch_sizes=args.batch_sizes, train_lengths=args.train_lengths,
                    train_batch_sizes=args.train_batch_sizes, modes=args.modes, compile=args.compile and args.backend,
                    cuda_graph=args.cuda_graph and args.device.type == "cuda", repeats=args.repeats,
                    warmup=args.warmup, load_at_start=load, flags=flags(args.device), complete=True,
                    seconds=round(time.perf_counter() - t0, 1))
    result = dict(settings=settings, params={n: param_report(m) for n, m in models.items()},
                  memory_note=memory_note, results=rows)
    report(result, models, args)
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    print(f"\nwritten to {args.json} ({settings['seconds']:.0f} s)")
    if args.plot:
        from reproduce.plots import plot_bench
        plot_bench(result, args.plot)
        print(f"plot in {args.plot}")
    return result


def main(argv=None):
    args = get_args(argv)
    threads, strict = torch.get_num_threads(), getattr(torch._dynamo.config, "fail_on_recompile_limit_hit", None)
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    except (ValueError, OSError) as e:  # a run that cannot go as asked: say why, in one line
        sys.exit(f"error: {e}")
    finally:  # main may be called in-process (the tests): give the caller its settings back
        torch.set_num_threads(threads)
        if strict is not None:
            torch._dynamo.config.fail_on_recompile_limit_hit = strict


if __name__ == "__main__":
    main()
