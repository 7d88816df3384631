"""The rows of docs/results.md's COCO-17 table from result files (not a test): AP, AP50, AP75, APm, APl, AR of each
file (pycocotools-exact, :func:`posecal.metrics.cocoeval.evaluate`, COCO-17 sigmas) and the oracle row of the first
(:func:`posecal.calibration.pairs.oracle_oks`: each person's one matched detection scored by its OKS, duplicates and
false positives 0), as markdown.

    PYTHONPATH=src python3 benchmarks/coco17_table.py --gt ../shared/data/coco-mini/person_keypoints_train2017.json \\
        "own=RES0/own.json" "closed form (pred area)=CF.json" "CCNet + context=RES0/context.json"
"""

from __future__ import annotations

import argparse
import warnings

METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gt", required=True)
    ap.add_argument("rows", nargs="+", metavar="NAME=RESULTS.json")
    a = ap.parse_args()
    from posecal.calibration.pairs import oracle_oks
    from posecal.io.coco import load_gt, load_results
    from posecal.keypoints import get_keypoint_set
    from posecal.metrics.cocoeval import evaluate

    warnings.simplefilter("ignore")  # keypoint scores above 1 (legal) are said by posecal evaluate, not here
    gt = load_gt(a.gt)
    sig = get_keypoint_set("coco17").sigmas
    print("| confidence | " + " | ".join(METRICS) + " |")
    oracle = None
    for row in a.rows:
        name, path = row.split("=", 1)
        res = load_results(path, gt)
        st = evaluate(gt, res, sigmas=sig, warn=False).stats
        print(f"| {name} | " + " | ".join(f"{100 * st[m]:.1f}" for m in METRICS) + " |")
        if oracle is None:
            oracle = evaluate(gt, res, scores=oracle_oks(gt, res, sig), sigmas=sig, warn=False).stats
    print("| oracle (true OKS; unmatched 0) | " + " | ".join(f"{100 * oracle[m]:.1f}" for m in METRICS) + " |")


if __name__ == "__main__":
    main()
