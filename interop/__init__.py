"""
The adapters leave the project and come in: Hugging Face PEFT folders (peft.py: export, import), merged
Hugging Face checkpoints (merged.py), both as one command (export.py: python -m interop.export peft|merge), our
names back to Hugging Face's (names.py), and plots (plots.py).
train.py --eval-only, predict.py and bench.py --plot import from here; ssmlora.py and model.py never do.
"""
