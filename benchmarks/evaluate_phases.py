#!/usr/bin/env python3
"""CPU seconds of each in-process phase of ``posecal evaluate`` (load ground truth, load results, evaluate),
for development: CPU time (``time.process_time``) is steadier than wall time on a shared machine.

    nice python3 benchmarks/evaluate_phases.py /tmp/eval/bw/large                 # this tree's src/
    nice python3 benchmarks/evaluate_phases.py /tmp/eval/bw/large --src OTHER/src  # another source tree

DIR holds ``gt.json`` and ``pred.json`` (e.g. written by ``bench_evaluate.py --workdir``). The garbage
collector is paused and OpenBLAS kept to one thread, as ``posecal evaluate`` does.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.path.insert(0, str(args.src))
    from posecal.io.coco import load_gt, load_results
    from posecal.metrics.cocoeval import evaluate

    gc.disable()
    for _ in range(args.repeats):
        c0 = time.process_time()
        gt = load_gt(args.dir / "gt.json")
        c1 = time.process_time()
        res = load_results(args.dir / "pred.json", gt)
        c2 = time.process_time()
        evaluate(gt, res)
        c3 = time.process_time()
        print(f"{args.src}: gt {c1 - c0:.2f} s  results {c2 - c1:.2f} s  evaluate {c3 - c2:.2f} s  "
              f"sum {c3 - c0:.2f} s", flush=True)
        del gt, res
    return 0


if __name__ == "__main__":
    sys.exit(main())
