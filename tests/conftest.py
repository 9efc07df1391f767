"""Shared test set-up: offline, CPU, deterministic, small thread count (the CI machine has 2 cores)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"          # nothing in the suite may touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(2)
