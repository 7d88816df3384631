"""``posecal rescore``: new keypoint and instance confidences for a COCO results file; coordinates unchanged.

Examples::

    posecal rescore --pred val_results.json --gt val_gt.json --method closed-form --area gt --out new.json
    posecal rescore --pred test.json --method isotonic --fit-gt val_gt.json --fit-pred val.json \\
        --save-calibrator iso.json --out test_iso.json
    posecal rescore --pred test2.json --method isotonic --calibrator iso.json --out test2_iso.json
    posecal rescore --pred raw_topdown.json --method mmpose-bbox_keypoint --oks-nms 0.9 --out mmpose.json
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Any

import numpy as np

from posecal.cli._args import finite_float, positive_float, positive_int, unit_float
from posecal.errors import PosecalInputError, PosecalWarning


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from posecal.rescore import AGGREGATES, RESCORERS

    p = sub.add_parser(
        "rescore",
        help="rescore keypoint/instance confidences (closed form, MMPose modes, isotonic, log-log)",
        description="Write NEW.json: the records of PRED.json with new keypoint and instance scores. "
        "Coordinates never change.",
    )
    p.add_argument(
        "--pred", help="COCO keypoint results JSON to rescore (default: the store's predictions.json)"
    )
    p.add_argument(
        "--store",
        help="feature store directory (posecal extract): its predictions.json, gt.json and, "
        "for closed-form, its sigma_hat (image px) replace the score-derived sigma",
    )
    p.add_argument("--method", required=True, choices=RESCORERS,
                   help="closed-form (Eq. 12), isotonic / loglog (fitted on --fit-gt --fit-pred, or a "
                   "--calibrator), an MMPose score mode, or visibility")
    p.add_argument(
        "--gt", help="ground truth of PRED (needed for closed-form --area gt; used for --area mean)"
    )
    p.add_argument(
        "--area", choices=("gt", "pred", "mean"), default="gt", help="closed-form: instance area source"
    )
    p.add_argument(
        "--model",
        choices=("heatmap", "rle"),
        default="heatmap",
        help="closed-form: how keypoint scores encode sigma (heatmap peak, Eq. 17; RLE 1-sigma, Eq. 3)",
    )
    p.add_argument(
        "--target-sigma", type=positive_float, default=2.0, help="closed-form: heatmap target l~ (heatmap px)"
    )
    p.add_argument("--heatmap-size", type=positive_int, nargs=2, default=(48, 64), metavar=("W", "H"),
                   help="closed-form, sigma from the scores (no store sigma_hat): the model's heatmap size")
    p.add_argument("--input-size", type=positive_int, nargs=2, default=None, metavar=("W", "H"),
                   help="the model's input size: closed-form's crops (default: 192 256), and the --oks-nms crop-box "
                   "aspect (default: the --store's crop aspect, else 192 256)")
    p.add_argument("--padding", type=positive_float, default=None,
                   help="top-down crop padding: closed-form's (default: 1.25) and the --oks-nms crop boxes' "
                   "(default: the --store's, else 1.25)")
    p.add_argument(
        "--aggregate",
        choices=AGGREGATES,
        default="bbox_keypoint",
        help="instance aggregation of the new keypoint scores (closed-form, isotonic, loglog)",
    )
    p.add_argument("--keypoint-score-thr", type=finite_float, default=0.2,
                   help="bbox_keypoint (--aggregate, mmpose-bbox_keypoint): mean of the keypoint scores above "
                   "this (MMPose)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sigmas", nargs="+", metavar="S",
                   help="OKS sigmas, one per keypoint (space or comma separated), for keypoint sets posecal does "
                   "not know (closed-form, isotonic, loglog); default: the gt's keypoint set")
    g.add_argument("--keypoint-set", metavar="NAME", help="take the OKS sigmas from a named set (coco17, ...)")
    p.add_argument("--oks-nms", type=unit_float, default=None, metavar="THR",
                   help="after rescoring, MMPose's OKS-NMS per image at this threshold (CocoMetric: 0.9) on the new "
                   "instance scores; suppressed records are dropped from --out (so AR can change); the rest keep "
                   "their order, except that an image's equal scores are written in MMPose's keep order (so COCOeval "
                   "ranks them as on MMPose's file). Default: none")
    p.add_argument("--nms-area", choices=("auto", "crop-box", "extent"), default="auto",
                   help="--oks-nms areas: crop-box = each record's bbox at the --input-size aspect x --padding "
                   "(MMPose's bbox_scales, top-down; without those flags, the --store's own crop); extent = the "
                   "predicted keypoints' extent (MMPose's rule without boxes); auto (default): crop-box when every "
                   "record has a bbox, else extent")
    p.add_argument("--fit-gt", help="ground truth to fit a learned calibrator on")
    p.add_argument("--fit-pred", help="results to fit a learned calibrator on (with --fit-gt)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--save-calibrator", help="write the fitted calibrator as JSON")
    g.add_argument("--calibrator", help="load a fitted calibrator (JSON) instead of fitting; it keeps its own "
                   "parameters and applies only to the keypoint set it was fitted on (other options or keypoints: "
                   "refused)")
    p.add_argument("--out", required=True,
                   help="output COCO results JSON (written atomically); '-' writes it to stdout and the "
                        "summary to stderr")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable summary on stdout (stderr with --out -)")
    return p


def _params(args: argparse.Namespace, sigmas: np.ndarray | None) -> dict:
    """The CLI options that are constructor parameters of the chosen rescorer (from its ``get_params``)."""
    from posecal.rescore import rescorer_class

    given = dict(
        area=args.area,
        model=args.model,
        target_sigma=args.target_sigma,
        heatmap_size=tuple(args.heatmap_size),
        input_size=tuple(args.input_size),
        padding=args.padding,
        aggregate=args.aggregate,
        keypoint_score_thr=args.keypoint_score_thr,
        sigmas=sigmas,
    )
    accepted = rescorer_class(args.method)().get_params()
    if given["sigmas"] is not None and "sigmas" not in accepted and args.oks_nms is None:
        raise PosecalInputError(f"--method {args.method} does not use OKS sigmas (closed-form, isotonic and "
                                "loglog do; so does --oks-nms)", None, None,
                                "--sigmas" if args.sigmas else "--keypoint-set")
    return {k: v for k, v in given.items() if k in accepted}


def run(args: argparse.Namespace) -> int:
    from posecal.io.coco import load_gt, load_results
    from posecal.metrics.cocoeval import with_oks_area
    from posecal.rescore import Rescorer, get_rescorer

    _check_empty(args)
    _check_outputs(args)
    _check_flags(args)
    _resolve_crop_flags(args)
    if args.pred is None and args.store is None:
        raise PosecalInputError("give --pred or --store", None, None, "--pred")
    store = sigma = None
    if args.store:
        from posecal.models.store import FeatureStore

        store = FeatureStore.open(args.store)
        if args.pred is None:
            _ = store.predictions  # checked against its checksum in meta.json
    gt_src = args.gt or (str(store.gt_path) if store is not None and store.gt_path is not None else None)
    gt = with_oks_area(load_gt(gt_src)) if gt_src else None
    pred_src = args.pred if args.pred else str(store.path / "predictions.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PosecalWarning)
        pred = load_results(pred_src, gt)
    sigmas = _sigmas(args, pred.keypoints.shape[1])
    if sigmas is None and store is not None and not args.calibrator:
        sigmas = _store_sigmas(args, store.meta, pred.keypoints.shape[1])
    fitted_on = None
    if store is not None:
        if store.num_instances != len(pred):
            raise PosecalInputError(
                f"store has {store.num_instances} instances, predictions {len(pred)}",
                pred_src,
                None,
                "records",
            )
        if args.method == "closed-form" and "sigma_hat" in store.arrays:
            if args.pred:
                _same_rows(store, pred, pred_src)
            sigma = store.read("sigma_hat")
    for w in caught:  # scores above 1 are legal (heatmap maxima): say it once (on success), never squash
        warnings.warn(w.message, PosecalWarning, stacklevel=1)

    if args.calibrator:
        if sigmas is not None:
            raise PosecalInputError("a loaded calibrator carries its own OKS sigmas (params.sigmas); drop "
                                    "--sigmas/--keypoint-set", args.calibrator, None,
                                    "--sigmas" if args.sigmas else "--keypoint-set")
        r = Rescorer.load(args.calibrator)
        if r.method != args.method:
            raise PosecalInputError(
                f"calibrator is {r.method!r}, not {args.method!r}", args.calibrator, None, "method"
            )
        _check_skeleton(args.calibrator, pred, gt)
        _check_calibrator_options(args, r)
    else:
        r = get_rescorer(args.method, **_params(args, sigmas))
        if args.fit_gt:
            fgt = with_oks_area(load_gt(args.fit_gt))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PosecalWarning)
                fpred = load_results(args.fit_pred, fgt)
            r.fit(fpred, fgt)
            fitted_on = _skeleton(fpred, fgt)
            _warn_skeleton(args.fit_pred, fitted_on["num_keypoints"], fitted_on["keypoint_set"], pred, gt)
        elif r.needs_fit:
            raise PosecalInputError(
                f"{args.method} needs --fit-gt/--fit-pred or --calibrator", None, None, "--fit-gt"
            )
        else:
            r.fit(pred, gt)
            fitted_on = _skeleton(pred, gt)
    out = _transform(r, pred, gt, sigma, args.calibrator)
    _warn_all_zero(args, r, pred, out)
    records = out.to_records(pred)
    nms = None
    if args.oks_nms is not None:
        keep, nms = _oks_nms(args, pred, out, gt, sigmas if sigmas is not None else getattr(r, "sigmas", None),
                             pred_src)
        records = [records[i] for i in keep]
    _write_outputs(args, r, records, fitted_on)
    _print_summary(args, r, pred, out, pred_src, store_sigma=sigma is not None, nms=nms)
    return 0


def _warn_all_zero(args: argparse.Namespace, r: Any, pred: Any, out: Any) -> None:
    """Warn when every new instance score is 0 although some old one was not: the file then ranks nothing (AP
    near 0). Seen with ``loglog`` fitted on many background detections: every new keypoint score fell below
    ``--keypoint-score-thr`` and MMPose's ``bbox_keypoint`` rule gives 0 when no keypoint passes. The
    aggregation and threshold named are the rescorer's own (a ``--calibrator`` keeps those it was saved with)."""
    new, old = np.asarray(out.instance_scores), np.asarray(pred.score)
    if new.size and not np.any(new > 0) and np.any(old > 0):
        params = r.get_params()
        aggregate = params.get("aggregate") or params.get("mode") or args.aggregate
        thr = params.get("keypoint_score_thr", args.keypoint_score_thr)
        warnings.warn(f"--method {args.method}: every new instance score is 0 ({int(np.sum(old > 0))} of "
                      f"{old.size} were > 0), so the output ranks nothing; with --aggregate "
                      f"{aggregate} no new keypoint score may pass "
                      f"--keypoint-score-thr {thr} (lower it or choose another --aggregate)",
                      PosecalWarning, stacklevel=2)


def _resolve_crop_flags(args: argparse.Namespace) -> None:
    """``--input-size`` / ``--padding`` not given: closed-form's defaults (192 x 256, 1.25); the --oks-nms crop
    boxes remember what was given (``args.nms_crop``) and otherwise take the store's own crop (:func:`_nms_crop`)."""
    args.nms_crop = (tuple(args.input_size) if args.input_size is not None else None, args.padding)
    args.input_size = tuple(args.input_size) if args.input_size is not None else (192, 256)
    args.padding = args.padding if args.padding is not None else 1.25


def _nms_crop(args: argparse.Namespace) -> tuple[tuple[float, float], float]:
    """The (W, H) aspect and padding of the --oks-nms crop boxes: ``--input-size`` / ``--padding`` when given,
    else the ``--store``'s crop (``meta.json``: ``crop.aspect``, ``crop.padding``, ``input_size``, what its own
    OKS-NMS used), else 192 x 256 and 1.25."""
    size, pad = getattr(args, "nms_crop", (None, None))
    meta = {}
    if args.store:
        from posecal.models.store import FeatureStore

        meta = FeatureStore.open(args.store).meta
    crop = meta.get("crop") if isinstance(meta.get("crop"), dict) else {}
    if size is None:
        if "aspect" in crop:
            size = (float(crop["aspect"]), 1.0)
        elif isinstance(meta.get("input_size"), list | tuple) and len(meta["input_size"]) == 2:
            size = (float(meta["input_size"][0]), float(meta["input_size"][1]))
        else:
            size = (192.0, 256.0)
    if pad is None:
        pad = float(crop["padding"]) if "padding" in crop else 1.25
    return size, pad


def _oks_nms(args: argparse.Namespace, pred: Any, out: Any, gt: Any, sigmas: np.ndarray | None,
             pred_src: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Rows kept by MMPose CocoMetric's OKS-NMS (:func:`posecal.models.nms.oks_nms_per_image`) on the new
    instance scores, and what was done (for the summary). Sigmas: ``--sigmas``/``--keypoint-set`` (or a loaded
    calibrator's own ``params.sigmas``), else the gt's keypoint set, else the one set with the predictions'
    keypoint count."""
    from posecal.keypoints import find_keypoint_set
    from posecal.models.nms import crop_box_area, keypoint_extent_area, oks_nms_per_image, ties_as_kept

    K = pred.keypoints.shape[1]
    if sigmas is None:
        ks = getattr(gt, "keypoint_set", None) if gt is not None else None
        ks = ks if ks is not None and ks.num_keypoints == K else find_keypoint_set(None, K)
        if ks is None:
            raise PosecalInputError(f"--oks-nms needs OKS sigmas for {K} keypoints: give --sigmas, --keypoint-set "
                                    "or --gt", pred_src, None, "--oks-nms")
        sigmas = ks.sigmas
    mode = args.nms_area
    if mode == "auto":
        mode = "crop-box" if pred.bbox is not None and np.isfinite(pred.bbox).all() else "extent"
    if mode == "crop-box":
        if pred.bbox is None or not np.isfinite(pred.bbox).all():
            raise PosecalInputError("--nms-area crop-box needs a bbox on every record", pred_src, None, "bbox")
        areas = crop_box_area(pred.bbox, *_nms_crop(args))
    else:
        areas = keypoint_extent_area(pred.keypoints[..., :2])
    keep = oks_nms_per_image(pred.image_id, pred.keypoints[..., :2], out.keypoint_scores, out.instance_scores,
                             np.asarray(sigmas, np.float64), args.oks_nms, areas, show_progress=True,
                             kept_order=True)
    # file order, but an image's equal scores in MMPose's keep order: COCOeval then ranks them as on its file
    keep = ties_as_kept(keep, pred.image_id, out.instance_scores)
    return keep, {"thr": args.oks_nms, "area": mode, "kept": int(len(keep)), "removed": int(len(pred) - len(keep))}



def _sigmas(args: argparse.Namespace, K: int) -> np.ndarray | None:
    """``--sigmas`` / ``--keypoint-set`` as OKS constants ``(K,)`` for the predictions' K keypoints, or None."""
    from posecal.cli._args import sigmas_arg

    return sigmas_arg(args.sigmas, args.keypoint_set, K, "the predictions")[0]


def _store_sigmas(args: argparse.Namespace, meta: dict[str, Any], K: int) -> np.ndarray | None:
    """The OKS sigmas a store extracted with ``--sigmas`` carries (a skeleton posecal does not know), when the
    method or --oks-nms reads sigmas; else None. Refused unless one per keypoint of the predictions (``K``)."""
    from posecal.keypoints import CUSTOM, keypoint_set_from_meta
    from posecal.rescore import rescorer_class

    if meta.get("keypoint_set") != CUSTOM:
        return None
    if "sigmas" not in rescorer_class(args.method)().get_params() and args.oks_nms is None:
        return None
    try:
        sigmas = keypoint_set_from_meta(meta).sigmas
    except KeyError as e:
        raise PosecalInputError(str(e.args[0]), f"{args.store}/meta.json", None,
                                "keypoint_sigmas") from None
    if len(sigmas) != K:
        raise PosecalInputError(f"{len(sigmas)} OKS sigmas for {K} keypoints in the predictions (edited?)",
                                f"{args.store}/meta.json", None, "keypoint_sigmas")
    return sigmas


def _skeleton(pred: Any, gt: Any) -> dict[str, Any]:
    """The keypoint count (and the gt's keypoint set, when known) a calibrator was fitted on."""
    ks = getattr(gt, "keypoint_set", None) if gt is not None else None
    return {"num_keypoints": int(pred.keypoints.shape[1]), "keypoint_set": ks.name if ks is not None else None}


def _check_empty(args: argparse.Namespace) -> None:
    """A flag given an empty value is refused: ``if args.calibrator`` would read ``--calibrator ''`` as not
    given (and ``--save-calibrator ''`` would silently save nothing)."""
    for flag in ("calibrator", "save_calibrator", "fit_gt", "fit_pred", "keypoint_set"):
        v = getattr(args, flag)
        if v is not None and not v.strip():
            raise PosecalInputError("empty value" if flag == "keypoint_set" else "empty path", None, None,
                                    "--" + flag.replace("_", "-"))


def _check_flags(args: argparse.Namespace) -> None:
    """Flag combinations that cannot mean what they say, refused before anything is read."""
    from posecal.rescore import rescorer_class

    if (args.fit_gt is None) != (args.fit_pred is None):
        raise PosecalInputError("--fit-gt and --fit-pred go together", None, None, "--fit-gt/--fit-pred")
    if args.calibrator and args.fit_gt:
        raise PosecalInputError("a loaded calibrator is already fitted: drop --fit-gt/--fit-pred, or drop "
                                "--calibrator to fit a new one", args.calibrator, None, "--fit-gt")
    cls = rescorer_class(args.method)
    if args.fit_gt and not cls.needs_fit and not (args.method == "closed-form" and args.area == "mean"):
        warnings.warn(f"--method {args.method} learns nothing from --fit-gt/--fit-pred (isotonic and loglog fit "
                      "on them; closed-form --area mean takes its mean area from them): they change nothing",
                      PosecalWarning, stacklevel=2)
    if args.oks_nms is None and args.nms_area != "auto":
        warnings.warn("--nms-area only applies with --oks-nms THR: ignored", PosecalWarning, stacklevel=2)


def _check_skeleton(path: str, pred: Any, gt: Any) -> None:
    """A calibrator saved with ``fitted_on`` (what ``--save-calibrator`` writes) fitted on another keypoint
    count, or another named keypoint set (the gt's, when it is known): its score → OKS map was learned on other
    joints and their OKS tolerances; warned (the map still applies). A damaged ``fitted_on`` is refused; a
    calibrator without one (``Rescorer.save``) is not checked."""
    from posecal._util import read_json

    obj = read_json(path)
    if not isinstance(obj, dict) or "fitted_on" not in obj or obj["fitted_on"] is None:
        return
    fitted = obj["fitted_on"]
    k = fitted.get("num_keypoints") if isinstance(fitted, dict) else None
    name = fitted.get("keypoint_set") if isinstance(fitted, dict) else None
    if type(k) is not int or k < 1 or not (name is None or isinstance(name, str)):
        raise PosecalInputError('expected {"num_keypoints": K >= 1, "keypoint_set": NAME or null}', path, None,
                                "fitted_on")
    _warn_skeleton(path, k, name, pred, gt)


def _warn_skeleton(path: str, k: int, name: str | None, pred: Any, gt: Any) -> None:
    """Warn when a calibrator fitted on ``k`` keypoints (of the named set) is applied to ``pred`` of another
    keypoint count or named set: a loaded ``--calibrator`` and one fitted here on ``--fit-gt/--fit-pred``."""
    K = int(pred.keypoints.shape[1])
    ks = getattr(gt, "keypoint_set", None) if gt is not None else None
    here = ks.name if ks is not None and ks.num_keypoints == K else None
    if k != K or (name is not None and here is not None and name != here):
        warnings.warn(f"{path}: calibrator fitted on {k} keypoints{f' ({name})' if name else ''}, applied to "
                      f"{K}{f' ({here})' if here else ''}: its score-to-OKS map was learned on other joints",
                      PosecalWarning, stacklevel=3)


def _check_calibrator_options(args: argparse.Namespace, r: Any) -> None:
    """A rescorer option given on the command line (a value other than its default) that disagrees with the
    loaded calibrator's own parameter is refused: the calibrator's value is the one that would be used."""
    from posecal.rescore import rescorer_class

    loaded = r.get_params()
    defaults = rescorer_class(args.method)().get_params()
    for k, v in _params(args, None).items():
        if k not in loaded or k == "sigmas":
            continue
        mine = loaded[k]
        if v != defaults[k] and v != mine:
            flag = "--" + k.replace("_", "-")
            shown = " ".join(map(str, mine)) if isinstance(mine, tuple) else mine
            raise PosecalInputError(f"the calibrator was saved with {flag} {shown}; drop {flag} or fit a new "
                                    "calibrator", args.calibrator, None, flag)


def _same_rows(store: Any, pred: Any, pred_src: str) -> None:
    """``--pred`` must hold the store's rows in the store's order (its σ̂ is read by row): same image and the
    same keypoint coordinates (a rescored copy of the store's predictions.json keeps both)."""
    iid = store.read("image_id")
    kp = store.read("keypoints")[..., :2]
    names = store.image_id_strings  # string image ids: compared as written (the gt given may code them otherwise)
    if names is not None and pred.records is not None:
        other_img = np.array([r.get("image_id") != names[int(c)] for r, c in zip(pred.records, iid, strict=True)],
                             bool)
    else:
        other_img = iid != pred.image_id
    bad = np.flatnonzero(other_img | ~np.isclose(kp, pred.keypoints[..., :2], rtol=0, atol=1e-3).all(axis=(1, 2)))
    if bad.size:
        r = int(bad[0])
        what = ("image_id" if other_img[r] else "keypoints")
        shown = int(iid[r]) if names is None else f"{names[int(iid[r])]!r:.60}"
        raise PosecalInputError(f"is not the store's row {r} (image_id {shown}): --store's sigma_hat is read "
                                f"row by row, so --pred must list the store's predictions in the store's order "
                                f"({bad.size} of {len(iid)} rows differ)", pred_src, r, what)


def _write_outputs(args: argparse.Namespace, r: Any, records: list, fitted_on: dict[str, Any] | None) -> None:
    """The results (``--out``, ``-`` = stdout) and the calibrator (``--save-calibrator``): both or neither —
    each goes to a temporary sibling, renamed in only when both are written; with ``--out -`` the results
    are serialised completely before the first byte goes to stdout."""
    from posecal._outputs import signals_deferred
    from posecal._util import atomic_path, dumps_json
    from posecal.io.coco import save_results

    to_stdout = args.out == "-"
    payload = dumps_json(records) if to_stdout else None
    with contextlib.ExitStack() as renames:  # exits after both renames below: a Ctrl-C between them waits
        with (contextlib.nullcontext() if to_stdout else atomic_path(args.out)) as tmp_out, \
                (atomic_path(args.save_calibrator) if args.save_calibrator else contextlib.nullcontext()) as tmp_cal:
            if tmp_out is not None:
                save_results(tmp_out, records)
            if tmp_cal is not None:
                from posecal._util import write_json_atomic

                # what it was fitted on, so a later --calibrator on another skeleton is warned about
                write_json_atomic(tmp_cal, {**r.to_json(), "fitted_on": fitted_on})
            if tmp_out is not None and tmp_cal is not None:
                renames.enter_context(signals_deferred())
    if payload is not None:
        sys.stdout.buffer.write(payload + b"\n")
        sys.stdout.flush()


def _print_summary(args: argparse.Namespace, r: Any, pred: Any, out: Any, pred_src: str, *,
                   store_sigma: bool, nms: dict[str, Any] | None = None) -> None:
    """The summary table (or ``--json``) on stdout, on stderr when stdout carries the results."""
    from posecal._util import dumps_json

    to_stdout = args.out == "-"
    raw_inst, raw_kp = pred.score, pred.keypoints[..., 2]
    summary = {
        "method": r.method,
        "params": r.to_json()["params"],
        "pred": str(pred_src),
        "store": args.store,
        "sigma": "store sigma_hat" if store_sigma else "from keypoint scores",
        "out": str(args.out),
        "detections": len(pred),
        "instance_score": {"raw_mean": _mean(raw_inst), "new_mean": _mean(out.instance_scores)},
        "keypoint_score": {"raw_mean": _mean(raw_kp), "new_mean": _mean(out.keypoint_scores)},
        "calibrator_saved": args.save_calibrator,
        "oks_nms": nms,
    }
    info = sys.stderr if to_stdout else sys.stdout
    if args.json:
        info.write(dumps_json(summary, indent=True).decode() + "\n")
        return
    print(f"posecal rescore  {r.method}  {len(pred)} detections -> {'stdout' if to_stdout else args.out}",
          file=info)
    print(f"  {'':10s}{'raw mean':>12s}{'new mean':>12s}", file=info)
    print(f"  {'instance':10s}{_mean(raw_inst):12.4f}{_mean(out.instance_scores):12.4f}", file=info)
    print(f"  {'keypoint':10s}{_mean(raw_kp):12.4f}{_mean(out.keypoint_scores):12.4f}", file=info)
    if nms is not None:
        print(f"  OKS-NMS {nms['thr']:g} ({nms['area']} areas): kept {nms['kept']}, removed {nms['removed']}",
              file=info)
    if args.save_calibrator:
        print(f"  calibrator saved to {args.save_calibrator}", file=info)

def _check_outputs(args: argparse.Namespace) -> None:
    """Before reading anything: no output is an input, each output can be written."""
    from posecal._outputs import check_creatable, refuse_clobber

    refuse_clobber({"--pred": args.pred, "--store": args.store, "--gt": args.gt, "--fit-gt": args.fit_gt,
                    "--fit-pred": args.fit_pred, "--calibrator": args.calibrator},
                   {"--out": None if args.out == "-" else args.out, "--save-calibrator": args.save_calibrator})
    if args.out != "-":
        check_creatable(args.out, "file", field="--out")
    if args.save_calibrator:
        check_creatable(args.save_calibrator, "file", field="--save-calibrator")


def _transform(r, pred, gt, sigma, calibrator: str | None):
    """``r.transform`` with the checks a loaded calibrator needs: OKS sigmas fit the keypoints, scores finite."""
    sig = getattr(r, "sigmas", None)
    if sig is not None and np.size(sig) != pred.keypoints.shape[1]:
        raise PosecalInputError(f"{np.size(sig)} OKS sigmas for {pred.keypoints.shape[1]} keypoints",
                                calibrator, None, "params.sigmas")
    out = r.transform(pred, gt, sigma=sigma) if sigma is not None else r.transform(pred, gt)
    if not (np.isfinite(out.keypoint_scores).all() and np.isfinite(out.instance_scores).all()):
        raise PosecalInputError("the rescorer produced non-finite scores (a tampered calibrator?)", calibrator,
                                None, "state")
    return out


def _mean(a: np.ndarray) -> float:
    return float(np.mean(a)) if np.size(a) else float("nan")
