"""The whole calibration audit of one results file: evaluator matches → pairs → metrics → JSON + plot data.

``run_audit(gt, res)`` returns an :class:`Audit` whose ``metrics`` is the JSON-ready ``"calibration"``
block (no NaN anywhere: an undefined value is ``None`` with a ``<key>_reason`` string next to it) and
whose ``curves`` holds the arrays the report plots. numpy/scipy only; matplotlib lives in ``report``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posecal._util import progress
from posecal.calibration import metrics as M
from posecal.calibration.pairs import InstancePairs, KeypointPairs, best_oks, instance_pairs, keypoint_pairs
from posecal.errors import PosecalInputError

__all__ = ["Audit", "PAIRS_DOC", "PRIMARY_KEYS", "format_summary", "run_audit", "summary_rows"]

PAIRS_DOC = (
    "instance: every detection counted at OKS 0.50 (within maxDets=20, not matched to an ignored gt); "
    "confidence = instance score, accuracy = OKS with its greedily matched gt at threshold 0.50, 0 if "
    "unmatched. keypoint: the matched detections only; keypoint score vs per-keypoint OKS with the "
    "matched gt (gt v > 0 entries); visibility metrics use all entries with target gt v > 0."
)

# primary keys of the "calibration" block (issue 3); everything else is extra detail
PRIMARY_KEYS = (
    "mAP", "mAR", "gap", "oracle_AP", "random_AP", "pearson_instance", "pearson_keypoint",
    "spearman_instance", "ause_instance", "ause_keypoint", "ece", "aurc",
)  # fmt: skip


@dataclass
class Audit:
    """``metrics``: JSON-ready dict (the ``"calibration"`` block); ``curves``: plot data (numpy arrays);
    ``coco``: the evaluator's 10 stats; ``instance`` / ``keypoint``: the pairs used; ``evaluation``: the
    evaluator's ``CocoEvalResult`` on the original scores."""

    metrics: dict[str, Any]
    curves: dict[str, Any]
    coco: dict[str, float]
    instance: InstancePairs
    keypoint: KeypointPairs
    notes: list[str] = field(default_factory=list)
    evaluation: Any = None


def _set(out: dict[str, Any], key: str, fn: Callable[[], float]) -> float | None:
    """``out[key] = fn()``; on :class:`MetricUndefined` (or a non-finite value) ``None`` + ``key_reason``."""
    try:
        v = float(fn())
    except M.MetricUndefined as e:
        out[key], out[key + "_reason"] = None, e.reason
        return None
    if not math.isfinite(v):
        out[key], out[key + "_reason"] = None, "not finite"
        return None
    out[key] = v
    return v


def _ap(stats: dict[str, float], key: str, n_det: int = 1) -> float:
    v = float(stats[key])
    if v < 0:  # pycocotools' -1: nothing to evaluate
        raise M.MetricUndefined("no detections" if n_det == 0 else "no labelled ground truth to evaluate")
    return v


def _pr(ev: Any, t: int) -> np.ndarray:
    """Precision at the 101 recall thresholds for threshold index t, area 'all', largest maxDets."""
    p = np.asarray(ev.precision, dtype=np.float64)[t, :, 0, 0, -1].copy()
    p[p < 0] = np.nan
    return p


def _threshold_index(ev: Any, thr: float) -> int:
    thrs = getattr(ev, "iou_thrs", None)
    if thrs is None:
        thrs = getattr(ev, "oks_thrs", None)
    if thrs is None:
        thrs = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
    return int(np.argmin(np.abs(np.asarray(thrs) - thr)))


def run_audit(
    gt: Any,
    res: Any,
    ev: Any = None,
    *,
    sigmas: np.ndarray | None = None,
    n_random: int = 5,
    seed: int = 0,
    n_bins: int = 15,
    pck_alpha: float = 0.1,
    evaluate_kwargs: dict[str, Any] | None = None,
) -> Audit:
    """Run the calibration audit of results ``res`` against ground truth ``gt`` (``posecal.io.coco`` objects).

    ``ev``: the evaluator's result on (gt, res) if already computed. Re-runs the evaluator with oracle
    confidence (each detection's OKS with its best-matching gt, :func:`best_oks`) and with ``n_random``
    seeded uniform random confidences (seeds ``seed .. seed+n_random-1``; the mean AP is reported),
    the two bounds of the paper's Fig. 1. ECE uses ``n_bins`` bins; AUSE-PCK uses PCK@``pck_alpha``
    normalised by the gt box's longer side. AP/AR are fractions in [0, 1] as pycocotools reports them.
    """
    from posecal.metrics.cocoeval import evaluate

    kw = dict(evaluate_kwargs or {})
    if sigmas is None:
        ks = getattr(gt, "keypoint_set", None)
        if ks is None:
            raise PosecalInputError(
                "unknown keypoint set (categories[0].keypoints not recognised); pass OKS sigmas",
                getattr(gt, "path", None),
                None,
                "categories",
            )
        sigmas = ks.sigmas
    sigmas = np.asarray(sigmas, dtype=np.float64)
    kw.setdefault("sigmas", sigmas)
    if kw.get("keypoints") is not None:
        raise PosecalInputError(
            "the calibration audit evaluates all keypoints (no part subset)", None, None, "keypoints"
        )
    # the area the evaluator uses for OKS: gt 'area', or 0.53·w·h of the gt box with use_area=False
    gt_area = None if kw.get("use_area", True) else 0.53 * gt.bbox[:, 2] * gt.bbox[:, 3]
    if ev is None:
        ev = evaluate(gt, res, **kw)
    n_det = int(np.asarray(res.score).size)
    m: dict[str, Any] = {"pairs": PAIRS_DOC}
    curves: dict[str, Any] = {}
    notes: list[str] = []

    # --- mAP, mAR, gap; oracle and random bounds (Fig. 1) ---------------------------------------
    stats = {k: float(v) for k, v in ev.stats.items()}
    ap = _set(m, "mAP", lambda: _ap(stats, "AP", n_det))
    ar = _set(m, "mAR", lambda: _ap(stats, "AR", n_det))
    if ap is not None and ar is not None:
        m["gap"] = ar - ap
    else:
        m["gap"], m["gap_reason"] = None, m.get("mAP_reason") or m.get("mAR_reason")
    t50, t75 = _threshold_index(ev, 0.5), _threshold_index(ev, 0.75)
    curves["recall"] = np.linspace(0.0, 1.0, 101)
    curves["pr"] = {"original": {0.5: _pr(ev, t50), 0.75: _pr(ev, t75)}}
    cat = None
    cats = np.unique(np.asarray(res.category_id)) if n_det else np.array([])
    if cats.size == 1:
        cat = int(cats[0])
    # also for empty results: the AP of nothing is 0, as pycocotools reports it
    oracle_scores = best_oks(gt, res, sigmas, category_id=cat, gt_area=gt_area)
    ev_o = evaluate(gt, res, scores=oracle_scores, **kw)
    _set(m, "oracle_AP", lambda: _ap(ev_o.stats, "AP"))
    _set(m, "oracle_AP50", lambda: _ap(ev_o.stats, "AP50"))
    curves["pr"]["oracle"] = {0.5: _pr(ev_o, t50), 0.75: _pr(ev_o, t75)}
    rand_ap, pr50, pr75 = [], [], []
    for s in progress(range(n_random), desc="random-confidence AP"):
        rs = np.random.default_rng(seed + s).random(n_det)
        ev_r = evaluate(gt, res, scores=rs, **kw)
        rand_ap.append(float(ev_r.stats["AP"]))
        pr50.append(_pr(ev_r, t50))
        pr75.append(_pr(ev_r, t75))
    m["random_seeds"] = [seed, seed + n_random - 1] if n_random else None
    if n_random == 0:
        m["random_AP"], m["random_AP_reason"] = None, "n_random = 0"
    elif min(rand_ap) < 0:
        m["random_AP"], m["random_AP_reason"] = None, "no labelled ground truth to evaluate"
    else:
        m["random_AP"] = float(np.mean(rand_ap))
        m["random_AP_std"] = float(np.std(rand_ap))
        with np.errstate(all="ignore"):
            curves["pr"]["random"] = {0.5: np.mean(pr50, axis=0), 0.75: np.mean(pr75, axis=0)}

    # --- pairs ------------------------------------------------------------------------------------
    inst = instance_pairs(ev, res)
    kp = keypoint_pairs(inst, gt, res, sigmas, pck_alpha=pck_alpha, gt_area=gt_area)
    lab = kp.labelled
    k_score, k_oks, k_pck = kp.score[lab], kp.oks[lab], kp.pck[lab]
    m["n_detections"] = n_det
    m["n_instance_pairs"] = len(inst)
    m["n_matched"] = int((inst.gt_index >= 0).sum())
    m["n_keypoint_pairs"] = int(lab.sum())
    m["mean_oks_instance"] = float(inst.oks.mean()) if len(inst) else None
    m["mean_confidence_instance"] = float(inst.confidence.mean()) if len(inst) else None
    if len(inst) and (inst.confidence > 1).any():
        notes.append(f"{int((inst.confidence > 1).sum())} instance scores above 1 (kept as is)")

    # --- correlation (Table 5) ----------------------------------------------------------------------
    _set(m, "pearson_instance", lambda: M.pearson(inst.confidence, inst.oks))
    _set(m, "pearson_keypoint", lambda: M.pearson(k_score, k_oks))
    _set(m, "spearman_instance", lambda: M.spearman(inst.confidence, inst.oks))
    _set(m, "spearman_keypoint", lambda: M.spearman(k_score, k_oks))

    # --- AUSE (Tables 4, 5): error 1 - OKS and 1 - PCK ---------------------------------------------
    inst_pck = np.zeros(len(inst))
    matched = inst.gt_index >= 0
    if lab.size:
        scored = ~np.isnan(kp.pck)
        n_scored = scored.sum(axis=1)
        inst_pck[matched] = np.where(n_scored > 0, np.nansum(kp.pck, axis=1) / np.maximum(n_scored, 1), 0.0)
    k_pck_ok = ~np.isnan(k_pck)
    sp = {}
    for key, conf, err in (
        ("ause_instance", inst.confidence, 1.0 - inst.oks),
        ("ause_keypoint", k_score, 1.0 - k_oks),
        ("ause_instance_pck", inst.confidence, 1.0 - inst_pck),
        ("ause_keypoint_pck", k_score[k_pck_ok], 1.0 - k_pck[k_pck_ok]),
    ):
        try:
            s = M.sparsification(conf, err)
        except M.MetricUndefined as e:
            m[key], m[key + "_reason"] = None, e.reason
            continue
        m[key] = s.ause
        m[key + "_max"] = s.ause_max
        sp[key] = s
    m["ause_units"] = "error in [0,1] (1-OKS or 1-PCK), curves not normalised by the full-set error"
    m["pck_alpha"] = pck_alpha
    m["pck_normaliser"] = "max(w, h) of the matched gt bbox"
    curves["sparsification"] = sp
    m["sparsification"] = {k: v.to_dict(points=21) for k, v in sp.items()}  # resampled for JSON

    # --- ECE / MCE against the continuous OKS; AURC ----------------------------------------------
    rel = {}
    for key, conf, tgt, binning in (
        ("ece", inst.confidence, inst.oks, "width"),
        ("ece_mass", inst.confidence, inst.oks, "mass"),
        ("ece_keypoint", k_score, k_oks, "width"),
    ):
        try:
            r = M.calibration_error(conf, tgt, n_bins=n_bins, binning=binning)
        except M.MetricUndefined as e:
            m[key], m[key + "_reason"] = None, e.reason
            m["m" + key[1:]] = None
            continue
        m[key], m["m" + key[1:]] = r.ece, r.mce
        rel[key] = r
    m["ece_bins"] = n_bins
    m["reliability"] = {k: r.to_dict() for k, r in rel.items()}
    curves["reliability"] = rel
    curves["instance_confidence"] = inst.confidence
    _set(m, "aurc", lambda: M.aurc(inst.confidence, 1.0 - inst.oks))
    _set(m, "aurc_keypoint", lambda: M.aurc(k_score, 1.0 - k_oks))

    # --- visibility ------------------------------------------------------------------------------
    vis: dict[str, Any] = {}
    if kp.visibility is None:
        for k in ("auroc", "ap", "brier"):
            vis[k], vis[k + "_reason"] = None, "results carry no 'visibility'"
    else:
        p, y = kp.visibility.ravel(), (kp.gt_v > 0).ravel().astype(float)
        _set(vis, "auroc", lambda: M.auroc(p, y))
        if y.size and (y.min() == y.max()):  # one class only: AP is trivially 1 (or 0), Brier says nothing
            for k in ("ap", "brier"):
                vis[k], vis[k + "_reason"] = None, "only one class in the labels"
        else:
            _set(vis, "ap", lambda: M.average_precision_binary(p, y))
            _set(vis, "brier", lambda: M.brier(p, y))
    s_all, y_all = kp.score.ravel(), (kp.gt_v > 0).ravel().astype(float)
    _set(vis, "auroc_keypoint_score", lambda: M.auroc(s_all, y_all))
    vis["target"] = "gt v > 0 (labelled), over all keypoints of matched detections"
    m["visibility"] = vis

    # --- keypoint score by gt visibility (Fig. 4a) -------------------------------------------------
    groups = {"visible (v=2)": 2, "occluded (v=1)": 1, "unlabelled (v=0)": 0}
    dist: dict[str, Any] = {}
    by_v = {}
    for name, v in groups.items():
        x = kp.score[kp.gt_v == v]
        by_v[name] = x
        dist[name] = {
            "count": int(x.size),
            "mean": float(x.mean()) if x.size else None,
            "median": float(np.median(x)) if x.size else None,
            "frac_above_0.5": float((x > 0.5).mean()) if x.size else None,
        }
    m["keypoint_score_by_visibility"] = dist
    curves["score_by_visibility"] = by_v
    # a clearer reason than "no pairs" for empty inputs
    why = (
        "no detections"
        if n_det == 0
        else (
            "no detection matched a gt at OKS 0.50" if len(inst) else "no detection counted by the evaluator"
        )
    )
    for d in (m, vis):
        for k, v in list(d.items()):
            if k.endswith("_reason") and v == "no pairs":
                d[k] = why
    if notes:
        m["notes"] = notes
    return Audit(metrics=m, curves=curves, coco=stats, instance=inst, keypoint=kp, notes=notes, evaluation=ev)


def _v(m: dict[str, Any], key: str, digits: int = 3) -> str:
    v = m.get(key)
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}"


def summary_rows(m: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(label, value, note)`` rows of the terminal summary, in reading order."""
    vis = m.get("visibility", {})
    rows = [
        ("mAP / mAR", f"{_v(m, 'mAP')} / {_v(m, 'mAR')}", "COCO keypoint AP, AR (OKS .50:.95)"),
        ("gap mAR − mAP", _v(m, "gap"), "0 = confidence ranks as well as it can"),
        ("AP oracle / random", f"{_v(m, 'oracle_AP')} / {_v(m, 'random_AP')}", "conf = OKS / seeded uniform"),
        ("Pearson inst / kpt", f"{_v(m, 'pearson_instance')} / {_v(m, 'pearson_keypoint')}", "1 = linear"),
        (
            "Spearman inst / kpt",
            f"{_v(m, 'spearman_instance')} / {_v(m, 'spearman_keypoint')}",
            "1 = same order",
        ),
        (
            "AUSE inst / kpt",
            f"{_v(m, 'ause_instance', 4)} / {_v(m, 'ause_keypoint', 4)}",
            "1 − OKS; 0 = oracle",
        ),
        (
            "ECE / MCE",
            f"{_v(m, 'ece')} / {_v(m, 'mce')}",
            f"vs mean OKS, {m.get('ece_bins')} equal-width bins",
        ),
        ("AURC", _v(m, "aurc", 4), "risk 1 − OKS over coverage; lower is better"),
        ("visibility AUROC", _v(vis, "auroc"), vis.get("auroc_reason") or "predicted visibility vs gt v > 0"),
    ]
    by_reason: dict[str, list[str]] = {}
    for k in PRIMARY_KEYS:
        if m.get(k) is None and m.get(k + "_reason"):
            by_reason.setdefault(m[k + "_reason"], []).append(k)
    if by_reason:
        parts = [
            f"{r}: {', '.join(ks) if len(ks) <= 2 else f'{len(ks)} metrics'}" for r, ks in by_reason.items()
        ]
        rows.append(("n/a because", "", "; ".join(parts)))
    return rows


def format_summary(m: dict[str, Any]) -> str:
    """Plain-text table of :func:`summary_rows` (what ``posecal evaluate --report`` prints)."""
    rows = summary_rows(m)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    head = (
        f"calibration audit: {m.get('n_instance_pairs', 0)} detections counted, "
        f"{m.get('n_matched', 0)} matched at OKS 0.50, {m.get('n_keypoint_pairs', 0)} labelled keypoints"
    )
    lines = [head] + [f"  {a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)
