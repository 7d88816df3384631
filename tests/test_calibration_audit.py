"""End-to-end calibration audit and report on COCO-MINI with seeded perturbed-gt predictions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from calib_helpers import COCO_MINI, check_report, perturb_gt
from conftest import REPO, shared_path
from posecal.calibration.audit import PRIMARY_KEYS, format_summary, run_audit
from posecal.io.coco import load_gt, load_results
from posecal.metrics.oks import keypoint_oks


@pytest.fixture(scope="module")
def mini():
    path = shared_path(*COCO_MINI)
    gt_dict = json.loads(path.read_text())
    return path, gt_dict, load_gt(gt_dict)


def _exact_scores(gt_dict, gt, dets, reverse=False):
    """Instance score = OKS with the source gt, keypoint score = per-keypoint OKS (1 - ... if reverse)."""
    src = [a for a in gt_dict["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    assert len(src) == len(dets)
    gk = np.array([a["keypoints"] for a in src], float).reshape(len(src), -1, 3)
    area = np.array([a["area"] for a in src], float)
    pk = np.array([d["keypoints"] for d in dets], float).reshape(len(dets), -1, 3)
    ko = keypoint_oks(pk[..., :2], gk, area, gt.keypoint_set.sigmas)
    inst = np.nanmean(ko, axis=1)
    ks = np.nan_to_num(ko, nan=0.0)
    if reverse:
        inst, ks = 1 - inst, 1 - ks
    for d, s, k in zip(dets, inst, ks, strict=True):
        d["score"] = float(s)
        kk = np.asarray(d["keypoints"], float).reshape(-1, 3)
        kk[:, 2] = k
        d["keypoints"] = kk.ravel().tolist()
    return dets


def test_report_on_coco_mini(mini, tmp_path):
    from posecal.calibration.report import write_report

    _, gt_dict, gt = mini
    res = load_results(perturb_gt(gt_dict, seed=0, n_false_pos=12), gt)
    a = run_audit(gt, res, n_random=3, seed=0)
    write_report(a, tmp_path / "rep")
    metrics = check_report(tmp_path / "rep")
    cal = metrics["calibration"]
    assert all(cal[k] is not None for k in PRIMARY_KEYS), {k: cal.get(k + "_reason") for k in PRIMARY_KEYS}
    # the two bounds of Fig. 1 bracket the informative (error-driven) scores of the fixture
    assert cal["random_AP"] < cal["mAP"] <= cal["oracle_AP"] + 1e-12
    assert cal["gap"] == pytest.approx(cal["mAR"] - cal["mAP"])
    assert cal["pearson_instance"] > 0 and cal["pearson_keypoint"] > 0
    assert 0 <= cal["ause_instance"] <= cal["ause_instance_max"]
    assert cal["visibility"]["auroc"] is not None and cal["visibility"]["auroc"] > 0.5
    ev = a.evaluation  # counted = evaluated and not absorbed by an ignored (crowd / unlabelled) gt
    assert cal["n_instance_pairs"] == int((ev.det_evaluated & ~ev.det_ignored[0]).sum()) > 0
    assert cal["n_matched"] == int((ev.det_gt[0] >= 0).sum() - (ev.det_ignored[0] & ev.det_evaluated).sum())
    assert metrics["coco"]["AP"] == pytest.approx(cal["mAP"])
    text = format_summary(cal)
    assert "gap" in text and len(text.splitlines()) <= 14


def test_perfect_confidence_closes_the_gap(mini):
    _, gt_dict, gt = mini
    # small noise so that every detection matches its source gt
    dets = _exact_scores(gt_dict, gt, perturb_gt(gt_dict, seed=1, n_false_pos=0, max_level=0.02))
    res = load_results(dets, gt)
    a = run_audit(gt, res, n_random=1)
    m = a.metrics
    if m["n_matched"] != len(res):
        pytest.fail(f"fixture precondition: {m['n_matched']} of {len(res)} matched")
    assert m["mAP"] == pytest.approx(m["oracle_AP"], abs=1e-12)
    assert m["ause_instance"] == pytest.approx(0.0, abs=1e-12)
    assert m["ause_keypoint"] == pytest.approx(0.0, abs=1e-12)
    assert m["pearson_instance"] == pytest.approx(1.0, abs=1e-9)
    assert m["pearson_keypoint"] == pytest.approx(1.0, abs=1e-9)
    assert m["aurc"] == pytest.approx(min_aurc(1 - a.instance.oks), abs=1e-12)


def min_aurc(err):
    e = np.sort(err)
    return float(np.mean(np.cumsum(e) / np.arange(1, e.size + 1)))


def test_reversed_ranking_is_maximal(mini):
    _, gt_dict, gt = mini
    dets = perturb_gt(gt_dict, seed=1, n_false_pos=0, max_level=0.02)
    dets = _exact_scores(gt_dict, gt, dets, reverse=True)
    m = run_audit(gt, load_results(dets, gt), n_random=1).metrics
    assert m["ause_instance"] == pytest.approx(m["ause_instance_max"], abs=1e-12)
    assert m["ause_keypoint"] == pytest.approx(m["ause_keypoint_max"], abs=1e-12)
    assert m["ause_instance"] > 0
    assert m["pearson_instance"] == pytest.approx(-1.0, abs=1e-9)


def test_constant_confidence_gives_null_with_reason(mini, tmp_path):
    from posecal.calibration.report import write_report

    _, gt_dict, gt = mini
    dets = perturb_gt(gt_dict, seed=2, with_visibility=False)
    for d in dets:
        d["score"] = 0.5
        k = np.asarray(d["keypoints"], float).reshape(-1, 3)
        k[:, 2] = 0.5
        d["keypoints"] = k.ravel().tolist()
    a = run_audit(gt, load_results(dets, gt), n_random=1)
    m = a.metrics
    for k in ("pearson_instance", "pearson_keypoint", "spearman_instance"):
        assert m[k] is None and m[k + "_reason"] == "constant confidence"
    assert m["ece"] is not None and m["ause_instance"] is not None
    assert m["visibility"]["auroc"] is None and "visibility" in m["visibility"]["auroc_reason"]
    write_report(a, tmp_path / "rep")
    check_report(tmp_path / "rep")
    assert "constant confidence" in format_summary(m)


def test_empty_results(mini, tmp_path):
    from posecal.calibration.report import write_report

    _, _, gt = mini
    a = run_audit(gt, load_results([], gt), n_random=2)
    m = a.metrics
    # nothing detected: AP = AR = 0 as pycocotools reports it; every pair metric is null with a reason
    assert m["mAP"] == m["mAR"] == m["gap"] == m["oracle_AP"] == m["random_AP"] == 0.0
    for k in PRIMARY_KEYS[5:]:
        assert m[k] is None and m[k + "_reason"] == "no detections", k
    assert "no detections" in format_summary(m)
    write_report(a, tmp_path / "rep")
    check_report(tmp_path / "rep")


def test_audit_does_not_import_matplotlib():
    code = "import sys, posecal.calibration.audit; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(REPO / "src")})


def test_scores_above_one_are_kept(mini):
    from posecal.errors import PosecalWarning

    _, gt_dict, gt = mini
    dets = perturb_gt(gt_dict, seed=5)
    for d in dets:
        d["score"] *= 3.0
    with pytest.warns(PosecalWarning):
        res = load_results(dets, gt)
    a = run_audit(gt, res, n_random=1)
    m = a.metrics
    assert any("above 1" in n for n in m["notes"])
    # never clipped: the equal-width bins stretch to the largest counted score
    assert a.instance.confidence.max() > 1.0
    assert m["reliability"]["ece"]["edges"][-1] == pytest.approx(a.instance.confidence.max())
    assert m["ece"] is not None


def test_perturbation_free_predictions(mini, tmp_path):
    """Predictions equal to the gt (seeded random scores): every OKS is 1, so AP is 1 whatever the
    ranking, accuracy is constant (correlations null with that reason) and every AUSE is 0."""
    from posecal.calibration.report import write_report

    _, gt_dict, gt = mini
    rng = np.random.default_rng(11)
    dets = []
    for a in gt_dict["annotations"]:
        if a["num_keypoints"] > 0 and not a["iscrowd"]:
            kp = np.asarray(a["keypoints"], float).reshape(-1, 3)
            kp[:, 2] = rng.random(len(kp))
            dets.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.ravel().tolist(),
                         "score": rng.random()})  # fmt: skip
    a = run_audit(gt, load_results(dets, gt), n_random=2)
    m = a.metrics
    for k in ("mAP", "mAR", "oracle_AP", "random_AP"):
        assert m[k] == pytest.approx(1.0, abs=1e-9), k
    assert m["n_matched"] == len(dets)
    assert m["pearson_instance"] is None and m["pearson_instance_reason"] == "constant accuracy"
    assert m["ause_instance"] == 0.0 and m["aurc"] == 0.0
    write_report(a, tmp_path / "rep")
    check_report(tmp_path / "rep")


def test_audit_without_labelled_ground_truth_reports_nothing_as_perfect():
    """A gt with no labelled keypoint: every detection would pair with OKS 0 and AUSE / ECE / AURC would read as
    numbers (AUSE 0 = "perfect ranking"); every pair metric is n/a with the reason instead."""
    from _cocogen import make_coco_set
    from posecal.calibration.audit import NO_GT

    gt_dict, res = make_coco_set(5, n_images=4, max_gts=3, max_dets=4)
    for a in gt_dict["annotations"]:
        a["keypoints"] = [0] * len(a["keypoints"])
        a["num_keypoints"] = 0
    audit = run_audit(load_gt(gt_dict), load_results(res))
    m = audit.metrics
    assert len(res) > 0 and m["n_instance_pairs"] == 0
    for k in ("mAP", "ause_instance", "ece", "aurc", "pearson_instance"):
        assert m[k] is None and m[k + "_reason"] == NO_GT, (k, m[k], m.get(k + "_reason"))
    json.dumps(m, allow_nan=False)  # strict JSON
