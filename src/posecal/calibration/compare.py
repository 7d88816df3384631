"""Paired bootstrap over images: is results file B better than A on the same ground truth?

``posecal compare --gt GT.json A.json B.json`` is built on :func:`compare`. Each resample draws the gt's
images with replacement (the same draw for A and B: a *paired* bootstrap) and recomputes COCO AP and AR of
both files **exactly** as :func:`posecal.metrics.cocoeval.evaluate` would on the resampled dataset (a
dataset whose images are the drawn ones, in draw order, duplicates as separate images), and the instance
Pearson and AUSE (:mod:`posecal.calibration.metrics`) on the drawn images' instance pairs.

Why it is exact and fast. COCO matching (greedy, per image, per OKS threshold) depends only on one image's
detections and gts, so an image drawn twice is matched twice in the same way. :func:`per_image_eval` runs
the evaluator once and keeps, per counted detection (area range ``all``): its image, instance score,
true-positive and ignored flags at the T = 10 OKS thresholds, and per image the count of non-ignored gts.
A resample then only *re-accumulates* (pycocotools ``accumulate``): concatenate the drawn images'
detections (each image's own rank order), stable-sort by score, cumulative TP/FP, the precision envelope
and the 101-point interpolation (paper Eqs. 8–9). AP is not additive over images, but the accumulation is
a function of that multiset (and of the order of ties, which follows the draw order as the rebuilt
dataset's image ids would), so nothing is approximated. ``tests/test_compare.py`` checks every resample
against a brute-force re-evaluation of a rebuilt dataset. No resample sorts by score: the full data is
sorted once (:func:`_sort_plan`) and each resample repeats every row as often as its image was drawn, only
tied scores being put back in draw order (:func:`_sorted_rows`); AP is then accumulated from the true
positives and ignored detections alone (:func:`_accumulate_sparse`), the same for AUSE's two sorts. The
numbers are bit-identical to sorting every resample (``tests/test_audit_s28_compare_speed.py``); at COCO
val2017 scale (5000 images, 100 k counted detections) 1000 resamples went from ~270 s to ~85 s of CPU.

Both files are evaluated as ``posecal evaluate`` evaluates them (:func:`evaluation_settings`: crowdposetools
for CrowdPose files, 0.53·w·h of the gt box for files without ``area``, the 17 body keypoints of
COCO-WholeBody ground truth), so A's and B's values are the AP/AR that command and the reference tool give.

Intervals are percentile intervals of the resampled Δ = B − A (default 1000 resamples, 95 %, seeded).
The same draws also resample the keypoint thresholds of ``posecal evaluate --report`` (for 90 / 95 / 98 % of
the kept keypoints correct, OKS >= 0.5, the share of keypoints one threshold on each file's keypoint confidence
keeps): :attr:`CompareResult.keypoint_thresholds`, each image's keypoints weighted by its draw count.
``P(B better)`` is the fraction of resamples where B beats A with exact ties (Δ == 0) counted as half, so a
metric B cannot change (ΔAR when B only reorders scores) reads 0.5, not 0; ``p_tied`` is the tied fraction.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posecal.calibration.audit import THRESHOLD_TARGETS
from posecal.calibration.metrics import MetricUndefined, _remaining_mean_sorted, ause, pearson
from posecal.calibration.pairs import instance_pairs
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.metrics.cocoeval import REC_THRS, evaluate

__all__ = ["PerImageEval", "per_image_eval", "evaluation_settings", "accumulate_images", "resample_ap_ar",
           "compare", "CompareResult", "METRICS", "INTERVAL_METHOD"]

METRICS = ("AP", "AR", "pearson", "ause")
"""Compared quantities: COCO AP and AR (area all, maxDets 20), instance Pearson(score, OKS) and instance
AUSE with error 1 − OKS (higher is better for all but AUSE)."""


@dataclass(frozen=True)
class PerImageEval:
    """One evaluation, split by image, enough to re-accumulate AP/AR for any multiset of images.

    ``I`` gt images (sorted ids, the evaluator's order), ``C`` evaluated categories, ``n`` counted
    detections (``det_evaluated``; area range ``all``), ordered by (image, category, rank in image).

    Attributes:
        image_ids: (I,) gt image ids.
        det_start: (I + 1,) CSR offsets: image i's detections are rows ``det_start[i]:det_start[i+1]``.
        det_cat: (n,) category index in ``cat_ids``.
        det_score: (n,) instance score.
        det_tp: (T, n) bool true positive at each OKS threshold.
        det_ig: (T, n) bool ignored at each OKS threshold.
        npig: (I, C) int non-ignored gts per image and category.
        inst_image: (P,) image index of each instance pair (:func:`posecal.calibration.pairs.instance_pairs`).
        inst_conf, inst_oks: (P,) the pairs' confidence and OKS (0 when unmatched).
        stats: the full-data ``CocoEvalResult.stats``.
    """

    image_ids: np.ndarray
    cat_ids: np.ndarray
    det_start: np.ndarray
    det_cat: np.ndarray
    det_score: np.ndarray
    det_tp: np.ndarray
    det_ig: np.ndarray
    npig: np.ndarray
    inst_image: np.ndarray
    inst_start: np.ndarray
    inst_conf: np.ndarray
    inst_oks: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)
    eval_warnings: list[str] = field(default_factory=list)  # the evaluator's own (e.g. a gt with id 0 matched)
    # sort plans of the bootstrap (_SortPlan by name), made on first use: not part of the evaluation's value
    _plans: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)


def _csr(image_index: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order grouping rows by image and the (I + 1,) offsets."""
    order = np.argsort(image_index, kind="stable")
    start = np.zeros(n_images + 1, np.int64)
    np.cumsum(np.bincount(image_index, minlength=n_images), out=start[1:])
    return order, start


def evaluation_settings(gt: Any, *, sigmas: Any = None, use_area: bool | None = None,
                        flavor: str | None = None) -> dict[str, Any]:
    """The :func:`posecal.metrics.cocoeval.evaluate` arguments ``posecal evaluate`` would use on ``gt``
    (the rules of :func:`posecal.metrics.cocoeval.evaluate_dataset`), so that compare's A and B values are
    the AP/AR that ``posecal evaluate`` and the reference tool report for each file:

    * ``flavor`` None: ``"crowdpose"`` when every image has a ``crowdIndex`` (CrowdPose), else
      ``"pycocotools"``; a CrowdPose file under ``"xtcocotools"`` as its ``keypoints_crowd`` (crowd levels).
    * ``use_area`` None: the gt ``area`` when every gt has one, else 0.53·w·h of the box (crowdposetools:
      always the box).
    * COCO-WholeBody ground truth with default sigmas: the 17 body keypoints with COCO's sigmas (what
      pycocotools evaluates from such a file).

    Returns ``{"sigmas", "use_area", "flavor", "keypoints", "crowd_levels"}``."""
    from posecal.io.coco import CocoGroundTruth, load_gt
    from posecal.keypoints import COCO17
    from posecal.metrics.cocoeval import default_use_area

    if not isinstance(gt, CocoGroundTruth):
        gt = load_gt(gt)
    if flavor is None:
        flavor = "crowdpose" if gt.crowd_index is not None else "pycocotools"
    if flavor == "crowdpose":
        use_area = False
    elif use_area is None:
        use_area = default_use_area(gt)
    keypoints = None
    if gt.wholebody and sigmas is None:
        sigmas, keypoints = COCO17.sigmas, "body"
    crowd = flavor == "crowdpose" or (flavor == "xtcocotools" and gt.crowd_index is not None)
    return {"sigmas": sigmas, "use_area": bool(use_area), "flavor": flavor, "keypoints": keypoints,
            "crowd_levels": crowd}


def per_image_eval(gt: Any, res: Any, *, sigmas: Any = None, use_area: bool | None = None,
                   flavor: str | None = None) -> PerImageEval:
    """Evaluate ``res`` against ``gt`` once (:func:`posecal.metrics.cocoeval.evaluate`, with the settings
    of :func:`evaluation_settings`: as ``posecal evaluate``) and split the per-detection matches by image
    (see :class:`PerImageEval`)."""
    from posecal.io.coco import CocoGroundTruth, CocoResults, load_gt, load_results

    if not isinstance(gt, CocoGroundTruth):
        gt = load_gt(gt)
    if not isinstance(res, CocoResults):
        res = load_results(res, gt)
    kw = evaluation_settings(gt, sigmas=sigmas, use_area=use_area, flavor=flavor)
    with warnings.catch_warnings(record=True) as caught:  # what posecal evaluate would warn about these files
        warnings.simplefilter("always")
        ev = evaluate(gt, res, **kw)
    said = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, PosecalWarning)))
    img_ids = np.asarray(gt.image_ids, np.int64)
    I = img_ids.size
    cats = np.asarray(ev.cat_ids, np.int64)
    d = np.flatnonzero(ev.det_evaluated)
    d_img = np.searchsorted(img_ids, res.image_id[d])
    d_cat = np.searchsorted(cats, res.category_id[d])
    # (image, category, rank): the order pycocotools' accumulate concatenates detections in
    key = np.lexsort((ev.det_rank[d], d_cat, d_img))
    d, d_img, d_cat = d[key], d_img[key], d_cat[key]
    _, det_start = _csr(d_img, I)
    g_img = np.searchsorted(img_ids, gt.image_id)
    g_cat = np.searchsorted(cats, gt.category_id)
    in_cat = (g_cat < cats.size) & (cats[np.minimum(g_cat, cats.size - 1)] == gt.category_id)
    keep = ~np.asarray(ev.gt_ignored, bool) & in_cat
    npig = np.zeros((I, cats.size), np.int64)
    np.add.at(npig, (g_img[keep], g_cat[keep]), 1)
    pairs = instance_pairs(ev, res)
    p_img = np.searchsorted(img_ids, res.image_id[pairs.det_index])
    p_order, inst_start = _csr(p_img, I)
    return PerImageEval(
        image_ids=img_ids, cat_ids=cats, det_start=det_start, det_cat=d_cat,
        det_score=np.asarray(res.score, np.float64)[d], det_tp=np.asarray(ev.det_tp[:, d], bool),
        det_ig=np.asarray(ev.det_ignored[:, d], bool), npig=npig, inst_image=p_img[p_order],
        inst_start=inst_start, inst_conf=pairs.confidence[p_order], inst_oks=pairs.oks[p_order],
        stats=dict(ev.stats), eval_warnings=said,
    )


def _expand(start: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Rows of the drawn ``images`` (in draw order, each image's rows in order) from CSR offsets."""
    counts = start[images + 1] - start[images]
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    first = np.repeat(start[images] - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return first + np.arange(total)


@dataclass(frozen=True)
class _SortPlan:
    """One stable sort of CSR rows by a key, reused for every resample (:func:`_sorted_rows`).

    ``order (n,)``: the rows by key, stable (ties in row order); ``image (n,)``: their image indices;
    ``tied (n,)``: the row shares its key with another row. The tied rows again, grouped by image (CSR
    offsets ``tied_start (I + 1,)``), each image's by (tie group, row): ``tied_rows``, and ``tied_group`` their
    tie group numbered in key order (uint16 when there are few groups: numpy sorts those by radix)."""

    order: np.ndarray
    image: np.ndarray
    tied: np.ndarray
    tied_start: np.ndarray
    tied_rows: np.ndarray
    tied_group: np.ndarray


def _sort_plan(rows: np.ndarray, key: np.ndarray, row_image: np.ndarray, n_images: int) -> _SortPlan:
    """:class:`_SortPlan` of ``rows`` (ascending) by ``key`` (of those rows); ``row_image``: every row's image."""
    o = np.argsort(key, kind="stable")
    k = key[o]
    same = (k[1:] == k[:-1]) | (np.isnan(k[1:]) & np.isnan(k[:-1]))  # NaNs sort last, in row order: one group
    tied = np.zeros(k.size, bool)
    tied[1:] |= same
    tied[:-1] |= same
    order = rows[o]
    t = np.flatnonzero(tied)
    group = (np.cumsum(np.r_[True, ~same]) - 1)[t] if t.size else np.zeros(0, np.int64)
    if t.size:
        group = np.unique(group, return_inverse=True)[1].ravel()  # 0..G-1 over the tied rows only
        if group.max() < 2**16:
            group = group.astype(np.uint16)
    t_rows, t_image = order[t], row_image[order[t]]
    by_image = np.lexsort((t_rows, group, t_image))
    start = np.zeros(n_images + 1, np.int64)
    np.cumsum(np.bincount(t_image, minlength=n_images), out=start[1:])
    return _SortPlan(order=order, image=row_image[order], tied=tied, tied_start=start,
                     tied_rows=t_rows[by_image], tied_group=group[by_image])


class _Draw:
    """One resample's image indices and ``count (I,)``, how often each image was drawn."""

    def __init__(self, images: np.ndarray, n_images: int):
        self.images = images
        self.count = np.bincount(images, minlength=n_images)


def _sorted_rows(plan: _SortPlan, draw: _Draw) -> np.ndarray:
    """The rows of the dataset rebuilt from ``draw`` (draw order, each image's rows in row order; an image drawn
    twice gives its rows twice) in the order a stable sort by the plan's key puts them, i.e.
    ``rows[np.argsort(key[rows], kind="stable")]`` with ``rows = _expand(start, images)``, without sorting
    by the key: each row repeated as often as its image was drawn, in the plan's order (copies of one row
    are interchangeable: the gathered values are the same). Only tied keys depend on the draw (a tie is
    broken by draw position, then row): those rows are taken in draw order (per image by tie group, row)
    and stably sorted by their tie group alone."""
    w = draw.count[plan.image]
    out = np.repeat(plan.order, w)
    if plan.tied_rows.size:
        idx = _expand(plan.tied_start, draw.images)
        if idx.size:
            seq = plan.tied_rows[idx]
            out[np.repeat(plan.tied, w)] = seq[np.argsort(plan.tied_group[idx], kind="stable")]
    return out


def _accumulate(score: np.ndarray, tp: np.ndarray, ig: np.ndarray, npig: int) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools ``accumulate`` for one category and area: ``(precision (T, R), recall (T,))``, −1 when
    there is no non-ignored gt. Inputs in concatenation order: ``score (n,)``, ``tp, ig (T, n)``."""
    T, R = tp.shape[0], REC_THRS.size
    if npig == 0:
        return -np.ones((T, R)), -np.ones(T)
    precision = np.zeros((T, R))
    recall = np.zeros(T)
    if score.size == 0:
        return precision, recall
    o = np.argsort(-score, kind="mergesort")
    tps = tp[:, o] & ~ig[:, o]
    fps = ~tp[:, o] & ~ig[:, o]
    tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
    fp_sum = np.cumsum(fps, axis=1).astype(np.float64)
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    return _read_precision(precision, recall, rc, pr)


def _accumulate_sparse(n: int, pos: np.ndarray, tps: np.ndarray, ig: np.ndarray,
                       npig: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_accumulate` of ``n`` detections already in score order, given only the ``m`` of them that are a
    true positive or ignored at some threshold: their places ``pos (m,)`` (ascending) in that order and their
    ``tps`` (non-ignored true positive), ``ig (T, m)``; every other detection is a false positive at every
    threshold. The same numbers as the dense computation: precision is only ever read at a true positive (the
    first place recall reaches a threshold) or at the first place (threshold 0: the envelope's maximum, also a
    true positive's precision, or 0), and the envelope there is the maximum over the later true positives
    (a false positive or an ignored detection never raises precision above the true positive before it);
    the cumulative counts at those places are the same integers, divided the same way."""
    T, R = tps.shape[0], REC_THRS.size
    if npig == 0:
        return -np.ones((T, R)), -np.ones(T)
    precision = np.zeros((T, R))
    recall = np.zeros(T)
    if n == 0 or pos.size == 0:
        return precision, recall
    tp_cum = np.cumsum(tps, axis=1)
    fp_sum = ((pos + 1) - tp_cum - np.cumsum(ig, axis=1)).astype(np.float64)
    tp_sum = tp_cum.astype(np.float64)
    rc = tp_sum / npig
    pr = np.where(tps, tp_sum / (fp_sum + tp_sum + np.spacing(1)), 0.0)
    return _read_precision(precision, recall, rc, pr)


def _read_precision(precision: np.ndarray, recall: np.ndarray, rc: np.ndarray,
                    pr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' last step: the precision envelope of ``pr (T, n)`` read at the first place each recall
    threshold is reached in ``rc (T, n)`` (0 where it never is), into ``precision (T, R)``; ``recall (T,)`` the
    final recall. Fills and returns the two arrays."""
    env = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    recall[:] = rc[:, -1]
    n = rc.shape[1]
    for t in range(rc.shape[0]):
        k = np.searchsorted(rc[t], REC_THRS, side="left")
        valid = k < n
        precision[t, valid] = env[t, k[valid]]
    return precision, recall


def _det_plans(pe: PerImageEval) -> tuple[list[_SortPlan], np.ndarray, np.ndarray]:
    """Per category, the detections' :class:`_SortPlan` by score (descending); the non-ignored true positives
    ``(T, n)``; the rows that are a true positive or ignored at some threshold ``(n,)`` (made once per
    evaluation, kept in ``pe._plans``)."""
    got = pe._plans.get("det")
    if got is None:
        row_image = np.repeat(np.arange(pe.image_ids.size), np.diff(pe.det_start))
        plans = []
        for c in range(pe.cat_ids.size):
            rows = np.flatnonzero(pe.det_cat == c)
            plans.append(_sort_plan(rows, -pe.det_score[rows], row_image, pe.image_ids.size))
        tpn = pe.det_tp & ~pe.det_ig
        got = pe._plans["det"] = (plans, tpn, (tpn | pe.det_ig).any(axis=0))
    return got


def accumulate_images(pe: PerImageEval, images: np.ndarray | _Draw) -> tuple[np.ndarray, np.ndarray]:
    """``(precision (T, R, C), recall (T, C))`` for area ``all`` of the dataset made of ``images`` (indices
    into ``pe.image_ids``, with repeats, in this order), as pycocotools' ``accumulate`` (−1: no gt)."""
    draw = images if isinstance(images, _Draw) else _Draw(np.asarray(images, np.int64), pe.image_ids.size)
    npig = pe.npig[draw.images].sum(axis=0)
    T = pe.det_tp.shape[0]
    prec = -np.ones((T, REC_THRS.size, pe.cat_ids.size))
    rec = -np.ones((T, pe.cat_ids.size))
    plans, tpn, special = _det_plans(pe)
    for c in range(pe.cat_ids.size):
        r = _sorted_rows(plans[c], draw)  # the concatenated detections in score order: pycocotools' sort
        pos = np.flatnonzero(special[r])
        rs = r[pos]
        prec[:, :, c], rec[:, c] = _accumulate_sparse(r.size, pos, tpn[:, rs], pe.det_ig[:, rs], int(npig[c]))
    return prec, rec


def resample_ap_ar(pe: PerImageEval, images: np.ndarray | _Draw) -> tuple[float, float]:
    """COCO AP and AR (area all) of the dataset made of ``images`` (indices into ``pe.image_ids``, with
    repeats, in this order), exactly as the evaluator computes them on that rebuilt dataset."""
    prec, rec = accumulate_images(pe, images)
    p, q = prec[prec > -1], rec[rec > -1]
    return (float(np.mean(p)) if p.size else -1.0), (float(np.mean(q)) if q.size else -1.0)


def _ause_plans(pe: PerImageEval) -> tuple[_SortPlan, _SortPlan, np.ndarray, np.ndarray] | None:
    """The instance pairs' :class:`_SortPlan` by confidence and by −error, and confidence and error (1 − OKS)
    as float64; None when a value is not finite (then :func:`_calib` takes the general path)."""
    if "ause" not in pe._plans:
        c = np.asarray(pe.inst_conf, np.float64)
        e = np.asarray(1.0 - pe.inst_oks, np.float64)
        got = None
        if np.isfinite(c).all() and np.isfinite(e).all():
            rows = np.arange(c.size)
            row_image = np.repeat(np.arange(pe.image_ids.size), np.diff(pe.inst_start))
            I = pe.image_ids.size
            got = (_sort_plan(rows, c, row_image, I), _sort_plan(rows, -e, row_image, I), c, e)
        pe._plans["ause"] = got
    return pe._plans["ause"]


def _fast_ause(pe: PerImageEval, draw: _Draw, n: int) -> float | None:
    """AUSE(score, 1 − OKS) of the drawn pairs as :func:`posecal.calibration.metrics.ause` computes it (the
    same sorted arrays, so the same number), its two sorts replaced by :func:`_sorted_rows`; None: use ause."""
    plans = _ause_plans(pe)
    if plans is None or n < 2:
        return None
    by_conf, by_err, c, e = plans
    r = _sorted_rows(by_conf, draw)
    curve = _remaining_mean_sorted(c[r], e[r])
    r = _sorted_rows(by_err, draw)
    oracle = _remaining_mean_sorted(-e[r], e[r])
    return float(np.mean(curve - oracle))


def _calib(pe: PerImageEval, images: np.ndarray | _Draw | None) -> tuple[float, float]:
    """Instance Pearson(score, OKS) and AUSE(score, 1 − OKS) of the drawn images' pairs (NaN if undefined)."""
    draw = None
    if isinstance(images, _Draw):
        draw, images = images, images.images
    rows = slice(None) if images is None else _expand(pe.inst_start, np.asarray(images, np.int64))
    c, o = pe.inst_conf[rows], pe.inst_oks[rows]
    fast = None if draw is None else _fast_ause(pe, draw, c.size)
    out = []
    for fn, y in ((pearson, o), (ause, 1.0 - o)):
        if fn is ause and fast is not None:
            out.append(fast)
            continue
        try:
            out.append(float(fn(c, y)) if c.size >= 2 else float("nan"))
        except (MetricUndefined, ValueError):
            out.append(float("nan"))
    return out[0], out[1]


INTERVAL_METHOD = "percentile"
"""How the intervals are made: the (1 − level)/2 and (1 + level)/2 percentiles (``numpy.percentile``, linear
interpolation) of the resampled Δ = B − A (the resamples where Δ is defined)."""


def level_label(level: float) -> str:
    """``level`` as a percentage for the table and the page: 0.95 -> "95", 0.999 -> "99.9" (not "100")."""
    out = f"{level * 100:.10g}"
    if float(out) in (0.0, 100.0):  # 0.99999999999 rounds to "100" at 10 digits: show every digit instead
        out = repr(float(level * 100))
    return out


@dataclass
class CompareResult:
    """Point values (full data) of A and B, the Δ = B − A, and bootstrap percentile intervals of Δ.

    ``a``, ``b``, ``delta``: metric -> value (:data:`METRICS`); ``interval``: metric -> (lo, hi) at
    ``level``; ``p_better``: metric -> fraction of resamples where B is better than A (lower AUSE is better),
    resamples with Δ exactly 0 counted as half (every resample tied: 0.5); ``p_tied``: metric -> fraction of
    resamples with Δ exactly 0; ``samples``: metric -> (resamples,) Δ (kept for plots and tests). Both
    fractions are over the resamples where Δ is defined (NaN when none is). ``flavor``, ``use_area`` and
    ``keypoints`` say how AP/AR were computed (:func:`evaluation_settings`); ``warnings``: the odd-input
    messages :func:`compare` warned (also in :meth:`to_dict`, where undefined values are None, never NaN)."""

    a: dict[str, float]
    b: dict[str, float]
    delta: dict[str, float]
    interval: dict[str, tuple[float, float]]
    p_better: dict[str, float]
    resamples: int
    seed: int
    level: float
    images: int
    samples: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    p_tied: dict[str, float] = field(default_factory=dict)
    undefined: dict[str, dict[str, str]] = field(default_factory=dict)  # "A"/"B" -> metric -> why no value
    flavor: str = "pycocotools"  # the evaluator reproduced (evaluation_settings)
    use_area: bool = True  # OKS scale: the gt 'area' (True) or 0.53·w·h of the gt box
    keypoints: str = "all"  # "body": COCO-WholeBody ground truth evaluated on its 17 body keypoints
    warnings: list[str] = field(default_factory=list)  # odd inputs (also warned): see compare()
    # the keypoint thresholds of A and B and Δ = B − A of the share kept, with intervals (module docstring)
    keypoint_thresholds: dict[str, Any] = field(default_factory=dict)

    def all_tied(self, m: str) -> bool:
        """Every resample gave Δ exactly 0 for ``m`` (B cannot differ from A there)."""
        return self.p_tied.get(m) == 1.0

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        return {
            "resamples": self.resamples, "seed": self.seed, "level": self.level, "images": self.images,
            "interval_method": INTERVAL_METHOD, "flavor": self.flavor, "use_area": self.use_area,
            "keypoints": self.keypoints, "warnings": list(self.warnings),
            "metrics": {m: {"a": num(self.a[m]), "b": num(self.b[m]), "delta": num(self.delta[m]),
                            "interval": [num(v) for v in self.interval[m]],
                            "p_better": num(self.p_better[m]),
                            "p_tied": num(self.p_tied.get(m, float("nan"))),
                            "resamples_used": self.used(m),
                            **{f"{w.lower()}_reason": self.undefined[w][m] for w in ("A", "B")
                               if m in self.undefined.get(w, {})}} for m in METRICS},
            "keypoint_thresholds": {k: v for k, v in self.keypoint_thresholds.items() if k != "samples"},
        }

    def used(self, m: str) -> int:
        """Resamples where Δ of ``m`` is defined (the interval and P(B better) are over these only: a resample
        that drew no person has no AP/AR, one with fewer than 2 pairs no Pearson/AUSE)."""
        s = self.samples.get(m)
        return self.resamples if s is None else int(np.isfinite(s).sum())

    def reason(self, m: str) -> str:
        """Why ``m`` is n/a on the full data ('' when both files have a value)."""
        return "; ".join(f"{w}: {self.undefined[w][m]}" for w in ("A", "B") if m in self.undefined.get(w, {}))


def _point(pe: PerImageEval) -> dict[str, float]:
    p, a = _calib(pe, None)
    return {"AP": float(pe.stats["AP"]), "AR": float(pe.stats["AR"]), "pearson": p, "ause": a}


def _why_undefined(pe: PerImageEval) -> dict[str, str]:
    """metric -> why it has no value on the full data (only the undefined ones)."""
    c, o = pe.inst_conf, pe.inst_oks
    out = {}
    for m, fn, y in (("pearson", pearson, o), ("ause", ause, 1.0 - o)):
        if c.size < 2:
            out[m] = "fewer than 2 matched detections"
            continue
        try:
            fn(c, y)
        except MetricUndefined as e:
            out[m] = e.reason
        except ValueError as e:
            out[m] = str(e)
    for m in ("AP", "AR"):
        if not np.isfinite(pe.stats[m]) or pe.stats[m] < 0:
            out[m] = "no ground-truth person to evaluate"
    return out


def _defined(ap_ar: tuple[float, float]) -> tuple[float, float]:
    """A resample's (AP, AR) with pycocotools' −1 (no person drawn: nothing to score) as NaN, so that such a
    resample is left out of the interval and of P(B better) instead of counting as a tie (−1 − (−1) = 0)."""
    return tuple(v if v >= 0 else float("nan") for v in ap_ar)  # type: ignore[return-value]


def _odd_inputs(gt: Any, pes: dict[str, PerImageEval], names: dict[str, str]) -> list[str]:
    """Messages about legal inputs that make the comparison say little: a file without results, a file whose
    counted scores are all equal, images with people that only one file has results on, and a bootstrap with
    at most one image that holds anything to score (every resample then repeats it: (near) zero-width
    intervals)."""
    from posecal.io.coco import _id_label

    out = []
    pa = next(iter(pes.values()))
    people = pa.npig.sum(axis=1) > 0
    covered, scored = {}, np.zeros(pa.image_ids.size, bool)
    for w, pe in pes.items():
        counts = np.diff(pe.det_start)
        covered[w] = counts > 0
        img = np.repeat(np.arange(pe.image_ids.size), counts)
        scored[img[~pe.det_ig.all(axis=0)]] = True
        if counts.sum() == 0:
            out.append(f"{names[w]}: no results to score: AP and AR 0 (every person missed), Pearson and AUSE "
                       "undefined")
        elif counts.sum() > 1 and np.all(pe.det_score == pe.det_score[0]):
            out.append(f"{names[w]}: all {int(counts.sum())} scored detections have the same score "
                       f"({pe.det_score[0]:.6g}): its AP then ranks them by record and image order, not by "
                       "confidence, and its Pearson is undefined")
    (wa, ca), (wb, cb) = covered.items()
    if ca.any() and cb.any():
        only = people & (ca != cb)
        if only.any():
            first = int(np.argmax(only))
            label = _id_label(int(pa.image_ids[first]), getattr(gt, "image_id_strings", None))
            where = " and ".join(f"{n} in {names[w]} only" for w, n in ((wa, int((only & ca).sum())),
                                                                         (wb, int((only & cb).sum()))) if n)
            out.append(f"images with people that only one file has results on: {where} (first: image_id "
                       f"{label!r}); an image without results counts its people as missed: right if the model "
                       "found nobody there, wrong if the files were made on different images")
    informative = int((people | scored).sum())
    if informative <= 1:
        out.append(f"only {informative} of the {pa.image_ids.size} images holds a person or a scored detection: "
                   "every resample repeats that image, so the intervals have (near) zero width and P(B better) "
                   "is about 0, 1 or a tie: the bootstrap measures no uncertainty here; compare on more images")
    return out


@dataclass(frozen=True)
class _KeypointPlan:
    """One file's keypoint pairs for the thresholds (:func:`posecal.calibration.pairs.person_keypoint_pairs`,
    labelled keypoints only), sorted once by confidence (descending, stable): ``image (N,)`` image index,
    ``correct (N,)`` keypoint OKS >= 0.5, ``ends (G,)`` the last row of each tie group, ``threshold (G,)``
    its confidence."""

    image: np.ndarray
    correct: np.ndarray
    ends: np.ndarray
    threshold: np.ndarray

    @classmethod
    def build(cls, confidence: np.ndarray, correct: np.ndarray, image: np.ndarray) -> _KeypointPlan:
        """The plan of pairs ``confidence (N,)``, ``correct (N,)`` bool, ``image (N,)`` image index."""
        o = np.argsort(-np.asarray(confidence, np.float64), kind="stable")
        cs = np.asarray(confidence, np.float64)[o]
        ends = np.r_[np.flatnonzero(cs[1:] != cs[:-1]), cs.size - 1] if cs.size else np.zeros(0, np.int64)
        return cls(image=np.asarray(image, np.int64)[o], correct=np.asarray(correct, bool)[o], ends=ends,
                   threshold=cs[ends])

    def kept(self, counts: np.ndarray, targets: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(kept (T,), threshold (T,))`` for images drawn ``counts (I,)`` times: per target, the largest
        share of the drawn keypoints one threshold keeps with at least that share correct among them (0 when
        none does; :func:`posecal.calibration.metrics.threshold_at_precision` on the resampled pairs) and
        that threshold (NaN when none). NaN kept when no keypoint is drawn."""
        w = counts[self.image].astype(np.float64)
        cw = np.cumsum(w)[self.ends] if w.size else np.zeros(0)
        T = len(targets)
        if not cw.size or cw[-1] == 0:
            return np.full(T, np.nan), np.full(T, np.nan)
        cc = np.cumsum(w * self.correct)[self.ends]
        prec = np.divide(cc, cw, out=np.full(cw.shape, -1.0), where=cw > 0)
        prec[np.diff(cw, prepend=0.0) == 0] = -1.0  # a tie group none of whose images was drawn is no threshold
        kept, thr = np.zeros(T), np.full(T, np.nan)
        for i, t in enumerate(targets):
            good = np.flatnonzero(prec >= t - 1e-12)
            if good.size:
                kept[i], thr[i] = cw[good[-1]] / cw[-1], self.threshold[good[-1]]
        return kept, thr


def _keypoint_plan(gt: Any, res: Any, sigmas: Any, use_area: bool, image_ids: np.ndarray) -> _KeypointPlan:
    """The :class:`_KeypointPlan` of ``res``: the pairs ``posecal evaluate --report`` thresholds (all of the
    results' keypoints with ``sigmas`` or the gt's set — COCO-WholeBody's 133 too —, OKS on the evaluator's
    area: the gt 'area' or, ``use_area`` False, 0.53·w·h of the gt box)."""
    from posecal.calibration.audit import CORRECT_OKS, _single_category, resolve_sigmas
    from posecal.calibration.pairs import person_keypoint_pairs

    area = None if use_area else 0.53 * gt.bbox[:, 2] * gt.bbox[:, 3]
    kp = person_keypoint_pairs(gt, res, resolve_sigmas(gt, sigmas), _single_category(res), area)
    lab = kp.labelled
    img = np.searchsorted(image_ids, np.asarray(res.image_id, np.int64)[kp.det_index])
    return _KeypointPlan.build(kp.score[lab], kp.oks[lab] >= CORRECT_OKS, np.broadcast_to(img[:, None], lab.shape)[lab])


def _threshold_block(plans: dict[str, _KeypointPlan], samples: np.ndarray, level: float,
                     targets: tuple[float, ...], n_images: int) -> dict[str, Any]:
    """The ``keypoint_thresholds`` block of :class:`CompareResult` from the full-data plans and the
    ``samples (R, T)`` of Δ kept (B − A)."""
    from posecal.calibration.audit import CORRECT_OKS

    out: dict[str, Any] = {"correct": f"keypoint OKS >= {CORRECT_OKS:g}",
                           "pairs": "the labelled keypoints of every detection matched one to one to a person "
                                    "(greedy by OKS, any OKS > 0), as posecal evaluate --report",
                           "targets": []}
    ones = np.ones(n_images, np.int64)
    full = {w: p.kept(ones, targets) for w, p in plans.items()}
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def num(x: float) -> float | None:
        return float(x) if np.isfinite(x) else None

    for i, t in enumerate(targets):
        s = samples[:, i]
        ok = s[np.isfinite(s)]
        row = {"target": float(t), **{w.lower(): {"kept": num(full[w][0][i]), "threshold": num(full[w][1][i])}
                                      for w in ("A", "B")}}
        d = full["B"][0][i] - full["A"][0][i]
        row["delta"] = num(d)
        row["interval"] = [num(v) for v in np.percentile(ok, q)] if ok.size and np.isfinite(d) else [None, None]
        row["p_better"] = num((np.sum(ok > 0) + 0.5 * np.sum(ok == 0)) / ok.size) if ok.size else None
        row["resamples_used"] = int(ok.size)
        out["targets"].append(row)
    out["samples"] = samples
    return out


def compare(gt: Any, res_a: Any, res_b: Any, *, resamples: int = 1000, seed: int = 0, level: float = 0.95,
            sigmas: Any = None, use_area: bool | None = None, flavor: str | None = None,
            show_progress: bool = False) -> CompareResult:
    """Paired bootstrap of B − A over the gt's images (see the module docstring).

    Args:
        gt: ground truth (path, dict or :class:`CocoGroundTruth`).
        res_a, res_b: results (paths, record lists or :class:`CocoResults`) on that gt.
        resamples: bootstrap draws (>= 1); ``seed``: their ``numpy.random.default_rng`` seed.
        level: interval coverage (percentile interval).
        sigmas, use_area, flavor: as ``posecal evaluate`` (:func:`evaluation_settings`; default: the rules
            ``posecal evaluate`` applies to ``gt``).

    Warns:
        PosecalWarning: a file without results, a file whose scores are all equal, images with people that
            only one file has results on, at most one image with anything to score (degenerate bootstrap).
            The same messages are kept in :attr:`CompareResult.warnings` (``warnings`` of the JSON, the page).
    """
    from posecal._util import progress
    from posecal.io.coco import CocoGroundTruth, CocoResults, load_gt, load_results

    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    if not isinstance(gt, CocoGroundTruth):
        gt = load_gt(gt)
    res = {w: r if isinstance(r, CocoResults) else load_results(r, gt) for w, r in (("A", res_a), ("B", res_b))}
    kw = {"sigmas": sigmas, "use_area": use_area, "flavor": flavor}
    settings = evaluation_settings(gt, **kw)
    pa, pb = per_image_eval(gt, res["A"], **kw), per_image_eval(gt, res["B"], **kw)
    I = pa.image_ids.size
    if I == 0:
        raise PosecalInputError("the ground truth lists no image", file=getattr(gt, "path", None))
    a, b = _point(pa), _point(pb)
    if not a["AP"] >= 0:  # pycocotools' -1: no non-crowd person with a labelled keypoint in the gt
        raise PosecalInputError("no person with a labelled keypoint (non-crowd) to score: AP and AR are "
                                "undefined", file=getattr(gt, "path", None), field="annotations")
    names = {w: str(r.path) if r.path else w for w, r in res.items()}
    if names["A"] == names["B"]:
        names = {w: f"{w} ({n})" for w, n in names.items()}
    notes = _odd_inputs(gt, {"A": pa, "B": pb}, names)
    notes += list(dict.fromkeys(f"{names[w]}: {m}" for w, pe in (("A", pa), ("B", pb)) for m in pe.eval_warnings))
    for msg in notes:
        warnings.warn(msg, PosecalWarning, stacklevel=2)
    plans = {w: _keypoint_plan(gt, r, sigmas, settings["use_area"], pa.image_ids) for w, r in res.items()}
    kpt_samples = np.full((resamples, len(THRESHOLD_TARGETS)), np.nan)
    rng = np.random.default_rng(seed)
    samples = {m: np.empty(resamples) for m in METRICS}
    bar = progress(total=resamples, desc="bootstrap", disable=not show_progress or None)
    for r in range(resamples):
        idx = rng.integers(0, I, size=I)
        draw = _Draw(idx, I)  # shared by both files' re-accumulations
        counts = np.bincount(idx, minlength=I)
        kpt_samples[r] = plans["B"].kept(counts, THRESHOLD_TARGETS)[0] - plans["A"].kept(counts, THRESHOLD_TARGETS)[0]
        ap_a, ar_a = _defined(resample_ap_ar(pa, draw))
        ap_b, ar_b = _defined(resample_ap_ar(pb, draw))
        pr_a, au_a = _calib(pa, draw)
        pr_b, au_b = _calib(pb, draw)
        samples["AP"][r], samples["AR"][r] = ap_b - ap_a, ar_b - ar_a
        samples["pearson"][r], samples["ause"][r] = pr_b - pr_a, au_b - au_a
        bar.update(1)
    bar.close()
    delta = {m: b[m] - a[m] for m in METRICS}
    for m in METRICS:  # undefined on the data (e.g. one file has a single pair): its resamples say nothing either
        if not np.isfinite(delta[m]):  # (a resample drawing that pair twice has "2 pairs", AUSE 0: a false "B better")
            samples[m][:] = np.nan
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    interval, p_better, p_tied = {}, {}, {}
    for m, s in samples.items():
        ok = s[np.isfinite(s)]
        interval[m] = tuple(float(v) for v in np.percentile(ok, q)) if ok.size else (float("nan"),) * 2
        better = ok < 0 if m == "ause" else ok > 0
        tied = ok == 0
        # ties count half: a metric B cannot change must not read "B certainly worse" (0) or "better" (1)
        p_better[m] = float((better.sum() + 0.5 * tied.sum()) / ok.size) if ok.size else float("nan")
        p_tied[m] = float(tied.mean()) if ok.size else float("nan")
    return CompareResult(undefined={"A": _why_undefined(pa), "B": _why_undefined(pb)},
                         a=a, b=b, delta=delta, interval=interval, p_better=p_better, resamples=resamples,
                         seed=seed, level=level, images=I, samples=samples, p_tied=p_tied,
                         flavor=settings["flavor"], use_area=settings["use_area"],
                         keypoints=settings["keypoints"] or "all", warnings=notes,
                         keypoint_thresholds=_threshold_block(plans, kpt_samples, level, THRESHOLD_TARGETS, I))
