"""Small things every entry point shares: the error users see, atomic writes, the one-line argument parser and the
device choice."""
import argparse
import os
import sys

import torch


class UserError(Exception):
    """Something the user can fix (a flag, a file, a download): main() prints it as one `error: ...` line."""


def atomic_write(path, write):
    """Call write(tmp) to fill a temporary file beside `path`, then rename it over `path` in one step: a reader (or
    a run killed half-way) sees the old file or the new one, never half of one. The file follows the umask."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")  # same filesystem
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # some writers (safetensors) create 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
