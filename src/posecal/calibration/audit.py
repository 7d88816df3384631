"""The whole calibration audit of one results file: evaluator matches → pairs → metrics → JSON + plot data.

``run_audit(gt, res)`` returns an :class:`Audit` whose ``metrics`` is the JSON-ready ``"calibration"``
block (no NaN anywhere: an undefined value is ``None`` with a ``<key>_reason`` string next to it) and
whose ``curves`` holds the arrays the report plots. numpy/scipy only; matplotlib lives in ``report``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from posecal._util import progress
from posecal.calibration import metrics as M
from posecal.calibration.pairs import (
    InstancePairs,
    KeypointPairs,
    best_match,
    instance_pairs,
    keypoint_pairs,
    oracle_oks,
    person_keypoint_pairs,
)
from posecal.errors import PosecalInputError

NO_GT = "no labelled ground truth to evaluate"
"""The reason given for every metric when the ground truth holds no person with a labelled keypoint."""

if TYPE_CHECKING:
    from posecal.io.coco import CocoGroundTruth, CocoResults
    from posecal.metrics.cocoeval import CocoEvalResult

__all__ = [
    "Audit",
    "PAIRS_DOC",
    "PRIMARY_KEYS",
    "aurc_metrics",
    "ause_metrics",
    "calibration_error_metrics",
    "correlation_metrics",
    "evaluator_gt_area",
    "explain_no_pairs",
    "format_summary",
    "instance_pck",
    "keypoint_threshold_metrics",
    "oracle_bound",
    "pair_counts",
    "random_bound",
    "ranking_metrics",
    "resolve_sigmas",
    "run_audit",
    "score_by_visibility",
    "summary_rows",
    "visibility_metrics",
]

THRESHOLD_TARGETS = (0.90, 0.95, 0.98)
"""Shares of correct keypoints (keypoint OKS >= :data:`CORRECT_OKS`) for which the audit reports the threshold."""
CORRECT_OKS = 0.5
"""A keypoint is *correct* for the thresholds when its OKS term (Eq. 7) reaches COCO's loosest threshold."""

PAIRS_DOC = (
    "instance: every detection counted at OKS 0.50 (within maxDets=20, not matched to an ignored gt); "
    "confidence = instance score, accuracy = OKS with its greedily matched gt at threshold 0.50, 0 if "
    "unmatched. keypoint: the matched detections only; keypoint score vs per-keypoint OKS with the "
    "matched gt (gt v > 0 entries); visibility metrics use all entries with target gt v > 0."
)

# primary keys of the "calibration" block (the terminal summary and the report headline); the rest is detail
PRIMARY_KEYS = (
    "mAP", "mAR", "gap", "oracle_AP", "random_AP", "pearson_instance", "pearson_keypoint",
    "spearman_instance", "ause_instance", "ause_keypoint", "ece", "aurc",
)  # fmt: skip


@dataclass
class Audit:
    """``metrics``: JSON-ready dict (the ``"calibration"`` block); ``curves``: plot data (numpy arrays);
    ``coco``: the evaluator's 10 stats; ``instance`` / ``keypoint``: the pairs used; ``evaluation``: the
    evaluator's ``CocoEvalResult`` on the original scores."""

    metrics: dict[str, object]
    curves: dict[str, object]
    coco: dict[str, float]
    instance: InstancePairs
    keypoint: KeypointPairs
    notes: list[str] = field(default_factory=list)
    evaluation: CocoEvalResult | None = None


def _set(out: dict[str, object], key: str, fn: Callable[[], float]) -> float | None:
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
        raise M.MetricUndefined("no detections" if n_det == 0 else NO_GT)
    return v


def _pr(ev: CocoEvalResult, t: int) -> np.ndarray:
    """Precision at the 101 recall thresholds for threshold index t, area 'all', largest maxDets."""
    p = np.asarray(ev.precision, dtype=np.float64)[t, :, 0, 0, -1].copy()
    p[p < 0] = np.nan
    return p


def _threshold_index(ev: CocoEvalResult, thr: float) -> int:
    thrs = getattr(ev, "iou_thrs", None)
    if thrs is None:
        thrs = getattr(ev, "oks_thrs", None)
    if thrs is None:
        thrs = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
    return int(np.argmin(np.abs(np.asarray(thrs) - thr)))


def resolve_sigmas(gt: CocoGroundTruth, sigmas: ArrayLike | None) -> np.ndarray:
    """The OKS constants ``(K,)``: ``sigmas`` if given, else those of ``gt``'s keypoint set.

    Raises :class:`PosecalInputError` when ``gt``'s keypoint set is not recognised and none is given.
    """
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
    return np.asarray(sigmas, dtype=np.float64)


def evaluator_gt_area(gt: CocoGroundTruth, evaluate_kwargs: dict[str, object]) -> np.ndarray | None:
    """The area the evaluator uses for OKS: ``None`` (gt 'area') or ``0.53 w h`` of the gt box
    (``use_area=False``), ``(G,)`` image px²."""
    return None if evaluate_kwargs.get("use_area", True) else 0.53 * gt.bbox[:, 2] * gt.bbox[:, 3]


def ranking_metrics(stats: dict[str, float], n_det: int) -> dict[str, object]:
    """``mAP``, ``mAR`` and ``gap = mAR - mAP`` (paper Eqs. 8-9) from the evaluator's stats."""
    m: dict[str, object] = {}
    ap = _set(m, "mAP", lambda: _ap(stats, "AP", n_det))
    ar = _set(m, "mAR", lambda: _ap(stats, "AR", n_det))
    if ap is not None and ar is not None:
        m["gap"] = ar - ap
    else:
        m["gap"], m["gap_reason"] = None, m.get("mAP_reason") or m.get("mAR_reason")
    return m


def oracle_bound(
    gt: CocoGroundTruth,
    res: CocoResults,
    sigmas: np.ndarray,
    evaluate_kwargs: dict[str, object],
    gt_area: np.ndarray | None,
    thr_index: tuple[int, int],
    *,
    oracle_scores: np.ndarray | None = None,
) -> tuple[dict[str, object], dict[float, np.ndarray]]:
    """AP with oracle confidence (:func:`posecal.calibration.pairs.oracle_oks`: each person's one matched
    detection scored by its OKS, duplicates and false positives 0): the upper bound of the paper's Fig. 1.
    Returns ``({"oracle_AP", "oracle_AP50"}, {0.5: pr, 0.75: pr})``; ``thr_index``
    are the OKS-threshold indices of 0.5 and 0.75, each ``pr`` is precision ``(101,)`` over recall.
    ``oracle_scores (D,)``: that confidence if already computed (``run_audit`` shares the assignment with the
    keypoint thresholds)."""
    from posecal.metrics.cocoeval import evaluate

    # also for empty results: the AP of nothing is 0, as pycocotools reports it
    if oracle_scores is None:
        oracle_scores = oracle_oks(gt, res, sigmas, category_id=_single_category(res), gt_area=gt_area)
    ev_o = evaluate(gt, res, scores=oracle_scores, **evaluate_kwargs)
    m: dict[str, object] = {}
    _set(m, "oracle_AP", lambda: _ap(ev_o.stats, "AP"))
    _set(m, "oracle_AP50", lambda: _ap(ev_o.stats, "AP50"))
    return m, {0.5: _pr(ev_o, thr_index[0]), 0.75: _pr(ev_o, thr_index[1])}


def _keypoint_names(gt: CocoGroundTruth, K: int) -> list[str] | None:
    """The K keypoint names: the gt's keypoint set's, else its first category's ``keypoints`` (None if neither
    has K)."""
    ks = getattr(gt, "keypoint_set", None)
    if ks is not None and ks.num_keypoints == K:
        return list(ks.names)
    names = (gt.categories[0].get("keypoints") if gt.categories else None) or []
    return [str(n) for n in names] if len(names) == K else None


def _single_category(res: CocoResults) -> int | None:
    """The results' category id when they hold exactly one, else None (every category)."""
    cats = np.unique(np.asarray(res.category_id)) if np.asarray(res.score).size else np.array([])
    return int(cats[0]) if cats.size == 1 else None


def random_bound(
    gt: CocoGroundTruth,
    res: CocoResults,
    evaluate_kwargs: dict[str, object],
    n_random: int,
    seed: int,
    thr_index: tuple[int, int],
) -> tuple[dict[str, object], dict[float, np.ndarray] | None]:
    """Mean AP over ``n_random`` seeded uniform random confidences (seeds ``seed .. seed+n_random-1``): the
    lower bound of the paper's Fig. 1. Returns the ``random_*`` keys and the mean precision curves
    ``{0.5: (101,), 0.75: (101,)}`` (``None`` when undefined)."""
    from posecal.metrics.cocoeval import evaluate

    n_det = int(np.asarray(res.score).size)
    rand_ap, pr50, pr75 = [], [], []
    for s in progress(range(n_random), desc="random-confidence AP"):
        rs = np.random.default_rng(seed + s).random(n_det)
        ev_r = evaluate(gt, res, scores=rs, **evaluate_kwargs)
        rand_ap.append(float(ev_r.stats["AP"]))
        pr50.append(_pr(ev_r, thr_index[0]))
        pr75.append(_pr(ev_r, thr_index[1]))
    m: dict[str, object] = {"random_seeds": [seed, seed + n_random - 1] if n_random else None}
    if n_random == 0:
        m["random_AP"], m["random_AP_reason"] = None, "n_random = 0"
        return m, None
    if min(rand_ap) < 0:
        m["random_AP"], m["random_AP_reason"] = None, NO_GT
        return m, None
    m["random_AP"] = float(np.mean(rand_ap))
    m["random_AP_std"] = float(np.std(rand_ap))
    with np.errstate(all="ignore"):
        return m, {0.5: np.mean(pr50, axis=0), 0.75: np.mean(pr75, axis=0)}


def pair_counts(inst: InstancePairs, kp: KeypointPairs, n_det: int) -> tuple[dict[str, object], list[str]]:
    """How many detections, matched pairs and labelled keypoints the audit uses, their mean OKS and
    confidence; notes on legal-but-unusual input (instance scores above 1)."""
    notes: list[str] = []
    m: dict[str, object] = {
        "n_detections": n_det,
        "n_instance_pairs": len(inst),
        "n_matched": int((inst.gt_index >= 0).sum()),
        "n_keypoint_pairs": int(kp.labelled.sum()),
        "mean_oks_instance": float(inst.oks.mean()) if len(inst) else None,
        "mean_confidence_instance": M.finite_mean(inst.confidence) if len(inst) else None,
    }
    if len(inst) and (inst.confidence > 1).any():
        notes.append(f"{int((inst.confidence > 1).sum())} instance scores above 1 (kept as is)")
    return m, notes


def correlation_metrics(inst: InstancePairs, kp: KeypointPairs) -> dict[str, object]:
    """Pearson and Spearman correlation of confidence with OKS, instance and keypoint level (Table 5)."""
    lab = kp.labelled
    k_score, k_oks = kp.score[lab], kp.oks[lab]
    m: dict[str, object] = {}
    _set(m, "pearson_instance", lambda: M.pearson(inst.confidence, inst.oks))
    _set(m, "pearson_keypoint", lambda: M.pearson(k_score, k_oks))
    _set(m, "spearman_instance", lambda: M.spearman(inst.confidence, inst.oks))
    _set(m, "spearman_keypoint", lambda: M.spearman(k_score, k_oks))
    return m


def instance_pck(inst: InstancePairs, kp: KeypointPairs) -> np.ndarray:
    """``(len(inst),)`` mean PCK of each counted detection over its scored keypoints; 0 when unmatched or
    when none is scored."""
    out = np.zeros(len(inst))
    matched = inst.gt_index >= 0
    if kp.labelled.size:
        scored = ~np.isnan(kp.pck)
        n_scored = scored.sum(axis=1)
        out[matched] = np.where(n_scored > 0, np.nansum(kp.pck, axis=1) / np.maximum(n_scored, 1), 0.0)
    return out


def ause_metrics(
    inst: InstancePairs, kp: KeypointPairs, pck_alpha: float
) -> tuple[dict[str, object], dict[str, M.Sparsification]]:
    """AUSE (Tables 4, 5) of confidence against the errors ``1 - OKS`` and ``1 - PCK@pck_alpha``, instance
    and keypoint level. Returns the JSON keys and the sparsification curves by key."""
    lab = kp.labelled
    k_score, k_oks, k_pck = kp.score[lab], kp.oks[lab], kp.pck[lab]
    inst_pck = instance_pck(inst, kp)
    k_pck_ok = ~np.isnan(k_pck)
    m: dict[str, object] = {}
    sp: dict[str, M.Sparsification] = {}
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
    m["sparsification"] = {k: v.to_dict(points=21) for k, v in sp.items()}  # resampled for JSON
    return m, sp


def calibration_error_metrics(
    inst: InstancePairs, kp: KeypointPairs, n_bins: int
) -> tuple[dict[str, object], dict[str, M.Reliability]]:
    """ECE / MCE of confidence against the continuous OKS (equal-width and equal-mass bins, instance and
    keypoint level). Returns the JSON keys and the reliability diagrams by key."""
    lab = kp.labelled
    k_score, k_oks = kp.score[lab], kp.oks[lab]
    m: dict[str, object] = {}
    rel: dict[str, M.Reliability] = {}
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
        if not (math.isfinite(r.ece) and math.isfinite(r.mce)):  # never a null without its reason
            m[key], m[key + "_reason"], m["m" + key[1:]] = None, "not finite", None
            continue
        m[key], m["m" + key[1:]] = r.ece, r.mce
        rel[key] = r
    m["ece_bins"] = n_bins
    m["reliability"] = {k: r.to_dict() for k, r in rel.items()}
    return m, rel


def aurc_metrics(inst: InstancePairs, kp: KeypointPairs) -> dict[str, object]:
    """Area under the risk-coverage curve with risk ``1 - OKS``, instance and keypoint level."""
    lab = kp.labelled
    m: dict[str, object] = {}
    _set(m, "aurc", lambda: M.aurc(inst.confidence, 1.0 - inst.oks))
    _set(m, "aurc_keypoint", lambda: M.aurc(kp.score[lab], 1.0 - kp.oks[lab]))
    return m


def _threshold_rows(c: np.ndarray, correct: np.ndarray, targets: Sequence[float]) -> list[dict[str, object]]:
    """:func:`posecal.calibration.metrics.threshold_at_precision` for each target, JSON-ready (null + reason)."""
    rows: list[dict[str, object]] = []
    for t in targets:
        try:
            r = M.threshold_at_precision(c, correct, t).to_dict()
        except M.MetricUndefined as e:
            why = e.reason if c.size else "no labelled keypoint of a detection matched to a person"
            # the same keys as a reached target (pipelines index them): no threshold keeps nothing, as compare
            # counts it; with no pairs at all the share is undefined
            r = {"target": float(t), "threshold": None, "kept": 0.0 if c.size else None, "precision": None,
                 "n_kept": 0, "n": int(c.size), "threshold_reason": why}
        rows.append(r)
    return rows


def keypoint_threshold_metrics(kp: KeypointPairs, targets: Sequence[float] = THRESHOLD_TARGETS,
                               names: Sequence[str] | None = None) -> dict[str, object]:
    """For practitioners who drop keypoints below a confidence threshold: for each required share of
    correct keypoints (``targets``; correct = keypoint OKS >= :data:`CORRECT_OKS`), the threshold on the
    keypoint confidence that keeps the most keypoints with at least that share correct among them, the share
    kept and the share correct (:func:`posecal.calibration.metrics.threshold_at_precision`). ``kp``: the labelled
    keypoints of every detection that is some person's (:func:`posecal.calibration.pairs.person_keypoint_pairs`:
    poorly localised people included). ``"per_keypoint"``: the same for each keypoint type alone (``names``,
    K of them; default ``kp0`` …), with its count, share correct and mean confidence — a per-joint threshold.
    The choice is empirical on these pairs: fit it on validation data, not on the data it will be judged on."""
    lab = kp.labelled
    correct_all = kp.oks >= CORRECT_OKS
    c, correct = kp.score[lab], correct_all[lab]
    K = kp.score.shape[1] if kp.score.ndim == 2 else 0
    names = list(names) if names is not None and len(names) == K else [f"kp{k}" for k in range(K)]
    per = []
    for k in range(K):
        m = lab[:, k]
        ck, ok = kp.score[m, k], correct_all[m, k]
        per.append({"keypoint": names[k], "n": int(m.sum()), "share_correct": float(ok.mean()) if m.any() else None,
                    "mean_confidence": M.finite_mean(ck) if m.any() else None,
                    "targets": _threshold_rows(ck, ok, targets)})
    return {"correct": f"keypoint OKS >= {CORRECT_OKS:g}", "n_keypoints": int(c.size),
            "share_correct": float(correct.mean()) if c.size else None,
            "pairs": "the labelled keypoints of every detection matched one to one to a person of its image and "
                     "category (greedy by OKS, any OKS > 0): poorly localised people included; a detection left "
                     "without a person (a duplicate, a false positive where every person has a better match) left "
                     "out, a false positive where a person was missed counted (its keypoints incorrect)",
            "targets": _threshold_rows(c, correct, targets), "per_keypoint": per}


def visibility_metrics(kp: KeypointPairs) -> dict[str, object]:
    """Predicted visibility (when the results carry it) and the raw keypoint score as detectors of
    ``gt v > 0``: AUROC, AP and Brier score."""
    vis: dict[str, object] = {}
    if kp.visibility is None:
        for k in ("auroc", "ap", "brier"):
            vis[k], vis[k + "_reason"] = None, "results carry no 'visibility'"
    else:
        p, y = kp.visibility.ravel(), (kp.gt_v > 0).ravel().astype(float)
        _set(vis, "auroc", lambda: M.auroc(p, y))
        if y.size and (y.min() == y.max()):  # one class only: AP is trivially 1 (or 0), Brier says nothing
            for k in ("ap", "brier"):
                vis[k], vis[k + "_reason"] = None, _one_class(y)
        else:
            _set(vis, "ap", lambda: M.average_precision_binary(p, y))
            _set(vis, "brier", lambda: M.brier(p, y))
    s_all, y_all = kp.score.ravel(), (kp.gt_v > 0).ravel().astype(float)
    _set(vis, "auroc_keypoint_score", lambda: M.auroc(s_all, y_all))
    for k in ("auroc", "auroc_keypoint_score"):  # say which class is missing, not just that one is
        if vis.get(k) is None and vis.get(k + "_reason") == "only one class in the labels":
            vis[k + "_reason"] = _one_class(y_all)
    vis["target"] = "gt v > 0 (labelled), over all keypoints of matched detections"
    return vis


def _one_class(y: np.ndarray) -> str:
    """Why a v > 0 detector cannot be scored on these keypoints."""
    if y.size and y.min() > 0:
        return ("every keypoint of the matched detections is labelled (gt v > 0): no unlabelled (v = 0) "
                "keypoint to tell apart (e.g. LSP labels all 14 joints)")
    return "no keypoint of the matched detections is labelled (gt v > 0)"


def score_by_visibility(kp: KeypointPairs) -> tuple[dict[str, dict[str, object]], dict[str, np.ndarray]]:
    """Keypoint score distribution by gt visibility (Fig. 4a): summary stats and the raw scores per group."""
    groups = {"visible (v=2)": 2, "occluded (v=1)": 1, "unlabelled (v=0)": 0}
    dist: dict[str, dict[str, object]] = {}
    by_v = {}
    for name, v in groups.items():
        x = kp.score[kp.gt_v == v]
        by_v[name] = x
        dist[name] = {
            "count": int(x.size),
            "mean": M.finite_mean(x) if x.size else None,  # scores near ±1.8e308: no overflow
            "median": M.finite_median(x) if x.size else None,
            "frac_above_0.5": float((x > 0.5).mean()) if x.size else None,
        }
        if not x.size:
            dist[name]["_reason"] = f"no {name.split(' ')[0]} keypoint among the matched detections"
    return dist, by_v


def explain_no_pairs(blocks: Sequence[dict[str, object]], n_det: int, n_pairs: int,
                     why: str | None = None) -> None:
    """Replace the metrics' generic reason ``"no pairs"`` by why there are none (in place); ``why``: a reason
    known to the caller (e.g. :data:`NO_GT`)."""
    why = why or (
        "no detections"
        if n_det == 0
        else (
            "no detection matched a gt at OKS 0.50" if n_pairs else "no detection counted by the evaluator"
        )
    )
    for d in blocks:
        for k, v in list(d.items()):
            if k.endswith("_reason") and v == "no pairs":
                d[k] = why


def run_audit(
    gt: CocoGroundTruth,
    res: CocoResults,
    ev: CocoEvalResult | None = None,
    *,
    sigmas: ArrayLike | None = None,
    n_random: int = 5,
    seed: int = 0,
    n_bins: int = 15,
    pck_alpha: float = 0.1,
    evaluate_kwargs: dict[str, object] | None = None,
) -> Audit:
    """Run the calibration audit of results ``res`` against ground truth ``gt`` (``posecal.io.coco`` objects).

    ``ev``: the evaluator's result on (gt, res) if already computed. Re-runs the evaluator with oracle
    confidence (:func:`posecal.calibration.pairs.oracle_oks`) and with ``n_random``
    seeded uniform random confidences (seeds ``seed .. seed+n_random-1``; the mean AP is reported),
    the two bounds of the paper's Fig. 1. ECE uses ``n_bins`` bins; AUSE-PCK uses PCK@``pck_alpha``
    normalised by the gt box's longer side. AP/AR are fractions in [0, 1] as pycocotools reports them.

    Stages, each a function of this module: :func:`ranking_metrics`, :func:`oracle_bound`,
    :func:`random_bound`, the pairs (:func:`instance_pairs`, :func:`keypoint_pairs`), :func:`pair_counts`,
    :func:`correlation_metrics`, :func:`ause_metrics`, :func:`calibration_error_metrics`,
    :func:`aurc_metrics`, :func:`keypoint_threshold_metrics` (on
    :func:`posecal.calibration.pairs.person_keypoint_pairs`), :func:`visibility_metrics`,
    :func:`score_by_visibility`, :func:`explain_no_pairs`.
    """
    from posecal.metrics.cocoeval import evaluate

    kw = dict(evaluate_kwargs or {})
    sigmas = resolve_sigmas(gt, sigmas)
    kw.setdefault("sigmas", sigmas)
    if kw.get("keypoints") is not None:
        raise PosecalInputError(
            "the calibration audit evaluates all keypoints (no part subset)", None, None, "keypoints"
        )
    gt_area = evaluator_gt_area(gt, kw)
    if ev is None:
        ev = evaluate(gt, res, **kw)
    n_det = int(np.asarray(res.score).size)
    m: dict[str, object] = {"pairs": PAIRS_DOC}
    curves: dict[str, object] = {}

    # --- mAP, mAR, gap; oracle and random bounds (Fig. 1) ---------------------------------------
    stats = {k: float(v) for k, v in ev.stats.items()}
    m.update(ranking_metrics(stats, n_det))
    thr = (_threshold_index(ev, 0.5), _threshold_index(ev, 0.75))
    curves["recall"] = np.linspace(0.0, 1.0, 101)
    pr: dict[str, dict[float, np.ndarray]] = {"original": {0.5: _pr(ev, thr[0]), 0.75: _pr(ev, thr[1])}}
    curves["pr"] = pr
    person = best_match(gt, res, sigmas, _single_category(res), gt_area, one_to_one=True)  # oracle_oks + gt rows
    m_o, pr["oracle"] = oracle_bound(gt, res, sigmas, kw, gt_area, thr, oracle_scores=person[0])
    m.update(m_o)
    m_r, pr_r = random_bound(gt, res, kw, n_random, seed, thr)
    m.update(m_r)
    if pr_r is not None:
        pr["random"] = pr_r

    # --- pairs and the metrics over them ----------------------------------------------------------
    inst = instance_pairs(ev, res)
    no_gt = NO_GT if m.get("mAP") is None and m.get("mAP_reason") == NO_GT else None
    if no_gt:  # every detection would pair with OKS 0: calibration against nothing, not a perfect ranking
        none = np.zeros(0, np.int64)
        inst = InstancePairs(det_index=none, gt_index=none, confidence=np.zeros(0), oks=np.zeros(0))
    kp = keypoint_pairs(inst, gt, res, sigmas, pck_alpha=pck_alpha, gt_area=gt_area)
    m_c, notes = pair_counts(inst, kp, n_det)
    m.update(m_c)
    m.update(correlation_metrics(inst, kp))
    m_s, curves["sparsification"] = ause_metrics(inst, kp, pck_alpha)
    m.update(m_s)
    m_e, curves["reliability"] = calibration_error_metrics(inst, kp, n_bins)
    m.update(m_e)
    curves["instance_confidence"] = inst.confidence
    m.update(aurc_metrics(inst, kp))
    m["keypoint_thresholds"] = keypoint_threshold_metrics(
        person_keypoint_pairs(gt, res, sigmas, gt_area=gt_area, pck_alpha=pck_alpha, match=person),
        names=_keypoint_names(gt, sigmas.size))
    vis = visibility_metrics(kp)
    m["visibility"] = vis
    m["keypoint_score_by_visibility"], curves["score_by_visibility"] = score_by_visibility(kp)
    explain_no_pairs((m, vis), n_det, len(inst), no_gt)
    if notes:
        m["notes"] = notes
    return Audit(metrics=m, curves=curves, coco=stats, instance=inst, keypoint=kp, notes=notes, evaluation=ev)


def _v(m: dict[str, object], key: str, digits: int = 3) -> str:
    v = m.get(key)
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}" if abs(v) < 1e6 else f"{v:.3g}"  # scores near 1e308 are legal input


def summary_rows(m: dict[str, object]) -> list[tuple[str, str, str]]:
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
        _threshold_row(m.get("keypoint_thresholds") or {}, 0.95),
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


def _threshold_row(kt: dict[str, object], target: float) -> tuple[str, str, str]:
    """The summary row of :func:`keypoint_threshold_metrics`' entry for ``target``."""
    r = next((r for r in kt.get("targets", []) if r.get("target") == target), {})
    label = f"kpt threshold {100 * target:g} %"
    if r.get("threshold") is None:
        return label, "n/a", str(r.get("threshold_reason") or "no keypoint pairs")
    thr = f"{r['threshold']:.3f}" if abs(r["threshold"]) < 1e6 else f"{r['threshold']:.3g}"
    return (label, f">= {thr} keeps {100 * r['kept']:.1f} %",
            f"of the {r['n']} keypoints of people's detections, {100 * r['precision']:.1f} % of those kept "
            f"OKS >= {CORRECT_OKS:g}")


def format_summary(m: dict[str, object]) -> str:
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
