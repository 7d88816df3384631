"""``posecal compare``: is B's confidence better than A's? A paired bootstrap over images.

    posecal compare --gt GT.json A.json B.json [--sigmas S ... | --keypoint-set NAME] [--json]
                    [--report DIR] [--resamples 1000] [--seed 0] [--level 0.95]
                    [--use-area | --no-use-area] [--flavor pycocotools|xtcocotools|crowdpose]

Prints ΔAP and ΔAR (B − A) with 95 % percentile intervals, and the instance Pearson / AUSE deltas, from
``--resamples`` draws of the gt's images with replacement (the same draws for A and B; an image drawn twice
counts twice). AP and AR are recomputed exactly on every resample (:mod:`posecal.calibration.compare`).
Each file is evaluated as ``posecal evaluate`` evaluates it (same defaults and flags: crowdposetools for
CrowdPose files, 0.53·w·h of the gt box without ``area``, the body of COCO-WholeBody), so the A and B
columns are that command's AP/AR. With ``--report DIR``: an HTML page with the deltas on top and the two
files' PR curves, reliability diagrams and sparsification curves overlaid (``index.html``, the PNG figures
and ``compare.json`` in DIR, no network needed).

Warnings (the result is still given): a file without results, a file whose scores are all equal, images
with people that only one file has results on, and a bootstrap with at most one image holding anything to
score (every resample repeats it: (near) zero-width intervals that measure nothing). They are also in the
JSON and on the report's page.

P(B better) is the fraction of resamples where B beats A, resamples with Δ exactly 0 counted as half; a
metric tied on every resample (ΔAR when B only reorders the scores) shows 0.5000 (all tied). ``--json``
also gives ``p_tied``, the tied fraction. A resample where Δ is undefined (it drew no person: no AP/AR; fewer
than 2 pairs: no Pearson/AUSE) is left out, not counted as a tie; ``resamples_used`` says how many count.

``--json`` prints one object (the same as ``compare.json`` of ``--report``): ``resamples``, ``seed``,
``level``, ``images`` (gt images drawn from), ``interval_method`` ("percentile"), ``flavor``, ``use_area``,
``keypoints`` ("all", or "body" for COCO-WholeBody), ``warnings`` (the warning lines, a list), ``metrics``,
``keypoint_thresholds`` (below) and ``files`` ({"A", "B", "gt"}); with ``--report``, ``--json`` also gives
``report`` (the folder; compare.json itself has no such key). ``metrics`` has the keys AP, AR,
pearson, ause, each ``{"a", "b", "delta", "interval": [lo, hi], "p_better", "p_tied", "resamples_used"}``;
a value that is undefined is ``null`` (never NaN), and then ``a_reason`` / ``b_reason`` says why for the file
that lacks it.

Last, the keypoint thresholds of ``posecal evaluate --report`` for both files: for 90 / 95 / 98 % of the kept
keypoints correct (keypoint OKS >= 0.5), the share of the file's keypoints one confidence threshold keeps (0
when none reaches it) and that threshold, and Δ kept = B − A over the same image draws. Pairs: the labelled
keypoints of every detection matched one to one to a person of its image and category (greedily by OKS, any
OKS > 0; all 133 keypoints of COCO-WholeBody); each file's share is of its own matched people's keypoints (a
file that misses people is judged on fewer). JSON: ``keypoint_thresholds`` ``{"correct", "pairs", "targets":
[{"target", "a": {"kept", "threshold"}, "b", "delta", "interval", "p_better", "resamples_used"}]}``.

``--sigmas`` and ``--keypoint-set`` work as in ``posecal evaluate`` (space- or comma-separated sigmas).
Before the result files, the sigma list ends at the first value that is not a number:
``--sigmas 0.026 0.035 A.json B.json`` reads two sigmas and two files (a file named like a number: put
``--`` before the files).
"""

from __future__ import annotations

import argparse
import math
import sys

from posecal.cli._args import int_in, nonneg_int

MAX_RESAMPLES = 1_000_000
FLAVOR_CHOICES = ("pycocotools", "xtcocotools", "crowdpose")


def _level(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {s}")
    return v


def _numbers(text: str) -> bool:
    """``text`` is one or more numbers, comma and/or space separated (what ``--sigmas`` takes)."""
    from posecal.cli._args import sigma_tokens

    toks = sigma_tokens([text])
    try:
        [float(t) for t in toks]
    except ValueError:
        return False
    return bool(toks)


def _sigma_value(text: str) -> str:
    """argparse type of one ``--sigmas`` value (converted by posecal.cli.evaluate._parse_sigmas)."""
    if not _numbers(text):
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (--sigmas takes numbers, space or comma "
                                         "separated)")
    return text


def _is_sigmas_flag(p: argparse.ArgumentParser, name: str) -> bool:
    """``name`` selects --sigmas: the flag itself or, as argparse allows, an unambiguous prefix of it."""
    if name == "--sigmas":
        return True
    return (p.allow_abbrev and len(name) > 2 and name.startswith("--") and "--sigmas".startswith(name)
            and not any(o != "--sigmas" and o.startswith(name) for o in p._option_string_actions))


def _join_sigmas(p: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Rewrite ``--sigmas a b c`` as ``--sigmas="a b c"``, taking only the values that are numbers.

    argparse gives a ``nargs='+'`` option every following non-flag word, so ``--sigmas a b A.json B.json``
    would swallow the result files; joined, the files stay positionals. Nothing after ``--`` is touched."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        t = argv[i]
        if t == "--":
            out += argv[i:]
            break
        name, eq, first = t.partition("=")
        if _is_sigmas_flag(p, name):
            vals = [first] if eq else []
            j = i + 1
            while j < len(argv) and _numbers(argv[j]):
                vals.append(argv[j])
                j += 1
            if vals:
                out.append("--sigmas=" + " ".join(vals))  # as typed (an error quotes it); spaces separate too
                i = j
                continue
        out.append(t)
        i += 1
    return out


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
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sigmas", nargs="+", metavar="S", type=_sigma_value,
                   help="OKS sigmas, one per keypoint (space or comma separated, as posecal evaluate); default: "
                   "the keypoint set matched by the gt's categories[0].keypoints names. Before A.json B.json "
                   "the list ends at the first value that is not a number")
    g.add_argument("--keypoint-set", metavar="NAME",
                   help="take sigmas from a named set (coco17, mpii16, ...), as posecal evaluate")
    p.add_argument("--use-area", dest="use_area", action="store_true", default=None,
                   help="scale OKS by the gt 'area' (default when every gt has one), as posecal evaluate")
    p.add_argument("--no-use-area", dest="use_area", action="store_false",
                   help="use 0.53·w·h of the gt box instead of 'area', as posecal evaluate")
    p.add_argument("--flavor", choices=FLAVOR_CHOICES, default=None,
                   help="evaluator to reproduce, as posecal evaluate: pycocotools, xtcocotools or crowdpose; "
                   "default crowdpose when every image has a 'crowdIndex', else pycocotools")
    p.add_argument("--report", default=None, metavar="DIR", help="write an HTML comparison page into DIR")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    parse_known_args = p.parse_known_args

    def parse_sigmas_first(args=None, namespace=None):  # keep the result files out of --sigmas' list
        return parse_known_args(_join_sigmas(p, list(sys.argv[1:] if args is None else args)), namespace)

    p.parse_known_args = parse_sigmas_first  # type: ignore[method-assign]
    return p


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    if abs(v) >= 1e6:  # a keypoint threshold can be any legal score, up to ±1.8e308: not 309 digits
        return f"{v:+.4g}" if signed else f"{v:.4g}"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def _print_thresholds(kt: dict, pct: str) -> None:
    """The keypoint-threshold rows of ``posecal compare`` (:attr:`CompareResult.keypoint_thresholds`)."""
    print(f"share of keypoints one threshold keeps with >= X of them correct ({kt['correct']}):")
    print(f"{'X':<8} {'A':>8} {'B':>8} {'B - A':>9}  {pct} % interval{'':>6} P(B better)   thresholds A, B")
    for r in kt["targets"]:
        lo, hi = (v if v is not None else float("nan") for v in r["interval"])
        thr = ", ".join(_fmt(r[w]["threshold"]) for w in ("a", "b"))
        print(f"{r['target']:<8.2f} {_fmt(r['a']['kept']):>8} {_fmt(r['b']['kept']):>8} "
              f"{_fmt(r['delta'], True):>9}  [{_fmt(lo, True)}, {_fmt(hi, True)}]  {_fmt(r['p_better']):>11}   {thr}")


def _warn_same_file(a: str, b: str) -> None:
    """A and B with the same bytes (the same file twice, a typo in a script): every delta is 0 by construction;
    the run goes on (a legal, if pointless, input) with one warning."""
    import filecmp
    import warnings

    from posecal.errors import PosecalWarning

    try:
        same = filecmp.cmp(a, b, shallow=False)
    except OSError:
        return
    if same:
        warnings.warn(f"{b}: the same content as A ({a}): every difference is 0 by construction",
                      PosecalWarning, stacklevel=2)


def run(args: argparse.Namespace) -> int:
    from posecal._util import dumps_json
    from posecal.calibration.compare import INTERVAL_METHOD, METRICS, compare, level_label, per_image_eval
    from posecal.cli.evaluate import _parse_sigmas
    from posecal.errors import PosecalInputError
    from posecal.io.coco import load_gt, load_results

    paths = {"--gt": args.gt, "A.json": args.a, "B.json": args.b}
    if args.report is not None:
        import importlib.util

        from posecal._outputs import check_creatable, check_report_folder

        if importlib.util.find_spec("matplotlib") is None:  # before the bootstrap, not after it
            raise PosecalInputError("needs matplotlib: pip install 'posecal[report]'", field="--report")

        check_report_folder(args.report, paths)  # not an input, none inside it, nothing of the user's lost
        check_creatable(args.report, "dir", field="--report", sibling=True)  # writable, before the bootstrap
    gt = load_gt(args.gt)
    sigmas, _ = _parse_sigmas(args, gt)  # --sigmas / --keypoint-set / the gt's set, exactly as evaluate
    use_area, flavor = getattr(args, "use_area", None), getattr(args, "flavor", None)
    if use_area and (flavor == "crowdpose" or (flavor is None and gt.crowd_index is not None)):
        raise PosecalInputError("crowdposetools scales OKS by 0.53·w·h of the gt box, never by 'area'; give "
                                "--flavor pycocotools or xtcocotools to use it", None, None, "--use-area")
    kw = {"sigmas": sigmas, "use_area": use_area, "flavor": flavor}
    ra, rb = load_results(args.a, gt), load_results(args.b, gt)
    _warn_same_file(args.a, args.b)
    res = compare(gt, ra, rb, resamples=args.resamples, seed=args.seed, level=args.level, show_progress=True,
                  **kw)
    if args.report is not None:
        from posecal.calibration.compare_report import write_compare_report

        pes = {"A": per_image_eval(gt, ra, **kw), "B": per_image_eval(gt, rb, **kw)}
        write_compare_report(res, pes, args.report, {"A": args.a, "B": args.b, "gt": args.gt})
    if args.json:
        doc = {**res.to_dict(), "files": {"A": args.a, "B": args.b, "gt": args.gt}}
        if args.report is not None:
            doc["report"] = args.report
        sys.stdout.write(dumps_json(doc, indent=True).decode() + "\n")
        return 0
    pct = level_label(args.level)
    print(f"A = {args.a}\nB = {args.b}\npaired bootstrap over {res.images} images, {res.resamples} resamples, "
          f"seed {res.seed}, {pct} % {INTERVAL_METHOD} intervals; AP/AR as {res.flavor}"
          f"{'' if res.use_area else ', OKS on 0.53·w·h of the gt box'}"
          f"{', body keypoints (COCO-WholeBody)' if res.keypoints == 'body' else ''}")
    print(f"{'metric':<8} {'A':>8} {'B':>8} {'B - A':>9}  {pct} % interval{'':>6} P(B better)")
    for m in METRICS:
        lo, hi = res.interval[m]
        print(f"{m:<8} {_fmt(res.a[m]):>8} {_fmt(res.b[m]):>8} {_fmt(res.delta[m], True):>9}  "
              f"[{_fmt(lo, True)}, {_fmt(hi, True)}]  {_fmt(res.p_better[m])}"
              f"{' (all tied)' if res.all_tied(m) else ''}{f'  n/a: {res.reason(m)}' if res.reason(m) else ''}")
    left_out = [f"{m} {res.resamples - res.used(m)}" for m in METRICS if 0 < res.used(m) < res.resamples]
    if left_out:
        print(f"resamples left out (Δ undefined: no person drawn, or fewer than 2 pairs): {', '.join(left_out)}")
    _print_thresholds(res.keypoint_thresholds, pct)
    if args.report is not None:
        print(f"posecal compare: report written to {args.report}/index.html", file=sys.stderr)
    return 0
