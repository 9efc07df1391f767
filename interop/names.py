"""
Our tensor names back to Hugging Face's: the inverse of model.convert_state_dict, for the merged export and for
PEFT's key names. GPT-2's query, key and value (or the fused qkv) join again into its Conv1D c_attn.
"""
import re

import torch

from model import ModelError

_P = {"bert": "bert.", "roberta": "roberta.", "gpt2": "transformer.", "llama": "model.", "deberta-v2": "deberta."}
# our name -> Hugging Face name, re.fullmatch; "{p}" is the family's body prefix (bert., transformer., ...)
_ENCODER = [
    (r"embed\.tok\.(\w+)", r"{p}embeddings.word_embeddings.\1"),
    (r"embed\.pos\.(\w+)", r"{p}embeddings.position_embeddings.\1"),
    (r"embed\.typ\.(\w+)", r"{p}embeddings.token_type_embeddings.\1"),
    (r"embed\.ln\.(\w+)", r"{p}embeddings.LayerNorm.\1"),
    (r"blocks\.(\d+)\.attn\.(query|key|value)\.(\w+)", r"{p}encoder.layer.\1.attention.self.\2.\3"),
    (r"blocks\.(\d+)\.attn\.out\.(\w+)", r"{p}encoder.layer.\1.attention.output.dense.\2"),
    (r"blocks\.(\d+)\.ln_attn\.(\w+)", r"{p}encoder.layer.\1.attention.output.LayerNorm.\2"),
    (r"blocks\.(\d+)\.mlp\.fc_in\.(\w+)", r"{p}encoder.layer.\1.intermediate.dense.\2"),
    (r"blocks\.(\d+)\.mlp\.fc_out\.(\w+)", r"{p}encoder.layer.\1.output.dense.\2"),
    (r"blocks\.(\d+)\.ln_mlp\.(\w+)", r"{p}encoder.layer.\1.output.LayerNorm.\2"),
    (r"head\.pooler\.(\w+)", r"{p}pooler.dense.\1"),           # BERT's heads, RoBERTa's multiple choice
    (r"head\.classifier\.(\w+)", r"classifier.\1"),
    (r"head\.dense\.(\w+)", r"classifier.dense.\1"),          # RoBERTa's classification head
    (r"head\.out_proj\.(\w+)", r"classifier.out_proj.\1"),
]
_DEBERTA = [  # its own projection names, relative positions, and a pooler outside the body
    (r"blocks\.(\d+)\.attn\.(query|key|value)\.(\w+)", r"{p}encoder.layer.\1.attention.self.\2_proj.\3"),
    (r"blocks\.(\d+)\.attn\.pos_(query|key)\.(\w+)", r"{p}encoder.layer.\1.attention.self.pos_\2_proj.\3"),
    (r"embed\.proj\.weight", "{p}embeddings.embed_proj.weight"), (r"rel\.weight", "{p}encoder.rel_embeddings.weight"),
    (r"ln_rel\.(\w+)", r"{p}encoder.LayerNorm.\1"), (r"head\.pooler\.(\w+)", r"pooler.dense.\1"),
]
_TO_HF = {
    "bert": _ENCODER, "roberta": _ENCODER, "deberta-v2": _DEBERTA + _ENCODER,
    "gpt2": [
        (r"embed\.tok\.weight", "{p}wte.weight"), (r"embed\.pos\.weight", "{p}wpe.weight"),
        (r"blocks\.(\d+)\.ln_attn\.(\w+)", r"{p}h.\1.ln_1.\2"), (r"blocks\.(\d+)\.ln_mlp\.(\w+)", r"{p}h.\1.ln_2.\2"),
        (r"blocks\.(\d+)\.attn\.(?:query|key|value|qkv)\.(\w+)", r"{p}h.\1.attn.c_attn.\2"),  # slices of c_attn
        (r"blocks\.(\d+)\.attn\.out\.(\w+)", r"{p}h.\1.attn.c_proj.\2"),
        (r"blocks\.(\d+)\.mlp\.fc_in\.(\w+)", r"{p}h.\1.mlp.c_fc.\2"),
        (r"blocks\.(\d+)\.mlp\.fc_out\.(\w+)", r"{p}h.\1.mlp.c_proj.\2"),
        (r"ln_f\.(\w+)", r"{p}ln_f.\1"), (r"head\.score\.weight", "score.weight"),
    ],
    "llama": [
        (r"embed\.tok\.weight", "{p}embed_tokens.weight"),
        *[(rf"blocks\.(\d+)\.attn\.{ours}\.(\w+)", rf"{{p}}layers.\1.self_attn.{hf}.\2")
          for ours, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("out", "o_proj"))],
        *[(rf"blocks\.(\d+)\.mlp\.{ours}\.(\w+)", rf"{{p}}layers.\1.mlp.{hf}.\2")
          for ours, hf in (("fc_gate", "gate_proj"), ("fc_in", "up_proj"), ("fc_out", "down_proj"))],
        (r"blocks\.(\d+)\.ln_attn\.weight", r"{p}layers.\1.input_layernorm.weight"),
        (r"blocks\.(\d+)\.ln_mlp\.weight", r"{p}layers.\1.post_attention_layernorm.weight"),
        (r"ln_f\.weight", "{p}norm.weight"), (r"head\.score\.weight", "score.weight"),
        (r"lm_head\.weight", "lm_head.weight"),
    ],
}
CONV1D = r"blocks\.\d+\.(attn\.(query|key|value|qkv|out)|mlp\.fc_in|mlp\.fc_out)\.weight"  # GPT-2 stores (in, out)


def hf_name(name, family):
    """The Hugging Face name of one of our tensors (GPT-2's query, key, value, qkv: its c_attn)."""
    if family not in _TO_HF:
        raise ModelError(f"no Hugging Face names for the {family} family here")
    for pattern, repl in _TO_HF[family]:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl.replace("{p}", _P[family]), name)
    raise ModelError(f"{name} has no Hugging Face {family} counterpart")


def to_hf(state, cfg):
    """Our state dict (adapter matrices excluded) as a Hugging Face one: the inverse of model.convert_state_dict.
    Fused or split qkv alike: LLaMA / BERT / RoBERTa get separate projections, GPT-2 one Conv1D c_attn."""
    out, c_attn = {}, {}
    for name, t in state.items():
        m = re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", name)
        if m and cfg.family != "gpt2":  # our fused qkv (--targets qkv) back to the three projections
            d, kv = cfg.d_model, cfg.kv_heads * (cfg.d_model // cfg.n_head)
            for proj, part in zip(("query", "key", "value"), t.split((d, kv, kv))):
                out[hf_name(f"blocks.{m[1]}.attn.{proj}.{m[2]}", cfg.family)] = part.contiguous()
            continue
        key = hf_name(name, cfg.family)
        if key.endswith((".c_attn.weight", ".c_attn.bias")):  # q, k, v (or qkv) concatenated in that order
            c_attn.setdefault(key, {})[name.split(".")[3]] = t
            continue
        conv1d = cfg.family == "gpt2" and re.fullmatch(CONV1D, name)
        out[key] = t.t().contiguous() if conv1d else t
    for key, parts in c_attn.items():
        t = parts["qkv"] if "qkv" in parts else torch.cat([parts[p] for p in ("query", "key", "value")])
        out[key] = t.t().contiguous() if key.endswith(".weight") else t
    return out
