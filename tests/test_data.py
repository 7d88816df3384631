"""Dataset readers and ``posecal convert`` on the real LSP / MPII / COCO fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.io import loadmat

from posecal.cli import main
from posecal.datasets import instances, read_coco, read_lsp, read_mpii
from posecal.datasets.coco import keypoint_set
from posecal.errors import PosecalInputError
from posecal.keypoints import LSP14


def test_lsp_reader_matches_joints_mat(shared):
    mat = shared("data", "lsp", "joints.mat")
    j = loadmat(mat)["joints"]
    d = read_lsp(mat, shared("data", "lsp", "images"), "test")
    assert [im["id"] for im in d["images"]] == list(range(1001, 2001))
    assert d["categories"][0]["keypoints"] == list(LSP14.names)
    assert keypoint_set(d).name == "lsp14"
    for a in d["annotations"][::97]:
        n = a["image_id"]
        kp = np.array(a["keypoints"]).reshape(14, 3)
        np.testing.assert_array_equal(kp[:, :2], j[:2, :, n - 1].T)
        # flag 0 (visible) -> v 2, flag 1 (occluded) -> v 1
        np.testing.assert_array_equal(kp[:, 2], np.where(j[2, :, n - 1] == 0, 2, 1))
        x, y = j[0, :, n - 1], j[1, :, n - 1]
        np.testing.assert_allclose(a["bbox"], [x.min(), y.min(), x.max() - x.min(), y.max() - y.min()])
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
    # both flag values occur and map to distinct v
    v = np.concatenate([np.array(a["keypoints"])[2::3] for a in d["annotations"]])
    assert set(np.unique(v)) == {1, 2}
    assert (v == 1).sum() == (j[2, :, 1000:] == 1).sum()
    im = d["images"][0]
    from PIL import Image

    with Image.open(shared("data", "lsp", "images") / im["file_name"]) as pil:
        assert (im["width"], im["height"]) == pil.size


def test_lsp_splits_and_convert_cli(shared, tmp_path):
    mat = shared("data", "lsp", "joints.mat")
    tr = read_lsp(mat, split="train")
    assert (tr["images"][0]["id"], tr["images"][-1]["id"], len(tr["images"])) == (1, 1000, 1000)
    out = tmp_path / "lsp.json"
    rc = main(["convert", "lsp", str(mat), "--images", str(shared("data", "lsp", "images")), "--split", "all",
               "--out", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert len(d["annotations"]) == 2000 and len(instances(d)) == 2000
    from posecal.io.coco import load_gt

    g = load_gt(out)  # the evaluator's reader recognises the set by the category's keypoint names
    assert g.keypoint_set.name == "lsp14" and g.keypoints.shape == (2000, 14, 3)


def test_mpii_reader(shared):
    src = shared("data", "mmpose-fixtures", "mpii", "test_mpii.json")
    raw = json.loads(src.read_text())
    d = read_mpii(src)
    assert keypoint_set(d).name == "mpii16" and len(d["annotations"]) == len(raw)
    for a, r in zip(d["annotations"], raw, strict=True):
        kp = np.array(a["keypoints"]).reshape(16, 3)
        vis = np.array(r["joints_vis"]) > 0
        np.testing.assert_allclose(kp[vis, :2], np.array(r["joints"])[vis] - 1.0)  # 1-based -> 0-based
        assert (kp[:, 2] == np.where(vis, 2, 0)).all()
        x, y, w, h = a["bbox"]
        assert w == h == pytest.approx(r["scale"] * 200)
        assert x + w / 2 == pytest.approx(r["center"][0] - 1)
        assert y + h / 2 == pytest.approx(r["center"][1] + 15 * r["scale"] - 1)


def test_coco_reader_and_bad_keypoint_count(shared, tmp_path, capsys):
    d = read_coco(shared("data", "mmpose-fixtures", "coco", "test_coco.json"))
    assert keypoint_set(d).name == "coco17"
    inst = instances(d)
    assert all(i.keypoints.shape == (17, 3) and i.box_score == 1.0 for i in inst)
    bad = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "person"}],
           "annotations": [{"id": 1, "image_id": 1, "keypoints": [0, 0, 2] * 11, "bbox": [0, 0, 5, 5]}]}
    with pytest.raises(PosecalInputError, match="match no keypoint set"):
        read_coco(bad)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    model = shared("models", "efficientpose", "EfficientPoseRT.tflite")
    (tmp_path / "img").mkdir()  # an output inside the image folder is refused: keep them apart
    rc = main(["extract", "--model", str(model), "--data", str(p), "--images", str(tmp_path / "img"),
               "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "33 keypoint values" in err
    assert not (tmp_path / "s").exists()


def test_detections_of_other_images_and_categories(shared):
    """Detection boxes: other categories (a COCO-80 detector's file) are not people and are dropped quietly;
    detections of images the data file does not list are dropped with one warning that counts them."""
    from posecal.errors import PosecalWarning

    d = read_coco(shared("data", "mmpose-fixtures", "coco", "test_coco.json"))
    iid = int(d["images"][0]["id"])
    missing = max(int(im["id"]) for im in d["images"]) + 1
    det = [{"image_id": iid, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.9},
           {"image_id": iid, "category_id": 3, "bbox": [1, 2, 30, 40], "score": 0.8},
           {"image_id": missing, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.7},
           {"image_id": missing, "category_id": 1, "bbox": [5, 2, 30, 40], "score": 0.6}]
    with pytest.warns(PosecalWarning, match=r"2 detection\(s\) on images .* \(first: record 2\)"):
        inst = instances(d, boxes=det, boxes_file="det.json")
    assert [(i.image_id, i.box_score) for i in inst] == [(iid, 0.9)]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(instances(d, boxes=det[:2], boxes_file="det.json")) == 1


def test_detection_scores_outside_unit_interval_warn_and_stay(shared):
    """A detector score above 1 (or below 0) is legal input: one warning names the file, the first record and
    the field, and the score is kept as it is (never squashed); other categories' scores are not checked."""
    from posecal.errors import PosecalWarning

    d = read_coco(shared("data", "mmpose-fixtures", "coco", "test_coco.json"))
    iid = int(d["images"][0]["id"])
    det = [{"image_id": iid, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.9},
           {"image_id": iid, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 1.5},
           {"image_id": iid, "category_id": 1, "bbox": [1, 2, 30, 40], "score": -0.25},
           {"image_id": iid, "category_id": 2, "bbox": [1, 2, 30, 40], "score": 7.0}]
    with pytest.warns(PosecalWarning, match=r"det.json: 2 person detection score\(s\) outside \[0, 1\] \(first: "
                      r"record 1, field 'score'\)"):
        inst = instances(d, boxes=det, boxes_file="det.json")
    assert [i.box_score for i in inst] == [0.9, 1.5, -0.25]
