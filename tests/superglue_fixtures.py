"""Write small SuperGLUE tasks and RACE in their official layouts, with the official field names, so that the readers
meet them as they meet the real downloads. Written independently of superglue.py and race.py on purpose.

    boolq(question, passage, label) ... wsc(...)       one official JSON object (idx added when written)
    write_superglue_task(root, "BoolQ", train, val)   -> root/BoolQ/{train,val,test}.jsonl
    superglue_zip("BoolQ", train, val)                -> bytes of BoolQ.zip as the official server has it
    race_article(article, [(question, [4 options], "B")])
    write_race(root, {("train", "middle"): [article, ...], ...})  -> root/RACE/train/middle/1.txt, ...
    race_tar(files)                                   -> bytes of RACE.tar.gz
"""
import io
import json
import os
import tarfile
import zipfile


def boolq(question, passage, label):
    return {"question": question, "passage": passage, "label": label}


def cb(premise, hypothesis, label):
    return {"premise": premise, "hypothesis": hypothesis, "label": label}


def copa(premise, choice1, choice2, question, label):
    return {"premise": premise, "choice1": choice1, "choice2": choice2, "question": question, "label": label}


def wic(word, sentence1, sentence2, label):
    s1, s2 = sentence1.find(word), sentence2.find(word)   # character offsets of the word, as the official files
    return {"word": word, "sentence1": sentence1, "sentence2": sentence2, "label": label, "start1": s1,
            "end1": s1 + len(word), "start2": s2, "end2": s2 + len(word), "version": 1.1}


def wsc(text, span1, span2, label):
    """span1, span2: (word index, text); the official indices count whitespace-separated words."""
    return {"text": text, "target": {"span1_index": span1[0], "span1_text": span1[1], "span2_index": span2[0],
                                     "span2_text": span2[1]}, "label": label}


def multirc(text, questions):
    """questions: [(question, [(answer, 0 or 1), ...])]. Question and answer idx count within the paragraph here,
    so that only the paragraph's idx tells two paragraphs' first questions apart."""
    return {"version": 1.1, "passage": {"text": text, "questions": [
        {"question": q, "idx": qi, "answers": [{"text": a, "idx": ai, "label": lab} for ai, (a, lab) in enumerate(ans)]}
        for qi, (q, ans) in enumerate(questions)]}}


def record(text, entities, queries):
    """entities: strings of the text, each marked at every occurrence; queries: [(query, [answer, ...])].
    Entity spans have inclusive ends, as the official files."""
    spans = []
    for e in entities:
        start = text.find(e)
        while start >= 0:
            spans.append({"start": start, "end": start + len(e) - 1})
            start = text.find(e, start + 1)
    qas = [{"query": q, "idx": i, "answers": [{"start": text.find(a), "end": text.find(a) + len(a) - 1, "text": a}
                                              for a in answers]} for i, (q, answers) in enumerate(queries)]
    return {"source": "Daily mail", "passage": {"text": text, "entities": spans}, "qas": qas}


def _jsonl(objs, test=False):
    lines = []
    for i, obj in enumerate(objs):
        obj = {**obj, "idx": obj.get("idx", i)}
        if test:                                           # the test files carry no labels
            obj.pop("label", None)
        lines.append(json.dumps(obj))
    return "".join(line + "\n" for line in lines)


def task_files(train, val):
    return {"train.jsonl": _jsonl(train), "val.jsonl": _jsonl(val), "test.jsonl": _jsonl(val[:1], test=True)}


def write_superglue_task(root, folder, train, val):
    path = os.path.join(root, folder)
    os.makedirs(path, exist_ok=True)
    for name, text in task_files(train, val).items():
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            f.write(text)
    return path


def superglue_zip(folder, train, val):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in task_files(train, val).items():
            z.writestr(f"{folder}/{name}", text)
    return buf.getvalue()


def race_article(article, questions):
    """questions: [(question, [option A, B, C, D], answer letter)]; the id is added when written."""
    return {"answers": [a for _, _, a in questions], "options": [list(o) for _, o, _ in questions],
            "questions": [q for q, _, _ in questions], "article": article}


def race_files(articles):
    """{(split, level): [article, ...]} -> {path under the archive root: text}; files are numbered from 1 per folder,
    and the id field is as in the official files ("middle1.txt")."""
    files = {}
    for (split, level), objs in articles.items():
        for n, obj in enumerate(objs, 1):
            files[f"RACE/{split}/{level}/{n}.txt"] = json.dumps({**obj, "id": f"{level}{n}.txt"})
    return files


def write_race(root, articles):
    for rel, text in race_files(articles).items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w", encoding="utf-8") as f:
            f.write(text)
    return os.path.join(root, "RACE")


def race_tar(articles):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for rel, text in race_files(articles).items():
            body = text.encode()
            info = tarfile.TarInfo(rel)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    return buf.getvalue()
