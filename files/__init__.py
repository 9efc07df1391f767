"""
What goes to and comes from disk, apart from the benchmarks' data (data.py, benchmarks/):

    hub.py        original Hugging Face checkpoints: found or downloaded, config.json <-> Config, weights, loaded
                  exactly (from_pretrained); used by train.py, predict.py, bench.py and the tests
    adapters.py   adapters.safetensors: what a method trained, with the settings that rebuild it
    resume.py     checkpoint.pt: everything a killed training run needs to continue (train.py only)

and atomic_write, which every writer here uses: a file is replaced whole or not at all.
"""
import os


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
