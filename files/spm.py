"""
DeBERTa's SentencePiece tokenizer (spm.model) as a `tokenizers` Tokenizer, so that the runtime reads every tokenizer
with the one library. The model file is a protobuf (SentencePiece's ModelProto); the few fields a Unigram model needs
are read here from the wire format itself, so neither sentencepiece nor protobuf is needed. Converted once, cached as
tokenizer.json under $SSMLORA_TOKENIZER_CACHE (default ~/.cache/ssmlora/tokenizers), keyed by the file's hash.

    tokenizer(folder) -> tokenizers.Tokenizer     [CLS] a [SEP] b [SEP], token types 0 then 1, as DeBERTa's
"""
import hashlib
import json
import os
import struct

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from files import atomic_write

VERSION = 1  # of the conversion: part of the cache key, so a fixed conversion never reads an old cache
NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4  # SentencePiece.Type
UNIGRAM = 1  # TrainerSpec.model_type


def _fields(buf):
    """(field number, value) of one protobuf message: ints for varints, bytes for length-delimited fields, raw bytes
    for fixed 32 / 64-bit ones. A field that runs past the end (a file cut off) is a ValueError: slicing would
    silently hand back what is left of it."""
    i = 0

    def varint():
        nonlocal i
        out = shift = 0
        while True:
            if i >= len(buf):
                raise ValueError(f"a number runs past the end of its message (byte {i} of {len(buf)}): cut off?")
            b = buf[i]
            i += 1
            out |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return out

    def take(n):
        nonlocal i
        if n > len(buf) - i:
            raise ValueError(f"a field of {n} bytes at byte {i} runs past the end of its message ({len(buf) - i} "
                             f"bytes left): cut off?")
        i += n
        return buf[i - n:i]
    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, varint()
        elif wire in (1, 5):
            yield number, take(8 if wire == 1 else 4)
        elif wire == 2:
            yield number, take(varint())
        else:
            raise ValueError(f"wire type {wire}")


def read_model(data):
    """The parts of a ModelProto a Unigram tokenizer needs: [(piece, score, type)], trainer and normalizer fields."""
    pieces, trainer, normalizer, seen_normalizer = [], {}, {}, False
    for number, value in _fields(data):
        if number == 1:  # SentencePiece: 1 piece, 2 score (float), 3 type
            p = dict(_fields(value))
            pieces.append((p.get(1, b"").decode("utf-8"), struct.unpack("<f", p[2])[0] if 2 in p else 0.0,
                           p.get(3, NORMAL)))
        elif number == 2:  # TrainerSpec: 3 model_type, 35 byte_fallback, 40 unk_id
            trainer = dict(_fields(value))
        elif number == 3:  # NormalizerSpec: 2 precompiled_charsmap, 3 add_dummy_prefix, 4 remove_extra_whitespaces
            normalizer = dict(_fields(value))
            seen_normalizer = True
    # SentencePiece writes the pieces, then both specs: a file cut between two pieces has every length right
    if not pieces or not seen_normalizer:
        raise ValueError("no pieces, or no normalizer spec after them: cut off?")
    return pieces, trainer, normalizer


def convert(data):
    """A tokenizers Tokenizer that segments as SentencePiece does with this model, wrapped as DeBERTa wraps texts."""
    pieces, trainer, normalizer = read_model(data)
    if trainer.get(3, UNIGRAM) != UNIGRAM:
        raise ValueError(f"a model of type {trainer.get(3)}, not Unigram (DeBERTa's)")
    unk = next((i for i, p in enumerate(pieces) if p[2] == UNKNOWN), trainer.get(40, 0))
    tok = Tokenizer(models.Unigram([(p, s) for p, s, _ in pieces], unk_id=unk, byte_fallback=bool(trainer.get(35))))
    # SentencePiece's normalisation, in its order: the character map (NFKC and more), then extra spaces removed
    steps = [normalizers.Precompiled(normalizer[2])] if normalizer.get(2) else []
    if normalizer.get(4, 1):
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
    tok.normalizer = normalizers.Sequence(steps)
    prefix = "always" if normalizer.get(3, 1) else "never"  # add_dummy_prefix: "▁" before the first word too
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prefix)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prefix)
    # control pieces ([CLS], [SEP], [PAD] ...) are never read from text by SentencePiece; written out, they are the
    # special tokens themselves, as in Hugging Face's tokenizers. User-defined pieces are always kept whole.
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p, _, t in pieces if t == CONTROL])
    tok.add_tokens([AddedToken(p, normalized=False) for p, _, t in pieces if t == USER_DEFINED])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise ValueError("no [CLS] or [SEP] piece: not a DeBERTa vocabulary")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def tokenizer(folder):
    """folder/spm.model as a Tokenizer: from the cache, else converted and cached. Tokens the folder's
    added_tokens.json adds after the pieces (DeBERTa-v3's [MASK]) are added with their ids."""
    path = os.path.join(folder, "spm.model")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path} ({e})") from None
    cache = os.environ.get("SSMLORA_TOKENIZER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ssmlora",
                                                                       "tokenizers")
    cached = os.path.join(cache, f"spm-{hashlib.sha256(data).hexdigest()[:20]}-v{VERSION}.json")
    tok = None
    if os.path.isfile(cached):
        try:
            tok = Tokenizer.from_file(cached)
        except Exception:  # a damaged cache file is converted again
            pass
    if tok is None:
        try:
            tok = convert(data)
        except (ValueError, IndexError, UnicodeDecodeError, struct.error) as e:
            raise ValueError(f"{path} is not a SentencePiece Unigram model ({e}); download it again (or put the "
                             f"checkpoint's tokenizer.json beside it instead)") from None
        try:
            atomic_write(cached, lambda tmp: tok.save(tmp))
        except OSError:  # a read-only home: convert each time (a second or so for DeBERTa-v3's 128k pieces)
            pass
    added = os.path.join(folder, "added_tokens.json")
    if os.path.isfile(added):
        try:
            with open(added, encoding="utf-8") as f:
                extra = json.load(f)
            extra = sorted(extra.items(), key=lambda kv: kv[1])
        except (OSError, ValueError, AttributeError, TypeError) as e:  # JSONDecodeError names no file
            raise ValueError(f"{added} is not valid JSON of token: id ({e}); download it again") from None
        for content, i in extra:
            if i == tok.get_vocab_size(with_added_tokens=True) and tok.token_to_id(content) is None:
                tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
    return tok
