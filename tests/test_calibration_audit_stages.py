"""The stages of the calibration audit, each on hand-built pairs with known answers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from posecal.calibration import audit as A
from posecal.calibration import metrics as M
from posecal.calibration.pairs import InstancePairs, KeypointPairs
from posecal.errors import PosecalInputError
from posecal.io.coco import load_gt, load_results
from posecal.keypoints import COCO17
from posecal.metrics.cocoeval import evaluate
from posecal.theory.simulate import simulate


def _inst(conf, oks, gt_index=None):
    n = len(conf)
    gi = np.arange(n) if gt_index is None else np.asarray(gt_index)
    return InstancePairs(np.arange(n), gi, np.asarray(conf, float), np.asarray(oks, float))


def _kp(score, oks, gt_v, visibility=None, pck=None):
    score, oks, gt_v = (np.asarray(a) for a in (score, oks, gt_v))
    M_ = score.shape[0]
    pck = np.where(gt_v > 0, 1.0, np.nan) if pck is None else np.asarray(pck, float)
    return KeypointPairs(np.arange(M_), np.arange(M_), score.astype(float), oks.astype(float), gt_v,
                         visibility, pck, 0.1)  # fmt: skip


def test_ranking_metrics_and_reasons():
    m = A.ranking_metrics({"AP": 0.6, "AR": 0.8}, n_det=5)
    assert m == {"mAP": 0.6, "mAR": 0.8, "gap": pytest.approx(0.2)}
    assert list(m) == ["mAP", "mAR", "gap"]
    m = A.ranking_metrics({"AP": -1.0, "AR": -1.0}, n_det=0)
    assert m["mAP"] is None and m["mAP_reason"] == "no detections" and m["gap_reason"] == "no detections"
    m = A.ranking_metrics({"AP": -1.0, "AR": 0.5}, n_det=3)
    assert m["mAP_reason"] == "no labelled ground truth to evaluate" and m["mAR"] == 0.5 and m["gap"] is None


def test_pair_counts_and_notes():
    inst = _inst([1.5, 0.2, 3.0], [0.9, 0.0, 0.5], gt_index=[0, -1, 1])
    kp = _kp([[0.5, 0.5], [0.1, 0.9]], [[0.8, np.nan], [0.3, 0.2]], [[2, 0], [1, 2]])
    m, notes = A.pair_counts(inst, kp, n_det=4)
    assert m["n_detections"] == 4 and m["n_instance_pairs"] == 3 and m["n_matched"] == 2
    assert m["n_keypoint_pairs"] == 3
    assert m["mean_oks_instance"] == pytest.approx(1.4 / 3)
    assert m["mean_confidence_instance"] == pytest.approx(4.7 / 3)
    assert notes == ["2 instance scores above 1 (kept as is)"]
    m, notes = A.pair_counts(_inst([], []), _kp(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2), int)), 0)
    assert m["mean_oks_instance"] is None and notes == []


def test_correlation_metrics_use_only_labelled_keypoints():
    inst = _inst([0.1, 0.4, 0.7], [0.2, 0.5, 0.8])  # linear: Pearson = Spearman = 1
    # the unlabelled entry (v = 0) carries a score that would break the ordering if counted
    kp = _kp([[0.1, 0.99], [0.5, 0.3]], [[0.1, 0.0], [0.6, 0.35]], [[2, 0], [2, 1]])
    m = A.correlation_metrics(inst, kp)
    assert m["pearson_instance"] == pytest.approx(1.0) and m["spearman_instance"] == pytest.approx(1.0)
    assert m["spearman_keypoint"] == pytest.approx(1.0)
    assert m["pearson_keypoint"] == pytest.approx(M.pearson(np.array([0.1, 0.5, 0.3]), np.array([0.1, 0.6, 0.35])))
    m = A.correlation_metrics(_inst([0.5, 0.5], [0.1, 0.9]), kp)
    assert m["pearson_instance"] is None and m["pearson_instance_reason"] == "constant confidence"


def test_instance_pck():
    inst = _inst([0.9, 0.8, 0.7], [0.9, 0.8, 0.0], gt_index=[0, 1, -1])
    pck = np.array([[1.0, 0.0, np.nan], [np.nan, np.nan, np.nan]])
    kp = _kp(np.ones((2, 3)), np.ones((2, 3)), np.array([[2, 2, 0], [0, 0, 0]]), pck=pck)
    np.testing.assert_array_equal(A.instance_pck(inst, kp), [0.5, 0.0, 0.0])


def test_ause_metrics_oracle_ranking_is_zero():
    oks = np.array([0.9, 0.1, 0.5, 0.7])
    inst = _inst(oks, oks)  # confidence ranks exactly as the error: AUSE 0
    kp = _kp(oks[:, None].repeat(2, 1), oks[:, None].repeat(2, 1), np.full((4, 2), 2),
             pck=np.array([[1, 1], [0, 0], [1, 0], [1, 1]], float))  # fmt: skip
    m, sp = A.ause_metrics(inst, kp, pck_alpha=0.1)
    assert m["ause_instance"] == pytest.approx(0.0) and m["ause_keypoint"] == pytest.approx(0.0)
    assert m["ause_instance_pck"] == pytest.approx(0.0)
    assert set(sp) == {"ause_instance", "ause_keypoint", "ause_instance_pck", "ause_keypoint_pck"}
    assert m["pck_alpha"] == 0.1 and set(m["sparsification"]) == set(sp)
    assert len(m["sparsification"]["ause_instance"]["fraction"]) == 21
    rev = _inst(1 - oks, oks)  # reversed ranking: the worst curve, AUSE = AUSE_max > 0
    m2, _ = A.ause_metrics(rev, kp, pck_alpha=0.1)
    assert m2["ause_instance"] == pytest.approx(m2["ause_instance_max"]) and m2["ause_instance"] > 0
    m3, sp3 = A.ause_metrics(_inst([], []), _kp(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2), int)), 0.1)
    assert sp3 == {} and m3["ause_instance"] is None and m3["ause_instance_reason"] == "no pairs"


def test_calibration_error_metrics():
    oks = np.linspace(0.05, 0.95, 40)
    kp = _kp(oks[:, None], oks[:, None], np.full((40, 1), 2))
    m, rel = A.calibration_error_metrics(_inst(oks, oks), kp, n_bins=10)
    assert m["ece"] == pytest.approx(0.0) and m["mce"] == pytest.approx(0.0)
    assert m["ece_mass"] == pytest.approx(0.0) and m["ece_keypoint"] == pytest.approx(0.0)
    assert m["ece_bins"] == 10 and set(rel) == {"ece", "ece_mass", "ece_keypoint"}
    m, _ = A.calibration_error_metrics(_inst(np.full(40, 1.0), oks), kp, n_bins=10)
    assert m["ece"] == pytest.approx(1.0 - oks.mean())  # one bin: |mean conf - mean OKS|
    assert m["mce"] == pytest.approx(1.0 - oks.mean())


def test_aurc_metrics_match_the_metric_function():
    rng = np.random.default_rng(0)
    conf, oks = rng.random(30), rng.random(30)
    kp = _kp(rng.random((30, 2)), rng.random((30, 2)), np.array([[2, 0]] * 30))
    m = A.aurc_metrics(_inst(conf, oks), kp)
    assert m["aurc"] == M.aurc(conf, 1 - oks)
    assert m["aurc_keypoint"] == M.aurc(kp.score[:, 0], 1 - kp.oks[:, 0])


def test_visibility_metrics_and_score_groups():
    gt_v = np.array([[2, 1, 0], [0, 2, 2]])
    score = np.array([[0.9, 0.4, 0.1], [0.2, 0.8, 0.6]])
    vis = A.visibility_metrics(_kp(score, score, gt_v))
    assert vis["auroc"] is None and vis["auroc_reason"] == "results carry no 'visibility'"
    assert vis["auroc_keypoint_score"] == pytest.approx(1.0)  # every labelled score is above the rest
    vis = A.visibility_metrics(_kp(score, score, gt_v, visibility=(gt_v > 0).astype(float)))
    assert vis["auroc"] == pytest.approx(1.0) and vis["ap"] == pytest.approx(1.0) and vis["brier"] == 0.0
    dist, by_v = A.score_by_visibility(_kp(score, score, gt_v))
    assert [d["count"] for d in dist.values()] == [3, 1, 2]
    assert dist["visible (v=2)"]["mean"] == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    assert dist["occluded (v=1)"]["frac_above_0.5"] == 0.0
    np.testing.assert_array_equal(np.sort(by_v["unlabelled (v=0)"]), [0.1, 0.2])


@pytest.mark.parametrize(
    "n_det, n_pairs, why",
    [(0, 0, "no detections"), (3, 0, "no detection counted by the evaluator"),
     (3, 2, "no detection matched a gt at OKS 0.50")],
)  # fmt: skip
def test_explain_no_pairs(n_det, n_pairs, why):
    m = {"ece": None, "ece_reason": "no pairs", "aurc_reason": "constant confidence"}
    vis = {"auroc_reason": "no pairs"}
    A.explain_no_pairs((m, vis), n_det, n_pairs)
    assert m["ece_reason"] == vis["auroc_reason"] == why and m["aurc_reason"] == "constant confidence"


@pytest.fixture(scope="module")
def sim_eval():
    s = simulate(150, seed=21)
    gt = load_gt(s.gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = load_results(s.heatmap_results, gt)
    return gt, res, evaluate(gt, res, sigmas=COCO17.sigmas)


def test_bounds_bracket_the_model(sim_eval):
    gt, res, ev = sim_eval
    kw = {"sigmas": COCO17.sigmas}
    thr = (A._threshold_index(ev, 0.5), A._threshold_index(ev, 0.75))
    assert thr == (0, 5)
    mo, pr_o = A.oracle_bound(gt, res, COCO17.sigmas, kw, None, thr)
    assert ev.stats["AP"] <= mo["oracle_AP"] <= 1 and mo["oracle_AP50"] >= mo["oracle_AP"]
    assert set(pr_o) == {0.5, 0.75} and pr_o[0.5].shape == (101,)
    mr, pr_r = A.random_bound(gt, res, kw, 2, 7, thr)
    assert mr["random_seeds"] == [7, 8] and mr["random_AP"] <= ev.stats["AP"]
    assert mr["random_AP_std"] >= 0 and pr_r[0.75].shape == (101,)
    assert A.random_bound(gt, res, kw, 2, 7, thr)[0] == mr  # seeded: the same numbers again
    m0, pr0 = A.random_bound(gt, res, kw, 0, 7, thr)
    assert m0 == {"random_seeds": None, "random_AP": None, "random_AP_reason": "n_random = 0"} and pr0 is None


def test_resolve_sigmas_and_evaluator_area(sim_eval):
    gt = sim_eval[0]
    np.testing.assert_array_equal(A.resolve_sigmas(gt, None), COCO17.sigmas)
    got = A.resolve_sigmas(gt, [0.1] * 17)
    assert got.dtype == np.float64 and got.shape == (17,)
    assert A.evaluator_gt_area(gt, {}) is None
    np.testing.assert_allclose(A.evaluator_gt_area(gt, {"use_area": False}), 0.53 * gt.bbox[:, 2] * gt.bbox[:, 3])

    class NoSet:
        keypoint_set = None
        path = "g.json"

    with pytest.raises(PosecalInputError, match="g.json: field 'categories': unknown keypoint set"):
        A.resolve_sigmas(NoSet(), None)
