"""Monte Carlo checks of posecal.theory (seeded, >= 1e6 samples, tolerance from the standard error)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares

from posecal import theory
from posecal.keypoints import COCO17

N_MC = 1_000_000
Z = 5.0  # tolerance in standard errors


def _mc_mean(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))


def test_oks_l2_matches_pycocotools():
    """exp(-d^2/(2 l^2)) with l^2 = (2k)^2 area reproduces pycocotools' computeOks exactly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    K = 17
    gt_xy = rng.uniform(50, 150, size=(K, 2))
    dt_xy = gt_xy + rng.normal(0, 6, size=(K, 2))
    area = 5234.5
    gt = {
        "images": [{"id": 1, "width": 300, "height": 300}],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": area,
                "bbox": [40, 40, 120, 120],
                "num_keypoints": K,
                "keypoints": np.column_stack([gt_xy, np.full(K, 2)]).ravel().tolist(),
            }
        ],
    }
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    dets = coco.loadRes(
        [
            {
                "image_id": 1,
                "category_id": 1,
                "score": 1.0,
                "keypoints": np.column_stack([dt_xy, np.ones(K)]).ravel().tolist(),
            }
        ]
    )
    ev = COCOeval(coco, dets, "keypoints")
    ev.params.kpt_oks_sigmas = COCO17.sigmas
    ev.evaluate()
    ref = float(np.asarray(ev.ious[(1, 1)]).ravel()[0])
    d2 = ((dt_xy - gt_xy) ** 2).sum(1)
    ours = np.exp(-d2 / (2 * theory.oks_l2(COCO17.sigmas, area))).mean()
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize(
    "sigma,l,delta",
    [
        (0.0001, 3.0, 0.0),
        (2.0, 3.0, 0.0),
        (5.0, 2.0, 0.0),
        (2.0, 3.0, 4.0),
        (6.0, 10.0, 12.0),
        (1.0, 1.0, 3.0),
    ],
)
def test_expected_oks_monte_carlo(sigma, l, delta):
    """Eqs. 10-11: E_p[exp(-||p_hat - p||^2/(2 l^2))], p ~ N(mu, sigma^2 I), p_hat = mu + (delta, 0)."""
    rng = np.random.default_rng(1)
    mu = np.array([3.0, -2.0])
    p = mu + sigma * rng.standard_normal((N_MC, 2))
    p_hat = mu + np.array([delta * 0.6, delta * 0.8])
    vals = np.exp(-((p_hat - p) ** 2).sum(1) / (2 * l * l))
    mc, se = _mc_mean(vals)
    cf = float(theory.expected_oks(sigma**2, l**2, delta**2))
    assert abs(mc - cf) < Z * se + 1e-12
    if delta == 0:
        assert float(theory.perfect_expected_oks(sigma**2, l**2)) == pytest.approx(cf, rel=1e-15)


def test_expected_oks_vectorised_broadcast():
    sig2 = np.array([[1.0, 4.0, 9.0]])
    l2 = np.array([[2.0], [8.0]])
    out = theory.expected_oks(sig2, l2, 1.0)
    assert out.shape == (2, 3)
    assert out[1, 0] == pytest.approx(8 / 9 * np.exp(-1 / 18))


@pytest.mark.parametrize("sigma,target_l,offset", [(1.0, 2.0, 0.0), (3.0, 2.0, 0.0), (2.0, 2.0, 3.0)])
def test_heatmap_expected_target_and_peak_monte_carlo(sigma, target_l, offset):
    """Eqs. 13-17: E_p[exp(-||m - p||^2/(2 l~^2))] at a pixel m; peak at m = mu is l~^2/(sigma^2+l~^2)."""
    rng = np.random.default_rng(2)
    p = sigma * rng.standard_normal((N_MC, 2))
    m = np.array([offset, 0.0])
    vals = np.exp(-((m - p) ** 2).sum(1) / (2 * target_l**2))
    mc, se = _mc_mean(vals)
    cf = float(theory.heatmap_expected_target(offset**2, sigma**2, target_l**2))
    assert abs(mc - cf) < Z * se
    if offset == 0:
        peak = float(theory.heatmap_peak(sigma**2, target_l**2))
        assert peak == pytest.approx(cf)
        assert float(theory.sigma2_from_heatmap_peak(peak, target_l**2)) == pytest.approx(sigma**2)


def test_sigma_inversions_edge_cases():
    assert theory.sigma2_from_heatmap_peak(1.3).item() == 0.0  # peaks above 1 are legal: sigma = 0
    assert np.isfinite(theory.sigma2_from_heatmap_peak(0.0)).all()
    assert theory.sigma2_from_heatmap_width(np.array([3.0, 13.0]), 4.0).tolist() == [0.0, 9.0]


@pytest.mark.parametrize("sigma,delta", [(0.05, 0.0), (0.05, 0.04), (2.0, 3.0)])
def test_rle_sigma_hat_monte_carlo(sigma, delta):
    """Eqs. 57, 62: the NLL-optimal sigma_hat^2 = E||p - p_hat||^2 / 2 = sigma^2 + Delta^2/2."""
    rng = np.random.default_rng(3)
    p = sigma * rng.standard_normal((N_MC, 2))
    p_hat = np.array([0.0, delta])
    half_sq = 0.5 * ((p - p_hat) ** 2).sum(1)
    mc, se = _mc_mean(half_sq)
    cf = float(theory.rle_sigma_hat(sigma**2, delta**2)) ** 2
    assert abs(mc - cf) < Z * se
    # direct check that this sigma_hat maximises the empirical 2-D Gaussian log-likelihood
    s2 = np.linspace(0.5, 1.5, 201) * cf
    ll = -np.log(s2) - half_sq.mean() / s2
    assert s2[np.argmax(ll)] == pytest.approx(cf, rel=0.006)
    assert float(theory.rle_score(sigma**2, delta**2)) == pytest.approx(1 - np.sqrt(cf))


def test_rle_eq18_l1_identity_monte_carlo():
    """Eq. 18 at p_hat = mu: E[1 - sqrt(pi/8) ||p_hat - p||_1] = 1 - sigma."""
    sigma = 0.07
    rng = np.random.default_rng(4)
    p = sigma * rng.standard_normal((N_MC, 2))
    vals = 1 - np.sqrt(np.pi / 8) * np.abs(p).sum(1)
    mc, se = _mc_mean(vals)
    assert abs(mc - float(theory.rle_expected_l1_score(sigma**2))) < Z * se
    assert float(theory.rle_score(sigma**2)) == pytest.approx(1 - sigma)


def _fit_gaussian_family(target: np.ndarray, gx: np.ndarray, gy: np.ndarray, p_hat: np.ndarray) -> np.ndarray:
    """Least-squares (o, sigma_hat^2) of o exp(-||m - p_hat||^2 / (2 sigma_hat^2)) to a target on a grid."""
    d2 = (gx[None, :] - p_hat[0]) ** 2 + (gy[:, None] - p_hat[1]) ** 2

    def resid(th):
        return (th[0] * np.exp(-d2 / (2 * th[1])) - target).ravel()

    return least_squares(resid, x0=[0.5, 8.0], xtol=1e-14, ftol=1e-14, gtol=1e-14).x


@pytest.mark.parametrize("sigma,delta", [(1.5, 0.0), (1.5, 3.0), (0.5, 5.0)])
def test_detection_imperfect_optimum(sigma, delta):
    """Eqs. 87, 105, 109 (corrected 110): the MSE-optimal imperfect heatmap o* exp(-||m-p_hat||^2/(2 s^2)).

    The MSE-optimal member of the family is the least-squares fit to E_p[h(m)] (bias-variance split of
    Eq. 65). E_p[h] is estimated by Monte Carlo (separable in x and y: exact factorisation), on a fine
    grid (continuum limit of Eq. 80). The standard error of the fitted (o, s^2) comes from 8 independent
    batches. A fit to the exact expectation checks the algebra to high precision as well.
    """
    lt = 2.0
    mu = np.array([0.0, 0.0])
    p_hat = mu + np.array([delta, 0.0])
    step = 0.5
    gx = np.arange(-25, 30 + step, step)
    gy = np.arange(-25, 25 + step, step)
    o_cf = float(theory.heatmap_peak_imperfect(sigma**2, delta**2, lt**2))
    w_cf = float(theory.heatmap_optimal_width2(sigma**2, delta**2, lt**2))

    # exact expectation -> tight check of the algebra
    exact = theory.heatmap_expected_target(
        (gx[None, :] - mu[0]) ** 2 + (gy[:, None] - mu[1]) ** 2, sigma**2, lt**2
    )
    o_ex, w_ex = _fit_gaussian_family(exact, gx, gy, p_hat)
    assert o_ex == pytest.approx(o_cf, rel=1e-6)
    assert w_ex == pytest.approx(w_cf, rel=1e-6)

    # Monte Carlo expectation, 8 batches x 125k = 1e6 samples
    rng = np.random.default_rng(5)
    fits = []
    for _ in range(8):
        px = mu[0] + sigma * rng.standard_normal(125_000)
        py = mu[1] + sigma * rng.standard_normal(125_000)
        hx = np.exp(-((gx[None, :] - px[:, None]) ** 2) / (2 * lt**2)).mean(0)
        hy = np.exp(-((gy[None, :] - py[:, None]) ** 2) / (2 * lt**2)).mean(0)
        fits.append(_fit_gaussian_family(hy[:, None] * hx[None, :], gx, gy, p_hat))
    fits = np.array(fits)
    mean, se = fits.mean(0), fits.std(0, ddof=1) / np.sqrt(len(fits))
    assert abs(mean[0] - o_cf) < Z * se[0] + 1e-9
    assert abs(mean[1] - w_cf) < Z * se[1] + 1e-9
    if delta == 0:
        assert o_cf == pytest.approx(float(theory.heatmap_peak(sigma**2, lt**2)))
        assert w_cf == pytest.approx(sigma**2 + lt**2)
    else:
        # the printed Eq. 110 (no exponential) is off by far more than the Monte Carlo error
        printed = float(theory.heatmap_peak_imperfect_paper_eq110(sigma**2, delta**2, lt**2))
        assert abs(printed - mean[0]) > 20 * se[0]
        assert o_cf < float(theory.heatmap_peak(sigma**2, lt**2))  # "confidence decreases" (A.5)


def test_eq105_and_eq87_agree_only_at_the_eq109_width():
    """Eq. 106: the scale condition (Eq. 87) and the width condition (Eq. 105) coincide at Eq. 109's width."""
    s2 = np.array([0.5, 2.0, 6.0])[:, None]
    d2 = np.array([0.0, 1.0, 9.0, 25.0])[None, :]
    np.testing.assert_allclose(
        theory.heatmap_peak_width_condition(s2, d2, 4.0),
        theory.heatmap_peak_imperfect(s2, d2, 4.0),
        rtol=1e-12,
    )
    w2 = theory.heatmap_optimal_width2(s2, d2, 4.0) * 1.3
    assert np.all(
        np.abs(
            theory.heatmap_peak_width_condition(s2, d2, 4.0, w2)
            - theory.heatmap_peak_imperfect(s2, d2, 4.0, w2)
        )
        > 1e-4
    )


def test_eq87_scale_optimum_at_a_fixed_width_monte_carlo():
    """Eq. 87 at a non-optimal fixed width: the least-squares scale against the Monte Carlo E_p[h]."""
    sigma, delta, lt, w2 = 1.5, 2.0, 2.0, 9.0
    step = 0.5
    g = np.arange(-25, 25 + step, step)
    rng = np.random.default_rng(6)
    G = np.exp(-((g[None, :] - delta) ** 2 + g[:, None] ** 2) / (2 * w2))
    fits = []
    for _ in range(8):
        px = sigma * rng.standard_normal(125_000)
        py = sigma * rng.standard_normal(125_000)
        hx = np.exp(-((g[None, :] - px[:, None]) ** 2) / (2 * lt**2)).mean(0)
        hy = np.exp(-((g[None, :] - py[:, None]) ** 2) / (2 * lt**2)).mean(0)
        T = hy[:, None] * hx[None, :]
        fits.append((G * T).sum() / (G * G).sum())  # closed-form least squares in o
    fits = np.array(fits)
    cf = float(theory.heatmap_peak_imperfect(sigma**2, delta**2, lt**2, width2=w2))
    assert abs(fits.mean() - cf) < Z * fits.std(ddof=1) / np.sqrt(len(fits)) + 1e-9
