"""Audit s29 (mmpose fixtures): without --flip, extract's model stage still copied each chunk's feature maps to
float64, divided them by 1 and copied them back to float32 — three extra copies of the largest array (SimplePose:
128×64×48 per crop), about 40 % of ``posecal extract``'s time on the COCO fixture and most of its peak memory.
The single pass must come back bit-identical with no such copies; the flip test still averages in float64."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np


class _FakeAdapter:
    """Features (n, C, h, w) float32 of known values; coordinates and scores per crop."""

    def __init__(self, C: int = 64, h: int = 64, w: int = 48, J: int = 3) -> None:
        self.C, self.h, self.w, self.J = C, h, w, J

    def predict(self, crops: np.ndarray) -> SimpleNamespace:
        n = crops.shape[0]
        base = crops[:, 0, 0, 0].astype(np.float32)  # differs per crop (and per mirrored crop)
        feats = (np.arange(self.C * self.h * self.w, dtype=np.float32).reshape(1, self.C, self.h, self.w) / 7
                 + base[:, None, None, None])
        coords = np.tile(np.array([[10.0, 20.0]]), (n, self.J, 1)) + base[:, None, None]
        return SimpleNamespace(coords=coords, scores=np.full((n, self.J), 0.5, np.float32), features=feats,
                               heatmaps=None)


def _plan(flip: bool) -> SimpleNamespace:
    return SimpleNamespace(input_size=(48, 64), flip=flip, batch_size=4, mflip=np.array([0, 2, 1]))


def _inputs(n: int = 8):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, size=(n, 64, 48, 3)).astype(np.uint8)
    Ms = np.tile(np.array([[[1.0, 0, 0], [0, 1.0, 0]]]), (n, 1, 1))
    return crops, Ms, np.zeros(n, bool)


def test_single_pass_features_are_exact_and_not_copied_to_float64():
    from posecal.models.extract import _model_passes

    ad = _FakeAdapter()
    crops, Ms, flips = _inputs()
    want = np.concatenate([ad.predict(crops[b:b + 4]).features for b in range(0, len(crops), 4)])
    tracemalloc.start()
    try:
        img_xy, scores, feats, hms = _model_passes(ad, _plan(False), crops, Ms, flips)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert feats.dtype == np.float32 and np.array_equal(feats, want) and hms is None
    assert img_xy.shape == (8, 3, 2) and scores.shape == (8, 3)
    # the adapter's outputs plus their concatenation is 2x the features; a float64 copy alone would be 2x more
    assert peak < 3.0 * want.nbytes, (peak, want.nbytes)


def test_flip_still_averages_both_passes():
    from posecal.models.extract import _model_passes

    ad = _FakeAdapter()
    crops, Ms, flips = _inputs()
    _, _, feats, _ = _model_passes(ad, _plan(True), crops, Ms, flips)
    plain = np.concatenate([ad.predict(crops[b:b + 4]).features for b in range(0, 8, 4)]).astype(np.float64)
    mirrored = crops[:, :, ::-1]
    mir = np.concatenate([ad.predict(mirrored[b:b + 4]).features for b in range(0, 8, 4)])[:, :, :, ::-1]
    assert feats.dtype == np.float32
    np.testing.assert_allclose(feats, ((plain + mir) / 2).astype(np.float32), rtol=1e-6)
