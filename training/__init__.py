"""
What train.py's loop stands on, kept beside it so that train.py reads top to bottom as the loop:

    flags.py      train.py's command line: every flag, its default and its check (and --eval-only's settings)
    build.py      a model from a run's settings (base, head, adapters) and a batch moved to the device; train.py
                  and predict.py both build with it
    optim.py      AdamW groups, the warm-up/decay schedule, and gradient clipping (the W_d spike)
    evaluate.py   the metrics on a dev set (sharded under torchrun), and --eval-only
    dist.py       torchrun data parallelism
    cli.py        the one-line errors, the argument parser and --device, shared by every entry point
"""
