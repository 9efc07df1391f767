"""
Reproductions and measurements beside the method, each runnable on its own:

    authors.py    the authors' state lifetime (--state carry), plugged into ssmlora's adapters from outside;
                  used by training/build.py and files/adapters.py
    spike.py      python -m reproduce.spike: the W_d gradient spike under each --clip-mode, measured
"""
