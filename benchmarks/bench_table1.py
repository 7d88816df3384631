"""Table-1-style table: closed-form expected-OKS rescoring (Eq. 12) with mean / predicted / gt area.

SIMULATION: the rows come from ``posecal.simulate`` (synthetic data under the paper's assumptions), not from
real models. Real rows (e.g. EfficientPose on LSP through the adapters) can be added by passing a results and
gt file pair with ``--real NAME PRED.json GT.json MODEL`` (MODEL = heatmap or rle).

Columns: Orig (the model's own instance score: MMPose ``bbox_keypoint`` for heatmaps, ``bbox_rle`` for RLE),
Mean / Pred / GT (closed form with that area), Isotonic / LogLog (feature-free calibrators fitted on a
separate simulated split), Oracle (the true expected instance OKS, simulation only), and mAR (independent of
the scores). AP and AR in percent, mean ± sd over seeds.

    PYTHONPATH=src nice python3 benchmarks/bench_table1.py --n 5000 --seeds 0 1 2 3 4 \
        --out benchmarks/results/table1_simulation.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings

import numpy as np

from posecal._util import write_json_atomic
from posecal.io.coco import load_gt, load_results
from posecal.metrics.cocoeval import evaluate
from posecal.rescore import ClosedFormRescorer, get_rescorer
from posecal.simulate import LABEL, simulate

COLUMNS = ("Orig", "Mean", "Pred", "GT", "Isotonic", "LogLog", "Oracle", "mAR")


def _load(gt_src, res_src):
    gt = load_gt(gt_src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gt, load_results(res_src, gt)


def row(gt, res, model: str, fit_gt=None, fit_res=None, oracle=None) -> dict[str, float]:
    raw = evaluate(gt, res)
    out = {"Orig": 100 * raw.stats["AP"], "mAR": 100 * raw.stats["AR"]}
    for area, col in (("mean", "Mean"), ("pred", "Pred"), ("gt", "GT")):
        r = ClosedFormRescorer(area=area, model=model).fit(res, gt)
        e = evaluate(gt, res, scores=r.transform(res, gt).instance_scores)
        assert e.stats["AR"] == raw.stats["AR"]  # rescoring never changes recall here (one person per image)
        out[col] = 100 * e.stats["AP"]
    if fit_gt is not None:
        for m, col in (("isotonic", "Isotonic"), ("loglog", "LogLog")):
            r = get_rescorer(m).fit(fit_res, fit_gt)
            out[col] = 100 * evaluate(gt, res, scores=r.transform(res).instance_scores).stats["AP"]
    if oracle is not None:
        out["Oracle"] = 100 * evaluate(gt, res, scores=oracle).stats["AP"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="instances per simulated split")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--real", nargs=4, action="append", default=[], metavar=("NAME", "PRED", "GT", "MODEL"))
    ap.add_argument("--out", help="write the table as JSON here")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    simulate(1000, seed=0)
    gen_s = time.perf_counter() - t0

    rows: dict[str, list[dict]] = {"heatmap (simulation)": [], "rle (simulation)": []}
    for seed in args.seeds:
        test, fit = simulate(args.n, seed=seed), simulate(args.n, seed=10_000 + seed)
        for model, key in (("heatmap", "heatmap (simulation)"), ("rle", "rle (simulation)")):
            res_key = "heatmap_results" if model == "heatmap" else "rle_results"
            gt, res = _load(test.gt, getattr(test, res_key))
            fgt, fres = _load(fit.gt, getattr(fit, res_key))
            eoks = test.expected_instance_oks if model == "heatmap" else None
            if model == "rle":
                lab = test.visibility > 0
                eoks = (test.expected_oks_rle * lab).sum(1) / lab.sum(1)
            rows[key].append(row(gt, res, model, fgt, fres, eoks))
    for name, pred, gtf, model in args.real:
        gt, res = _load(gtf, pred)
        rows[name] = [row(gt, res, model)]

    table = {}
    print(f"Table 1 ({LABEL} rows: n={args.n} per split, seeds {args.seeds}); AP/AR in %, mean ± sd over seeds")
    print(f"{'method':24s}" + "".join(f"{c:>14s}" for c in COLUMNS))
    for name, rs in rows.items():
        stats = {}
        line = f"{name:24s}"
        for c in COLUMNS:
            vals = np.array([r[c] for r in rs if c in r])
            if vals.size == 0:
                line += f"{'—':>14s}"
                continue
            m, s = float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0
            stats[c] = {"mean": m, "sd": s, "values": vals.tolist()}
            line += f"{m:8.2f} ± {s:4.2f}" if vals.size > 1 else f"{m:14.2f}"
        table[name] = stats
        print(line)
    print(f"simulate(1000) took {gen_s:.3f} s")
    if args.out:
        write_json_atomic(
            args.out,
            {
                "label": LABEL,
                "n": args.n,
                "seeds": args.seeds,
                "columns": COLUMNS,
                "table": table,
                "simulate_1000_seconds": gen_s,
                "python": sys.version.split()[0],
                "machine": platform.machine(),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
