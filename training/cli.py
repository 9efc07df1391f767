"""What the entry points (train.py, predict.py, bench.py) share at the command line: the error users see, the
one-line argument parser and the device choice."""
import argparse
import os
import sys

import torch


class UserError(ValueError):
    """Something the user can fix (a flag, a file, a download). Like model.ModelError and data.DataError it is a
    ValueError: every entry point prints a ValueError or an OSError as one `error: ...` line, never a traceback."""


class TrainError(UserError):
    """A run that cannot go on (a non-finite loss, a checkpoint of another run, an --out that holds an earlier run):
    the message says what to do."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump: the mistake is what a user needs to see
        sys.exit(f"error: {message} (see python {self.prog} --help)")


def pick_device(name):
    """torch.device for --device auto|cpu|cuda."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device (a CPU build of torch?)")
    return torch.device(name)


def free_cores():
    """CPU threads to compute with: the cores this process may use, less those that other work keeps busy (the
    one-minute load average, read before we start), at least one. On a quiet many-core machine that is every core;
    on a busy small one a single thread, which never waits for a core another process holds (on a shared 2-core
    machine torch's default of 2 threads made train.py several times slower)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - busy)))


def check_backend(name, flag):
    """A torch.compile backend name, checked when the flags are read: an unknown one would fail only at the first
    compiled call, after the model is built (and, in train.py, the data read)."""
    from torch._dynamo import list_backends  # imported here: dynamo takes seconds to import
    if name not in list_backends(exclude_tags=()):  # debug backends too: eager, aot_eager (what the tests use)
        raise UserError(f"{flag} {name!r} is not a torch.compile backend: choose one of "
                        f"{', '.join(list_backends())} (or eager, aot_eager: trace without compiling)")
    return name
