"""The rescorer interface: :class:`Rescorer` (a scikit-learn-style estimator), :class:`RescoreResult`, the
registry of method names and :func:`get_rescorer`. numpy only.

A rescorer is built from keyword parameters only (``get_params`` / ``set_params`` as in scikit-learn),
learns its state in :meth:`Rescorer.fit` (attributes ending in ``_``, or ``mean_area``) and writes new
confidences in :meth:`Rescorer.transform`; coordinates are never changed. Learned calibrators used before
``fit`` raise :class:`posecal.errors.NotFittedError`.

Each concrete class registers its method name(s) with :func:`register_rescorer`; :func:`get_rescorer`
looks the name up in that table.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias, TypeVar

import numpy as np

from posecal.errors import NotFittedError, PosecalInputError, PosecalWarning
from posecal.io.coco import CocoGroundTruth, CocoResults, load_gt, load_results
from posecal.rescore.aggregate import instance_score

__all__ = [
    "GtLike",
    "NotFittedError",
    "PredLike",
    "RescoreResult",
    "Rescorer",
    "get_rescorer",
    "register_rescorer",
    "registered_rescorers",
    "rescorer_class",
]

#: What ``pred`` may be: parsed results, a results file, or its records.
PredLike: TypeAlias = CocoResults | str | os.PathLike | list[dict] | bytes
#: What ``gt`` may be: parsed ground truth, a gt file, its dict, or ``None``.
GtLike: TypeAlias = CocoGroundTruth | str | os.PathLike | dict | bytes | None
#: A JSON value of a rescorer's parameters or state.
JsonParam: TypeAlias = str | float | int | bool | list | None


# ------------------------------------------------------------------------------------------------
@dataclass
class RescoreResult:
    """New confidences. ``keypoint_scores (D, K)``, ``instance_scores (D,)``; row i = record i of ``pred``."""

    keypoint_scores: np.ndarray
    instance_scores: np.ndarray

    def to_records(self, pred: PredLike) -> list[dict]:
        """Copies of ``pred``'s records with the new scores; x, y and every other field unchanged. A record
        whose keypoint scores are all <= 0 keeps them: xtcocotools (MMPose's evaluator) drops such detections,
        and new positive scores would let them take part, changing its AR. ``pred`` is what ``transform`` was
        given: :class:`CocoResults`, a results file or its list of records."""
        out = []
        kps = self.keypoint_scores
        recs = _records_of(pred)
        if len(recs) != len(self.instance_scores):
            raise ValueError(f"to_records: {len(recs)} records for {len(self.instance_scores)} rescored rows "
                             "(give the results that were transformed)")
        for i, rec in enumerate(recs):
            r = dict(rec)
            kp = list(rec["keypoints"])
            if any(isinstance(v, (int, float)) and v > 0 for v in kp[2::3]):
                kp[2::3] = [float(v) for v in kps[i]]
            r["keypoints"] = kp
            r["score"] = float(self.instance_scores[i])
            out.append(r)
        return out


def _records_of(pred: PredLike) -> list[dict]:
    pred = _as_pred(pred)  # a path or a list of records, as ``transform`` takes them
    if pred.records:
        return pred.records
    from posecal.io.coco import results_to_records

    return results_to_records(pred)


def _as_pred(pred: PredLike, gt: CocoGroundTruth | None = None) -> CocoResults:
    if isinstance(pred, CocoResults):
        return pred
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PosecalWarning)  # scores > 1 are legal and expected here
        return load_results(pred, gt)


def _as_gt(gt: GtLike) -> CocoGroundTruth | None:
    if gt is None or isinstance(gt, CocoGroundTruth):
        return gt
    from posecal.metrics.cocoeval import with_oks_area

    return with_oks_area(load_gt(gt))


def _bbox_score(pred: CocoResults) -> np.ndarray:
    """``(D,)`` box scores: the records' ``bbox_score`` when every record has one, 1 when none has one.

    Some records with a ``bbox_score`` and others without is refused (naming the first without one): giving
    every record a box score of 1 then would silently drop the detector's scores from every instance score.
    """
    recs = pred.records
    has = [isinstance(r, dict) and "bbox_score" in r for r in recs] if recs else []
    if has and all(has):
        from posecal.datasets.coco import number

        return np.array([number(r["bbox_score"], pred.path, i, "bbox_score") for i, r in enumerate(recs)],
                        dtype=np.float64)
    if any(has):
        i = has.index(False)
        raise PosecalInputError(f"no 'bbox_score' ({sum(has)} of {len(has)} records have one: give it on every "
                                "record, or on none for box scores of 1)", pred.path, i, "bbox_score")
    return np.ones(len(pred))


_NO_BOX_SCORE = ("keypoint", "mean")  # instance-score modes that never read the box score


def _checked_visibility(pred: CocoResults, v: np.ndarray) -> np.ndarray:
    """Visibility ``(D, K)`` used as weights: finite and >= 0 (a negative weight makes the instance score no
    longer a weighted mean of the keypoint scores); refused naming the first bad record."""
    v = np.asarray(v, dtype=np.float64)
    bad = ~np.isfinite(v) | (v < 0)
    if v.ndim == 2 and bad.any():
        r, k = (int(x) for x in np.argwhere(bad)[0])
        raise PosecalInputError(f"keypoint {k}: visibility {float(v[r, k]):g} is not a weight >= 0",
                                pred.path, r, "visibility")
    return v


def _aggregate_for(
    pred: CocoResults, s: np.ndarray, mode: str, thr: float, visibility: np.ndarray | None
) -> np.ndarray:
    """Instance scores ``(D,)`` of keypoint scores ``s (D, K)`` by ``mode`` (MMPose-exact rule)."""
    v = visibility if visibility is not None else pred.visibility
    if mode == "visibility":
        if v is None:
            raise PosecalInputError(
                "aggregation 'visibility' needs a 'visibility' list per record", pred.path, 0, "visibility"
            )
        v = _checked_visibility(pred, v)
    return instance_score(s, mode, None if mode in _NO_BOX_SCORE else _bbox_score(pred), thr, v)


def _finite_param(name: str, v: object, *, positive: bool = False) -> float:
    """A float constructor parameter, finite (and > 0 with ``positive``); ``ValueError`` naming it otherwise —
    as the CLI's argument types and :meth:`Rescorer.from_json` check them (a NaN ``target_sigma`` or
    threshold made NaN or all-zero scores without a word)."""
    f = float(v)  # type: ignore[arg-type]
    if not np.isfinite(f) or (positive and f <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, not {v!r}")
    return f


def _size_param(name: str, v: object) -> tuple[int, int]:
    """``(W, H)``: two whole numbers >= 1, else ``ValueError``."""
    t = tuple(v)  # type: ignore[arg-type]
    if len(t) != 2 or not all(np.isfinite(float(x)) and float(x) >= 1 and float(x).is_integer() for x in t):
        raise ValueError(f"{name} must be (W, H), two whole numbers >= 1, not {v!r}")
    return int(t[0]), int(t[1])


def _sigmas_param(v: object) -> np.ndarray | None:
    """OKS constants ``(K,)``, finite and > 0, or ``None``; ``ValueError`` otherwise."""
    if v is None:
        return None
    s = np.asarray(v, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"sigmas must be a list of K finite OKS constants > 0; got shape {s.shape}")
    return s


def _json_value(v: object) -> object:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


# ------------------------------------------------------------------------------------------------
class Rescorer:
    """Base class of every rescorer (scikit-learn estimator conventions).

    Subclasses declare ``_params`` (the keyword arguments of ``__init__``, returned by :meth:`get_params`),
    ``_state`` (what :meth:`fit` learns; persisted by :meth:`to_json`), ``needs_fit`` (True for learned
    calibrators) and implement :meth:`transform` (and :meth:`fit` when they learn something).
    """

    method: ClassVar[str] = ""
    _params: ClassVar[tuple[str, ...]] = ()
    _state: ClassVar[tuple[str, ...]] = ()
    needs_fit: ClassVar[bool] = False

    def __init__(self) -> None:
        """A rescorer without parameters (subclasses take their ``_params`` as keywords)."""

    def fit(self, pred: PredLike, gt: GtLike = None, **kw: object) -> Rescorer:
        """Fit on ``pred`` and its ground truth; no-op for rescorers without state."""
        return self

    def transform(self, pred: PredLike, gt: GtLike = None, **kw: object) -> RescoreResult:  # pragma: no cover
        """New keypoint ``(D, K)`` and instance ``(D,)`` scores of ``pred``'s D records."""
        raise NotImplementedError

    def fit_transform(self, pred: PredLike, gt: GtLike = None, **kw: object) -> RescoreResult:
        """``fit(pred, gt)`` then ``transform(pred, gt)``."""
        return self.fit(pred, gt, **kw).transform(pred, gt, **kw)

    # --- parameters (scikit-learn's get_params / set_params) --------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, object]:
        """The constructor parameters, ``{name: value}``; ``get_rescorer(r.method, **r.get_params())``
        builds an unfitted copy. ``deep`` is accepted for scikit-learn compatibility (no nesting here)."""
        return {p: getattr(self, p) for p in self._params}

    def set_params(self, **params: object) -> Rescorer:
        """Set constructor parameters (validated as ``__init__`` validates them); fitted state is kept.

        Raises ``ValueError`` on a name that is not a parameter of this rescorer.
        """
        unknown = sorted(set(params) - set(self._params))
        if unknown:
            raise ValueError(
                f"invalid parameter(s) {', '.join(unknown)} for {type(self).__name__}; "
                f"valid: {', '.join(self._params) or 'none'}"
            )
        fresh = type(self)(**{**self.get_params(), **params})
        for p in self._params:
            setattr(self, p, getattr(fresh, p))
        return self

    # --- fitted state -------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """Every ``_state`` attribute is set (always True for rescorers without state)."""
        return all(getattr(self, s, None) is not None for s in self._state)

    def _check_is_fitted(self) -> None:
        """Raise :class:`NotFittedError` when a learned calibrator has no fitted state."""
        if self.needs_fit and not self.is_fitted:
            raise NotFittedError(
                f"{self.method} calibrator is not fitted (fit it or load one)", None, None, "calibrator"
            )

    # --- persistence --------------------------------------------------------------------------------
    def to_json(self) -> dict[str, object]:
        """Plain-JSON description: ``{"method", "params", "state", "posecal_version"}``."""
        from posecal import __version__

        return {
            "method": self.method,
            "params": {p: _json_value(v) for p, v in self.get_params().items()},
            "state": {s: _json_value(getattr(self, s)) for s in self._state},
            "posecal_version": __version__,
        }

    @staticmethod
    def from_json(obj: dict[str, object], file: str | None = None) -> Rescorer:
        """Inverse of :meth:`to_json`. Raises PosecalInputError on an unknown method or field."""
        if not isinstance(obj, dict) or "method" not in obj:
            raise PosecalInputError("not a posecal calibrator (no 'method')", file, None, "method")
        method = obj["method"]
        if not isinstance(method, str) or method not in _REGISTRY:
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

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` to ``path`` atomically."""
        from posecal._util import write_json_atomic

        write_json_atomic(path, self.to_json())

    @staticmethod
    def load(path: str | os.PathLike) -> Rescorer:
        """Read a calibrator written by :meth:`save`; PosecalInputError on an unreadable or bad file."""
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


# ------------------------------------------------------------------------------------------------
# The registry: method name -> (class, parameters the name fixes). Filled by register_rescorer.
_REGISTRY: dict[str, tuple[type[Rescorer], dict[str, object]]] = {}

R = TypeVar("R", bound=type[Rescorer])


def register_rescorer(method: str, **fixed: object) -> Callable[[R], R]:
    """Class decorator: make ``get_rescorer(method, ...)`` build this class.

    ``fixed`` are constructor parameters the name implies (e.g. ``mode="bbox"`` for ``mmpose-bbox``); they
    override the same names given to :func:`get_rescorer`. Registering a name twice is a ``ValueError``.
    """

    def deco(cls: R) -> R:
        if method in _REGISTRY:
            raise ValueError(f"rescoring method {method!r} is already registered")
        _REGISTRY[method] = (cls, dict(fixed))
        return cls

    return deco


def registered_rescorers() -> dict[str, type[Rescorer]]:
    """``{method name: class}`` in registration order (a copy)."""
    return {m: cls for m, (cls, _) in _REGISTRY.items()}


def rescorer_class(method: str) -> type[Rescorer]:
    """The class :func:`get_rescorer` builds for ``method``; ``ValueError`` if unknown."""
    return _lookup(method)[0]


def _lookup(method: str) -> tuple[type[Rescorer], dict[str, object]]:
    try:
        return _REGISTRY[method]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown rescoring method {method!r}; use one of {', '.join(_REGISTRY)}"
        ) from None


def get_rescorer(method: str, **params: object) -> Rescorer:
    """A rescorer by method name (``posecal.rescore.RESCORERS``) with its parameters.

    ``ValueError`` for an unknown name or parameter value, ``TypeError`` for an unknown parameter name.
    """
    cls, fixed = _lookup(method)
    return cls(**{**params, **fixed})


_STRING_PARAMS = ("area", "model", "aggregate", "mode")


def _check_calibrator_values(params: dict, state: dict, file: str | None) -> None:
    """Values of a calibrator JSON: strings where names belong, finite numbers (never booleans or numeric
    strings) or flat lists of them elsewhere; null only for ``params.sigmas`` and unfitted state (a null
    ``target_sigma`` was a bare ``float()`` TypeError naming no field)."""

    def num(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))

    for where, d in (("params", params), ("state", state)):
        for k, v in d.items():
            null_ok = where == "state" or k == "sigmas"
            ok = ((v is None and null_ok) or num(v)
                  or (isinstance(v, str) and where == "params" and k in _STRING_PARAMS)
                  or (isinstance(v, list) and all(num(x) for x in v)))
            if not ok:
                raise PosecalInputError(f"bad value {str(v)[:40]!r}", file, None, f"{where}.{k}")
    for k in ("heatmap_size", "input_size"):
        v = params.get(k)
        if v is not None and not (isinstance(v, list) and len(v) == 2
                                  and all(x >= 1 and float(x).is_integer() for x in v)):
            raise PosecalInputError("expected [W, H], whole numbers >= 1", file, None, f"params.{k}")
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
        if np.any(y < -1e-9) or np.any(y > 1 + 1e-9) or np.any(np.diff(y) < -1e-9):
            raise PosecalInputError("y_ must be keypoint OKS values in [0, 1], non-decreasing (the isotonic "
                                    "fit)", file, None, "state.y_")
    elif r.method == "loglog":
        if np.asarray(r.coef_).shape != (2,):
            raise PosecalInputError("coef_ must be [a, b]", file, None, "state.coef_")
    elif r.method == "closed-form" and r.mean_area is not None and not r.mean_area > 0:
        raise PosecalInputError("mean_area must be > 0", file, None, "state.mean_area")
