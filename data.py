"""
Examples to token ids to padded batches: what every task shares between its reader (tasks/) and the model. Files
and downloads are files/'s job (files/downloads.py, files/tokenizer.py for the checkpoint's tokenizer).

    Example(text_a, text_b, label)      GLUE: a text or a text pair; label a class id or a float score
    Pair(text_a, text_b, label, group), Choice(context, choices, gold, ...)   the reading tasks' passage-first shapes
    Tok                                 a tokenizers.Tokenizer with its family and padding id (files.tokenizer makes it)
    tokenize(tokenizer, texts)          every text's ids (and character spans), flat, in chunks: the one loop
    Tok.encode(examples, max_len) -> Encoded        GLUE's texts, truncated as a pair
    encode_rows(tok, pairs_or_choices, max_len) -> Rows   the passage is cut to fit, never the question or option
    batches(encoded, batch_size) -> dicts of input_ids, attention_mask (None when nothing in the batch is padded),
        token_type_ids, labels; for Choices also choices (questions, most choices)
    collate(encoded, examples) -> one such dict, of the chosen examples (an array of their numbers)
"""
from dataclasses import dataclass
from itertools import chain
from typing import NamedTuple

import numpy as np
import torch

TYPED = ("bert", "deberta-v2")  # the families whose pairs have token types 0 then 1


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


def tokenize(tokenizer, texts, specials=False, spans=False, chunk=8192):
    """(ids int32, type ids int8, lengths int64, character spans (tokens, 2) or None) of texts (strings or pairs),
    flat. Chunks turned into arrays at once bound the memory of tokenizers' Encoding objects and Python int lists.
    specials: the tokenizer's post-processing (and truncation, if enabled) applies; spans: each token's characters."""
    ids, types, lengths, where = [np.zeros(0, np.int32)], [np.zeros(0, np.int8)], [np.zeros(0, np.int64)], []
    for start in range(0, len(texts), chunk):
        try:
            encodings = tokenizer.encode_batch(texts[start:start + chunk], add_special_tokens=specials)
        except Exception as e:                       # tokenizers raises plain Exception, e.g. for a None text
            raise DataError(f"Cannot tokenize examples {start}..{start + len(texts[start:start + chunk]) - 1}: "
                            f"{e}") from None
        lengths.append(np.array([len(e.ids) for e in encodings], np.int64))
        ids.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int32))
        types.append(np.fromiter(chain.from_iterable(e.type_ids for e in encodings), np.int8))
        if spans:
            where.append(np.array([o for e in encodings for o in e.offsets], np.int64).reshape(-1, 2))
    spans = (np.concatenate(where) if where else np.zeros((0, 2), np.int64)) if spans else None
    return np.concatenate(ids), np.concatenate(types), np.concatenate(lengths), spans


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
        texts = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples]
        ids, flat_types, lengths = tokenize(self.tokenizer, texts, specials=True, chunk=chunk)[:3]
        offsets = np.r_[0, np.cumsum(lengths)]
        full = np.diff(offsets) if count_cut else None
        cut = np.flatnonzero(full >= max_len) if count_cut else []  # only a row at max_len can have been cut
        if len(cut):
            self.tokenizer.no_truncation()
            full[cut] = tokenize(self.tokenizer, [texts[i] for i in cut], specials=True)[2]
        if self.family not in TYPED:      # RoBERTa has a single token type and GPT-2 none: all zeros
            flat_types[:] = 0
        is_float = bool(examples) and isinstance(examples[0].label, float)
        labels = np.array([e.label for e in examples], dtype=np.float32 if is_float else np.int64)
        return Encoded(ids, flat_types, offsets.astype(np.int64), labels, self.pad_id, full)


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


def segments(template, a_start, a_len, b_start, b_len):
    """(starts, lengths), each (rows, 5), of rows made of five segments: the template's prefix, a first text, its
    middle, a second text, its suffix. The template's tokens open Rows.tokens: prefix, middle, suffix in a row."""
    prefix, middle, suffix = template
    const = lambda v: np.full(len(a_start), v, np.int64)  # noqa: E731
    starts = np.stack([const(0), a_start, const(len(prefix)), b_start, const(len(prefix) + len(middle))], 1)
    lens = np.stack([const(len(prefix)), a_len, const(len(middle)), b_len, const(len(suffix))], 1)
    return starts, lens


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
    ids, _, lengths = tokenize(t, texts)[:3]
    text_start = len(specials) + np.r_[0, np.cumsum(lengths)[:-1]]
    a = np.repeat(np.array([index[x] for x in firsts], np.int64), counts)
    b = np.array([index[x] for x in chain.from_iterable(seconds)], np.int64)
    room = max_len - len(specials)
    b_len = np.minimum(lengths[b], room - 1)                 # at least one passage token stays
    a_len = np.minimum(lengths[a], room - b_len)
    n = len(a)
    starts, lens = segments((prefix, middle, suffix), text_start[a], a_len, text_start[b], b_len)
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


def padded(longest, pad_to=None):
    """The length a batch is padded to: its longest row; with pad_to (a compiled model, train.py --compile) the next
    power of two from 16, at most pad_to, so that the model sees a handful of shapes instead of one per length."""
    if not pad_to:
        return int(longest)
    return int(min(max(16, 1 << (int(longest) - 1).bit_length()), max(pad_to, longest)))


def _collate_rows(enc, examples, pad_to=None):
    """The rows of the chosen examples, assembled from their segments and padded to the longest, all in numpy.
    Multiple choice adds `choices`, (questions, most choices): the row of each choice, -1 where a question has
    fewer; its labels are the same shape, True at the right choices."""
    counts = enc.offsets[examples + 1] - enc.offsets[examples]
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)   # choice number in its question
    rows = np.repeat(enc.offsets[examples], counts) + within
    starts, lengths = enc.starts[rows], enc.lengths[rows]
    ends = np.cumsum(lengths, 1)                                                   # (rows, 5) segment ends in a row
    cols = np.arange(padded(ends[:, -1].max(), pad_to))
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

def _collate(enc, rows, pad_to=None):
    """Pad the chosen rows to the longest of them (right padding), gathering all tokens in one indexing step."""
    starts = enc.offsets[rows]
    lengths = enc.offsets[rows + 1] - starts
    cols = np.arange(padded(lengths.max(), pad_to))
    mask = cols < lengths[:, None]
    where = np.where(mask, starts[:, None] + cols, 0)          # padded cells read token 0, then get overwritten
    ids = np.where(mask, enc.ids[where], enc.pad_id)
    types = np.where(mask, enc.type_ids[where], 0)
    long = lambda a: torch.from_numpy(a.astype(np.int64))
    return {"input_ids": long(ids), "attention_mask": None if mask.all() else long(mask),  # None: SDPA's fast path
            "token_type_ids": long(types), "labels": torch.from_numpy(enc.labels[rows])}


def collate(encoded, examples, pad_to=None):
    """One padded batch of the chosen examples (an array of their numbers) of Encoded or Rows (pad_to: padded())."""
    return (_collate_rows if isinstance(encoded, Rows) else _collate)(encoded, examples, pad_to)


def batches(encoded, batch_size, shuffle=False, generator=None, drop_last=False):
    """Iterator of padded batches of Encoded or Rows (batch_size counts examples: a Choice brings all its rows). With
    shuffle, the order is drawn now from generator (a seeded torch.Generator), so the same seed and the same number
    of earlier draws give the same order."""
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, not {batch_size}")
    n = len(encoded)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    return (collate(encoded, order[i:i + batch_size]) for i in range(0, stop, batch_size))
