"""Rewrite COCO keypoint results with CCNet scores. numpy only.

Coordinates are never touched: for every record only ``keypoints[3k+2]`` (the keypoint score) becomes
ŝ_k, ``score`` becomes the aggregated ĉ (:func:`posecal.rescore.aggregate.instance_score`, mode ``visibility``) and a
``"visibility"`` list of v̂_k is added. Every other field is kept as it was. Keypoints the model lacks
(:func:`mask_missing`) get ŝ = v̂ = 0, so they take no part in ĉ.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from posecal.errors import PosecalInputError
from posecal.rescore.aggregate import instance_score

__all__ = ["instance_scores", "mask_missing", "rescore_records"]


def mask_missing(s_hat: np.ndarray, v_hat: np.ndarray, have: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(s_hat, v_hat)`` (N, K) with ŝ = v̂ = 0 on the keypoints the model does not have (``have`` (K,) bool
    False, :func:`posecal.ccnet.targets.model_keypoints`; None: all present, returned unchanged). The store
    holds such keypoints at (0, 0) with score 0 (``extract --allow-missing-joints``): the head's output there
    would be invented, and v̂ = 0 leaves them out of ĉ = Σ v̂ŝ / Σ v̂. The exported graph masks them alike."""
    if have is None:
        return s_hat, v_hat
    keep = np.asarray(have, bool)
    return np.where(keep, s_hat, 0).astype(np.asarray(s_hat).dtype), \
        np.where(keep, v_hat, 0).astype(np.asarray(v_hat).dtype)


def rescore_records(
    records: Sequence[dict[str, object]],
    s_hat: np.ndarray,
    v_hat: np.ndarray,
    *,
    box_score: np.ndarray | None = None,
    keypoint_scores: bool = True,
    file: str | None = None,
    instance: np.ndarray | None = None,
) -> list[dict[str, object]]:
    """New records: record i gets ``score`` = ĉ_i, keypoint scores ŝ_i (if ``keypoint_scores``) and
    ``visibility`` = v̂_i. ``s_hat``/``v_hat`` are (N, K) with N = len(records); ``box_score`` (N,)
    optionally multiplies ĉ; ``instance`` (N,) replaces ĉ (the context stage's scores,
    :mod:`posecal.ccnet.context`). A record whose keypoint scores are all <= 0 keeps them (xtcocotools drops
    such detections: replacing them would change which detections it evaluates, and its AR). The input records
    are not modified."""
    s = np.asarray(s_hat, np.float64)
    v = np.asarray(v_hat, np.float64)
    if s.shape[0] != len(records) or v.shape != s.shape:
        raise PosecalInputError(
            f"{len(records)} records but predictions of shape {s.shape} / {v.shape}", file=file
        )
    c = instance_score(s, "visibility", box_score, visibility=v)
    if instance is not None:
        c = np.asarray(instance, np.float64).reshape(-1)
        if c.shape != (len(records),):
            raise PosecalInputError(f"{len(records)} records but {c.shape[0]} instance scores", file=file)
    K = s.shape[1]
    out = []
    for i, rec in enumerate(records):
        kp = rec.get("keypoints")
        if not isinstance(kp, list) or len(kp) != 3 * K:
            raise PosecalInputError(
                f"expected a list of {3 * K} numbers", file=file, record=i, field="keypoints"
            )
        new = copy.copy(rec)
        # a record whose keypoint scores are all <= 0 keeps them: xtcocotools (MMPose's evaluator) drops such
        # detections, and ŝ > 0 would let them take part after rescoring, so AR would move under it
        if keypoint_scores and any(isinstance(x, (int, float)) and x > 0 for x in kp[2::3]):
            kp = list(kp)
            for k in range(K):
                kp[3 * k + 2] = float(s[i, k])
            new["keypoints"] = kp
        new["score"] = float(c[i])
        new["visibility"] = [float(x) for x in v[i]]
        out.append(new)
    return out


def instance_scores(s_hat: np.ndarray, v_hat: np.ndarray, own: np.ndarray, image_id: np.ndarray, *,
                    box_score: np.ndarray | None = None, stage: object | None = None,
                    context: np.ndarray | None = None, reorder: bool = False) -> np.ndarray:
    """``(N,)`` the instance scores ``posecal apply`` writes.

    ĉ = Σ v̂ŝ / Σ v̂ (× ``box_score``), from ``s_hat``/``v_hat`` (N, K); then the context stage
    (:class:`posecal.ccnet.context.ContextStage`) on ĉ and ``context`` (N, 6) when both are given; then,
    unless ``reorder``, :func:`posecal.rescore.order.keep_image_order` with the store's own scores ``own``
    (N,) per ``image_id`` (N,), so COCO AR is unchanged."""
    from posecal.rescore.order import keep_image_order

    c = instance_score(np.asarray(s_hat, np.float64), "visibility", box_score, visibility=v_hat)
    if stage is not None and context is not None:
        c = stage.transform(c, context)  # type: ignore[attr-defined]
    return c if reorder else keep_image_order(image_id, own, c)
