"""``posecal evaluate``: exact COCO keypoint AP/AR of a results file.

    posecal evaluate --gt GT.json --pred PRED.json [--sigmas S ... | --keypoint-set NAME]
                     [--use-area | --no-use-area] [--flavor pycocotools|xtcocotools|crowdpose]
                     [--json OUT.json|-] [--report DIR [--random-seeds N]]

Prints pycocotools' 10-line summary (CrowdPose files: AP/AR and AP(E)/AP(M)/AP(H) as crowdposetools);
``--json`` writes ``{"coco": {"AP": ..., ..., "ARl": ...}, ...}`` atomically (``-``: to stdout). Bad
input or an output that would overwrite an input: one error line, exit code 2, no output file.
``--report DIR`` adds the calibration audit (:mod:`posecal.calibration`): a compact table, a
``"calibration"`` block in the JSON, and ``DIR/metrics.json``, PNG figures and ``DIR/index.html``.

Structure (for extensions such as a calibration report): :func:`load_inputs` → :func:`compute` →
:func:`build_output` (the one place the output dict is assembled) → :func:`emit`; :func:`run` only chains
them. Imports stay light (numpy + orjson): whole-process time is benchmarked.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posecal.cli._args import int_in
from posecal.errors import PosecalInputError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="exact COCO keypoint AP/AR (pycocotools-identical)",
        description="COCO keypoint AP/AR of a results file, identical to pycocotools 2.0.x COCOeval "
        "(or xtcocotools with --flavor xtcocotools, or crowdposetools' AP(E)/AP(M)/AP(H) for CrowdPose "
        "files).",
    )
    p.add_argument("--gt", required=True, metavar="GT.json", help="COCO keypoint ground truth")
    p.add_argument("--pred", required=True, metavar="PRED.json", help="COCO results (list of detections)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sigmas", nargs="+", metavar="S",
                   help="OKS sigmas, one per keypoint (space or comma separated); default: the keypoint set "
                   "matched by the gt's categories[0].keypoints names")
    g.add_argument("--keypoint-set", metavar="NAME",
                   help="take sigmas from a named set (coco17, mpii16, ...)")
    p.add_argument("--use-area", dest="use_area", action="store_true", default=None,
                   help="scale OKS by the gt 'area' (default when every gt has one)")
    p.add_argument("--no-use-area", dest="use_area", action="store_false",
                   help="use 0.53·w·h of the gt box instead of 'area' (xtcocotools use_area=False; "
                   "CrowdPose, AIC)")
    p.add_argument("--flavor", choices=FLAVOR_CHOICES, default=None,
                   help="reference to reproduce: pycocotools, xtcocotools or crowdpose (crowdposetools, with "
                   "AP(E)/AP(M)/AP(H)); default crowdpose when every image has a 'crowdIndex', else "
                   "pycocotools. A CrowdPose file under xtcocotools is its keypoints_crowd (MMPose), crowd "
                   "levels included")
    p.add_argument("--json", metavar="OUT.json", nargs="?", const="-",
                   help="write the numbers as JSON (atomic); '-' or no value prints the JSON to stdout (the "
                   "summary then goes to stderr), as --json does in the other commands")
    p.add_argument("--report", metavar="DIR", help="calibration audit: metrics.json, figures, index.html "
                   "in DIR (needs matplotlib) and a 'calibration' block in --json; with 'keypoint_thresholds': "
                   "the keypoint-confidence threshold (keep c >= it) that keeps the most keypoints with 90/95/98 %% "
                   "of the kept at keypoint OKS >= 0.5, overall and per keypoint type")
    p.add_argument("--random-seeds", type=int_in(0, 1000), default=5, metavar="N",
                   help="seeds for the AP with random confidence of --report (default 5, at most 1000)")
    return p


FLAVOR_CHOICES = ("pycocotools", "xtcocotools", "crowdpose")


@dataclass(eq=False)  # holds arrays: identity comparison
class Evaluation:
    """Everything :func:`build_output` may report."""

    gt: Any
    res: Any
    result: Any  # CocoEvalResult of the main evaluation
    sigmas_source: str
    use_area: bool
    parts: dict[str, Any] = field(default_factory=dict)  # WholeBody part -> CocoEvalResult
    notes: list[str] = field(default_factory=list)
    calibration: Any = None  # posecal.calibration.audit.Audit with --report
    flavor: str = "pycocotools"


def _parse_sigmas(args: argparse.Namespace, gt) -> tuple[Any, str]:
    from posecal.cli._args import sigmas_arg

    if args.keypoint_set is not None and not args.keypoint_set.strip():  # '' would mean "not given"
        raise PosecalInputError("empty; give a keypoint set name (e.g. coco17)", None, None, "--keypoint-set")
    vals, source = sigmas_arg(args.sigmas, args.keypoint_set, gt.num_joints, "the ground truth")
    if vals is not None:
        return vals, source
    if gt.keypoint_set is None:
        raise PosecalInputError(f"keypoint names of categories[0] match no known keypoint set "
                                f"({gt.num_joints} keypoints); give --sigmas or --keypoint-set", gt.path,
                                None, "categories")
    return None, gt.keypoint_set.name


def load_inputs(args: argparse.Namespace):
    """Parse and validate --gt and --pred (raises PosecalInputError)."""
    from posecal.io.coco import load_gt, load_results

    gt = load_gt(args.gt)
    res = load_results(args.pred, gt)
    return gt, res


def compute(args: argparse.Namespace, gt, res) -> Evaluation:
    """Run the evaluator(s) the inputs call for (the rules live in
    :func:`posecal.metrics.cocoeval.evaluate_dataset`)."""
    from posecal.metrics.cocoeval import evaluate_dataset

    sigmas, source = _parse_sigmas(args, gt)
    if args.flavor == "crowdpose" or (args.flavor is None and gt.crowd_index is not None):
        if args.use_area:
            raise PosecalInputError("crowdposetools scales OKS by 0.53·w·h of the gt box, never by 'area'; "
                                    "give --flavor pycocotools or xtcocotools to use it", None, None,
                                    "--use-area")
    de = evaluate_dataset(gt, res, sigmas=sigmas, use_area=args.use_area, flavor=args.flavor)
    ev = Evaluation(gt, res, de.result, source, de.use_area, de.parts, list(de.notes), flavor=de.flavor)
    if getattr(args, "report", None):
        from posecal.calibration.audit import run_audit

        ev.calibration = run_audit(gt, res, None if ev.parts else de.result, sigmas=sigmas,
                                   n_random=args.random_seeds,
                                   evaluate_kwargs={"use_area": de.use_area, "flavor": de.flavor})
        if ev.parts:
            note = "calibration audit over all keypoints of the whole body (COCO summary: body)"
            ev.notes.append(note)
            # the report and the JSON say so too: their mAP is not the "coco" block's body AP
            ev.calibration.metrics["notes"] = [note, *ev.calibration.metrics.get("notes", [])]
    return ev


def build_output(args: argparse.Namespace, ev: Evaluation) -> dict:
    """The JSON document (the single place it is assembled; extensions add keys here)."""
    out: dict[str, Any] = {
        "coco": {k: float(v) for k, v in ev.result.stats.items()},
        "gt": str(args.gt),
        "pred": str(args.pred),
        "flavor": ev.flavor,
        "use_area": bool(ev.use_area),
        "sigmas": ev.sigmas_source,
        "sigma_values": [float(x) for x in ev.result.sigmas],  # the OKS constants actually used
        "num_images": int(ev.gt.image_ids.shape[0]),
        "num_gt": len(ev.gt),
        "num_detections": len(ev.res),
        "num_evaluated": int(ev.result.det_evaluated.sum()),
    }
    if ev.parts:
        out["wholebody"] = {p: {k: float(v) for k, v in r.stats.items()} for p, r in ev.parts.items()}
    if ev.calibration is not None:
        out["calibration"] = ev.calibration.metrics
    return out


def _summary_text(ev: Evaluation) -> str:
    from posecal.metrics.cocoeval import summary_lines

    lines = summary_lines(ev.result)
    if ev.parts:
        lines = ["COCO keypoints (body, as pycocotools evaluates the file):"] + lines
        lines.append("COCO-WholeBody part-wise (xtcocotools, each part ranked by its own part score):")
        lines.append(f"  {'part':<10} {'AP':>6} {'AP50':>6} {'AP75':>6} {'AR':>6}")
        for p, r in ev.parts.items():
            s = r.stats
            lines.append(f"  {p:<10} {s['AP']:6.3f} {s['AP50']:6.3f} {s['AP75']:6.3f} {s['AR']:6.3f}")
    if ev.calibration is not None:
        from posecal.calibration.audit import format_summary

        lines += ["", format_summary(ev.calibration.metrics)]
    return "\n".join(lines) + "\n"


def emit(args: argparse.Namespace, ev: Evaluation, out: dict) -> None:
    """Print the summary for people and write --json for machines (``-``: stdout).

    Nothing is left half-written: the report is written to a temporary folder beside DIR and renamed only
    once the JSON is written."""
    from posecal._util import dumps_json, write_json_atomic

    for n in ev.notes:
        print(f"posecal evaluate: note: {n}", file=sys.stderr)
    to_stdout = args.json == "-"
    (sys.stderr if to_stdout else sys.stdout).write(_summary_text(ev))
    tmp_report = None
    # folders that writing creates above --report / --json: removed again (when empty) if writing fails
    report = _report_path(args.report) if ev.calibration is not None else None
    made = _missing_dirs(report.parent) if report is not None else []
    if args.json and not to_stdout:
        made += _missing_dirs(Path(args.json).parent)
    done = False
    try:
        if ev.calibration is not None:
            tmp_report = _write_report_tmp(ev, report, out)
        if to_stdout:
            sys.stdout.write(dumps_json(out, indent=True).decode() + "\n")
        elif args.json:
            try:
                write_json_atomic(args.json, out)
            except OSError as e:
                raise PosecalInputError(f"cannot write: {e.strerror or e}", args.json, None,
                                        "--json") from None
        if tmp_report is not None:
            _replace_dir(tmp_report, report)
            tmp_report = None
            print(f"posecal evaluate: report written to {args.report}/index.html", file=sys.stderr)
        done = True
    finally:
        if tmp_report is not None:
            shutil.rmtree(tmp_report, ignore_errors=True)
        if not done:
            for d in sorted(set(made), key=lambda q: len(q.parts), reverse=True):  # deepest first
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty


def _missing_dirs(d: Path) -> list[Path]:
    """``d`` and those of its ancestors that do not exist yet (deepest first)."""
    out = []
    while not os.path.lexists(d) and d != d.parent:
        out.append(d)
        d = d.parent
    return out


def _report_path(report: str) -> Path:
    """--report as an absolute path whose last part is a real name: ``a/b/..`` and ``x/.`` would otherwise
    put the temporary folder inside the folder it replaces (the rename then fails after all the work). The
    last part itself is not resolved, so a link named by --report is replaced, not its target."""
    from posecal._outputs import real

    p = Path(report)
    if p.name in ("", ".", ".."):
        return real(p)
    return real(p.parent) / p.name


def _write_report_tmp(ev: Evaluation, report: str | Path, out: dict) -> Path:
    from posecal.calibration.report import write_report

    final = Path(report)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        write_report(ev.calibration, tmp, document=out)
        os.chmod(tmp, 0o777 & ~_umask())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished report folder into place (an existing report folder is replaced as a whole; Ctrl-C
    between the renames is held back, so DIR is always the old report or the new one)."""
    from posecal._outputs import replace_dir

    replace_dir(tmp, final)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(args: argparse.Namespace) -> None:
    """Fail before any work when an output would overwrite an input or cannot be created."""
    import importlib.util

    inputs = [args.gt, args.pred]
    if args.json and args.json != "-":
        for src in inputs:
            if _same_file(args.json, src):
                raise PosecalInputError(f"is an input file ({src}); refusing to overwrite it", args.json,
                                        None, "--json")
        _check_writable_file(args.json, "--json")
        from posecal._outputs import check_creatable

        check_creatable(args.json, "file", field="--json")  # a device or a pipe: refused now, not after the work
    if not getattr(args, "report", None):
        return
    if importlib.util.find_spec("matplotlib") is None:
        raise PosecalInputError("needs matplotlib: pip install 'posecal[report]'", None, None, "--report")
    from posecal._outputs import check_creatable, check_report_folder, real

    d = Path(args.report)
    if real(d) in (real("."), *real(".").parents):
        raise PosecalInputError("is the current folder or one above it, and the report replaces the folder as a "
                                "whole (the shell would be left in a deleted folder); choose another folder",
                                args.report, None, "--report")
    if args.json and args.json != "-" and real(args.json) in (real(d), *real(d).parents):
        raise PosecalInputError(f"is the --report folder {args.report} or one above it; the JSON and the report "
                                f"need different paths ({args.report}/metrics.json holds the same numbers)",
                                args.json, None, "--json")
    if args.json and args.json != "-" and real(d) in real(args.json).parents:
        raise PosecalInputError(f"is inside --report {args.report}, which is replaced as a whole; write it "
                                f"elsewhere ({args.report}/metrics.json holds the same numbers)", args.json,
                                None, "--json")
    check_report_folder(d, {"--gt": args.gt, "--pred": args.pred})  # a folder, no input inside, nothing lost
    _check_writable_dir(d.parent if str(d.parent) else Path("."), str(d), "--report")
    check_creatable(d, "dir", field="--report", sibling=True)  # files can really be created (root, ro mounts)


def _check_writable_file(path: str, flag: str) -> None:
    p = Path(path)
    if p.is_dir() or path.endswith(("/", os.sep)):
        raise PosecalInputError("is a directory", path, None, flag)
    parent = p.parent
    while not parent.exists():  # created on writing
        parent = parent.parent
    _check_writable_dir(parent, path, flag)


def _check_writable_dir(d: Path, what: str, flag: str) -> None:
    while not d.exists() and d != d.parent:
        d = d.parent
    if not d.is_dir():
        raise PosecalInputError(f"cannot be created: {d} is not a directory", what, None, flag)
    if not os.access(d, os.W_OK | os.X_OK):
        raise PosecalInputError(f"cannot be created: no write permission in {d}", what, None, flag)


_finished_plain = False  # set by run(); read by posecal.cli.console_main


def _keep_freed_memory() -> None:
    """glibc only, this process only: keep freed blocks for reuse instead of returning them to the OS.

    Evaluation makes many short-lived arrays of tens of MB; with glibc's defaults each is a fresh mmap whose
    pages fault in again (about half of the system time on large files). Peak memory grows a little.
    Measured in docs/benchmarks.md (``POSECAL_PROCESS_TWEAKS=-malloc`` turns it off).
    """
    if not sys.platform.startswith("linux") or not tweak_enabled("malloc"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 2**31 - 1)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 256 << 20)  # M_TOP_PAD
    except (OSError, AttributeError):
        pass


def tweak_enabled(name: str) -> bool:
    """Process-level speed tweaks (``blas``, ``malloc``, ``gc``, ``exit``) are on unless
    ``POSECAL_PROCESS_TWEAKS`` lists ``-name`` (benchmarks/bench_evaluate.py measures each with and
    without)."""
    return f"-{name}" not in os.environ.get("POSECAL_PROCESS_TWEAKS", "").split(",")


def run(args: argparse.Namespace) -> int:
    check_outputs(args)
    _keep_freed_memory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the garbage collector paused over the first imports (numpy) too, not only while loading: their
        # many new objects otherwise trigger collections that find nothing to free
        was = gc.isenabled()
        if tweak_enabled("gc"):
            gc.disable()
        try:
            gt, res = load_inputs(args)
        finally:
            if was:
                gc.enable()
        ev = compute(args, gt, res)
    for w in caught:
        print(f"posecal evaluate: warning: {w.message}", file=sys.stderr)
    emit(args, ev, build_output(args, ev))
    global _finished_plain
    # everything written: the process may end without teardown
    _finished_plain = ev.calibration is None and tweak_enabled("exit")
    return 0
