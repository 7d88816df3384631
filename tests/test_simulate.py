"""The simulator: determinism, labels, COCO validity, its truths checked by Monte Carlo / recomputation."""

from __future__ import annotations

import numpy as np
import pytest

from posecal import theory
from posecal.io.coco import load_gt, load_results
from posecal.keypoints import COCO17
from posecal.theory import heatmap
from posecal.theory.simulate import LABEL, simulate


@pytest.fixture(scope="module")
def sim():
    return simulate(600, seed=3)


def test_seeded_and_labelled(sim):
    again = simulate(600, seed=3)
    assert again.gt == sim.gt and again.heatmap_results == sim.heatmap_results
    np.testing.assert_array_equal(again.features, sim.features)
    other = simulate(600, seed=4)
    assert not np.array_equal(other.expected_oks, sim.expected_oks)
    assert sim.label == LABEL == "simulation"
    assert LABEL in sim.gt["info"]["description"]
    assert all(r["source"].startswith(LABEL) for r in sim.heatmap_results + sim.rle_results)


def test_shapes_and_coco_validity(sim):
    N, K = 600, 17
    for name, shape in [
        ("area", (N,)),
        ("bbox", (N, 4)),
        ("crop", (N, 4)),
        ("visibility", (N, K)),
        ("mu", (N, K, 2)),
        ("gt_xy", (N, K, 2)),
        ("sigma", (N, K)),
        ("pred_heatmap", (N, K, 2)),
        ("pred_rle", (N, K, 2)),
        ("score_heatmap", (N, K)),
        ("score_rle", (N, K)),
        ("expected_oks", (N, K)),
        ("expected_oks_rle", (N, K)),
        ("expected_instance_oks", (N,)),
        ("features", (N, 128)),
        ("features_kpt", (N, K, 16)),
    ]:
        assert getattr(sim, name).shape == shape, name
    gt = load_gt(sim.gt)
    assert gt.keypoint_set is COCO17 and len(gt) == N
    with pytest.warns(Warning):  # heatmap maxima above 1 are kept (and warned about)
        res = load_results(sim.heatmap_results, gt)
    assert (res.keypoints[..., 2] > 1).any()
    np.testing.assert_array_equal(res.keypoints[..., :2], sim.pred_heatmap)
    assert set(np.unique(sim.visibility)) == {0, 1, 2}
    assert (gt.num_keypoints > 0).all()
    # COCO area ranges are both populated (medium and large)
    assert ((sim.area > 32**2) & (sim.area < 96**2)).sum() > 50 and (sim.area > 96**2).sum() > 50


def test_expected_oks_is_eq11_and_matches_monte_carlo(sim):
    """The stored truth equals Eq. 11 and the mean OKS over re-drawn annotations p ~ N(mu, sigma^2 I)."""
    l2 = theory.oks_l2(COCO17.sigmas[None], sim.area[:, None])
    d2 = ((sim.pred_heatmap - sim.mu) ** 2).sum(-1)
    np.testing.assert_allclose(sim.expected_oks, theory.expected_oks(sim.sigma**2, l2, d2), rtol=1e-12)
    rng = np.random.default_rng(0)
    pick = rng.choice(sim.expected_oks.size, 100, replace=False)
    n, k = np.unravel_index(pick, sim.expected_oks.shape)
    M = 10_000  # 100 x 10k = 1e6 samples
    p = sim.mu[n, k][:, None] + sim.sigma[n, k][:, None, None] * rng.standard_normal((100, M, 2))
    oks = np.exp(-((sim.pred_heatmap[n, k][:, None] - p) ** 2).sum(-1) / (2 * l2[n, k][:, None]))
    mc, se = oks.mean(1), oks.std(1, ddof=1) / np.sqrt(M)
    z = (mc - sim.expected_oks[n, k]) / np.maximum(se, 1e-12)
    assert np.abs(z).max() < 5.0
    lab = sim.visibility > 0
    np.testing.assert_allclose(sim.expected_instance_oks, (sim.expected_oks * lab).sum(1) / lab.sum(1))


def test_model_scores_follow_the_theory():
    d = simulate(300, seed=5, score_noise=0.0)
    scale = heatmap.image_px_per_heatmap_px(d.crop, d.heatmap_size)[:, None]
    s2 = (d.sigma / scale) ** 2
    d2 = ((d.pred_heatmap - d.mu) ** 2).sum(-1) / scale**2
    np.testing.assert_allclose(d.score_heatmap, theory.heatmap_peak_imperfect(s2, d2, 4.0), rtol=1e-12)
    norm = 0.5 * (1 / d.crop[:, 2] + 1 / d.crop[:, 3])[:, None]
    dr2 = ((d.pred_rle - d.mu) ** 2).sum(-1)
    np.testing.assert_allclose(d.score_rle, 1 - theory.rle_sigma_hat(d.sigma**2, dr2) * norm, rtol=1e-12)
    # instance scores as MMPose computes them (bbox_keypoint for heatmaps, bbox_rle for RLE; box score 1)
    inst = np.array([r["score"] for r in d.rle_results])
    np.testing.assert_allclose(inst, 1 + d.score_rle.mean(1) + d.score_rle.max(1))


def test_rendered_heatmaps_encode_prediction_and_width():
    d = simulate(40, seed=6, render_heatmaps=True, score_noise=0.0)
    assert d.heatmaps.shape == (40, 17, 64, 48) and d.heatmaps.dtype == np.float32
    inside = (d.pred_heatmap[..., 0] > d.crop[:, None, 0] - 0.4 * d.crop[:, None, 2]) & (
        d.pred_heatmap[..., 0] < d.crop[:, None, 0] + 0.4 * d.crop[:, None, 2]
    )
    coords, _ = heatmap.decode_dark(d.heatmaps)
    img = heatmap.heatmap_to_image(coords, d.crop, d.heatmap_size)
    scale = heatmap.image_px_per_heatmap_px(d.crop, d.heatmap_size)[:, None]
    err = np.sqrt(((img - d.pred_heatmap) ** 2).sum(-1)) / scale
    assert np.median(err[inside]) < 0.05  # heatmap pixels
    fit = heatmap.fit_gaussian(d.heatmaps, radius=6)
    s2 = (d.sigma / scale) ** 2
    d2 = ((d.pred_heatmap - d.mu) ** 2).sum(-1) / scale**2
    w2 = theory.heatmap_optimal_width2(s2, d2, 4.0)
    good = inside & fit["ok"] & (w2 < 6)  # wide maps are clipped by the window
    np.testing.assert_allclose(fit["width"][good] ** 2, w2[good], rtol=1e-3)


def _descriptors(sim):
    l = 2 * COCO17.sigmas[None] * np.sqrt(sim.area)[:, None]
    d = np.sqrt(((sim.pred_heatmap - sim.mu) ** 2).sum(-1))
    return np.concatenate([np.log(sim.sigma / l), np.log(d / l + 1e-2)], 1)


def test_features_carry_expected_oks(sim):
    """A linear read-out of the features plus Eq. 11 recovers the true expected OKS (what CCNet learns),
    and the read-out fitted on one data seed works on another (one fixed feature projection)."""
    other = simulate(300, seed=8)
    X = np.column_stack([sim.features, np.ones(600)])
    W = np.linalg.lstsq(X, _descriptors(sim), rcond=None)[0]
    rec = np.column_stack([other.features, np.ones(300)]) @ W
    s_rel, d_rel = np.exp(rec[:, :17]), np.maximum(np.exp(rec[:, 17:]) - 1e-2, 0)
    eoks = theory.expected_oks(s_rel**2, 1.0, d_rel**2)
    r = np.corrcoef(eoks.ravel(), other.expected_oks.ravel())[0, 1]
    assert r > 0.95
    assert not simulate(300, seed=8, feature_seed=1).features.tolist() == other.features.tolist()


def test_spatial_features_localise_keypoint_information():
    """Reading features_spatial at a keypoint's predicted cell and regressing linearly recovers that
    keypoint's log(sigma / l): the information sits where the keypoint is. (Face keypoints overlap at this
    resolution, so the median over keypoints is asserted.)"""
    W, H = 24, 32
    d = simulate(800, seed=2, spatial_size=(W, H))
    assert d.features_spatial.shape == (800, 16, H, W) and d.features_spatial.dtype == np.float32
    assert simulate(20, seed=2).features_spatial is None
    desc = _descriptors(d)
    rs = []
    for k in range(17):
        u = (d.pred_heatmap[:, k, 0] - (d.crop[:, 0] - 0.5 * d.crop[:, 2])) / d.crop[:, 2] * W - 0.5
        v = (d.pred_heatmap[:, k, 1] - (d.crop[:, 1] - 0.5 * d.crop[:, 3])) / d.crop[:, 3] * H - 0.5
        iu, iv = np.clip(np.round(u).astype(int), 0, W - 1), np.clip(np.round(v).astype(int), 0, H - 1)
        X = np.column_stack([d.features_spatial[np.arange(800), :, iv, iu], np.ones(800)])
        w = np.linalg.lstsq(X[:600], desc[:600, k], rcond=None)[0]
        rs.append(np.corrcoef(X[600:] @ w, desc[600:, k])[0, 1])
    assert np.median(rs) > 0.9
