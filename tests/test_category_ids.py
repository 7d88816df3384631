"""A data file whose keypoint category is not COCO's person id 1 (animal sets, custom exports): ``extract
--boxes`` writes that category on every detection, and ``fit``'s training targets match the detections to the
gt of that category, as COCOeval does — the same targets, head and ``apply`` output as with id 1. A file
whose keypoint category is not ``categories[0]`` (box-only categories listed first, as general exports write
them) is read by the category that names keypoints.

(Found by an audit: the matching took only gt of category 1, so every detection of such a set became a
false positive with target 0.) Real coco-mini images with SimplePose and NanoDet."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from posecal.ccnet.targets import load_store  # noqa: E402
from posecal.cli import main  # noqa: E402

IMAGES = (790, 30752)


def _run(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from conftest import shared_path

    mini = shared_path("data", "coco-mini", "person_keypoints_train2017.json")
    src = json.loads(mini.read_text())
    d = {**src, "images": [im for im in src["images"] if im["id"] in IMAGES],
         "annotations": [a for a in src["annotations"] if a["image_id"] in IMAGES]}
    root = tmp_path_factory.mktemp("cat")
    img = root / "images"
    img.mkdir()
    for im in d["images"]:
        shutil.copy(mini.parent / "train2017" / im["file_name"], img / im["file_name"])
    model = shared_path("models", "simplepose", "ultralight-nano-simplepose.onnx")
    out = {}
    for cat in (1, 2):
        dc = json.loads(json.dumps(d))
        dc["categories"][0]["id"] = cat
        for a in dc["annotations"]:
            a["category_id"] = cat
        data = root / f"cat{cat}.json"
        data.write_text(json.dumps(dc))
        det = root / f"det{cat}.json"
        _run("detect", "--model", shared_path("models", "nanodet", "nanodet-m-416.onnx"), "--data", data,
             "--images", img, "--out", det, "--score-thr", "0.2")
        gts, dets = root / f"G{cat}", root / f"D{cat}"
        _run("extract", "--model", model, "--data", data, "--images", img, "--out", gts)
        _run("extract", "--model", model, "--data", data, "--images", img, "--boxes", det, "--out", dets)
        head, applied = root / f"H{cat}", root / f"A{cat}.json"
        _run("fit", "--store", gts, "--store", dets, "--steps", "30", "--out", head)
        _run("apply", "--store", dets, "--head", head, "--out", applied)
        out[cat] = {"gt": gts, "det": dets, "applied": json.loads(applied.read_text()), "data": data}
    out["base"], out["images"], out["model"] = d, img, model
    out["detector"] = shared_path("models", "nanodet", "nanodet-m-416.onnx")
    return out


def test_detection_targets_match_the_gt_of_the_stores_category(stores):
    a, b = (load_store(stores[c]["det"]) for c in (1, 2))
    assert {r["category_id"] for r in b.records} == {2}
    matched = np.flatnonzero(b.match >= 0)
    assert matched.size >= 3  # the people of the two images are found
    np.testing.assert_array_equal(a.match, b.match)
    np.testing.assert_array_equal(np.nan_to_num(a.oks, nan=-1), np.nan_to_num(b.oks, nan=-1))
    assert np.nanmax(b.oks) > 0.5


def test_apply_output_same_but_the_category(stores):
    a, b = stores[1]["applied"], stores[2]["applied"]
    assert len(a) == len(b) > 0 and all(r["category_id"] == 2 for r in b)
    assert [{**r, "category_id": 0} for r in a] == [{**r, "category_id": 0} for r in b]


def test_keypoint_category_not_first(stores, tmp_path, capsys):
    """categories = [car (boxes only), person (keypoints)] and a car box among the annotations: the keypoint
    set, the crops, the results' category and the evaluation are the person category's."""
    from posecal.datasets.coco import keypoint_category, keypoint_set
    from posecal.io.coco import load_gt

    d = json.loads(json.dumps(stores["base"]))
    d["categories"] = [{"id": 3, "name": "car", "supercategory": "vehicle"}, *d["categories"]]
    d["annotations"].append({"id": 10**9, "image_id": IMAGES[0], "category_id": 3, "bbox": [10, 10, 50, 40],
                             "area": 2000.0, "iscrowd": 0, "num_keypoints": 0, "keypoints": [0] * 51})
    data = tmp_path / "cats.json"
    data.write_text(json.dumps(d))
    assert keypoint_category(d) == 1 and keypoint_set(d).name == "coco17"
    assert load_gt(data).keypoint_set.name == "coco17"
    out = tmp_path / "S"
    _run("extract", "--model", stores["model"], "--data", data, "--images", stores["images"], "--out", out)
    recs = json.loads((out / "predictions.json").read_text())
    ref = json.loads((stores[1]["gt"] / "predictions.json").read_text())
    assert recs == ref  # the same people cropped, category 1 written
    from _cocoref import posecal_evaluate_json, reference_stats_from_files

    rc, got, _ = posecal_evaluate_json(data, out / "predictions.json")
    assert rc == 0
    stats = reference_stats_from_files("pycocotools", data, out / "predictions.json")
    np.testing.assert_allclose([got["coco"][k] for k in ("AP", "AP50", "AP75")], stats[:3], atol=1e-12)
    capsys.readouterr()
    _run("detect", "--model", stores["detector"], "--data", data, "--images", stores["images"], "--out",
         tmp_path / "det.json", "--score-thr", "0.2")
    assert "recall at IoU 0.5" in capsys.readouterr().out
    assert {r["category_id"] for r in json.loads((tmp_path / "det.json").read_text())} == {1}


def test_keypoints_named_in_another_order_refused_by_extract(stores, tmp_path, capsys):
    """COCO-17's names in another order (eyes swapped, the annotations' keypoints with them): extract keeps
    keypoints in the known set's order, so it would score the model's left eye against the right one — it
    refuses in one line naming the field, and writes nothing. ``evaluate`` still scores the file as
    pycocotools does (with a warning)."""
    d = json.loads(json.dumps(stores["base"]))
    perm = list(range(17))
    perm[1], perm[2] = 2, 1
    d["categories"][0]["keypoints"] = [d["categories"][0]["keypoints"][i] for i in perm]
    for a in d["annotations"]:
        k = a["keypoints"]
        a["keypoints"] = [v for i in perm for v in k[3 * i:3 * i + 3]]
    data = tmp_path / "perm.json"
    data.write_text(json.dumps(d))
    capsys.readouterr()
    out = tmp_path / "S"
    assert main(["extract", "--model", str(stores["model"]), "--data", str(data), "--images",
                 str(stores["images"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'categories[0].keypoints'" in err[0] and "another order" in err[0], err
    assert "'right_eye'" in err[0] and not out.exists()
    from _cocoref import posecal_evaluate_json, reference_stats_from_files

    pred = stores[1]["gt"] / "predictions.json"
    rc, got, _ = posecal_evaluate_json(data, pred)
    assert rc == 0
    np.testing.assert_allclose(got["coco"]["AP"], reference_stats_from_files("pycocotools", data, pred)[0],
                               atol=1e-12)
