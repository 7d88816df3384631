"""Rescoring keypoint and instance confidences without training a network (Sec. 4.4, Table 1).

Every rescorer has the same sklearn-style interface::

    r = get_rescorer("closed-form", area="gt")
    r.fit(pred, gt)                      # optional (learned calibrators need it)
    out = r.transform(pred, gt)          # RescoreResult: keypoint_scores (D, K), instance_scores (D,)
    records = out.to_records(pred)       # COCO results with the same coordinates and new scores
    r.to_json() / Rescorer.from_json(d)  # persistence of the (fitted) rescorer as plain JSON

``pred`` is a :class:`posecal.io.coco.CocoResults` (or a path / list of records), ``gt`` a
:class:`posecal.io.coco.CocoGroundTruth` (or a path / dict). Coordinates are never changed.

Methods (``RESCORERS``):

- ``closed-form`` — per-keypoint expected OKS ``l^2 / (sigma^2 + l^2)`` (Eq. 12) with ``l^2 = (2k)^2 area``
  and ``sigma`` from the heatmap peak (Eq. 17 inverted, ``model="heatmap"``), from RLE's ``1 - sigma``
  (Eq. 3, ``model="rle"``) or given directly (e.g. ``sigma_hat`` of a feature store). ``area``: ``gt``
  (matched gt), ``pred`` (pycocotools' detection area: box w*h, else keypoint extent) or ``mean``
  (dataset mean) — the three columns of Table 1.
- ``mmpose-bbox``, ``mmpose-bbox_keypoint``, ``mmpose-bbox_rle`` — MMPose 1.x ``CocoMetric`` score modes;
  ``mmpose-keypoint`` — the plain mean of the keypoint scores (MMPose ``keypoint``).
  All instance scores come from :func:`posecal.rescore.aggregate.instance_score` (MMPose-exact).
- ``isotonic`` — monotone map raw keypoint score -> keypoint OKS fitted on matched pairs (PAVA).
- ``loglog`` — linear fit of ``log(error / l)`` on ``log(score)`` (keypoint-moseq style), turned into an
  expected keypoint OKS through the Rayleigh mean-log and Eq. 12 (``1 / (1 + sigma_n^2)``, ``l = 1``).
- ``visibility`` — ĉ = Σ v̂ₖ ŝₖ / Σ v̂ₖ (the CCNet form, Eq. 19) with any per-keypoint visibility.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from posecal import theory
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.io.coco import CocoGroundTruth, CocoResults, load_gt, load_results
from posecal.keypoints import COCO17, find_keypoint_set
from posecal.rescore.aggregate import INSTANCE_SCORE_MODES, instance_score
from posecal.theory.heatmap import image_px_per_heatmap_px, topdown_crop_box

__all__ = [
    "RescoreResult",
    "Rescorer",
    "ClosedFormRescorer",
    "MMPoseRescorer",
    "VisibilityRescorer",
    "IsotonicRescorer",
    "LogLogRescorer",
    "RESCORERS",
    "get_rescorer",
    "instance_score",
    "match_to_gt",
    "matched_keypoint_pairs",
]

AGGREGATES = INSTANCE_SCORE_MODES


# ------------------------------------------------------------------------------------------------
@dataclass
class RescoreResult:
    """New confidences. ``keypoint_scores (D, K)``, ``instance_scores (D,)``; row i = record i of ``pred``."""

    keypoint_scores: np.ndarray
    instance_scores: np.ndarray

    def to_records(self, pred: CocoResults) -> list[dict]:
        """Copies of ``pred``'s records with the new scores; x, y and every other field unchanged."""
        out = []
        kps = self.keypoint_scores
        for i, rec in enumerate(_records_of(pred)):
            r = dict(rec)
            kp = list(rec["keypoints"])
            kp[2::3] = [float(v) for v in kps[i]]
            r["keypoints"] = kp
            r["score"] = float(self.instance_scores[i])
            out.append(r)
        return out


def _records_of(pred: CocoResults) -> list[dict]:
    if pred.records:
        return pred.records
    from posecal.io.coco import results_to_records

    return results_to_records(pred)


def _as_pred(pred: Any, gt: CocoGroundTruth | None = None) -> CocoResults:
    if isinstance(pred, CocoResults):
        return pred
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PosecalWarning)  # scores > 1 are legal and expected here
        return load_results(pred, gt)


def _as_gt(gt: Any) -> CocoGroundTruth | None:
    if gt is None or isinstance(gt, CocoGroundTruth):
        return gt
    return load_gt(gt)


def _bbox_score(pred: CocoResults) -> np.ndarray:
    recs = pred.records
    if recs and all("bbox_score" in r for r in recs):
        return np.array([float(r["bbox_score"]) for r in recs], dtype=np.float64)
    return np.ones(len(pred))


def _aggregate_for(pred: CocoResults, s: np.ndarray, mode: str, thr: float, visibility: Any) -> np.ndarray:
    v = visibility if visibility is not None else pred.visibility
    if mode == "visibility" and v is None:
        raise PosecalInputError(
            "aggregation 'visibility' needs a 'visibility' list per record", pred.path, 0, "visibility"
        )
    return instance_score(s, mode, _bbox_score(pred), thr, v)


def _sigmas_for(pred: CocoResults, gt: CocoGroundTruth | None, sigmas: Any) -> np.ndarray:
    if sigmas is not None:
        return np.asarray(sigmas, dtype=np.float64)
    K = pred.keypoints.shape[1]
    if gt is not None and gt.keypoint_set is not None and gt.keypoint_set.num_keypoints == K:
        return gt.keypoint_set.sigmas
    ks = find_keypoint_set(None, K)
    if ks is None and K == COCO17.num_keypoints:
        ks = COCO17
    if ks is None:
        raise PosecalInputError(
            f"cannot tell the OKS sigmas of {K} keypoints; give --gt with named keypoints",
            pred.path,
            None,
            "keypoints",
        )
    return ks.sigmas


def match_to_gt(pred: CocoResults, gt: CocoGroundTruth, sigmas: np.ndarray | None = None) -> np.ndarray:
    """Per detection, the gt row (same image and category, not crowd) of highest OKS; ``(D,)``, −1 if none.

    This is a many-to-one assignment (no greedy one-to-one as in COCOeval) used to pick the gt area and
    fitting pairs for a detection.
    """
    from posecal.metrics.oks import oks_matrix

    sig = _sigmas_for(pred, gt, sigmas)
    out = np.full(len(pred), -1, dtype=np.int64)
    by_img: dict[tuple[int, int], list[int]] = {}
    for g in np.flatnonzero(~gt.iscrowd):
        by_img.setdefault((int(gt.image_id[g]), int(gt.category_id[g])), []).append(int(g))
    keys = list(zip(pred.image_id.tolist(), pred.category_id.tolist(), strict=True))
    det_by: dict[tuple[int, int], list[int]] = {}
    for d, key in enumerate(keys):
        det_by.setdefault(key, []).append(d)
    for key, dets in det_by.items():
        gts = by_img.get(key)
        if not gts:
            continue
        dets_a, gts_a = np.array(dets), np.array(gts)
        O = oks_matrix(
            pred.keypoints[dets_a, :, :2], gt.keypoints[gts_a], gt.area[gts_a], sig, gt.bbox[gts_a]
        )
        out[dets_a] = gts_a[np.argmax(O, axis=1)]
    return out


def matched_keypoint_pairs(
    pred: CocoResults, gt: CocoGroundTruth, sigmas: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per-keypoint (raw score, OKS, normalised error) over matched detections' labelled keypoints.

    Returns a dict of 1-D arrays over P pairs: ``score``, ``oks`` (Eq. 7 term), ``error`` (image px),
    ``l`` (``2 k sqrt(area)``, image px), ``det`` and ``kpt`` indices.
    """
    sig = _sigmas_for(pred, gt, sigmas)
    m = match_to_gt(pred, gt, sig)
    d = np.flatnonzero(m >= 0)
    g = m[d]
    gk = gt.keypoints[g]
    lab = gk[..., 2] > 0
    err = np.sqrt(((pred.keypoints[d, :, :2] - gk[..., :2]) ** 2).sum(-1))
    l2 = theory.oks_l2(sig[None], gt.area[g][:, None])
    oks = np.exp(-(err**2) / (2 * l2))
    di, ki = np.nonzero(lab)
    return {
        "score": pred.keypoints[d, :, 2][di, ki],
        "oks": oks[di, ki],
        "error": err[di, ki],
        "l": np.sqrt(l2)[di, ki],
        "det": d[di],
        "kpt": ki,
    }


# ------------------------------------------------------------------------------------------------
class Rescorer:
    """Base class. Subclasses set ``method`` and implement ``transform`` (and ``fit`` when learned)."""

    method: ClassVar[str] = ""
    _params: ClassVar[tuple[str, ...]] = ()
    _state: ClassVar[tuple[str, ...]] = ()
    needs_fit: ClassVar[bool] = False

    def fit(self, pred: Any, gt: Any = None, **kw: Any) -> Rescorer:
        """Fit on ``pred`` and its ground truth; no-op for rescorers without state."""
        return self

    def transform(self, pred: Any, gt: Any = None, **kw: Any) -> RescoreResult:  # pragma: no cover
        raise NotImplementedError

    def fit_transform(self, pred: Any, gt: Any = None, **kw: Any) -> RescoreResult:
        return self.fit(pred, gt, **kw).transform(pred, gt, **kw)

    @property
    def is_fitted(self) -> bool:
        return all(getattr(self, s, None) is not None for s in self._state)

    def to_json(self) -> dict:
        """Plain-JSON description: ``{"method", "params", "state", "posecal_version"}``."""
        from posecal import __version__

        def conv(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, tuple):
                return list(v)
            if isinstance(v, np.generic):
                return v.item()
            return v

        return {
            "method": self.method,
            "params": {p: conv(getattr(self, p)) for p in self._params},
            "state": {s: conv(getattr(self, s)) for s in self._state},
            "posecal_version": __version__,
        }

    @staticmethod
    def from_json(obj: dict, file: str | None = None) -> Rescorer:
        """Inverse of :meth:`to_json`. Raises PosecalInputError on an unknown method or field."""
        if not isinstance(obj, dict) or "method" not in obj:
            raise PosecalInputError("not a posecal calibrator (no 'method')", file, None, "method")
        method = obj["method"]
        if method not in RESCORERS:
            raise PosecalInputError(f"unknown method {method!r}", file, None, "method")
        params, state = obj.get("params", {}), obj.get("state") or {}
        if not isinstance(params, dict) or not isinstance(state, dict):
            raise PosecalInputError("params and state must be objects", file, None, "params")
        _check_calibrator_values(params, state, file)
        try:
            r = get_rescorer(method, **params)
        except (TypeError, ValueError) as e:
            raise PosecalInputError(f"bad parameters: {e}", file, None, "params") from None
        for s, v in state.items():
            if s not in r._state:
                raise PosecalInputError(f"unknown state field {s!r} for {method}", file, None, "state")
            setattr(
                r, s, None if v is None else (np.asarray(v, dtype=np.float64) if isinstance(v, list) else float(v))
            )
        if r.needs_fit and not r.is_fitted:
            raise PosecalInputError(f"{method} calibrator has no fitted state", file, None, "state")
        _check_calibrator_state(r, file)
        return r

    def save(self, path: Any) -> None:
        from posecal._util import write_json_atomic

        write_json_atomic(path, self.to_json())

    @staticmethod
    def load(path: Any) -> Rescorer:
        import orjson

        try:
            with open(path, "rb") as f:
                obj = orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError) as e:
            raise PosecalInputError(f"cannot read calibrator: {getattr(e, 'strerror', None) or e}", str(path)) from None
        return Rescorer.from_json(obj, str(path))

    def __repr__(self) -> str:
        ps = ", ".join(f"{p}={getattr(self, p)!r}" for p in self._params)
        return f"{type(self).__name__}({ps})"


_STRING_PARAMS = ("area", "model", "aggregate", "mode")


def _check_calibrator_values(params: dict, state: dict, file: str | None) -> None:
    """Values of a calibrator JSON: strings where names belong, finite numbers (never booleans or numeric
    strings) or flat lists of them elsewhere."""

    def num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))

    for where, d in (("params", params), ("state", state)):
        for k, v in d.items():
            ok = (v is None or num(v) or (isinstance(v, str) and where == "params" and k in _STRING_PARAMS)
                  or (isinstance(v, list) and all(num(x) for x in v)))
            if not ok:
                raise PosecalInputError(f"bad value {str(v)[:40]!r}", file, None, f"{where}.{k}")
    for k in ("heatmap_size", "input_size"):
        v = params.get(k)
        if v is not None and not (isinstance(v, list) and len(v) == 2 and all(x >= 1 for x in v)):
            raise PosecalInputError("expected [W, H] with W, H >= 1", file, None, f"params.{k}")
    for k in ("target_sigma", "padding", "min_score"):
        v = params.get(k)
        if v is not None and not (num(v) and v > 0):
            raise PosecalInputError("expected a number > 0", file, None, f"params.{k}")
    v = params.get("sigmas")
    if v is not None and not (isinstance(v, list) and v and all(x > 0 for x in v)):
        raise PosecalInputError("expected a list of OKS constants > 0", file, None, "params.sigmas")


def _check_calibrator_state(r: Rescorer, file: str | None) -> None:
    """Fitted state of a loaded calibrator has the shapes its method uses."""
    if r.method == "isotonic":
        x, y = np.asarray(r.x_), np.asarray(r.y_)
        if x.ndim != 1 or x.shape != y.shape or x.size < 1 or np.any(np.diff(x) < 0):
            raise PosecalInputError("x_ and y_ must be lists of equal length >= 1, x_ increasing", file, None,
                                    "state")
    elif r.method == "loglog":
        if np.asarray(r.coef_).shape != (2,):
            raise PosecalInputError("coef_ must be [a, b]", file, None, "state.coef_")
    elif r.method == "closed-form" and r.mean_area is not None and not r.mean_area > 0:
        raise PosecalInputError("mean_area must be > 0", file, None, "state.mean_area")


class MMPoseRescorer(Rescorer):
    """MMPose instance score modes ``bbox``, ``keypoint``, ``bbox_keypoint``, ``bbox_rle`` (keypoints kept).

    The box score is the records' ``bbox_score`` field when every record has one, else 1.
    """

    _params = ("mode", "keypoint_score_thr")

    def __init__(self, mode: str = "bbox_keypoint", keypoint_score_thr: float = 0.2):
        if mode not in ("bbox", "keypoint", "bbox_keypoint", "bbox_rle"):
            raise ValueError(f"unknown MMPose score mode {mode!r}")
        self.mode, self.keypoint_score_thr = mode, float(keypoint_score_thr)

    @property
    def method(self) -> str:  # type: ignore[override]
        return f"mmpose-{self.mode}"

    def transform(self, pred: Any, gt: Any = None, **kw: Any) -> RescoreResult:
        pred = _as_pred(pred)
        s = pred.keypoints[..., 2].copy()
        inst = instance_score(s, self.mode, _bbox_score(pred), self.keypoint_score_thr)
        return RescoreResult(s, inst)


class VisibilityRescorer(Rescorer):
    """ĉ = Σ v̂ₖ ŝₖ / Σ v̂ₖ, visibility ``(D, K)`` from the records' ``visibility`` or ``visibility=``."""

    method = "visibility"

    def transform(
        self, pred: Any, gt: Any = None, *, visibility: np.ndarray | None = None, **kw
    ) -> RescoreResult:
        pred = _as_pred(pred)
        v = visibility if visibility is not None else pred.visibility
        if v is None:
            raise PosecalInputError(
                "visibility rescoring needs a 'visibility' list per record", pred.path, 0, "visibility"
            )
        s = pred.keypoints[..., 2].copy()
        return RescoreResult(s, instance_score(s, "visibility", visibility=v))


class ClosedFormRescorer(Rescorer):
    """Closed-form expected-OKS rescoring (Eq. 12; Table 1). See the module docstring.

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
        mean_area: fitted (or given) mean area for ``area="mean"``.
    """

    method = "closed-form"
    _params = (
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
    _state = ("mean_area",)

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
        sigmas: Any = None,
        mean_area: float | None = None,
    ):
        if area not in ("gt", "pred", "mean"):
            raise ValueError(f"area must be 'gt', 'pred' or 'mean', not {area!r}")
        if model not in ("heatmap", "rle"):
            raise ValueError(f"model must be 'heatmap' or 'rle', not {model!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregation {aggregate!r}")
        self.area, self.model, self.target_sigma = area, model, float(target_sigma)
        self.heatmap_size = tuple(int(v) for v in heatmap_size)
        self.input_size = tuple(int(v) for v in input_size)
        self.padding, self.aggregate, self.keypoint_score_thr = (
            float(padding),
            aggregate,
            float(keypoint_score_thr),
        )
        self.sigmas = None if sigmas is None else np.asarray(sigmas, dtype=np.float64)
        self.mean_area = None if mean_area is None else float(mean_area)

    def fit(self, pred: Any, gt: Any = None, **kw: Any) -> ClosedFormRescorer:
        """Record the mean area (gt: non-crowd annotations with keypoints; else detection areas)."""
        gt = _as_gt(gt)
        if gt is not None:
            ok = (~gt.iscrowd) & (gt.num_keypoints > 0) & np.isfinite(gt.area)
            self.mean_area = float(gt.area[ok].mean())
        elif pred is not None:
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
        """``(D,)`` areas per ``self.area``."""
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
        a = np.where(m >= 0, gt.area[np.maximum(m, 0)], np.nan)
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
        pred: Any,
        gt: Any = None,
        *,
        sigma: np.ndarray | None = None,
        visibility: np.ndarray | None = None,
        **kw: Any,
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
        k = _sigmas_for(pred, gt, self.sigmas)
        s = theory.perfect_expected_oks(sig**2, theory.oks_l2(k[None], area[:, None]))
        inst = _aggregate_for(pred, s, self.aggregate, self.keypoint_score_thr, visibility)
        return RescoreResult(s, inst)


def _pava(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) least-squares fit; returns block breakpoints (x, y) for interpolation."""
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


class _KeypointMapRescorer(Rescorer):
    """Shared parts of the feature-free calibrators: raw keypoint score -> expected keypoint OKS."""

    _params = ("aggregate", "keypoint_score_thr", "sigmas")

    def __init__(self, aggregate: str = "bbox_keypoint", keypoint_score_thr: float = 0.2, sigmas: Any = None):
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregation {aggregate!r}")
        self.aggregate, self.keypoint_score_thr = aggregate, float(keypoint_score_thr)
        self.sigmas = None if sigmas is None else np.asarray(sigmas, dtype=np.float64)

    def map_scores(self, s: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _pairs(self, pred: Any, gt: Any) -> dict[str, np.ndarray]:
        gt = _as_gt(gt)
        if gt is None:
            raise PosecalInputError(f"{self.method} needs ground truth to fit (--fit-gt)", None, None, "gt")
        pred = _as_pred(pred, gt)
        p = matched_keypoint_pairs(pred, gt, self.sigmas)
        if p["score"].size < 2:
            raise PosecalInputError(
                f"{self.method}: fewer than 2 matched labelled keypoints to fit on", pred.path
            )
        return p

    def transform(
        self, pred: Any, gt: Any = None, *, visibility: np.ndarray | None = None, **kw
    ) -> RescoreResult:
        if not self.is_fitted:
            raise PosecalInputError(
                f"{self.method} calibrator is not fitted (fit it or load one)", None, None, "calibrator"
            )
        pred = _as_pred(pred)
        s = self.map_scores(pred.keypoints[..., 2])
        return RescoreResult(s, _aggregate_for(pred, s, self.aggregate, self.keypoint_score_thr, visibility))


class IsotonicRescorer(_KeypointMapRescorer):
    """Isotonic regression of keypoint OKS on the raw keypoint score (PAVA), linear interpolation between
    the fitted blocks, constant beyond the fitted range. State: ``x_``, ``y_`` breakpoints."""

    method = "isotonic"
    _state = ("x_", "y_")
    needs_fit = True

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.x_: np.ndarray | None = None
        self.y_: np.ndarray | None = None

    def fit(self, pred: Any, gt: Any = None, **kw: Any) -> IsotonicRescorer:
        p = self._pairs(pred, gt)
        self.x_, self.y_ = _pava(p["score"], p["oks"], np.ones_like(p["oks"]))
        return self

    def map_scores(self, s: np.ndarray) -> np.ndarray:
        return np.interp(s, self.x_, self.y_)


_RAYLEIGH_LOG_SHIFT = 0.5 * (np.log(2.0) - np.euler_gamma)  # E[ln R] = ln sigma + this, R ~ Rayleigh(sigma)


class LogLogRescorer(_KeypointMapRescorer):
    """Log-log linear fit ``log(error / l) = a + b log(score)`` (keypoint-moseq's error model), with
    ``l = 2 k sqrt(area)`` so the error is in OKS units. Treating the error as a 2-D isotropic Gaussian
    (Rayleigh norm, ``E[ln R] = ln sigma + (ln 2 - gamma)/2``), the expected keypoint OKS is Eq. 12 with
    ``l = 1``: ``1 / (1 + sigma_n^2)``, ``sigma_n = exp(a + b log s - (ln 2 - gamma)/2)``.
    State: ``coef_ = [a, b]``. Scores are floored at ``min_score`` before the log."""

    method = "loglog"
    _params = _KeypointMapRescorer._params + ("min_score",)
    _state = ("coef_",)
    needs_fit = True

    def __init__(
        self,
        aggregate: str = "bbox_keypoint",
        keypoint_score_thr: float = 0.2,
        sigmas: Any = None,
        min_score: float = 1e-4,
    ):
        super().__init__(aggregate, keypoint_score_thr, sigmas)
        self.min_score = float(min_score)
        self.coef_: np.ndarray | None = None

    def fit(self, pred: Any, gt: Any = None, **kw: Any) -> LogLogRescorer:
        p = self._pairs(pred, gt)
        ok = p["error"] > 0
        x = np.log(np.maximum(p["score"][ok], self.min_score))
        y = np.log(p["error"][ok] / p["l"][ok])
        A = np.column_stack([np.ones_like(x), x])
        self.coef_ = np.linalg.lstsq(A, y, rcond=None)[0]
        return self

    def sigma_n(self, s: np.ndarray) -> np.ndarray:
        """Per-axis error scale in units of ``l`` for raw scores ``s``."""
        a, b = self.coef_
        return np.exp(a + b * np.log(np.maximum(s, self.min_score)) - _RAYLEIGH_LOG_SHIFT)

    def map_scores(self, s: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + self.sigma_n(s) ** 2)


RESCORERS: tuple[str, ...] = (
    "closed-form",
    "isotonic",
    "loglog",
    "mmpose-bbox",
    "mmpose-keypoint",
    "mmpose-bbox_keypoint",
    "mmpose-bbox_rle",
    "visibility",
)


def get_rescorer(method: str, **params: Any) -> Rescorer:
    """A rescorer by method name (``RESCORERS``) with its parameters."""
    if method == "closed-form":
        return ClosedFormRescorer(**params)
    if method == "isotonic":
        return IsotonicRescorer(**params)
    if method == "loglog":
        return LogLogRescorer(**params)
    if method == "visibility":
        return VisibilityRescorer(**params)
    if method.startswith("mmpose-"):
        params.pop("mode", None)
        return MMPoseRescorer(method[len("mmpose-") :], **params)
    raise ValueError(f"unknown rescoring method {method!r}; use one of {', '.join(RESCORERS)}")
