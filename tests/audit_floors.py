"""
Sweep the learning tests (those that check a score with the `learned` fixture) over seeds, CPU kernels and threads,
then print each floor beside the worst score seen: a floor must sit well below it, or the suite's verdict depends on
the CPU it runs on (other SIMD kernels round floats differently, and a knife-edge training run goes either way).

    python tests/audit_floors.py scores.jsonl                     # seeds 0-4 x this CPU's, avx2, default kernels x
                                                                  # 1 and 2 threads; appends to scores.jsonl
    python tests/audit_floors.py scores.jsonl --kernels default --threads 1 -k decoder
    python tests/audit_floors.py scores.jsonl --summary           # only the table, from what the file holds

The scores are appended, so sweeps made at different times (or on other machines) add up in one file.
"""
import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def sweep(args):
    for kernel in args.kernels.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            env = dict(os.environ, SSMLORA_TEST_SEEDS=args.seeds, SSMLORA_TEST_THREADS=str(threads),
                       SSMLORA_TEST_SCORES=str(Path(args.scores).resolve()))
            env.pop("ATEN_CPU_CAPABILITY", None)
            if kernel != "native":
                env["ATEN_CPU_CAPABILITY"] = kernel
            workers = max(1, args.cores // threads)
            cmd = [sys.executable, "-m", "pytest", "-q", "-n", str(workers), str(TESTS)]
            cmd += ["-k", args.k] if args.k else []
            print(f"[audit] kernel {kernel}, {threads} thread(s), seeds {args.seeds}: {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, cwd=TESTS.parent, env=env)  # a failing floor is what we are here to see: go on


def summary(path):
    """Per test and score: its bound, the worst and best values over every seed, kernel and thread count."""
    rows = defaultdict(list)
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        rows[(r["test"], r["what"], r["side"], r["bound"])].append(r)
    print("| test | score | bound | worst (seed, kernel, threads) | best | runs | margin |")
    print("|---|---|---|---|---|---|---|")
    for (test, what, side, bound), got in sorted(rows.items()):
        low = side == ">="
        worst = min(got, key=lambda r: r["score"]) if low else max(got, key=lambda r: r["score"])
        best = max(got, key=lambda r: r["score"]) if low else min(got, key=lambda r: r["score"])
        margin = worst["score"] - bound if low else bound - worst["score"]
        fails = margin < 0 if low else margin <= 0
        print(f"| {test.split('::', 1)[1]} | {what} | {side} {bound} | {worst['score']:.4f} (seed {worst['seed']}, "
              f"{worst['kernel']}, {worst['threads']}) | {best['score']:.4f} | {len(got)} | "
              f"{margin:+.4f}{' FAILS' if fails else ''} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scores", help="JSON-lines file the scores are appended to")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--kernels", default="native,avx2,default", help="ATEN_CPU_CAPABILITY values; native: unset")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="pytest-xdist workers x threads")
    p.add_argument("-k", help="pytest's -k, to sweep some of the learning tests")
    p.add_argument("--summary", action="store_true", help="print the table from the file, run nothing")
    args = p.parse_args(argv)
    if not args.summary:
        sweep(args)
    summary(args.scores)


if __name__ == "__main__":
    main()
