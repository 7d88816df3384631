"""Audit s28 (Python API): σ̂ estimation on an empty batch and on heatmaps with non-finite values."""

from __future__ import annotations

import numpy as np

from posecal.theory.heatmap import estimate_sigma, fit_gaussian


def _maps() -> np.ndarray:
    yy, xx = np.mgrid[:64, :48]
    g = np.exp(-((xx - 20.0) ** 2 + (yy - 30.0) ** 2) / (2 * 2.5**2))
    return np.stack([np.stack([g, g])] * 3)  # (N=3, K=2, 64, 48), width 2.5 heatmap px


def test_empty_batch_gives_empty_results():
    # was: ValueError "cannot reshape array of size 0 into shape (0,newaxis)"
    assert estimate_sigma(np.zeros((0, 17, 64, 48))).shape == (0, 17)
    assert estimate_sigma(np.zeros((0, 17, 64, 48)), scale=np.zeros(0)).shape == (0, 17)
    f = fit_gaussian(np.zeros((0, 17, 64, 48)))
    assert f["width"].shape == (0, 17) and f["center"].shape == (0, 17, 2) and f["ok"].shape == (0, 17)


def test_a_heatmap_with_nan_gives_nan_not_a_made_up_sigma():
    h = _maps()
    h[0, 0, 0, 0] = np.nan  # one NaN pixel far from the peak
    h[1, 1] = np.nan  # a whole map of NaN
    h[2, 0, 5, 5] = np.inf
    clean = estimate_sigma(_maps())
    s = estimate_sigma(h, scale=np.full(3, 4.0))
    bad = np.array([[True, False], [False, True], [True, False]])
    # was: sqrt(radius² − l̃²) = 4.58 heatmap px, a finite σ̂ that looked like a real estimate
    assert np.isnan(s[bad]).all()
    np.testing.assert_allclose(s[~bad], 4.0 * clean[~bad])
    assert np.isnan(estimate_sigma(h, method="peak")[1, 1])  # the peak estimator agrees
    f = fit_gaussian(h)
    assert np.isnan(f["width"][bad]).all() and not f["ok"][bad].any()
    assert np.isfinite(f["width"][~bad]).all() and f["ok"][~bad].all()
