"""
Data parallelism for processes started by `torchrun`: every process holds the whole model, trains on its own share
of each optimizer step's batch, and the gradients of the trained parameters are summed across processes before the
step, so every process takes the same step. In a plain `python train.py` there is one process and every function
here returns at once.

    device = init(device)        join torchrun's process group: NCCL between GPUs, gloo between CPU processes
    rank(), world(), is_main()   this process's number, how many there are, whether it is rank 0 (the one that writes)
    main_first()                 a with-block rank 0 runs before the others (downloads into a cache)
    my_share(rows, k)            this process's k pieces of rows (a step's batch, the dev set)
    gather_rows(x, n)            every process's share of an n-row result, back in row order, on every process
    sum_(x), sum_gradients(params), gather_objects(obj), close()
"""
import os
import sys
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as td

from training.cli import UserError


class Stopped(UserError):
    """Rank 0 stopped in a main_first() block; it says why, the others stop without a word."""


def rank():
    return int(os.environ.get("RANK", "0"))  # torchrun's environment: right before init() and after it


def world():
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main():
    return rank() == 0


def init(device):
    """Join the process group torchrun describes in the environment, if it started more than one process. Returns
    the device this process computes on: under torchrun on CUDA, its own GPU (cuda:LOCAL_RANK). Processes other
    than rank 0 print nothing (stdout goes to os.devnull; errors still reach stderr): rank 0 speaks for them all."""
    if world() == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    td.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not is_main():
        sys.stdout = open(os.devnull, "w")
    return device


def close():
    if td.is_initialized():
        td.destroy_process_group()


@contextmanager
def main_first():
    """Rank 0 runs the block first (it may download checkpoints or data into a cache), the others after it, from
    the cache, so that no two processes write the same cache at once. If rank 0 fails in the block (no network, a
    missing file), the others raise Stopped instead of waiting for it."""
    if world() == 1:
        yield
        return
    if not is_main() and not _from_main(None):
        raise Stopped("rank 0 stopped")
    try:
        yield
    except BaseException:
        if is_main():
            _from_main(False)
        raise
    if is_main():
        _from_main(True)


def _from_main(ok):
    box = [ok]
    td.broadcast_object_list(box, src=0)
    return box[0]


def my_share(rows, k=1):
    """This process's share of rows, as k pieces: rows are cut into world() * k contiguous pieces of near-equal
    size (sizes differ by one at most, larger first), and process r takes pieces r*k ... r*k + k - 1. Cutting
    contiguously keeps the rows in order across processes: process 0's pieces come first. Pieces are empty when
    rows are fewer than pieces (the short last batch of an epoch)."""
    pieces = np.array_split(rows, world() * k)
    return pieces[rank() * k:(rank() + 1) * k]


def gather_rows(x, n):
    """The whole n-row result, in row order, on every process, from each process's rows my_share(range(n))[0]
    (x, on this process's device; rows past its share are dropped). all_gather needs equal shapes: each share is
    padded to the longest, then trimmed."""
    if world() == 1:
        return x
    sizes = [len(p) for p in np.array_split(np.arange(n), world())]
    padded = x.new_zeros(sizes[0], *x.shape[1:])
    padded[:sizes[rank()]] = x[:sizes[rank()]]
    everyone = [torch.empty_like(padded) for _ in sizes]
    td.all_gather(everyone, padded)
    return torch.cat([rows[:size] for rows, size in zip(everyone, sizes)])


def sum_(x):
    """The tensor x summed over all processes, on every process (in place)."""
    if world() > 1:
        td.all_reduce(x)
    return x


def sum_gradients(params):
    """Sum the gradients of params (the trained parameters) over all processes, in one all-reduce of one flat
    buffer: the frozen body has no gradients and costs no communication. A process that had no examples in the
    step (the short last batch of an epoch) has no gradients and adds zeros; a parameter that has a gradient in no
    process keeps none, so AdamW skips it as it would in one process."""
    if world() == 1:
        return
    has = [p.grad is not None for p in params]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                     + [torch.tensor(has, dtype=params[0].dtype, device=params[0].device)])
    td.all_reduce(flat)
    *grads, counts = flat.split([p.numel() for p in params] + [len(params)])
    for p, g, count in zip(params, grads, counts.tolist()):
        p.grad = g.view_as(p) if count else None


def gather_objects(obj):
    """[rank 0's obj, rank 1's obj, ...] on every process (small picklable objects: random generator states)."""
    if world() == 1:
        return [obj]
    everyone = [None] * world()
    td.all_gather_object(everyone, obj)
    return everyone
