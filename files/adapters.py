"""
adapters.safetensors: what a method trained (adapter matrices and task head; BitFit's biases; everything for full
fine-tuning), with the adapter settings and the base model's identity in the file's metadata, so the file alone
rebuilds the adapters (add_adapters_from_file).
"""
import json
from pathlib import Path
from dataclasses import asdict, fields

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model import ModelError
from ssmlora import Adapters, adapter_modules, add_adapters, frozen_head, is_trained, reset_state
from files import atomic_write


class AdapterFileError(ValueError):
    """An adapter file that cannot be read, or that does not fit the model it is loaded into (a ValueError: the entry
    points print it as one line)."""


BASE_KEYS = ("family", "n_layer", "d_model", "num_labels", "head")  # the base model's identity
SIZES = ("d_state", "expand", "dt_rank", "d_conv")  # a Mamba's too (older files lack them: compared when there)
FORMAT = "ssmlora-adapters/1"
PLACES = ".index"  # buffers that say where a sparse adapter sits (SDT's SparseDelta): saved beside what it trained,
# read first when the file is loaded, since the adapters cannot be built without them


def places(model):
    """{name: tensor} of the model's PLACES buffers ({} for every method but SDT)."""
    return {n: b.detach().cpu().contiguous() for n, b in model.named_buffers() if n.endswith(PLACES)}


def save_adapters(model, path, run=None):
    """Write the trained parameters (adapters + head; for bitfit the biases, for full everything) to a
    .safetensors file, with the settings and the base's identity in its metadata. Atomic. run: what else a user
    of the file needs (train.py stores the task, the base checkpoint and the tokenizer), read back by read_run."""
    adapters = _require_adapters(model)
    frozen = frozen_head(model)
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
               if is_trained(n, adapters.method, frozen)} | places(model)
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in asdict(adapters).items()},
                **{f"base.{k}": json.dumps(getattr(model.cfg, k)) for k in (*BASE_KEYS, *SIZES)
                   if hasattr(model.cfg, k)},
                "run": json.dumps(run or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_settings(path):
    """(Adapters, base identity dict) from a file written by save_adapters."""
    if Path(path).is_dir():  # safetensors would say "No such device"
        raise AdapterFileError(f"{path} is a folder, neither an adapter file nor a PEFT folder (it has no "
                               f"adapter_config.json): pass the adapters.safetensors a train.py --out folder holds")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise AdapterFileError(f"could not read adapter file {path} ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise AdapterFileError(f"{path} is not an adapter file written by save_adapters (no {FORMAT!r} metadata)")
    try:
        adapters = Adapters(**{f.name: json.loads(meta[f.name]) for f in fields(Adapters)})
        return adapters, {k: json.loads(meta[f"base.{k}"]) for k in (*BASE_KEYS, *SIZES)
                          if k in BASE_KEYS or f"base.{k}" in meta}
    except (KeyError, ValueError) as e:
        raise AdapterFileError(f"adapter file {path} has incomplete or invalid settings in its metadata "
                               f"({e})") from None


def read_run(path):
    """The `run` dict save_adapters stored ({} for files written without one)."""
    read_settings(path)  # a readable adapter file, or a clear error
    with safe_open(path, framework="pt") as f:
        try:
            run = json.loads((f.metadata() or {}).get("run", "{}"))
        except json.JSONDecodeError as e:
            raise AdapterFileError(f"adapter file {path}: its run settings are cut off or not JSON ({e})") from None
    if not isinstance(run, dict):  # the callers index it by name
        raise AdapterFileError(f"adapter file {path}: its run settings are a JSON {type(run).__name__}, not an object")
    if not isinstance(run.get("seed", 0), int) or isinstance(run.get("seed"), bool):  # a random base is drawn from it
        raise AdapterFileError(f"adapter file {path}: its run's seed is {run['seed']!r}, not an integer")
    return run


def check_base_is_there(run, path):
    """A run trained on a local checkpoint folder that is gone: say which folder, rather than try the hub."""
    if run.get("model_is_folder") and not Path(run["model"]).is_dir():
        raise AdapterFileError(f"{path} was trained on the local checkpoint folder {run['model']}, which is not there "
                               "any more: pass --model with a folder that holds the same checkpoint")


def load_adapters(model, path):
    """Load a file from save_adapters into a model that has adapters with the same settings (dropout may differ:
    it does not change what is computed in eval). Any other difference is an AdapterFileError naming it."""
    adapters = _require_adapters(model)
    saved, base = read_settings(path)
    _check_base(model, base, path)
    diff = [f"{f.name}: file {getattr(saved, f.name)!r}, model {getattr(adapters, f.name)!r}"
            for f in fields(Adapters) if f.name != "dropout" and getattr(saved, f.name) != getattr(adapters, f.name)]
    if diff:
        raise AdapterFileError(f"adapter file {path} was saved with other settings than this model has: "
                               f"{'; '.join(diff)}. Build the model with the file's settings "
                               "(add_adapters_from_file does that)")
    if any(getattr(m, "merged", False) for m in adapter_modules(model)):
        raise AdapterFileError("LoRA is merged into the weights; call unmerge_lora(model) before loading adapters")
    tensors = load_file(path)
    where = {k: tensors.pop(k) for k in [k for k in tensors if k.endswith(PLACES)]}
    ours = places(model)
    if set(where) != set(ours) or any(not torch.equal(where[k].long(), ours[k]) for k in ours):
        raise AdapterFileError(f"adapter file {path} places its sparse adapters elsewhere than this model does "
                               "(another SDT selection): build the model from the file (add_adapters_from_file)")
    params = {n: p for n, p in model.named_parameters() if is_trained(n, adapters.method, frozen_head(model))}
    if set(tensors) != set(params):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise AdapterFileError(f"adapter file {path} does not fit this model: missing {missing[:5]}, "
                               f"unexpected {extra[:5]}")
    for n, t in tensors.items():
        if t.shape != params[n].shape:
            raise AdapterFileError(f"adapter file {path}: {n} has shape {tuple(t.shape)}, the model "
                                   f"{tuple(params[n].shape)}")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    reset_state(model)
    return model


def add_adapters_from_file(model, path, add=add_adapters):
    """Add to a bare model the adapters described in the file, then load them (e.g. for --eval-only). add: how to add
    them (training.build.attach knows every method and state lifetime; ssmlora.add_adapters the paper's own)."""
    adapters, base = read_settings(path)
    _check_base(model, base, path)
    with safe_open(path, framework="pt") as f:  # SDT's selection, needed to build the model: only those small tensors
        where = {k: f.get_tensor(k) for k in f.keys() if k.endswith(PLACES)}
    if adapters.method == "sdt" and not where:
        raise AdapterFileError(f"adapter file {path} holds SDT adapters without their selection (the *.index "
                               "tensors): it is incomplete")
    try:  # a selection that does not fit this model (sdt.from_indices), a target it does not have
        model = add(model, adapters, where) if where else add(model, adapters)
    except ModelError as e:
        raise AdapterFileError(f"adapter file {path}: {e}") from None
    return load_adapters(model, path)


def _require_adapters(model):
    if getattr(model, "adapters", None) is None:
        raise AdapterFileError("this model has no adapters: call add_adapters(model, ...) first "
                         "(or add_adapters_from_file(model, path) to rebuild them from a saved file)")
    return model.adapters


def _check_base(model, base, path):
    diff = [f"{k}: file {v!r}, model {getattr(model.cfg, k, None)!r}" for k, v in base.items()
            if getattr(model.cfg, k, None) != v and (k in BASE_KEYS or hasattr(model.cfg, k))]  # a Mamba's SIZES
    if diff:
        raise AdapterFileError(f"adapter file {path} belongs to another base model: {'; '.join(diff)}")
