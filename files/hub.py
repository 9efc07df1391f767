"""
Loading original Hugging Face checkpoints into model.Model: from_pretrained() finds the folder (a local folder, or a
hub name downloaded once into huggingface_hub's cache), maps its config.json to our Config (and back, for the
tests' reference models), reads its weight files, renames them with model.convert_state_dict and checks that every
tensor is accounted for, with an error that says what to do for every way this can go wrong.
"""
import json
import socket
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import torch

from mamba.model import from_state as mamba_from_state
from model import FAMILIES, Config, Model, ModelError, convert_state_dict, head_labels

SUPPORTED = (*FAMILIES, "mamba")  # mamba: a state space model, mamba/model.py

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "vocab.txt",
                   "special_tokens_map.json", "spm.model")  # spm.model: DeBERTa's SentencePiece (files/spm.py)
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def from_pretrained(name_or_dir, num_labels=None, **overrides):
    """
    Load an original Hugging Face checkpoint of one of the FAMILIES (BERT, RoBERTa, GPT-2, LLaMA, DeBERTa-v2/v3), or
    a Mamba (mamba/model.py): a local folder or a hub name.
    num_labels=None keeps the checkpoint's own head (a classifier if it has one, the decoders' LM head, or none);
    a number asks for a classification head (1 = regression), loaded if the checkpoint has one, otherwise new
    (model.new_head lists its tensors). head="choice" asks for a multiple-choice head (a *ForMultipleChoice
    checkpoint has one); a *ForQuestionAnswering checkpoint keeps its span head (head="span").
    overrides: Config fields to change (e.g. dropout=0.0).
    """
    folder = resolve(name_or_dir)
    hf = read_config(folder)
    if hf["model_type"] == "mamba":  # its own module and names; a classification head is always new
        model = mamba_from_state(hf, read_weights(folder), num_labels, **overrides)
        model.source = str(folder)
        return model
    state = convert_state_dict(read_weights(folder), hf["model_type"])
    cfg = replace(config_from_hf(hf, num_labels, head_labels(state)), **overrides)
    if cfg.positions != "learned":  # DeBERTa with position_biased_input false: a table some checkpoints carry unused
        state = {k: v for k, v in state.items() if not k.startswith("embed.pos.")}
    if cfg.head not in ("cls", "choice"):  # e.g. BERT's pooler, which only the task heads use; span's own is kept
        state = {k: v for k, v in state.items() if not k.startswith("head.") or cfg.head == "span" and "qa_" in k}
    else:  # a QA checkpoint fine-tuned further as a classifier: its span head is not used
        state = {k: v for k, v in state.items() if not k.startswith("head.qa_outputs.")}
    if cfg.family == "roberta" and cfg.head == "cls":  # RoBERTa's classification head does not use the pooler
        state = {k: v for k, v in state.items() if not k.startswith("head.pooler.")}
    if cfg.head != "lm" or cfg.tied_lm_head:  # LLaMA's LM head when a classifier is asked for, or a tied copy
        state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
    model = Model(cfg)
    new = check_state(model.state_dict(), state, folder)  # every tensor loaded, or a head that is new
    model.load_state_dict({**model.state_dict(), **state})  # strict: every tensor of ours is either loaded or new
    model.new_head, model.source = new, str(folder)  # source: where the tokenizer files are
    return model.eval()  # like transformers: call .train() to fine-tune


# ----------------------------------------------------------------------------------------------------------
# finding the folder

def resolve(name_or_dir):
    """A local checkpoint folder as is, or a hub name downloaded once into huggingface_hub's cache."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"{name} is not a checkpoint folder (no such directory)")
    how = (f"Download config.json, model.safetensors (or pytorch_model.bin) and the tokenizer files (tokenizer.json, "
           f"or vocab.json + merges.txt, or vocab.txt) from https://huggingface.co/{name} into one folder and "
           f"pass that folder instead, e.g. --model ./checkpoints/{name.split('/')[-1]}")
    online = hub_reachable()
    folder, online = _fetch(name, "config.json", online, how)
    if folder is None:
        raise ModelError(f"{name!r} is not in the local cache and the hub cannot be reached (no network?). {how}")
    for f in WEIGHT_FILES:  # the first that exists
        weights, online = _fetch(name, f, online, how)
        if weights:
            break
    else:
        raise ModelError(f"no weights for {name!r}: neither model.safetensors nor pytorch_model.bin is in the cache "
                         f"or could be downloaded. {how}")
    for f in TOKENIZER_FILES:  # optional: whichever of these the model has
        online = _fetch(name, f, online, how)[1]
    return folder.parent


def hub_reachable():
    """One quick DNS look-up, instead of huggingface_hub's ~20 s of retries when there is no network."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        return bool(socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, None))
    except OSError:
        return False


def _fetch(name, filename, online, how):
    """(path of `filename` of hub model `name`, or None where it has none; whether to go on asking the hub). The cache
    first, which also remembers the files the hub said it lacks: a model downloaded once asks the network nothing."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    # .utils, not .errors: where huggingface_hub 0.24 (requirements.txt's floor) has them too. The hub's "no such
    # file" is EntryNotFoundError there and RemoteEntryNotFoundError, a subclass, from 1.0 on
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    cached = try_to_load_from_cache(name, filename)  # a path; None: never asked; else the hub's "no such file"
    if cached is not None or not online:
        return (Path(cached) if isinstance(cached, str) else None), online
    try:
        return Path(hf_hub_download(name, filename)), True
    except LocalEntryNotFoundError:  # the hub did not answer (after its ~20 s of retries): ask it nothing more
        return None, False
    except EntryNotFoundError:  # the hub answered: this repo has no such file
        return None, True
    except RepositoryNotFoundError:
        raise ModelError(f"{name!r} is neither a local folder nor a model on the Hugging Face hub") from None
    except Exception as e:  # proxies, timeouts, disk full: say what happened and the way around it
        raise ModelError(f"downloading {filename} of {name!r} failed ({type(e).__name__}: {e}). {how}") from None


# ----------------------------------------------------------------------------------------------------------
# config.json <-> Config

def read_config(folder):
    """config.json as a dict; an architecture we do not implement is an error before any weights are read."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise ModelError(f"no config.json in {folder}: is this a Hugging Face checkpoint folder?")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # UnicodeDecodeError too
        raise ModelError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ModelError(f"{path} is a JSON {type(hf).__name__}, not the object of a Hugging Face config.json")
    if hf.get("model_type") not in SUPPORTED:
        raise ModelError(f"unsupported architecture in config.json: model_type={hf.get('model_type')!r} "
                         f"(architectures={hf.get('architectures')}); this code supports {', '.join(SUPPORTED)}")
    return hf


def config_from_hf(hf, num_labels=None, head_labels=None):
    """Our Config from a config.json dict. num_labels: the classification head wanted (None: the checkpoint's
    own, head_labels, if it has one; else the decoders' LM head, or no head)."""
    family = hf.get("model_type")
    num_labels = head_labels if num_labels is None else num_labels
    if family == "llama":
        return _llama_config(hf, num_labels)
    if family == "deberta-v2":
        return _deberta_config(hf, num_labels, head_labels)
    gpt = family == "gpt2"
    act = hf.get("activation_function" if gpt else "hidden_act", "gelu_new" if gpt else "gelu")
    if act not in ACTIVATIONS:
        raise ModelError(f"unsupported activation {act!r} in config.json; supported: {', '.join(ACTIVATIONS)}")
    if hf.get("position_embedding_type", "absolute") != "absolute" or hf.get("scale_attn_by_inverse_layer_idx"):
        raise ModelError("unsupported attention variant in config.json (only absolute positions, plain scaling)")
    head = "cls" if num_labels is not None else ("lm" if gpt else "none")
    multiple_choice = any(a.endswith("ForMultipleChoice") for a in hf.get("architectures") or [])
    if multiple_choice and num_labels in (None, head_labels):
        head = "choice"  # its 1-output classifier scores each (context, choice) row; it is no regression head
    head = "span" if _question_answering(hf) and num_labels is None else head
    hidden_drop = hf.get("resid_pdrop" if gpt else "hidden_dropout_prob", 0.1)
    d = hf["n_embd"] if gpt else hf["hidden_size"]
    pad = hf.get("pad_token_id")
    return Config(
        family=family, vocab_size=hf["vocab_size"], n_positions=hf["n_positions" if gpt else "max_position_embeddings"],
        n_layer=hf["n_layer" if gpt else "num_hidden_layers"], n_head=hf["n_head" if gpt else "num_attention_heads"],
        d_model=d, d_ff=(hf.get("n_inner") or 4 * d) if gpt else hf["intermediate_size"],
        type_vocab_size=0 if gpt else hf.get("type_vocab_size", 2),
        pad_token_id=pad if pad is not None else (hf.get("eos_token_id", 50256) if gpt else 0),
        ln_eps=hf.get("layer_norm_epsilon" if gpt else "layer_norm_eps", 1e-5 if gpt else 1e-12),
        activation=ACTIVATIONS[act], dropout=hidden_drop,
        attn_dropout=hf.get("attn_pdrop" if gpt else "attention_probs_dropout_prob", 0.1),
        head_dropout=0.0 if gpt else (hf.get("classifier_dropout") or hidden_drop),
        head=head, num_labels=num_labels or 2)


def _question_answering(hf):
    """A *ForQuestionAnswering checkpoint: its qa_outputs are the span head."""
    return any(a.endswith("ForQuestionAnswering") for a in hf.get("architectures") or [])


def _llama_config(hf, num_labels):
    """LlamaConfig's config.json: older files give rope_theta (and rope_scaling), newer ones rope_parameters."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ModelError(f"unsupported rotary scaling {kind!r} in config.json (only plain rotary positions)")
    d, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, d // n_head) or hf.get("hidden_act", "silu") != "silu":
        raise ModelError("unsupported LLaMA variant in config.json (head_dim must be hidden_size / "
                         "num_attention_heads, hidden_act silu)")
    if bool(hf.get("attention_bias")) != bool(hf.get("mlp_bias")) or hf.get("pretraining_tp", 1) != 1:
        raise ModelError("unsupported LLaMA variant in config.json (attention_bias and mlp_bias differ, or "
                         "pretraining_tp is not 1)")
    pad, kv = hf.get("pad_token_id"), hf.get("num_key_value_heads") or n_head
    return Config(
        family="llama", vocab_size=hf["vocab_size"], n_positions=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"], n_head=n_head, n_kv_head=None if kv == n_head else kv,
        d_model=d, d_ff=hf["intermediate_size"], type_vocab_size=0, pad_token_id=pad if pad is not None else 0,
        ln_eps=hf.get("rms_norm_eps", 1e-6), activation="silu", dropout=0.0,
        attn_dropout=hf.get("attention_dropout", 0.0), head_dropout=0.0, norm="rmsnorm", positions="rotary",
        mlp="gated", rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        bias=bool(hf.get("attention_bias")), tied_lm_head=bool(hf.get("tie_word_embeddings", False)),
        head="cls" if num_labels is not None else "span" if _question_answering(hf) else "lm",
        num_labels=num_labels or 2)


def _deberta_config(hf, num_labels, head_labels):
    """DebertaV2Config's config.json (DeBERTa-v2 and v3): BERT's fields plus the disentangled attention's."""
    terms = hf.get("pos_att_type") or []
    terms = [t.strip() for t in terms.lower().split("|")] if isinstance(terms, str) else list(terms)
    if not hf.get("relative_attention") or not terms or set(terms) - {"c2p", "p2c"}:
        raise ModelError(f"unsupported DeBERTa variant in config.json (relative_attention "
                         f"{hf.get('relative_attention')}, pos_att_type {hf.get('pos_att_type')}): this code needs "
                         "relative attention with c2p and / or p2c terms, as DeBERTa-v3")
    if hf.get("conv_kernel_size", 0) or hf.get("attention_head_size", hf["hidden_size"] // hf["num_attention_heads"]) \
            != hf["hidden_size"] // hf["num_attention_heads"]:
        raise ModelError("unsupported DeBERTa variant in config.json (the convolution of deberta-v2-xlarge / xxlarge, "
                         "or an attention_head_size other than hidden_size / num_attention_heads)")
    if hf.get("hidden_act", "gelu") != "gelu" or hf.get("pooler_hidden_act", "gelu") != "gelu" or \
            hf.get("pooler_dropout", 0) or hf.get("pooler_hidden_size", hf["hidden_size"]) != hf["hidden_size"]:
        raise ModelError("unsupported DeBERTa variant in config.json (hidden_act and pooler_hidden_act must be gelu, "
                         "pooler_dropout 0, pooler_hidden_size hidden_size, as in every DeBERTa-v3 checkpoint)")
    norm_rel = [t.strip() for t in str(hf.get("norm_rel_ebd", "none")).lower().split("|")]
    n_pos, hidden_drop = hf.get("max_position_embeddings", 512), hf.get("hidden_dropout_prob", 0.1)
    max_rel = hf.get("max_relative_positions", -1)
    multiple_choice = any(a.endswith("ForMultipleChoice") for a in hf.get("architectures") or [])
    head = "none" if num_labels is None else "choice" if multiple_choice and num_labels == head_labels else "cls"
    head = "span" if _question_answering(hf) and num_labels is None else head
    cls_drop = hf.get("cls_dropout")
    return Config(
        family="deberta-v2", vocab_size=hf["vocab_size"], n_positions=n_pos, n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"], d_model=hf["hidden_size"], d_ff=hf["intermediate_size"],
        type_vocab_size=hf.get("type_vocab_size", 0), pad_token_id=hf.get("pad_token_id") or 0,
        ln_eps=hf.get("layer_norm_eps", 1e-7), activation="gelu", dropout=hidden_drop,
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        head_dropout=hidden_drop if cls_drop is None else cls_drop, head=head, num_labels=num_labels or 2,
        positions="learned" if hf.get("position_biased_input", True) else "relative",
        embedding_size=None if hf.get("embedding_size") in (None, hf["hidden_size"]) else hf["embedding_size"],
        pos_att_type="|".join(t for t in ("p2c", "c2p") if t in terms), position_buckets=hf.get("position_buckets", -1),
        max_relative_positions=max_rel if max_rel >= 1 else n_pos, share_att_key=bool(hf.get("share_att_key")),
        norm_rel_ebd="layer_norm" in norm_rel)


def config_to_hf(cfg):
    """transformers' config object for our Config (classification head): the inverse of config_from_hf."""
    import transformers as hf  # test-only dependency: imported only when asked for
    if cfg.family == "llama":
        out = hf.LlamaConfig(vocab_size=cfg.vocab_size, max_position_embeddings=cfg.n_positions,
                             hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                             num_key_value_heads=cfg.kv_heads, intermediate_size=cfg.d_ff, rms_norm_eps=cfg.ln_eps,
                             rope_theta=cfg.rope_theta, attention_bias=cfg.bias, mlp_bias=cfg.bias,
                             tie_word_embeddings=cfg.tied_lm_head, pad_token_id=cfg.pad_token_id,
                             num_labels=cfg.num_labels)
        return out
    if cfg.family == "deberta-v2":
        out = hf.DebertaV2Config(
            vocab_size=cfg.vocab_size, max_position_embeddings=cfg.n_positions, hidden_size=cfg.d_model,
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, intermediate_size=cfg.d_ff,
            layer_norm_eps=cfg.ln_eps, type_vocab_size=cfg.type_vocab_size, pad_token_id=cfg.pad_token_id,
            relative_attention=True, position_biased_input=cfg.positions == "learned",
            pos_att_type=cfg.pos_att_type, position_buckets=cfg.position_buckets,
            max_relative_positions=cfg.max_relative_positions, share_att_key=cfg.share_att_key,
            norm_rel_ebd="layer_norm" if cfg.norm_rel_ebd else "none", embedding_size=cfg.embedding_size or cfg.d_model,
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attn_dropout,
            cls_dropout=cfg.head_dropout, num_labels=cfg.num_labels)
        return out
    act = {v: k for k, v in reversed(ACTIVATIONS.items())}[cfg.activation]  # gelu_tanh -> gelu_new
    if cfg.family == "gpt2":
        out = hf.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.d_model,
                            n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff, activation_function=act,
                            layer_norm_epsilon=cfg.ln_eps, pad_token_id=cfg.pad_token_id,
                            eos_token_id=cfg.pad_token_id, bos_token_id=cfg.pad_token_id)
    else:
        out = (hf.RobertaConfig if cfg.family == "roberta" else hf.BertConfig)(
            vocab_size=cfg.vocab_size, max_position_embeddings=cfg.n_positions, hidden_size=cfg.d_model,
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, intermediate_size=cfg.d_ff,
            hidden_act=act, layer_norm_eps=cfg.ln_eps, type_vocab_size=cfg.type_vocab_size,
            pad_token_id=cfg.pad_token_id)
    out.num_labels = cfg.num_labels
    return out


# ----------------------------------------------------------------------------------------------------------
# weight files

def read_weights(folder):
    """The checkpoint's tensors as a dict: model.safetensors (sharded too) or pytorch_model.bin."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = ([folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
             if index.exists() else [folder / f for f in WEIGHT_FILES if (folder / f).exists()][:1])
    if not files:
        raise ModelError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)} "
                         f"(found: {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'})")
    state = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file
                state.update(load_file(f))
            else:  # weights_only: never unpickle arbitrary objects from a downloaded file
                state.update(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as e:
            raise ModelError(f"could not read weights file {f} ({type(e).__name__}: {e}); it is corrupt or "
                             f"truncated: delete it and download it again") from None
    return state


def check_state(ours, state, folder):
    """Every tensor accounted for: each of ours is in the checkpoint, or part of a task head the checkpoint does
    not have (returned: it stays newly initialised); each of the checkpoint's fits one of ours, shape included."""
    new = [k for k in ours if k.startswith("head.") and k not in state] if head_labels(state) is None else []
    missing = [k for k in ours if k not in state and k not in new]
    if missing:
        raise ModelError(f"tensors missing from the checkpoint in {folder}: {', '.join(missing[:10])}"
                         f"{' ...' if len(missing) > 10 else ''}")
    for k, t in state.items():
        if k not in ours:
            raise ModelError(f"checkpoint tensor {k} has no place in this model")
        if t.shape != ours[k].shape:
            if k.startswith("head.") and t.shape[0] != ours[k].shape[0]:
                raise ModelError(f"the checkpoint's classification head has {t.shape[0]} labels, not the "
                                 f"{ours[k].shape[0]} asked for: start from a checkpoint without a task head")
            raise ModelError(f"checkpoint tensor {k} has shape {tuple(t.shape)}, the model expects "
                             f"{tuple(ours[k].shape)}: config.json and the weights disagree")
    return new
