"""
What goes to and comes from disk: every file format and download of the project, apart from the task readers'
parsing of their own files (tasks/).

    hub.py        original Hugging Face checkpoints: found or downloaded, config.json <-> Config, weights, loaded
                  exactly (from_pretrained); used by train.py, predict.py, bench.py and the tests
    tokenizer.py  the checkpoint's own tokenizer from its folder (load_tokenizer), DeBERTa's through spm.py
    spm.py        DeBERTa's spm.model read as a tokenizers Unigram, converted once and cached
    adapters.py   adapters.safetensors: what a method trained, with the settings that rebuild it
    downloads.py  a benchmark's official files, in --data-dir or downloaded once into a cache, all or nothing

and atomic_write, which every writer here uses: a file is replaced whole or not at all (training/resume.py writes
checkpoint.pt with it), and check_new, which every command calls on its destinations before its work starts.
"""
import os
from pathlib import Path


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


def check_new(path, flag, folder=False):
    """Refuse a destination that holds something already or cannot be made, before the work that would fill it:
    nothing a user has is overwritten, and no run fails at its end. folder: a folder to fill (it may exist empty)."""
    path = Path(path)
    if folder and path.is_file():
        raise NotADirectoryError(f"{flag} {path} is a file: pass a folder")
    if not folder and path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder: pass a file name")
    if path.exists() and not (folder and not any(path.iterdir())):
        raise FileExistsError(f"{flag} {path} already {'holds files' if folder else 'exists'}: choose another "
                              f"{'folder' if folder else 'file'}, or move it away (nothing was overwritten)")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise NotADirectoryError(f"{flag} {path} cannot be made: {parent} is a file")
