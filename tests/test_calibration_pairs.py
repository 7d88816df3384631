"""Pairs from evaluator matches: selection rules, per-keypoint OKS, and the oracle OKS vs pycocotools."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calib_helpers import COCO_MINI, perturb_gt
from posecal.calibration.pairs import best_oks, instance_pairs, keypoint_pairs
from posecal.io.coco import load_gt, load_results
from posecal.keypoints import COCO17


def _tiny():
    kp = [0.0] * 51
    kp[0:3] = [10, 10, 2]
    kp[3:6] = [20, 10, 1]
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "keypoints": kp, "num_keypoints": 2, "area": 400.0,
             "bbox": [5, 5, 20, 10], "iscrowd": 0},
            {"id": 6, "image_id": 2, "category_id": 1, "keypoints": kp, "num_keypoints": 2, "area": 900.0,
             "bbox": [5, 5, 30, 30], "iscrowd": 0},
        ],
    }  # fmt: skip
    dets = []
    for i in range(4):
        k = np.zeros((17, 3))
        k[0] = [13, 14, 0.9]  # 5 px from gt keypoint 0
        k[1] = [20, 10, 0.4]
        dets.append({"image_id": 1, "category_id": 1, "keypoints": k.ravel().tolist(), "score": 0.1 * (i + 1),
                     "visibility": [0.5] * 17})  # fmt: skip
    return load_gt(gt), load_results(dets)


def test_instance_pairs_selection_and_unmatched_zero():
    gt, res = _tiny()
    T = 10
    ev = SimpleNamespace(
        det_evaluated=np.array([True, True, True, False]),
        det_ignored=np.tile(np.array([False, False, True, False]), (T, 1)),
        det_gt=np.tile(np.array([0, -1, -1, -1]), (T, 1)),
        det_oks=np.tile(np.array([0.8, 0.3, 0.0, 0.0]), (T, 1)),  # unmatched must read as 0 whatever is there
    )
    p = instance_pairs(ev, res)
    assert p.det_index.tolist() == [0, 1]
    assert p.gt_index.tolist() == [0, -1]
    np.testing.assert_allclose(p.oks, [0.8, 0.0])
    np.testing.assert_allclose(p.confidence, [0.1, 0.2])

    kp = keypoint_pairs(p, gt, res, COCO17.sigmas, pck_alpha=0.2)
    assert kp.score.shape == (1, 17) and kp.det_index.tolist() == [0]
    # hand value for keypoint 0: d^2 = 25, sigma = COCO17.sigmas[0], area 400
    ref = np.exp(-25 / (2 * (2 * COCO17.sigmas[0]) ** 2 * (400 + np.spacing(1))))
    assert kp.oks[0, 0] == pytest.approx(ref, rel=1e-12)
    assert kp.oks[0, 1] == pytest.approx(1.0)
    assert np.isnan(kp.oks[0, 2:]).all()
    assert kp.gt_v[0, :3].tolist() == [2, 1, 0]
    assert kp.labelled.sum() == 2
    # PCK@0.2 of the box's longer side (20 px) = 4 px: keypoint 0 (5 px) wrong, keypoint 1 right
    assert kp.pck[0, 0] == 0 and kp.pck[0, 1] == 1
    assert kp.visibility is not None and kp.visibility.shape == (1, 17)
    np.testing.assert_allclose(kp.score[0, :2], [0.9, 0.4])


def test_best_oks_matches_pycocotools(shared):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = shared(*COCO_MINI)
    gt_dict = json.loads(path.read_text())
    dets = perturb_gt(gt_dict, seed=3, n_false_pos=15)
    gt = load_gt(gt_dict)
    res = load_results(dets, gt)
    ours = best_oks(gt, res, gt.keypoint_set.sigmas, category_id=1)

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cg = COCO()
        cg.dataset = copy.deepcopy(gt_dict)
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(dets))
        E = COCOeval(cg, cd, "keypoints")
        E.params.maxDets = [100]  # keep every detection of an image in the OKS matrix
        E.evaluate()
    ref = np.zeros(len(dets))
    for (img, cat), M in E.ious.items():
        if len(M) == 0:
            continue
        d = sorted(E._dts[img, cat], key=lambda x: -x["score"])  # same order pycocotools uses (stable)
        g = E._gts[img, cat]
        keep = np.array([not x["iscrowd"] and np.any(np.asarray(x["keypoints"])[2::3] > 0) for x in g])
        if not keep.any():
            continue
        best = np.asarray(M)[:, keep].max(axis=1)
        for x, b in zip(d, best, strict=True):
            ref[x["id"] - 1] = b  # loadRes numbers results 1..N in file order
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert (ours > 0).sum() > len(dets) // 2


@pytest.mark.parametrize("use_area", [True, False])
def test_keypoint_oks_averages_to_the_evaluators_instance_oks(shared, use_area):
    from posecal.calibration.audit import run_audit

    gt_dict = json.loads(shared(*COCO_MINI).read_text())
    gt = load_gt(gt_dict)
    res = load_results(perturb_gt(gt_dict, seed=4), gt)
    a = run_audit(gt, res, n_random=0, evaluate_kwargs={"use_area": use_area})
    kp, inst = a.keypoint, a.instance
    assert len(kp.det_index) > 20
    # the mean of the per-keypoint OKS over labelled keypoints is the instance OKS the evaluator matched with
    matched_oks = inst.oks[inst.gt_index >= 0]
    np.testing.assert_allclose(np.nanmean(kp.oks, axis=1), matched_oks, rtol=1e-12)
    assert a.metrics["random_AP"] is None and a.metrics["random_AP_reason"] == "n_random = 0"


def _greedy_reference(o: np.ndarray) -> np.ndarray:
    """The one-to-one oracle assignment written as a sort of all (detection, gt) pairs."""
    pairs = sorted((-o[d, g], d, g) for d in range(o.shape[0]) for g in range(o.shape[1]))
    out, used_d, used_g = np.zeros(o.shape[0]), set(), set()
    for neg, d, g in pairs:
        if -neg <= 0 or d in used_d or g in used_g:
            continue
        out[d] = -neg
        used_d.add(d)
        used_g.add(g)
    return out


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 6), st.integers(0, 6), st.integers(0, 2**31 - 1), st.booleans())
def test_greedy_one_to_one_matches_the_sorted_pairs_reference(nd, ng, seed, ties):
    from posecal.calibration.pairs import _greedy_one_to_one

    rng = np.random.default_rng(seed)
    o = rng.random((nd, ng))
    if ties:  # repeated values and zeros (no overlap)
        o = np.round(o * 3) / 3
    got = _greedy_one_to_one(o)
    np.testing.assert_array_equal(got, _greedy_reference(o))
    assert (got > 0).sum() <= min(nd, ng)


def test_oracle_scores_each_person_once_on_detections_with_duplicates(shared):
    """Detector-style results (every person detected twice, plus false positives): the oracle confidence
    gives one detection per person its OKS and the duplicates 0, so its AP is at least the model's and at
    least what best-gt OKS (which also ranks duplicates high) gives; with one detection per person the two
    agree."""
    from posecal.calibration.audit import run_audit
    from posecal.calibration.pairs import oracle_oks
    from posecal.metrics.cocoeval import evaluate

    gt_dict = json.loads(shared(*COCO_MINI).read_text())
    gt = load_gt(gt_dict)
    single = perturb_gt(gt_dict, seed=5, n_false_pos=0)
    res1 = load_results(single, gt)
    sig = gt.keypoint_set.sigmas
    np.testing.assert_array_equal(oracle_oks(gt, res1, sig, 1), best_oks(gt, res1, sig, 1))
    dup = perturb_gt(gt_dict, seed=6, n_false_pos=10, max_level=0.3)
    res = load_results(single + dup, gt)
    orc, best = oracle_oks(gt, res, sig, 1), best_oks(gt, res, sig, 1)
    assert (orc <= best).all() and (orc == 0).sum() > (best == 0).sum() + len(single) // 2
    for img in np.unique(res.image_id):  # never more positive detections in an image than its people
        n_people = sum(a["image_id"] == img and a["num_keypoints"] > 0 and not a["iscrowd"]
                       for a in gt_dict["annotations"])
        assert (orc[res.image_id == img] > 0).sum() <= n_people
    ap_best = evaluate(gt, res, scores=best, warn=False).stats["AP"]
    a = run_audit(gt, res, n_random=0)
    assert a.metrics["oracle_AP"] >= max(a.metrics["mAP"], ap_best)
    assert a.metrics["oracle_AP"] > ap_best  # the duplicates no longer outrank true matches


def test_visibility_metrics_say_which_class_is_missing(shared):
    """With every keypoint labelled (as in LSP) nothing separates labelled from unlabelled keypoints: the
    reason says so (not just 'one class'), and the empty v = 0 group carries its reason."""
    from posecal.calibration.audit import run_audit

    d = json.loads(shared(*COCO_MINI).read_text())
    d["annotations"] = [a for a in d["annotations"] if a.get("num_keypoints") == 17 and not a["iscrowd"]]
    assert d["annotations"]
    gt = load_gt(d)
    a = run_audit(gt, load_results(perturb_gt(d, seed=7, n_false_pos=0), gt), n_random=0)
    vis = a.metrics["visibility"]
    assert vis["auroc_keypoint_score"] is None
    assert "every keypoint of the matched detections is labelled" in vis["auroc_keypoint_score_reason"]
    empty = a.metrics["keypoint_score_by_visibility"]["unlabelled (v=0)"]
    assert empty["count"] == 0 and "no unlabelled keypoint" in empty["_reason"]
