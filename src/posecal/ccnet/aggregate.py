"""Instance confidence from keypoint confidence and visibility (paper Sec. 5, after Eq. 21). numpy only.

``ĉ = Σ_k v̂_k ŝ_k / Σ_k v̂_k`` — the OKS form (Eq. 7): a visibility-weighted mean of the expected
keypoint OKS — optionally multiplied by the detector's box score. The MMPose heuristics stay available
in :mod:`posecal.rescore` for comparison.
"""

from __future__ import annotations

import numpy as np

__all__ = ["aggregate"]


def aggregate(s_hat: np.ndarray, v_hat: np.ndarray, box_score: np.ndarray | None = None) -> np.ndarray:
    """Instance confidence (N,) from ``s_hat (N, K)`` and ``v_hat (N, K)`` (both in [0, 1]).

    ``box_score (N,)`` multiplies the result when given. Where Σ v̂ is 0 the plain mean of ŝ is used.
    """
    s = np.asarray(s_hat, dtype=np.float64)
    v = np.asarray(v_hat, dtype=np.float64)
    if s.shape != v.shape or s.ndim != 2:
        raise ValueError(f"s_hat and v_hat must both be (N, K); got {s.shape} and {v.shape}")
    den = v.sum(axis=1)
    num = (v * s).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(den > 0, num / np.where(den > 0, den, 1.0), s.mean(axis=1))
    if box_score is not None:
        c = c * np.asarray(box_score, dtype=np.float64).reshape(-1)
    return c
