"""The calibration metrics against reference implementations, on generated data with ties: AUROC, average
precision and Brier against scikit-learn (``roc_auc_score``, ``average_precision_score``,
``brier_score_loss``), Pearson and Spearman against ``scipy.stats``. The hand and brute-force cases are in
test_calibration_metrics.py; these are the third-party checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posecal.calibration.metrics import MetricUndefined, auroc, average_precision_binary, brier, pearson, spearman

sk = pytest.importorskip("sklearn.metrics")
stats = pytest.importorskip("scipy.stats")


@st.composite
def scored_labels(draw, n_min: int = 2, n_max: int = 60):
    """Scores on a coarse grid (many ties) or continuous, labels with both classes."""
    n = draw(st.integers(n_min, n_max))
    coarse = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 5, n) / 4.0 if coarse else rng.random(n)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1  # both classes
    return s, y


@settings(max_examples=200, deadline=None)
@given(scored_labels())
def test_auroc_and_average_precision_equal_sklearn(data):
    s, y = data
    assert auroc(s, y) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert average_precision_binary(s, y) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(scored_labels())
def test_brier_equals_sklearn(data):
    s, y = data
    assert brier(s, y) == pytest.approx(sk.brier_score_loss(y, s), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(st.integers(3, 80), st.integers(0, 2**31 - 1), st.booleans())
def test_pearson_and_spearman_equal_scipy(n, seed, coarse):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, n) / 3.0 if coarse else rng.random(n)
    y = 0.5 * x + rng.random(n)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        with pytest.raises(MetricUndefined):
            pearson(x, y)
        return
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-10)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-10)


def test_one_class_is_undefined_where_sklearn_warns():
    s, y = np.array([0.2, 0.4, 0.9]), np.array([1, 1, 1])
    with pytest.raises(MetricUndefined):
        auroc(s, y)
    with pytest.raises(MetricUndefined):
        average_precision_binary(s, 1 - y)
