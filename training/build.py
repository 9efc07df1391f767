"""
A model from a run's settings, the way train.py and predict.py both build it: the base (a checkpoint, or random
weights of a preset or a folder's config.json), its task head, then the method's adapters, new or from a file.
"""
from dataclasses import replace
from pathlib import Path

import torch

from files.adapters import add_adapters_from_file, read_run
from files.hub import config_from_hf, from_pretrained, read_config
from interop.peft import add_peft_adapters, is_peft_folder
from mamba import model as mamba, sdt
from model import PRESETS, Model, ModelError, check_inputs, preset
import baselines
from ssmlora import default_targets
from reproduce import authors


def attach(model, adapters, selection=None):
    """Add the adapters a run asks for: the paper's (ssmlora.add_adapters) or a baseline of baselines/ (QLoRA,
    MixLoRA), with the authors' state lifetime plugged in from outside the method when asked for (--state carry,
    decision 10). SDT (Mamba): its warm-up adapters, or with `selection` (sdt.selection's list, or the index
    tensors an adapter file keeps) the main run's."""
    if adapters.method == "sdt":
        return sdt.add_warmup(model, adapters) if selection is None else sdt.add_sdt(model, adapters, selection)
    if model.cfg.family == "mamba" and adapters.method in ("qlora", "mixlora"):
        raise ModelError(f"{adapters.method} is one of the transformers' Table 1 baselines: on Mamba use lora, "
                         "ssmlora or sdt")
    if adapters.method == "ssmlora" and adapters.state == "carry":
        return authors.add_adapters(model, adapters)
    return baselines.add_adapters(model, adapters)


def check_preset(name):
    """--random-init's base: a folder with a config.json, or one of the presets, the transformers' or Mamba's."""
    if not Path(name).is_dir() and name not in PRESETS and name not in mamba.PRESETS:
        raise ModelError(f"unknown preset {name!r} for --random-init; choose one of: "
                         f"{', '.join([*PRESETS, *mamba.PRESETS])}, or a folder with a config.json")


def build_model(task, model, random_init=False, adapters=None, adapter_file=None, meta=False, selection=None,
                family_targets=False, seed=None):
    """The base model `model` (hub name, folder, or with random_init a preset or a folder's config.json) with the
    task's head, then new adapters (an ssmlora.Adapters) or those saved in adapter_file (ours, or a PEFT LoRA
    folder). meta: no weights (counts). selection: SDT's, for its main run (attach). family_targets: no targets
    were asked for: the method's default for the base's family (a Mamba has no query or value). seed: a random
    base is drawn from torch.manual_seed(seed) whatever was drawn before, so that SDT's main run (after its
    warm-up), --eval-only and predict.py get the run's own; None: the seed adapter_file records, else 0."""
    head = {"choice": "choice", "span": "span"}.get(task.shape, "cls")
    if random_init:
        check_preset(model)
        ours = adapter_file is not None and not is_peft_folder(adapter_file)
        torch.manual_seed(seed if seed is not None else read_run(adapter_file).get("seed", 0) if ours else 0)
    with torch.device("meta" if meta else "cpu"):
        if random_init and Path(model).is_dir() and read_config(model).get("model_type") == "mamba":
            base = mamba.Mamba(mamba.config_from_hf(read_config(model), task.num_labels, head=head))
        elif random_init and Path(model).is_dir():
            base = Model(replace(config_from_hf(read_config(model), task.num_labels), head=head))
        elif random_init and model in mamba.PRESETS:
            base = mamba.Mamba(mamba.preset(model, head=head, num_labels=task.num_labels))
        elif random_init:
            base = Model(preset(model, head=head, num_labels=task.num_labels))
        elif model in mamba.PRESETS and not Path(model).is_dir():  # not a hub name: say which one it is
            raise ModelError(f"{model} is a --random-init preset (random weights of its sizes); its pretrained "
                             f"checkpoint is state-spaces/{model}-hf")
        else:
            base = from_pretrained(model, num_labels=task.num_labels, head=head)
    if adapter_file is not None and is_peft_folder(adapter_file):
        return add_peft_adapters(base, adapter_file)
    if adapter_file is not None:
        return add_adapters_from_file(base, adapter_file, add=attach)
    if getattr(base, "new_head", None):
        what = {"choice": "multiple-choice", "span": "question-answering (span)"}.get(
            head, f"{task.num_labels}-label classification")
        print(f"{model}: the checkpoint has no {what} head; initialised a new one ({', '.join(base.new_head)})")
    if family_targets:
        adapters = replace(adapters, targets=default_targets(adapters.method, base.cfg.family))
    return attach(base, adapters, selection)


def to_device(batch, cfg, device):
    """The batch checked (on the CPU, before the forward pass, so the forward never reads the device) and moved."""
    check_inputs(cfg, batch["input_ids"], batch["attention_mask"])
    return {k: v if v is None else v.to(device, non_blocking=True) for k, v in batch.items()}
