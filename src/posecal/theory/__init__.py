"""Closed forms of Sec. 4 and Appendix A of the paper, vectorised over any broadcastable shape.

Setting (Sec. 4.1): a keypoint's annotated location is a sample ``p ~ N(mu, sigma^2 I)`` in 2-D, where
``sigma`` is the per-image, per-keypoint *ambiguity*. A model predicts ``p_hat``; ``Delta = ||p_hat - mu||``.

COCO convention used throughout (pycocotools ``computeOks``)::

    e = d^2 / (2 sigma_k)^2 / (area + eps) / 2,   OKS_k = exp(-e) = exp(-d^2 / (2 l^2)),
    l^2 = (2 k)^2 * area                                                             (Eq. 6-7)

with ``k`` the per-keypoint OKS constant (``KeypointSet.sigmas``) and ``area`` the gt segment area, both
in the same pixel units as ``d``. ``l2 = oks_l2(k, area)`` computes ``l^2``. Every function here takes
squared lengths (``sigma2``, ``l2``, ``delta2``) so that units are explicit: any pixel unit, the same
for all arguments of one call.

Corrections to the paper text (verified by the Monte Carlo tests in ``tests/test_theory.py``):

- Eq. 11 prints ``||p - mu||`` inside the exponential; the correct variable is the prediction,
  ``||p_hat - mu||`` (Eq. 35 has it right).
- Eqs. 15-16 print ``2 pi^2``; the factor is ``2 pi l~^2`` (Eq. 13).
- Eq. 110 drops the factor ``exp(-Delta^2 / (2 sigma_bar^2))`` of Eq. 87; the optimum peak is
  ``o* = 2 l~^2 / sigma_bar^2 * exp(-Delta^2 / (2 sigma_bar^2))`` with
  ``sigma_bar^2 = sigma~^2 + sigma_hat*^2`` (``heatmap_peak_imperfect``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "oks_l2",
    "expected_oks",
    "perfect_expected_oks",
    "heatmap_peak",
    "heatmap_expected_target",
    "sigma2_from_heatmap_peak",
    "sigma2_from_heatmap_width",
    "rle_sigma_hat",
    "rle_score",
    "rle_expected_l1_score",
    "heatmap_optimal_width2",
    "heatmap_peak_imperfect",
    "heatmap_peak_width_condition",
    "heatmap_peak_imperfect_paper_eq110",
]

_EPS = np.spacing(1)  # pycocotools adds np.spacing(1) to the area


def oks_l2(k: ArrayLike, area: ArrayLike) -> np.ndarray:
    """OKS fall-off ``l^2 = (2 k)^2 * (area + eps)`` (Eq. 7, pycocotools convention).

    Args:
        k: per-keypoint OKS constants, e.g. shape ``(K,)``.
        area: instance areas in squared pixels, e.g. shape ``(N, 1)`` to broadcast to ``(N, K)``.
    Returns:
        ``l^2`` in squared pixels, broadcast shape of the inputs.
    """
    k = np.asarray(k, dtype=np.float64)
    return (2.0 * k) ** 2 * (np.asarray(area, dtype=np.float64) + _EPS)


def expected_oks(sigma2: ArrayLike, l2: ArrayLike, delta2: ArrayLike = 0.0) -> np.ndarray:
    """Expected per-keypoint OKS of a fixed prediction under ``p ~ N(mu, sigma^2 I)`` (Eqs. 10-11).

    ``E_p[exp(-||p_hat - p||^2 / (2 l^2))] = l^2 / (sigma^2 + l^2) * exp(-Delta^2 / (2 (sigma^2 + l^2)))``
    with ``Delta^2 = ||p_hat - mu||^2``.

    Args:
        sigma2: ambiguity variance ``sigma^2`` per axis (squared pixels), any shape.
        l2: OKS fall-off ``l^2`` (squared pixels, see ``oks_l2``), broadcastable.
        delta2: squared prediction deviation ``Delta^2`` (squared pixels), broadcastable; 0 = perfect.
    Returns:
        expected OKS in [0, 1], broadcast shape.
    """
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    l2 = np.asarray(l2, dtype=np.float64)
    tot = sigma2 + l2
    return l2 / tot * np.exp(-np.asarray(delta2, dtype=np.float64) / (2.0 * tot))


def perfect_expected_oks(sigma2: ArrayLike, l2: ArrayLike) -> np.ndarray:
    """``s_OKS = l^2 / (sigma^2 + l^2)`` (Eq. 12): Eq. 11 at ``p_hat = mu``. Shapes broadcast."""
    return expected_oks(sigma2, l2, 0.0)


def heatmap_expected_target(
    dist2_to_mu: ArrayLike, sigma2: ArrayLike, target_l2: ArrayLike = 4.0
) -> np.ndarray:
    """MSE-optimal (unconstrained) heatmap value at a pixel ``m`` (Eqs. 13-15).

    The training target is ``h(m) = exp(-||m - p||^2 / (2 l~^2))`` (Eq. 13); its expectation under
    ``p ~ N(mu, sigma^2 I)`` is ``l~^2/(sigma^2 + l~^2) * exp(-||m - mu||^2 / (2 (sigma^2 + l~^2)))``:
    a Gaussian of variance ``sigma^2 + l~^2`` per axis. Units: heatmap pixels.

    Args:
        dist2_to_mu: ``||m - mu||^2`` in squared heatmap pixels.
        sigma2: ambiguity variance in squared heatmap pixels.
        target_l2: ``l~^2`` of the target Gaussian (default ``2^2``, heatmap pixels).
    """
    return expected_oks(sigma2, target_l2, dist2_to_mu)


def heatmap_peak(sigma2: ArrayLike, target_l2: ArrayLike = 4.0) -> np.ndarray:
    """MSE-optimal heatmap maximum ``s_det = l~^2 / (sigma^2 + l~^2)`` (Eqs. 16-17).

    Args:
        sigma2: ambiguity variance (squared heatmap pixels).
        target_l2: ``l~^2`` of the training target (squared heatmap pixels; MMPose/SBL default 4).
    """
    return perfect_expected_oks(sigma2, target_l2)


def sigma2_from_heatmap_peak(
    peak: ArrayLike, target_l2: ArrayLike = 4.0, min_peak: float = 1e-6
) -> np.ndarray:
    """Invert Eq. 17: ``sigma^2 = l~^2 (1/s - 1)`` in squared heatmap pixels.

    Peaks ``>= 1`` (legal for real heatmaps) give ``sigma^2 = 0``; peaks below ``min_peak`` are
    raised to it so the result stays finite.
    """
    s = np.maximum(np.asarray(peak, dtype=np.float64), min_peak)
    return np.maximum(np.asarray(target_l2, dtype=np.float64) * (1.0 / s - 1.0), 0.0)


def sigma2_from_heatmap_width(width2: ArrayLike, target_l2: ArrayLike = 4.0) -> np.ndarray:
    """Invert ``sigma_hat^2 = sigma^2 + l~^2`` (Sec. 4.3): ``sigma^2 = max(width^2 - l~^2, 0)``.

    ``width2`` is the fitted Gaussian variance per axis of the heatmap (squared heatmap pixels).
    """
    return np.maximum(np.asarray(width2, dtype=np.float64) - np.asarray(target_l2, dtype=np.float64), 0.0)


def rle_sigma_hat(sigma2: ArrayLike, delta2: ArrayLike = 0.0) -> np.ndarray:
    """NLL-optimal RLE/Gaussian scale under imperfect prediction (Eqs. 57, 62).

    For the 2-D isotropic likelihood ``N(p_hat, sigma_hat^2 I)`` with ``p_hat`` fixed,
    ``sigma_hat*^2 = E||p - p_hat||^2 / 2 = sigma^2 + Delta^2 / 2``. Returns ``sigma_hat*`` (not squared),
    same units as ``sqrt(sigma2)``.
    """
    return np.sqrt(np.asarray(sigma2, dtype=np.float64) + 0.5 * np.asarray(delta2, dtype=np.float64))


def rle_score(sigma2: ArrayLike, delta2: ArrayLike = 0.0) -> np.ndarray:
    """RLE keypoint score ``1 - sigma_hat*`` (Eqs. 3, 18, 63), ``sigma`` in the model's normalised units."""
    return 1.0 - rle_sigma_hat(sigma2, delta2)


def rle_expected_l1_score(sigma2: ArrayLike) -> np.ndarray:
    """Right-hand side of Eq. 18 at ``p_hat = mu``: ``E[1 - sqrt(pi/8) ||p_hat - p||_1] = 1 - sigma``.

    (``E|x| = sigma sqrt(2/pi)`` per axis, two axes.) Provided to make the identity testable.
    """
    return 1.0 - np.sqrt(np.asarray(sigma2, dtype=np.float64))


def heatmap_optimal_width2(sigma2: ArrayLike, delta2: ArrayLike, target_l2: ArrayLike = 4.0) -> np.ndarray:
    """Optimal heatmap variance of an imperfect heatmap ``o exp(-||m - p_hat||^2/(2 sigma_hat^2))`` (Eq. 109).

    Minimising the continuous MSE ``int E_p[(h_hat(m) - h(m))^2] dm`` over ``(o, sigma_hat^2)`` with
    ``p_hat`` fixed gives ``sigma_hat*^2 = Delta^2/2 + sqrt(sigma~^4 + Delta^4/4)``,
    ``sigma~^2 = sigma^2 + l~^2`` (Eq. 76). All in squared heatmap pixels. At ``Delta = 0`` it is
    ``sigma^2 + l~^2``.
    """
    st2 = np.asarray(sigma2, dtype=np.float64) + np.asarray(target_l2, dtype=np.float64)
    d2 = np.asarray(delta2, dtype=np.float64)
    return 0.5 * d2 + np.sqrt(st2**2 + 0.25 * d2**2)


def heatmap_peak_imperfect(
    sigma2: ArrayLike, delta2: ArrayLike, target_l2: ArrayLike = 4.0, width2: ArrayLike | None = None
) -> np.ndarray:
    """MSE-optimal peak ``o*`` of an imperfect Gaussian heatmap centred at ``p_hat`` (Eqs. 87, 105, 110).

    For a given width ``sigma_hat^2`` the optimal scale is (Eq. 87)
    ``o* = 2 l~^2 / sigma_bar^2 * exp(-Delta^2 / (2 sigma_bar^2))``, ``sigma_bar^2 = sigma~^2 + sigma_hat^2``.
    With ``width2=None`` the jointly optimal ``sigma_hat*^2`` of Eq. 109 is used, which gives the
    corrected Eq. 110 (the printed Eq. 110 omits the exponential). Squared heatmap pixels throughout.
    """
    st2 = np.asarray(sigma2, dtype=np.float64) + np.asarray(target_l2, dtype=np.float64)
    d2 = np.asarray(delta2, dtype=np.float64)
    w2 = heatmap_optimal_width2(sigma2, delta2, target_l2) if width2 is None else np.asarray(width2, float)
    sbar2 = st2 + w2
    return 2.0 * np.asarray(target_l2, dtype=np.float64) / sbar2 * np.exp(-d2 / (2.0 * sbar2))


def heatmap_peak_width_condition(
    sigma2: ArrayLike, delta2: ArrayLike, target_l2: ArrayLike = 4.0, width2: ArrayLike | None = None
) -> np.ndarray:
    """Eq. 105: the scale ``o`` that makes the width derivative of the MSE vanish, for a given width.

    ``o = 2 l~^2 (2 sigma~^2 sigma_bar^2 + sigma_hat^2 Delta^2) / sigma_bar^6 * K``,
    ``K = exp(-Delta^2 / (2 sigma_bar^2))``.
    Together with Eq. 87 (the scale condition) it pins down the joint optimum: both agree exactly at the
    width of Eq. 109 (Eq. 106). Squared heatmap pixels; ``width2=None`` uses Eq. 109.
    """
    st2 = np.asarray(sigma2, dtype=np.float64) + np.asarray(target_l2, dtype=np.float64)
    d2 = np.asarray(delta2, dtype=np.float64)
    w2 = heatmap_optimal_width2(sigma2, delta2, target_l2) if width2 is None else np.asarray(width2, float)
    sbar2 = st2 + w2
    lt2 = np.asarray(target_l2, dtype=np.float64)
    return 2.0 * lt2 * (2.0 * st2 * sbar2 + w2 * d2) / sbar2**3 * np.exp(-d2 / (2.0 * sbar2))


def heatmap_peak_imperfect_paper_eq110(
    sigma2: ArrayLike, delta2: ArrayLike, target_l2: ArrayLike = 4.0
) -> np.ndarray:
    """Eq. 110 exactly as printed (no exponential factor) — kept only to document the typo; do not use."""
    st2 = np.asarray(sigma2, dtype=np.float64) + np.asarray(target_l2, dtype=np.float64)
    d2 = np.asarray(delta2, dtype=np.float64)
    return 2.0 * np.asarray(target_l2, float) / (st2 + np.sqrt(st2**2 + 0.25 * d2**2) + 0.5 * d2)
