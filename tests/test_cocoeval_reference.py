"""posecal.metrics.cocoeval against pycocotools / xtcocotools: all 10 stats and the precision, recall and
scores arrays must be identical (zero mismatches), and the per-detection matches must equal the references'
``evalImgs``."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _cocogen import make_coco_set, perturb_gt
from _cocoref import run_pycocotools, run_xtcocotools
from posecal.io.coco import load_gt, load_results
from posecal.keypoints import COCO17, COCO_WHOLEBODY133, CROWDPOSE14
from posecal.metrics.cocoeval import STAT_NAMES, evaluate, evaluate_wholebody

pytest.importorskip("pycocotools")


def assert_same(ours, ref, *, label=""):
    """Bit-identical stats and arrays (NaN-free: pycocotools writes -1 where undefined)."""
    np.testing.assert_array_equal(ours.stats_array(), ref["stats"], err_msg=f"{label} stats")
    np.testing.assert_array_equal(ours.precision, ref["precision"], err_msg=f"{label} precision")
    np.testing.assert_array_equal(ours.recall, ref["recall"], err_msg=f"{label} recall")
    np.testing.assert_array_equal(ours.scores, ref["scores"], err_msg=f"{label} scores")


def assert_same_matches(ours, ref, gt, res, *, zero_sentinel: bool):
    """Per-detection matches (area 'all') equal the reference evalImgs (dtIds are 1 + results index)."""
    n_checked = 0
    for e in ref["evalImgs"]:
        if e is None or e["aRng"] != [0, 1e10]:
            continue
        if not e["dtIds"]:
            continue
        rows = np.asarray(e["dtIds"], dtype=np.int64) - 1
        ref_m = np.asarray(e["dtMatches"])
        g = ours.det_gt[:, rows]
        ids = np.r_[gt.ann_id, 0 if zero_sentinel else -1]  # row -1 -> the sentinel
        our_m = ids[g]
        np.testing.assert_array_equal(our_m, ref_m)
        np.testing.assert_array_equal(ours.det_ignored[:, rows], np.asarray(e["dtIgnore"], dtype=bool))
        assert ours.det_evaluated[rows].all()
        n_checked += rows.size
    assert n_checked == int(ours.det_evaluated.sum())
    # det_oks is the OKS with the matched gt; det_tp implies a match
    assert np.all(ours.det_oks[ours.det_gt < 0] == 0)
    assert np.all(ours.det_gt[ours.det_tp] >= 0)


knobs = st.fixed_dictionaries({
    "n_images": st.integers(1, 7),
    "max_gts": st.integers(0, 7),
    "max_dets": st.integers(0, 26),
    "p_crowd": st.sampled_from([0.0, 0.1, 0.3]),
    "p_zero_kpts": st.sampled_from([0.0, 0.15, 0.4]),
    "p_tie": st.sampled_from([0.0, 0.5, 1.0]),
    "gt_id_zero": st.booleans(),
    "result_bbox": st.booleans(),
    "two_categories": st.booleans(),
    "nk_mismatch": st.sampled_from([0.0, 0.1]),
    "p_dup": st.sampled_from([0.0, 0.2]),
})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), kw=knobs)
def test_random_sets_match_pycocotools(seed, kw):
    gt_d, res_l = make_coco_set(seed, **kw)
    ref = run_pycocotools(gt_d, res_l)
    gt = load_gt(gt_d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = load_results(res_l, gt)
        ours = evaluate(gt, res)
    assert_same(ours, ref)
    assert_same_matches(ours, ref, gt, res, zero_sentinel=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), kw=knobs, use_area=st.booleans(), custom_sigmas=st.booleans())
def test_random_sets_match_xtcocotools(seed, kw, use_area, custom_sigmas):
    pytest.importorskip("xtcocotools")
    gt_d, res_l = make_coco_set(seed, p_zero_score=0.2, with_area=use_area or seed % 2 == 0, **kw)
    sig = np.random.default_rng(seed).uniform(0.02, 0.12, 17) if custom_sigmas else None
    ref = run_xtcocotools(gt_d, res_l, sigmas=sig, use_area=use_area)
    gt = load_gt(gt_d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = load_results(res_l, gt)
    ours = evaluate(gt, res, flavor="xtcocotools", use_area=use_area, sigmas=sig)
    assert_same(ours, ref)
    assert_same_matches(ours, ref, gt, res, zero_sentinel=False)


def test_many_detections_ties_and_bounds_larger_set():
    """One bigger seeded set (hundreds of images) through both references."""
    gt_d, res_l = make_coco_set(12345, n_images=120, max_gts=8, max_dets=30, p_crowd=0.1, p_tie=0.6,
                                result_bbox=False)
    gt = load_gt(gt_d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = load_results(res_l, gt)
    assert_same(evaluate(gt, res), run_pycocotools(gt_d, res_l), label="pycocotools")
    assert_same(evaluate(gt, res, flavor="xtcocotools"), run_xtcocotools(gt_d, res_l), label="xtcocotools")


# ---- real fixtures (../shared/data/mmpose-fixtures), predictions = perturbed gts -------------------------
def _fixture(shared, *parts):
    return json.loads(shared("data", "mmpose-fixtures", *parts).read_text())


@pytest.mark.parametrize("name", [("coco", "test_coco.json"), ("ochuman", "test_ochuman.json")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixture_coco_like(shared, name, seed):
    gt_d = _fixture(shared, *name)
    res_l = perturb_gt(gt_d, seed)
    gt = load_gt(gt_d)
    res = load_results(res_l, gt)
    assert gt.keypoint_set is not None and gt.keypoint_set.name == "coco17"
    ours = evaluate(gt, res)
    ref = run_pycocotools(gt_d, res_l)
    assert_same(ours, ref, label="pycocotools")
    assert_same_matches(ours, ref, gt, res, zero_sentinel=True)
    for use_area in (True, False):
        assert_same(evaluate(gt, res, flavor="xtcocotools", use_area=use_area),
                    run_xtcocotools(gt_d, res_l, use_area=use_area), label=f"xtcocotools use_area={use_area}")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixture_crowdpose_no_area(shared, seed):
    pytest.importorskip("xtcocotools")
    gt_d = _fixture(shared, "crowdpose", "test_crowdpose.json")
    res_l = perturb_gt(gt_d, seed, copies=4)
    gt = load_gt(gt_d)
    assert gt.keypoint_set is CROWDPOSE14 and not gt.has_area
    res = load_results(res_l, gt)
    ours = evaluate(gt, res, flavor="xtcocotools", use_area=False)
    assert_same(ours, run_xtcocotools(gt_d, res_l, sigmas=CROWDPOSE14.sigmas, use_area=False))


@pytest.mark.parametrize("seed", [0, 1])
def test_fixture_wholebody_parts(shared, seed):
    pytest.importorskip("xtcocotools")
    gt_d = _fixture(shared, "coco", "test_coco_wholebody.json")
    res_l = perturb_gt(gt_d, seed, parts=True)
    gt = load_gt(gt_d)
    assert gt.keypoint_set is COCO_WHOLEBODY133 and gt.num_joints == 133
    res = load_results(res_l, gt)
    assert set(res.part_scores) == {"foot", "face", "lefthand", "righthand", "wholebody"}
    # the body as pycocotools sees the file (gt 'keypoints', its COCO sigmas, num_keypoints field)
    assert_same(evaluate(gt, res, keypoints="body", sigmas=COCO17.sigmas), run_pycocotools(gt_d, res_l),
                label="body/pycocotools")
    parts = evaluate_wholebody(gt, res)
    for part, r in parts.items():
        idx = list(COCO_WHOLEBODY133.parts[part])
        ref = run_xtcocotools(gt_d, res_l, sigmas=COCO_WHOLEBODY133.sigmas[idx], iou_type=f"keypoints_{part}")
        assert_same(r, ref, label=part)
    # part scores change the ranking: with the instance score the foot AP is the xtcocotools one without
    # foot_score fields
    plain = [{k: v for k, v in r.items() if not k.endswith("_score")} for r in res_l]
    whole = evaluate_wholebody(gt, res, part_scores=False, parts=("foot",))["foot"]
    ref = run_xtcocotools(gt_d, plain, sigmas=COCO_WHOLEBODY133.part_sigmas("foot"),
                          iou_type="keypoints_foot")
    assert_same(whole, ref, label="foot with instance score")


def test_stats_dict_names_and_minus_one():
    """No gt at all: every stat is -1 as in pycocotools."""
    gt_d, res_l = make_coco_set(7, n_images=3, max_gts=0, max_dets=3)
    ours = evaluate(load_gt(gt_d), load_results(res_l))
    ref = run_pycocotools(gt_d, res_l)
    assert list(ours.stats) == list(STAT_NAMES)
    assert_same(ours, ref)
    assert all(v == -1 for v in ours.stats.values())


def test_results_of_other_categories_are_dropped_like_pycocotools():
    """Loaded without a gt (no category check), results of categories the gt lacks are left out."""
    gt_d, res_l = make_coco_set(31, n_images=8, max_gts=4, max_dets=8)
    extra = [dict(r, category_id=99, score=1.0) for r in res_l[:5]]
    mixed = res_l[:3] + extra + res_l[3:]
    gt = load_gt(gt_d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = load_results(mixed)  # no gt: no category validation
        ours = evaluate(gt, res)
    assert_same(ours, run_pycocotools(gt_d, mixed))
    assert not ours.det_evaluated[3:8].any()
