"""Audit by a structural fuzzer (session 30): a data file that ``extract`` accepted but that ``fit`` (and
``evaluate``) refuse when they read the store's copy of it — an annotation without ``category_id``, a category
without ``id`` — now fails at ``extract``, one error line naming the data file, record and field, before the
model runs and with no store written; areas on only some annotations are warned about there. ``load_gt``'s
"missing field" names an image or category record by its list (``categories[0]``), not as a bare "record 0"
that reads like an annotation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_hostile_inputs import _one_error, _run

SP = ("models", "simplepose", "ultralight-nano-simplepose.onnx")


@pytest.fixture
def one(shared, tmp_path):
    """A one-image COCO dataset (an image with a person with keypoints) copied to tmp_path."""
    src = shared("data", "coco-mini", "person_keypoints_train2017.json")
    d = json.loads(src.read_text())
    a = next(a for a in d["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"])
    im = next(im for im in d["images"] if im["id"] == a["image_id"])
    img = tmp_path / "img"
    img.mkdir()
    shutil.copy(src.parent / "train2017" / im["file_name"], img / im["file_name"])
    return {"data": {**d, "images": [im], "annotations": [a]}, "images": img, "tmp": tmp_path}


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _extract(shared, one, d: dict) -> tuple[int, str, str, Path]:
    data, out = _write(one["tmp"] / "d.json", d), one["tmp"] / "st"
    rc, so, err = _run(["extract", "--model", shared(*SP), "--data", data, "--images", one["images"], "--out", out])
    return rc, so, err, out


def _no_store(out: Path) -> None:
    left = [p.name for p in out.parent.iterdir() if p.name.startswith(out.name)]
    assert not left, left


def test_extract_refuses_an_annotation_without_category_id(shared, one):
    # was extracted; `posecal fit` then failed on the store's gt.json ("record N: field 'category_id': missing")
    d = json.loads(json.dumps(one["data"]))
    del d["annotations"][0]["category_id"]
    rc, _, err, out = _extract(shared, one, d)
    _one_error(rc, err, "d.json", f"record {d['annotations'][0]['id']}", "'category_id'", "missing")
    _no_store(out)


def test_extract_refuses_a_category_without_id_and_names_it(shared, one):
    d = json.loads(json.dumps(one["data"]))
    del d["categories"][0]["id"]
    for a in d["annotations"]:
        del a["category_id"]
    rc, _, err, out = _extract(shared, one, d)
    _one_error(rc, err, "d.json", "categories[0]", "'id'", "missing")
    _no_store(out)


def test_evaluate_names_the_category_record_without_id(tmp_path):
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
          "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 900.0,
                           "bbox": [10, 10, 30, 30], "num_keypoints": 17, "keypoints": [20.0, 20.0, 2] * 17}],
          "categories": [{"id": 1, "name": "person"}, {"name": "ball"}]}
    pred = [{"image_id": 1, "category_id": 1, "keypoints": [20.0, 20.0, 1.0] * 17, "score": 0.9}]
    rc, _, err = _run(["evaluate", "--gt", _write(tmp_path / "gt.json", gt), "--pred",
                       _write(tmp_path / "p.json", pred)])
    _one_error(rc, err, "gt.json", "categories[1]", "'id'", "missing field")


def test_extract_warns_when_only_some_annotations_have_an_area(shared, one):
    d = json.loads(json.dumps(one["data"]))
    second = {**d["annotations"][0], "id": d["annotations"][0]["id"] + 1}
    del second["area"]
    d["annotations"].append(second)
    rc, _, err, out = _extract(shared, one, d)
    assert rc == 0, err
    warned = [ln for ln in err.splitlines() if ": warning: " in ln and "'area'" in ln]
    assert len(warned) == 1 and "d.json" in warned[0] and "fit" in warned[0], err
    assert (out / "meta.json").is_file()


@pytest.mark.parametrize("argv, field", [
    (["fit", "--store", "{d}/st", "--store", "", "--out", "{d}/H"], "'--store'"),  # read "." (the cwd) as a store
    (["compare", "--gt", "{d}/gt.json", "", "{d}/b.json"], "'A.json'"),  # was "error: : cannot read file"
    (["compare", "--gt", "{d}/gt.json", "{d}/a.json", ""], "'B.json'"),
    (["convert", "mpii", "", "--out", "{d}/o.json"], "'src'"),  # was "error: .: Is a directory"
])
def test_an_empty_path_among_several_or_positional_is_named(tmp_path, argv, field):
    rc, _, err = _run([a.format(d=tmp_path) for a in argv])
    _one_error(rc, err, field, "empty path")
    assert not list(tmp_path.iterdir())
