"""Non-maximum suppression: box IoU NMS (detector) and MMPose's OKS-NMS (top-down keypoints). numpy only.

`oks_nms` follows ``mmpose.evaluation.functional.nms.oks_nms`` / ``oks_iou`` (MMPose 1.x,
``vis_thr=None``): instances sorted by score (``argsort()[::-1]``), each kept one suppresses the rest whose
OKS to it (area = mean of the two areas) is **above** ``thr``. MMPose's ``CocoMetric`` runs it per image with
``nms_thr=0.9`` on the ``bbox_keypoint`` scores; the area of a top-down prediction is
``np.prod(gt_instances.bbox_scales)``, the crop box (the detection box at the model's aspect × the padding 1.25,
:func:`crop_box_area`); only predictions that carry no area (bottom-up) use the extent of the predicted
keypoints, ``(max x − min x)·(max y − min y)`` (:func:`keypoint_extent_area`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_nms", "crop_box_area", "keypoint_extent_area", "oks_iou", "oks_nms", "oks_nms_per_image",
           "ties_as_kept"]


def oks_iou(g: np.ndarray, d: np.ndarray, a_g: float, a_d: np.ndarray, sigmas: np.ndarray,
            vis_thr: float | None = None) -> np.ndarray:
    """OKS (D,) float32 of one instance ``g`` (3K,) x, y, score against ``d`` (D, 3K); areas ``a_g``, ``a_d``
    (D,) px²; the scale is the mean of the two areas. ``vis_thr``: only keypoints whose scores both exceed
    it count (0 when none does)."""
    d = np.asarray(d, np.float64).reshape(len(a_d), len(g))
    vars_ = (np.asarray(sigmas, np.float64) * 2) ** 2
    dx, dy = d[:, 0::3] - g[0::3], d[:, 1::3] - g[1::3]
    e = (dx**2 + dy**2) / vars_ / ((a_g + np.asarray(a_d, np.float64)) / 2 + np.spacing(1))[:, None] / 2
    if vis_thr is None:
        return (np.sum(np.exp(-e), axis=1) / e.shape[1]).astype(np.float32)
    m = (g[2::3] > vis_thr) & (d[:, 2::3] > vis_thr)
    n = m.sum(axis=1)
    return np.where(n > 0, np.sum(np.where(m, np.exp(-e), 0.0), axis=1) / np.maximum(n, 1), 0.0).astype(np.float32)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, thr: float,
            sigmas: np.ndarray, vis_thr: float | None = None) -> np.ndarray:
    """Indices kept, in the order kept (highest score first).

    keypoints (D, K, 3) x, y (image px), keypoint score; scores (D,) instance scores; areas (D,) px².
    """
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    kpts = np.asarray(keypoints, np.float64).reshape(len(scores), -1)
    areas = np.asarray(areas, np.float64)
    order = np.asarray(scores).argsort()[::-1]
    keep = []
    while len(order) > 0:
        i = order[0]
        keep.append(i)
        ovr = oks_iou(kpts[i], kpts[order[1:]], areas[i], areas[order[1:]], sigmas, vis_thr)
        order = order[np.where(ovr <= thr)[0] + 1]
    return np.array(keep, dtype=np.int64)


def keypoint_extent_area(xy: np.ndarray) -> np.ndarray:
    """(D,) ``(max x − min x)·(max y − min y)`` of keypoints (D, K, 2), as MMPose's CocoMetric."""
    xy = np.asarray(xy, np.float64)
    return np.ptp(xy[..., 0], axis=-1) * np.ptp(xy[..., 1], axis=-1)


def crop_box_area(bbox: np.ndarray, input_size: tuple[int, int], padding: float = 1.25) -> np.ndarray:
    """(D,) px² the top-down crop box of detection boxes ``bbox`` (D, 4) x, y, w, h: the box widened to the
    model input's aspect ``input_size`` (W, H) and padded (:func:`posecal.theory.heatmap.topdown_crop_box`).
    It is MMPose's ``np.prod(bbox_scales)``, the area ``CocoMetric`` gives a top-down prediction for OKS-NMS
    (``GetBBoxCenterScale`` pads, ``TopdownAffine`` fixes the aspect: the order does not change the product)."""
    from posecal.theory.heatmap import topdown_crop_box

    b = np.asarray(bbox, np.float64).reshape(-1, 4)
    if not len(b):
        return np.zeros(0)
    c = topdown_crop_box(b, tuple(input_size), padding)
    return c[:, 2] * c[:, 3]


def oks_nms_per_image(image_id: np.ndarray, keypoints: np.ndarray, keypoint_scores: np.ndarray,
                      scores: np.ndarray, sigmas: np.ndarray, thr: float = 0.9,
                      areas: np.ndarray | None = None, show_progress: bool = False,
                      kept_order: bool = False) -> np.ndarray:
    """Sorted row indices kept by :func:`oks_nms` run image by image (MMPose's CocoMetric step).

    image_id (N,), keypoints (N, K, 2) image px, keypoint_scores (N, K), scores (N,) instance scores, areas (N,)
    px² (top-down: :func:`crop_box_area`, as MMPose; default: the keypoint extent, MMPose's rule for
    predictions without an area). ``show_progress``: a progress bar over the images on stderr (when stderr is a
    terminal or ``POSECAL_PROGRESS=1``). ``kept_order``: each image's rows in the order :func:`oks_nms` keeps
    them (highest score first, ties as its ``argsort()[::-1]`` leaves them: the order MMPose writes them), images
    in ascending id order, instead of sorted.
    """
    image_id = np.asarray(image_id)
    kp3 = np.concatenate([np.asarray(keypoints, np.float64),
                          np.asarray(keypoint_scores, np.float64)[..., None]], axis=-1)
    areas = keypoint_extent_area(keypoints) if areas is None else np.asarray(areas, np.float64)
    scores = np.asarray(scores)
    # each image's rows (ascending) from one sort: not a scan of every row per image (O(N x images))
    _, inv = np.unique(image_id, return_inverse=True)
    inv = inv.ravel()
    by_image = np.argsort(inv, kind="stable")
    bounds = np.cumsum(np.bincount(inv))[:-1] if inv.size else np.zeros(0, np.int64)
    groups = np.split(by_image, bounds)
    if show_progress:
        from posecal._util import progress  # tqdm: only when asked (this module is numpy only)

        groups = progress(groups, desc="OKS-NMS", unit="image")
    keep = []
    for rows in groups:
        k = oks_nms(kp3[rows], scores[rows], areas[rows], thr, sigmas)
        keep.append(rows[k])
    if not keep:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(keep) if kept_order else np.sort(np.concatenate(keep))


def ties_as_kept(kept: np.ndarray, image_id: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rows ``kept`` (each image's in :func:`oks_nms`' keep order, :func:`oks_nms_per_image` with
    ``kept_order=True``) in file order, except that rows of one image with equal ``scores`` take their places
    in keep order.

    COCOeval ranks an image's detections by a stable sort on the score, so equal scores keep their file
    order; MMPose's ``CocoMetric`` writes each image's detections in OKS-NMS keep order, where equal scores
    come out of ``argsort()[::-1]`` (reversed). Written in this order, the file ranks exactly as MMPose's
    does, and every other record stays where it was.
    """
    kept = np.asarray(kept, dtype=np.int64)
    rank = np.empty(len(scores), dtype=np.int64)
    rank[kept] = np.arange(len(kept))
    slots = np.sort(kept)
    img, sc = np.asarray(image_id)[slots], np.asarray(scores, dtype=np.float64)[slots] + 0.0  # -0.0 == 0.0
    by_slot = np.lexsort((np.arange(len(slots)), sc, img))  # tie groups, each in file order
    by_rank = np.lexsort((rank[slots], sc, img))  # the same groups, each in keep order
    out = np.empty_like(slots)
    out[by_slot] = slots[by_rank]
    return out


def box_nms(boxes: np.ndarray, scores: np.ndarray, thr: float = 0.6) -> np.ndarray:
    """Greedy IoU NMS. boxes (D, 4) x0, y0, x1, y1; returns kept indices by decreasing score."""
    b = np.asarray(boxes, np.float64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]))
        h = np.maximum(0.0, np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]))
        inter = w * h
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[iou <= thr]
    return np.array(keep, dtype=np.int64)
