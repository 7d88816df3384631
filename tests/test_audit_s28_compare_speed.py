"""posecal compare's bootstrap re-orders each resample from one sort of the full data (and re-accumulates
AP from the true positives only) instead of sorting every resample: the numbers must be bit-identical to the
straightforward computation it replaced (sort the rebuilt dataset's detections and pairs, accumulate every
detection), for the same seed. The reference below is that computation, kept here verbatim."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from _cocogen import make_coco_set
from posecal.calibration import compare as cmp
from posecal.calibration.metrics import MetricUndefined, ause, pearson
from posecal.metrics.cocoeval import REC_THRS


def _ref_ap_ar(pe: cmp.PerImageEval, images: np.ndarray) -> tuple[float, float]:
    """The former ``resample_ap_ar``: expand the drawn images' rows, sort each category's by score, dense
    accumulate."""
    rows = cmp._expand(pe.det_start, images)
    npig = pe.npig[images].sum(axis=0)
    T = pe.det_tp.shape[0]
    prec = -np.ones((T, REC_THRS.size, pe.cat_ids.size))
    rec = -np.ones((T, pe.cat_ids.size))
    for c in range(pe.cat_ids.size):
        r = rows[pe.det_cat[rows] == c]
        prec[:, :, c], rec[:, c] = cmp._accumulate(pe.det_score[r], pe.det_tp[:, r], pe.det_ig[:, r],
                                                   int(npig[c]))
    p, q = prec[prec > -1], rec[rec > -1]
    return (float(np.mean(p)) if p.size else -1.0), (float(np.mean(q)) if q.size else -1.0)


def _ref_calib(pe: cmp.PerImageEval, images: np.ndarray) -> tuple[float, float]:
    """The former ``_calib``: Pearson and AUSE (each sorting) of the drawn pairs."""
    rows = cmp._expand(pe.inst_start, images)
    c, o = pe.inst_conf[rows], pe.inst_oks[rows]
    out = []
    for fn, y in ((pearson, o), (ause, 1.0 - o)):
        try:
            out.append(float(fn(c, y)) if c.size >= 2 else float("nan"))
        except (MetricUndefined, ValueError):
            out.append(float("nan"))
    return out[0], out[1]


def _ref_samples(gt, a, b, resamples: int, seed: int) -> dict[str, np.ndarray]:
    """The former bootstrap loop of ``compare`` (same draws, same per-resample values)."""
    pa, pb = cmp.per_image_eval(gt, a), cmp.per_image_eval(gt, b)
    I = pa.image_ids.size
    rng = np.random.default_rng(seed)
    out = {m: np.empty(resamples) for m in cmp.METRICS}
    for r in range(resamples):
        draw = rng.integers(0, I, size=I)
        ap_a, ar_a = cmp._defined(_ref_ap_ar(pa, draw))
        ap_b, ar_b = cmp._defined(_ref_ap_ar(pb, draw))
        pr_a, au_a = _ref_calib(pa, draw)
        pr_b, au_b = _ref_calib(pb, draw)
        out["AP"][r], out["AR"][r] = ap_b - ap_a, ar_b - ar_a
        out["pearson"][r], out["ause"][r] = pr_b - pr_a, au_b - au_a
    return out


def _pair_of_files(seed: int) -> tuple[dict, list, list]:
    """Ties everywhere (tied and zero scores, rounded B scores, duplicates), crowd, two categories."""
    gt, res = make_coco_set(seed, n_images=10, two_categories=seed % 3 == 2, p_tie=0.6, p_zero_score=0.2,
                            p_dup=0.3, max_dets=30)
    rng = np.random.default_rng(seed)
    res_b = [dict(r, score=float(np.round(max(r["score"] + rng.normal(0, 0.1), 0.0), 1))) for r in res]
    return gt, res, res_b


@pytest.mark.parametrize("seed", range(12))
def test_bootstrap_bit_identical_to_sorting_each_resample(seed):
    gt, a, b = _pair_of_files(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = cmp.compare(gt, a, b, resamples=40, seed=seed)
        want = _ref_samples(gt, a, b, 40, seed)
    for m in cmp.METRICS:
        assert np.array_equal(got.samples[m], want[m], equal_nan=True), m
    assert np.isfinite(got.samples["AP"]).any()


@pytest.mark.parametrize("seed", range(4))
def test_identity_draw_and_public_helpers_unchanged(seed):
    gt, a, _ = _pair_of_files(seed)
    pe = cmp.per_image_eval(gt, a)
    I = pe.image_ids.size
    ident = np.arange(I)
    assert cmp.resample_ap_ar(pe, ident) == (pe.stats["AP"], pe.stats["AR"])
    rng = np.random.default_rng(seed)
    for _ in range(5):
        draw = rng.integers(0, I, size=I)
        assert cmp.resample_ap_ar(pe, draw) == _ref_ap_ar(pe, draw)
        fast = cmp._calib(pe, cmp._Draw(draw, I))
        np.testing.assert_array_equal(fast, _ref_calib(pe, draw))


@pytest.mark.parametrize("seed", range(20))
def test_sorted_rows_is_the_stable_sort_of_the_rebuilt_rows(seed):
    """Random CSR tables, keys with ties, ±0.0 and NaN, draws with repeats and empty images."""
    rng = np.random.default_rng(seed)
    I = int(rng.integers(1, 9))
    counts = rng.integers(0, 6, size=I)
    start = np.r_[0, np.cumsum(counts)]
    n = int(start[-1])
    pool = np.array([0.0, -0.0, 0.5, 1.0, np.nan, 0.25, 2.0])
    key = pool[rng.integers(0, pool.size, size=n)] if seed % 2 else rng.uniform(size=n)
    row_image = np.repeat(np.arange(I), counts)
    rows = np.arange(n) if seed % 3 else np.flatnonzero(rng.uniform(size=n) < 0.6)  # a subset (one category)
    plan = cmp._sort_plan(rows, key[rows], row_image, I)
    for _ in range(6):
        draw = rng.integers(0, I, size=int(rng.integers(0, 2 * I + 1)))
        full = cmp._expand(start, draw)
        full = full[np.isin(full, rows)]
        want = full[np.argsort(key[full], kind="stable")]
        got = cmp._sorted_rows(plan, cmp._Draw(draw, I))
        np.testing.assert_array_equal(key[got], key[want])
        np.testing.assert_array_equal(got, want)
