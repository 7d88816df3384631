"""Feature pooling for the feature store: the one implementation ``posecal extract`` and the studies share.

Shapes: model features ``(B, C, h, w)`` (NCHW, the feature grid), heatmaps ``(B, J, h', w')`` in the
model's joint order (any grid; resampled onto the feature grid), ``jmap (K,)`` model joint index of each
dataset keypoint (−1 where the model lacks it).
"""

from __future__ import annotations

import numpy as np

__all__ = ["POOLINGS", "STORE_FIELD", "resample_to", "pool_heatmap", "pool_features"]

POOLINGS = ("gap", "heatmap", "spatial")
#: the store array each pooling writes
STORE_FIELD = {"gap": "features_gap", "heatmap": "features_kpt", "spatial": "features_spatial"}


def resample_to(hm: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-centre resampling of ``(B, J, h', w')`` maps onto an ``(h, w)`` grid (identity when equal)."""
    if hm.shape[2:] == (h, w):
        return hm
    yi = np.minimum(((np.arange(h) + 0.5) * hm.shape[2] / h).astype(int), hm.shape[2] - 1)
    xi = np.minimum(((np.arange(w) + 0.5) * hm.shape[3] / w).astype(int), hm.shape[3] - 1)
    return hm[:, :, yi][:, :, :, xi]


def pool_heatmap(features: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """Heatmap-weighted features: ``(B, C, h, w)`` and ``(B, J, h', w')`` -> ``(B, J, C)`` float32.

    Weights are the heatmap's positive part on the feature grid, normalised to sum 1 per joint
    (uniform when a heatmap has no positive value).
    """
    B, C, h, w = features.shape
    wts = np.maximum(resample_to(heatmaps, h, w).astype(np.float64), 0.0)
    s = wts.sum(axis=(2, 3), keepdims=True)
    wts = np.where(s > 0, wts / np.where(s > 0, s, 1), 1.0 / (h * w))
    return np.einsum("bjhw,bchw->bjc", wts, features.astype(np.float64)).astype(np.float32)


def pool_features(features: np.ndarray, heatmaps: np.ndarray | None, pooling: str,
                  jmap: np.ndarray) -> np.ndarray:
    """The store tensor of one batch: ``gap`` -> ``(B, C)`` float32; ``heatmap`` -> ``(B, K, C)`` float32 in
    the dataset keypoint order (zeros where the model lacks a joint); ``spatial`` -> ``(B, C, h, w)`` float16.
    """
    feats = np.asarray(features, np.float32)
    if pooling == "gap":
        return feats.mean(axis=(2, 3), dtype=np.float64).astype(np.float32)
    if pooling == "spatial":
        return feats.astype(np.float16)
    if pooling != "heatmap":
        raise ValueError(f"unknown pooling {pooling!r}; one of {POOLINGS}")
    if heatmaps is None:
        raise ValueError("heatmap pooling needs a heatmap model")
    pk = pool_heatmap(feats, np.asarray(heatmaps))
    have = jmap >= 0
    return np.where(have[None, :, None], pk[:, np.where(have, jmap, 0)], 0.0).astype(np.float32)
