"""Which ground truth a detection belongs to, for fitting and for the gt area of the closed form. numpy only.

:func:`match_to_gt` is a many-to-one assignment by highest OKS (Eq. 7), not COCOeval's greedy one-to-one
matching: it picks the gt whose area and keypoints a rescorer uses, never what the evaluator counts.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from posecal import theory
from posecal.errors import PosecalInputError
from posecal.io.coco import CocoGroundTruth, CocoResults
from posecal.keypoints import COCO17, find_keypoint_set

__all__ = ["match_to_gt", "matched_keypoint_pairs", "oks_sigmas_for"]


def oks_sigmas_for(pred: CocoResults, gt: CocoGroundTruth | None, sigmas: ArrayLike | None) -> np.ndarray:
    """The OKS constants ``(K,)``: ``sigmas`` if given, else the gt's keypoint set, else the set with K keypoints.

    Raises :class:`PosecalInputError` when none is known for ``pred``'s K.
    """
    K = pred.keypoints.shape[1]
    if sigmas is not None:
        s = np.asarray(sigmas, dtype=np.float64)
        if s.shape != (K,):  # (was numpy's "operands could not be broadcast together")
            raise PosecalInputError(f"{s.size} OKS sigmas for {K} keypoints", pred.path, None, "sigmas")
        return s
    if gt is not None and gt.keypoint_set is not None and gt.keypoint_set.num_keypoints == K:
        return gt.keypoint_set.sigmas
    ks = find_keypoint_set(None, K)
    if ks is None and K == COCO17.num_keypoints:
        ks = COCO17
    if ks is None:
        raise PosecalInputError(
            f"cannot tell the OKS sigmas of {K} keypoints; give a --gt whose keypoint names posecal knows, "
            "or the sigmas (--sigmas S ... or --keypoint-set NAME)",
            pred.path,
            None,
            "keypoints",
        )
    return ks.sigmas


def match_to_gt(pred: CocoResults, gt: CocoGroundTruth, sigmas: ArrayLike | None = None) -> np.ndarray:
    """Per detection, the gt row (same image and category, not crowd) of highest OKS; ``(D,)``, −1 if none.

    This is a many-to-one assignment (no greedy one-to-one as in COCOeval) used to pick the gt area and
    fitting pairs for a detection.
    """
    from posecal.metrics.oks import oks_matrix

    sig = oks_sigmas_for(pred, gt, sigmas)
    out = np.full(len(pred), -1, dtype=np.int64)
    by_img: dict[tuple[int, int], list[int]] = {}
    for g in np.flatnonzero(~gt.iscrowd):
        by_img.setdefault((int(gt.image_id[g]), int(gt.category_id[g])), []).append(int(g))
    keys = list(zip(pred.image_id.tolist(), pred.category_id.tolist(), strict=True))
    det_by: dict[tuple[int, int], list[int]] = {}
    for d, key in enumerate(keys):
        det_by.setdefault(key, []).append(d)
    for key, dets in det_by.items():
        gts = by_img.get(key)
        if not gts:
            continue
        dets_a, gts_a = np.array(dets), np.array(gts)
        O = oks_matrix(
            pred.keypoints[dets_a, :, :2], gt.keypoints[gts_a], gt.area[gts_a], sig, gt.bbox[gts_a]
        )
        out[dets_a] = gts_a[np.argmax(O, axis=1)]
    return out


def matched_keypoint_pairs(
    pred: CocoResults, gt: CocoGroundTruth, sigmas: ArrayLike | None = None
) -> dict[str, np.ndarray]:
    """Per-keypoint (raw score, OKS, normalised error) over matched detections' labelled keypoints.

    Returns a dict of 1-D arrays over P pairs: ``score``, ``oks`` (Eq. 7 term), ``error`` (image px),
    ``l`` (``2 k sqrt(area)``, image px), ``det`` and ``kpt`` indices.
    """
    sig = oks_sigmas_for(pred, gt, sigmas)
    m = match_to_gt(pred, gt, sig)
    d = np.flatnonzero(m >= 0)
    g = m[d]
    gk = gt.keypoints[g]
    lab = gk[..., 2] > 0
    with np.errstate(over="ignore"):  # a coordinate of 1e300 is an error of ∞ px: OKS 0, as pycocotools gives
        err = np.sqrt(((pred.keypoints[d, :, :2] - gk[..., :2]) ** 2).sum(-1))
        l2 = theory.oks_l2(sig[None], gt.area[g][:, None])
        oks = np.exp(-(err**2) / (2 * l2))
    di, ki = np.nonzero(lab)
    return {
        "score": pred.keypoints[d, :, 2][di, ki],
        "oks": oks[di, ki],
        "error": err[di, ki],
        "l": np.sqrt(l2)[di, ki],
        "det": d[di],
        "kpt": ki,
    }
