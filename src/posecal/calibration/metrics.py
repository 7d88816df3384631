"""Calibration metrics for pose confidence: plain numpy/scipy functions over paired arrays.

Every function takes a confidence array and an accuracy (or error) array of the same shape ``(N,)``
(flatten keypoint-level pairs first) and returns plain floats / numpy arrays.

Undefined values are never returned as NaN: a function whose value does not exist for its input
(e.g. Pearson correlation of a constant confidence) raises :class:`MetricUndefined` carrying a short
reason, which :mod:`posecal.calibration.audit` turns into ``null`` plus a ``*_reason`` string in JSON.

Ties in confidence are never broken by input order: the ranking metrics (sparsification, AUSE, AURC)
use the *expected* value over a uniformly random order inside each tie group, so a constant confidence
behaves exactly like a random ranking and the results do not depend on the order of the records.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "MetricUndefined",
    "Reliability",
    "Sparsification",
    "ThresholdChoice",
    "aurc",
    "ause",
    "average_precision_binary",
    "auroc",
    "brier",
    "calibration_error",
    "finite_mean",
    "finite_median",
    "pearson",
    "sparsification",
    "spearman",
    "threshold_at_precision",
]


class MetricUndefined(ValueError):
    """The metric has no value for this input; ``reason`` is a short human-readable string."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def _pair(x: np.ndarray, y: np.ndarray, names: tuple[str, str] = ("confidence", "accuracy")):
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} has {x.size} values but {names[1]} has {y.size}")
    if x.size == 0:
        raise MetricUndefined("no pairs")
    if not np.all(np.isfinite(x)):
        raise MetricUndefined(f"non-finite {names[0]}")
    if not np.all(np.isfinite(y)):
        raise MetricUndefined(f"non-finite {names[1]}")
    return x, y


# ----------------------------------------------------------------------------------------------
# correlation (paper Table 5; Li et al. 2021a, Gu et al. 2021a, Bramlage et al. 2023)
# ----------------------------------------------------------------------------------------------
def _check_corr(x: np.ndarray, y: np.ndarray) -> None:
    if x.size < 2:
        raise MetricUndefined("fewer than 2 pairs")
    if x.min() == x.max():  # (not np.ptp: it overflows for scores near ±1e308)
        raise MetricUndefined("constant confidence")
    if y.min() == y.max():
        raise MetricUndefined("constant accuracy")


def _scale(v: np.ndarray) -> float:
    """A power of two that brings ``max |v|`` into [0.5, 1) when it is 1 or more; 1.0 otherwise (scaling tiny
    values up is never needed, and 2**1073 would overflow)."""
    _, e = np.frexp(np.max(np.abs(v)))
    return float(np.ldexp(1.0, -int(e))) if e > 0 else 1.0


def finite_mean(values: np.ndarray) -> float:
    """Mean of finite ``values (N,)`` (N > 0) that does not overflow: scores near ±1.8e308 are legal input, and
    their plain sum overflows to inf (a null in JSON and numpy's "overflow encountered" on stderr). Computed
    on the values scaled by a power of two (exact but for subnormals) and scaled back; the mean of finite
    values is finite."""
    v = np.asarray(values, dtype=np.float64).ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        m = float(v.mean())
    if np.isfinite(m) or not np.isfinite(v).all():
        return m
    s = _scale(v)
    return float((v * s).mean()) / s


def finite_median(values: np.ndarray) -> float:
    """Median of finite ``values (N,)`` (N > 0); the mean of the two middle values does not overflow."""
    v = np.asarray(values, dtype=np.float64).ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        m = float(np.median(v))
    if np.isfinite(m) or not np.isfinite(v).all():
        return m
    s = _scale(v)
    return float(np.median(v * s)) / s


def _unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled by a power of two into (-1, 1) (exact but for subnormals) and shifted to start at 0."""
    _, e = np.frexp(np.max(np.abs(v)))
    v = np.ldexp(v, -int(e))
    return v - v.min()


def pearson(confidence: np.ndarray, accuracy: np.ndarray) -> float:
    """Pearson's r between confidence ``(N,)`` and accuracy ``(N,)`` (e.g. OKS), paper Table 5.

    Source: Pearson (1895); computed by ``scipy.stats.pearsonr``.
    Raises :class:`MetricUndefined` for fewer than 2 pairs or a constant input (r is 0/0 there).
    """
    from scipy import stats

    x, y = _pair(confidence, accuracy)
    _check_corr(x, y)
    # r is invariant to shift and scale: scaled by a power of two into (-1, 1) (exact) and shifted to start at 0,
    # values a few ulps apart (0.5, 0.5 + 1e-16) are no longer "nearly constant" against their mean, so scipy
    # neither warns (NearConstantInputWarning on stderr) nor loses the digits (measured: 1e-4 relative error
    # before, exact after), and scores near ±1e308 no longer overflow its norms (it returned r = 0 with
    # RuntimeWarnings).
    x, y = (_unit(v) for v in (x, y))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="An input array is nearly constant")
        return float(stats.pearsonr(x, y).statistic)


def spearman(confidence: np.ndarray, accuracy: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's r of average ranks) between confidence and accuracy ``(N,)``.

    Source: Spearman (1904); computed by ``scipy.stats.spearmanr`` (ties get average ranks).
    Raises :class:`MetricUndefined` for fewer than 2 pairs or a constant input.
    """
    from scipy import stats

    x, y = _pair(confidence, accuracy)
    _check_corr(x, y)
    return float(stats.spearmanr(x, y).statistic)


# ----------------------------------------------------------------------------------------------
# sparsification / AUSE (Ilg et al. 2018) and AURC (Geifman et al. 2019)
# ----------------------------------------------------------------------------------------------
def _tie_mean(sorted_key: np.ndarray, values_in_key_order: np.ndarray) -> np.ndarray:
    """Replace each value by the mean of its tie group (groups of equal ``sorted_key``)."""
    if sorted_key.size == 0:
        return values_in_key_order
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    sums = np.add.reduceat(values_in_key_order, starts)
    counts = np.diff(np.r_[starts, sorted_key.size])
    return np.repeat(sums / counts, counts)


def _remaining_mean(key: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Mean error of the samples left after removing the n samples of lowest ``key``, n = 0..N-1.

    Ties in ``key`` count as a random order (expected value over permutations inside a tie group).
    Returns shape (N,).
    """
    order = np.argsort(key, kind="stable")
    return _remaining_mean_sorted(key[order], error[order])


def _remaining_mean_sorted(sorted_key: np.ndarray, error_in_key_order: np.ndarray) -> np.ndarray:
    """:func:`_remaining_mean` of inputs already in stable ``key`` order (``posecal compare``'s bootstrap
    orders each resample from one sort of the full data, :mod:`posecal.calibration.compare`)."""
    e = _tie_mean(sorted_key, error_in_key_order)
    suffix = np.cumsum(e[::-1])[::-1]  # suffix[n] = sum of e[n:]
    n_left = np.arange(sorted_key.size, 0, -1)
    return suffix / n_left


@dataclass(frozen=True)
class Sparsification:
    """Sparsification curves over removal fractions ``fraction (N,) = n/N``, n = 0..N-1.

    ``curve``: mean error of what is left after removing the ``n`` least confident samples;
    ``oracle``: the same, removing the ``n`` largest errors first (the best possible ranking);
    ``worst``: removing the ``n`` smallest errors first (the reversed oracle, the worst ranking).
    ``ause = mean(curve - oracle)``; ``ause_max = mean(worst - oracle)``.
    """

    fraction: np.ndarray
    curve: np.ndarray
    oracle: np.ndarray
    worst: np.ndarray
    ause: float
    ause_max: float

    def to_dict(self, points: int = 101) -> dict:
        """Curves resampled at ``points`` fractions in [0, 1) (for plots / JSON)."""
        f = np.linspace(0.0, 1.0, points, endpoint=False)
        idx = np.minimum((f * self.fraction.size).astype(np.int64), self.fraction.size - 1)
        return {
            "fraction": f.tolist(),
            "curve": self.curve[idx].tolist(),
            "oracle": self.oracle[idx].tolist(),
            "worst": self.worst[idx].tolist(),
        }


def sparsification(confidence: np.ndarray, error: np.ndarray) -> Sparsification:
    """Sparsification and oracle curves and the Area Under the Sparsification Error (AUSE).

    Source: Ilg et al., "Uncertainty Estimates and Multi-Hypotheses Networks for Optical Flow",
    ECCV 2018 (Sec. 5.1), used in the paper's Tables 4 and 5. Inputs ``(N,)``: ``confidence`` (higher =
    more certain) and ``error`` (e.g. ``1 - OKS`` or ``1 - PCK@alpha``, both in [0, 1]).

    Normalisation used here: the curves are **not** divided by the full-set mean error (Ilg et al.
    normalise the plots for display; we keep the error's own units, so AUSE is in units of ``error``
    and lies in [0, ausemax] with ausemax <= max(error)). The curve is exact at every removal count:
    fraction n/N for n = 0..N-1, and AUSE is the left Riemann sum ``mean_n(curve[n] - oracle[n])``
    over [0, 1) — no resampling grid. (The paper does not state its scale; its Table 5 values, e.g.
    2.72, look like this quantity x100, which we have not verified.)
    Ties in confidence are averaged over random orders (see module docstring), so a constant
    confidence gives a flat curve at the mean error.
    """
    c, e = _pair(confidence, error, ("confidence", "error"))
    n = c.size
    curve = _remaining_mean(c, e)
    oracle = _remaining_mean(-e, e)
    worst = _remaining_mean(e, e)
    return Sparsification(
        fraction=np.arange(n) / n,
        curve=curve,
        oracle=oracle,
        worst=worst,
        ause=float(np.mean(curve - oracle)),
        ause_max=float(np.mean(worst - oracle)),
    )


def ause(confidence: np.ndarray, error: np.ndarray) -> float:
    """AUSE of :func:`sparsification` (Ilg et al. 2018); inputs ``(N,)``, result in units of ``error``."""
    return sparsification(confidence, error).ause


def aurc(confidence: np.ndarray, risk: np.ndarray) -> float:
    """Area Under the Risk–Coverage curve.

    Source: Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers",
    ICLR 2019. Inputs ``(N,)``: ``confidence`` and ``risk`` (here ``1 - OKS``). Accepting the ``k`` most
    confident samples (coverage k/N, k = 1..N), the selective risk is their mean risk; AURC is the mean
    of that risk over k (ties in confidence averaged over random orders). Lower is better.
    """
    c, r = _pair(confidence, risk, ("confidence", "risk"))
    order = np.argsort(-c, kind="stable")
    rr = _tie_mean(-c[order], r[order])
    sel_risk = np.cumsum(rr) / np.arange(1, c.size + 1)
    return float(np.mean(sel_risk))


@dataclass(frozen=True)
class ThresholdChoice:
    """One confidence threshold chosen by :func:`threshold_at_precision`: keep the pairs with confidence
    ``>= threshold``; ``kept`` is their share of all pairs, ``precision`` the share of correct ones among them
    (both fractions), ``n_kept`` / ``n`` the counts."""

    target: float
    threshold: float
    kept: float
    precision: float
    n_kept: int
    n: int

    def to_dict(self) -> dict:
        return {"target": self.target, "threshold": self.threshold, "kept": self.kept,
                "precision": self.precision, "n_kept": self.n_kept, "n": self.n}


def threshold_at_precision(confidence: np.ndarray, correct: np.ndarray, target: float) -> ThresholdChoice:
    """The confidence threshold that keeps the most pairs while at least ``target`` of the kept are correct.

    Selective prediction at a required precision (risk–coverage, Geifman & El-Yaniv, NeurIPS 2017, without
    their confidence bound: this is the empirical choice on the given pairs). ``confidence (N,)``,
    ``correct (N,)`` booleans (e.g. keypoint OKS >= 0.5). A threshold keeps whole tie groups (``c >=
    threshold``), so the result never depends on the order of the pairs; among thresholds that reach the
    target, the one keeping the most pairs (the lowest) wins. :class:`MetricUndefined` when no threshold
    reaches ``target`` (not even the most confident tie group) or there are no pairs.

    >>> r = threshold_at_precision(np.array([.9, .8, .7, .6, .5]), np.array([1, 1, 0, 1, 0], bool), 0.75)
    >>> r.threshold, r.kept, r.precision
    (0.6, 0.8, 0.75)
    """
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target}")
    c, ok = _pair(confidence, correct, ("confidence", "correct"))
    if not np.isin(ok, (0.0, 1.0)).all():
        raise ValueError("correct must hold booleans (0 / 1)")
    o = np.argsort(-c, kind="stable")
    cs, oks = c[o], ok[o]
    last = np.r_[np.flatnonzero(cs[1:] != cs[:-1]), cs.size - 1]  # the end of each tie group
    prec = np.cumsum(oks)[last] / (last + 1)
    good = np.flatnonzero(prec >= float(target) - 1e-12)
    if not good.size:
        raise MetricUndefined(f"no threshold keeps >= {float(target):g} correct")
    i = last[good[-1]]
    return ThresholdChoice(target=float(target), threshold=float(cs[i]), kept=float((i + 1) / c.size),
                           precision=float(prec[good[-1]]), n_kept=int(i + 1), n=int(c.size))


# ----------------------------------------------------------------------------------------------
# calibration error against a continuous target (Naeini et al. 2015; Guo et al. 2017)
# ----------------------------------------------------------------------------------------------
def _nullable(values: np.ndarray, ok: np.ndarray) -> list[float | None]:
    return [float(v) if k else None for v, k in zip(values, ok, strict=True)]


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram data over B bins: ``edges (B+1,)``, ``count (B,)``, ``mean_confidence (B,)``,
    ``mean_target (B,)`` (NaN for empty bins — use ``count``), and the resulting ``ece``, ``mce``."""

    binning: str
    edges: np.ndarray
    count: np.ndarray
    mean_confidence: np.ndarray
    mean_target: np.ndarray
    ece: float
    mce: float

    def to_dict(self) -> dict:
        ok = self.count > 0
        return {
            "binning": self.binning,
            "edges": self.edges.tolist(),
            "count": self.count.tolist(),
            "mean_confidence": _nullable(self.mean_confidence, ok),
            "mean_target": _nullable(self.mean_target, ok),
        }


def calibration_error(
    confidence: np.ndarray,
    target: np.ndarray,
    n_bins: int = 15,
    binning: Literal["width", "mass"] = "width",
) -> Reliability:
    """Expected and maximum calibration error of ``confidence (N,)`` against a **continuous** target.

    Source: Naeini, Cooper & Hauskrecht, AAAI 2015 (ECE/MCE); Guo et al., ICML 2017 (reliability
    diagrams). The usual definitions compare the mean confidence of a bin with the *fraction of
    correct* samples; here the target is continuous (the OKS in [0, 1]) and is **not** binarised:
    ``ECE = sum_b (n_b / N) |mean(target_b) - mean(confidence_b)|``, ``MCE = max_b |...|`` over
    non-empty bins.

    ``binning="width"``: ``n_bins`` equal-width bins over ``[min(0, min c), max(1, max c)]`` (scores
    above 1 are legal and get their own range, never clipped); ``binning="mass"``: edges at the
    confidence quantiles so bins hold about N / n_bins samples each (equal confidences always share a
    bin, so a bin can hold more; duplicate edges are merged). A value equal to an inner edge goes to
    the bin on its right; the last bin is closed.
    """
    c, t = _pair(confidence, target, ("confidence", "target"))
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if binning == "width":
        lo, hi = min(0.0, float(c.min())), max(1.0, float(c.max()))
        if np.isfinite(hi - lo):
            edges = np.linspace(lo, hi, n_bins + 1)
        else:  # scores near ±1.8e308: hi − lo overflows; this form stays finite and increasing (lo ≤ 0 < hi)
            f = np.linspace(0.0, 1.0, n_bins + 1)
            edges = lo * (1.0 - f) + hi * f
    elif binning == "mass":  # on scaled scores: interpolating between ±1.8e308 overflows
        sc = _scale(c)
        edges = np.unique(np.quantile(c * sc, np.linspace(0.0, 1.0, n_bins + 1)) / sc)
        if edges.size == 1:
            edges = np.array([edges[0], edges[0]])
    else:
        raise ValueError(f"binning must be 'width' or 'mass', not {binning!r}")
    nb = edges.size - 1
    idx = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, nb - 1)
    count = np.bincount(idx, minlength=nb)
    sc = _scale(c)  # sums of scores near ±1.8e308 overflow: mean of the scaled scores, scaled back
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins: NaN (see ``count``)
        mc = np.bincount(idx, weights=c * sc, minlength=nb) / count / sc
        mt = np.bincount(idx, weights=t, minlength=nb) / count
    ok = count > 0
    gap = np.abs(mt[ok] - mc[ok])
    return Reliability(
        binning=binning,
        edges=edges,
        count=count,
        mean_confidence=mc,
        mean_target=mt,
        ece=float(np.sum(count[ok] / c.size * gap)),
        mce=float(gap.max()),
    )


# ----------------------------------------------------------------------------------------------
# visibility as binary classification (paper Sec. 5, Fig. 4b)
# ----------------------------------------------------------------------------------------------
def _binary(score: np.ndarray, label: np.ndarray):
    s, y = _pair(score, np.asarray(label, dtype=np.float64), ("score", "label"))
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return s, y.astype(bool)


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve of ``score (N,)`` for binary ``label (N,)`` (1 = positive).

    Source: Hanley & McNeil, Radiology 1982: AUROC equals the Mann–Whitney U statistic / (n_pos·n_neg),
    i.e. P(score_pos > score_neg) + ½ P(tie). Computed from average ranks (``scipy.stats.rankdata``).
    Raises :class:`MetricUndefined` when only one class is present.
    """
    from scipy import stats

    s, y = _binary(score, label)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise MetricUndefined("only one class in the labels")
    ranks = stats.rankdata(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision_binary(score: np.ndarray, label: np.ndarray) -> float:
    """Average precision of ``score (N,)`` for binary ``label (N,)``: ``sum_n (R_n - R_{n-1}) P_n`` over
    the distinct score thresholds in decreasing order (no interpolation; the definition of
    scikit-learn's ``average_precision_score``; Zhu 2004). Raises :class:`MetricUndefined` without positives.
    """
    s, y = _binary(score, label)
    if not y.any():
        raise MetricUndefined("no positive labels")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(probability: np.ndarray, label: np.ndarray) -> float:
    """Brier score ``mean((p - y)^2)`` of ``probability (N,)`` for binary ``label (N,)`` (Brier 1950)."""
    p, y = _binary(probability, label)
    return float(np.mean((p - y) ** 2))
