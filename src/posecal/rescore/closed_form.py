"""Closed-form expected-OKS rescoring (paper Sec. 4.4, Table 1). numpy only."""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from posecal import theory
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.io.coco import CocoGroundTruth, CocoResults
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
    _size_param,
    register_rescorer,
)
from posecal.rescore.matching import match_to_gt, oks_sigmas_for
from posecal.theory.heatmap import image_px_per_heatmap_px, topdown_crop_box

__all__ = ["ClosedFormRescorer"]


@register_rescorer("closed-form")
class ClosedFormRescorer(Rescorer):
    """Closed-form expected-OKS rescoring: keypoint score ``l^2 / (sigma^2 + l^2)`` (paper Eq. 12).

    ``l^2 = (2k)^2 area`` is the OKS fall-off of Eq. 7 and ``sigma`` the keypoint's ambiguity in image px:
    from the heatmap peak (Eq. 17 inverted, ``sigma^2 = l~^2 (1/s - 1)``, ``model="heatmap"``), from RLE's
    ``s = 1 - sigma`` (Eq. 3, ``model="rle"``), or given to :meth:`transform` (e.g. a feature store's
    ``sigma_hat``). The three ``area`` sources are the three rescoring columns of Table 1.

    Args:
        area: ``"gt"`` (area of the matched gt; needs gt), ``"pred"`` (pycocotools' detection area: box
            ``w*h`` when records have ``bbox``, else the keypoint extent), ``"mean"`` (dataset mean gt area
            when gt is given at fit/transform, else mean detection area).
        model: ``"heatmap"`` (keypoint score = heatmap peak, Eq. 17), ``"rle"`` (score = ``1 - sigma``
            normalised per axis by the crop, Eq. 3) — ignored when ``sigma=`` is passed to ``transform``.
        target_sigma: ``l~`` of the heatmap target, heatmap pixels.
        heatmap_size, input_size: ``(W, H)`` of the model's heatmaps and input; padding: crop padding.
        aggregate: instance aggregation of the new keypoint scores
            (:func:`posecal.rescore.aggregate.instance_score`).
        keypoint_score_thr: threshold of ``keypoint``/``bbox_keypoint`` aggregation (on the new scores).
        sigmas: OKS constants ``(K,)`` (default: the gt's keypoint set, or COCO-17 for K = 17).
        mean_area: fitted (or given) mean area for ``area="mean"`` (image px²).
    """

    method = "closed-form"
    _params: ClassVar[tuple[str, ...]] = (
        "area",
        "model",
        "target_sigma",
        "heatmap_size",
        "input_size",
        "padding",
        "aggregate",
        "keypoint_score_thr",
        "sigmas",
    )
    _state: ClassVar[tuple[str, ...]] = ("mean_area",)

    def __init__(
        self,
        area: str = "gt",
        model: str = "heatmap",
        target_sigma: float = 2.0,
        heatmap_size: tuple[int, int] = (48, 64),
        input_size: tuple[int, int] = (192, 256),
        padding: float = 1.25,
        aggregate: str = "bbox_keypoint",
        keypoint_score_thr: float = 0.2,
        sigmas: ArrayLike | None = None,
        mean_area: float | None = None,
    ):
        if area not in ("gt", "pred", "mean"):
            raise ValueError(f"area must be 'gt', 'pred' or 'mean', not {area!r}")
        if model not in ("heatmap", "rle"):
            raise ValueError(f"model must be 'heatmap' or 'rle', not {model!r}")
        if aggregate not in INSTANCE_SCORE_MODES:
            raise ValueError(f"unknown aggregation {aggregate!r}")
        self.area, self.model = area, model
        self.target_sigma = _finite_param("target_sigma", target_sigma, positive=True)
        self.heatmap_size = _size_param("heatmap_size", heatmap_size)
        self.input_size = _size_param("input_size", input_size)
        self.padding, self.aggregate, self.keypoint_score_thr = (
            _finite_param("padding", padding, positive=True),
            aggregate,
            _finite_param("keypoint_score_thr", keypoint_score_thr),
        )
        self.sigmas = _sigmas_param(sigmas)
        self.mean_area = None if mean_area is None else float(mean_area)

    def fit(self, pred: PredLike | None, gt: GtLike = None, **kw: object) -> ClosedFormRescorer:
        """Record the mean area (gt: non-crowd annotations with keypoints; else detection areas)."""
        gt = _as_gt(gt)
        ok = None if gt is None else (~gt.iscrowd) & (gt.num_keypoints > 0) & np.isfinite(gt.area)
        if ok is not None and ok.any():
            self.mean_area = float(gt.area[ok].mean())
        elif pred is not None and len(_as_pred(pred)):  # no usable gt person: the detections' own areas
            self.mean_area = float(_as_pred(pred).det_area.mean())
        return self

    def crops(self, pred: CocoResults) -> np.ndarray:
        """``(D, 4)`` top-down crops ``(cx, cy, cw, ch)`` from records' ``bbox`` (else keypoint extent)."""
        if pred.bbox is not None:
            box = pred.bbox
        else:
            xy = pred.keypoints[..., :2]
            lo, hi = xy.min(1), xy.max(1)
            box = np.concatenate([lo, hi - lo], 1)
        return topdown_crop_box(box, self.input_size, self.padding)

    def sigma_from_scores(self, pred: CocoResults) -> np.ndarray:
        """Ambiguity sigma ``(D, K)`` in image pixels from raw keypoint scores (``model``)."""
        s = pred.keypoints[..., 2]
        crop = self.crops(pred)
        if self.model == "heatmap":
            scale = image_px_per_heatmap_px(crop, self.heatmap_size)
            return np.sqrt(theory.sigma2_from_heatmap_peak(s, self.target_sigma**2)) * scale[:, None]
        norm = 0.5 * (1.0 / crop[:, 2] + 1.0 / crop[:, 3])  # RLE: sigma normalised per axis by the crop
        return np.maximum(1.0 - s, 0.0) / norm[:, None]

    def areas(self, pred: CocoResults, gt: CocoGroundTruth | None) -> np.ndarray:
        """``(D,)`` areas (image px²) per ``self.area``."""
        if self.area == "pred":
            return pred.det_area.copy()
        if self.area == "mean":
            if self.mean_area is None:
                self.fit(pred, gt)
            return np.full(len(pred), self.mean_area)
        if gt is None:
            raise PosecalInputError(
                "closed-form with area 'gt' needs the ground truth (--gt)", pred.path, None, "area"
            )
        m = match_to_gt(pred, gt, self.sigmas)
        a = np.full(m.shape, np.nan)
        a[m >= 0] = gt.area[m[m >= 0]]  # (a gt without annotations has no row to point at)
        miss = ~np.isfinite(a)
        if miss.any():
            warnings.warn(
                f"{int(miss.sum())} detections have no gt in their image; using their predicted area",
                PosecalWarning,
                stacklevel=2,
            )
            a[miss] = pred.det_area[miss]
        return a

    def transform(
        self,
        pred: PredLike,
        gt: GtLike = None,
        *,
        sigma: np.ndarray | None = None,
        visibility: np.ndarray | None = None,
        **kw: object,
    ) -> RescoreResult:
        """New keypoint scores ``l^2/(sigma^2 + l^2)`` (Eq. 12) and their aggregation.

        Args:
            pred, gt: results and (for ``area="gt"``) ground truth.
            sigma: optional ``(D, K)`` ambiguity in image pixels (e.g. a feature store's ``sigma_hat``);
                default (and where ``sigma`` is NaN) derived from the keypoint scores (``model``).
            visibility: optional ``(D, K)`` for ``aggregate="visibility"`` (default: records' ``visibility``).
        """
        gt = _as_gt(gt)
        pred = _as_pred(pred, gt)
        if sigma is None:
            sig = self.sigma_from_scores(pred)
        else:
            sig = np.asarray(sigma, dtype=np.float64)
            if sig.shape == pred.keypoints.shape[:2] and not np.isfinite(sig).all():
                sig = np.where(np.isfinite(sig), sig, self.sigma_from_scores(pred))  # NaN: from the scores
        if sig.shape != pred.keypoints.shape[:2]:
            raise PosecalInputError(
                f"sigma has shape {sig.shape}, expected {pred.keypoints.shape[:2]}", pred.path, None, "sigma"
            )
        area = self.areas(pred, gt)
        bad = np.flatnonzero(~np.isfinite(area) & ~np.isnan(area))
        if bad.size:  # finite coordinates whose extent overflows (1e300): l² = ∞, and ∞/∞ has no score
            raise PosecalInputError(f"coordinates too large: the predicted area (keypoint extent) is {area[bad[0]]}, "
                                    "so the closed form has no value", pred.path, int(bad[0]), "keypoints")
        k = oks_sigmas_for(pred, gt, self.sigmas)
        with np.errstate(over="ignore"):  # σ ≈ 1e300 px: σ² = ∞ gives the limit, s = 0
            s = theory.perfect_expected_oks(sig**2, theory.oks_l2(k[None], area[:, None]))
        inst = _aggregate_for(pred, s, self.aggregate, self.keypoint_score_thr, visibility)
        return RescoreResult(s, inst)
