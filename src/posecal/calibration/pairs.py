"""(confidence, accuracy) pairs from the evaluator's matches — the input of every calibration metric.

Choice of matches (documented, used everywhere in the audit):

* **Instance level** — one pair per detection that the evaluator *counts* at OKS threshold 0.50
  (index 0 of ``det_gt`` / ``det_oks``): ``det_evaluated`` (inside maxDets = 20 per image and the
  evaluated category) and not ``det_ignored[0]`` (not absorbed by a crowd / unlabelled gt). Confidence is
  the detection's instance ``score``; accuracy is ``det_oks[0]``, the OKS with the gt it is greedily
  matched to at threshold 0.50, and **0 when it is unmatched** (a false positive, including duplicates
  and detections whose best OKS is below 0.50). This is the accuracy that COCO AP rewards.
* **Keypoint level** — one row per *matched* instance pair (``det_gt[0] >= 0``); unmatched detections
  have no gt keypoints and give no keypoint pairs. Per keypoint: the predicted keypoint score (third
  value of the result's ``keypoints``), the per-keypoint OKS
  ``exp(-d^2 / (2 (2 sigma_k)^2 (area + eps)))`` of the detection vs its matched gt (gt ``area``;
  :func:`posecal.metrics.oks.keypoint_oks`, paper Eq. 6–7 per term; NaN where gt v == 0), the gt
  visibility flag v in {0, 1, 2}, the predicted visibility when the results carry ``"visibility"``, and
  PCK@alpha normalised by the gt box's longer side. Metrics on OKS/PCK use the entries with gt v > 0;
  the visibility metrics and the visible/occluded distributions use all K entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from posecal.metrics.oks import box_size, keypoint_oks, oks_matrix, pck_correct

if TYPE_CHECKING:
    from posecal.io.coco import CocoGroundTruth, CocoResults
    from posecal.metrics.cocoeval import CocoEvalResult

__all__ = ["InstancePairs", "KeypointPairs", "instance_pairs", "keypoint_pairs", "best_oks", "best_match",
           "oracle_oks", "person_keypoint_pairs"]


@dataclass(frozen=True)
class InstancePairs:
    """N counted detections: ``det_index (N,)`` rows of the results, ``gt_index (N,)`` matched gt row
    or −1, ``confidence (N,)`` instance score, ``oks (N,)`` OKS with the matched gt (0 if unmatched)."""

    det_index: np.ndarray
    gt_index: np.ndarray
    confidence: np.ndarray
    oks: np.ndarray

    def __len__(self) -> int:
        return int(self.det_index.size)


@dataclass(frozen=True)
class KeypointPairs:
    """M matched detections × K keypoints: ``det_index (M,)``, ``gt_index (M,)``, ``score (M, K)``
    keypoint score, ``oks (M, K)`` per-keypoint OKS (NaN where gt v == 0), ``gt_v (M, K)`` int in {0,1,2}
    (a fractional flag v > 0 rounds up: labelled, as the OKS counts it),
    ``visibility (M, K) | None`` predicted visibility, ``pck (M, K)`` PCK@``pck_alpha`` (NaN where
    v == 0 or the gt box is empty)."""

    det_index: np.ndarray
    gt_index: np.ndarray
    score: np.ndarray
    oks: np.ndarray
    gt_v: np.ndarray
    visibility: np.ndarray | None
    pck: np.ndarray
    pck_alpha: float

    @property
    def labelled(self) -> np.ndarray:
        """``(M, K)`` bool: gt v > 0 (the keypoints that OKS counts)."""
        return self.gt_v > 0


def instance_pairs(ev: CocoEvalResult, res: CocoResults, threshold_index: int = 0) -> InstancePairs:
    """Instance pairs from a ``CocoEvalResult`` ``ev`` and the ``CocoResults`` ``res`` it evaluated.

    Uses ``ev.det_evaluated (D,)``, ``ev.det_ignored (T, D)``, ``ev.det_gt (T, D)``, ``ev.det_oks (T, D)``
    at ``threshold_index`` (0 = OKS 0.50); see the module docstring for the choice.
    """
    t = threshold_index
    sel = np.asarray(ev.det_evaluated, dtype=bool) & ~np.asarray(ev.det_ignored[t], dtype=bool)
    det = np.flatnonzero(sel)
    gt_index = np.asarray(ev.det_gt[t], dtype=np.int64)[det]
    oks = np.where(gt_index >= 0, np.asarray(ev.det_oks[t], dtype=np.float64)[det], 0.0)
    return InstancePairs(
        det_index=det,
        gt_index=gt_index,
        confidence=np.asarray(res.score, dtype=np.float64)[det],
        oks=oks,
    )


def keypoint_pairs(
    inst: InstancePairs,
    gt: CocoGroundTruth,
    res: CocoResults,
    sigmas: np.ndarray,
    pck_alpha: float = 0.1,
    gt_area: np.ndarray | None = None,
) -> KeypointPairs:
    """Keypoint pairs of the matched instance pairs (``inst.gt_index >= 0``).

    ``gt`` a ``CocoGroundTruth`` (``keypoints (G, K, 3)``, ``area (G,)``, ``bbox (G, 4)``), ``res`` a
    ``CocoResults`` (``keypoints (D, K, 3)``, ``visibility (D, K) | None``), ``sigmas (K,)``.
    PCK is normalised by ``max(w, h)`` of the matched gt box (image pixels). ``gt_area (G,)`` replaces
    ``gt.area`` in the OKS (e.g. 0.53·w·h for the evaluator's ``use_area=False``).
    """
    m = inst.gt_index >= 0
    det, g = inst.det_index[m], inst.gt_index[m]
    pred = np.asarray(res.keypoints, dtype=np.float64)[det]
    gk = np.asarray(gt.keypoints, dtype=np.float64)[g]
    k = gk.shape[1] if gk.ndim == 3 else np.asarray(sigmas).size
    pred = pred.reshape(-1, k, 3)
    gk = gk.reshape(-1, k, 3)
    if det.size:
        area = np.asarray(gt.area if gt_area is None else gt_area, dtype=np.float64)[g]
        oks = np.asarray(keypoint_oks(pred[..., :2], gk, area, sigmas), dtype=np.float64)
    else:
        oks = np.zeros((0, k))
    bbox = np.asarray(gt.bbox, dtype=np.float64)[g].reshape(-1, 4)
    vis = getattr(res, "visibility", None)
    return KeypointPairs(
        det_index=det,
        gt_index=g,
        score=pred[..., 2],
        oks=oks,
        gt_v=np.where(gk[..., 2] > 0, np.ceil(gk[..., 2]), 0).astype(np.int64),  # v > 0 labelled, as the OKS
        visibility=None if vis is None else np.asarray(vis, dtype=np.float64)[det].reshape(-1, k),
        pck=pck_correct(pred, gk, box_size(bbox), pck_alpha),
        pck_alpha=pck_alpha,
    )


def best_oks(
    gt: CocoGroundTruth,
    res: CocoResults,
    sigmas: np.ndarray,
    category_id: int | None = None,
    gt_area: np.ndarray | None = None,
    one_to_one: bool = False,
) -> np.ndarray:
    """``(D,)`` the OKS of each detection with its best-matching gt of the same image (and category):
    the max over that image's non-crowd gts with at least one labelled keypoint, 0 if there is none.
    This is the *oracle confidence* of the paper's Fig. 1 (pycocotools-exact OKS,
    :func:`posecal.metrics.oks.oks_matrix`; ``gt_area (G,)`` replaces ``gt.area`` as in
    :func:`keypoint_pairs`); ``one_to_one``: :func:`oracle_oks`."""
    return best_match(gt, res, sigmas, category_id, gt_area, one_to_one)[0]


def best_match(
    gt: CocoGroundTruth,
    res: CocoResults,
    sigmas: np.ndarray,
    category_id: int | None = None,
    gt_area: np.ndarray | None = None,
    one_to_one: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`best_oks` and the gt row it comes from: ``(oks (D,), gt_index (D,))``, ``gt_index`` −1 where
    the detection has no gt (no candidate in its image and category — a detection is only ever matched to a
    gt of its own ``category_id``, as the evaluator does; with ``one_to_one``, also a duplicate or a false
    positive left without one, or an OKS of 0)."""
    d_img = np.asarray(res.image_id, dtype=np.int64)
    out = np.zeros(d_img.size, dtype=np.float64)
    idx = np.full(d_img.size, -1, dtype=np.int64)
    if d_img.size == 0:
        return out, idx
    g_ok = ~np.asarray(gt.iscrowd, dtype=bool) & (np.asarray(gt.keypoints)[..., 2] > 0).any(axis=-1)
    if category_id is not None:
        g_ok &= np.asarray(gt.category_id) == category_id
    g_sel = np.flatnonzero(g_ok)
    # a detection is matched within its image and its own category, as the evaluator does (useCats)
    d_key, g_key = _image_category_keys(res, d_img, gt, g_sel)
    order = np.argsort(g_key, kind="stable")
    g_sel = g_sel[order]
    g_sorted = g_key[order]
    dkp = np.asarray(res.keypoints, dtype=np.float64)
    area = np.asarray(gt.area if gt_area is None else gt_area, dtype=np.float64)
    d_order = np.argsort(d_key, kind="stable")
    imgs, d_start = np.unique(d_key[d_order], return_index=True)
    d_end = np.r_[d_start[1:], d_img.size]
    for img, a, b in zip(imgs, d_start, d_end, strict=True):
        lo, hi = np.searchsorted(g_sorted, img, "left"), np.searchsorted(g_sorted, img, "right")
        if lo == hi:
            continue
        gi = g_sel[lo:hi]
        di = d_order[a:b]
        o = np.asarray(oks_matrix(dkp[di], np.asarray(gt.keypoints)[gi], area[gi], sigmas))
        if one_to_one:
            out[di], col = _greedy_one_to_one(o, with_index=True)
        else:
            col = np.argmax(o, axis=1)
            out[di] = o[np.arange(len(di)), col]
        idx[di] = np.where(col >= 0, gi[np.maximum(col, 0)], -1)
    return out, idx


def _image_category_keys(res: CocoResults, d_img: np.ndarray, gt: CocoGroundTruth,
                         g_sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One integer per (image, category) pair: ``(D,)`` of the detections and ``(len(g_sel),)`` of the gt rows
    ``g_sel``."""
    d_cat = np.asarray(res.category_id, dtype=np.int64).reshape(-1)
    g_pair = np.c_[np.asarray(gt.image_id, dtype=np.int64)[g_sel], np.asarray(gt.category_id, dtype=np.int64)[g_sel]]
    _, inv = np.unique(np.r_[np.c_[d_img, d_cat], g_pair.reshape(-1, 2)], axis=0, return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    return inv[:d_img.size], inv[d_img.size:]


def _greedy_one_to_one(o: np.ndarray, with_index: bool = False):
    """``(d,)`` from an OKS matrix ``(d, g)``: the largest entry first, each detection and gt used once;
    a detection left without a gt gets 0 (ties: the lower detection row, then the lower gt column).
    ``with_index``: also the ``(d,)`` gt column of each detection, −1 for none."""
    o = np.array(o, dtype=np.float64)
    out = np.zeros(o.shape[0])
    col = np.full(o.shape[0], -1, dtype=np.int64)
    for _ in range(min(o.shape)):
        d, g = np.unravel_index(int(np.argmax(o)), o.shape)
        if o[d, g] <= 0 or not np.isfinite(o[d, g]):
            break
        out[d], col[d] = o[d, g], g
        o[d, :] = -1.0
        o[:, g] = -1.0
    return (out, col) if with_index else out


def oracle_oks(
    gt: CocoGroundTruth,
    res: CocoResults,
    sigmas: np.ndarray,
    category_id: int | None = None,
    gt_area: np.ndarray | None = None,
) -> np.ndarray:
    """``(D,)`` the *oracle confidence* of the paper's Fig. 1 for any results: each image's detections and
    its non-crowd gts with a labelled keypoint matched one to one, greedily by OKS (largest first); a matched
    detection scores its OKS, every other detection (a duplicate of a person already taken, a false
    positive) 0. With one detection per person (gt boxes) it is :func:`best_oks`; with detector boxes
    :func:`best_oks` would also give duplicates their person's OKS and rank them above true matches, which is
    no upper bound."""
    return best_oks(gt, res, sigmas, category_id, gt_area, one_to_one=True)


def person_keypoint_pairs(
    gt: CocoGroundTruth,
    res: CocoResults,
    sigmas: np.ndarray,
    category_id: int | None = None,
    gt_area: np.ndarray | None = None,
    pck_alpha: float = 0.1,
    match: tuple[np.ndarray, np.ndarray] | None = None,
) -> KeypointPairs:
    """Keypoint pairs of every detection that is some person's, however badly it is localised: each image's
    detections and its non-crowd gts with a labelled keypoint matched one to one, greedily by OKS (largest
    first, any OKS > 0: :func:`oracle_oks`'s assignment), then :func:`keypoint_pairs` of those matches.
    ``match``: that assignment if already computed, ``best_match(..., one_to_one=True)`` of the same arguments.

    Unlike the evaluator's matches at OKS 0.50 (:func:`instance_pairs`), a person whose predicted pose is
    poor (OKS < 0.5) keeps its keypoints here — a user thresholding keypoints cannot leave that person out.
    A detection left without a person (a duplicate, or a false positive in an image whose people all have a
    better-matching detection) has no keypoint truth and is left out; a false positive in an image where a
    person has no detection takes that person (any OKS > 0), and its keypoints count as incorrect."""
    oks, g = match if match is not None else best_match(gt, res, sigmas, category_id, gt_area, one_to_one=True)
    d = np.flatnonzero(g >= 0)
    inst = InstancePairs(det_index=d, gt_index=g[d], confidence=np.asarray(res.score, dtype=np.float64)[d],
                         oks=oks[d])
    return keypoint_pairs(inst, gt, res, sigmas, pck_alpha=pck_alpha, gt_area=gt_area)
