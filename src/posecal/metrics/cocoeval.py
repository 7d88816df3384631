"""The COCO keypoint evaluator: AP/AR identical to pycocotools 2.0.x ``COCOeval(iouType='keypoints')``.

Vectorised over the whole dataset (no Python loop per image):

* OKS for every (detection, gt) pair of every image at once (paper Eq. 7), summed per pair over the labelled
  keypoints only, grouped by labelled-keypoint count, so every value is bit-identical to pycocotools;
* greedy matching run for all images, all 10 OKS thresholds and all 3 area ranges at once by iterating over
  the ≤ ``max_dets`` (20) detection ranks, on padded (units × ranks × gts) arrays bucketed by gt count;
* accumulation (Eqs. 8–9 of the paper: precision/recall, 101-point interpolated AP) per category and area.

Every pycocotools quirk is reproduced (see ``notes/coco-keypoint-eval-reference.md``): gt ``area`` + eps,
``num_keypoints == 0`` gts ignored, crowd regions absorbing detections, the 3×-box distance branch for gts
without labelled keypoints, stable mergesort orderings, maxDets 20 applied before OKS, the keypoint-extent
detection area, a gt with id 0 counting as a false positive when matched, ``np.linspace`` thresholds, and
the −1 conventions. ``flavor="xtcocotools"`` reproduces xtcocotools 1.14 instead (ignore by counting
labelled keypoints, detections whose keypoint scores are all ≤ 0 dropped, −1 as unmatched sentinel, and the
0.53·w·h area when ``use_area=False`` or a gt has no ``area``), which is also what part-wise COCO-WholeBody
evaluation (:func:`evaluate_wholebody`) uses.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posecal.errors import PosecalInputError, PosecalWarning
from posecal.io.coco import CocoGroundTruth, CocoResults, _unique, load_gt, load_results, no_gc
from posecal.metrics.oks import oks_pairs

__all__ = ["CocoEvalResult", "evaluate", "evaluate_wholebody", "summary_lines", "STAT_NAMES", "IOU_THRS",
           "REC_THRS", "AREA_RNGS", "AREA_LABELS"]

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
#: OKS thresholds built exactly as pycocotools does (``IOU_THRS[8] == 0.8999999999999999``)
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNGS = np.array([[0**2, 1e5**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
AREA_LABELS = ("all", "medium", "large")
WHOLEBODY_PARTS = ("body", "foot", "face", "lefthand", "righthand", "wholebody")


@dataclass(eq=False)  # holds arrays: identity comparison
class CocoEvalResult:
    """Result of :func:`evaluate`.

    Attributes:
        stats: the 10 summary numbers ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl`` (−1: undefined).
        precision: (T, R, K, A, M) as pycocotools' ``eval['precision']`` (T=10 OKS thresholds, R=101 recall
            thresholds, K categories, A=3 area ranges, M=1 maxDets).
        recall: (T, K, A, M).
        scores: (T, R, K, A, M).
        det_evaluated: (D,) bool — detection is in an evaluated category, not dropped, and within the
            ``max_dets`` best of its image.
        det_gt: (T, D) int64 — gt row (index into the gt arrays) matched at each threshold for area 'all',
            −1 if none.
        det_ignored: (T, D) bool — the detection is ignored (matched to an ignored/crowd gt) for area 'all'.
        det_oks: (T, D) float64 — OKS with the matched gt, 0 if unmatched.
        det_tp: (T, D) bool — counted as a true positive for area 'all' (False for a match to a gt with id 0
            under pycocotools, which counts it as a false positive).
        gt_det: (T, G) int64 — detection row matched to each gt (the last one for crowd regions), −1 if none.
        gt_ignored: (G,) bool — gt ignored for area 'all' (crowd or no keypoints).
        det_rank: (D,) int64 rank of the detection within its image by score (−1 when not evaluated).
        cat_ids, iou_thrs, rec_thrs, area_rngs, area_labels, max_dets, sigmas, use_area, flavor: the settings.
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

    def stats_array(self) -> np.ndarray:
        """(10,) stats in pycocotools' order (``COCOeval.stats``)."""
        return np.array([self.stats[k] for k in STAT_NAMES], dtype=np.float64)


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
    return s


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
    # (K, N) contiguous copies: reducing over the first axis is vectorised (several times faster than
    # reducing each short row); min / max are exact in any order
    xt, yt = np.ascontiguousarray(det_xy[:, :, 0].T), np.ascontiguousarray(det_xy[:, :, 1].T)
    dx0, dx1 = xt.min(axis=0), xt.max(axis=0)
    dy0, dy1 = yt.min(axis=0), yt.max(axis=0)
    lab = np.ascontiguousarray(gkp[:, :, 2].T) > 0
    xt, yt = np.ascontiguousarray(gkp[:, :, 0].T), np.ascontiguousarray(gkp[:, :, 1].T)
    gx0, gy0 = np.where(lab, xt, np.inf).min(axis=0), np.where(lab, yt, np.inf).min(axis=0)
    gx1, gy1 = np.where(lab, xt, -np.inf).max(axis=0), np.where(lab, yt, -np.inf).max(axis=0)
    has = lab.any(axis=0)
    gap_x = np.maximum(0.0, np.maximum(gx0[pg] - dx1[pd], dx0[pd] - gx1[pg]))
    gap_y = np.maximum(0.0, np.maximum(gy0[pg] - dy1[pd], dy0[pd] - gy1[pg]))
    with np.errstate(invalid="ignore", over="ignore"):
        bound = np.exp(-(gap_x**2 + gap_y**2) / (8.0 * float(sig.max()) ** 2 * (g_area[pg] + np.spacing(1))))
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


def _match_bucket(O: np.ndarray, nd: np.ndarray, exists: np.ndarray, crowd: np.ndarray, ig_c: np.ndarray,
                  thr_c: np.ndarray) -> np.ndarray:
    """Greedy matching for one bucket of units (images×category) with ≤ Gm gts, all combos at once.

    Args:
        O: (U, R, Gm) OKS of rank-r detection with gt j (−1 padding).
        nd: (U,) detections per unit, sorted DESCENDING (active units at rank r are a prefix).
        exists: (U, Gm) real gt slot; crowd: (U, Gm); ig_c: (U, C, Gm) gt ignored per combo.
        thr_c: (C,) thresholds min(t, 1 − 1e−10) per combo (area × threshold).

    Returns:
        (U, R, C) int64 matched gt slot or −1.
    """
    U, R, Gm = O.shape
    C = thr_c.shape[0]
    out = np.full((U, R, C), -1, dtype=np.int64)
    free = np.broadcast_to(exists[:, None, :], (U, C, Gm)).copy()  # not yet matched (or crowd) and real
    crowd3 = crowd[:, None, :] & exists[:, None, :]
    not_ig = ~ig_c
    thr = thr_c[None, :, None]
    for r in range(R):
        n = int(np.count_nonzero(nd > r))
        if n == 0:
            break
        v = O[:n, r, None, :]  # (n, 1, Gm)
        cand = free[:n] & (v >= thr)  # (n, C, Gm)
        cn = cand & not_ig[:n]
        key = np.where(cn, v, -1.0)
        any_n = key.max(axis=-1) >= 0
        m = np.where(any_n, _last_argmax(key), -1)
        if not any_n.all():
            ci = cand & ig_c[:n]
            key = np.where(ci, v, -1.0)
            any_i = key.max(axis=-1) >= 0
            m = np.where(any_n, m, np.where(any_i, _last_argmax(key), -1))
        out[:n, r] = m
        u, c = np.nonzero(m >= 0)
        if u.size:
            j = m[u, c]
            free[u, c, j] = crowd3[u, 0, j]  # a matched non-crowd gt is used up; a crowd region stays free
    return out


def evaluate(gt: CocoGroundTruth | str | dict, res: CocoResults | str | list, *, sigmas: Any = None,
             use_area: bool = True, flavor: str = "pycocotools", keypoints: Any = None,
             scores: np.ndarray | None = None, max_dets: int = 20, warn: bool = True) -> CocoEvalResult:
    """COCO keypoint AP/AR, identical to pycocotools 2.0.x ``COCOeval(gt, dt, 'keypoints')``.

    Args:
        gt: ground truth (:class:`CocoGroundTruth`, path or dict).
        res: results (:class:`CocoResults`, path or list of records).
        sigmas: (K,) OKS constants of the evaluated keypoints; default: the gt's keypoint set.
        use_area: False → 0.53·w·h of the gt box replaces ``area`` for OKS and area ranges (xtcocotools'
            ``use_area=False``, needed for CrowdPose/AIC files without ``area``).
        flavor: ``"pycocotools"`` (default) or ``"xtcocotools"`` (see module docstring).
        keypoints: indices (or a part name of the gt's keypoint set, e.g. ``"foot"``) of the keypoints to
            evaluate; default all K.
        scores: optional (D,) instance scores replacing ``res.score`` (e.g. a WholeBody part score or a
            recalibrated confidence).
        max_dets: detections per image (20 for keypoints).
        warn: warn (PosecalWarning) about a matched gt with id 0 under pycocotools.

    Returns:
        :class:`CocoEvalResult` (stats, precision/recall/scores arrays and per-detection matches).
    """
    with no_gc():
        return _evaluate(gt, res, sigmas=sigmas, use_area=use_area, flavor=flavor, keypoints=keypoints,
                         scores=scores, max_dets=max_dets, warn=warn)


def _evaluate(gt: CocoGroundTruth | str | dict, res: CocoResults | str | list, *, sigmas: Any = None,
              use_area: bool = True, flavor: str = "pycocotools", keypoints: Any = None,
              scores: np.ndarray | None = None, max_dets: int = 20, warn: bool = True) -> CocoEvalResult:
    # body of evaluate (run with the garbage collector paused)
    if flavor not in ("pycocotools", "xtcocotools"):
        raise ValueError(f"flavor must be 'pycocotools' or 'xtcocotools', not {flavor!r}")
    if not isinstance(gt, CocoGroundTruth):
        gt = load_gt(gt)
    if not isinstance(res, CocoResults):
        res = load_results(res, gt)
    xt = flavor == "xtcocotools"
    K_all = gt.num_joints
    if keypoints is None:
        kp_idx = np.arange(K_all)
    elif isinstance(keypoints, str):
        if gt.keypoint_set is None or keypoints not in gt.keypoint_set.parts:
            raise PosecalInputError(f"unknown keypoint part {keypoints!r}", gt.path, None, "keypoints")
        kp_idx = np.asarray(gt.keypoint_set.parts[keypoints], dtype=np.int64)
    else:
        kp_idx = np.asarray(keypoints, dtype=np.int64).reshape(-1)
    sig = _resolve_sigmas(gt, kp_idx, sigmas)
    if res.keypoints.shape[1] != K_all and len(res):
        raise PosecalInputError(f"results have {res.keypoints.shape[1]} keypoints, ground truth {K_all}",
                                res.path, None, "keypoints")
    T, R, A = IOU_THRS.shape[0], REC_THRS.shape[0], AREA_RNGS.shape[0]
    D, G = len(res), len(gt)
    cats = gt.category_ids
    img_ids = gt.image_ids
    nI, nC = img_ids.shape[0], cats.shape[0]
    s_all = res.score if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if s_all.shape[0] != D:
        raise ValueError(f"scores has {s_all.shape[0]} entries for {D} detections")

    # ---- ground truth: unit, ignore flags, area ----
    gkp = gt.keypoints[:, kp_idx] if kp_idx.shape[0] != K_all else gt.keypoints
    if xt:
        g_ign = gt.iscrowd | (np.count_nonzero(gkp[:, :, 2] > 0, axis=1) == 0)
    else:
        g_ign = gt.iscrowd | (gt.num_keypoints == 0)
    missing_area = np.isnan(gt.area)
    if use_area and missing_area.any():
        i = int(np.argmax(missing_area))
        raise PosecalInputError("ground truth has no 'area'; evaluate with use_area=False (--no-use-area, "
                                "0.53·w·h of the box)", gt.path, int(gt.ann_id[i]), "area")
    box_area = gt.bbox[:, 3] * gt.bbox[:, 2] * 0.53
    g_area = gt.area if use_area else box_area
    if xt:  # xtcocotools buckets by 0.53·w·h where a gt has no area or use_area is off
        g_area_rng = np.where(missing_area | (not use_area), gt.bbox[:, 2] * gt.bbox[:, 3] * 0.53, gt.area)
    else:
        g_area_rng = g_area
    g_cat = np.searchsorted(cats, gt.category_id)
    g_img = np.searchsorted(img_ids, gt.image_id)
    g_unit = g_cat * nI + g_img
    # (A, G) ignore per area range
    ga = g_area_rng[None, :]
    g_ig_a = g_ign[None, :] | (ga < AREA_RNGS[:, :1]) | (ga > AREA_RNGS[:, 1:])

    # ---- detections: filter, sort by (unit, -score) stably, cut to max_dets ----
    if D:
        known = np.isin(res.image_id, img_ids)
        if not known.all():
            i = int(np.argmin(known))
            raise PosecalInputError(f"unknown image_id {int(res.image_id[i])} (not in the ground truth "
                                    "images)", res.path, i, "image_id")
    ok = np.isin(res.category_id, cats)
    if xt and D:
        ok &= np.count_nonzero(res.keypoints[:, kp_idx, 2] > 0, axis=1) > 0
    cand = np.flatnonzero(ok)
    d_unit_all = (np.searchsorted(cats, res.category_id[cand]) * nI
                  + np.searchsorted(img_ids, res.image_id[cand]))
    order = _score_order(s_all[cand], d_unit_all)  # stable: ties keep file order
    sorted_idx = cand[order]
    sorted_unit = d_unit_all[order]
    if sorted_idx.size:
        first = np.r_[True, sorted_unit[1:] != sorted_unit[:-1]]
        starts = np.flatnonzero(first)
        rank_sorted = np.arange(sorted_idx.size) - np.repeat(starts, np.diff(np.r_[starts, sorted_idx.size]))
    else:
        rank_sorted = np.zeros(0, dtype=np.int64)
    keep = rank_sorted < max_dets
    k_idx = sorted_idx[keep]  # kept detections in (category, image, rank) order
    k_unit = sorted_unit[keep]
    k_rank = rank_sorted[keep]
    nK = k_idx.size
    det_rank = np.full(D, -1, dtype=np.int64)
    det_rank[k_idx] = k_rank
    det_evaluated = det_rank >= 0

    # ---- per-unit gts ----
    g_order = np.argsort(g_unit, kind="stable")
    n_units = nC * nI
    ng_u = np.bincount(g_unit, minlength=n_units)
    gstart_u = np.r_[0, np.cumsum(ng_u)[:-1]]

    # ---- OKS for all (kept det, gt of its unit) pairs ----
    rep = ng_u[k_unit]
    pair_k = np.repeat(np.arange(nK), rep)
    pair_off = _offsets(rep)
    pair_g = g_order[np.repeat(gstart_u[k_unit], rep) + pair_off]
    det_xy = res.keypoints[:, kp_idx, :2] if kp_idx.shape[0] != K_all else res.keypoints[:, :, :2]
    pair_d = k_idx[pair_k]
    # Pairs that provably cannot reach the lowest threshold are skipped (their OKS is never used):
    # every labelled gt keypoint lies at least the gap between the two keypoint boxes from its
    # prediction, so OKS <= exp(-gap² / (8·σmax²·(area+eps))).
    cand = _may_reach(det_xy, gkp, g_area, sig, pair_d, pair_g, float(IOU_THRS[0]))
    oks = np.zeros(pair_d.shape[0])
    oks[cand] = oks_pairs(det_xy, gkp, g_area, gt.bbox, sig, pair_d[cand], pair_g[cand])

    # ---- greedy matching, bucketed by gt count ----
    # Only pairs with OKS >= the lowest threshold can ever match. Detections without such a pair are
    # unmatched at every threshold, and gts without one are never chosen, so both are left out of the
    # padded arrays (the greedy order of the remaining ones is unchanged).
    C = A * T
    thr_c = np.tile(np.minimum(IOU_THRS, 1 - 1e-10), A)
    a_of_c = np.repeat(np.arange(A), T)
    # matches, sparse: kept-detection row, combo, gt row, OKS
    mk, mc, mg, mo = [], [], [], []
    good = np.flatnonzero(oks >= thr_c.min())
    if good.size:
        # A detection whose only candidate gt has no other candidate detection matches it at exactly the
        # combos whose threshold its OKS reaches (nothing competes; ignored or not, it is the only choice).
        # Those pairs form components of their own, so the greedy matching of the rest is unchanged.
        gd_rows, gg_rows = pair_k[good], pair_g[good]
        solo = np.bincount(gd_rows, minlength=nK)[gd_rows] == 1
        solo &= np.bincount(gg_rows, minlength=G)[gg_rows] == 1
        if solo.any():
            s_oks = oks[good[solo]]
            hi, hc = np.nonzero(s_oks[:, None] >= thr_c[None, :])
            mk.append(gd_rows[solo][hi])
            mc.append(hc)
            mg.append(gg_rows[solo][hi])
            mo.append(s_oks[hi])
            good = good[~solo]
    if good.size:
        gk = pair_k[good]  # kept-det rows, sorted (pairs are generated det by det)
        gu = k_unit[gk]
        gs = pair_off[good]  # gt slot within the unit
        # active detections: compressed rank within unit, in rank order
        a_rows = _unique(gk)
        a_unit = k_unit[a_rows]
        u_list, u_first, u_nd = np.unique(a_unit, return_index=True, return_counts=True)
        a_rank = np.arange(a_rows.size) - np.repeat(u_first, u_nd)
        # active gts: compressed slot within unit, in file order
        gkey = gu * (int(ng_u.max()) + 1) + gs
        g_keys, g_inv = np.unique(gkey, return_inverse=True)
        g_key_unit = g_keys // (int(ng_u.max()) + 1)
        g_key_slot = g_keys % (int(ng_u.max()) + 1)
        g_key_row = g_order[gstart_u[g_key_unit] + g_key_slot]
        _, gu_first, u_ng = np.unique(g_key_unit, return_index=True, return_counts=True)
        g_cslot = np.arange(g_keys.size) - np.repeat(gu_first, u_ng)
        # per pair: unit index (into u_list), compressed rank, compressed slot
        pu_idx = np.searchsorted(u_list, gu)
        p_rank = a_rank[np.searchsorted(a_rows, gk)]
        p_slot = g_cslot[g_inv]
        gm = 2 ** np.ceil(np.log2(u_ng)).astype(np.int64)
        bucket_of_u = gm
        # position of each unit inside its bucket (units sorted by active-detection count, descending)
        for b in _unique(gm).tolist():
            ub = np.flatnonzero(bucket_of_u == b)
            ub = ub[np.argsort(-u_nd[ub], kind="stable")]
            Ub = ub.size
            pos = np.full(u_list.size, -1, dtype=np.int64)
            pos[ub] = np.arange(Ub)
            Rb = int(u_nd[ub].max())
            O = np.full((Ub, Rb, b), -1.0)
            sel = np.flatnonzero(pos[pu_idx] >= 0)
            O[pos[pu_idx[sel]], p_rank[sel], p_slot[sel]] = oks[good[sel]]
            ngb = u_ng[ub]
            exists = np.arange(b)[None, :] < ngb[:, None]
            grow = np.zeros((Ub, b), dtype=np.int64)
            off = _offsets(ngb)
            grow[np.repeat(np.arange(Ub), ngb), off] = g_key_row[np.repeat(gu_first[ub], ngb) + off]
            crowd = gt.iscrowd[grow] & exists
            ig_c = np.transpose(g_ig_a[:, grow], (1, 0, 2))[:, a_of_c, :]  # (Ub, C, b)
            m = _match_bucket(O, u_nd[ub], exists, crowd, ig_c, thr_c)  # (Ub, Rb, C)
            # back to kept-detection rows
            dsel = np.flatnonzero(pos[np.searchsorted(u_list, a_unit)] >= 0)
            du = pos[np.searchsorted(u_list, a_unit[dsel])]
            dr = a_rank[dsel]
            mm = m[du, dr]  # (n, C)
            hi, hc = np.nonzero(mm >= 0)
            slot = mm[hi, hc]
            mk.append(a_rows[dsel][hi])
            mc.append(hc)
            mg.append(grow[du[hi], slot])
            mo.append(O[du[hi], dr[hi], slot])

    # ---- per combo and kept detection (C, nK): ignore, tp, fp ----
    mk, mc, mg, mo = _cat(mk, np.int64), _cat(mc, np.int64), _cat(mg, np.int64), _cat(mo, np.float64)
    d_area = res.det_area[k_idx]
    outside = (d_area[None, :] < AREA_RNGS[:, :1]) | (d_area[None, :] > AREA_RNGS[:, 1:])  # (A, nK)
    d_ig = outside[a_of_c]  # unmatched: ignored iff outside the area range
    tp = np.zeros((C, nK), dtype=bool)
    fp = ~d_ig
    if mk.size:
        real = np.ones(mk.size, dtype=bool) if xt else gt.ann_id[mg] != 0
        if warn and not real.all():
            warnings.warn("a ground-truth annotation with id 0 was matched; pycocotools counts such a match "
                          "as a false positive (reproduced here)", PosecalWarning, stacklevel=3)
        ig = g_ig_a[a_of_c[mc], mg] | (~real & d_ig[mc, mk])
        d_ig[mc, mk] = ig
        tp[mc, mk] = real & ~ig
        fp[mc, mk] = ~real & ~ig

    # ---- accumulate ----
    precision = -np.ones((T, R, nC, A, 1))
    recall = -np.ones((T, nC, A, 1))
    score_arr = -np.ones((T, R, nC, A, 1))
    k_cat = k_unit // nI if nI else k_unit
    k_score = s_all[k_idx]
    for ci in range(nC):
        sel = np.flatnonzero(k_cat == ci)
        g_in = g_cat == ci
        if sel.size == 0 and not g_in.any():
            continue
        o = _score_order(k_score[sel])  # = np.argsort(-k_score[sel], kind="mergesort")
        sel = sel[o]
        sc = k_score[sel]
        nd = sel.size
        for a in range(A):
            npig = int(np.count_nonzero(~g_ig_a[a][g_in]))
            if npig == 0:
                continue
            cs = slice(a * T, (a + 1) * T)
            tps = tp[cs][:, sel]  # (T, nd) in pycocotools' global score order
            igs = d_ig[cs][:, sel]
            for t in range(T):
                # pycocotools' cumulative tp/fp curves change only at true positives, and the precision
                # envelope is read only where recall first reaches a threshold — always a true positive
                # (or position 0 for recall 0). So the curves are evaluated at the true positives only;
                # fp = position + 1 - tp - ignored, all exact integers in float64 as in pycocotools.
                tp_pos = np.flatnonzero(tps[t])
                n_tp = tp_pos.size
                q = np.zeros(R)
                ss = np.zeros(R)
                if nd == 0:
                    recall[t, ci, a, 0] = 0
                else:
                    tp_sum = np.arange(1, n_tp + 1, dtype=np.float64)
                    ig_before = np.searchsorted(np.flatnonzero(igs[t]), tp_pos, side="right")
                    fp_sum = (tp_pos + 1 - ig_before).astype(np.float64) - tp_sum
                    rc = tp_sum / npig
                    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
                    env = np.maximum.accumulate(pr[::-1])[::-1]
                    recall[t, ci, a, 0] = rc[-1] if n_tp else 0.0
                    k = np.searchsorted(rc, REC_THRS, side="left")
                    valid = k < n_tp
                    q[valid] = env[k[valid]]
                    ss[valid] = sc[tp_pos[k[valid]]]
                    if REC_THRS[0] <= 0:  # recall 0 is reached at position 0, whatever it holds
                        q[0] = env[0] if n_tp else 0.0
                        ss[0] = sc[0]
                precision[t, :, ci, a, 0] = q
                score_arr[t, :, ci, a, 0] = ss

    stats = _summarize(precision, recall)

    # ---- per-detection outputs (area 'all' = combos 0..T-1) ----
    det_gt = np.full((T, D), -1, dtype=np.int64)
    det_ig = np.zeros((T, D), dtype=bool)
    det_oks = np.zeros((T, D), dtype=np.float64)
    det_tp = np.zeros((T, D), dtype=bool)
    gt_det = np.full((T, G), -1, dtype=np.int64)
    if nK:
        det_ig[:, k_idx] = d_ig[:T]
        det_tp[:, k_idx] = tp[:T]
        at = mc < T  # area 'all' combos are the first T
        kk, tt, gg = mk[at], mc[at], mg[at]
        det_gt[tt, k_idx[kk]] = gg
        det_oks[tt, k_idx[kk]] = mo[at]
        # gt -> det: the last detection (in rank order) matched to it
        order_k = np.argsort(k_unit[kk] * (int(k_rank.max()) + 1) + k_rank[kk], kind="stable")  # (unit, rank)
        gt_det[tt[order_k], gg[order_k]] = k_idx[kk][order_k]
    return CocoEvalResult(
        stats=stats, precision=precision, recall=recall, scores=score_arr, det_evaluated=det_evaluated,
        det_gt=det_gt, det_ignored=det_ig, det_oks=det_oks, det_tp=det_tp, gt_det=gt_det,
        gt_ignored=g_ig_a[0].copy(), det_rank=det_rank, cat_ids=cats, sigmas=sig, use_area=use_area,
        flavor=flavor, max_dets=max_dets,
    )


def _summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """pycocotools ``summarize()`` for keypoints: mean over entries > −1 (else −1)."""

    def one(ap: bool, thr: float | None = None, area: str = "all") -> float:
        a = AREA_LABELS.index(area)
        s = precision if ap else recall
        if thr is not None:
            t = np.where(thr == IOU_THRS)[0]
            s = s[t]
        s = s[:, :, :, a, 0] if ap else s[:, :, a, 0]
        v = s[s > -1]
        return -1.0 if v.size == 0 else float(np.mean(v))

    vals = [one(True), one(True, 0.5), one(True, 0.75), one(True, area="medium"), one(True, area="large"),
            one(False), one(False, 0.5), one(False, 0.75), one(False, area="medium"),
            one(False, area="large")]
    return dict(zip(STAT_NAMES, vals, strict=True))


def summary_lines(result: CocoEvalResult | dict[str, float]) -> list[str]:
    """pycocotools' 10 summary lines (as printed by ``COCOeval.summarize()``), returned as text."""
    stats = result.stats if isinstance(result, CocoEvalResult) else result
    fmt = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
    rows = [(1, None, "all"), (1, 0.5, "all"), (1, 0.75, "all"), (1, None, "medium"), (1, None, "large"),
            (0, None, "all"), (0, 0.5, "all"), (0, 0.75, "all"), (0, None, "medium"), (0, None, "large")]
    out = []
    for name, (ap, thr, area) in zip(STAT_NAMES, rows, strict=True):
        title = "Average Precision" if ap else "Average Recall"
        typ = "(AP)" if ap else "(AR)"
        iou = f"{IOU_THRS[0]:0.2f}:{IOU_THRS[-1]:0.2f}" if thr is None else f"{thr:0.2f}"
        out.append(fmt.format(title, typ, iou, area, 20, stats[name]))
    return out


def evaluate_wholebody(gt: CocoGroundTruth | str | dict, res: CocoResults | str | list, *,
                       parts: tuple[str, ...] = WHOLEBODY_PARTS, use_area: bool = True,
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
