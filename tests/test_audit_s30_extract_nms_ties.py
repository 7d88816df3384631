"""``posecal extract --boxes``: detections with equal ``bbox_keypoint`` scores are stored in MMPose's order.

Found (session 30, after the same fix in ``rescore --oks-nms``): MMPose's ``CocoMetric`` writes each image's
detections in OKS-NMS keep order (``argsort()[::-1]``: equal scores reversed), and COCOeval ranks an image's
detections by a stable sort, so for equal scores the file order decides which one is matched first and which are
cut at ``maxDets`` 20. extract kept the rows in detection-file order, so its ``predictions.json`` (the own-score
baseline) could rank ties, and cut at 20, differently from MMPose's file. Real case: SimplePose + NanoDet on
coco-mini has 17 groups of boxes tied at score 0 (no keypoint above 0.2). Now an image's tied rows take their
places in keep order, and the per-image cut keeps that order; every other row stays where it was.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from _mmpose_nms import oks_nms as mmpose_oks_nms
from posecal.keypoints import COCO17
from test_hostile_inputs import SP_MODEL, _run, _write

pytest.importorskip("onnxruntime")


def _area(b, aspect=192 / 256, padding=1.25):
    """MMPose's prod(bbox_scales): bbox_xywh2cs (scale = wh * padding), then _fix_aspect_ratio."""
    w, h = b[2] * padding, b[3] * padding
    w, h = (w, w / aspect) if w > h * aspect else (h * aspect, h)
    return w * h


def _mmpose_order(recs):
    """CocoMetric: oks_nms per image on the records' scores, written in keep order (images as first seen)."""
    by_image: dict = {}
    for r in recs:
        by_image.setdefault(r["image_id"], []).append(r)
    out = []
    for rs in by_image.values():
        db = [{"keypoints": np.array(r["keypoints"], np.float64).reshape(-1, 3), "score": r["score"],
               "area": _area(r["bbox"])} for r in rs]
        out += [rs[i] for i in mmpose_oks_nms(db, 0.9, COCO17.sigmas)]
    return out


def _key(r):
    return (r["image_id"], tuple(round(v, 3) for v in r["bbox"]))


def test_tied_scores_are_stored_in_mmpose_keep_order(shared, mini, tmp_path):
    data, img, det = mini
    boxes = json.loads(det.read_text())
    # each gt box three times, shifted (OKS-NMS keeps some of them), all with box score 0: every
    # bbox_keypoint score is 0, one tie group per image
    dets = [{**b, "bbox": [b["bbox"][0] + dx * b["bbox"][2], *b["bbox"][1:]], "score": 0.0}
            for b in boxes for dx in (0.0, 0.3, -0.3)]
    dets_file = _write(tmp_path / "dets.json", dets)
    base = ["extract", "--model", shared(*SP_MODEL), "--data", data, "--images", img, "--boxes", dets_file,
            "--threads", "1"]
    rc, _, err = _run(base + ["--out", tmp_path / "ALL", "--oks-nms", "1", "--max-per-image", "0"])
    assert rc == 0, err
    every = json.loads((tmp_path / "ALL" / "predictions.json").read_text())
    assert {r["score"] for r in every} == {0.0} and len(every) == len(dets)
    want = _mmpose_order(every)
    assert 1 < len(want) < len(every)  # NMS removes some, keeps several tied ones

    rc, _, err = _run(base + ["--out", tmp_path / "NMS"])
    assert rc == 0, err
    got = json.loads((tmp_path / "NMS" / "predictions.json").read_text())
    assert [_key(r) for r in got] == [_key(r) for r in want]  # was: the kept rows in file order
    assert [_key(r) for r in got] != sorted((_key(r) for r in got), key=lambda k: [_key(r) for r in every].index(k))

    # the per-image cut keeps the first in that order, as COCOeval's stable sort of MMPose's file would
    rc, _, err = _run(base + ["--out", tmp_path / "TOP1", "--max-per-image", "1"])
    assert rc == 0, err
    top = json.loads((tmp_path / "TOP1" / "predictions.json").read_text())
    first = {}
    for r in want:
        first.setdefault(r["image_id"], _key(r))
    assert [_key(r) for r in top] == list(first.values())
