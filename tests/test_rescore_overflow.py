"""rescore on predictions with finite but huge coordinates (1e300): an overflowing keypoint extent is named as
an input error (record and field), an overflowing error in the fit's OKS is OKS 0 without numpy chatter."""

from __future__ import annotations

import json
import warnings

import numpy as np

from posecal.cli import main


def _files(tmp_path, *, huge_xy: bool):
    rng = np.random.default_rng(0)
    imgs = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(1, 11)]
    anns, res = [], []
    for i in range(1, 11):
        xy = rng.uniform(100, 300, (17, 2))
        kp = np.concatenate([xy, np.full((17, 1), 2.0)], 1)
        pk = np.concatenate([xy + rng.normal(0, 5, xy.shape), rng.uniform(0, 1, (17, 1))], 1)
        anns.append({"id": i, "image_id": i, "category_id": 1, "keypoints": kp.ravel().tolist(),
                     "num_keypoints": 17, "area": 20000.0, "bbox": [100, 100, 200, 200], "iscrowd": 0})
        res.append({"image_id": i, "category_id": 1, "keypoints": pk.ravel().tolist(), "score": 0.9})
    res[3]["keypoints"][0] = 1e300
    if huge_xy:
        res[3]["keypoints"][1] = 1e300
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
             "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
             "right_knee", "left_ankle", "right_ankle"]
    (tmp_path / "gt.json").write_text(json.dumps({"images": imgs, "annotations": anns, "categories": [
        {"id": 1, "name": "person", "keypoints": names, "skeleton": []}]}))
    (tmp_path / "pred.json").write_text(json.dumps(res))
    return str(tmp_path / "gt.json"), str(tmp_path / "pred.json")


def test_closed_form_names_a_prediction_whose_extent_overflows(tmp_path, capsys):
    """Before: 'field 'state': the rescorer produced non-finite scores (a tampered calibrator?)', no record."""
    gt, pred = _files(tmp_path, huge_xy=True)
    out = tmp_path / "o.json"
    rc = main(["rescore", "--gt", gt, "--pred", pred, "--method", "closed-form", "--area", "pred",
               "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "pred.json: record 3: field 'keypoints': coordinates too large" in err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gt.json", "pred.json"]


def test_huge_coordinate_in_one_axis_scores_and_fits_without_overflow_warnings(tmp_path, capsys):
    """Before: 'posecal rescore: warning: overflow encountered in square' (numpy's, in the σ² and in the fit's
    keypoint errors); the values were right (σ² = ∞ → s = 0, an error of ∞ px → OKS 0)."""
    gt, pred = _files(tmp_path, huge_xy=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for extra in (["--method", "closed-form", "--area", "pred"],
                      ["--method", "isotonic", "--fit-gt", gt, "--fit-pred", pred]):
            out = tmp_path / "o.json"
            assert main(["rescore", "--gt", gt, "--pred", pred, *extra, "--out", str(out)]) == 0
            err = capsys.readouterr().err
            assert "overflow" not in err, err
            scores = [r["score"] for r in json.loads(out.read_text())]
            assert np.isfinite(scores).all()
