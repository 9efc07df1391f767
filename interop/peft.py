"""
Hugging Face PEFT adapter folders (adapter_config.json + adapter_model.safetensors), out and in.

  export_peft(model, folder)   our LoRA adapters and task head, under PEFT's key names for the matching
                               transformers model: PeftModel.from_pretrained runs it with our logits
  add_peft_adapters(model, folder)   a PEFT LoRA folder trained elsewhere, into a bare base model of ours

Both ways, PEFT's lora_A (r, d_in) is our W_a transposed and lora_B (d_out, r) our W_b transposed; the scaling
alpha / r is the same (eq. 1). SSMLoRA has no PEFT counterpart; PEFT settings we do not compute are refused.
Neither way needs the peft package: only its file format.
"""
import json
import re
from pathlib import Path

import torch
import torch.nn as nn

from interop import new_folder
from interop.names import hf_name
from model import ModelError, convert_state_dict
from ssmlora import TARGETS, Adapters, LoRALinear, SSMLoRALinear, add_adapters, insertion_plan, linear_of

CONFIG, WEIGHTS, PREFIX = "adapter_config.json", "adapter_model.safetensors", "base_model.model."
MODULES_TO_SAVE = {"dense": ["classifier"], "pooler": ["classifier", "pooler"], "last": ["score"]}  # per Head.kind
# LoraConfig fields that do not change what the adapter computes once its weights are read from the file
HARMLESS = {"peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
            "inference_mode", "r", "target_modules", "exclude_modules", "lora_alpha", "lora_dropout",
            "fan_in_fan_out",  # PEFT stores lora_A / lora_B as Linear weights for Conv1D and Linear alike
            "modules_to_save", "init_lora_weights", "layers_to_transform", "layers_pattern", "megatron_core",
            "qalora_group_size", "runtime_config", "ensure_weight_tying", "loftq_config", "eva_config",
            "corda_config", "lora_ga_config"}  # initialisations: the weights come from the file
NAMED = {"use_dora": "DoRA (a learned magnitude per output)", "use_rslora": "rsLoRA scaling (alpha / sqrt(r))",
         "lora_bias": "a bias on lora_B", "rank_pattern": "ranks that differ per module",
         "alpha_pattern": "alphas that differ per module", "use_qalora": "QALoRA's pooled input",
         "layer_replication": "replicated layers", "alora_invocation_tokens": "activated LoRA",
         "trainable_token_indices": "trainable tokens", "target_parameters": "LoRA on parameters"}


class PeftError(ModelError):
    """A model that has no PEFT counterpart, or a PEFT folder that this project cannot compute exactly."""


def hf_module(name, family):
    """PEFT's module name (the transformers one) for one of our linears, e.g. blocks.0.attn.query ->
    roberta.encoder.layer.0.attention.self.query (GPT-2's query, key, value, qkv: its c_attn)."""
    return hf_name(f"{name}.weight", family).removesuffix(".weight")


# ----------------------------------------------------------------------------------------------------------
# export

def check_family(family):
    """No PEFT folder of a Mamba: nothing could load it (the peft package, 0.21, refuses out_proj itself)."""
    if family == "mamba":
        raise PeftError("a Mamba's LoRA has no PEFT export: transformers has no Mamba classifier for PeftModel to "
                        "wrap, and peft refuses LoRA on Mamba's out_proj (transformers' fused CUDA kernel reads "
                        "out_proj.weight itself, so a LoRA there would be skipped). The adapters.safetensors itself "
                        "works: train.py --eval-only and predict.py take it")


def check_exportable(model):
    check_family(model.cfg.family)
    a = getattr(model, "adapters", None)
    if a is not None and a.method == "ssmlora" or any(isinstance(m, SSMLoRALinear) for m in model.modules()):
        raise PeftError("SSMLoRA has no PEFT counterpart: its state h and W_c, W_d (eqs. 2-8) are not LoRA; only "
                        "--method lora adapters export to PEFT")
    if a is None or a.method != "lora":
        raise PeftError(f"only LoRA adapters export to PEFT, not {a.method if a else 'a model without adapters'}")
    if "head" in a.targets:
        raise PeftError("a LoRA on the task head (--targets head) has no PEFT layout: PEFT saves the head whole "
                        "(modules_to_save); train without the head target, or export merged (interop.merged)")
    if model.cfg.head not in ("cls", "choice"):
        raise PeftError(f"PEFT export needs a classification or multiple-choice head, not {model.cfg.head!r}")
    if any(m.merged for m in model.modules() if isinstance(m, LoRALinear)):
        raise PeftError("LoRA is merged into the weights: call unmerge_lora(model) before exporting")


@torch.no_grad()
def peft_tensors(model):
    """{PEFT module name: (lora_A, lora_B, alpha)}. GPT-2's separate query / key / value LoRAs (rank r each)
    become one LoRA on its fused c_attn, of rank k r for k of them: A stacks their A's, B is block-diagonal (zeros
    elsewhere), and alpha is k alpha so that alpha / rank stays s: the same function, exactly."""
    a, fam, out, parts = model.adapters, model.cfg.family, {}, {}
    for name, m in model.named_modules():
        if not isinstance(m, LoRALinear):
            continue
        key = hf_module(name, fam)
        proj = name.rsplit(".", 1)[-1]
        if fam == "gpt2" and proj in ("query", "key", "value"):
            parts.setdefault(key, {})[proj] = m
            continue
        out[key] = (m.W_a.t().contiguous(), m.W_b.t().contiguous(), a.alpha)
    for key, ps in parts.items():
        attn = model.blocks[int(key.split(".")[2])].attn
        rows = dict(zip(("query", "key", "value"), torch.tensor((0, *attn.sizes)).cumsum(0).tolist()))
        sizes = dict(zip(("query", "key", "value"), attn.sizes))
        present = [p for p in ("query", "key", "value") if p in ps]
        A = torch.cat([ps[p].W_a.t() for p in present])
        B = A.new_zeros(sum(attn.sizes), A.shape[0])
        for j, p in enumerate(present):
            B[rows[p]:rows[p] + sizes[p], j * a.rank:(j + 1) * a.rank] = ps[p].W_b.t()
        out[key] = (A, B, a.alpha * len(present))
    return out


def target_modules(model, adapted):
    """PEFT's target_modules for the set of adapted module names: the short suffixes when PEFT's own rule
    (name == t or name ends with "." + t) picks exactly these modules, else a regex of their full names."""
    fam = model.cfg.family
    every = {hf_module(n, fam) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    short = sorted({re.sub(r"^.*?\.\d+\.", "", k) for k in adapted})  # what follows the layer number
    if {k for k in every if any(k == t or k.endswith("." + t) for t in short)} == set(adapted):
        return short
    return "(" + "|".join(re.escape(k) for k in sorted(adapted)) + ")"  # PEFT: re.fullmatch on a string


def export_peft(model, folder, base=None, run=None, sources=None):
    """Write our LoRA adapters and task head as a new PEFT LoRA folder (interop.new_folder: never over anything);
    returns its path. base: the checkpoint it adapts (base_model_name_or_path; default: the folder the model was
    loaded from). run: written beside as ssmlora_run.json (RUN). sources: other folders the export reads
    ({folder: what it is}), which it must not write into."""
    from safetensors.torch import save_file
    check_exportable(model)
    a, fam = model.adapters, model.cfg.family
    lora = peft_tensors(model)
    ranks = {k: A.shape[0] for k, (A, _, _) in lora.items()}
    if len(set(ranks.values())) > 1:  # GPT-2 with some layers' c_attn holding more of q, k, v than others
        raise PeftError(f"the exported modules would have different ranks ({sorted(set(ranks.values()))}): PEFT "
                        f"needs rank_pattern for that, which this export does not write")
    r, alpha = next(iter(ranks.values())), next(iter(lora.values()))[2]
    tensors = {}
    for key, (A, B, _) in lora.items():
        tensors[f"{PREFIX}{key}.lora_A.weight"] = A.detach().cpu().contiguous()
        tensors[f"{PREFIX}{key}.lora_B.weight"] = B.detach().cpu().contiguous()
    for name, p in model.named_parameters():
        if name.startswith("head."):  # modules_to_save: PEFT stores the head's tensors under their own names
            tensors[PREFIX + hf_name(name, fam)] = p.detach().cpu().contiguous()
    config = dict(peft_type="LORA", task_type="SEQ_CLS" if model.cfg.head == "cls" else None,
                  base_model_name_or_path=str(base or getattr(model, "source", None) or "") or None,
                  r=r, lora_alpha=alpha, lora_dropout=a.dropout, target_modules=target_modules(model, lora),
                  modules_to_save=MODULES_TO_SAVE[model.head.kind], bias="none", fan_in_fan_out=fam == "gpt2",
                  use_dora=False, use_rslora=False, init_lora_weights=True, inference_mode=True, rank_pattern={},
                  alpha_pattern={})
    source = getattr(model, "source", None)
    reads = {**({source: "the base checkpoint folder"} if source else {}), **(sources or {})}
    with new_folder(folder, reads) as tmp:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        if run is not None:
            (tmp / RUN).write_text(json.dumps(run) + "\n")
    return Path(folder)


# ----------------------------------------------------------------------------------------------------------
# import

def is_peft_folder(path):
    return Path(path).is_dir() and (Path(path) / CONFIG).exists()


def read_peft_config(folder):
    """adapter_config.json as a dict, refused by name where it asks for what we do not compute."""
    path = Path(folder) / CONFIG
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # UnicodeDecodeError too
        raise PeftError(f"could not read {path} ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict):
        raise PeftError(f"{path} is not a JSON object: not a PEFT adapter_config.json")
    if cfg.get("peft_type") != "LORA":
        raise PeftError(f"{folder} is a PEFT {cfg.get('peft_type')} adapter; only LoRA loads here")
    if cfg.get("task_type") not in (None, "SEQ_CLS"):
        raise PeftError(f"{folder}: task_type {cfg['task_type']} is not sequence classification (SEQ_CLS)")
    if cfg.get("bias", "none") != "none":
        raise PeftError(f"{folder}: bias={cfg['bias']!r} trains the base's biases too, which is not implemented "
                        f"here (only bias='none')")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    for k, ok, what in (("r", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
                        ("lora_alpha", number, "a number"), ("lora_dropout", lambda v: number(v) and 0 <= v < 1,
                                                             "a number in [0, 1)")):
        if k in cfg and not ok(cfg[k]):  # else a TypeError deep in the model, or a wrong scale
            raise PeftError(f"{Path(folder) / CONFIG}: {k} is {cfg[k]!r}, not {what}")
    for k, v in cfg.items():
        if k not in HARMLESS and k != "bias" and v not in (None, False, {}, [], ""):
            raise PeftError(f"{folder}: {k}={v!r} ({NAMED.get(k, 'a PEFT setting')}) is not implemented here; "
                            f"only plain LoRA loads")
    return cfg


def our_modules(model):
    """{PEFT module name: (layer, target)} for every linear a LoRA target of ours can wrap. GPT-2's c_attn is
    our qkv (its query, key and value are slices of it); elsewhere PEFT adapts the three separately."""
    fam, out = model.cfg.family, {}
    for t, (part, name) in TARGETS.items():
        if t == "head" or (t == "qkv") != (fam == "gpt2") and t in ("query", "key", "value", "qkv"):
            continue
        for i, block in enumerate(model.blocks):
            if t == "qkv" or getattr(getattr(block, part), name) is not None:  # LLaMA alone has ffn_gate
                out[hf_module(f"blocks.{i}.{part}.{name}", fam)] = (i, t)
    return out


def add_peft_adapters(model, folder):
    """Add to a bare base model (with its task head) the LoRA adapters and head of a PEFT folder; returns it."""
    from safetensors.torch import load_file
    if getattr(model, "adapters", None) is not None:
        raise PeftError("this model already has adapters; load the PEFT folder into a bare base model")
    if model.cfg.family == "mamba":  # our_modules knows the transformers' linears only
        raise PeftError(f"{folder} is a PEFT folder, which loads into a transformer here, not a Mamba (no Mamba "
                        "classifier of transformers' could have trained it): pass the adapters.safetensors train.py "
                        "wrote")
    cfg, fam = read_peft_config(folder), model.cfg.family
    if not (Path(folder) / WEIGHTS).exists() and (Path(folder) / "adapter_model.bin").exists():
        raise PeftError(f"{folder} holds adapter_model.bin (PEFT's older pickle format), which is not read here: "
                        f"save it again with save_pretrained(folder, safe_serialization=True)")
    try:
        state = load_file(Path(folder) / WEIGHTS)
    except Exception as e:
        raise PeftError(f"could not read {Path(folder) / WEIGHTS} ({type(e).__name__}: {e})") from None
    lora, head = {}, {}
    for key, t in state.items():
        k = key.removeprefix(PREFIX)
        m = re.fullmatch(r"(.+)\.lora_(A|B)\.weight", k)
        if m:
            lora.setdefault(m[1], {})[m[2]] = t
        elif re.search(r"lora_|\.modules_to_save\.", k):
            raise PeftError(f"{folder}: tensor {key} is not a plain LoRA pair (lora_A, lora_B); not implemented here")
        else:
            head[k] = t
    where = our_modules(model)
    unknown = sorted(k for k in lora if k not in where)
    if unknown:
        raise PeftError(f"{folder} adapts {', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}, which no "
                        f"LoRA target of ours wraps in a {fam} model (targets: {', '.join(t for t in TARGETS)})")
    if not lora or any(set(ab) != {"A", "B"} for ab in lora.values()):
        raise PeftError(f"{folder}: no LoRA pairs, or a lora_A without its lora_B")
    plan = {where[k] for k in lora}
    targets = sorted({t for _, t in plan}, key=list(TARGETS).index)
    sparse = next((s for s in (False, True) if set(insertion_plan(model.cfg.n_layer, targets, s)) == plan), None)
    if sparse is None:
        raise PeftError(f"{folder} adapts {targets} in layers {sorted({i for i, _ in plan})}: ours adapt every "
                        f"layer (or alternate query / key / value, --sparse); this subset is not implemented here")
    r = cfg.get("r", 8)
    bad = [k for k, ab in lora.items() if ab["A"].shape[0] != r or ab["B"].shape[1] != r]
    if bad:
        raise PeftError(f"{folder}: {bad[0]} has rank {lora[bad[0]]['A'].shape[0]}, the config says r={r}")
    add_adapters(model, Adapters("lora", r, cfg.get("lora_alpha", 8), cfg.get("lora_dropout", 0.0), targets, sparse))
    with torch.no_grad():
        for k, ab in lora.items():
            parent, name = linear_of(model, *where[k])
            m = getattr(parent, name)
            if ab["A"].t().shape != m.W_a.shape or ab["B"].t().shape != m.W_b.shape:
                raise PeftError(f"{folder}: {k} has shapes {tuple(ab['A'].shape)}, {tuple(ab['B'].shape)}; this "
                                f"model expects {tuple(m.W_a.t().shape)}, {tuple(m.W_b.t().shape)}: another base?")
            m.W_a.copy_(ab["A"].t())
            m.W_b.copy_(ab["B"].t())
        load_head(model, convert_state_dict(head, fam) if head else {}, folder)
    model.peft_source = str(folder)
    return model


def load_head(model, head, folder):
    """Copy the folder's task head (modules_to_save) in; a head the base checkpoint lacks must come from it."""
    params = dict(model.named_parameters())
    for k, t in head.items():
        if k not in params:
            raise PeftError(f"{folder}: {k} (from modules_to_save) has no place in this model's {model.cfg.head} head")
        if t.shape != params[k].shape:
            raise PeftError(f"{folder}: {k} has shape {tuple(t.shape)}, this model {tuple(params[k].shape)}: "
                            f"another number of labels?")
        params[k].copy_(t)
    missing = [k for k in getattr(model, "new_head", None) or [] if k not in head]
    if missing:
        are = "is" if len(missing) == 1 else "are"  # LLaMA's and GPT-2's score head: one weight, no bias
        raise PeftError(f"{folder} has no trained task head ({', '.join(missing)} {are} not in its modules_to_save) "
                        f"and the base checkpoint has none: its logits would be random")


# ----------------------------------------------------------------------------------------------------------
# what the export command (python -m interop.export peft|merge, interop/export.py) writes beside a PEFT folder

RUN = "ssmlora_run.json"  # beside a PEFT folder we export: the run settings (PEFT ignores other files)
RUN_FIELDS = {**dict.fromkeys(("task", "model", "tokenizer", "data_dir"), (lambda v: isinstance(v, str), "a text")),
              "max_len": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
              "model_is_folder": (lambda v: isinstance(v, bool), "true or false")}  # its fields: what each must be


def read_peft_run(folder):
    """What train.py --eval-only and predict.py need from a PEFT folder: its base model and, if we exported it,
    the task, tokenizer, input length and data folder of the adapter file's run (none otherwise: pass --task)."""
    path = Path(folder) / RUN
    try:
        run = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as e:  # a JSONDecodeError says the line and column, not the file
        raise PeftError(f"{path} is not valid JSON ({e}); export the folder again, or remove the file and pass "
                        f"--task") from None
    if not isinstance(run, dict):
        raise PeftError(f"{path} is not a JSON object; export the folder again, or remove it and pass --task")
    for k, (ok, what) in RUN_FIELDS.items():  # a hand-edited file: one line here, not a TypeError in the run
        if run.get(k) is not None and not ok(run[k]):
            raise PeftError(f"{path}: {k} is {run[k]!r}, not {what}; export the folder again, or remove the file "
                            f"and pass --task")
    return {**run, "model": run.get("model") or read_peft_config(folder).get("base_model_name_or_path")}
