"""The one rule that turns keypoint confidences into an instance confidence. numpy only.

Every part of posecal that writes an instance score — the extractor's ``predictions.json``, ``posecal
rescore``, CCNet's apply and training monitors, the studies and the exported ONNX graph — calls
:func:`instance_score`, so "the model's own score" means the same thing everywhere: what MMPose 1.x
``CocoMetric`` computes from the same predictions (``score_mode``, ``keypoint_score_thr``; MMPose's OKS-NMS
is a separate step).

Modes, over keypoint scores ``s (D, K)`` and box scores ``b (D,)`` (1 when not given):

================  ========================================================================================
``bbox``          ``b`` (MMPose ``bbox``)
``keypoint``      ``mean_k s_k`` over all K (MMPose ``keypoint``)
``bbox_keypoint`` ``b · mean(s_k for s_k > thr)``; **0 when no keypoint passes** (MMPose ``bbox_keypoint``,
                  the default; Eq. 5 of the paper times the box score)
``bbox_rle``      ``b + mean_k s_k + max_k s_k`` (MMPose ``bbox_rle``)
``mean``          ``mean_k s_k`` (posecal's plain mean, the same number as ``keypoint``)
``visibility``    ``b · Σ_k v̂_k s_k / Σ_k v̂_k`` (CCNet, paper Sec. 5 after Eq. 21: the OKS form of Eq. 7
                  with predicted visibility as the weights); **0 where Σ_k v̂_k = 0**
================  ========================================================================================

The empty cases (no keypoint above ``thr``; zero total visibility) give 0, as MMPose's loop does: such an
instance ranks last instead of first.
"""

from __future__ import annotations

import numpy as np

__all__ = ["INSTANCE_SCORE_MODES", "instance_score"]

INSTANCE_SCORE_MODES = ("bbox", "keypoint", "bbox_keypoint", "bbox_rle", "mean", "visibility")


def instance_score(
    keypoint_scores: np.ndarray,
    mode: str = "bbox_keypoint",
    box_score: np.ndarray | None = None,
    keypoint_score_thr: float = 0.2,
    visibility: np.ndarray | None = None,
) -> np.ndarray:
    """Instance scores ``(D,)`` from keypoint scores ``(D, K)`` (see the module docstring for the modes).

    Args:
        keypoint_scores: ``(D, K)`` keypoint confidences (heatmap maxima may exceed 1: used as they are).
        mode: one of :data:`INSTANCE_SCORE_MODES`.
        box_score: ``(D,)`` detector box scores; ``None`` means 1 (gt boxes).
        keypoint_score_thr: MMPose's ``keypoint_score_thr`` for ``bbox_keypoint`` (strictly greater passes).
        visibility: ``(D, K)`` predicted visibility in [0, 1]; required for ``mode="visibility"``.

    >>> instance_score(np.array([[0.9, 0.5, 0.1], [0.1, 0.05, 0.0]]), box_score=np.array([0.5, 1.0]))
    array([0.35, 0.  ])
    """
    s = np.asarray(keypoint_scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"keypoint_scores must be (D, K); got shape {s.shape}")
    D = s.shape[0]
    b = np.ones(D) if box_score is None else np.asarray(box_score, dtype=np.float64).reshape(-1)
    if b.shape != (D,):
        raise ValueError(f"box_score must be (D,) = ({D},); got shape {b.shape}")
    if mode == "bbox":
        return b.copy()
    if mode in ("keypoint", "mean"):
        return s.mean(axis=1) if s.shape[1] else np.zeros(D)
    if mode == "bbox_keypoint":
        m = s > keypoint_score_thr
        n = m.sum(axis=1)
        # summed keypoint by keypoint, in order, as MMPose's loop does: the same float64 bits (numpy's
        # pairwise row sum can differ in the last bit)
        total = np.zeros(D)
        for k in range(s.shape[1]):
            total += np.where(m[:, k], s[:, k], 0.0)
        mean = np.where(n > 0, total / np.maximum(n, 1), 0.0)
        return b * mean
    if mode == "bbox_rle":
        return b + s.mean(axis=1) + s.max(axis=1)
    if mode == "visibility":
        if visibility is None:
            raise ValueError("instance_score(mode='visibility') needs a (D, K) visibility")
        v = np.asarray(visibility, dtype=np.float64)
        if v.shape != s.shape:
            raise ValueError(f"visibility must have the shape of keypoint_scores {s.shape}; got {v.shape}")
        tot = v.sum(axis=1)
        return b * np.where(tot > 0, (v * s).sum(axis=1) / np.where(tot > 0, tot, 1.0), 0.0)
    raise ValueError(f"unknown instance-score mode {mode!r}; use one of {', '.join(INSTANCE_SCORE_MODES)}")
