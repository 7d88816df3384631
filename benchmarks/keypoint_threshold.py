"""Thresholding keypoints by their confidence: what a practitioner gets from each confidence (not a test;
figures in docs/results.md, "Thresholding keypoints").

For each result file (the same detections and keypoints, different confidences) every labelled gt keypoint of a
detection's matched person (:func:`posecal.rescore.matching.matched_keypoint_pairs`: the gt of highest OKS in the
image; with gt boxes, one person per crop, that is the crop's own person) is a (confidence, keypoint OKS) pair.
Printed per file: keypoint-level ECE (15 equal-width bins, the OKS not binarised:
:func:`posecal.calibration.metrics.calibration_error`) and Pearson; then for each threshold τ: the share of keypoints
kept (confidence ≥ τ), their mean confidence, their mean keypoint OKS, and the share of kept keypoints with OKS ≥ 0.5
(a "correct" keypoint at COCO's loosest threshold). Last, for target shares of correct keypoints (0.90, 0.95,
0.98): the largest share of keypoints a single threshold on that confidence can keep with at least that share
correct among them (thresholds at the confidences' distinct values) — the coverage a practitioner gets at a
required precision, which compares confidences on different scales.

    PYTHONPATH=src python3 benchmarks/keypoint_threshold.py --gt LSP_TEST.json \\
        raw=STORE_LSP_TEST/predictions.json cf=CF.json ccnet=CAL.json [--taus 0.2 0.5 0.7 0.9] \\
        [--boot 1000] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

TAUS = (0.2, 0.3, 0.5, 0.7, 0.8, 0.9)
TARGETS = (0.90, 0.95, 0.98)


def coverage_at(c: np.ndarray, correct: np.ndarray, target: float) -> float:
    """Largest share of the N pairs kept by one threshold (keep ``c >= t``) whose kept pairs are at least
    ``target`` correct; 0 if none (:func:`posecal.calibration.metrics.threshold_at_precision`, what
    ``posecal evaluate --report`` reports as "keypoint thresholds"). ``c (N,)``, ``correct (N,)`` boolean."""
    from posecal.calibration.metrics import MetricUndefined, threshold_at_precision

    try:
        return threshold_at_precision(c, correct, target).kept
    except MetricUndefined:
        return 0.0


def keypoint_table(gt_path: str, pred_path: str, taus=TAUS, boot: int = 0, seed: int = 0) -> dict:
    """ECE / Pearson of keypoint confidence vs keypoint OKS, and the thresholding rows, for one result file."""
    from posecal.calibration.metrics import calibration_error, pearson
    from posecal.io.coco import load_gt, load_results
    from posecal.rescore.matching import matched_keypoint_pairs

    gt = load_gt(gt_path)
    pred = load_results(pred_path, gt)
    p = matched_keypoint_pairs(pred, gt)
    c, o = p["score"].astype(np.float64), p["oks"].astype(np.float64)
    img = pred.image_id[p["det"]]
    rows = []
    for t in taus:
        k = c >= t
        n = int(k.sum())
        rows.append({"tau": t, "kept": n / c.size, "mean_conf": float(c[k].mean()) if n else None,
                     "mean_oks": float(o[k].mean()) if n else None,
                     "oks_ge_0.5": float((o[k] >= 0.5).mean()) if n else None})
    return {"pairs": int(c.size), "ece": calibration_error(c, o).ece, "pearson": pearson(c, o),
            "mean_conf": float(c.mean()), "mean_oks": float(o.mean()), "rows": rows,
            "coverage_at": {str(t): coverage_at(c, o >= 0.5, t) for t in TARGETS},
            "coverage_boot": _boot(c, o >= 0.5, img, boot, seed)}


def _boot(c: np.ndarray, correct: np.ndarray, img: np.ndarray, boot: int, seed: int) -> dict:
    """Percentile 95 % intervals of :func:`coverage_at` over ``boot`` resamples of the images (each image's
    keypoints together; the same resamples for every file with the same ``seed``): {target: [lo, hi]}."""
    if not boot:
        return {}
    ids, inv = np.unique(img, return_inverse=True)
    rows_of = [np.flatnonzero(inv == i) for i in range(ids.size)]
    rng = np.random.default_rng(seed)
    vals = {t: [] for t in TARGETS}
    for _ in range(boot):
        r = np.concatenate([rows_of[i] for i in rng.integers(0, ids.size, ids.size)])
        for t in TARGETS:
            vals[t].append(coverage_at(c[r], correct[r], t))
    return {str(t): [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for t, v in vals.items()}


def f(v: float | None) -> str:
    return "   n/a" if v is None else f"{v:6.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gt", required=True)
    ap.add_argument("files", nargs="+", metavar="NAME=RESULTS.json")
    ap.add_argument("--taus", type=float, nargs="+", default=list(TAUS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--boot", type=int, default=0, help="resamples of the images for the coverage intervals")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = {}
    for spec in a.files:
        name, _, path = spec.partition("=")
        out[name] = keypoint_table(a.gt, path, a.taus, a.boot, a.seed)
    for name, r in out.items():
        print(f"{name}: {r['pairs']} keypoints, ECE {r['ece']:.3f}, Pearson {r['pearson']:.3f}, "
              f"mean confidence {r['mean_conf']:.3f} vs mean OKS {r['mean_oks']:.3f}")
        print("   tau   kept  mean conf  mean OKS  OKS>=0.5")
        for row in r["rows"]:
            print(f"  {row['tau']:4.2f}  {row['kept']:5.3f}     {f(row['mean_conf'])}    {f(row['mean_oks'])}"
                  f"    {f(row['oks_ge_0.5'])}")
    print("share of keypoints kept by the best single threshold with at least this share correct (OKS >= 0.5):")
    print("  " + " ".join(f"{name:>8}" for name in out) + "   target")
    for t in TARGETS:
        print("  " + " ".join(f"{out[name]['coverage_at'][str(t)]:8.3f}" for name in out) + f"   {t:.2f}")
        if a.boot:
            print("  " + " ".join("[{:.2f},{:.2f}]".format(*out[name]["coverage_boot"][str(t)]).rjust(8)
                                  for name in out) + "   95 % interval")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
