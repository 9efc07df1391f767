"""
Trained LoRA adapters out of this project, as one command:

    python -m interop.export peft  out/sst2-lora-r8/adapters.safetensors out/sst2-peft     # PeftModel.from_pretrained
    python -m interop.export merge out/sst2-lora-r8/adapters.safetensors out/sst2-merged   # AutoModelFor...

The model is rebuilt from the adapter file as train.py --eval-only does (training/build.py).
"""
import sys
from pathlib import Path

from tasks import get_task
from files.adapters import check_base_is_there, read_run, read_settings
from interop import check_new_folder
from interop.merged import TOKENIZER_FILES, export_merged
from interop.peft import check_family, export_peft, is_peft_folder
from training.build import build_model
from training.cli import OneLineParser, UserError


def main(argv=None):
    p = OneLineParser(prog="-m interop.export", description="Our LoRA adapters as a PEFT folder (export) or folded "
                      "into a Hugging Face checkpoint folder (merge).")
    p.add_argument("command", choices=("peft", "merge"))
    p.add_argument("adapters", help="an adapters.safetensors written by train.py (--method lora)")
    p.add_argument("outdir", help="the folder to write: a new one (or empty), never the base's or the adapters'")
    p.add_argument("--model", help="base checkpoint folder (default: the one the file names)")
    p.add_argument("--task", help="the task it was trained on (default: the one the file names)")
    p.add_argument("--tokenizer", help="tokenizer folder for merge (default: the one the file names)")
    args = p.parse_args(argv)
    try:
        out = export(args)
    except (UserError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"written to {out}")


def export(args):
    """The model rebuilt from the adapter file (as predict.load does, with the same refusals), then written."""
    if is_peft_folder(args.adapters):
        raise UserError(f"{args.adapters} is a PEFT folder, exported already: pass the adapters.safetensors train.py "
                        f"wrote")
    run = read_run(args.adapters)
    if args.command == "peft":  # before the model is built
        check_family(read_settings(args.adapters)[1]["family"])
    run["task"] = args.task or run.get("task")
    if not run["task"]:
        raise UserError(f"{args.adapters} does not say which task it was trained on: pass --task")
    if not (args.model or run.get("model")):
        raise UserError(f"{args.adapters} does not name its base model: pass --model")
    if not args.model:
        check_base_is_there(run, args.adapters)
    # before the model is built: a refused folder costs nothing (new_folder checks again when it writes)
    if args.tokenizer and not any((Path(args.tokenizer) / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"--tokenizer {args.tokenizer} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:5])} "
                        f"...): pass the checkpoint folder whose tokenizer the model was trained with")
    task, base = get_task(run["task"]), args.model or run["model"]
    reads = {str(Path(args.adapters).absolute().parent): "the adapter file's folder",
             base: "the base checkpoint folder", args.tokenizer or run.get("tokenizer"): "the tokenizer folder"}
    check_new_folder(args.outdir, reads)
    model = build_model(task, base, run.get("random_init", False), adapter_file=args.adapters).eval()
    tokenizer = args.tokenizer or run.get("tokenizer") or (base if run.get("random_init") else model.source)
    if args.command == "peft":
        return export_peft(model, args.outdir, base=base, sources=reads,
                           run={"task": task.name, "model": base, "model_is_folder": Path(base).is_dir(),
                                "tokenizer": tokenizer, "max_len": run.get("max_len"), "data_dir": run.get("data_dir")})
    return export_merged(model, args.outdir, tokenizer=tokenizer, labels=getattr(task, "labels", None),
                         sources=reads)

if __name__ == "__main__":
    main()
