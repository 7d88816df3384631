"""Audit s27 of ``posecal evaluate`` / ``compare`` / ``rescore``: legal COCO files that pycocotools evaluates
and posecal refused. Each case is the smallest change of a generated set; the 10 stats must equal
pycocotools' loading the same files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from _cocogen import make_coco_set
from _cocoref import posecal_evaluate_json, reference_stats_from_files
from posecal.metrics.cocoeval import STAT_NAMES

pytest.importorskip("pycocotools")


def _set(seed: int, **kw) -> tuple[dict, list]:
    return make_coco_set(seed, **{"n_images": 4, "max_gts": 5, "max_dets": 8, **kw})


def _matches(tmp_path: Path, gt: dict, res: list) -> str:
    gp, rp = tmp_path / "gt.json", tmp_path / "res.json"
    gp.write_text(json.dumps(gt))
    rp.write_text(json.dumps(res))
    want = reference_stats_from_files("pycocotools", gp, rp)
    rc, doc, err = posecal_evaluate_json(gp, rp)
    assert rc == 0, err
    np.testing.assert_array_equal(np.array([doc["coco"][k] for k in STAT_NAMES]), want)
    return err


# ---- gt annotations without a "keypoints" field -------------------------------------------------------------
@pytest.mark.parametrize("seed", [3, 4])
def test_annotations_of_a_category_without_keypoints(tmp_path, seed):
    """A file that also holds a box-only category (no "keypoints" on its annotations, as in an instances
    file): pycocotools reads "keypoints" only to compute OKS against detections of that category, so it
    evaluates the file; posecal refused it ('missing field')."""
    gt, res = _set(seed)
    gt["categories"].append({"id": 3, "name": "car", "supercategory": "vehicle"})
    for k, im in enumerate(gt["images"][:2]):
        gt["annotations"].append({"id": 9000 + k, "image_id": im["id"], "category_id": 3, "bbox": [1, 2, 30, 40],
                                  "area": 1000.0, "iscrowd": 0, "num_keypoints": 0})
    _matches(tmp_path, gt, res)


def test_person_without_keypoints_field_on_an_image_without_detections(tmp_path):
    gt, res = _set(3)
    img = gt["images"][0]["id"]
    gt["annotations"].append({"id": 9999, "image_id": img, "category_id": 1, "bbox": [1, 2, 30, 40],
                              "area": 1000.0, "iscrowd": 1, "num_keypoints": 0})
    _matches(tmp_path, gt, [r for r in res if r["image_id"] != img])


# ---- result category ids of the other kind ------------------------------------------------------------------
def test_string_result_category_against_integer_ids_is_left_out(tmp_path):
    """``"category_id": "1"`` with integer gt ids names no category for pycocotools ("1" != 1): those results
    are left out (a warning), not a refusal."""
    gt, res = _set(3)
    assert len(res) > 3
    for r in res[::2]:
        r["category_id"] = "1"
    err = _matches(tmp_path, gt, res)
    assert "not in the ground" in err and "not evaluated" in err


def test_all_results_with_string_category_give_zero(tmp_path):
    gt, res = _set(3)
    for r in res:
        r["category_id"] = "person"
    _matches(tmp_path, gt, res)


def test_numeric_result_category_against_string_ids_is_left_out(tmp_path):
    gt, res = _set(3)
    for c in gt["categories"]:
        c["id"] = "person"
    for a in gt["annotations"]:
        a["category_id"] = "person"
    for i, r in enumerate(res):
        r["category_id"] = 1 if i % 3 == 0 else "person"
    err = _matches(tmp_path, gt, res)
    assert "not evaluated" in err


def test_malformed_result_category_still_refused(tmp_path):
    gt, res = _set(3)
    res[1]["category_id"] = None
    gp, rp = tmp_path / "gt.json", tmp_path / "res.json"
    gp.write_text(json.dumps(gt))
    rp.write_text(json.dumps(res))
    rc, _, err = posecal_evaluate_json(gp, rp)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and str(rp) in lines[0] and "record 1:" in lines[0]
    assert "field 'category_id'" in lines[0]


# ---- num_keypoints that is not an integer -----------------------------------------------------------------
def test_fractional_num_keypoints(tmp_path):
    """pycocotools only asks ``num_keypoints == 0``; 16.5 or 0.5 are "some" (not ignored), -1 too."""
    gt, res = _set(3)
    for i, a in enumerate(gt["annotations"]):
        a["num_keypoints"] = [a["num_keypoints"] + 0.5, 0.5, -0.25, 0.0][i % 4]
    _matches(tmp_path, gt, res)


def test_missing_keypoints_field_in_a_big_file(tmp_path):
    """The fast JSON path (files of 64 KiB and more) falls back to the strict one for such annotations."""
    gt, res = _set(4, n_images=60, max_gts=8, max_dets=10)
    gt["categories"].append({"id": 3, "name": "car"})
    for k, im in enumerate(gt["images"][:5]):
        gt["annotations"].append({"id": 90000 + k, "image_id": im["id"], "category_id": 3,
                                  "bbox": [1, 2, 30, 40], "area": 1000.0, "iscrowd": 0, "num_keypoints": 0})
    assert len(json.dumps(gt)) > 1 << 16
    _matches(tmp_path, copy.deepcopy(gt), res)
