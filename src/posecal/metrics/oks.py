"""Keypoint accuracy: OKS (paper Eq. 7), PCK / PCKh and EPE.

All coordinates are in image pixels. ``sigmas`` are the per-keypoint COCO constants k (``kappa`` in the
paper); the OKS falloff is ``exp(-d^2 / (2 * (2k)^2 * (area + eps)))`` exactly as pycocotools writes it
(``d^2 / (2k)^2 / (area + eps) / 2``), eps = ``np.spacing(1)``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EPS",
    "keypoint_oks",
    "oks_matrix",
    "oks_pairs",
    "pck_correct",
    "pck",
    "head_size",
    "torso_size",
    "box_size",
    "keypoint_errors",
    "epe",
]

#: pycocotools' ``np.spacing(1)`` added to the area
EPS = float(np.spacing(1))


def keypoint_oks(pred: np.ndarray, gt: np.ndarray, area: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Per-keypoint OKS of matched pairs (paper Eq. 7, one term per keypoint).

    Args:
        pred: (N, K, 2) or (N, K, 3) predicted x, y in image pixels (a third column is ignored).
        gt: (N, K, 3) ground-truth x, y, v in image pixels.
        area: (N,) ground-truth areas in pixels².
        sigmas: (K,) OKS constants.

    Returns:
        (N, K) float64 ``exp(-d² / (2·(2σ)²·(area+eps)))``; NaN where the gt keypoint is unlabelled (v == 0).
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    area = np.asarray(area, dtype=np.float64)
    var = (np.asarray(sigmas, dtype=np.float64) * 2) ** 2
    dx = pred[..., 0] - gt[..., 0]
    dy = pred[..., 1] - gt[..., 1]
    with np.errstate(over="ignore"):  # a finite but huge coordinate: d² = inf, OKS 0
        e = (dx**2 + dy**2) / var / (area[:, None] + EPS) / 2
    out = np.exp(-e)
    out[gt[..., 2] <= 0] = np.nan
    return out


def oks_pairs(det_xy: np.ndarray, gt_kp: np.ndarray, gt_area: np.ndarray, gt_bbox: np.ndarray | None,
              sigmas: np.ndarray, det_index: np.ndarray, gt_index: np.ndarray) -> np.ndarray:
    """pycocotools-exact OKS for a list of (detection, gt) pairs.

    Bit-identical to ``COCOeval.computeOks``: for a gt with n > 0 labelled keypoints the exponentials of the
    labelled keypoints are summed as one dense row of length n (same pairwise summation as numpy's
    1-D sum); a gt with no labelled keypoint uses pycocotools' box-distance branch (distance of each
    predicted point outside [x−w, x+2w] × [y−h, y+2h], averaged over all K keypoints).

    Args:
        det_xy: (D, K, ≥2) detection coordinates in image pixels.
        gt_kp: (G, K, 3) gt keypoints (x, y, v).
        gt_area: (G,) area used for the scale (pycocotools: gt ``area``; xtcocotools' use_area=False:
            0.53·h·w).
        gt_bbox: (G, 4) gt boxes x, y, w, h (needed only for gts without labelled keypoints; None → OKS 0
            for those).
        sigmas: (K,) OKS constants.
        det_index, gt_index: (P,) int pair indices.

    Returns:
        (P,) float64 OKS.
    """
    det_index = np.asarray(det_index, dtype=np.int64)
    gt_index = np.asarray(gt_index, dtype=np.int64)
    P = det_index.shape[0]
    out = np.zeros(P, dtype=np.float64)
    if P == 0:
        return out
    sigmas = np.asarray(sigmas, dtype=np.float64)
    var = (sigmas * 2) ** 2
    K = sigmas.shape[0]
    labelled = gt_kp[:, :, 2] > 0  # (G, K)
    k1 = np.count_nonzero(labelled, axis=1)  # (G,)
    area_eps = np.asarray(gt_area, dtype=np.float64) + EPS
    xd_all = np.ascontiguousarray(det_xy[:, :, 0], dtype=np.float64)
    yd_all = np.ascontiguousarray(det_xy[:, :, 1], dtype=np.float64)
    xg_all = np.ascontiguousarray(gt_kp[:, :, 0], dtype=np.float64)
    yg_all = np.ascontiguousarray(gt_kp[:, :, 1], dtype=np.float64)
    # pairs ordered by the gt's labelled-keypoint count: each count is one contiguous block
    pk1 = k1[gt_index]
    order = np.argsort(pk1, kind="stable")
    counts = np.bincount(pk1, minlength=K + 1)
    bounds = np.r_[0, np.cumsum(counts)]
    chunk = max(1, (1 << 22) // max(K, 1))  # ~4M keypoint terms per step: bounded memory
    for n in np.flatnonzero(counts).tolist():
        for a in range(int(bounds[n]), int(bounds[n + 1]), chunk):
            sel = order[a:min(a + chunk, int(bounds[n + 1]))]
            di, gi = det_index[sel], gt_index[sel]
            # np.take: the same rows as fancy indexing, gathered faster
            xd, yd = np.take(xd_all, di, axis=0), np.take(yd_all, di, axis=0)
            if n > 0:
                dx = xd - np.take(xg_all, gi, axis=0)
                dy = yd - np.take(yg_all, gi, axis=0)
            else:  # pycocotools' box branch: distance outside [x - w, x + 2w] x [y - h, y + 2h]
                if gt_bbox is None:
                    continue
                bb = gt_bbox[gi]
                x0 = (bb[:, 0] - bb[:, 2])[:, None]
                x1 = (bb[:, 0] + bb[:, 2] * 2)[:, None]
                y0 = (bb[:, 1] - bb[:, 3])[:, None]
                y1 = (bb[:, 1] + bb[:, 3] * 2)[:, None]
                dx = np.maximum(0.0, x0 - xd) + np.maximum(0.0, xd - x1)
                dy = np.maximum(0.0, y0 - yd) + np.maximum(0.0, yd - y1)
            with np.errstate(over="ignore"):  # a finite but huge coordinate: d² = inf, OKS term 0 (as pycocotools)
                e = (dx**2 + dy**2) / var / area_eps[gi][:, None] / 2
            ex = np.exp(-e)
            if 0 < n < K:  # the labelled terms of each pair, compacted in keypoint order: (p, n)
                ex = ex[np.take(labelled, gi, axis=0)].reshape(-1, n)
            out[sel] = np.sum(ex, axis=1) / (n if n > 0 else K)
    return out


def oks_matrix(dets: np.ndarray, gts: np.ndarray, areas: np.ndarray, sigmas: np.ndarray,
               gt_bbox: np.ndarray | None = None) -> np.ndarray:
    """Pairwise OKS, pycocotools-exact (``COCOeval.computeOks`` for one image).

    Args:
        dets: (D, K, 2) or (D, K, 3) detections, x, y in image pixels (scores ignored).
        gts: (G, K, 3) gt keypoints x, y, v.
        areas: (G,) gt areas (pixels²).
        sigmas: (K,) OKS constants.
        gt_bbox: optional (G, 4) gt boxes for the box-distance branch of gts without labelled keypoints.

    Returns:
        (D, G) float64.
    """
    dets = np.asarray(dets, dtype=np.float64)
    gts = np.asarray(gts, dtype=np.float64)
    D, G = dets.shape[0], gts.shape[0]
    di, gi = np.divmod(np.arange(D * G, dtype=np.int64), max(G, 1))
    bb = None if gt_bbox is None else np.asarray(gt_bbox, dtype=np.float64)
    vals = oks_pairs(dets, gts, np.asarray(areas, dtype=np.float64), bb, sigmas, di, gi)
    return vals.reshape(D, G)


# --- PCK / EPE ----------------------------------------------------------------------------------
def head_size(head_boxes: np.ndarray, factor: float = 0.6) -> np.ndarray:
    """PCKh normaliser: ``factor`` × the diagonal of the head box (MPII convention, factor 0.6).

    Args:
        head_boxes: (N, 4) as x1, y1, x2, y2 in image pixels.
    """
    hb = np.asarray(head_boxes, dtype=np.float64)
    return factor * np.hypot(hb[:, 2] - hb[:, 0], hb[:, 3] - hb[:, 1])


def torso_size(gt: np.ndarray, keypoint_set) -> np.ndarray:
    """Torso normaliser: distance between the left shoulder and the right hip, (N,) image pixels.

    Args:
        gt: (N, K, ≥2) gt keypoints of ``keypoint_set`` (needs ``left_shoulder`` and ``right_hip``).
    """
    a, b = keypoint_set.index("left_shoulder"), keypoint_set.index("right_hip")
    gt = np.asarray(gt, dtype=np.float64)
    return np.hypot(gt[:, a, 0] - gt[:, b, 0], gt[:, a, 1] - gt[:, b, 1])


def box_size(bbox: np.ndarray) -> np.ndarray:
    """Box normaliser: max(w, h) of (N, 4) x, y, w, h boxes in image pixels."""
    bb = np.asarray(bbox, dtype=np.float64)
    return np.maximum(bb[:, 2], bb[:, 3])


def keypoint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Euclidean distances (N, K) between (N, K, ≥2) predictions and gts, in the inputs' pixel units."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    return np.hypot(pred[..., 0] - gt[..., 0], pred[..., 1] - gt[..., 1])


def _visible(gt: np.ndarray, visible: np.ndarray | None) -> np.ndarray:
    if visible is not None:
        return np.asarray(visible, dtype=bool)
    gt = np.asarray(gt)
    if gt.shape[-1] >= 3:
        return gt[..., 2] > 0
    return np.ones(gt.shape[:-1], dtype=bool)


def pck_correct(pred: np.ndarray, gt: np.ndarray, norm: np.ndarray, alpha: float = 0.5,
                visible: np.ndarray | None = None) -> np.ndarray:
    """Per-keypoint PCK decisions: ``d / norm <= alpha``.

    Args:
        pred: (N, K, ≥2) predictions; gt: (N, K, 2|3) ground truth (v > 0 = labelled if no ``visible``).
        norm: (N,) normaliser in the same pixel units (``head_size`` for PCKh, ``torso_size`` or
            ``box_size`` for PCK@α).
        alpha: threshold fraction (PCKh@0.5: 0.5; PCK@0.2: 0.2).
        visible: optional (N, K) bool mask of keypoints to score.

    Returns:
        (N, K) float64: 1.0 correct, 0.0 wrong, NaN where not scored (invisible or norm ≤ 0).
    """
    d = keypoint_errors(pred, gt)
    n = np.asarray(norm, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (d / n <= alpha).astype(np.float64)
    mask = _visible(gt, visible) & (n > 0)
    ok[~mask] = np.nan
    return ok


def pck(pred: np.ndarray, gt: np.ndarray, norm: np.ndarray, alpha: float = 0.5,
        visible: np.ndarray | None = None, per_keypoint: bool = False) -> float | np.ndarray:
    """PCK (mean of :func:`pck_correct` over scored keypoints); ``per_keypoint`` → (K,) means."""
    ok = pck_correct(pred, gt, norm, alpha, visible)
    with np.errstate(invalid="ignore"):
        if per_keypoint:
            cnt = np.sum(~np.isnan(ok), axis=0)
            return np.where(cnt > 0, np.nansum(ok, axis=0) / np.maximum(cnt, 1), np.nan)
        m = ~np.isnan(ok)
        return float(ok[m].mean()) if m.any() else float("nan")


def epe(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray | None = None) -> float:
    """End-point error: mean Euclidean distance over scored keypoints of (N, K, ≥2) arrays (pixels)."""
    d = keypoint_errors(pred, gt)
    m = _visible(gt, visible)
    return float(d[m].mean()) if m.any() else float("nan")
