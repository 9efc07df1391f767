"""
One synthetic sentiment task, in the official GLUE layout, for measurements, demos and the tests: sentences of
filler words with sentiment words among them; the label is their polarity (SST-2), or for graded rows a similarity-
like score that grows with their number, signed by their polarity (STS-B, 0 to 5). A model learns it only by
reading the words, so it tells a training loop that works from one that does not.
"""
from pathlib import Path

POS = "good great excellent wonderful lovely superb fine delightful".split()
NEG = "bad awful terrible horrible poor dreadful boring lousy".split()
FILL = "the movie was a and it film story plot acting really quite very".split()


def filler(rng, n, word=None):
    """n filler words, with `word` put somewhere among them."""
    words = [rng.choice(FILL) for _ in range(n)]
    if word:
        words.insert(rng.randrange(n + 1), word)
    return " ".join(words)


def sentiment_rows(n, rng, graded=False):
    """n rows (text, None, label), or for graded rows (text, the words reversed, score): rng is a random.Random."""
    rows = []
    for _ in range(n):
        y, k = rng.randrange(2), rng.randint(0, 3) if graded else 1
        words = [rng.choice(FILL) for _ in range(rng.randint(3, 8))]
        for _ in range(k):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS if y else NEG))
        text = " ".join(words)
        rows.append((text, " ".join(reversed(words)), 2.5 + (k if y else -k) * 2.5 / 3) if graded else (text, None, y))
    return rows


def write_sst2(folder, n_train, n_dev, rng):
    """folder/SST-2/train.tsv and dev.tsv, as GLUE's SST-2 files are laid out, holding sentiment rows."""
    (Path(folder) / "SST-2").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = [f"{text}\t{y}" for text, _, y in sentiment_rows(n, rng)]
        (Path(folder) / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
