"""Audit of ``posecal convert lsp / lspet``, ``detect`` and ``extract`` (session 27): legal input that was refused
(a one-person joints.mat as MATLAB saves it), bad input that gave a traceback (ids beyond 64 bits), was read
silently (a logical joints array, a box 1e300 px away) or was blamed on the wrong file (boxes of no image of
the data file): each now converts, or is one error line naming file, record and field, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy.io import savemat

from test_hostile_inputs import _one_error, _run

SP = ("models", "simplepose", "ultralight-nano-simplepose.onnx")
ND = ("models", "nanodet", "nanodet-m-416.onnx")


def _person() -> np.ndarray:
    """One LSP person, (3, 14): x, y, flag 0 (visible)."""
    j = np.zeros((3, 14))
    j[0] = np.linspace(10, 50, 14)
    j[1] = np.linspace(10, 90, 14)
    return j


# --- convert ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["lsp", "lspet"])
def test_a_one_person_joints_mat_as_matlab_saves_it_converts(tmp_path, fmt):
    # MATLAB drops a trailing singleton dimension: joints(:, :, 1) of LSP is stored as 3x14 (LSPET: 14x3)
    j = _person()
    if fmt == "lspet":
        j[2] = 1  # LSPET: flag 1 = annotated
        j = j.T
    savemat(tmp_path / "j.mat", {"joints": j})
    out = tmp_path / "o.json"
    rc, _, err = _run(["convert", fmt, tmp_path / "j.mat", "--out", out])
    assert rc == 0, err
    d = orjson.loads(out.read_bytes())
    assert [im["file_name"] for im in d["images"]] == ["im0001.jpg" if fmt == "lsp" else "im00001.jpg"]
    kp = np.array(d["annotations"][0]["keypoints"]).reshape(14, 3)
    assert np.allclose(kp[:, 0], np.linspace(10, 50, 14)) and (kp[:, 2] == 2).all()


def test_a_one_person_joints_mat_of_the_other_format_says_which(tmp_path):
    savemat(tmp_path / "j.mat", {"joints": _person().T})  # LSPET's (14, 3) given to convert lsp
    _one_error(*_run(["convert", "lsp", tmp_path / "j.mat", "--out", tmp_path / "o.json"])[::2], "j.mat",
               "'joints'", "(14, 3)", "posecal convert lspet")
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("fmt", ["lsp", "lspet"])
def test_a_logical_joints_array_is_refused(tmp_path, fmt):
    # scipy reads a MATLAB logical array as uint8 unless asked for MATLAB's class: 0/1 "coordinates" were converted
    j = np.zeros((3, 14, 2), dtype=bool) if fmt == "lsp" else np.ones((14, 3, 2), dtype=bool)
    savemat(tmp_path / "j.mat", {"joints": j})
    out = tmp_path / "o.json"
    _one_error(*_run(["convert", fmt, tmp_path / "j.mat", "--out", out])[::2], "j.mat", "'joints'", "logical")
    assert not out.exists()


# --- ids beyond 64 bits: one error line, not a traceback once the work is done ---------------------------
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


def _no_store(out: Path) -> None:
    left = [p.name for p in out.parent.iterdir() if p.name.startswith(out.name)]
    assert not left, left


@pytest.mark.parametrize("where, value, record", [
    ("image", 2**63, "images[0]"),        # fits JSON's unsigned 64 bits, not the store's int64
    ("image", 2**64 + 5, "images[0]"),    # read back by orjson as a float
    ("annotation", 2**63 + 1, "record 0"),
    ("category", 2**64, "categories[0]"),
])
def test_extract_refuses_ids_beyond_64_bits(shared, one, where, value, record):
    d = json.loads(json.dumps(one["data"]))
    if where == "image":
        d["images"][0]["id"] = d["annotations"][0]["image_id"] = value
    elif where == "annotation":
        d["annotations"][0]["id"] = value
    else:
        d["categories"][0]["id"] = d["annotations"][0]["category_id"] = value
    data, out = _write(one["tmp"] / "big.json", d), one["tmp"] / "st"
    _one_error(*_run(["extract", "--model", shared(*SP), "--data", data, "--images", one["images"],
                      "--out", out])[::2], "big.json", record, "'id'", "out of range")
    _no_store(out)


@pytest.mark.parametrize("where", ["image", "category"])
def test_detect_refuses_data_ids_beyond_64_bits(shared, one, where):
    d = json.loads(json.dumps(one["data"]))
    if where == "image":
        d["images"][0]["id"] = d["annotations"][0]["image_id"] = 2**64 + 5
    else:
        d["categories"][0]["id"] = d["annotations"][0]["category_id"] = 2**64
    data, out = _write(one["tmp"] / "big.json", d), one["tmp"] / "det.json"
    _one_error(*_run(["detect", "--model", shared(*ND), "--data", data, "--images", one["images"],
                      "--out", out])[::2], "big.json", "'id'", "out of range")
    assert not out.exists()


def test_detect_without_data_numbers_images_whose_stem_exceeds_64_bits_by_position(shared, one):
    # every stem is a number, one beyond int64: ids were those numbers, and writing the results failed
    name = one["data"]["images"][0]["file_name"]
    os.rename(one["images"] / name, one["images"] / "99999999999999999999999.jpg")
    shutil.copy(one["images"] / "99999999999999999999999.jpg", one["images"] / "7.jpg")
    out = one["tmp"] / "det.json"
    rc, _, err = _run(["detect", "--model", shared(*ND), "--images", one["images"], "--out", out])
    assert rc == 0, err
    got = {(b["image_id"], b["file_name"]) for b in orjson.loads(out.read_bytes())}
    assert got == {(1, "7.jpg"), (2, "99999999999999999999999.jpg")}


# --- extract --boxes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bbox", [[1e300, 10, 50, 50], [-1e300, -1e300, 50, 50], [10, -2e12, 50, 50]])
def test_extract_refuses_a_box_far_outside_its_image(shared, one, bbox):
    # was cropped (warned as "outside"): keypoints at 1e300 in the store, numpy overflow chatter on stderr
    d, iid = one["data"], one["data"]["images"][0]["id"]
    det = [{"image_id": iid, "category_id": 1, "bbox": d["annotations"][0]["bbox"], "score": 0.9},
           {"image_id": iid, "category_id": 1, "bbox": bbox, "score": 0.8}]
    data, boxes, out = _write(one["tmp"] / "d.json", d), _write(one["tmp"] / "det.json", det), one["tmp"] / "st"
    _one_error(*_run(["extract", "--model", shared(*SP), "--data", data, "--images", one["images"], "--boxes",
                      boxes, "--out", out])[::2], "det.json", "record 1", "'bbox'", "cannot be cropped")
    _no_store(out)


def test_extract_names_the_boxes_file_when_no_box_is_on_an_image_of_the_data(shared, one):
    # boxes of `posecal detect` without --data (ids = positions): the error blamed the data file's annotations
    det = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 80], "score": 0.9, "file_name": "a.jpg"},
           {"image_id": 2, "category_id": 1, "bbox": [10, 10, 50, 80], "score": 0.9, "file_name": "b.jpg"}]
    d = {**one["data"], "annotations": []}
    data, boxes, out = _write(one["tmp"] / "d.json", d), _write(one["tmp"] / "det.json", det), one["tmp"] / "st"
    line = _one_error(*_run(["extract", "--model", shared(*SP), "--data", data, "--images", one["images"],
                             "--boxes", boxes, "--out", out])[::2], "det.json", "'image_id'", "--data")
    assert "annotations" not in line
    _no_store(out)


def test_an_integer_joints_array_still_converts(tmp_path):
    # only MATLAB's logical class is refused: uint8 / int32 coordinates are numbers
    for dtype in (np.uint8, np.int32):
        savemat(tmp_path / "j.mat", {"joints": _person()[:, :, None].repeat(2, axis=2).astype(dtype)})
        rc, _, err = _run(["convert", "lsp", tmp_path / "j.mat", "--out", tmp_path / "o.json"])
        assert rc == 0, err


def test_extract_calls_a_file_given_as_images_not_a_folder(shared, one):
    data, out = _write(one["tmp"] / "d.json", one["data"]), one["tmp"] / "st"
    line = _one_error(*_run(["extract", "--model", shared(*SP), "--data", data, "--images", data,
                             "--out", out])[::2], "d.json", "'--images'", "not a folder")
    assert "not found" not in line
    _no_store(out)
