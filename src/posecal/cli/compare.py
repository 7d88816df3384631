"""``posecal compare``: is B's confidence better than A's? A paired bootstrap over images.

    posecal compare --gt GT.json A.json B.json [--json] [--report DIR] [--resamples 1000] [--seed 0]

Prints ΔAP and ΔAR (B − A) with 95 % percentile intervals, and the instance Pearson / AUSE deltas, from
``--resamples`` draws of the gt's images with replacement (the same draws for A and B). AP and AR are
recomputed exactly on every resample (:mod:`posecal.calibration.compare`). With ``--report DIR``: an HTML
page with the deltas on top and the two files' PR curves, reliability diagrams and sparsification curves
overlaid.
"""

from __future__ import annotations

import argparse
import math
import sys

from posecal.cli._args import int_in, nonneg_int

MAX_RESAMPLES = 1_000_000


def _level(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {s}")
    return v


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="paired bootstrap: ΔAP/ΔAR (and Pearson/AUSE) of B over A with intervals",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", required=True, help="COCO keypoints ground truth JSON")
    p.add_argument("a", metavar="A.json", help="baseline results")
    p.add_argument("b", metavar="B.json", help="results to compare with the baseline")
    p.add_argument("--resamples", type=int_in(1, MAX_RESAMPLES), default=1000,
                   help=f"bootstrap resamples (default 1000, at most {MAX_RESAMPLES:,})")
    p.add_argument("--seed", type=nonneg_int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--level", type=_level, default=0.95, help="interval coverage (default 0.95)")
    p.add_argument("--sigmas", default=None, help="comma-separated OKS sigmas (default: the gt's keypoint set)")
    p.add_argument("--report", default=None, metavar="DIR", help="write an HTML comparison page into DIR")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def run(args: argparse.Namespace) -> int:
    from posecal._util import dumps_json
    from posecal.calibration.compare import METRICS, compare, per_image_eval
    from posecal.errors import PosecalInputError
    from posecal.io.coco import load_gt, load_results

    paths = {"--gt": args.gt, "A.json": args.a, "B.json": args.b}
    if args.report is not None:
        from posecal._outputs import check_report_folder

        check_report_folder(args.report, paths)  # not an input, none inside it, nothing of the user's lost
    sigmas = None
    if args.sigmas:
        try:
            sigmas = [float(x) for x in args.sigmas.split(",")]
        except ValueError:
            raise PosecalInputError("not a comma-separated list of numbers", field="--sigmas") from None
    gt = load_gt(args.gt)
    ra, rb = load_results(args.a, gt), load_results(args.b, gt)
    res = compare(gt, ra, rb, resamples=args.resamples, seed=args.seed, level=args.level, sigmas=sigmas,
                  show_progress=True)
    if args.report is not None:
        from posecal.calibration.compare_report import write_compare_report

        pes = {"A": per_image_eval(gt, ra, sigmas=sigmas), "B": per_image_eval(gt, rb, sigmas=sigmas)}
        write_compare_report(res, pes, args.report, {"A": args.a, "B": args.b, "gt": args.gt})
    if args.json:
        doc = {**res.to_dict(), "files": {"A": args.a, "B": args.b, "gt": args.gt}}
        if args.report is not None:
            doc["report"] = args.report
        sys.stdout.write(dumps_json(doc, indent=True).decode() + "\n")
        return 0
    pct = int(round(args.level * 100))
    print(f"A = {args.a}\nB = {args.b}\npaired bootstrap over {res.images} images, {res.resamples} resamples, "
          f"seed {res.seed}")
    print(f"{'metric':<8} {'A':>8} {'B':>8} {'B - A':>9}  {pct} % interval{'':>6} P(B better)")
    for m in METRICS:
        lo, hi = res.interval[m]
        print(f"{m:<8} {_fmt(res.a[m]):>8} {_fmt(res.b[m]):>8} {_fmt(res.delta[m], True):>9}  "
              f"[{_fmt(lo, True)}, {_fmt(hi, True)}]  {_fmt(res.p_better[m])}")
    if args.report is not None:
        print(f"report written to {args.report}/index.html")
    return 0
