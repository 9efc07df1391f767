"""
The adapters leave the project and come in: Hugging Face PEFT folders (peft.py: export, import), merged
Hugging Face checkpoints (merged.py), both as one command (export.py: python -m interop.export peft|merge), and our
names back to Hugging Face's (names.py).
train.py --eval-only and predict.py import from here; ssmlora.py and model.py never do.

new_folder, which both exports write through: a folder appears whole or not at all, and never over anything.
"""
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


class ExportError(ValueError):
    """An export that would change what the user has (its sources, an earlier export): the message says what to do."""


def _same(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_new_folder(out, sources=None):
    """Refuse an `out` that is one of the folders an export reads ({folder: what it is}) or that holds anything."""
    out = Path(out)
    for folder, what in (sources or {}).items():
        if folder and _same(out, folder):
            raise ExportError(f"{out} is {what}: an export never writes into what it reads; pass a new folder")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file, not a folder: pass a new folder")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ExportError(f"{out} cannot be made: {parent} is a file")
    if out.is_dir() and any(out.iterdir()):
        raise ExportError(f"{out} already holds files (an earlier export?): pass a new folder, or remove it first")


@contextmanager
def new_folder(out, sources=None):
    """Yield a temporary folder beside `out` to fill; when the block ends without an error, the folder becomes `out`
    in one rename, so a failed export leaves nothing behind and a reader never sees half a folder. `out` must be new
    or empty (check_new_folder). Files follow the umask, as files.atomic_write's do (safetensors creates 0600)."""
    check_new_folder(out, sources)
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"  # the same filesystem: the rename is atomic
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed export of this pid
    tmp.mkdir()
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        os.replace(tmp, out)  # rename(2) replaces an empty folder only; a folder filled meanwhile makes it fail
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
