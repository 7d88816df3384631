"""Learned feature-free calibrators: raw keypoint score -> expected keypoint OKS. numpy only.

Both are fitted on (raw score, keypoint OKS) pairs of detections matched to their ground truth
(:func:`posecal.rescore.matching.matched_keypoint_pairs`) and raise :class:`posecal.errors.NotFittedError`
when used before :meth:`fit`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from posecal.errors import PosecalInputError
from posecal.rescore.aggregate import INSTANCE_SCORE_MODES
from posecal.rescore.base import (
    GtLike,
    PredLike,
    Rescorer,
    RescoreResult,
    _aggregate_for,
    _as_gt,
    _as_pred,
    _finite_param,
    _sigmas_param,
    register_rescorer,
)
from posecal.rescore.matching import matched_keypoint_pairs

__all__ = ["IsotonicRescorer", "LogLogRescorer", "pava"]


def pava(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) weighted least-squares fit by the pool-adjacent-violators algorithm.

    ``x, y, w``: ``(P,)`` inputs, targets and weights. Ties in ``x`` are pooled first (weighted mean).
    Returns the breakpoints ``(ux (U,), fitted (U,))``: the sorted unique ``x`` and their fitted values,
    for linear interpolation (Ayer et al. 1955; Barlow et al. 1972).
    """
    order = np.argsort(x, kind="stable")
    x, y, w = x[order], y[order], w[order]
    ux, inv = np.unique(x, return_inverse=True)
    wy = np.bincount(inv, weights=w * y)
    ww = np.bincount(inv, weights=w)
    yy = wy / ww
    vals: list[float] = []
    wts: list[float] = []
    cnt: list[int] = []
    for v, wt in zip(yy.tolist(), ww.tolist(), strict=True):
        vals.append(v)
        wts.append(wt)
        cnt.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v2, w2, c2 = vals.pop(), wts.pop(), cnt.pop()
            v1, w1, c1 = vals.pop(), wts.pop(), cnt.pop()
            vals.append((v1 * w1 + v2 * w2) / (w1 + w2))
            wts.append(w1 + w2)
            cnt.append(c1 + c2)
    fitted = np.repeat(np.array(vals), np.array(cnt))
    return ux, fitted


_pava = pava  # the name the tests and older callers import


class _KeypointMapRescorer(Rescorer):
    """Shared parts of the feature-free calibrators: raw keypoint score -> expected keypoint OKS."""

    _params: ClassVar[tuple[str, ...]] = ("aggregate", "keypoint_score_thr", "sigmas")
    needs_fit: ClassVar[bool] = True

    def __init__(
        self, aggregate: str = "bbox_keypoint", keypoint_score_thr: float = 0.2, sigmas: ArrayLike | None = None
    ):
        if aggregate not in INSTANCE_SCORE_MODES:
            raise ValueError(f"unknown aggregation {aggregate!r}")
        self.aggregate = aggregate
        self.keypoint_score_thr = _finite_param("keypoint_score_thr", keypoint_score_thr)
        self.sigmas = _sigmas_param(sigmas)

    def map_scores(self, s: np.ndarray) -> np.ndarray:  # pragma: no cover
        """Calibrated keypoint scores of raw scores ``s`` (any shape)."""
        raise NotImplementedError

    def _pairs(self, pred: PredLike, gt: GtLike) -> dict[str, np.ndarray]:
        gt = _as_gt(gt)
        if gt is None:  # API misuse: the CLI always passes --fit-gt
            raise ValueError(f"{self.method} needs ground truth to fit: fit(pred, gt)")
        pred = _as_pred(pred, gt)
        p = matched_keypoint_pairs(pred, gt, self.sigmas)
        if p["score"].size < 2:
            raise PosecalInputError(
                f"{self.method}: fewer than 2 matched labelled keypoints to fit on", pred.path
            )
        return p

    def transform(
        self, pred: PredLike, gt: GtLike = None, *, visibility: np.ndarray | None = None, **kw: object
    ) -> RescoreResult:
        """Keypoint scores ``(D, K)`` through :meth:`map_scores`, then aggregated (``aggregate``)."""
        self._check_is_fitted()
        pred = _as_pred(pred)
        s = self.map_scores(pred.keypoints[..., 2])
        return RescoreResult(s, _aggregate_for(pred, s, self.aggregate, self.keypoint_score_thr, visibility))


@register_rescorer("isotonic")
class IsotonicRescorer(_KeypointMapRescorer):
    """Isotonic regression of keypoint OKS (Eq. 7 term) on the raw keypoint score.

    Fitted by the pool-adjacent-violators algorithm (PAVA, :func:`pava`; Zadrozny & Elkan 2002 for its use
    as a calibrator); linear interpolation between the fitted blocks, constant beyond the fitted range.

    Args:
        aggregate, keypoint_score_thr: instance aggregation of the new keypoint scores
            (:func:`posecal.rescore.aggregate.instance_score`).
        sigmas: OKS constants ``(K,)`` of the fitting pairs (default: the gt's keypoint set).

    State: ``x_``, ``y_`` breakpoints ``(U,)``.
    """

    method = "isotonic"
    _state: ClassVar[tuple[str, ...]] = ("x_", "y_")

    def __init__(
        self, aggregate: str = "bbox_keypoint", keypoint_score_thr: float = 0.2, sigmas: ArrayLike | None = None
    ):
        super().__init__(aggregate, keypoint_score_thr, sigmas)
        self.x_: np.ndarray | None = None
        self.y_: np.ndarray | None = None

    def fit(self, pred: PredLike, gt: GtLike = None, **kw: object) -> IsotonicRescorer:
        """Fit the monotone map on ``pred``'s matched labelled keypoints (needs ``gt``)."""
        p = self._pairs(pred, gt)
        self.x_, self.y_ = pava(p["score"], p["oks"], np.ones_like(p["oks"]))
        return self

    def map_scores(self, s: np.ndarray) -> np.ndarray:
        """``np.interp`` of raw scores ``s`` on the fitted breakpoints."""
        self._check_is_fitted()
        return np.interp(s, self.x_, self.y_)


_RAYLEIGH_LOG_SHIFT = 0.5 * (np.log(2.0) - np.euler_gamma)  # E[ln R] = ln sigma + this, R ~ Rayleigh(sigma)


@register_rescorer("loglog")
class LogLogRescorer(_KeypointMapRescorer):
    """Log-log linear fit ``log(error / l) = a + b log(score)`` (keypoint-moseq's error model), turned into
    an expected keypoint OKS by Eq. 12.

    ``l = 2 k sqrt(area)`` (Eq. 7) so the error is in OKS units. Treating the error as a 2-D isotropic
    Gaussian (Rayleigh norm, ``E[ln R] = ln sigma + (ln 2 - gamma)/2``), the expected keypoint OKS is
    Eq. 12 with ``l = 1``: ``1 / (1 + sigma_n^2)``, ``sigma_n = exp(a + b log s - (ln 2 - gamma)/2)``.
    The fit is ordinary least squares on the pairs with a non-zero error.

    Args:
        aggregate, keypoint_score_thr, sigmas: as :class:`IsotonicRescorer`.
        min_score: scores are floored at this before the log.

    State: ``coef_ = [a, b]``.
    """

    method = "loglog"
    _params: ClassVar[tuple[str, ...]] = _KeypointMapRescorer._params + ("min_score",)
    _state: ClassVar[tuple[str, ...]] = ("coef_",)

    def __init__(
        self,
        aggregate: str = "bbox_keypoint",
        keypoint_score_thr: float = 0.2,
        sigmas: ArrayLike | None = None,
        min_score: float = 1e-4,
    ):
        super().__init__(aggregate, keypoint_score_thr, sigmas)
        self.min_score = _finite_param("min_score", min_score, positive=True)
        self.coef_: np.ndarray | None = None

    def fit(self, pred: PredLike, gt: GtLike = None, **kw: object) -> LogLogRescorer:
        """Least-squares fit of ``coef_`` on ``pred``'s matched labelled keypoints (needs ``gt``)."""
        gt = _as_gt(gt)
        pred = _as_pred(pred, gt)
        p = self._pairs(pred, gt)
        ok = p["error"] > 0
        if int(ok.sum()) < 2:  # log(0) is no data point: a fit on fewer than 2 would be made up
            raise PosecalInputError(f"loglog: {int(ok.sum())} matched labelled keypoints with a non-zero error "
                                    "(needs at least 2 to fit log(error) on log(score))", pred.path)
        x = np.log(np.maximum(p["score"][ok], self.min_score))
        y = np.log(p["error"][ok] / p["l"][ok])
        A = np.column_stack([np.ones_like(x), x])
        self.coef_ = np.linalg.lstsq(A, y, rcond=None)[0]
        return self

    def sigma_n(self, s: np.ndarray) -> np.ndarray:
        """Per-axis error scale in units of ``l`` for raw scores ``s``."""
        self._check_is_fitted()
        a, b = self.coef_
        with np.errstate(over="ignore"):  # a steep fit: sigma_n = inf, expected OKS 0 (as the limit)
            return np.exp(a + b * np.log(np.maximum(s, self.min_score)) - _RAYLEIGH_LOG_SHIFT)

    def map_scores(self, s: np.ndarray) -> np.ndarray:
        """Expected keypoint OKS ``1 / (1 + sigma_n(s)^2)`` (Eq. 12 with ``l = 1``)."""
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + self.sigma_n(s) ** 2)
