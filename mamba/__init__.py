"""
PEFT *of* a state space model: a hand-written Mamba-1 (model.py) that loads Hugging Face Mamba checkpoints, and
Sparse Dimension Tuning on it (sdt.py, Galim et al., arXiv 2410.09016). LoRA and SSMLoRA reach Mamba through
ssmlora.add_adapters (targets in_proj, x_proj, dt_proj, out_proj). Imported by the loaders and train.py's model
building, never by the core (ssmlora.py, model.py). Notes: docs/mamba.md.
"""
