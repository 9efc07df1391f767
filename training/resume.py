"""checkpoint.pt: everything a killed training run needs to go on and end exactly where an uninterrupted one would
(the trained tensors, the optimizer and schedule, the progress, every process's random state, a carried state)."""
import signal
from contextlib import contextmanager

import torch

from files import atomic_write
from files.adapters import places
from training import dist
from training.cli import TrainError


PARTS = ("run", "trained", "optimizer", "scheduler", "progress", "carried_state", "rng", "cuda_rng")  # "scaler" and
# "places" (SDT's selection, which sdt_main_model reads) came later: older checkpoints lack them
RUN_KEYS = ("task", "model", "method", "rank", "alpha", "dropout", "targets", "sparse", "state", "lr", "batch_size",
            "grad_accum", "world_size", "epochs", "max_len", "warmup", "weight_decay", "clip", "clip_mode", "seed",
            "max_steps", "max_train", "random_init", "dtype", "sdt_warmup", "sdt_rho")


def save_checkpoint(path, model, opt, sched, progress, args, scaler=None):
    """Called by every process (each one's random state is kept, for its own dropout masks); rank 0 writes."""
    rng = dist.gather_objects(torch.get_rng_state())
    cuda_rng = dist.gather_objects(torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    if not dist.is_main():
        return
    trained = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    carried = dict(model.time_axes.h) if getattr(model, "time_axes", None) and model.adapters.state == "carry" else {}
    obj = {"run": {k: getattr(args, k) for k in RUN_KEYS}, "trained": trained, "optimizer": opt.state_dict(),
           "scheduler": sched.state_dict(), "progress": progress, "carried_state": carried, "rng": rng,
           "cuda_rng": cuda_rng, "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
           "places": places(model)}  # SDT's selection (index buffers), which a resumed run reuses; {} otherwise
    atomic_write(path, lambda tmp: torch.save(obj, tmp))  # a kill during the save leaves the previous one whole


def read_checkpoint(path, args):
    """checkpoint.pt, read guarded: a cut, empty or incomplete file, or one of a run with other settings than args,
    is a TrainError that says so, before any of it is used."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainError(f"could not read {path} ({type(e).__name__}); it is corrupt: delete it to start "
                         "over") from None
    missing = [k for k in PARTS if k not in ck] if isinstance(ck, dict) else list(PARTS)
    if missing or not isinstance(ck["run"], dict):
        raise TrainError(f"{path} is not a whole train.py checkpoint (no {', '.join(missing) or 'run settings'}): "
                         "delete it to start over")
    flag = lambda k: "processes" if k == "world_size" else f"--{k.replace('_', '-')}"
    diff = [f"{flag(k)}: checkpoint {v!r}, now {getattr(args, k)!r}" for k, v in ck["run"].items()
            if v != getattr(args, k, None)]
    if diff:
        raise TrainError(f"{path} belongs to a run with other settings ({'; '.join(diff)}); "
                         f"resume with the same flags or choose another --out")
    return ck


def load_checkpoint(path, model, opt, sched, args, scaler=None):
    ck = read_checkpoint(path, args)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if {n: tuple(t.shape) for n, t in ck["trained"].items()} != {n: tuple(p.shape) for n, p in params.items()}:
        raise TrainError(f"{path} holds other trained tensors than this run trains: it is corrupt, or of another "
                         "version; delete it to start over")
    with torch.no_grad():
        for n, t in ck["trained"].items():
            params[n].copy_(t)
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    if ck["carried_state"]:
        device = next(model.parameters()).device
        model.time_axes.h.update({k: v.to(device) for k, v in ck["carried_state"].items()})
    if ck.get("scaler") and scaler is not None:
        scaler.load_state_dict(ck["scaler"])
    torch.set_rng_state(ck["rng"][dist.rank()])
    if ck["cuda_rng"][dist.rank()] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["cuda_rng"][dist.rank()])
    return ck["progress"]


@contextmanager
def interrupt_at_step_boundary():
    """While training, the first Ctrl-C (or SIGTERM, what a batch system or `kill` sends) only asks (`asked`): the
    loop stops after the step it is in, whole, and saves it, so that --resume goes on exactly from there. A second
    one interrupts at once (the last checkpoint is then the one --resume uses). Outside the main thread (no signals
    there) both are left as they are."""
    class Interrupt:
        asked = False

    def ask(signum, frame):
        if Interrupt.asked:
            raise KeyboardInterrupt
        Interrupt.asked = True
        print("\nstopping after this step, saved (again to stop at once)", flush=True)
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, ask)
    except ValueError:
        pass
    try:
        yield Interrupt
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def sigterm_stops_at_once():
    """Where nothing is saved yet (SDT's warm-up), SIGTERM (a batch system's stop, `kill`) stops at once as Ctrl-C
    does, with a KeyboardInterrupt that train.py turns into one line, instead of ending the process without a word.
    Outside the main thread (no signals there) it is left as it is."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
