"""
The adapters leave the project and come in: Hugging Face PEFT folders (peft.py: export, import), merged
Hugging Face checkpoints (merged.py), our names back to Hugging Face's (names.py), and plots (plots.py).
train.py --eval-only, predict.py and bench.py --plot import from here; ssmlora.py and model.py never do.
"""
