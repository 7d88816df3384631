"""Audit s30: ``posecal rescore --oks-nms`` ranks like MMPose's ``CocoMetric`` output when scores tie.

MMPose writes each image's detections in OKS-NMS keep order (``scores.argsort()[::-1]``: equal scores come out
reversed); COCOeval ranks an image's detections by a stable sort on the score, so for equal scores the file
order decides which detection is matched first. posecal wrote the kept records in input order, so with tied
scores (``mmpose-bbox`` on one detector score, ``bbox_keypoint`` 0 when no keypoint passes the threshold, equal
keypoint scores) the AP of its file differed from MMPose's (0.65 against 1.0 on the two-detection case below).
Now an image's equal scores are written in keep order; every other record stays where it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _cocoref import run_pycocotools
from _mmpose_nms import oks_nms as mmpose_oks_nms
from posecal.keypoints import COCO17
from posecal.models.nms import ties_as_kept
from test_hostile_inputs import _run, _write

NAMES = list(COCO17.names)


def _mmpose_area(b, aspect=192 / 256, padding=1.25):
    """np.prod(bbox_scales): MMPose's bbox_xywh2cs (scale = wh * padding) then _fix_aspect_ratio."""
    w, h = b[2] * padding, b[3] * padding
    w, h = (w, w / aspect) if w > h * aspect else (h * aspect, h)
    return w * h


def _mmpose_score(rec, mode, thr=0.2):
    """CocoMetric.compute_metrics' instance score, its own loop."""
    if mode == "bbox":
        return rec["bbox_score"]
    mean_kpt_score, valid_num = 0, 0
    for s in rec["keypoints"][2::3]:
        if s > thr:
            mean_kpt_score += s
            valid_num += 1
    if valid_num != 0:
        mean_kpt_score /= valid_num
    return rec["bbox_score"] * mean_kpt_score


def _mmpose_results(recs, mode, thr=0.9):
    """CocoMetric: score, oks_nms per image (images in first-seen order), results2json in keep order."""
    by_image: dict = {}
    for r in recs:
        by_image.setdefault(r["image_id"], []).append(r)
    out = []
    for img, rs in by_image.items():
        db = [{"keypoints": np.array(r["keypoints"], np.float64).reshape(-1, 3), "score": _mmpose_score(r, mode),
               "area": _mmpose_area(r["bbox"])} for r in rs]
        for i in mmpose_oks_nms(db, thr, COCO17.sigmas):
            out.append({"image_id": img, "category_id": 1, "keypoints": db[i]["keypoints"].ravel().tolist(),
                        "score": float(db[i]["score"])})
    return out


def _scene(seed: int, n_images: int = 3):
    """Gt people and raw top-down detections around them with few distinct box / keypoint scores (ties)."""
    rng = np.random.default_rng(seed)
    images, anns, recs = [], [], []
    for img in range(1, n_images + 1):
        images.append({"id": img, "width": 640, "height": 480})
        for _ in range(int(rng.integers(1, 4))):
            base = rng.uniform(50, 400, (17, 2))
            x0, y0 = base.min(0)
            w, h = np.ptp(base, axis=0)
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": 1, "iscrowd": 0, "num_keypoints": 17,
                         "area": float(w * h * 0.6), "bbox": [float(x0), float(y0), float(w), float(h)],
                         "keypoints": np.c_[base.round(2), np.full(17, 2)].ravel().tolist()})
            for _ in range(int(rng.integers(1, 5))):
                p = base + rng.normal(0, rng.choice([1.0, 8.0, 25.0]), (17, 2))
                s = rng.choice([0.1, 0.5, 0.8], 17) if rng.uniform() < 0.7 else np.full(17, 0.1)
                recs.append({"image_id": img, "category_id": 1, "score": 0.5,
                             "keypoints": np.c_[p.round(2), s].ravel().tolist(),
                             "bbox": [float(x0), float(y0), float(w), float(h)],
                             "bbox_score": float(rng.choice([0.6, 0.9]))})
    order = rng.permutation(len(recs))
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "person", "keypoints": NAMES, "skeleton": []}]}
    return gt, [recs[i] for i in order]


def _posecal(tmp_path: Path, recs, mode, name):
    pred = _write(tmp_path / f"{name}.raw.json", recs)
    out = tmp_path / f"{name}.json"
    rc, _, err = _run(["rescore", "--pred", pred, "--method", f"mmpose-{mode}", "--oks-nms", 0.9, "--out", out])
    assert rc == 0, err
    return json.loads(out.read_text())


def test_two_tied_detections_rank_as_in_mmposes_file(tmp_path: Path):
    gt, recs = _scene(0, n_images=1)
    gt["annotations"] = gt["annotations"][:1]
    a = gt["annotations"][0]
    base = np.array(a["keypoints"]).reshape(17, 3)[:, :2]
    rng = np.random.default_rng(1)

    def det(noise):
        p = base + rng.normal(0, noise, (17, 2))
        return {"image_id": 1, "category_id": 1, "score": 0.5, "keypoints": np.c_[p.round(2), np.full(17, 0.8)]
                .ravel().tolist(), "bbox": a["bbox"], "bbox_score": 0.9}

    recs = [det(1.0), det(25.0)]  # equal scores; the first is the better pose; OKS-NMS keeps both
    theirs = _mmpose_results(recs, "bbox_keypoint")
    mine = _posecal(tmp_path, recs, "bbox_keypoint", "two")
    assert len(mine) == len(theirs) == 2
    want = run_pycocotools(gt, theirs)["stats"]
    assert want[0] < 1  # MMPose's file ranks the worse pose first
    np.testing.assert_array_equal(run_pycocotools(gt, mine)["stats"], want)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(["bbox", "bbox_keypoint"]))
def test_oks_nms_output_evaluates_as_mmposes(tmp_path: Path, seed: int, mode: str):
    gt, recs = _scene(seed)
    mine = _posecal(tmp_path, recs, mode, f"s{seed}")
    theirs = _mmpose_results(recs, mode)
    # the same records are kept, with the same scores ...
    key = lambda r: (r["image_id"], tuple(r["keypoints"]), r["score"])  # noqa: E731
    assert sorted(map(key, mine)) == sorted(map(key, theirs))
    # ... and COCOeval ranks them the same way: every number equal
    a, b = run_pycocotools(gt, mine), run_pycocotools(gt, theirs)
    for k in ("stats", "precision", "recall", "scores"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_ties_as_kept_moves_only_equal_scores_of_one_image():
    image_id = np.array([1, 2, 1, 1, 2, 1])
    scores = np.array([0.5, 0.5, 0.9, 0.5, 0.5, 0.1])
    kept = np.array([2, 3, 0, 5, 4, 1])  # image 1 then image 2, each in keep order
    # image 1's tied rows 0 and 3 swap places; image 2's tied rows 1 and 4 swap; 2 and 5 stay
    assert ties_as_kept(kept, image_id, scores).tolist() == [3, 4, 2, 0, 1, 5]
