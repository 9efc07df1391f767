"""
Synthetic tasks in official layouts, for measurements, demos and the tests. A model learns them only by reading the
words, so they tell a training loop that works from one that does not.

- sentiment (GLUE's SST-2 / STS-B layout): sentences of filler words with sentiment words among them; the label is
  their polarity, or for graded rows a similarity-like score that grows with their number, signed by it.
- made-up people (SQuAD v1.1's layout): paragraphs of invented facts, "Korin Venn, a weaver from Caldrun, built a
  green boat in 1874.", one to sixty of them, so that inputs run from 30 to about 1,100 tokens; each question asks
  for one fact of one person, whose sentence may be anywhere in the paragraph.

    python -m reproduce.synthetic squad out/data     # out/data/SQuAD/train-v1.1.json (600) and dev (200)
"""
import json
import sys
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


def sentiment_rows(n, rng, graded=False, late=False):
    """n rows (text, None, label), or for graded rows (text, the words reversed, score): rng is a random.Random.
    late: the sentiment word is one of the last two words, where a causal model read at its last token sees it
    most directly (a tiny random decoder or Mamba then learns with a wide margin)."""
    rows = []
    for _ in range(n):
        y, k = rng.randrange(2), rng.randint(0, 3) if graded else 1
        words = [rng.choice(FILL) for _ in range(rng.randint(3, 8))]
        for _ in range(k):
            at = len(words) - rng.randrange(2) if late else rng.randrange(len(words) + 1)
            words.insert(at, rng.choice(POS if y else NEG))
        text = " ".join(words)
        rows.append((text, " ".join(reversed(words)), 2.5 + (k if y else -k) * 2.5 / 3) if graded else (text, None, y))
    return rows


def write_sst2(folder, n_train, n_dev, rng):
    """folder/SST-2/train.tsv and dev.tsv, as GLUE's SST-2 files are laid out, holding sentiment rows."""
    (Path(folder) / "SST-2").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = [f"{text}\t{y}" for text, _, y in sentiment_rows(n, rng)]
        (Path(folder) / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")


FIRST = [a + b for a in "Bra Cor Del Fen Gal Hal Isk Jor Kel Lom Mar Nev Orr Pel Quin Ros Sil Tam Ulf Vor".split()
         for b in "a in ek is o wen".split()]                  # 120 made-up first names, all different
LAST = "Venn Halloway Corrin Mistle Dunmore Quill Ashby Tarn Pell Rooke Fenwick Lorne Skerry Vail Brack".split()
TOWN = "Caldrun Ostermere Fallow Brindle Harrowgate Quillon Saltmarsh Vesper Thornby Eastwick Marrow Dunhollow".split()
TRADE = "weaver potter smith baker miller tanner mason carpenter fisher glassblower clockmaker cooper".split()
THING = "boat bridge tower mill barn organ loom kiln cart bell".split()
COLOUR = "green red blue grey white black yellow amber".split()
ASK = {"town": "Where was {name} from?", "trade": "What was the trade of {name}?",
       "thing": "What did {name} build?", "year": "In which year did {name} build it?"}


def people_paragraph(rng, n_facts):
    """(paragraph, {name: {"town": (text, start), ...}}): n_facts sentences, one per person, first names all
    different (a question's person is told apart by a word, as in most SQuAD questions)."""
    names = [f"{a} {rng.choice(LAST)}" for a in rng.sample(FIRST, n_facts)]
    text, facts = "", {}
    for name in names:
        town, trade = rng.choice(TOWN), rng.choice(TRADE)
        thing, year = f"a {rng.choice(COLOUR)} {rng.choice(THING)}", str(rng.randint(1700, 1999))
        a = "an" if trade[0] in "aeiou" else "a"
        parts = [f"{name}, {a} ", trade, " from ", town, ", built ", thing, " in ", year, ". "]
        where, at = {}, len(text)
        for key, i in (("trade", 1), ("town", 3), ("thing", 5), ("year", 7)):
            where[key] = (parts[i], at + sum(len(p) for p in parts[:i]))
        text += "".join(parts)
        facts[name] = where
    return text.strip(), facts


def people_questions(n, rng, most_facts=60):
    """n questions of SQuAD v1.1's JSON (one paragraph each), the paragraph's length drawn evenly in 1..most_facts."""
    paragraphs = []
    for i in range(n):
        context, facts = people_paragraph(rng, rng.randint(1, most_facts))
        name, key = rng.choice(sorted(facts)), rng.choice(sorted(ASK))
        answer, start = facts[name][key]
        assert context[start:start + len(answer)] == answer
        paragraphs.append({"context": context, "qas": [{"id": f"p{i}", "question": ASK[key].format(name=name),
                                                        "answers": [{"text": answer, "answer_start": start}]}]})
    return {"version": "1.1", "data": [{"title": "made-up people", "paragraphs": paragraphs}]}


def write_squad(folder, n_train, n_dev, rng):
    """folder/SQuAD/train-v1.1.json and dev-v1.1.json, as the official files are laid out, of made-up people."""
    (Path(folder) / "SQuAD").mkdir(parents=True, exist_ok=True)
    for name, n in (("train-v1.1.json", n_train), ("dev-v1.1.json", n_dev)):
        (Path(folder) / "SQuAD" / name).write_text(json.dumps(people_questions(n, rng)))


if __name__ == "__main__":
    import random
    if len(sys.argv) != 3 or sys.argv[1] not in ("sst2", "squad"):
        sys.exit("usage: python -m reproduce.synthetic sst2|squad FOLDER")
    if sys.argv[1] == "sst2":
        write_sst2(sys.argv[2], 4000, 500, random.Random(0))
        print(f"wrote {sys.argv[2]}/SST-2/train.tsv (4,000 made-up sentences) and dev.tsv (500)")
    else:
        write_squad(sys.argv[2], 600, 200, random.Random(0))
        print(f"wrote {sys.argv[2]}/SQuAD/train-v1.1.json (600 questions) and dev-v1.1.json (200)")
