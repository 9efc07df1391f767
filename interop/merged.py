"""
A LoRA adapter folded into its base and written as a Hugging Face checkpoint folder (config.json,
model.safetensors, the tokenizer files) that transformers' AutoModelForSequenceClassification (or
...ForMultipleChoice) loads as it is. Another method plugs in by passing its own `state` (merged float weights in
our names), e.g. QLoRA's dequantised-and-merged base.
"""
import json
import shutil
from pathlib import Path

import torch

from interop import new_folder
from interop.names import to_hf
from model import ModelError
from ssmlora import ADAPTER_WEIGHTS, LoRALinear, SSMLoRALinear, adapter_modules

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "vocab.txt",
                   "special_tokens_map.json", "tokenizer.model", "spm.model", "added_tokens.json")  # spm: DeBERTa
REFUSED = {"qlora": "its W0 is stored in 4-bit NF4, which a transformers checkpoint does not hold",
           "mixlora": "its routed experts have no counterpart in the base architecture"}
ARCH = {("bert", "cls"): "BertForSequenceClassification", ("roberta", "cls"): "RobertaForSequenceClassification",
        ("gpt2", "cls"): "GPT2ForSequenceClassification", ("llama", "cls"): "LlamaForSequenceClassification",
        ("bert", "choice"): "BertForMultipleChoice", ("roberta", "choice"): "RobertaForMultipleChoice",
        ("deberta-v2", "cls"): "DebertaV2ForSequenceClassification",
        ("deberta-v2", "choice"): "DebertaV2ForMultipleChoice"}


@torch.no_grad()
def merged_state(model):
    """Our state dict with every LoRA pair folded in, W0 + s (W_a W_b)^T (eq. 1, as merge_lora), the adapter
    matrices dropped; the model itself is left as it was. SSMLoRA cannot be folded (eq. 8 depends on the input)."""
    if any(isinstance(m, SSMLoRALinear) for m in adapter_modules(model)):
        raise ModelError("SSMLoRA cannot be merged into W0: its h_norm term depends on the input (eq. 8); "
                         "only LoRA merges")
    method = getattr(getattr(model, "adapters", None), "method", None)
    if method in REFUSED:  # their tensors (NF4 codes, experts and router) have no place in a plain checkpoint
        raise ModelError(f"{method} cannot be merged into a Hugging Face checkpoint: {REFUSED[method]}; "
                         f"LoRA, BitFit and full fine-tuning merge")
    state = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] not in ADAPTER_WEIGHTS}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear) and not m.merged:
            state[f"{name}.weight"] = m.weight + m.delta()
    return state


def hf_config(model, labels=None):
    """config.json for the merged model: the base checkpoint's own (model.source) with our head, else one
    rebuilt from our Config (files.hub.config_to_hf, which needs transformers)."""
    cfg = model.cfg
    if cfg.family == "mamba":  # transformers has no Mamba classifier to load a merged checkpoint into
        raise ModelError("a merged export writes a transformers ...ForSequenceClassification checkpoint, and "
                         "transformers has none for Mamba: use the adapter file with train.py and predict.py")
    if (cfg.family, cfg.head) not in ARCH:
        raise ModelError(f"a merged export needs a classification or multiple-choice head, not {cfg.head!r} "
                         f"({cfg.family})")
    source = Path(getattr(model, "source", "") or "") / "config.json"
    if getattr(model, "source", None) and source.exists():
        out = json.loads(source.read_text())
    else:
        from files.hub import config_to_hf
        out = config_to_hf(cfg).to_dict()
    n = 1 if cfg.head == "choice" else cfg.num_labels
    names = labels if labels is not None and len(labels) == n else [f"LABEL_{i}" for i in range(n)]
    out.update(architectures=[ARCH[cfg.family, cfg.head]], pad_token_id=cfg.pad_token_id,
               id2label={str(i): str(v) for i, v in enumerate(names)},
               label2id={str(v): i for i, v in enumerate(names)})
    out.pop("num_labels", None)  # transformers derives it from id2label
    if cfg.num_labels == 1 and cfg.head == "cls":
        out["problem_type"] = "regression"
    return out


def export_merged(model, outdir, tokenizer=None, labels=None, state=None, sources=None):
    """Write the merged checkpoint as a new folder (interop.new_folder: never over anything, its own base included);
    returns its path. tokenizer: the folder whose tokenizer files are copied (default: the base checkpoint's,
    model.source). state: merged weights in our names (default merged_state(model): LoRA). sources: other folders
    the export reads ({folder: what it is}), which it must not write into."""
    from safetensors.torch import save_file
    config = hf_config(model, labels)
    weights = to_hf(merged_state(model) if state is None else state, model.cfg)
    base, src = getattr(model, "source", None), tokenizer or getattr(model, "source", None)
    reads = {**({base: "the base checkpoint folder"} if base else {}),
             **({src: "the tokenizer folder"} if src and src != base else {}), **(sources or {})}
    with new_folder(outdir, reads) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.detach().float().cpu().contiguous() for k, v in weights.items()}, tmp / "model.safetensors",
                  metadata={"format": "pt"})
        for f in TOKENIZER_FILES if src else ():
            if (Path(src) / f).exists():
                shutil.copy(Path(src) / f, tmp / f)
    return Path(outdir)
