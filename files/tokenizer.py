"""
A checkpoint's own tokenizer, read from its folder as Hugging Face saves it: tokenizer.json, else vocab.json +
merges.txt (RoBERTa, GPT-2), else vocab.txt (BERT), else DeBERTa's spm.model (spm.py). load_tokenizer returns a
data.Tok: the tokenizers.Tokenizer plus its family and padding id, which data.py encodes and batches with.
"""
import json
import os

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from data import DataError, Tok
from files import spm

# The padding token, when the tokenizer declares none of its own: GPT-2 and LLaMA have none and pad with their
# end-of-text token, which the attention mask hides anyway (and the head pools the last real token).
PAD_TOKENS = {"bert": "[PAD]", "roberta": "<pad>", "gpt2": "<|endoftext|>", "llama": "</s>", "deberta-v2": "[PAD]",
              "mamba": "<|endoftext|>"}  # Mamba: GPT-NeoX's BPE, pad = eos = id 0 (padding is read from the mask)
SPECIAL_TOKENS = {"bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                  "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "gpt2": ["<|endoftext|>"]}


def _read_json(path):
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not valid JSON ({e})") from None


def _with_specials(tok, family):
    """Built from vocabulary files, a tokenizer must still map a special token's spelling in a text to that token,
    as Hugging Face's do (a tokenizer.json lists its special tokens itself)."""
    tok.add_special_tokens([AddedToken(t, special=True, lstrip=t == "<mask>", normalized=False)
                            for t in SPECIAL_TOKENS[family] if tok.token_to_id(t) is not None])
    return tok


def _wordpiece(folder):
    """BERT's tokenizer from vocab.txt, with the options tokenizer_config.json sets (uncased by default)."""
    cfg = _read_json(os.path.join(folder, "tokenizer_config.json"))
    tok = Tokenizer(models.WordPiece.from_file(os.path.join(folder, "vocab.txt"), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=cfg.get("tokenize_chinese_chars", True),
        strip_accents=cfg.get("strip_accents"), lowercase=cfg.get("do_lower_case", True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise DataError(f"{folder}/vocab.txt has no [CLS] or [SEP]: not a BERT vocabulary")
    tok.post_processor = processors.TemplateProcessing(     # [CLS] a [SEP] b [SEP], token types 0 then 1
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return _with_specials(tok, "bert")


def _byte_level_bpe(folder, family):
    """RoBERTa's or GPT-2's tokenizer from vocab.json + merges.txt. RoBERTa wraps texts as <s> a </s></s> b </s>;
    GPT-2 adds nothing and simply concatenates the two texts of a pair."""
    tok = Tokenizer(models.BPE.from_file(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    family = family or ("roberta" if tok.token_to_id("<s>") is not None else "gpt2")
    if family == "roberta":
        bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        if bos is None or eos is None:
            raise DataError(f"{folder}/vocab.json has no <s> or </s>: not a RoBERTa vocabulary")
        tok.post_processor = processors.RobertaProcessing(("</s>", eos), ("<s>", bos))
    return _with_specials(tok, family), family


def _declared_pad_token(folder):
    """The pad token a Hugging Face tokenizer folder declares (tokenizer_config.json, special_tokens_map.json)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        pad = _read_json(os.path.join(folder, name)).get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        if pad:
            return pad
    return None


def load_tokenizer(folder, family=None):
    """The checkpoint's own tokenizer: tokenizer.json, else vocab.json + merges.txt, else vocab.txt. family
    ("bert", "roberta", "gpt2", "llama") defaults to config.json's model_type, then to what the vocabulary contains.
    It pads with the tokenizer's own pad token when it declares one, else with its family's (PAD_TOKENS)."""
    own = _read_json(os.path.join(folder, "config.json"))
    own = own.get("model_type") if isinstance(own, dict) else None  # the checkpoint the tokenizer comes with
    given = family
    if family is None:
        family = own if own in PAD_TOKENS else None
    elif family not in PAD_TOKENS:
        raise DataError(f"Unknown model family {family!r}: use one of {', '.join(PAD_TOKENS)}.")
    elif own and own != family:  # its ids would mean other tokens to the model
        raise DataError(f"the tokenizer in {folder} is a {own} checkpoint's (its config.json), not a {family} "
                        f"model's: pass --tokenizer with a {family} checkpoint folder")
    has = lambda name: os.path.isfile(os.path.join(folder, name))
    bpe = has("vocab.json") and has("merges.txt")
    if not (has("tokenizer.json") or bpe or has("vocab.txt") or has("spm.model")):
        raise DataError(f"No tokenizer in {folder}: expected tokenizer.json (LLaMA: only that), or vocab.json + "
                        "merges.txt (RoBERTa, GPT-2), or vocab.txt (BERT), or spm.model (DeBERTa), as in a Hugging "
                        "Face checkpoint folder.")
    try:
        if has("tokenizer.json"):
            tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))   # brings its own special tokens
        elif has("spm.model"):                    # DeBERTa's SentencePiece model, converted once and cached
            tok, family = spm.tokenizer(folder), family or "deberta-v2"
        elif bpe:
            tok, family = _byte_level_bpe(folder, family)
        elif family in (None, "bert"):
            tok, family = _wordpiece(folder), "bert"
        else:
            raise DataError(f"{folder} holds BERT's vocab.txt, not a {family} tokenizer")
    except DataError:
        raise
    except Exception as e:                        # tokenizers raises plain Exception for unreadable files
        raise DataError(f"Cannot load the tokenizer files in {folder} ({e})") from None
    other = [f for f, t in PAD_TOKENS.items() if tok.token_to_id(t) is not None]  # whose padding it has
    if given and tok.token_to_id(PAD_TOKENS[given]) is None and other:  # every tokenizer of a family has its own
        raise DataError(f"the tokenizer in {folder} has {PAD_TOKENS[other[0]]} but no {PAD_TOKENS[given]}: it is "
                        f"not a {given} model's (a {other[0]} one?); pass --tokenizer with a {given} checkpoint folder")
    family = family or next((f for f, pad in PAD_TOKENS.items() if tok.token_to_id(pad) is not None), None)
    pad = _declared_pad_token(folder)
    pad = pad if pad is not None and tok.token_to_id(pad) is not None else PAD_TOKENS.get(family)
    if pad is None or tok.token_to_id(pad) is None:
        raise DataError(f"Cannot tell the padding token of the tokenizer in {folder}: it declares none "
                        f"(tokenizer_config.json's pad_token) and has none of {', '.join(PAD_TOKENS.values())}. "
                        f"Pass --tokenizer with the tokenizer folder of a checkpoint of this model's family.")
    return Tok(tok, family, tok.token_to_id(pad))

