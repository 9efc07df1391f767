"""
QLoRA's training memory, measured: the bytes one training forward saves for the backward pass, LoRA against QLoRA,
on a preset's shapes with random weights (they do not change sizes); on CUDA also the allocator's peak over the
forward and backward pass, above what the model keeps resident.

    python -m reproduce.qlora                          # roberta-base, batch 8 x 128
    python -m reproduce.qlora --batch-size 1 --length 32 --device cuda
"""
import json
import sys

import torch
import torch.nn as nn

import baselines
from baselines.qlora import saved_bytes, weight_bytes
from model import PRESETS, Model, preset
from ssmlora import Adapters
from training.cli import OneLineParser, pick_device


TARGETS = "query,value"  # both methods: what differs is the base, NF4 or not (QLoRA's own default adapts them all)


def block_weight_bytes(model):
    """Bytes of the blocks' linear weights as stored: NF4 for QLoRA, the full tensors otherwise."""
    stored, _ = weight_bytes(model)
    return stored or sum(x.weight.numel() * x.weight.element_size() for b in model.blocks for x in b.modules()
                         if isinstance(x, nn.Linear))


def measure(method, cfg, batch_size, length, device):
    torch.manual_seed(0)
    with torch.device(device):  # built where it runs: no host copy of a large model
        m = baselines.add_adapters(Model(cfg), Adapters(method, targets=TARGETS)).train()
    ids = torch.randint(3, cfg.vocab_size - 1, (batch_size, length), device=device)
    labels = torch.zeros(batch_size, dtype=torch.long, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    loss, saved = saved_bytes(m, lambda: m(ids, labels=labels)[1])
    loss.backward()
    peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
    return dict(saved_mb=saved / 1e6, block_weights_mb=block_weight_bytes(m) / 1e6,
                step_peak_above_resident_mb=None if peak is None else peak / 1e6)


def run(preset_name="roberta-base", batch_size=8, length=128, device=None, layers=None):
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = preset(preset_name, head="cls", num_labels=2, **({"n_layer": layers} if layers else {}))
    if length > cfg.max_tokens:  # before building: an index error deep in the embedding otherwise
        raise ValueError(f"--length {length} is longer than {preset_name}'s {cfg.max_tokens} positions")
    rows = {method: measure(method, cfg, batch_size, length, device) for method in ("lora", "qlora")}
    return dict(preset=preset_name, layers=cfg.n_layer, batch_size=batch_size, length=length, device=str(device),
                dtype="fp32", rank=8, targets=TARGETS, torch=torch.__version__, methods=rows)


def main(argv=None):
    p = OneLineParser(prog="-m reproduce.qlora", description=__doc__.split("\n\n")[1].strip())
    p.add_argument("--preset", default="roberta-base", choices=PRESETS, metavar="NAME",
                   help=f"{', '.join(PRESETS)} (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--layers", type=int, help="only this many of the preset's layers")
    a = p.parse_args(argv)
    if min(a.batch_size, a.length, 1 if a.layers is None else a.layers) < 1:  # --layers 0 built them all
        p.error("--batch-size, --length and --layers must be at least 1")
    try:
        r = run(a.preset, a.batch_size, a.length, str(pick_device(a.device or "auto")), a.layers)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    for method, row in r["methods"].items():
        peak = row["step_peak_above_resident_mb"]
        print(f"{method:6} saved for backward {row['saved_mb']:8.1f} MB   block linear weights "
              f"{row['block_weights_mb']:7.1f} MB" + ("" if peak is None else f"   step peak {peak:8.1f} MB"))
    print(json.dumps({k: v for k, v in r.items() if k != "methods"}))
    return r


if __name__ == "__main__":
    main()
