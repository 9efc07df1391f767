"""
Trained LoRA adapters out of this project, as one command:

    python -m interop.export peft  out/sst2-lora-r8/adapters.safetensors out/sst2-peft     # PeftModel.from_pretrained
    python -m interop.export merge out/sst2-lora-r8/adapters.safetensors out/sst2-merged   # AutoModelFor...

The model is rebuilt from the adapter file as train.py --eval-only does (training/build.py).
"""
import json
import sys

from tasks import get_task
from files.adapters import read_run
from interop.merged import export_merged
from interop.peft import RUN, export_peft
from training.build import build_model
from training.cli import OneLineParser, UserError


def main(argv=None):
    p = OneLineParser(prog="-m interop.export", description="Our LoRA adapters as a PEFT folder (export) or folded "
                      "into a Hugging Face checkpoint folder (merge).")
    p.add_argument("command", choices=("peft", "merge"))
    p.add_argument("adapters", help="an adapters.safetensors written by train.py (--method lora)")
    p.add_argument("outdir", help="the folder to write")
    p.add_argument("--model", help="base checkpoint folder (default: the one the file names)")
    p.add_argument("--tokenizer", help="tokenizer folder for merge (default: the one the file names)")
    args = p.parse_args(argv)
    try:
        run = read_run(args.adapters)
        if not run.get("task"):
            raise UserError(f"{args.adapters} does not say which task it was trained on (an older train.py?)")
        task, base = get_task(run["task"]), args.model or run["model"]
        model = build_model(task, base, run.get("random_init", False), adapter_file=args.adapters).eval()
        tokenizer = args.tokenizer or run.get("tokenizer") or (base if run.get("random_init") else model.source)
        if args.command == "peft":
            out = export_peft(model, args.outdir, base=base)
            (out / RUN).write_text(json.dumps({"task": task.name, "model": base, "tokenizer": tokenizer}) + "\n")
        else:
            out = export_merged(model, args.outdir, tokenizer=tokenizer, labels=getattr(task, "labels", None))
    except (UserError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
