"""Audit s29: the keypoint pairs of ``posecal evaluate --report``'s keypoint thresholds (and ``compare``'s).

* A gt keypoint whose flag v is a fraction in (0, 1) (COCO-WholeBody's hand/face labels in MMPose's fixture carry
  such values) counts in the OKS (the evaluators test v > 0); the keypoint pairs truncated it to v = 0 and left
  it out of every keypoint metric.
* A detection is some person's only within its own category: a result whose category_id is not in the gt (not
  evaluated, as in pycocotools) or a detection of another gt category must not take a person of this one.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from posecal.calibration.audit import run_audit
from posecal.calibration.compare import compare
from posecal.calibration.pairs import best_match, keypoint_pairs, person_keypoint_pairs
from posecal.io.coco import load_gt, load_results

pytestmark = pytest.mark.filterwarnings("ignore::posecal.errors.PosecalWarning")

K = 17
SIG = np.full(K, 0.05)


def _person(x0: float, v: float = 2.0) -> list[float]:
    kp = []
    for k in range(K):
        kp += [x0 + 3.0 * k, 50.0 + 2.0 * k, v]
    return kp


def _gt(anns: list[tuple[float, int, float]], cats: tuple[int, ...] = (1,)) -> dict:
    """One image; ``anns``: (x0, category_id, v) per person."""
    return {"images": [{"id": 1, "width": 640, "height": 480}],
            "categories": [{"id": c, "name": f"c{c}", "keypoints": [f"k{k}" for k in range(K)], "skeleton": []}
                           for c in cats],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": c, "iscrowd": 0, "area": 4000.0,
                             "bbox": [x0, 50.0, 60.0, 40.0], "num_keypoints": K, "keypoints": _person(x0, v)}
                            for i, (x0, c, v) in enumerate(anns)]}


def _det(x0: float, cat: int = 1, score: float = 0.9) -> dict:
    kp = _person(x0)
    for k in range(K):
        kp[3 * k + 2] = 0.1 + 0.05 * k
    return {"image_id": 1, "category_id": cat, "keypoints": kp, "score": score}


def test_fractional_gt_flag_counts_as_labelled_as_in_the_oks():
    gt = load_gt(_gt([(100.0, 1, 0.5)]))
    res = load_results([_det(100.0)], gt)
    kp = person_keypoint_pairs(gt, res, SIG)
    assert kp.labelled.sum() == K  # the evaluator counts all 17 (v = 0.5 > 0); truncation to int gave 0
    assert np.isfinite(kp.oks[kp.labelled]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = run_audit(gt, res, sigmas=SIG, n_random=0).metrics
    assert m["keypoint_thresholds"]["n_keypoints"] == K
    assert m["n_keypoint_pairs"] == K


def test_keypoint_pairs_flag_values_keep_one_and_two():
    gt = load_gt(_gt([(100.0, 1, 1.0), (300.0, 1, 2.0)]))
    res = load_results([_det(100.0), _det(300.0)], gt)
    o, g = best_match(gt, res, SIG, one_to_one=True)
    from posecal.calibration.pairs import InstancePairs
    kp = keypoint_pairs(InstancePairs(np.arange(2), g, np.ones(2), o), gt, res, SIG)
    assert sorted(np.unique(kp.gt_v).tolist()) == [1, 2]


def test_result_of_a_category_not_in_the_gt_takes_no_person():
    gt = load_gt(_gt([(100.0, 1, 2.0), (300.0, 1, 2.0)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = load_results([_det(100.0, 1), _det(300.0, 2)], gt)  # category 2: not evaluated (pycocotools)
        m = run_audit(gt, res, sigmas=SIG, n_random=0).metrics
    assert m["keypoint_thresholds"]["n_keypoints"] == K  # only the category-1 detection is some person's
    _, g = best_match(gt, res, SIG, one_to_one=True)
    assert g.tolist() == [0, -1]


def test_detection_is_matched_within_its_own_gt_category():
    # gt: a category-1 person at x=100 and a category-3 instance at x=300; the category-1 detection lies on
    # the category-3 one, the category-3 detection on the category-1 one: each may only take its own
    # category's instance (the category-3 detection takes the category-3 one at its tiny OKS > 0, by design)
    gt = load_gt(_gt([(100.0, 1, 2.0), (300.0, 3, 2.0)], cats=(1, 3)))
    res = load_results([_det(300.0, 1), _det(100.0, 3), _det(104.0, 1, 0.5)], gt)
    o, g = best_match(gt, res, SIG, one_to_one=True)
    assert g.tolist() == [-1, 1, 0]  # was [1, 0, -1]: across categories
    assert o[0] == 0.0 and 0.0 < o[1] < 1e-100 and o[2] > 0.5


def test_compare_pairs_follow_the_category():
    gt = _gt([(100.0, 1, 2.0), (300.0, 1, 2.0)])
    a = [_det(100.0, 1), _det(300.0, 1)]
    b = [_det(100.0, 1), _det(330.0, 2)]  # category 2 (not in the gt), 30 px off the second person
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = compare(gt, a, b, resamples=5, sigmas=SIG)
        ev_b = run_audit(load_gt(gt), load_results(b, load_gt(gt)), sigmas=SIG, n_random=0).metrics
    want = [x["kept"] for x in ev_b["keypoint_thresholds"]["targets"]]
    got = [row["b"]["kept"] for row in r.keypoint_thresholds["targets"]]
    assert got == want == [1.0, 1.0, 1.0]  # B's one person, every keypoint right; not the category-2 one
