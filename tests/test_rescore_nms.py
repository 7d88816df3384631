"""``posecal rescore --oks-nms``: MMPose CocoMetric's rescoring + OKS-NMS on a raw top-down results file, checked
against MMPose's verbatim ``oks_nms`` (tests/_mmpose_nms.py) with the crop areas computed here independently
(MMPose's ``bbox_xywh2cs`` padding and ``_fix_aspect_ratio``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _mmpose_nms import oks_nms as mmpose_oks_nms
from posecal.keypoints import get_keypoint_set
from test_hostile_inputs import _one_error, _run, _write

COCO17 = get_keypoint_set("coco17").sigmas


def _mmpose_area(b, aspect=192 / 256, padding=1.25):
    """np.prod(bbox_scales): MMPose's bbox_xywh2cs (scale = wh * padding) then _fix_aspect_ratio."""
    w, h = b[2] * padding, b[3] * padding
    w, h = (w, w / aspect) if w > h * aspect else (h * aspect, h)
    return w * h


def _raw_results(seed: int, n_images: int = 3, per_image: int = 6):
    """Top-down results: clusters of near-duplicate poses (what OKS-NMS removes) with boxes and box scores."""
    rng = np.random.default_rng(seed)
    recs = []
    for img in range(1, n_images + 1):
        base = rng.uniform(50, 400, (2, 17, 2))
        for _ in range(per_image):
            p = base[rng.integers(2)] + rng.normal(0, rng.choice([0.5, 3.0, 20.0]), (17, 2))
            s = rng.uniform(0, 1.2, 17)  # some keypoint scores above 1: legal
            x0, y0 = p.min(0) - 5
            w, h = p.max(0) - p.min(0) + 10
            kp = np.concatenate([p, s[:, None]], 1).reshape(-1)
            recs.append({"image_id": img, "category_id": 1, "keypoints": [round(float(v), 3) for v in kp],
                         "score": 0.5, "bbox": [float(x0), float(y0), float(w), float(h)],
                         "bbox_score": round(float(rng.uniform(0.05, 1)), 4)})
    return recs


def _mmpose_keep(recs, thr, score, area):
    """MMPose's verbatim oks_nms per image on instance ``score(k (17, 3), record)`` and ``area(k, record)``; the
    kept records' indices in input order."""
    keep = []
    for img in sorted({r["image_id"] for r in recs}):
        rows = [i for i, r in enumerate(recs) if r["image_id"] == img]
        db = []
        for i in rows:
            k = np.array(recs[i]["keypoints"], np.float64).reshape(17, 3)
            db.append({"keypoints": k, "score": score(k, recs[i]), "area": area(k, recs[i])})
        keep += [rows[j] for j in mmpose_oks_nms(db, thr, COCO17)]
    return sorted(keep)


def _bbox_keypoint(k, rec):
    """MMPose's bbox_keypoint score: box score x mean of the keypoint scores > 0.2 (0 when none)."""
    m = k[:, 2] > 0.2
    return rec["bbox_score"] * (k[m, 2].mean() if m.any() else 0.0)


def _expected(recs, thr):
    """MMPose CocoMetric: bbox_keypoint score, then oks_nms per image with the crop-box areas."""
    return _mmpose_keep(recs, thr, _bbox_keypoint, lambda k, rec: _mmpose_area(rec["bbox"]))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), thr=st.sampled_from([0.5, 0.9]))
def test_oks_nms_keeps_what_mmpose_cocometric_keeps(tmp_path: Path, seed: int, thr: float):
    recs = _raw_results(seed)
    pred = _write(tmp_path / f"raw{seed}.json", recs)
    out = tmp_path / f"nms{seed}.json"
    rc, stdout, err = _run(["rescore", "--pred", pred, "--method", "mmpose-bbox_keypoint", "--oks-nms", thr,
                            "--json", "--out", out])
    assert rc == 0, err
    got = json.loads(out.read_text())
    want = _expected(recs, thr)
    assert len(got) == len(want) < len(recs)
    for g, i in zip(got, want, strict=True):
        assert g["keypoints"] == recs[i]["keypoints"] and g["bbox"] == recs[i]["bbox"]
    summary = json.loads(stdout)
    assert summary["oks_nms"] == {"thr": thr, "area": "crop-box", "kept": len(want),
                                  "removed": len(recs) - len(want)}


def test_oks_nms_without_boxes_uses_the_keypoint_extent(tmp_path: Path):
    recs = _raw_results(3)
    for r in recs:
        del r["bbox"]
    pred = _write(tmp_path / "raw.json", recs)
    rc, stdout, err = _run(["rescore", "--pred", pred, "--method", "mmpose-keypoint", "--oks-nms", 0.9, "--json",
                            "--out", tmp_path / "o.json"])
    assert rc == 0, err
    got = json.loads((tmp_path / "o.json").read_text())
    # MMPose's score_mode 'keypoint' (the plain mean) and, without boxes, the keypoint extent as the area
    keep = _mmpose_keep(recs, 0.9, lambda k, rec: k[:, 2].mean(), lambda k, rec: np.ptp(k[:, 0]) * np.ptp(k[:, 1]))
    assert [g["keypoints"] for g in got] == [recs[i]["keypoints"] for i in keep]
    assert json.loads(stdout)["oks_nms"]["area"] == "extent"


def test_oks_nms_needs_sigmas_for_an_unknown_skeleton(tmp_path: Path):
    recs = [{"image_id": 1, "category_id": 1, "keypoints": [1.0, 2.0, 0.9] * 5, "score": 0.9}]
    pred = _write(tmp_path / "raw.json", recs)
    rc, _, err = _run(["rescore", "--pred", pred, "--method", "mmpose-keypoint", "--oks-nms", 0.9,
                       "--out", tmp_path / "o.json"])
    _one_error(rc, err, "--oks-nms", "raw.json")
    assert not (tmp_path / "o.json").exists()
    rc, _, err = _run(["rescore", "--pred", pred, "--method", "mmpose-keypoint", "--oks-nms", 0.9,
                       "--sigmas", "0.1", "0.1", "0.1", "0.1", "0.1", "--out", tmp_path / "o.json"])
    assert rc == 0, err and json.loads((tmp_path / "o.json").read_text())
    rc, _, err = _run(["rescore", "--pred", pred, "--method", "mmpose-keypoint", "--oks-nms", 1.5,
                       "--out", tmp_path / "o2.json"])
    assert rc == 2 and "--oks-nms" in err and not (tmp_path / "o2.json").exists()
