"""Audit (session 28): a rescoring that sends every instance score to 0 is warned about. At COCO scale
``rescore --method loglog`` fitted on many background detections pushed every keypoint score below
``--keypoint-score-thr`` and MMPose's ``bbox_keypoint`` rule then wrote 0 everywhere (AP 0.319 -> 0.043)
without a word."""

from __future__ import annotations

import json

import numpy as np

from posecal.cli import main
from posecal.keypoints import COCO17


def _files(tmp_path):
    rng = np.random.default_rng(0)
    images, anns, preds = [], [], []
    for i in range(6):
        kp = np.c_[rng.uniform(10, 90, (17, 2)), np.full(17, 2.0)]
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 100, "height": 100})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": 3000.0,
                     "bbox": [10, 10, 80, 80], "keypoints": kp.ravel().tolist(), "num_keypoints": 17})
        p = kp.copy()
        p[:, :2] += rng.normal(0, 3, (17, 2))
        p[:, 2] = rng.uniform(0.3, 0.9, 17)
        preds.append({"image_id": i + 1, "category_id": 1, "keypoints": p.ravel().tolist(), "score": 0.8,
                      "bbox": [10, 10, 80, 80]})
    cats = [{"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}]
    (tmp_path / "gt.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    return tmp_path / "gt.json", tmp_path / "pred.json"


def _rescore(tmp_path, capsys, *extra):
    gt, pred = _files(tmp_path)
    out = tmp_path / "out.json"
    rc = main(["rescore", "--pred", str(pred), "--gt", str(gt), "--method", "mmpose-bbox_keypoint",
               "--out", str(out), *extra])
    return rc, capsys.readouterr().err, json.loads(out.read_text())


def test_every_new_instance_score_zero_is_warned(tmp_path, capsys):
    # no keypoint score passes a threshold of 2: MMPose's rule gives 0 to every person
    rc, err, recs = _rescore(tmp_path, capsys, "--keypoint-score-thr", "2")
    assert rc == 0 and all(r["score"] == 0 for r in recs)
    assert "every new instance score is 0" in err and "--keypoint-score-thr 2" in err


def test_no_warning_when_scores_stay_positive(tmp_path, capsys):
    rc, err, recs = _rescore(tmp_path, capsys)
    assert rc == 0 and all(r["score"] > 0 for r in recs)
    assert "every new instance score is 0" not in err
