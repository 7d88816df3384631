"""Calibration metrics against hand-computed values and brute-force recomputation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from posecal.calibration import metrics as M


# --- correlation ---------------------------------------------------------------------------
def test_pearson_matches_corrcoef():
    rng = np.random.default_rng(0)
    x = rng.random(50)
    y = 0.3 * x + rng.random(50)
    assert M.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)


def test_spearman_hand_value():
    # ranks differ by d = (0, 1, 1, 0): rho = 1 - 6*2/(4*15) = 0.8
    assert M.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


@pytest.mark.parametrize("fn", [M.pearson, M.spearman])
def test_correlation_undefined_cases(fn):
    with pytest.raises(M.MetricUndefined, match="constant confidence"):
        fn([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    with pytest.raises(M.MetricUndefined, match="constant accuracy"):
        fn([0.1, 0.2, 0.3], [0.0, 0.0, 0.0])
    with pytest.raises(M.MetricUndefined, match="no pairs"):
        fn([], [])
    with pytest.raises(M.MetricUndefined, match="fewer than 2"):
        fn([0.3], [0.4])
    with pytest.raises(M.MetricUndefined, match="non-finite"):
        fn([0.3, np.nan], [0.4, 0.5])


# --- sparsification / AUSE ---------------------------------------------------------------------
def _brute_remaining(conf, err):
    """Mean error left after removing n least confident, averaged over all orders of ties."""
    n = len(conf)
    out = np.zeros(n)
    perms = [p for p in itertools.permutations(range(n)) if all(
        conf[p[i]] <= conf[p[i + 1]] for i in range(n - 1))]  # all ascending orders (tie orders)
    for p in perms:
        e = np.asarray(err)[list(p)]
        out += np.array([e[k:].mean() for k in range(n)])
    return out / len(perms)


def test_sparsification_hand_example():
    err = np.array([0.1, 0.5, 0.9])
    rev = M.sparsification(err, err)  # reversed ranking: confident where the error is large
    np.testing.assert_allclose(rev.curve, [0.5, 0.7, 0.9])
    np.testing.assert_allclose(rev.oracle, [0.5, 0.3, 0.1])
    assert rev.ause == pytest.approx((0.0 + 0.4 + 0.8) / 3)
    assert rev.ause == pytest.approx(rev.ause_max)
    perfect = M.sparsification(1 - err, err)
    assert perfect.ause == pytest.approx(0.0, abs=1e-15)


def test_sparsification_matches_brute_force_with_ties():
    rng = np.random.default_rng(1)
    conf = rng.integers(0, 3, 7).astype(float)  # many ties
    err = rng.random(7)
    s = M.sparsification(conf, err)
    np.testing.assert_allclose(s.curve, _brute_remaining(conf, err), rtol=1e-12)
    np.testing.assert_allclose(s.oracle, _brute_remaining(-err, err), rtol=1e-12)


def test_reversed_ranking_is_maximal_and_perfect_is_zero():
    rng = np.random.default_rng(2)
    err = rng.random(6)
    all_ause = [M.ause(np.array(p, float), err) for p in itertools.permutations(range(6))]
    assert M.ause(err, err) == pytest.approx(max(all_ause))
    assert M.ause(-err, err) == pytest.approx(0.0, abs=1e-15)
    assert min(all_ause) == pytest.approx(0.0, abs=1e-15)


def test_constant_confidence_is_flat():
    err = np.array([0.2, 0.4, 0.9, 0.1])
    s = M.sparsification(np.full(4, 0.7), err)
    np.testing.assert_allclose(s.curve, err.mean())
    d = s.to_dict(points=8)
    assert len(d["fraction"]) == 8 and d["curve"][0] == pytest.approx(err.mean())


# --- AURC -------------------------------------------------------------------------------------
def test_aurc_hand_and_ties():
    # coverage 1/3: 0.1, 2/3: 0.3, 1: 0.5 -> mean 0.3
    assert M.aurc([0.9, 0.5, 0.1], [0.1, 0.5, 0.9]) == pytest.approx(0.3)
    # all tied: every order equally likely -> expected selective risk = mean risk at every coverage
    assert M.aurc([1, 1, 1], [0.0, 0.3, 0.9]) == pytest.approx(0.4)
    # brute force over tie orders
    conf = np.array([2.0, 1.0, 1.0, 0.0])
    risk = np.array([0.5, 0.1, 0.7, 0.2])
    vals = []
    for p in [(0, 1, 2, 3), (0, 2, 1, 3)]:
        r = risk[list(p)]
        vals.append(np.mean(np.cumsum(r) / np.arange(1, 5)))
    assert M.aurc(conf, risk) == pytest.approx(np.mean(vals))


# --- ECE / MCE --------------------------------------------------------------------------------
def test_ece_continuous_target_hand_example():
    conf = [0.1, 0.2, 0.7, 0.9]
    oks = [0.0, 0.6, 0.5, 1.0]
    # bins [0, .5) and [.5, 1]: |0.3 - 0.15| = 0.15 and |0.75 - 0.8| = 0.05
    for binning in ("width", "mass"):
        r = M.calibration_error(conf, oks, n_bins=2, binning=binning)
        assert r.ece == pytest.approx(0.5 * 0.15 + 0.5 * 0.05)
        assert r.mce == pytest.approx(0.15)
        assert r.count.tolist() == [2, 2]


def test_ece_is_not_binarised():
    # confidence equal to the (continuous) OKS is perfectly calibrated: a binarised target would not be
    oks = np.linspace(0.05, 0.95, 19)
    assert M.calibration_error(oks, oks, n_bins=1).ece == pytest.approx(0.0, abs=1e-15)


def test_ece_scores_above_one_and_empty_bins():
    r = M.calibration_error([0.0, 2.0], [0.0, 1.0], n_bins=4)
    assert r.edges[-1] == 2.0 and r.count.tolist() == [1, 0, 0, 1]
    assert r.ece == pytest.approx(0.5)  # second sample: |1 - 2| weighted 1/2
    d = r.to_dict()
    assert d["mean_target"][1] is None
    with pytest.raises(M.MetricUndefined):
        M.calibration_error([], [])


def test_ece_equal_mass_ties_share_a_bin():
    r = M.calibration_error([0.5] * 6, [0.2, 0.4, 0.6, 0.8, 1.0, 0.0], n_bins=3, binning="mass")
    assert r.count.sum() == 6 and (r.count > 0).sum() == 1
    assert r.ece == pytest.approx(0.0)


# --- visibility metrics -------------------------------------------------------------------------
def test_auroc_brute_force():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 5, 40) / 4.0
    y = rng.random(40) < 0.4
    pos, neg = s[y], s[~y]
    ref = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert M.auroc(s, y) == pytest.approx(ref)
    with pytest.raises(M.MetricUndefined, match="one class"):
        M.auroc([0.1, 0.2], [1, 1])


def test_average_precision_hand():
    assert M.average_precision_binary([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert M.average_precision_binary([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    with pytest.raises(M.MetricUndefined):
        M.average_precision_binary([0.5, 0.5], [0, 0])


def test_brier_hand():
    assert M.brier([1.0, 0.0, 0.5], [1, 1, 0]) == pytest.approx((0 + 1 + 0.25) / 3)
    with pytest.raises(ValueError):
        M.brier([0.5], [2])
