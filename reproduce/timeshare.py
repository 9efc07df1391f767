"""
The Time Module's own share in trained SSMLoRA adapters, measured on the dev set. Each module adds
s (x_new + h_norm) W_b to its frozen layer (eq. 10): x_new W_b is LoRA's term, h_norm W_b the state's, which is all
SSMLoRA adds over LoRA on the same layers. This evaluates each run as trained, then twice more with every module's
state changed: h_norm taken out (what is left is exactly sparse LoRA with the trained W_a, W_b), and h_norm replaced
by its mean over the dev tokens (which keeps the constant part of the term, about half of a sum of W_b's rows, as
h_norm lies in [0, 1], and takes out what the state says about each token). It prints the metric each way, by input
length too, and the size of the state's term beside LoRA's (root mean square over the real tokens).

    python -m reproduce.timeshare out/sst2-ssmlora-r8 out/sst2-ssmlora-r8-s1 --length-bins 0,23,32
    python -m reproduce.timeshare runs/sst2/ssmlora-r8/seed0/adapters.safetensors --max-eval 200 --json share.json

A run is its folder or its adapter file; its task, base model, data folder and --max-len are the file's.
"""
import json
import statistics
import sys
from pathlib import Path

import torch

from files import atomic_write, check_new
from files.hub import resolve
from files.tokenizer import load_tokenizer
from ssmlora import SSMLoRALinear
from tasks import encode, get_task, lengths, load_data
from training import flags
from training.build import build_model
from training.cli import OneLineParser, UserError, pick_device
from training.evaluate import evaluate_dev


class StateTerm:
    """Forward hooks on every SSMLoRALinear: sum the squares of s h_norm W_b and s x_new W_b, and h_norm itself, over
    the real tokens; with `means` ({module: h_norm's mean}, or 0 for every module) put that in h_norm's place in the
    output. The model itself is not changed."""

    def __init__(self, model, means=None):
        self.model, self.means, self.mask, self.hooks, self.incoming = model, means, None, [], {}
        self.modules = {n: m for n, m in model.named_modules() if isinstance(m, SSMLoRALinear)}
        self.squares = {n: [0.0, 0.0] for n in self.modules}  # name: [state's term, LoRA's term]
        self.sums = {n: [0.0, 0] for n in self.modules}       # name: [h_norm summed over the tokens (r,), tokens]

    def __enter__(self):
        self.hooks.append(self.model.register_forward_pre_hook(self.keep_mask))
        for name, m in self.modules.items():
            self.hooks += [m.register_forward_pre_hook(self.keep_state), m.register_forward_hook(self.hook(name))]
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()

    def keep_mask(self, model, args):  # model(input_ids, attention_mask, ...): which positions are real tokens
        self.mask = args[1].bool() if len(args) > 1 and args[1] is not None else None

    def keep_state(self, m, args):  # h_t as the module will read it, before it reads (and so removes) it
        self.incoming[m] = m.axes.h[m.axis][1] if m.position else None  # None: h_0 = 0

    def hook(self, name):
        def after(m, args, y):
            x_new = args[0] @ m.W_a                                    # eq. (5), as the module computed it
            h = self.incoming.pop(m)
            h_norm = m.next_state(x_new, torch.zeros_like(x_new) if h is None else h)  # eq. (8); eval: no dropout
            state, lora = m.scaling * h_norm @ m.W_b, m.scaling * x_new @ m.W_b  # the two terms of eq. (10)
            real = self.mask if self.mask is not None and self.mask.shape == y.shape[:2] else slice(None)
            self.squares[name][0] += float(state[real].float().square().sum())
            self.squares[name][1] += float(lora[real].float().square().sum())
            self.sums[name][0] += h_norm[real].float().reshape(-1, h_norm.shape[-1]).sum(0)
            self.sums[name][1] += h_norm[real].numel() // h_norm.shape[-1]
            if self.means is None:
                return y
            mean = self.means if isinstance(self.means, (int, float)) else self.means[name].to(h_norm.dtype)
            return y - m.scaling * (h_norm - mean) @ m.W_b            # h_norm's place in eq. (10) taken by mean
        return after

    def mean_states(self):
        return {n: s / count for n, (s, count) in self.sums.items()}

    def ratios(self):
        """{module: RMS of the state's term / RMS of LoRA's}, over every token seen."""
        return {n: (s / l) ** 0.5 if l else float("nan") for n, (s, l) in self.squares.items()}


def measure(path, train_flags):
    """One run: its dev metrics as trained and without the state's term, by length, and the per-module ratios."""
    args = flags.parse(["--eval-only", str(path), *train_flags])
    task, device = get_task(args.task), pick_device(args.device)
    model = build_model(task, args.model, args.random_init, None, args.eval_only, seed=args.seed)
    if model.adapters.method != "ssmlora":
        raise UserError(f"{path} holds {model.adapters.method} adapters: only SSMLoRA's have a state")
    tok = load_tokenizer(resolve(args.tokenizer or (args.model if args.random_init else model.source)),
                         family=model.cfg.family)
    data = load_data(task, args)
    for split in task.dev if args.max_eval else ():  # the first N, as train.py --max-eval
        data[split] = data[split][:args.max_eval]
    args.pad_to = None
    encoded = {s: encode(tok, task, data[s], min(args.max_len, model.cfg.max_tokens), s, {}, args.doc_stride)
               for s in task.dev}
    model.to(device)
    out = {"run": str(path), "task": task.name, "metric": task.select}
    with torch.no_grad(), StateTerm(model) as kept:
        out["trained"], out["trained_by_length"] = evaluate_dev(model, encoded, data, task, args, device)
    for way, means in (("zero", 0), ("mean", kept.mean_states())):
        with torch.no_grad(), StateTerm(model, means):
            out[way], out[f"{way}_by_length"] = evaluate_dev(model, encoded, data, task, args, device)
    out["state_to_lora_rms"] = kept.ratios()
    return out


WAYS = {"zero": "h_norm = 0", "mean": "h_norm = its mean"}


def report(results):
    for r in results:
        split, metric = next(iter(r["trained"])), r["metric"]
        ratios = list(r["state_to_lora_rms"].values())
        print(f"{r['run']}: {split} {metric}, as trained and with every module's state changed (the change); RMS of "
              f"s h_norm W_b / s x_new W_b: {min(ratios):.3f} to {max(ratios):.3f} over {len(ratios)} modules")
        print(f"  {'':>12} {'as trained':>10} " + " ".join(f"{WAYS[w]:>26}" for w in WAYS))
        rows = [("all", r["trained"][split][metric], [r[w][split][metric] for w in WAYS], None)]
        bins = (r["trained_by_length"] or {}).get(split, [])
        rows += [(b["bin"], b[metric], [r[f"{w}_by_length"][split][i][metric] for w in WAYS], b["n"])
                 for i, b in enumerate(bins) if b["n"]]
        for name, a, others, n in rows:
            label = name if n is None else f"{name} ({n})"
            print(f"  {label:>12} {100 * a:>10.2f} " + " ".join(f"{100 * o:>17.2f} ({100 * (o - a):+.2f})"
                                                                   for o in others))
    if len(results) > 1:
        for w in WAYS:
            change = [100 * (r[w][s][r["metric"]] - r["trained"][s][r["metric"]])
                      for r in results for s in [next(iter(r["trained"]))]]
            print(f"{WAYS[w]}: the change over {len(change)} runs {statistics.fmean(change):+.2f} ± "
                  f"{statistics.stdev(change):.2f} ({', '.join(f'{c:+.2f}' for c in change)})")


def main(argv=None):
    p = OneLineParser(prog="-m reproduce.timeshare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="SSMLoRA run folders or adapter files")
    p.add_argument("--length-bins", default="0", help="as train.py's (default: none)")
    p.add_argument("--max-eval", type=int, help="the first N dev examples only")
    p.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--json", help="also write every figure to this new file")
    args = p.parse_args(argv)
    for flag in ("max_eval", "batch_size", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.length_bins.strip() not in ("0", "off"):
        try:
            lengths.edges(args.length_bins)
        except ValueError as e:
            p.error(str(e))
    train_flags = ["--length-bins", args.length_bins, "--batch-size", str(args.batch_size)]
    train_flags += ["--max-eval", str(args.max_eval)] if args.max_eval else []
    threads = torch.get_num_threads()
    try:
        if args.json:
            check_new(args.json, "--json")
        runs = [Path(r) / "adapters.safetensors" if Path(r).is_dir() else Path(r) for r in args.runs]
        for r in runs:
            if not r.is_file():
                raise UserError(f"{r} does not exist: give a run folder (with adapters.safetensors) or an adapter file")
        torch.set_num_threads(args.threads or threads)
        results = [measure(r, train_flags) for r in runs]
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: nothing was written")
    finally:
        torch.set_num_threads(threads)
    report(results)
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    return results


if __name__ == "__main__":
    main()
