"""Table-1-style table: closed-form expected-OKS rescoring (Eq. 12) with mean / predicted / gt area.

SIMULATION: the rows come from ``posecal.theory.simulate`` (synthetic data under the paper's assumptions), not from
real models. Real rows come from feature stores written by ``posecal extract`` (``--store NAME TEST_STORE
FIT_STORE``): sigma is the store's ``sigma_hat`` (Gaussian fit of the heatmaps, image px), areas as in the
simulation, and the isotonic / log-log calibrators are fitted on FIT_STORE (another split). Results files
without heatmaps can be added with ``--real NAME PRED.json GT.json MODEL`` (sigma from the scores).

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
from posecal.theory.simulate import LABEL, simulate

COLUMNS = ("Orig", "Mean", "Pred", "GT", "Isotonic", "LogLog", "Oracle", "mAR")


def _load(gt_src, res_src):
    gt = load_gt(gt_src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gt, load_results(res_src, gt)


def row(gt, res, model: str, fit_gt=None, fit_res=None, oracle=None, sigma=None, **cf) -> dict[str, float]:
    raw = evaluate(gt, res)
    out = {"Orig": 100 * raw.stats["AP"], "mAR": 100 * raw.stats["AR"]}
    for area, col in (("mean", "Mean"), ("pred", "Pred"), ("gt", "GT")):
        r = ClosedFormRescorer(area=area, model=model, **cf).fit(res, gt)
        new = r.transform(res, gt) if sigma is None else r.transform(res, gt, sigma=sigma)
        e = evaluate(gt, res, scores=new.instance_scores)
        assert e.stats["AR"] == raw.stats["AR"]  # never changes recall here (one person per image)
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
    ap.add_argument("--store", nargs=3, action="append", default=[], metavar=("NAME", "STORE", "FIT_STORE"))
    ap.add_argument(
        "--store-peak",
        nargs=3,
        type=float,
        metavar=("HM_W", "HM_H", "TARGET_SIGMA"),
        help="also a row per store with sigma from the keypoint score as heatmap peak (Eq. 17), "
        "heatmap size and target sigma of the model; input size and padding from the store",
    )
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
    for name, store_dir, fit_dir in args.store:
        from posecal.models.store import FeatureStore

        st, ft = FeatureStore.open(store_dir), FeatureStore.open(fit_dir)
        gt, res = _load(str(st.gt_path), st.predictions)
        fgt, fres = _load(str(ft.gt_path), ft.predictions)
        rows[name] = [row(gt, res, "heatmap", fgt, fres, sigma=st.read("sigma_hat"))]
        if args.store_peak:
            w, h, ts = args.store_peak
            geo = dict(
                heatmap_size=(int(w), int(h)),
                input_size=tuple(st.meta["input_size"]),
                padding=float(st.meta.get("crop", {}).get("padding", 1.25)),
                target_sigma=ts,
            )
            rows[name + " (σ from peak)"] = [row(gt, res, "heatmap", **geo)]

    table = {}
    print(
        f"Table 1 ({LABEL} rows: n={args.n} per split, seeds {args.seeds}, mean ± sd over seeds); AP/AR in %"
    )
    width = max(24, *(len(n) + 2 for n in rows))
    print(f"{'method':{width}s}" + "".join(f"{c:>14s}" for c in COLUMNS))
    for name, rs in rows.items():
        stats = {}
        line = f"{name:{width}s}"
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
                "real": args.real,
                "stores": args.store,
                "store_peak": args.store_peak,
                "python": sys.version.split()[0],
                "machine": platform.machine(),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
