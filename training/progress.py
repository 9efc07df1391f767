"""What a training run says while it runs and records at the end: the progress lines printed when there is no
terminal for a bar, and the peak memory."""
import resource
import time

import torch


class ProgressLog:
    """When stderr is not a terminal (a log file, a batch job) there is no bar: print a line every `every` steps or
    every minute, whichever comes first, with the mean loss since the last line, the examples per second, the time
    since the start and the time left at this pace."""

    def __init__(self, every, total, per_step, enabled, seconds=60.0, label=""):
        self.every, self.total, self.per_step, self.enabled, self.seconds = every, total, per_step, enabled, seconds
        self.label = label  # what the steps are of ("SDT warm-up "; "": the run's own)
        self.t, self.losses, self.start, self.first = time.time(), [], time.time(), None

    def step(self, step, epoch, loss, lr):
        if not self.enabled:
            return
        self.losses.append(loss)
        now = time.time()
        if step % self.every and now - self.t < self.seconds and step != self.total:
            return
        rate = len(self.losses) * self.per_step / max(now - self.t, 1e-9)
        if self.first is None:  # the step this run started from (a resumed one: later than 0)
            self.first = step - len(self.losses)
        left = (now - self.start) / (step - self.first) * (self.total - step)
        print(f"{self.label}step {step}/{self.total} epoch {epoch} loss {sum(self.losses) / len(self.losses):.4f} "
              f"lr {lr:.2e} {rate:.1f} examples/s elapsed {clock(now - self.start)} left {clock(left)}", flush=True)
        self.t, self.losses = now, []


def fmt(scores):
    return ", ".join(f"{k}: none evaluated" if v is None else f"{k} {v:.4f}" for k, v in scores.items())


def clock(seconds):
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
