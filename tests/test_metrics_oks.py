"""OKS (against pycocotools' own computeOks), per-keypoint OKS, PCK/PCKh and EPE (against recomputation)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _cocogen import make_coco_set
from _cocoref import _quiet
from posecal.io.coco import load_gt, load_results
from posecal.keypoints import COCO17, LSP14
from posecal.metrics.oks import (
    box_size,
    epe,
    head_size,
    keypoint_errors,
    keypoint_oks,
    oks_matrix,
    pck,
    pck_correct,
    torso_size,
)


def _compare_with_pycocotools(seed: int, zero: float, n_images: int = 3) -> int:
    """Compare oks_matrix with pycocotools' computeOks image by image; return the number of pairs compared."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_d, res_l = make_coco_set(seed, n_images=n_images, max_gts=5, max_dets=8, p_zero_kpts=zero)
    with _quiet():
        cg = COCO()
        cg.dataset = copy.deepcopy(gt_d)
        cg.createIndex()
        if not res_l:
            return 0
        cd = cg.loadRes(copy.deepcopy(res_l))
        ev = COCOeval(cg, cd, "keypoints")
        ev.params.imgIds = sorted(cg.getImgIds())
        ev.params.catIds = sorted(cg.getCatIds())
        ev._prepare()
    gt = load_gt(gt_d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = load_results(res_l, gt)
    n = 0
    for img in gt.image_ids.tolist():
        ref = ev.computeOks(img, 1)
        gi = np.flatnonzero((gt.image_id == img) & (gt.category_id == 1))
        di = np.flatnonzero((res.image_id == img) & (res.category_id == 1))
        di = di[np.argsort(-res.score[di], kind="mergesort")][:20]
        if len(ref) == 0:
            assert gi.size == 0 or di.size == 0
            continue
        ours = oks_matrix(res.keypoints[di], gt.keypoints[gi], gt.area[gi], COCO17.sigmas, gt.bbox[gi])
        np.testing.assert_array_equal(ours, ref)  # bit-identical, including the box branch
        n += ours.size
    return n


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), zero=st.sampled_from([0.0, 0.3]))
def test_oks_matrix_bit_identical_to_pycocotools(seed, zero):
    pytest.importorskip("pycocotools")
    _compare_with_pycocotools(seed, zero)


def test_oks_matrix_bigger_set_with_box_branch():
    pytest.importorskip("pycocotools")
    assert _compare_with_pycocotools(99, 0.4, n_images=30) > 100


def test_keypoint_oks_definition():
    rng = np.random.default_rng(0)
    gt = np.concatenate([rng.uniform(0, 100, (4, 17, 2)), rng.choice([0, 1, 2], (4, 17, 1))], axis=2)
    pred = gt[:, :, :2] + rng.normal(0, 3, (4, 17, 2))
    area = rng.uniform(100, 5000, 4)
    k = keypoint_oks(pred, gt, area, COCO17.sigmas)
    d2 = ((pred - gt[:, :, :2]) ** 2).sum(-1)
    expect = np.exp(-d2 / (2 * (2 * COCO17.sigmas) ** 2 * (area[:, None] + np.spacing(1))))
    lab = gt[:, :, 2] > 0
    np.testing.assert_allclose(k[lab], expect[lab], rtol=1e-12)
    assert np.isnan(k[~lab]).all()
    # the instance OKS is the mean of the per-keypoint terms over labelled keypoints
    m = oks_matrix(pred, gt, area, COCO17.sigmas)
    np.testing.assert_allclose(np.diag(m), np.nanmean(k, axis=1), rtol=1e-12)
    # exact prediction -> 1
    assert np.all(keypoint_oks(gt[:, :, :2], gt, area, COCO17.sigmas)[lab] == 1.0)


def test_huge_finite_coordinates_give_zero_terms_quietly():
    """A finite but huge predicted coordinate (1e300) overflows d² to inf: its OKS term is exactly 0 (what
    pycocotools computes, with a RuntimeWarning), the other terms are unchanged, and no numpy warning leaks."""
    rng = np.random.default_rng(1)
    gt = np.concatenate([rng.uniform(0, 100, (2, 17, 2)), np.full((2, 17, 1), 2.0)], axis=2)
    pred = gt[:, :, :2] + rng.normal(0, 3, (2, 17, 2))
    area = np.array([900.0, 2500.0])
    ref_k, ref_m = keypoint_oks(pred, gt, area, COCO17.sigmas), oks_matrix(pred, gt, area, COCO17.sigmas)
    pred[0, 3, 0] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        k = keypoint_oks(pred, gt, area, COCO17.sigmas)
        m = oks_matrix(pred, gt, area, COCO17.sigmas)
    assert k[0, 3] == 0.0
    keep = np.ones_like(k, bool)
    keep[0, 3] = False
    np.testing.assert_array_equal(k[keep], ref_k[keep])
    np.testing.assert_array_equal(m[1], ref_m[1])  # detection 1 untouched
    assert m[0, 0] < ref_m[0, 0] and np.isfinite(m).all()


def test_pck_epe_recomputed():
    rng = np.random.default_rng(1)
    N, K = 6, 14
    gt = rng.uniform(0, 200, (N, K, 2))
    pred = gt + rng.normal(0, 8, (N, K, 2))
    vis = rng.uniform(size=(N, K)) > 0.2
    hb = np.stack([gt[:, 13, 0] - 10, gt[:, 13, 1] - 12, gt[:, 13, 0] + 15, gt[:, 13, 1] + 9], axis=1)
    hs = head_size(hb)
    np.testing.assert_allclose(hs, 0.6 * np.sqrt(25**2 + 21**2))
    ok = pck_correct(pred, gt, hs, 0.5, vis)
    for i in range(N):
        for j in range(K):
            if not vis[i, j]:
                assert np.isnan(ok[i, j])
            else:
                d = np.sqrt(((pred[i, j] - gt[i, j]) ** 2).sum())
                assert ok[i, j] == float(d <= 0.5 * hs[i])
    assert pck(pred, gt, hs, 0.5, vis) == pytest.approx(np.nanmean(ok))
    per_k = pck(pred, gt, hs, 0.5, vis, per_keypoint=True)
    np.testing.assert_allclose(per_k, np.nanmean(ok, axis=0))
    # torso and box normalisers
    ts = torso_size(gt, LSP14)
    a, b = LSP14.index("left_shoulder"), LSP14.index("right_hip")
    np.testing.assert_allclose(ts, np.linalg.norm(gt[:, a] - gt[:, b], axis=1))
    np.testing.assert_array_equal(box_size(np.array([[0, 0, 3, 7], [1, 1, 9, 2]])), [7, 9])
    # EPE: a (3, 4) shift is 5 pixels everywhere
    assert epe(gt + np.array([3.0, 4.0]), gt) == pytest.approx(5.0)
    e = keypoint_errors(pred, gt)
    assert epe(pred, gt, vis) == pytest.approx(e[vis].mean())
    # unlabelled keypoints (v = 0 in a (N, K, 3) gt) are not scored
    gt3 = np.concatenate([gt, vis[..., None].astype(float)], axis=2)
    assert epe(pred, gt3) == pytest.approx(e[vis].mean())
