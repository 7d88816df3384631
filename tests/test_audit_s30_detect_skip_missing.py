"""``posecal detect --data D --skip-missing`` (added in session 30, as ``extract --skip-missing``).

A user whose image folder holds part of a dataset had no way to run the detector on it with the data file's ids:
detect refused ("N image(s) of the dataset missing"). With ``--skip-missing`` the missing images are left out
with one warning and the recall counts the gt of the images detected on (a missing image's people are not missed
detections); every image missing, or the flag without ``--data``, is still one error line.
"""

from __future__ import annotations

import json

import pytest

from test_hostile_inputs import _one_error, _run

pytest.importorskip("onnxruntime")

NANODET = ("models", "nanodet", "nanodet-m-416.onnx")


def _with_missing_image(data_json, extra_people: int = 2):
    """data.json plus an image record whose file is not in the folder, with ``extra_people`` labelled people."""
    d = json.loads(data_json.read_text())
    gone = {"id": 987654321, "file_name": "not_here.jpg", "width": 640, "height": 480}
    d["images"].append(gone)
    base = max(a["id"] for a in d["annotations"]) + 1
    for k in range(extra_people):
        d["annotations"].append({"id": base + k, "image_id": gone["id"], "category_id": 1, "iscrowd": 0,
                                 "bbox": [10.0 + 50 * k, 10.0, 40.0, 90.0], "area": 3600.0, "num_keypoints": 0,
                                 "keypoints": [0] * 51})
    out = data_json.with_name("data_missing.json")
    out.write_text(json.dumps(d))
    return out


def test_skip_missing_detects_on_the_rest_and_recall_counts_their_gt(shared, mini, tmp_path):
    data, img, _ = mini
    det = shared(*NANODET)
    full = tmp_path / "full.json"
    rc, out, err = _run(["detect", "--model", det, "--images", img, "--data", data, "--out", full, "--json"])
    assert rc == 0, err
    ref = json.loads(out)

    holed = _with_missing_image(data)
    out_file = tmp_path / "skip.json"
    rc, err_out, err = _run(["detect", "--model", det, "--images", img, "--data", holed, "--out", out_file])
    _one_error(rc, err, "--images", "not_here.jpg", "--skip-missing")
    assert not out_file.exists()

    rc, out, err = _run(["detect", "--model", det, "--images", img, "--data", holed, "--out", out_file,
                         "--skip-missing", "--json"])
    assert rc == 0, err
    assert "1 of 3 image(s)" in err and "not_here.jpg" in err
    got = json.loads(out)
    assert json.loads(out_file.read_text()) == json.loads(full.read_text())  # the same boxes, same ids
    assert (got["images"], got["recall_iou50"], got["gt_boxes"]) == (ref["images"], ref["recall_iou50"],
                                                                      ref["gt_boxes"])


def test_skip_missing_refusals(shared, mini, tmp_path):
    data, img, _ = mini
    det = shared(*NANODET)
    empty = tmp_path / "empty_img"
    empty.mkdir()
    out_file = tmp_path / "x.json"
    rc, _, err = _run(["detect", "--model", det, "--images", empty, "--data", data, "--out", out_file,
                       "--skip-missing"])
    _one_error(rc, err, "--images", "all of them")
    rc, _, err = _run(["detect", "--model", det, "--images", img, "--out", out_file, "--skip-missing"])
    _one_error(rc, err, "--skip-missing", "--data")
    assert not out_file.exists()
