"""
Run trained adapters on new inputs: the adapter file names its task, base checkpoint, tokenizer and length.

    python predict.py out/sst2-ssmlora-r8/adapters.safetensors "a gripping, funny film" "dull and far too long"
    python predict.py out/mrpc-ssmlora-r8/adapters.safetensors --file pairs.tsv   # a tab between a pair's texts
    python predict.py out/race-ssmlora-r8/adapters.safetensors --file questions.jsonl
    python predict.py out/squad-ssmlora-r8/adapters.safetensors --file qa.jsonl        # {"question", "context"}
    cat pairs.tsv | python predict.py out/rte-lora-r8/adapters.safetensors --file -

What an input is, by kind of task:
- single texts (SST-2, CoLA): one text per argument or per line of --file;
- text pairs (MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI, and SuperGLUE's BoolQ passage<TAB>question, CB
  premise<TAB>hypothesis, WiC "word: sentence1"<TAB>"word: sentence2", WSC and MultiRC as superglue.py casts
  them): the two texts with a tab between them;
- multiple choice (COPA, RACE, ReCoRD): one JSON object per line of --file: {"context": ..., "question": ...,
  "options": [...]}; RACE puts each option in the question's blank ("_") or after it, COPA's question is "cause"
  or "effect", ReCoRD's is its query with @placeholder and its options the candidate entities;
- extractive QA (SQuAD, NarrativeQA): {"question": ..., "context": ...} per line, or the question and the context
  with a tab between them; a context longer than the trained --max-len is read in overlapping windows.
Each output line is one JSON object: the input's number ("n", from 1) and text, then the label (as the task's
files write it) and its probability, a "score" for regression, the chosen option's index and text, or the answer
span's text and its score (its start plus its end logit). In Python:

    from predict import answer, choose, load, predict
    p = load("out/sst2-ssmlora-r8/adapters.safetensors")
    predict(p, ["a gripping, funny film"])            # [{'n': 1, 'text': ..., 'label': '1', 'probability': ...}]
    predict(p, ["first sentence"], ["second one"])    # pair tasks: texts_b
    choose(p, [{"context": ..., "question": ..., "options": [...]}])   # multiple choice
    answer(p, ["Where is the key?"], ["Anna hid the key under the bridge."])  # QA: [{'answer': ..., 'score': ...}]
"""
import json
import sys
from typing import NamedTuple

import torch

from tasks import encode, get_task, race, squad
from tasks.task import kind
from data import Choice, DataError, Example, Pair, batches
from files.tokenizer import load_tokenizer
from files.adapters import check_base_is_there, read_run
from files.hub import resolve
from interop.peft import is_peft_folder, read_peft_run
from model import Model
from training.build import build_model, to_device
from training.cli import OneLineParser, UserError, pick_device
from training.evaluate import autocast, default_dtype
from training.flags import trained_task


class Predictor(NamedTuple):
    model: Model
    tok: object
    task: object
    device: torch.device
    max_len: int
    stride: int = 128    # QA: the tokens two windows of a long context share, as trained
    dtype: str = "fp32"  # autocast, as train.py evaluates: bf16 on CUDA


def load(adapters, model=None, tokenizer=None, device="auto", task=None):
    """The base model with the trained adapters and head, its tokenizer and the task, from an adapter file that
    train.py wrote (or a PEFT LoRA folder). model / tokenizer / task: instead of what the file names."""
    run = read_peft_run(adapters) if is_peft_folder(adapters) else read_run(adapters)
    run["task"] = trained_task(run, task, adapters)  # another task's head would answer silently
    if not run.get("task"):
        raise UserError(f"{adapters} does not say which task it was trained on: pass --task")
    if not (model or run.get("model")):
        raise UserError(f"{adapters} does not name its base model: pass --model")
    task, name = get_task(run["task"]), model or run["model"]
    if not model:
        check_base_is_there(run, adapters)
    # train.py's own builder: the base (a checkpoint, or for --random-init runs a preset or config.json), then the
    # adapters and head rebuilt from the file
    m = build_model(task, name, run.get("random_init", False), adapter_file=adapters).eval()
    source = tokenizer or run.get("tokenizer") or (name if run.get("random_init") else m.source)
    device = pick_device(device)
    max_len = min(run.get("max_len") or 512, m.cfg.max_tokens)  # the length the adapters were trained with
    return Predictor(m.to(device), load_tokenizer(resolve(source), family=m.cfg.family), task, device, max_len,
                     run.get("doc_stride") or 128, default_dtype(device))


@torch.no_grad()
def predict(p, texts_a, texts_b=None, batch_size=32):
    """One dict per example: its number and text(s), the label (as the task's files write it) and its probability,
    or a regression score. Pair tasks need texts_b, single-text tasks refuse it."""
    if p.task.shape in ("choice", "span"):
        what = "contexts, questions and options (choose())" if p.task.shape == "choice" else \
            "questions and contexts (answer())"
        raise UserError(f"{p.task.name} is a {'multiple-choice' if p.task.shape == 'choice' else 'QA'} task: give "
                        f"{what}")
    pair = p.task.shape == "pair" or p.task.text_b is not None
    if pair != (texts_b is not None):
        raise UserError(f"{p.task.name} classifies {'pairs of texts' if pair else 'single texts'}: give "
                        f"{'two texts with a tab between them' if pair else 'one text'} per example")
    if texts_b is not None and len(texts_b) != len(texts_a):
        raise UserError(f"{len(texts_a)} first texts but {len(texts_b)} second ones")
    texts = list(zip(texts_a, texts_b)) if pair else [(a,) for a in texts_a]
    check_texts(texts)
    label = 0.0 if p.task.is_regression else 0  # a placeholder: batches() carries labels, predict() ignores them
    examples = [(Pair if p.task.is_reading else Example)(t[0], t[1] if pair else None, label) for t in texts]
    out = []
    for batch in batches(encode(p.tok, p.task, examples, p.max_len, "predict", {}), batch_size):
        batch = to_device(batch, p.model.cfg, p.device)
        with autocast(p.device, p.dtype):
            logits, _ = p.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        if p.task.is_regression:
            out += [{"score": s} for s in logits.float().squeeze(-1).tolist()]
        else:
            probs, ids = logits.float().softmax(-1).max(-1)
            out += [{"label": spelled(p.task.labels[i]), "probability": q}
                    for i, q in zip(ids.tolist(), probs.tolist())]
    return [{"n": i + 1, "text": t[0], **({"text_b": t[1]} if pair else {}), **o} for i, (t, o) in
            enumerate(zip(texts, out))]


def spelled(label):
    """A label as a string, spelled as the task's files write it: SST-2's "1", MNLI's "entailment", BoolQ's "true"
    (a JSON true in its files), MultiRC's "1"."""
    return label if isinstance(label, str) else json.dumps(label)


@torch.no_grad()
def choose(p, questions, batch_size=8):
    """Multiple choice: for each {"context", "question", "options"}, the chosen option's index and text and its
    probability, the options cast as train.py casts them (RACE: fill the blank; COPA: "What was the cause? ...")."""
    if p.task.shape != "choice":
        raise UserError(f"{p.task.name} is not a multiple-choice task: give texts")
    examples = []
    for i, q in enumerate(questions, 1):
        check_fields(q, CHOICE, f"example {i}")
        try:
            options = tuple(cast(p.task.name, q["question"], o) for o in q["options"])
        except UserError as e:
            raise UserError(f"example {i}: {e}") from None
        examples.append(Choice(q["context"], options, (0,)))  # a placeholder gold: choose() ignores it
    out = []
    for batch in batches(encode(p.tok, p.task, examples, p.max_len, "predict", {}), batch_size):
        batch = to_device(batch, p.model.cfg, p.device)
        with autocast(p.device, p.dtype):
            logits, _ = p.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                choices=batch["choices"])
        probs, ids = logits.float().softmax(-1).max(-1)
        out += list(zip(ids.tolist(), probs.tolist()))
    return [{"n": i + 1, "question": q.get("question"), "choice": c, "option": q["options"][c], "probability": pr}
            for i, (q, (c, pr)) in enumerate(zip(questions, out))]


@torch.no_grad()
def answer(p, questions, contexts, batch_size=32):
    """Extractive QA: for each question, the span of its context that answers it, and its score (start + end
    logit), decoded over all the context's windows as train.py evaluates."""
    if p.task.shape != "span":
        raise UserError(f"{p.task.name} is not a question-answering task: give texts")
    if len(questions) != len(contexts):
        raise UserError(f"{len(questions)} questions but {len(contexts)} contexts")
    check_texts(list(zip(questions, contexts)))
    qs = [squad.Question(str(i), q, c, ()) for i, (q, c) in enumerate(zip(questions, contexts))]
    win = encode(p.tok, p.task, qs, p.max_len, "predict", {}, p.stride)
    with autocast(p.device, p.dtype):
        logits = squad.span_logits(p.model, win, batch_size, p.device)
    texts, scores = squad.decode(win, qs, *logits)
    return [{"n": i + 1, "question": q, "answer": t, "score": float(s)}
            for i, (q, t, s) in enumerate(zip(questions, texts, scores))]


def cast(task, question, option):
    if task == "race":
        return race.fill(question, option)
    if task == "record":  # the options are the passage's candidate entities
        if "@placeholder" not in question:
            raise UserError("a ReCoRD question (its query) marks the answer's place with @placeholder")
        return question.replace("@placeholder", option)
    if task == "copa":
        if question not in ("cause", "effect"):
            raise UserError(f"COPA's question is \"cause\" or \"effect\", got {question!r}")
        return f"{'What was the cause?' if question == 'cause' else 'What happened as a result?'} {option}"
    return f"{question} {option}".strip()


CHOICE, QA = ("context", "question", "options"), ("question", "context")  # the fields of a JSON input


def check_fields(q, fields, where):
    """A JSON input: an object whose fields are strings with words in them (options: a list of two or more). The
    first that is not is named: a number or a list would otherwise be read as its repr."""
    if not isinstance(q, dict):
        raise UserError(f"{where}: expected a JSON object with the fields {', '.join(fields)}, got {kind(q)}")
    for f in fields:
        if f not in q:
            raise UserError(f"{where}: the field {f!r} is missing")
        values, verb = (q[f], "holds") if f == "options" else ([q[f]], "is")
        if f == "options" and (not isinstance(values, list) or len(values) < 2):
            got = f"a list of {len(values)}" if isinstance(values, list) else kind(values)
            raise UserError(f"{where}: 'options' is {got}, not a list of two or more strings")
        for v in values:
            if not isinstance(v, str) or not v.strip():
                raise UserError(f"{where}: {f!r} {verb} {kind(v) if not isinstance(v, str) else 'an empty string'}, "
                                "where a string with words is expected")


def check_texts(rows, first=1):
    for i, row in enumerate(rows, first):
        if any(not isinstance(t, str) or not t.strip() for t in row):
            raise UserError(f"example {i}: an empty text (or not a text); every text must have words in it")


def read_lines(path):
    """[(line number, text)] of a UTF-8 file, or of standard input for "-": every line is an example, so a blank one
    is an empty text (refused, as the README says) rather than skipped."""
    raw = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
    lines = []
    for lineno, line in enumerate(raw.removesuffix(b"\n").split(b"\n") if raw else [], 1):
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise DataError(f"{path}, line {lineno}: not UTF-8 text") from None
        if not text.strip():
            raise DataError(f"{path}, line {lineno}: an empty text (a blank line); every line is one example")
        lines.append((lineno, text))
    if not lines:
        raise DataError(f"{path}: no examples")
    return lines


def main(argv=None):
    ap = OneLineParser(prog="predict.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("adapters", help="an adapters.safetensors written by train.py, or a PEFT LoRA folder")
    ap.add_argument("texts", nargs="*", help="texts to classify; a tab between a pair's two texts (QA: between the "
                    "question and its context)")
    ap.add_argument("--file", help="one example per line (- : standard input): texts, a tab between a pair's two; "
                    "multiple choice: a JSON object {context, question, options}; QA: {question, context}")
    ap.add_argument("--model", help="base checkpoint folder (default: the one the file names)")
    ap.add_argument("--tokenizer", help="tokenizer folder (default: the one the file names)")
    ap.add_argument("--task", help="the task (default: the one the file names; a PEFT folder may not)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_intermixed_args(argv)  # texts before and after the flags
    if bool(args.texts) == bool(args.file):
        ap.error("give either texts or --file")
    try:
        lines = list(enumerate(args.texts, 1)) if args.texts else read_lines(args.file)
        p = load(args.adapters, args.model, args.tokenizer, args.device, args.task)
        if p.task.shape == "choice":
            results = choose(p, [json_line(args.file or "argument", n, t, CHOICE) for n, t in lines])
        elif p.task.shape == "span":
            pairs = [qa_line(args.file or "argument", n, t) for n, t in lines]
            results = answer(p, [q for q, _ in pairs], [c for _, c in pairs])
        else:
            rows = [t.split("\t", 1) for _, t in lines]
            if len({len(r) for r in rows}) > 1:
                raise UserError(f"{args.file or 'the texts'}: some examples have a tab (a pair) and some do not")
            results = predict(p, [r[0] for r in rows], [r[1] for r in rows] if len(rows[0]) == 2 else None)
        for (n, _), result in zip(lines, results):
            print(json.dumps({**result, "n": n}))
    except (ValueError, OSError) as e:  # every error class here is a ValueError
        sys.exit(f"error: {e}")


def json_line(path, lineno, text, fields):
    try:
        q = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {lineno}: not a JSON object ({e.msg})") from None
    check_fields(q, fields, f"{path}, line {lineno}")
    return q


def qa_line(path, lineno, text):
    """(question, context) from {"question", "context"} or the two with a tab between them."""
    if text.lstrip().startswith("{"):
        q = json_line(path, lineno, text, QA)
        return q["question"], q["context"]
    if "\t" not in text:
        raise DataError(f"{path}, line {lineno}: give a question and its context with a tab between them, or a JSON "
                        "object {\"question\": ..., \"context\": ...}")
    return tuple(text.split("\t", 1))


if __name__ == "__main__":
    main()
