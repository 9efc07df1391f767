"""
What does SSMLoRA cost compared with LoRA? Median latency and peak memory of the frozen base model ("none"), LoRA
and SSMLoRA side by side, over batch sizes and sequence lengths, in inference and in a full training step.

    python bench.py                  # roberta-base with random weights (they do not change speed)
    python bench.py --dense          # SSMLoRA dense too: the same modules as LoRA
    python bench.py --device cuda --dtype fp32 --lengths 16,128,512 --batch-sizes 1,16
    python bench.py --quick          # a tiny model in seconds (what the tests run)
    python bench.py --plot docs/bench.png   # latency and peak memory against length, per method (matplotlib)
    python bench.py --preset llama2-7b --layers 2 --no-reference    # LLaMA-2-7B's shapes, 2 of its 32 layers
    python bench.py --preset mamba-130m   # a state space model: none, LoRA, SSMLoRA and SDT (docs/mamba.md)

With `transformers` installed, a reference row times its implementation of the same checkpoint (inference only).
"""
import argparse
import ctypes
import gc
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from baselines.qlora import weight_memory
from files import atomic_write
from files.hub import config_to_hf, from_pretrained
from reproduce.plots import plot_bench
from mamba import model as mamba, sdt
from model import PRESETS, Model, preset
from ssmlora import Adapters, adapter_modules, add_adapters, param_report
from training.cli import OneLineParser, free_cores

COMPARED = ("none", "lora", "ssmlora")  # none: the frozen base and its head (its training step trains the head)
MAMBA = dict(targets="in_proj,out_proj", sdt_rho=0.75)  # Mamba: what LoRA and SSMLoRA adapt; SDT (on out_proj) too
REF = "transformers"
ADAPTED = "query,value"  # the projections both methods adapt, unless --targets says otherwise
# per device: a GPU gets a sweep like the paper's Table 12; two CPU cores get a few short shapes, to stay in a minute
SWEEP = {"cuda": ([16, 32, 64, 128, 256, 512], [1, 16], 5, 2), "cpu": ([16, 64, 128], [1], 5, 1),
         "quick": ([8, 16], [2], 2, 1)}  # lengths, batch sizes, repeats, warm-up rounds
QUICK = dict(n_layer=4, n_head=2, d_model=32, d_ff=64, vocab_size=128, n_positions=40)
MAMBA_QUICK = dict(n_layer=4, d_model=32, vocab_size=128)
NOISY = 0.25  # a spread of the timed rounds above this, relative to the median, makes a row's ratios suspect
TOLERANCE = 1e-4  # largest difference of fp32 logits, ours vs transformers, on the same weights


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
                   help=f"default roberta-base; one of {', '.join([*PRESETS, *mamba.PRESETS])}")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto: cuda if available")
    p.add_argument("--dtype", choices=("bf16", "fp32"), help="bf16 autocast or fp32 (default: bf16 on CUDA, else fp32)")
    p.add_argument("--lengths", type=int_list, help="sequence lengths, e.g. 16,64,128 (default: per device)")
    p.add_argument("--batch-sizes", type=int_list, help="e.g. 1,16 (default: per device)")
    p.add_argument("--repeats", type=int, help="timed rounds, the median is reported (default 5, --quick 2)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default: CPU 1, CUDA 2, --quick 1)")
    p.add_argument("--threads", type=int, help="CPU threads (default: the cores other work leaves free, from the "
                   "load average; --quick: 1, as a tiny model gains "
                   "nothing from more and one thread cannot stall waiting for a core that another process holds)")
    p.add_argument("--layers", type=int, help="build only this many of the preset's layers (e.g. llama2-7b on a CPU)")
    p.add_argument("--targets", help=f"what both methods adapt (default {ADAPTED}, Mamba {MAMBA['targets']}; see "
                   "train.py)")
    p.add_argument("--rank", type=int, default=8, help="default 8")
    p.add_argument("--alpha", type=float, default=16.0, help="default 16 (scaling s = alpha / rank)")
    p.add_argument("--dense", action="store_true", help="SSMLoRA dense too (query and value in every layer, as LoRA); "
                   "default: each method's own, as the paper compares them: LoRA dense, SSMLoRA sparse")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, help="time transformers' model of the same "
                   "weights (inference); default: on when transformers is importable")
    p.add_argument("--quick", action="store_true", help="tiny model and shapes, few repeats: a smoke test")
    p.add_argument("--json", default="out/bench.json", help="where the results are written (default out/bench.json)")
    p.add_argument("--plot", metavar="FILE", help="also draw latency and peak memory against length per method into "
                   "FILE (a .png; needs matplotlib; python -m reproduce.plots redraws it from --json)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but torch sees no CUDA device (a CPU build of torch?)")
    a.device = torch.device("cuda" if a.device != "cpu" and torch.cuda.is_available() else "cpu")
    a.dtype = a.dtype or ("bf16" if a.device.type == "cuda" else "fp32")
    lengths, batch_sizes, repeats, warmup = SWEEP["quick" if a.quick else a.device.type]
    a.lengths, a.batch_sizes = a.lengths or lengths, a.batch_sizes or batch_sizes
    a.repeats, a.warmup = (repeats if a.repeats is None else a.repeats), (warmup if a.warmup is None else a.warmup)
    a.threads = a.threads or (1 if a.quick else free_cores())
    a.targets = a.targets or (MAMBA["targets"] if a.preset in mamba.PRESETS else ADAPTED)
    if min(a.repeats, a.rank, a.threads, a.layers or 1) < 1 or a.warmup < 0 or a.alpha <= 0:
        p.error("--repeats, --rank, --threads and --layers must be at least 1, --warmup at least 0, --alpha above 0")
    has_hf = importlib.util.find_spec("transformers") is not None
    if a.reference and not has_hf:
        p.error("--reference needs the transformers package (pip install transformers)")
    if a.reference and a.preset in mamba.PRESETS:
        p.error("--reference: transformers has no Mamba classifier to time (tests/test_mamba.py checks parity)")
    a.reference = has_hf and a.preset not in mamba.PRESETS if a.reference is None else a.reference
    if a.plot and importlib.util.find_spec("matplotlib") is None:  # before the sweep, not after it
        p.error("--plot needs the matplotlib package (pip install matplotlib)")
    return a


# ----------------------------------------------------------------------------------------------------------
# models: one set of frozen weights shared by the three methods, and transformers' model of the same weights

def twin(base):
    """A Model holding the base's own weight tensors (no copy) and its own copy of the head: the three methods
    side by side cost one set of weights, and each trains only its own head."""
    with torch.device("meta"):  # nothing allocated or initialised: every tensor is assigned below
        m = type(base)(base.cfg)
    m.load_state_dict({k: v.clone() if k.startswith("head.") else v for k, v in base.state_dict().items()}, assign=True)
    return m


def reference_pair(cfg):
    """transformers' classifier for cfg with random weights, and ours loaded from the checkpoint it saves."""
    import transformers as hf  # test-only dependency: imported only when asked for
    hf.utils.logging.disable_progress_bar()
    cls = {"gpt2": hf.GPT2ForSequenceClassification, "roberta": hf.RobertaForSequenceClassification,
           "bert": hf.BertForSequenceClassification, "llama": hf.LlamaForSequenceClassification,
           "deberta-v2": hf.DebertaV2ForSequenceClassification}[cfg.family]
    torch.manual_seed(0)
    ref = cls(config_to_hf(cfg)).eval()
    with tempfile.TemporaryDirectory() as tmp:  # through a real checkpoint folder: the path users take
        ref.save_pretrained(tmp)
        return ref, from_pretrained(tmp, num_labels=cfg.num_labels)


def make_batch(cfg, B, T, device):
    g = torch.Generator().manual_seed(B * 100_003 + T)
    ids = torch.randint(3, cfg.vocab_size - 1, (B, T), generator=g)  # no special ids, no padding (GPT-2's is the last)
    labels = torch.randint(0, cfg.num_labels, (B,), generator=g)
    return ids.to(device), None, labels.to(device)  # no padding: no mask, as data.batches passes it


def build(cfg, args):
    """{method: model}, transformers' model or None, and the largest logit difference between them."""
    ref, check = None, None
    if args.reference:
        ref, base = (m.to(args.device) for m in reference_pair(cfg))
        ids, mask, _ = make_batch(cfg, 2, min(args.lengths), args.device)
        with torch.no_grad():  # fp32, eval: the same weights must give the same logits, or the row means nothing
            check = (base(ids, mask)[0] - ref(input_ids=ids, attention_mask=mask).logits).abs().max().item()
        if not check <= TOLERANCE:
            print(f"warning: our logits differ from transformers' by {check:.2e} (> {TOLERANCE}) on the same "
                  f"weights; the reference row is left out", file=sys.stderr)
            ref = None
    else:
        torch.manual_seed(0)
        base = (mamba.Mamba if cfg.family == "mamba" else Model)(cfg).to(args.device)
    models = {}
    for method in COMPARED:  # sparse=None: the method's own default (SSMLoRA sparse, LoRA dense)
        sparse = False if method == "ssmlora" and args.dense else None
        adapters = Adapters(method, args.rank, args.alpha, targets=args.targets, sparse=sparse)
        models[method] = add_adapters(twin(base), adapters)
    if cfg.family == "mamba":  # SDT's main run, on a selection of its sizes (the warm-up does not change speed)
        adapters = Adapters("sdt", args.rank, args.rank, targets="out_proj")  # alpha = rank, as the authors
        models["sdt"] = sdt.add_sdt(twin(base), adapters, sdt.placeholder(cfg, MAMBA["sdt_rho"]))
    return models, ref, check


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


def proc_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def added_peak(f, device):
    """Bytes that one call of f adds, at its peak, to what was in use just before it. CUDA: the allocator's own
    statistics. CPU: the rise of the process's resident set. ru_maxrss is a lifetime high-water mark and cannot be
    reset, so we use Linux's VmHWM, which writing 5 to /proc/self/clear_refs resets; malloc_trim first hands freed
    heap pages back to the kernel, so that a call re-using them cannot hide its rise. None elsewhere."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        f()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = proc_kib("VmRSS")
    except (OSError, AttributeError, StopIteration):  # not Linux with glibc
        return None
    f()
    return (proc_kib("VmHWM") - before) * 1024


def resident(model, opt=None):
    """Bytes of the weights, buffers and optimizer state a model keeps between calls (shared storage counted once)."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [t for s in (opt.state.values() if opt else ()) for t in s.values() if torch.is_tensor(t)]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def step_fn(model, mode, batch, opt, amp):
    ids, mask, labels = batch
    if mode == "inference":
        def f():
            with torch.no_grad(), amp():
                model(input_ids=ids, attention_mask=mask)
        return f

    def f():  # a full training step as train.py takes it, less clipping and the scheduler
        with amp():
            _, loss = model(ids, mask, labels=labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return f


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


def sweep(cfg, models, ref, args):
    opts = {n: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for n, m in models.items()}
    amp = lambda: torch.autocast(args.device.type, torch.bfloat16, enabled=args.dtype == "bf16")  # noqa: E731
    rows = []
    for mode in ("inference", "train"):
        for m in models.values():
            m.train(mode == "train")  # dropout on in the training step, as in training
        for B in args.batch_sizes:
            for T in args.lengths:
                batch = make_batch(cfg, B, T, args.device)
                fns = {n: step_fn(m, mode, batch, opts[n], amp) for n, m in models.items()}
                if ref is not None and mode == "inference":
                    fns[REF] = step_fn(ref, mode, batch, None, amp)
                sec, spread = measure(fns, args.device, args.warmup + args.repeats, args.warmup)
                ms = {n: 1e3 * s for n, s in sec.items()}
                print(f"  {mode:9} batch {B:3} length {T:4}: " + "  ".join(f"{n} {v:.1f} ms" for n, v in ms.items()),
                      file=sys.stderr, flush=True)
                mb = {}
                for n, f in fns.items():  # the model's own state, plus what one call adds on top of it
                    added = added_peak(f, args.device)
                    state = resident({**models, REF: ref}[n], opts.get(n) if mode == "train" else None)
                    mb[n] = None if added is None else (state + added) / 2**20
                ratios = {"ssmlora/lora": ms["ssmlora"] / ms["lora"], "lora/none": ms["lora"] / ms["none"]}
                if "sdt" in ms:
                    ratios["sdt/lora"] = ms["sdt"] / ms["lora"]
                if REF in ms:
                    ratios["none/transformers"] = ms["none"] / ms[REF]
                rows.append(dict(mode=mode, batch=B, length=T, ms=ms, spread=max(spread.values()), peak_mb=mb,
                                 time_ratios=ratios,
                                 memory_ratios={"ssmlora/lora": mb["ssmlora"] / mb["lora"]} if mb["lora"] else {}))
                del batch, fns
                if args.device.type == "cuda":  # hand this shape's blocks back before the next one
                    gc.collect()
                    torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------------------
# report

def table(rows, mode, names):
    """Fixed-width text, one line per shape: median ms per method ("hf": transformers), the time ratios, then
    LoRA's and SSMLoRA's peak MB and their ratio."""
    short = {"ssmlora": "ssm", REF: "hf"}
    rs = [r for r in rows if r["mode"] == mode]
    ratios = list(rs[0]["time_ratios"])
    heads = ["batch", "len", *[f"{short.get(n, n)} ms" for n in names],
             *["/".join(short.get(n, n) for n in k.split("/")) for k in ratios], "lora MB", "ssm MB", "MB ratio"]
    widths = [max(5, len(h)) for h in heads]
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    for r in rs:
        mb = r["peak_mb"]
        cells = [str(r["batch"]), str(r["length"]), *[f"{r['ms'][n]:.1f}" for n in names],
                 *[f"{r['time_ratios'][k]:.3f}" for k in ratios],
                 *["n/a" if mb[n] is None else f"{mb[n]:.1f}" for n in ("lora", "ssmlora")],
                 f"{r['memory_ratios']['ssmlora/lora']:.3f}" if r["memory_ratios"] else "n/a"]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def describe(model):
    a = model.adapters  # sparse: with query,value, the query on even layers and the value on odd ones
    where = (f"{','.join(a.targets)}, the attention ones (Mamba: in_proj, out_proj) alternating over the layers "
             "(paper §3.4)" if a.sparse
             else f"{','.join(a.targets)} in every layer")
    return (f"{'sparse' if a.sparse else 'dense'}: {where}; {len(adapter_modules(model))} modules in "
            f"{model.cfg.n_layer} layers, {param_report(model)['adapter']:,} adapter params")


def report(result, models, args):
    s, check = result["settings"], result["reference"]["max_abs_logit_diff"]
    print(f"\nSSMLoRA vs LoRA on {s['model']}, random weights, {s['device']} ({s['threads']} thread"
          f"{'s' * (s['threads'] > 1)}), {s['dtype']}, rank {s['rank']}, alpha {s['alpha']:g}, targets {s['targets']}")
    for n in ("lora", "ssmlora"):
        print(f"  {n:8} {describe(models[n])}")
    print("  (each method's own default, as the paper compares them; --dense compares dense with dense)"
          if not args.dense else "  (--dense: SSMLoRA dense too; the paper compares sparse SSMLoRA with dense LoRA)")
    print(f"  median of {s['repeats']} timed rounds after {s['warmup']} warm-up, the methods interleaved in each")
    if result["reference"]["used"]:
        print(f"  {REF}: its own implementation of the same checkpoint (fp32 logits agree to {check:.1e})")
    if args.device.type == "cpu" and (s["load_at_start"] or 0) > (os.cpu_count() or 1) - 0.5:
        print(f"  busy machine: load average {s['load_at_start']:.1f} on {os.cpu_count()} cores at the start, "
              "expect noise")
    if args.device.type == "cpu" and not args.quick:
        print("  CPU default: a short sweep, to finish in about a minute; a GPU gets lengths 16-512 at batch 1 and 16")
    names = [*models, *([REF] if result["reference"]["used"] else [])]
    print("\ninference: forward, no grad, eval mode\n" + table(result["results"], "inference", names))
    print("\ntraining step: forward, backward, AdamW step, zero_grad (none: frozen body, head only)\n"
          + table(result["results"], "train", list(models)))
    noisy = [r for r in result["results"] if r["spread"] > NOISY]
    if noisy:
        hint = " (on a shared CPU, try --threads 1)" if s["threads"] > 1 else ""
        print(f"warning: {len(noisy)} of {len(result['results'])} rows spread by more than {NOISY:.0%}: the machine "
              f"was busy, so distrust their ratios and run again{hint}")
    print(result["memory_note"])
    w = result["weight_memory"]
    if w is None:  # Mamba: no QLoRA here
        return
    print(f"weights of the blocks' linears: LoRA (float32) {w['lora_bytes'] / 2**20:.1f} MiB, QLoRA (NF4 + double-"
          f"quantized constants) {w['qlora_bytes'] / 2**20:.1f} MiB, {w['lora_bytes'] / w['qlora_bytes']:.2f}x less")


def qlora_memory(cfg, args):
    """Bytes of the blocks' linear weights: float32 (LoRA) and QLoRA's NF4 (baselines/qlora.py), from shapes alone."""
    stored, full = weight_memory(cfg, Adapters("qlora", args.rank, args.alpha, targets=args.targets))
    return {"lora_bytes": full, "qlora_bytes": stored}


def run(args):
    if args.preset in mamba.PRESETS:
        cfg = mamba.preset(args.preset, head="cls", num_labels=2, **(MAMBA_QUICK if args.quick else {}),
                           **({"n_layer": args.layers} if args.layers else {}))
    else:
        cfg = preset(args.preset, head="cls", num_labels=2, **(QUICK if args.quick else {}),
                     **({"n_layer": args.layers} if args.layers else {}))
    cfg = replace(cfg, pad_token_id=min(cfg.pad_token_id, cfg.vocab_size - 1))  # GPT-2 pads with its last id
    if max(args.lengths) > cfg.max_tokens:
        raise ValueError(f"--lengths: {max(args.lengths)} is longer than this model's {cfg.max_tokens} positions")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other processes on the cores skew timings
    model_name = (f"{args.preset}{' (tiny --quick config)' if args.quick else ''}"
                  f"{f' ({cfg.n_layer} layers)' if args.layers else ''}")
    print(f"building {model_name} on {args.device}...", file=sys.stderr)
    models, ref, check = build(cfg, args)
    rows = sweep(cfg, models, ref, args)
    how = ("CUDA allocator statistics (max_memory_allocated after reset_peak_memory_stats)"
           if args.device.type == "cuda" else "on CPU, the rise of the process's resident set during the call (Linux "
           "VmHWM, reset before each call through /proc/self/clear_refs after malloc_trim), to page granularity")
    memory_note = ("peak MB = the weights, buffers and optimizer state the model keeps, plus what one call adds at its "
                   f"peak: {how}" if rows[0]["peak_mb"]["none"] is not None else "peak memory: not measured here "
                   "(needs CUDA, or Linux with glibc)")
    ref_note = ("transformers' logits disagreed with ours" if args.reference else "--no-reference"
                if importlib.util.find_spec("transformers") else "transformers is not installed")
    settings = dict(model=model_name, preset=args.preset, quick=args.quick, device=str(args.device), dtype=args.dtype,
                    threads=torch.get_num_threads(), torch=torch.__version__, rank=args.rank, alpha=args.alpha,
                    targets=args.targets, lora_sparse=models["lora"].adapters.sparse,
                    ssmlora_sparse=models["ssmlora"].adapters.sparse, lengths=args.lengths,
                    batch_sizes=args.batch_sizes, repeats=args.repeats, warmup=args.warmup, load_at_start=load)
    result = dict(settings=settings, params={n: param_report(m) for n, m in models.items()},
                  reference=dict(used=ref is not None, max_abs_logit_diff=check, tolerance=TOLERANCE,
                                 note=None if ref is not None else ref_note),
                  memory_note=memory_note, results=rows,
                  weight_memory=None if cfg.family == "mamba" else qlora_memory(cfg, args))
    report(result, models, args)
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    print(f"\nwritten to {args.json}")
    if args.plot:
        plot_bench(result, args.plot)
        print(f"plot in {args.plot}")
    return result


def main(argv=None):
    args = get_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    except (ValueError, OSError) as e:  # a run that cannot go as asked: say why, in one line
        sys.exit(f"error: {e}")
    finally:  # main may be called in-process (the tests): give the caller its setting back
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
