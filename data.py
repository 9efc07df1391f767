"""
The data machinery every benchmark shares: finding its official files or downloading them once into a cache
(atomically), the checkpoint's own tokenizer, and padded batches. Each reader in benchmarks/ turns its official
files into examples (GLUE: Examples; SuperGLUE, RACE: Pairs and Choices); benchmarks/metrics.py scores predictions.

    Example(text_a, text_b, label)            text_b None for single texts; label a class id or a float score
    benchmark_folder(what, folder, ...)       data_dir/folder, or cache_dir/folder downloaded once: every reader's
    fetch_once(cache_dir, folder, build)      cache_dir/folder, built by build(tmp) the first time, atomically
    download(url, dest), download_zip(url, into, name), untar(archive, url, into)
    Pair(text_a, text_b, label, group), Choice(context, choices, gold, ...)   the reading benchmarks' shapes
    load_tokenizer(folder, family=None) -> Tok;  Tok.encode(examples, max_len) -> Encoded
    encode_rows(tok, pairs_or_choices, max_len) -> Rows   the passage is cut to fit, never the question or option
    batches(encoded, batch_size, shuffle=False, generator=None) -> dicts of input_ids, attention_mask (None when
        nothing in the batch is padded), token_type_ids, labels; for Choices also choices (questions, most choices)
    collate(encoded, examples) -> one such dict, of the chosen examples (an array of their numbers)
"""
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from itertools import chain
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tqdm import tqdm



class DataError(ValueError):
    """Missing or malformed data files, a failed download, an unusable tokenizer folder (a ValueError: the entry
    points print it as one line)."""


class Example(NamedTuple):
    text_a: str
    text_b: str | None
    label: int | float


# The two shapes of the reading benchmarks (superglue.py, race.py): rows that pair a passage with a shorter text.
# The passage comes first and is the only part ever cut to fit; the question, hypothesis or choice never is.

class Pair(NamedTuple):
    """Classification of (passage, text)."""
    text_a: str            # the passage
    text_b: str
    label: int
    group: str = ""        # MultiRC: the question this answer belongs to (exact match scores them together)


class Choice(NamedTuple):
    """Multiple choice: the context paired with each choice, one row each, one softmax over the question's rows."""
    context: str           # the passage
    choices: tuple         # the texts paired with it
    gold: tuple            # indices of the right choices (several in ReCoRD, when an entity has several spellings)
    level: str = ""        # RACE: "middle" or "high"
    entities: tuple = ()   # ReCoRD: the candidate entity of each choice ...
    answers: tuple = ()    # ... and the gold answer texts, which its metrics compare with the chosen entity

    @property
    def label(self):       # the one right choice; -1 when none is (a ReCoRD query whose answer is no entity)
        return self.gold[0] if self.gold else -1


# ----------------------------------------------------------------------------- downloading once, into a cache

def benchmark_folder(what, folder, data_dir, cache_dir, complete, build, expected, official, env):
    """The folder that holds a benchmark's files, found or downloaded once; every reader in benchmarks/ uses this.
    With data_dir (offline): data_dir/<folder>, where the official archive unpacks, or data_dir itself. Without:
    cache_dir/<folder> (default $SSMLORA_<env>_CACHE, else ~/.cache/ssmlora/<env>), built by build(tmp) the first
    time (fetch_once: all or nothing). complete(folder): whether it holds every file; expected: those files, for the
    messages; official: the official URLs, for the way to work offline."""
    if data_dir is not None:
        for candidate in (os.path.join(data_dir, folder), data_dir):
            if complete(candidate):
                return candidate
        raise DataError(f"{what}: --data-dir {data_dir} lacks {expected}. Put the official files there (as they "
                        "unpack), or leave --data-dir out to download them into the cache.")
    cache_dir = cache_dir or os.environ.get(f"SSMLORA_{env.upper()}_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ssmlora", env)
    final = os.path.join(cache_dir, folder)
    if not complete(final):
        print(f"data: downloading {what} into {cache_dir}")
        try:
            fetch_once(cache_dir, folder, build)
        except DataError as e:
            them = "them" if len(official) > 1 else "it"
            raise DataError(f"Could not get {what}: {e}. Nothing was written to the cache. To work offline, fetch "
                            f"{' + '.join(official)} on a machine with internet, put {them} in a folder and set "
                            f"SSMLORA_{env.upper()}_URL=file:///that/folder; or pass --data-dir with a folder that "
                            f"holds {expected}.") from None
    return final


def mirror(name, base_url, env, official):
    """The URL of a benchmark file: base_url or $SSMLORA_<env>_URL (a folder that serves every file by its plain
    name) when given, else the official one."""
    base_url = base_url or os.environ.get(f"SSMLORA_{env.upper()}_URL")
    return f"{base_url.rstrip('/')}/{name}" if base_url else official


def fetch_once(cache_dir, folder, build):
    """cache_dir/folder, built the first time by build(tmp), which must create tmp/folder. All or nothing: it is
    built in a temporary folder beside its final place and moved there by one os.replace, so an interrupted run
    leaves nothing half-written, and a later run finds either the whole folder or none."""
    final = os.path.join(cache_dir, folder)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{folder}-partial-", dir=cache_dir)
    try:
        build(tmp)
        shutil.rmtree(final, ignore_errors=True)  # an incomplete folder (files removed by hand) is replaced
        os.replace(os.path.join(tmp, folder), final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def download(url, dest):
    """Stream url into the file dest with a progress bar; any failure, a short body included, is a DataError."""
    done = total = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
                    done += len(chunk)
    except (OSError, HTTPException) as e:        # URLError, HTTPError, timeouts, refused connections, IncompleteRead
        raise DataError(f"download of {url} failed ({e})") from None
    if total and done != total:
        raise DataError(f"download of {url} stopped after {done} of {total} bytes")


def untar(archive, url, into):
    """Extract a downloaded .tar.gz; the "data" filter refuses members that would land outside `into` (links,
    absolute paths, ..)."""
    try:
        with tarfile.open(archive, "r:*") as t:
            t.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{url} is not a valid .tar.gz archive ({e})") from None


def download_zip(url, into, name):
    """Download the zip at url as into/name and extract it into `into`, after checking every member's CRC."""
    archive = os.path.join(into, name)
    download(url, archive)
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()                      # reads every member and checks its CRC
            if bad is not None:
                raise DataError(f"{url}: member {bad} is corrupt")
            z.extractall(into)                     # extractall keeps member paths inside `into`
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"{url} is not a valid zip archive ({e})") from None


# ----------------------------------------------------------------------------- tokenization

# The padding token, when the tokenizer declares none of its own: GPT-2 and LLaMA have none and pad with their
# end-of-text token, which the attention mask hides anyway (and the head pools the last real token).
PAD_TOKENS = {"bert": "[PAD]", "roberta": "<pad>", "gpt2": "<|endoftext|>", "llama": "</s>", "deberta-v2": "[PAD]"}
TYPED = ("bert", "deberta-v2")  # the families whose pairs have token types 0 then 1
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
    if family is None:
        family = _read_json(os.path.join(folder, "config.json")).get("model_type")
        family = family if family in PAD_TOKENS else None
    elif family not in PAD_TOKENS:
        raise DataError(f"Unknown model family {family!r}: use one of {', '.join(PAD_TOKENS)}.")
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
            from files import spm
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
    family = family or next((f for f, pad in PAD_TOKENS.items() if tok.token_to_id(pad) is not None), None)
    pad = _declared_pad_token(folder)
    pad = pad if pad is not None and tok.token_to_id(pad) is not None else PAD_TOKENS.get(family)
    if pad is None or tok.token_to_id(pad) is None:
        raise DataError(f"Cannot tell the padding token of the tokenizer in {folder}: it declares none "
                        f"(tokenizer_config.json's pad_token) and has none of {', '.join(PAD_TOKENS.values())}. "
                        f"Pass --tokenizer with the tokenizer folder of a checkpoint of this model's family.")
    return Tok(tok, family, tok.token_to_id(pad))


@dataclass
class Encoded:
    """Tokenized examples stored flat: row i is ids[offsets[i]:offsets[i + 1]]. A few arrays instead of a Python
    list per example keep QQP and MNLI (~400k rows) small in memory and make batching a vectorized gather."""
    ids: np.ndarray         # int32, all rows concatenated
    type_ids: np.ndarray    # int8, the same shape
    offsets: np.ndarray     # int64, len(rows) + 1
    labels: np.ndarray      # int64 class ids, or float32 scores
    pad_id: int
    full: np.ndarray = None  # int64 per row: its tokens before truncation to max_len (results by input length)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):      # one row as lists, for inspection; subset examples before encoding instead
        if not isinstance(i, (int, np.integer)):
            raise TypeError("Encoded rows are read one at a time; to use a subset, encode a subset of the examples")
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        start, stop = self.offsets[i], self.offsets[i + 1]
        return {"input_ids": self.ids[start:stop].tolist(), "token_type_ids": self.type_ids[start:stop].tolist(),
                "label": self.labels[i].item()}


class Tok:
    """A tokenizers.Tokenizer plus what batching needs: the family and the padding id."""

    def __init__(self, tokenizer, family, pad_id):
        self.tokenizer, self.family, self.pad_id = tokenizer, family, pad_id

    def encode(self, examples, max_len, chunk=8192, count_cut=False):
        """Tokenize (and truncate to max_len tokens, specials included) a list of Examples. count_cut: also count
        each row's tokens before truncation (Encoded.full, for results by input length)."""
        pair = any(e.text_b is not None for e in examples)
        specials = self.tokenizer.post_processor.num_special_tokens_to_add(pair) if self.tokenizer.post_processor else 0
        if max_len < specials + 1 + pair:     # tokenizers would silently return rows longer than max_len
            raise DataError(f"--max-len {max_len} leaves no room for text: this tokenizer adds {specials} special "
                            f"tokens to {'a pair' if pair else 'a text'}; use at least {specials + 1 + pair}.")
        self.tokenizer.no_padding()                      # batches() pads, per batch
        self.tokenizer.enable_truncation(max_len)        # longest_first, as Hugging Face's truncation=True
        # Chunks turned into arrays at once bound the memory of tokenizers' Encoding objects and Python int lists.
        ids, types, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int8)], [np.zeros(0, np.int64)]
        for start in range(0, len(examples), chunk):
            texts = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples[start:start + chunk]]
            try:
                encodings = self.tokenizer.encode_batch(texts)
            except Exception as e:                       # tokenizers raises plain Exception, e.g. for a None text
                raise DataError(f"Cannot tokenize examples {start}..{start + len(texts) - 1}: {e}") from None
            lengths.append(np.array([len(e.ids) for e in encodings], dtype=np.int64))
            ids.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int32))
            types.append(np.fromiter(chain.from_iterable(e.type_ids for e in encodings), np.int8))
        offsets = np.r_[0, np.cumsum(np.concatenate(lengths))]
        full = np.diff(offsets) if count_cut else None
        cut = np.flatnonzero(full >= max_len) if count_cut else []  # only a row at max_len can have been cut
        if len(cut):
            self.tokenizer.no_truncation()
            again = [examples[i].text_a if examples[i].text_b is None else (examples[i].text_a, examples[i].text_b)
                     for i in cut]
            full[cut] = [len(e.ids) for e in self.tokenizer.encode_batch(again)]
        flat_types = np.concatenate(types)
        if self.family not in TYPED:      # RoBERTa has a single token type and GPT-2 none: all zeros
            flat_types[:] = 0
        is_float = bool(examples) and isinstance(examples[0].label, float)
        labels = np.array([e.label for e in examples], dtype=np.float32 if is_float else np.int64)
        return Encoded(np.concatenate(ids), flat_types, offsets.astype(np.int64), labels, self.pad_id, full)


# ----------------------------------------------------------------------------- passage-first rows (Pair, Choice)

@dataclass
class Rows:
    """Pairs or Choices as rows (passage, text), stored as references and assembled per batch. Each distinct text is
    tokenized once: a RACE article is shared by its questions and their four options, and a ReCoRD passage by up
    to dozens of candidate rows, so copying it into every row would multiply the memory by that much.
    A row is five segments of `tokens`: the template's prefix, the passage (cut to fit), the template's middle,
    the second text, the suffix (BERT: [CLS] p [SEP] t [SEP]; RoBERTa: <s> p </s></s> t </s>; GPT-2: p t)."""
    tokens: np.ndarray       # int32: the template's special tokens, then every distinct text's tokens
    starts: np.ndarray       # int64 (rows, 5): where each segment starts in tokens
    lengths: np.ndarray      # int64 (rows, 5): how many tokens of it the row takes
    types: np.ndarray        # int64 (5,): the token type of each segment
    offsets: np.ndarray      # int64 (examples + 1): example i owns rows offsets[i]:offsets[i + 1]
    labels: np.ndarray       # int64 per example: class id (Pair) or the right choice (Choice)
    gold: np.ndarray | None  # bool per row: a right choice (Choice only; ReCoRD may have several)
    pad_id: int
    cut: int = 0             # rows whose passage was cut to fit max_len
    cut_text: int = 0        # rows whose second text alone was too long, so that it was cut too
    full: np.ndarray = None  # int64 per row: its tokens before any cut (results by input length)

    def __len__(self):
        return len(self.labels)


def template(tokenizer):
    """The special tokens a tokenizer puts around a pair, found by post-processing two known texts:
    (prefix, middle, suffix) token lists and the token type of each of the five segments."""
    ea, eb = (tokenizer.encode(t, add_special_tokens=False) for t in ("hello", "world"))
    a, b = ea.ids, eb.ids
    full = tokenizer.post_process(ea, eb)
    ids, types = full.ids, full.type_ids
    i = next(i for i in range(len(ids)) if ids[i:i + len(a)] == a)
    j = next(j for j in range(i + len(a), len(ids)) if ids[j:j + len(b)] == b)
    bounds = [0, i, i + len(a), j, j + len(b), len(ids)]
    return ([ids[0:i], ids[i + len(a):j], ids[j + len(b):]],
            [types[s] if e > s else 0 for s, e in zip(bounds, bounds[1:])])


def _tokenize_texts(tokenizer, texts, chunk=8192):
    """Token ids of each text (no special tokens), concatenated, and the length of each."""
    ids, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int64)]
    for start in range(0, len(texts), chunk):
        try:
            encodings = tokenizer.encode_batch(texts[start:start + chunk], add_special_tokens=False)
        except Exception as e:                       # tokenizers raises plain Exception, e.g. for a None text
            raise DataError(f"Cannot tokenize texts {start}..{start + chunk - 1}: {e}") from None
        lengths.append(np.array([len(e.ids) for e in encodings], np.int64))
        ids.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int32))
    return np.concatenate(ids), np.concatenate(lengths)


def encode_rows(tok, examples, max_len):
    """Rows of Pairs (one each) or Choices (one per choice), each at most max_len tokens: the passage is cut from its
    end to make room, never the second text (unless that alone exceeds max_len; counted in Rows.cut_text)."""
    t = tok.tokenizer
    t.no_truncation()
    t.no_padding()
    (prefix, middle, suffix), types = template(t)
    specials = np.array(prefix + middle + suffix, np.int32)
    if max_len < len(specials) + 2:
        raise DataError(f"--max-len {max_len} leaves no room for text: this tokenizer adds {len(specials)} special "
                        f"tokens to a pair; use at least {len(specials) + 2}.")
    choice = bool(examples) and isinstance(examples[0], Choice)
    firsts = [e.context if choice else e.text_a for e in examples]
    seconds = [e.choices if choice else (e.text_b,) for e in examples]
    counts = np.array([len(s) for s in seconds], np.int64)
    texts = list(dict.fromkeys(chain(firsts, chain.from_iterable(seconds))))
    index = {text: i for i, text in enumerate(texts)}
    ids, lengths = _tokenize_texts(t, texts)
    text_start = len(specials) + np.r_[0, np.cumsum(lengths)[:-1]]
    a = np.repeat(np.array([index[x] for x in firsts], np.int64), counts)
    b = np.array([index[x] for x in chain.from_iterable(seconds)], np.int64)
    room = max_len - len(specials)
    b_len = np.minimum(lengths[b], room - 1)                 # at least one passage token stays
    a_len = np.minimum(lengths[a], room - b_len)
    n, const = len(a), lambda v: np.full(len(a), v, np.int64)
    starts = np.stack([const(0), text_start[a], const(len(prefix)), text_start[b], const(len(prefix) + len(middle))], 1)
    lens = np.stack([const(len(prefix)), a_len, const(len(middle)), b_len, const(len(suffix))], 1)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    gold = None
    if choice:
        gold = np.zeros(n, bool)
        gold[np.array([offsets[i] + g for i, e in enumerate(examples) for g in e.gold], np.int64)] = True
    types = np.array(types if tok.family in TYPED else [0] * 5, np.int64)   # RoBERTa: one type; GPT-2: none
    return Rows(np.concatenate([specials, ids]), starts, lens, types, offsets,
                np.array([e.label for e in examples], np.int64), gold, tok.pad_id,
                int(np.sum(a_len < lengths[a])), int(np.sum(b_len < lengths[b])),
                len(specials) + lengths[a] + lengths[b])


def _collate_rows(enc, examples):
    """The rows of the chosen examples, assembled from their segments and padded to the longest, all in numpy.
    Multiple choice adds `choices`, (questions, most choices): the row of each choice, -1 where a question has
    fewer; its labels are the same shape, True at the right choices."""
    counts = enc.offsets[examples + 1] - enc.offsets[examples]
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)   # choice number in its question
    rows = np.repeat(enc.offsets[examples], counts) + within
    starts, lengths = enc.starts[rows], enc.lengths[rows]
    ends = np.cumsum(lengths, 1)                                                   # (rows, 5) segment ends in a row
    cols = np.arange(ends[:, -1].max())
    seg = (cols[None, :, None] >= ends[:, None, :]).sum(-1)                        # segment of each cell; 5: padding
    mask, s = seg < 5, np.minimum(seg, 4)
    src = np.take_along_axis(starts, s, 1) + cols - np.take_along_axis(ends - lengths, s, 1)
    long = lambda a: torch.from_numpy(a.astype(np.int64))
    batch = {"input_ids": long(np.where(mask, enc.tokens[np.where(mask, src, 0)], enc.pad_id)),
             "attention_mask": None if mask.all() else long(mask),
             "token_type_ids": long(np.where(mask, enc.types[s], 0))}
    if enc.gold is None:
        return {**batch, "labels": long(enc.labels[examples])}
    question = np.repeat(np.arange(len(examples)), counts)
    choices = np.full((len(examples), counts.max()), -1, np.int64)
    choices[question, within] = np.arange(len(rows))
    gold = np.zeros(choices.shape, bool)
    gold[question, within] = enc.gold[rows]
    return {**batch, "choices": torch.from_numpy(choices), "labels": torch.from_numpy(gold)}


# ----------------------------------------------------------------------------- batching

def _collate(enc, rows):
    """Pad the chosen rows to the longest of them (right padding), gathering all tokens in one indexing step."""
    starts = enc.offsets[rows]
    lengths = enc.offsets[rows + 1] - starts
    cols = np.arange(lengths.max())
    mask = cols < lengths[:, None]
    where = np.where(mask, starts[:, None] + cols, 0)          # padded cells read token 0, then get overwritten
    ids = np.where(mask, enc.ids[where], enc.pad_id)
    types = np.where(mask, enc.type_ids[where], 0)
    long = lambda a: torch.from_numpy(a.astype(np.int64))
    return {"input_ids": long(ids), "attention_mask": None if mask.all() else long(mask),  # None: SDPA's fast path
            "token_type_ids": long(types), "labels": torch.from_numpy(enc.labels[rows])}


def collate(encoded, examples):
    """One padded batch of the chosen examples (an array of their numbers) of Encoded or Rows."""
    return (_collate_rows if isinstance(encoded, Rows) else _collate)(encoded, examples)


def batches(encoded, batch_size, shuffle=False, generator=None, drop_last=False):
    """Iterator of padded batches of Encoded or Rows (batch_size counts examples: a Choice brings all its rows). With
    shuffle, the order is drawn now from generator (a seeded torch.Generator), so the same seed and the same number
    of earlier draws give the same order, e.g. in a resumed run."""
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, not {batch_size}")
    n = len(encoded)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    return (collate(encoded, order[i:i + batch_size]) for i in range(0, stop, batch_size))
