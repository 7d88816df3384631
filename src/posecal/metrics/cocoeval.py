"""The COCO keypoint evaluator: AP/AR identical to pycocotools 2.0.x ``COCOeval(iouType='keypoints')``.

Vectorised over the whole dataset (no Python loop per image), in the stages of pycocotools' own
evaluate / evaluateImg / accumulate / summarize:

1. :func:`_prepare_gt` — the evaluated gts (images × categories chosen), their ignore flags and areas;
2. :func:`_rank_detections` — detections sorted by score within each image, cut to ``max_dets``;
3. :func:`_candidate_oks` — OKS for every (detection, gt) pair of every image at once (paper Eq. 7), summed
   per pair over the labelled keypoints only, so every value is bit-identical to pycocotools;
4. :func:`_greedy_match` — greedy matching for all images, all OKS thresholds and all area ranges at once
   by iterating over the ≤ ``max_dets`` detection ranks, on padded (units × ranks × gts) arrays
   (:class:`_Bucket`) bucketed by gt count;
5. :func:`_accumulate` — precision/recall, 101-point interpolated AP (Eqs. 8–9 of the paper) per category,
   area range and maxDets; :func:`_summarize` — the summary numbers.

Every pycocotools quirk is reproduced (see ``notes/coco-keypoint-eval-reference.md``): gt ``area`` + eps,
``num_keypoints == 0`` gts ignored, crowd regions absorbing detections, the 3×-box distance branch for gts
without labelled keypoints, stable mergesort orderings, maxDets 20 applied before OKS, the keypoint-extent
detection area, a gt with id 0 counting as a false positive when matched, ``np.linspace`` thresholds, and
the −1 conventions.

Flavors:

* ``"pycocotools"`` (default).
* ``"xtcocotools"`` — xtcocotools 1.14: ignore by counting labelled keypoints, detections whose keypoint
  scores are all ≤ 0 dropped, −1 as unmatched sentinel, and the 0.53·w·h area for area ranges when
  ``use_area=False`` or a gt has no ``area`` (also what part-wise COCO-WholeBody evaluation,
  :func:`evaluate_wholebody`, uses). With ``crowd_levels=True`` it is xtcocotools'
  ``iouType='keypoints_crowd'`` (MMPose's CrowdPose metric): ignore by the ``num_keypoints`` field, plus
  AP(E)/AP(M)/AP(H).
* ``"crowdpose"`` — crowdposetools' ``COCOeval`` (the CrowdPose benchmark): OKS and area ranges on
  0.53·w·h of the gt box (never ``area``), ignore by ``num_keypoints``, pycocotools' matching sentinels,
  and the stats ``AP, AP50, AP75, AR, AR50, AR75, AP(E), AP(M), AP(H)``. The crowd levels split the images
  by their ``crowdIndex`` with crowdposetools' own thresholds (``get_type_result(first=0.2,
  second=0.8)``: easy < 0.2 ≤ medium < 0.8 ≤ hard — the CrowdPose paper describes 0.1 and 0.8, its code
  uses 0.2), evaluate each subset again, and report ``round(mean(precision[:, :, :, 0, :]), 4)`` — the
  mean over the whole precision array of area 'all', −1 entries included (−1 for an empty level).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError, PosecalWarning
from posecal.io.coco import CocoGroundTruth, CocoResults, _unique, keypoint_extent, load_gt, load_results, no_gc
from posecal.keypoints import COCO17
from posecal.metrics.oks import oks_pairs

__all__ = ["CocoEvalResult", "DatasetEvaluation", "evaluate", "evaluate_dataset", "evaluate_wholebody",
           "summary_lines", "STAT_NAMES", "CROWD_STAT_NAMES", "IOU_THRS", "REC_THRS", "AREA_RNGS",
           "AREA_LABELS", "CROWD_THRESHOLDS", "FLAVORS"]

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
#: the stats of CrowdPose evaluation (crowdposetools / xtcocotools ``keypoints_crowd``), in their order
CROWD_STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP(E)", "AP(M)", "AP(H)")
#: OKS thresholds built exactly as pycocotools does (``IOU_THRS[8] == 0.8999999999999999``)
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNGS = np.array([[0**2, 1e5**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
AREA_LABELS = ("all", "medium", "large")
WHOLEBODY_PARTS = ("body", "foot", "face", "lefthand", "righthand", "wholebody")
#: crowdposetools' crowdIndex thresholds: easy < first <= medium < second <= hard
CROWD_THRESHOLDS = (0.2, 0.8)
FLAVORS = ("pycocotools", "xtcocotools", "crowdpose")


@dataclass(eq=False)  # holds arrays: identity comparison
class CocoEvalResult:
    """Result of :func:`evaluate`.

    Attributes:
        stats: the summary numbers by name: ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl`` (−1:
            undefined), or :data:`CROWD_STAT_NAMES` with crowd levels.
        precision: (T, R, K, A, M) as pycocotools' ``eval['precision']`` (T OKS thresholds, R recall
            thresholds, K categories, A area ranges, M maxDets).
        recall: (T, K, A, M).
        scores: (T, R, K, A, M).
        det_evaluated: (D,) bool — detection is in an evaluated image and category, not dropped, and within
            the ``max_dets`` best of its image.
        det_gt: (T, D) int64 — gt row (index into the gt arrays) matched at each threshold for area 'all'
            (the first area range), −1 if none.
        det_ignored: (T, D) bool — the detection is ignored (matched to an ignored/crowd gt) for area 'all'.
        det_oks: (T, D) float64 — OKS with the matched gt, 0 if unmatched.
        det_tp: (T, D) bool — counted as a true positive for area 'all' (False for a match to a gt with id 0
            under pycocotools, which counts it as a false positive).
        gt_det: (T, G) int64 — detection row matched to each gt (the last one for crowd regions), −1 if none.
        gt_ignored: (G,) bool — gt ignored for area 'all' (crowd, no keypoints, or not evaluated).
        det_rank: (D,) int64 rank of the detection within its image by score (−1 when not evaluated).
        gt_evaluated: (G,) bool — the gt is in an evaluated image and category.
        cat_ids, img_ids, iou_thrs, rec_thrs, area_rngs, area_labels, max_dets, sigmas, use_area, flavor:
            the settings (``max_dets`` the largest of ``max_dets_list``).
    """

    stats: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    det_evaluated: np.ndarray
    det_gt: np.ndarray
    det_ignored: np.ndarray
    det_oks: np.ndarray
    det_tp: np.ndarray
    gt_det: np.ndarray
    gt_ignored: np.ndarray
    det_rank: np.ndarray
    cat_ids: np.ndarray
    sigmas: np.ndarray
    use_area: bool = True
    flavor: str = "pycocotools"
    max_dets: int = 20
    iou_thrs: np.ndarray = field(default_factory=lambda: IOU_THRS.copy())
    rec_thrs: np.ndarray = field(default_factory=lambda: REC_THRS.copy())
    area_rngs: np.ndarray = field(default_factory=lambda: AREA_RNGS.copy())
    area_labels: tuple[str, ...] = AREA_LABELS
    max_dets_list: tuple[int, ...] = (20,)
    img_ids: np.ndarray | None = None
    gt_evaluated: np.ndarray | None = None
    crowd_levels: bool = False
    match_detail: Any = field(default=None, repr=False)  # with keep_matches: every area range's matching

    def stats_array(self) -> np.ndarray:
        """The stats in pycocotools' order (``COCOeval.stats``; xtcocotools' for crowd levels)."""
        return np.array(list(self.stats.values()), dtype=np.float64)


@dataclass(frozen=True)
class _Settings:
    """Evaluation parameters (pycocotools' ``Params`` for keypoints) and the flavor's rules."""

    iou_thrs: np.ndarray
    rec_thrs: np.ndarray
    area_rngs: np.ndarray  # (A, 2)
    max_dets: tuple[int, ...]  # sorted, as pycocotools sorts p.maxDets
    cat_ids: np.ndarray  # (K,) sorted unique
    img_ids: np.ndarray  # (I,) sorted unique
    use_cats: bool
    use_area: bool
    flavor: str
    crowd_levels: bool

    @property
    def xt(self) -> bool:
        return self.flavor == "xtcocotools"

    @property
    def box_area_only(self) -> bool:
        """crowdposetools: OKS and area ranges always on 0.53·w·h of the gt box."""
        return self.flavor == "crowdpose"

    @property
    def ignore_by_field(self) -> bool:
        """Ignore gts by the ``num_keypoints`` field (else by counting labelled keypoints, xtcocotools)."""
        return not self.xt or self.crowd_levels

    @property
    def zero_id_quirk(self) -> bool:
        """A match to a gt with id 0 counts as a false positive (pycocotools' 0 sentinel)."""
        return not self.xt


# ----------------------------------------------------------------------------------------------
def _resolve_sigmas(gt: CocoGroundTruth, kp_idx: np.ndarray, sigmas: Any) -> np.ndarray:
    if sigmas is None:
        if gt.keypoint_set is None:
            raise PosecalInputError(
                f"keypoint names of categories[0] match no known keypoint set ({gt.num_joints} keypoints); "
                "give the OKS sigmas (--sigmas) or a --keypoint-set", gt.path, None, "categories")
        return np.asarray(gt.keypoint_set.sigmas, dtype=np.float64)[kp_idx]
    s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if s.shape[0] != kp_idx.shape[0]:
        raise PosecalInputError(f"{s.shape[0]} sigmas given for {kp_idx.shape[0]} keypoints", gt.path, None,
                                "sigmas")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise PosecalInputError("sigmas must be finite and positive", gt.path, None, "sigmas")
    with np.errstate(over="ignore", under="ignore"):
        var = (2 * s) ** 2
    bad = ~((var >= np.finfo(np.float64).tiny) & np.isfinite(var))
    if bad.any():  # (2σ)² underflows to 0 (0/0 OKS terms) or overflows (every OKS 1)
        raise PosecalInputError(f"sigma {s[bad][0]:g} out of range: (2σ)² must be a positive finite float "
                                "(1e-150 < σ < 1e150 is safe)", gt.path, None, "sigmas")
    return s


def _keypoint_index(gt: CocoGroundTruth, keypoints: Any) -> np.ndarray:
    if keypoints is None:
        return np.arange(gt.num_joints)
    if isinstance(keypoints, str):
        if gt.keypoint_set is None or keypoints not in gt.keypoint_set.parts:
            raise PosecalInputError(f"unknown keypoint part {keypoints!r}", gt.path, None, "keypoints")
        return np.asarray(gt.keypoint_set.parts[keypoints], dtype=np.int64)
    return np.asarray(keypoints, dtype=np.int64).reshape(-1)


def _offsets(counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(c)`` for every count c (position within each group)."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


def _may_reach(det_xy: np.ndarray, gkp: np.ndarray, g_area: np.ndarray, sig: np.ndarray, pd: np.ndarray,
               pg: np.ndarray, thr: float) -> np.ndarray:
    """(P,) bool: False only for pairs whose OKS is certainly below ``thr`` (upper bound from the gap
    between the detection's keypoint box and the box of the gt's labelled keypoints). Gts without a
    labelled keypoint (box-distance branch) are always kept."""
    if pd.size == 0:
        return np.zeros(0, dtype=bool)
    dx0, dx1, dy0, dy1 = keypoint_extent(det_xy)
    lab = gkp[:, :, 2] > 0
    gx0, gx1, gy0, gy1 = keypoint_extent(gkp, lab)
    has = lab.any(axis=1)
    gap_x = np.maximum(0.0, np.maximum(gx0[pg] - dx1[pd], dx0[pd] - gx1[pg]))
    gap_y = np.maximum(0.0, np.maximum(gy0[pg] - dy1[pd], dy0[pd] - gy1[pg]))
    with np.errstate(invalid="ignore", over="ignore"):
        bound = np.exp(-(gap_x**2 + gap_y**2) / (8.0 * np.float64(sig.max()) ** 2 * (g_area[pg] + np.spacing(1))))
    # generous margin against rounding: only clearly hopeless pairs are dropped
    return ~has[pg] | ~(bound < thr * (1 - 1e-6))


def _score_order(score: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """The permutation ``np.lexsort((-score, group))`` (``np.argsort(-score, kind="mergesort")`` without
    ``group``): by group, then score descending, ties in index order.

    Computed from one unstable (SIMD) float sort, which gives each score its dense rank, and one sort of the
    unique integer keys (group, rank, index) — several times faster than a stable float sort, same result."""
    N = score.shape[0]
    neg = -score
    if N == 0 or not np.isfinite(neg).all():  # NaN: keep numpy's own ordering
        return np.lexsort((neg,) if group is None else (neg, group))
    o = np.argsort(neg)
    v = neg[o]
    dense = np.empty(N, dtype=np.int64)
    dense[o] = np.cumsum(np.r_[False, v[1:] != v[:-1]])  # equal scores (also 0.0 / -0.0) share a rank
    nv = int(dense[o[-1]]) + 1
    ng = 1 if group is None else int(group.max()) + 1
    if group is not None and int(group.min()) < 0 or ng * nv * N >= 2**62:
        return np.lexsort((neg,) if group is None else (neg, group))
    key = dense * N + np.arange(N, dtype=np.int64)
    if group is not None:
        key += group.astype(np.int64) * (nv * N)
    return np.argsort(key)


def _cat(xs: list, dtype) -> np.ndarray:
    return np.concatenate(xs).astype(dtype, copy=False) if xs else np.zeros(0, dtype)


def _last_argmax(key: np.ndarray) -> np.ndarray:
    """Index of the LAST maximum along the last axis (pycocotools: on equal OKS the later gt wins)."""
    G = key.shape[-1]
    return G - 1 - np.argmax(key[..., ::-1], axis=-1)


# ---- stage 1: ground truth ---------------------------------------------------------------------------
@dataclass(eq=False)
class _GtPrep:
    """The evaluated gts (``rows`` into the gt arrays; all per-gt arrays below are over ``rows``)."""

    rows: np.ndarray  # (G',) gt rows evaluated
    keypoints: np.ndarray  # (G', K', 3) the evaluated keypoints
    area_oks: np.ndarray  # (G',) area scaling the OKS
    ignore_a: np.ndarray  # (A, G') ignored per area range
    unit: np.ndarray  # (G',) category index * I + image index
    cat: np.ndarray  # (G',) category index
    iscrowd: np.ndarray  # (G',)
    bbox: np.ndarray  # (G', 4)
    ann_id: np.ndarray  # (G',)


def _prepare_gt(gt: CocoGroundTruth, kp_idx: np.ndarray, st: _Settings) -> _GtPrep:
    nI = st.img_ids.shape[0]
    keep = np.isin(gt.image_id, st.img_ids) & np.isin(gt.category_id, st.cat_ids)
    rows = np.flatnonzero(keep) if not keep.all() else np.arange(len(gt))
    if not st.use_cats:  # pycocotools concatenates the categories in catIds order
        rows = rows[np.argsort(_cat_position(st.cat_ids, gt.category_id[rows]), kind="stable")]
    full = rows.shape[0] == len(gt) and st.use_cats
    kps = gt.keypoints if kp_idx.shape[0] == gt.num_joints else gt.keypoints[:, kp_idx]
    kps = kps if full else kps[rows]
    iscrowd, bbox = (gt.iscrowd, gt.bbox) if full else (gt.iscrowd[rows], gt.bbox[rows])
    area = gt.area if full else gt.area[rows]
    if st.ignore_by_field:
        ign = iscrowd | ((gt.num_keypoints if full else gt.num_keypoints[rows]) == 0)
    else:
        ign = iscrowd | (np.count_nonzero(kps[:, :, 2] > 0, axis=1) == 0)
    missing_area = np.isnan(area)
    if st.use_area and not st.box_area_only and missing_area.any():
        i = int(np.argmax(missing_area))
        raise PosecalInputError("ground truth has no 'area'; evaluate with use_area=False (--no-use-area, "
                                "0.53·w·h of the box)", gt.path, int(gt.ann_id[rows[i]]), "area")
    box_area = bbox[:, 3] * bbox[:, 2] * 0.53
    if st.box_area_only:
        area_oks = area_rng = box_area
    else:
        area_oks = area if st.use_area else box_area
        # xtcocotools buckets by 0.53·w·h where a gt has no area or use_area is off
        area_rng = np.where(missing_area | (not st.use_area), bbox[:, 2] * bbox[:, 3] * 0.53, area) if st.xt \
            else area_oks
    cat = np.searchsorted(st.cat_ids, gt.category_id[rows]) if st.use_cats else np.zeros(rows.shape, np.int64)
    unit = cat * nI + np.searchsorted(st.img_ids, gt.image_id[rows])
    ga = area_rng[None, :]
    ignore_a = ign[None, :] | (ga < st.area_rngs[:, :1]) | (ga > st.area_rngs[:, 1:])
    return _GtPrep(rows, kps, area_oks, ignore_a, unit, cat, iscrowd, bbox,
                   gt.ann_id if full else gt.ann_id[rows])


def _cat_position(cat_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each value in ``cat_ids`` (given order)."""
    order = np.argsort(cat_ids, kind="stable")
    return order[np.searchsorted(cat_ids[order], values)]


# ---- stage 2: detections ------------------------------------------------------------------------------
@dataclass(eq=False)
class _DetPrep:
    """The kept detections in (category, image, rank) order."""

    idx: np.ndarray  # (nK,) detection rows
    unit: np.ndarray  # (nK,)
    rank: np.ndarray  # (nK,) rank within its image by score
    det_rank: np.ndarray  # (D,) rank, −1 when not evaluated


def _rank_detections(res: CocoResults, score: np.ndarray, kp_idx: np.ndarray, st: _Settings) -> _DetPrep:
    nI = st.img_ids.shape[0]
    D = len(res)
    ok = np.isin(res.image_id, st.img_ids) & np.isin(res.category_id, st.cat_ids)
    if st.xt and D:
        ok &= np.count_nonzero(res.keypoints[:, kp_idx, 2] > 0, axis=1) > 0
    cand = np.flatnonzero(ok)
    if not st.use_cats:  # pycocotools concatenates the categories in catIds order before sorting by score
        cand = cand[np.argsort(_cat_position(st.cat_ids, res.category_id[cand]), kind="stable")]
    cat = np.searchsorted(st.cat_ids, res.category_id[cand]) if st.use_cats else np.zeros(cand.size, np.int64)
    unit_all = cat * nI + np.searchsorted(st.img_ids, res.image_id[cand])
    order = _score_order(score[cand], unit_all)  # stable: ties keep file order
    sorted_idx = cand[order]
    sorted_unit = unit_all[order]
    if sorted_idx.size:
        starts = np.flatnonzero(np.r_[True, sorted_unit[1:] != sorted_unit[:-1]])
        rank_sorted = np.arange(sorted_idx.size) - np.repeat(starts, np.diff(np.r_[starts, sorted_idx.size]))
    else:
        rank_sorted = np.zeros(0, dtype=np.int64)
    keep = rank_sorted < st.max_dets[-1]
    det_rank = np.full(D, -1, dtype=np.int64)
    det_rank[sorted_idx[keep]] = rank_sorted[keep]
    return _DetPrep(sorted_idx[keep], sorted_unit[keep], rank_sorted[keep], det_rank)


# ---- stage 3: candidate OKS -----------------------------------------------------------------------------
@dataclass(eq=False)
class _Pairs:
    """(kept detection, gt of its unit) pairs with their OKS."""

    det: np.ndarray  # (P,) kept-detection row (into _DetPrep arrays), ascending
    gt: np.ndarray  # (P,) gt row (into _GtPrep arrays)
    slot: np.ndarray  # (P,) position of the gt within its unit (file order)
    oks: np.ndarray  # (P,) OKS, 0 where provably below the lowest threshold
    ng_unit: np.ndarray  # (units,) gts per unit
    g_order: np.ndarray  # gt rows sorted by unit (stable)
    g_start: np.ndarray  # (units,) start of each unit in g_order


def _candidate_oks(res: CocoResults, kp_idx: np.ndarray, g: _GtPrep, d: _DetPrep, sig: np.ndarray,
                   st: _Settings) -> _Pairs:
    n_units = st.cat_ids.shape[0] * st.img_ids.shape[0] if st.use_cats else st.img_ids.shape[0]
    g_order = np.argsort(g.unit, kind="stable")
    ng_u = np.bincount(g.unit, minlength=n_units)
    gstart_u = np.r_[0, np.cumsum(ng_u)[:-1]].astype(np.int64)
    rep = ng_u[d.unit] if st.use_cats else np.zeros(d.unit.shape, np.int64)  # useCats=0: no OKS (pycocotools)
    pair_k = np.repeat(np.arange(d.idx.size), rep)
    pair_off = _offsets(rep)
    pair_g = g_order[np.repeat(gstart_u[d.unit], rep) + pair_off]
    sub = kp_idx.shape[0] != res.keypoints.shape[1]
    det_xy = res.keypoints[:, kp_idx, :2] if sub else res.keypoints[:, :, :2]
    pair_d = d.idx[pair_k]
    # Pairs that provably cannot reach the lowest threshold are skipped (their OKS is never used): every
    # labelled gt keypoint lies at least the gap between the two keypoint boxes from its prediction, so
    # OKS <= exp(-gap² / (8·σmax²·(area+eps))).
    cand = _may_reach(det_xy, g.keypoints, g.area_oks, sig, pair_d, pair_g, float(st.iou_thrs.min()))
    oks = np.zeros(pair_d.shape[0])
    oks[cand] = oks_pairs(det_xy, g.keypoints, g.area_oks, g.bbox, sig, pair_d[cand], pair_g[cand])
    return _Pairs(pair_k, pair_g, pair_off, oks, ng_u, g_order, gstart_u)


# ---- stage 4: greedy matching ---------------------------------------------------------------------------
@dataclass(eq=False)
class _Matches:
    """Sparse matches: kept-detection row, combo (area × threshold), gt row, OKS."""

    det: np.ndarray
    combo: np.ndarray
    gt: np.ndarray
    oks: np.ndarray


@dataclass(eq=False)
class _Bucket:
    """Units (image × category) whose active gt count fits ``width`` slots, padded for matching at once."""

    units: np.ndarray  # (U,) unit indices (into the active-unit list), by active-detection count descending
    n_det: np.ndarray  # (U,) active detections per unit (descending)
    oks: np.ndarray  # (U, R, width) OKS of rank-r detection with slot j, −1 padding
    exists: np.ndarray  # (U, width) real gt slot
    crowd: np.ndarray  # (U, width)
    ignored: np.ndarray  # (U, C, width) gt ignored per combo
    gt_row: np.ndarray  # (U, width) gt row of each slot


def _match_bucket(b: _Bucket, thr_c: np.ndarray) -> np.ndarray:
    """Greedy matching for one bucket, all combos at once; (U, R, C) int64 matched slot or −1.

    ``thr_c`` (C,): thresholds min(t, 1 − 1e−10) per combo (area × threshold). Units are sorted by detection
    count descending, so the active units at rank r are a prefix."""
    O, nd, ig_c = b.oks, b.n_det, b.ignored
    U, R, Gm = O.shape
    C = thr_c.shape[0]
    out = np.full((U, R, C), -1, dtype=np.int64)
    free = np.broadcast_to(b.exists[:, None, :], (U, C, Gm)).copy()  # not yet matched (or crowd) and real
    crowd3 = b.crowd[:, None, :] & b.exists[:, None, :]
    not_ig = ~ig_c
    thr = thr_c[None, :, None]
    for r in range(R):
        n = int(np.count_nonzero(nd > r))
        if n == 0:
            break
        v = O[:n, r, None, :]  # (n, 1, Gm)
        cand = free[:n] & (v >= thr)  # (n, C, Gm)
        key = np.where(cand & not_ig[:n], v, -1.0)
        any_n = key.max(axis=-1) >= 0
        m = np.where(any_n, _last_argmax(key), -1)
        if not any_n.all():
            key = np.where(cand & ig_c[:n], v, -1.0)
            any_i = key.max(axis=-1) >= 0
            m = np.where(any_n, m, np.where(any_i, _last_argmax(key), -1))
        out[:n, r] = m
        u, c = np.nonzero(m >= 0)
        if u.size:
            j = m[u, c]
            free[u, c, j] = crowd3[u, 0, j]  # a matched non-crowd gt is used up; a crowd region stays free
    return out


def _solo_matches(pairs: _Pairs, good: np.ndarray, n_kept: int, n_gt: int, thr_c: np.ndarray,
                  out: list[list]) -> np.ndarray:
    """A detection whose only candidate gt has no other candidate detection matches it at exactly the combos
    whose threshold its OKS reaches (nothing competes; ignored or not, it is the only choice). Those pairs
    form components of their own, so the greedy matching of the rest is unchanged. Returns the rest."""
    gd_rows, gg_rows = pairs.det[good], pairs.gt[good]
    solo = np.bincount(gd_rows, minlength=n_kept)[gd_rows] == 1
    solo &= np.bincount(gg_rows, minlength=n_gt)[gg_rows] == 1
    if solo.any():
        s_oks = pairs.oks[good[solo]]
        hi, hc = np.nonzero(s_oks[:, None] >= thr_c[None, :])
        for lst, v in zip(out, (gd_rows[solo][hi], hc, gg_rows[solo][hi], s_oks[hi]), strict=True):
            lst.append(v)
    return good[~solo]


def _greedy_match(pairs: _Pairs, g: _GtPrep, d: _DetPrep, st: _Settings) -> _Matches:
    """Only pairs with OKS >= the lowest threshold can ever match. Detections without such a pair are
    unmatched at every threshold, and gts without one are never chosen, so both are left out of the padded
    arrays (the greedy order of the remaining ones is unchanged)."""
    T, A = st.iou_thrs.shape[0], st.area_rngs.shape[0]
    thr_c = np.tile(np.minimum(st.iou_thrs, 1 - 1e-10), A)
    a_of_c = np.repeat(np.arange(A), T)
    out: list[list] = [[], [], [], []]
    good = np.flatnonzero(pairs.oks >= thr_c.min()) if thr_c.size else np.zeros(0, np.int64)
    if good.size:
        good = _solo_matches(pairs, good, d.idx.size, g.rows.size, thr_c, out)
    if good.size:
        for b, sel, det_rows in _buckets(pairs, good, g, d, a_of_c):
            m = _match_bucket(b, thr_c)  # (U, R, C)
            du, dr = sel
            mm = m[du, dr]  # (n, C)
            hi, hc = np.nonzero(mm >= 0)
            slot = mm[hi, hc]
            for lst, v in zip(out, (det_rows[hi], hc, b.gt_row[du[hi], slot], b.oks[du[hi], dr[hi], slot]),
                              strict=True):
                lst.append(v)
    return _Matches(_cat(out[0], np.int64), _cat(out[1], np.int64), _cat(out[2], np.int64),
                    _cat(out[3], np.float64))


def _buckets(pairs: _Pairs, good: np.ndarray, g: _GtPrep, d: _DetPrep, a_of_c: np.ndarray):
    """Yield (bucket, (unit position, rank) of its active detections, their kept-detection rows)."""
    gk = pairs.det[good]  # kept-det rows, sorted (pairs are generated det by det)
    gu = d.unit[gk]
    gs = pairs.slot[good]  # gt slot within the unit
    # active detections: compressed rank within unit, in rank order
    a_rows = _unique(gk)
    a_unit = d.unit[a_rows]
    u_list, u_first, u_nd = np.unique(a_unit, return_index=True, return_counts=True)
    a_rank = np.arange(a_rows.size) - np.repeat(u_first, u_nd)
    # active gts: compressed slot within unit, in file order
    width = int(pairs.ng_unit.max()) + 1
    g_keys, g_inv = np.unique(gu * width + gs, return_inverse=True)
    g_key_unit, g_key_slot = g_keys // width, g_keys % width
    g_key_row = pairs.g_order[pairs.g_start[g_key_unit] + g_key_slot]
    _, gu_first, u_ng = np.unique(g_key_unit, return_index=True, return_counts=True)
    g_cslot = np.arange(g_keys.size) - np.repeat(gu_first, u_ng)
    # per pair: unit index (into u_list), compressed rank, compressed slot
    pu_idx = np.searchsorted(u_list, gu)
    p_rank = a_rank[np.searchsorted(a_rows, gk)]
    p_slot = g_cslot[g_inv]
    a_upos = np.searchsorted(u_list, a_unit)
    gm = 2 ** np.ceil(np.log2(u_ng)).astype(np.int64)
    for w in _unique(gm).tolist():
        ub = np.flatnonzero(gm == w)
        ub = ub[np.argsort(-u_nd[ub], kind="stable")]
        pos = np.full(u_list.size, -1, dtype=np.int64)
        pos[ub] = np.arange(ub.size)
        O = np.full((ub.size, int(u_nd[ub].max()), w), -1.0)
        sel = np.flatnonzero(pos[pu_idx] >= 0)
        O[pos[pu_idx[sel]], p_rank[sel], p_slot[sel]] = pairs.oks[good[sel]]
        ngb = u_ng[ub]
        exists = np.arange(w)[None, :] < ngb[:, None]
        grow = np.zeros((ub.size, w), dtype=np.int64)
        off = _offsets(ngb)
        grow[np.repeat(np.arange(ub.size), ngb), off] = g_key_row[np.repeat(gu_first[ub], ngb) + off]
        bucket = _Bucket(units=ub, n_det=u_nd[ub], oks=O, exists=exists, crowd=g.iscrowd[grow] & exists,
                         ignored=np.transpose(g.ignore_a[:, grow], (1, 0, 2))[:, a_of_c, :], gt_row=grow)
        dsel = np.flatnonzero(pos[a_upos] >= 0)
        yield bucket, (pos[a_upos[dsel]], a_rank[dsel]), a_rows[dsel]


# ---- stage 5: per-detection flags and accumulation --------------------------------------------------------
def _detection_flags(res: CocoResults, g: _GtPrep, d: _DetPrep, mt: _Matches, st: _Settings, warn: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(C, nK) ignored and true-positive flags per combo and kept detection."""
    T, A = st.iou_thrs.shape[0], st.area_rngs.shape[0]
    a_of_c = np.repeat(np.arange(A), T)
    d_area = res.det_area[d.idx]
    outside = (d_area[None, :] < st.area_rngs[:, :1]) | (d_area[None, :] > st.area_rngs[:, 1:])  # (A, nK)
    d_ig = outside[a_of_c]  # unmatched: ignored iff outside the area range
    tp = np.zeros((A * T, d.idx.size), dtype=bool)
    if mt.det.size:
        real = g.ann_id[mt.gt] != 0 if st.zero_id_quirk else np.ones(mt.det.size, dtype=bool)
        if warn and not real.all():
            ref = "crowdposetools" if st.flavor == "crowdpose" else "pycocotools"
            warnings.warn(f"a ground-truth annotation with id 0 was matched; {ref} counts such a match as a false "
                          "positive (reproduced here); xtcocotools (MMPose; --flavor xtcocotools) counts it as a "
                          "true positive", PosecalWarning, stacklevel=4)
        ig = g.ignore_a[a_of_c[mt.combo], mt.gt] | (~real & d_ig[mt.combo, mt.det])
        d_ig[mt.combo, mt.det] = ig
        tp[mt.combo, mt.det] = real & ~ig
    return d_ig, tp


def _pr_curve(tps: np.ndarray, igs: np.ndarray, sc: np.ndarray, npig: int, rec_thrs: np.ndarray
              ) -> tuple[float, np.ndarray, np.ndarray]:
    """Recall, interpolated precision (R,) and scores (R,) of one threshold, from the tp / ignore flags of
    the detections in pycocotools' global score order.

    pycocotools' cumulative tp/fp curves change only at true positives, and the precision envelope is read
    only where recall first reaches a threshold — always a true positive (or position 0 for recall 0). So
    the curves are evaluated at the true positives only; fp = position + 1 - tp - ignored, all exact
    integers in float64 as in pycocotools."""
    R = rec_thrs.shape[0]
    q, ss = np.zeros(R), np.zeros(R)
    nd = tps.shape[0]
    if nd == 0:
        return 0.0, q, ss
    tp_pos = np.flatnonzero(tps)
    n_tp = tp_pos.size
    tp_sum = np.arange(1, n_tp + 1, dtype=np.float64)
    ig_before = np.searchsorted(np.flatnonzero(igs), tp_pos, side="right")
    fp_sum = (tp_pos + 1 - ig_before).astype(np.float64) - tp_sum
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    env = np.maximum.accumulate(pr[::-1])[::-1]
    k = np.searchsorted(rc, rec_thrs, side="left")
    valid = k < n_tp
    q[valid] = env[k[valid]]
    ss[valid] = sc[tp_pos[k[valid]]]
    # a recall threshold <= 0 is reached at position 0, whatever it holds
    at0 = rec_thrs <= 0
    q[at0] = env[0] if n_tp else 0.0
    ss[at0] = sc[0]
    return (float(rc[-1]) if n_tp else 0.0), q, ss


def _accumulate(d: _DetPrep, g: _GtPrep, score: np.ndarray, d_ig: np.ndarray, tp: np.ndarray, st: _Settings
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """precision (T, R, K, A, M), recall (T, K, A, M), scores (T, R, K, A, M) as pycocotools' accumulate."""
    T, R, A, M = st.iou_thrs.shape[0], st.rec_thrs.shape[0], st.area_rngs.shape[0], len(st.max_dets)
    nK = st.cat_ids.shape[0] if st.use_cats else 1
    nI = st.img_ids.shape[0]
    precision = -np.ones((T, R, nK, A, M))
    recall = -np.ones((T, nK, A, M))
    score_arr = -np.ones((T, R, nK, A, M))
    k_cat = d.unit // nI if nI else d.unit
    k_score = score[d.idx]
    for ci in range(nK):
        sel_c = np.flatnonzero(k_cat == ci)
        g_in = g.cat == ci
        if sel_c.size == 0 and not g_in.any():
            continue  # pycocotools: no evaluated image of this category has a gt or a detection
        for mi, md in enumerate(st.max_dets):
            sel = sel_c[d.rank[sel_c] < md]
            sel = sel[_score_order(k_score[sel])]  # = np.argsort(-score, kind="mergesort")
            sc = k_score[sel]
            for a in range(A):
                npig = int(np.count_nonzero(~g.ignore_a[a][g_in]))
                if npig == 0:
                    continue
                for t in range(T):
                    c = a * T + t
                    rc, q, ss = _pr_curve(tp[c, sel], d_ig[c, sel], sc, npig, st.rec_thrs)
                    recall[t, ci, a, mi] = rc
                    precision[t, :, ci, a, mi] = q
                    score_arr[t, :, ci, a, mi] = ss
    return precision, recall, score_arr


def _per_detection(D: int, G: int, g: _GtPrep, d: _DetPrep, mt: _Matches, d_ig: np.ndarray, tp: np.ndarray,
                   T: int) -> dict[str, np.ndarray]:
    """Per-detection / per-gt outputs for the first area range (combos 0..T-1), in file rows."""
    det_gt = np.full((T, D), -1, dtype=np.int64)
    det_ig = np.zeros((T, D), dtype=bool)
    det_oks = np.zeros((T, D), dtype=np.float64)
    det_tp = np.zeros((T, D), dtype=bool)
    gt_det = np.full((T, G), -1, dtype=np.int64)
    if d.idx.size:
        det_ig[:, d.idx] = d_ig[:T]
        det_tp[:, d.idx] = tp[:T]
        at = mt.combo < T
        kk, tt, gg = mt.det[at], mt.combo[at], g.rows[mt.gt[at]]
        det_gt[tt, d.idx[kk]] = gg
        det_oks[tt, d.idx[kk]] = mt.oks[at]
        # gt -> det: the last detection (in rank order) matched to it
        order_k = np.argsort(d.unit[kk] * (int(d.rank.max()) + 1) + d.rank[kk], kind="stable")
        gt_det[tt[order_k], gg[order_k]] = d.idx[kk][order_k]
    gt_ignored = np.ones(G, dtype=bool)
    gt_ignored[g.rows] = g.ignore_a[0]
    return {"det_gt": det_gt, "det_ignored": det_ig, "det_oks": det_oks, "det_tp": det_tp, "gt_det": gt_det,
            "gt_ignored": gt_ignored}


def default_use_area(gt: CocoGroundTruth) -> bool:
    """Whether OKS uses the annotations' ``area`` by default: yes when every annotation has one, no (0.53·w·h
    of the gt box, xtcocotools' ``use_area=False``) when none has. Raises :class:`PosecalInputError` naming the
    first annotation without one when only some have it: pycocotools and xtcocotools both fail there
    (``KeyError: 'area'``), and switching every person to the box area would change the whole dataset's OKS."""
    if gt.has_area or len(gt) == 0:
        return bool(gt.has_area)
    missing = np.isnan(gt.area)
    if not missing.all():
        i = int(np.argmax(missing))
        raise PosecalInputError("no 'area' (other annotations have one; give every annotation an area, or "
                                "evaluate all with --no-use-area: 0.53·w·h of the box)", gt.path,
                                int(gt.ann_id[i]), "area")
    return False


def oks_area(gt: CocoGroundTruth, *, use_area: bool | None = None, flavor: str | None = None) -> np.ndarray:
    """``(G,)`` the area (image px²) in each gt's OKS scale under :func:`evaluate_dataset`'s rules: the gt
    ``area``, or 0.53·w·h of the gt box for a CrowdPose file (``crowdIndex`` on every image), for
    ``use_area=False`` and for a file without any ``area`` (xtcocotools' ``use_area=False``). Training
    targets and gt-area rescoring use it so that they score people as ``posecal evaluate`` will. Raises
    :class:`PosecalInputError` (file, annotation, ``area``) when only some annotations have an area."""
    if flavor is None:
        flavor = "crowdpose" if gt.crowd_index is not None else "pycocotools"
    if use_area is None:
        use_area = default_use_area(gt)
    if flavor == "crowdpose" or not use_area:
        return 0.53 * gt.bbox[:, 2] * gt.bbox[:, 3]
    return np.asarray(gt.area, dtype=np.float64)


def with_oks_area(gt: CocoGroundTruth) -> CocoGroundTruth:
    """A shallow copy of ``gt`` whose ``area`` is :func:`oks_area` (the evaluator's default rule), every
    annotation then having one (``has_area``)."""
    import dataclasses

    area = oks_area(gt)
    if area is gt.area:
        return gt
    return dataclasses.replace(gt, area=area, has_area=True)


def _settings(gt: CocoGroundTruth, flavor: str, use_area: bool | None, crowd_levels: bool | None,
              max_dets: int | Sequence[int], img_ids: Any, cat_ids: Any, use_cats: bool, iou_thrs: Any,
              rec_thrs: Any, area_rngs: Any) -> _Settings:
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, not {flavor!r}")
    md = (int(max_dets),) if np.ndim(max_dets) == 0 else tuple(sorted(int(m) for m in max_dets))
    if not md or min(md) < 0:
        raise ValueError(f"max_dets must be non-negative, got {max_dets!r}")
    ar = AREA_RNGS if area_rngs is None else np.asarray(area_rngs, dtype=np.float64).reshape(-1, 2)
    return _Settings(
        iou_thrs=IOU_THRS if iou_thrs is None else np.asarray(iou_thrs, dtype=np.float64).reshape(-1),
        rec_thrs=REC_THRS if rec_thrs is None else np.asarray(rec_thrs, dtype=np.float64).reshape(-1),
        area_rngs=ar, max_dets=md,
        cat_ids=gt.category_ids if cat_ids is None else _ids(cat_ids) if use_cats else _ids_in_order(cat_ids),
        img_ids=gt.image_ids if img_ids is None else _ids(img_ids),
        use_cats=bool(use_cats), use_area=default_use_area(gt) if use_area is None else bool(use_area), flavor=flavor,
        crowd_levels=(flavor == "crowdpose") if crowd_levels is None else bool(crowd_levels),
    )


def _ids(v: Any) -> np.ndarray:
    return _unique(np.asarray(v, dtype=np.int64).reshape(-1))


def _ids_in_order(v: Any) -> np.ndarray:
    """Distinct ids in their given order (pycocotools keeps catIds unsorted when useCats is off)."""
    a = np.asarray(v, dtype=np.int64).reshape(-1)
    _, first = np.unique(a, return_index=True)
    return a[np.sort(first)]


def evaluate(gt: CocoGroundTruth | str | dict, res: CocoResults | str | list, *, sigmas: Any = None,
             use_area: bool | None = None, flavor: str = "pycocotools", keypoints: Any = None,
             scores: np.ndarray | None = None, max_dets: int | Sequence[int] = 20, warn: bool = True,
             img_ids: Any = None, cat_ids: Any = None, use_cats: bool = True, iou_thrs: Any = None,
             rec_thrs: Any = None, area_rngs: Any = None, area_labels: Sequence[str] | None = None,
             crowd_levels: bool | None = None, keep_matches: bool = False) -> CocoEvalResult:
    """COCO keypoint AP/AR, identical to pycocotools 2.0.x ``COCOeval(gt, dt, 'keypoints')`` (or the
    ``flavor``'s reference, see the module docstring).

    Args:
        gt: ground truth (:class:`CocoGroundTruth`, path or dict).
        res: results (:class:`CocoResults`, path or list of records).
        sigmas: (K,) OKS constants of the evaluated keypoints; default: the gt's keypoint set.
        use_area: False → 0.53·w·h of the gt box replaces ``area`` for OKS and area ranges (xtcocotools'
            ``use_area=False``, needed for CrowdPose/AIC files without ``area``); default: True when every
            gt has an ``area``.
        flavor: ``"pycocotools"`` (default), ``"xtcocotools"`` or ``"crowdpose"``.
        keypoints: indices (or a part name of the gt's keypoint set, e.g. ``"foot"``) of the keypoints to
            evaluate; default all K.
        scores: optional (D,) instance scores replacing ``res.score`` (e.g. a WholeBody part score or a
            recalibrated confidence).
        max_dets: detections per image (20 for keypoints), or several (pycocotools' ``maxDets`` list: the
            largest is used for matching, each gives one M slice of the precision array).
        warn: warn (PosecalWarning) about a matched gt with id 0 under pycocotools.
        img_ids, cat_ids, use_cats, iou_thrs, rec_thrs, area_rngs, area_labels: pycocotools' ``params``
            (``imgIds``, ``catIds``, ``useCats``, ``iouThrs``, ``recThrs``, ``areaRng``, ``areaRngLbl``);
            default: all images and categories of ``gt`` and pycocotools' keypoint defaults.
        crowd_levels: add CrowdPose's AP(E)/AP(M)/AP(H) (needs every image's ``crowdIndex``); default: on
            for ``flavor="crowdpose"``.
        keep_matches: keep the matching of every area range in ``match_detail`` (for pycocotools'
            ``evalImgs``, :mod:`posecal.compat`).

    Returns:
        :class:`CocoEvalResult` (stats, precision/recall/scores arrays and per-detection matches).
    """
    with no_gc():
        if not isinstance(gt, CocoGroundTruth):
            gt = load_gt(gt)
        if not isinstance(res, CocoResults):
            res = load_results(res, gt)
        st = _settings(gt, flavor, use_area, crowd_levels, max_dets, img_ids, cat_ids, use_cats, iou_thrs,
                       rec_thrs, area_rngs)
        labels = tuple(area_labels) if area_labels is not None else (
            AREA_LABELS if area_rngs is None else tuple(f"area{i}" for i in range(st.area_rngs.shape[0])))
        kp_idx = _keypoint_index(gt, keypoints)
        _check_body_only(res, kp_idx)
        sig = _resolve_sigmas(gt, kp_idx, sigmas)
        score = _check_inputs(gt, res, scores)
        out = _evaluate_core(gt, res, score, kp_idx, sig, st, warn)
        if st.crowd_levels:
            stats = _crowd_stats(gt, res, score, kp_idx, sig, st, out[0], out[1])
        else:
            stats = _summarize(out[0], out[1], st, labels)
    precision, recall, score_arr, per_det, det_rank, g = out[:6]
    gt_eval = np.zeros(len(gt), dtype=bool)
    gt_eval[g.rows] = True
    return CocoEvalResult(
        stats=stats, precision=precision, recall=recall, scores=score_arr, det_evaluated=det_rank >= 0,
        det_rank=det_rank, cat_ids=st.cat_ids, sigmas=sig, use_area=st.use_area and not st.box_area_only,
        flavor=flavor, max_dets=st.max_dets[-1], iou_thrs=st.iou_thrs.copy(), rec_thrs=st.rec_thrs.copy(),
        area_rngs=st.area_rngs.copy(), area_labels=labels, max_dets_list=st.max_dets, img_ids=st.img_ids,
        gt_evaluated=gt_eval, crowd_levels=st.crowd_levels, match_detail=out[6] if keep_matches else None,
        **per_det,
    )


def _check_body_only(res: CocoResults, kp_idx: np.ndarray) -> None:
    """Body-only results against COCO-WholeBody ground truth (:attr:`CocoResults.body_only`) can be
    evaluated on the 17 body keypoints only: anything else is refused (their parts are padding)."""
    if res.body_only and kp_idx.size and int(kp_idx.max()) >= 17:
        raise PosecalInputError("the results carry only the 17 body keypoints (no foot_kpts / face_kpts / "
                                "lefthand_kpts / righthand_kpts): only the body can be evaluated (the WholeBody "
                                "parts, sigmas for all 133 keypoints and --report need the part fields)",
                                res.path, None, "keypoints")


def _check_inputs(gt: CocoGroundTruth, res: CocoResults, scores: np.ndarray | None) -> np.ndarray:
    """The instance scores to rank by; checks that the results fit the ground truth."""
    D = len(res)
    if res.keypoints.shape[1] != gt.num_joints and D:
        raise PosecalInputError(f"results have {res.keypoints.shape[1]} keypoints, ground truth "
                                f"{gt.num_joints}", res.path, None, "keypoints")
    if D:
        known = np.isin(res.image_id, gt.image_ids)
        if not known.all():
            i = int(np.argmin(known))
            raise PosecalInputError(f"unknown image_id {int(res.image_id[i])} (not in the ground truth "
                                    "images)", res.path, i, "image_id")
    s_all = res.score if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if s_all.shape[0] != D:
        raise ValueError(f"scores has {s_all.shape[0]} entries for {D} detections")
    return s_all


def _evaluate_core(gt: CocoGroundTruth, res: CocoResults, score: np.ndarray, kp_idx: np.ndarray,
                   sig: np.ndarray, st: _Settings, warn: bool):
    """prepare gt → rank detections → candidate OKS → greedy match → flags → accumulate."""
    g = _prepare_gt(gt, kp_idx, st)
    d = _rank_detections(res, score, kp_idx, st)
    pairs = _candidate_oks(res, kp_idx, g, d, sig, st)
    mt = _greedy_match(pairs, g, d, st)
    d_ig, tp = _detection_flags(res, g, d, mt, st, warn)
    precision, recall, score_arr = _accumulate(d, g, score, d_ig, tp, st)
    per_det = _per_detection(len(res), len(gt), g, d, mt, d_ig, tp, st.iou_thrs.shape[0])
    return precision, recall, score_arr, per_det, d.det_rank, g, MatchDetail(g, d, mt, d_ig, score)


@dataclass(eq=False)
class MatchDetail:
    """Every area range's matching (the material of pycocotools' ``evalImgs``): the evaluated gts, the kept
    detections, the sparse matches over combos (area index × T + threshold index), and the (C, nK) ignore
    flags of the kept detections."""

    gt: _GtPrep
    det: _DetPrep
    matches: _Matches
    det_ignored: np.ndarray
    score: np.ndarray


def _mean_valid(s: np.ndarray) -> float:
    v = s[s > -1]
    return -1.0 if v.size == 0 else float(np.mean(v))


def _summary_value(precision: np.ndarray, recall: np.ndarray, st: _Settings, labels: Sequence[str], ap: bool,
                   thr: float | None = None, area: str = "all", max_det: int = 20) -> float:
    """pycocotools ``_summarize``: mean over the entries > −1 of the selected slice (−1 when none)."""
    aind = [i for i, lbl in enumerate(labels) if lbl == area]
    mind = [i for i, m in enumerate(st.max_dets) if m == max_det]
    s = precision if ap else recall
    if thr is not None:
        s = s[np.where(thr == st.iou_thrs)[0]]
    s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
    return _mean_valid(s)


_SUMMARY_ROWS = ((True, None, "all"), (True, 0.5, "all"), (True, 0.75, "all"), (True, None, "medium"),
                 (True, None, "large"), (False, None, "all"), (False, 0.5, "all"), (False, 0.75, "all"),
                 (False, None, "medium"), (False, None, "large"))


def _summarize(precision: np.ndarray, recall: np.ndarray, st: _Settings | None = None,
               labels: Sequence[str] = AREA_LABELS) -> dict[str, float]:
    """pycocotools ``summarize()`` for keypoints (maxDets 20): the 10 stats by name."""
    st = st or _settings_default()
    vals = [_summary_value(precision, recall, st, labels, ap, thr, area) for ap, thr, area in _SUMMARY_ROWS]
    return dict(zip(STAT_NAMES, vals, strict=True))


def _settings_default() -> _Settings:
    return _Settings(IOU_THRS, REC_THRS, AREA_RNGS, (20,), np.zeros(0, np.int64), np.zeros(0, np.int64), True,
                     True, "pycocotools", False)


def crowd_level_image_ids(gt: CocoGroundTruth, thresholds: tuple[float, float] = CROWD_THRESHOLDS
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image ids of the easy / medium / hard CrowdPose levels (crowdposetools' ``split``:
    crowdIndex < first, < second, else)."""
    ci = gt.crowd_index
    if ci is None:
        missing = next((i for i in gt.image_ids.tolist()
                        if not isinstance(gt.images[i].get("crowdIndex"), (int, float))
                        or isinstance(gt.images[i].get("crowdIndex"), bool)), None)
        raise PosecalInputError("CrowdPose crowd levels need every image's numeric 'crowdIndex'", gt.path,
                                missing, "crowdIndex")
    first, second = thresholds
    ids = gt.image_ids
    return ids[ci < first], ids[(ci >= first) & (ci < second)], ids[ci >= second]


def _crowd_stats(gt: CocoGroundTruth, res: CocoResults, score: np.ndarray, kp_idx: np.ndarray,
                 sig: np.ndarray, st: _Settings, precision: np.ndarray, recall: np.ndarray
                 ) -> dict[str, float]:
    """crowdposetools' ``_summarizeKps`` (xtcocotools' ``_summarizeKps_crowd``): AP/AR at 'all' and the
    crowd levels, each ``round(mean(precision[:, :, :, 0, :]), 4)`` of a re-evaluation on its images."""
    labels = ("all",) + tuple(f"area{i}" for i in range(1, st.area_rngs.shape[0]))
    md = 20

    def one(ap: bool, thr: float | None = None) -> float:
        return _summary_value(precision, recall, st, labels, ap, thr, "all", md)

    stats = {"AP": one(True), "AP50": one(True, 0.5), "AP75": one(True, 0.75), "AR": one(False),
             "AR50": one(False, 0.5), "AR75": one(False, 0.75)}
    for name, ids in zip(("AP(E)", "AP(M)", "AP(H)"), crowd_level_image_ids(gt), strict=True):
        sub = _Settings(st.iou_thrs, st.rec_thrs, st.area_rngs, st.max_dets, st.cat_ids, ids, st.use_cats,
                        st.use_area, st.flavor, st.crowd_levels)
        p = _evaluate_core(gt, res, score, kp_idx, sig, sub, False)[0]
        stats[name] = float(np.round(np.mean(p[:, :, :, 0, :]), 4))
    return stats


def summary_lines(result: CocoEvalResult | dict[str, float]) -> list[str]:
    """The summary lines as ``COCOeval.summarize()`` prints them (pycocotools' 10; for CrowdPose the 6
    AP/AR lines and the easy / medium / hard lines of xtcocotools' ``keypoints_crowd``), returned as text."""
    stats = result.stats if isinstance(result, CocoEvalResult) else result
    fmt = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
    iou_all = f"{IOU_THRS[0]:0.2f}:{IOU_THRS[-1]:0.2f}"
    out = []
    if "AP(E)" in stats:
        rows = ((True, None, "AP"), (True, 0.5, "AP50"), (True, 0.75, "AP75"), (False, None, "AR"),
                (False, 0.5, "AR50"), (False, 0.75, "AR75"))
        for ap, thr, name in rows:
            title, typ = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
            iou = iou_all if thr is None else f"{thr:0.2f}"
            out.append(fmt.format(title, typ, iou, "all", 20, stats[name]))
        tfmt = " {:<18} {} @[ IoU={:<9} | type={:>6s} | maxDets={:>3d} ] = {:0.3f}"
        for level, name in (("easy", "AP(E)"), ("medium", "AP(M)"), ("hard", "AP(H)")):
            out.append(tfmt.format("Average Precision", "(AP)", iou_all, level, 20, stats[name]))
        return out
    for name, (ap, thr, area) in zip(STAT_NAMES, _SUMMARY_ROWS, strict=True):
        title, typ = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        out.append(fmt.format(title, typ, iou_all if thr is None else f"{thr:0.2f}", area, 20, stats[name]))
    return out


def evaluate_wholebody(gt: CocoGroundTruth | str | dict, res: CocoResults | str | list, *,
                       parts: tuple[str, ...] = WHOLEBODY_PARTS, use_area: bool | None = None,
                       part_scores: bool = True, sigmas: Any = None) -> dict[str, CocoEvalResult]:
    """Part-wise COCO-WholeBody AP/AR as xtcocotools evaluates ``keypoints_<part>`` (paper Table 3).

    Each part is evaluated on its own keypoints with its own sigmas; with ``part_scores`` each part's
    detections are ranked by the part confidence ``<part>_score`` of the results (Table 3 "Part" row),
    falling back to the instance ``score`` where absent (Table 3 "Whole" row; xtcocotools ranks
    ``keypoints_body`` by ``score`` always, so give no ``body_score`` to compare with it).

    Returns:
        part name -> :class:`CocoEvalResult` (flavor ``"xtcocotools"``).
    """
    if not isinstance(gt, CocoGroundTruth):
        gt = load_gt(gt)
    if not isinstance(res, CocoResults):
        res = load_results(res, gt)
    kset = gt.keypoint_set
    if kset is None or not all(p in kset.parts for p in parts):
        raise PosecalInputError("ground truth is not COCO-WholeBody (no foot/face/hand keypoints)", gt.path,
                                None, "annotations")
    out = {}
    for p in parts:
        idx = np.asarray(kset.parts[p], dtype=np.int64)
        sig = None if sigmas is None else np.asarray(sigmas, dtype=np.float64)[idx]
        sc = res.part_scores.get(p) if part_scores else None
        out[p] = evaluate(gt, res, sigmas=sig, use_area=use_area, flavor="xtcocotools", keypoints=idx,
                          scores=sc)
    return out


@dataclass(eq=False)
class DatasetEvaluation:
    """Result of :func:`evaluate_dataset`: what ``posecal evaluate`` reports.

    Attributes:
        result: the main :class:`CocoEvalResult` (for COCO-WholeBody: the 17 body keypoints as
            pycocotools evaluates the file).
        parts: COCO-WholeBody part name -> :class:`CocoEvalResult` (xtcocotools part-wise), else empty.
        use_area: the resolved ``use_area``.
        flavor: the resolved flavor.
        notes: remarks for people (e.g. "ground truth has no 'area'").
    """

    result: CocoEvalResult
    parts: dict[str, CocoEvalResult]
    use_area: bool
    flavor: str
    notes: list[str] = field(default_factory=list)


def evaluate_dataset(gt: CocoGroundTruth | str | dict, res: CocoResults | str | list, *, sigmas: Any = None,
                     use_area: bool | None = None, flavor: str | None = None) -> DatasetEvaluation:
    """Evaluate a results file the way its ground truth calls for (the rules of ``posecal evaluate``).

    * ``flavor`` None: ``"crowdpose"`` when every image has a ``crowdIndex`` (a CrowdPose file), else
      ``"pycocotools"``. A CrowdPose file under ``"xtcocotools"`` is evaluated as its ``keypoints_crowd``
      (MMPose's CrowdPose metric: AP(E)/AP(M)/AP(H) too).
    * ``use_area`` None: the gt ``area`` when every gt has one, else 0.53·w·h of the box (with a note).
    * COCO-WholeBody ground truth (part fields) with default sigmas: the body as pycocotools evaluates the
      file (its own COCO-17 sigmas, which differ from the WholeBody list in the last bit), plus
      xtcocotools' part-wise AP with part scores (:func:`evaluate_wholebody`). Body-only results (17
      ``keypoints``, no part fields: a COCO body model's file, which pycocotools evaluates on such ground
      truth) get the body only, with a note; with explicit sigmas over all 133 keypoints they are refused.
    """
    if not isinstance(gt, CocoGroundTruth):
        gt = load_gt(gt)
    if not isinstance(res, CocoResults):
        res = load_results(res, gt)
    if flavor is None:
        flavor = "crowdpose" if gt.crowd_index is not None else "pycocotools"
    notes = []
    if use_area is None:
        use_area = default_use_area(gt)
        if not use_area and flavor != "crowdpose":
            notes.append("ground truth has no 'area': OKS scaled by 0.53·w·h of the gt box (--no-use-area)")
    if flavor == "crowdpose":
        use_area = False
    if gt.wholebody and sigmas is None:
        result = evaluate(gt, res, sigmas=COCO17.sigmas, use_area=use_area, flavor=flavor, keypoints="body")
        if res.body_only:
            notes.append("results carry only the 17 body keypoints: body AP/AR only, no COCO-WholeBody parts")
            return DatasetEvaluation(result, {}, use_area, flavor, notes)
        return DatasetEvaluation(result, evaluate_wholebody(gt, res, use_area=use_area), use_area, flavor,
                                 notes)
    # a CrowdPose file under xtcocotools: its 'keypoints_crowd' (MMPose's CrowdPose metric), crowd levels too
    crowd = flavor == "crowdpose" or (flavor == "xtcocotools" and gt.crowd_index is not None)
    if flavor == "crowdpose" and len(res):
        n0 = int(np.count_nonzero(~(res.keypoints[:, :, 2] > 0).any(axis=1)))
        if n0:
            warnings.warn(f"{res.path or 'results'}: {n0} detection{'s' if n0 > 1 else ''} with every keypoint "
                          "score 0: crowdposetools keeps them (reproduced here); MMPose's CrowdPose metric "
                          "(xtcocotools keypoints_crowd; --flavor xtcocotools) drops them", PosecalWarning,
                          stacklevel=2)
    result = evaluate(gt, res, sigmas=sigmas, use_area=use_area, flavor=flavor, crowd_levels=crowd)
    return DatasetEvaluation(result, {}, use_area, flavor, notes)
