"""
The benchmarks of the paper's tables, read from their official files. This file is the one registry of task names
(get_task), their recipes, and the one place that tells their shapes of data apart (load_data, encode). Imported by
train.py, predict.py and training/.

    task.py       the one Task type every table below is made of
    glue.py       GLUE (Tables 1, 6, 7): TSV files, MRPC assembled as GLUE's own script does
    superglue.py  SuperGLUE (Table 8): JSONL files, each task cast as a passage-first pair or a multiple choice
    race.py       RACE (Table 4): multiple choice, accuracy for All, Middle and High
    squad.py      SQuAD v1.1 (Table 3): extractive QA, windows over long contexts, span decoding, F1 and EM
    narrativeqa.py  NarrativeQA, summary setting (Tables 3, 5): a summary span, ROUGE-L
    lengths.py    every task's metric by bins of input length (Table 5, Figure 2)
    metrics.py    the official metrics, in numpy

Each reader finds its files in --data-dir or downloads them once into a cache (files/downloads.py).
"""
from tasks import glue, narrativeqa, race, squad, superglue
from tasks.metrics import compute_metrics
from tasks.task import Task
from data import Choice, DataError, encode_rows

# Learning rate and epochs per task for RoBERTa-base with LoRA, batch 16, warm-up ratio 0.06, max length 512:
# Hu et al. 2022 (LoRA), Table 9. We use it for SSMLoRA, LoRA and BitFit alike, as the SSMLoRA paper keeps one
# set of hyper-parameters for all LoRA-derived methods (its appendix A). Full fine-tuning uses RoBERTa's own GLUE
# recipe instead (Liu et al. 2019: lr 2e-5, batch 16, 10 epochs, warm-up 6%).
RECIPE = {"mnli": (5e-4, 30), "sst2": (5e-4, 60), "mrpc": (4e-4, 30), "cola": (4e-4, 80), "qnli": (4e-4, 25),
          "qqp": (5e-4, 25), "rte": (5e-4, 80), "stsb": (4e-4, 40), "wnli": (4e-4, 30),
          # SuperGLUE and RACE: neither paper gives a recipe. lr 5e-4 is the top of the SSMLoRA paper's range and
          # LoRA's value for most GLUE tasks; the epochs follow LoRA's table by training-set size: 80 like RTE for
          # the few-hundred-example sets, 30-40 like MRPC and STS-B for a few thousand, 25 like QNLI for MultiRC's
          # 27k answers, 10 for ReCoRD and RACE, whose epochs are 1.4M and 350k rows of up to 512 tokens.
          "boolq": (5e-4, 30), "cb": (5e-4, 80), "copa": (5e-4, 80), "multirc": (5e-4, 25), "record": (5e-4, 10),
          "wic": (5e-4, 40), "wsc": (5e-4, 80), "race": (5e-4, 10),
          # SQuAD and NarrativeQA: the paper gives none either. lr 5e-4 as above, and the few epochs usual for
          # extractive QA (2 in BERT's and Hugging Face's run_squad / run_qa for full fine-tuning; LoRA, which
          # learns more slowly, is given 5), max length 384 and stride 128 as run_qa's defaults
          "squad": (5e-4, 5), "narrativeqa": (5e-4, 5)}
FULL_RECIPE = (2e-5, 10)
TASK_NAMES = (f"GLUE: {' '.join(glue.TASKS)}; SuperGLUE: {' '.join(superglue.TASKS)} (RTE: GLUE's rte); race; "
              "squad; narrativeqa")
TASKS = {**glue.TASKS, **superglue.TASKS, **{t.name: t for t in (race.TASK, squad.TASK, narrativeqa.TASK)}}


def get_task(name):
    """A task by name: GLUE, SuperGLUE, RACE, SQuAD or NarrativeQA (GLUE's official spellings, SST-2 or STS-B,
    work too)."""
    if isinstance(name, Task):
        return name
    key = str(name).lower()
    key = key if key in TASKS else key.replace("-", "").replace("_", "")
    if key not in TASKS:
        raise DataError(f"Unknown task {name!r}. Valid names: {TASK_NAMES}")
    return TASKS[key]


def load_data(task, args):
    """{split: examples} for train and the task's dev split(s), from --data-dir or the download cache."""
    if task.benchmark == "race":
        return race.load_race(args.data_dir, args.cache_dir)
    if task.shape == "span":
        return {"squad": squad.load_squad, "narrativeqa": narrativeqa.load_narrativeqa}[task.name](args.data_dir,
                                                                                                  args.cache_dir)
    load = {"glue": glue.load_glue, "superglue": superglue.load_superglue}[task.benchmark]
    return load(task, args.data_dir, args.cache_dir)


def encode(tok, task, examples, max_len, split, report, stride=128):
    """GLUE as before; the reading tasks as rows whose passage is cut to fit, never the question or option; QA as
    windows over the context, `stride` tokens shared by consecutive ones (squad.windows: training takes its rows,
    evaluation the windows with what decoding needs). What was cut goes into report[split] (and results.json)."""
    if not task.is_reading:  # rows are also counted uncut: what --max-len cuts, and results by input length
        enc = tok.encode(examples, max_len, count_cut=True)
        report[split] = {"rows": len(enc.full), "text_cut": int((enc.full > max_len).sum())}
        if report[split]["text_cut"]:
            print(f"data: {split}: {report[split]['text_cut']:,} of {len(enc.full):,} texts are longer than --max-len "
                  f"{max_len} tokens; their first {max_len} tokens are kept")
        return enc
    if task.shape == "span":
        win = squad.windows(tok, examples, max_len, stride)
        report[split] = {"questions": len(examples), "windows": len(win), "several_windows": win.rows.cut,
                         "question_cut": win.rows.cut_text}
        if win.rows.cut:
            print(f"data: {split}: {win.rows.cut:,} of {len(examples):,} contexts are longer than one window of "
                  f"--max-len {max_len}: {len(win):,} windows, {stride} tokens shared by consecutive ones")
        return win.rows if split == "train" else win
    if split == "train":  # a ReCoRD query whose answer is none of the passage's entities cannot be learned
        kept = [e for e in examples if not isinstance(e, Choice) or e.gold]
        if len(kept) < len(examples):
            print(f"data: {len(examples) - len(kept):,} of {len(examples):,} training questions have no candidate "
                  "that is a right answer; they are left out of training")
        examples = kept
    enc = encode_rows(tok, examples, max_len)
    report[split] = {"rows": len(enc.starts), "passage_cut": enc.cut, "text_cut": enc.cut_text}
    if enc.cut:
        print(f"data: {split}: the passage was cut to fit --max-len {max_len} in {enc.cut:,} of {len(enc.starts):,} "
              f"rows" + (f"; {enc.cut_text:,} questions or options were too long even alone and were cut too"
                         if enc.cut_text else ""))
    return enc
