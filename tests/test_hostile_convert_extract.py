"""Hostile inputs to ``posecal convert`` / ``detect`` / ``extract`` found by an audit (2026-12-02): each bad
input is one error line naming the file, record and field, exit code 2, nothing written; legal-but-odd input
is kept and warned about."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from posecal.errors import PosecalInputError, PosecalWarning
from test_hostile_inputs import _one_error, _run


def _lsp(n: int = 3) -> np.ndarray:
    j = np.zeros((3, 14, n))
    j[0] = np.linspace(10, 50, 14)[:, None]
    j[1] = np.linspace(10, 90, 14)[:, None]
    return j


def _image(path: Path, size=(60, 100), mode="RGB") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path, format="TIFF" if mode == "F" else None)
    return path


# --- convert lsp / lspet ---------------------------------------------------------------------------------
def test_convert_refuses_unreadable_mat_files_in_words(tmp_path):
    import scipy.sparse

    out = tmp_path / "o.json"
    sparse = tmp_path / "sparse.mat"
    savemat(sparse, {"joints": scipy.sparse.csr_matrix(np.eye(3))})  # was a TypeError traceback
    empty = tmp_path / "empty.mat"
    empty.write_bytes(b"")
    hdf5 = tmp_path / "v73.mat"  # MATLAB v7.3: an HDF5 file behind a 512-byte MATLAB header
    hdf5.write_bytes(b"MATLAB 7.3 MAT-file".ljust(512, b" ") + b"\x89HDF\r\n\x1a\n" + bytes(600))
    bare = tmp_path / "bare.mat"  # an HDF5 file without the header ("Unknown mat file type, version 0, 0")
    bare.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(600))
    for fmt in ("lsp", "lspet"):
        _one_error(*_run(["convert", fmt, sparse, "--out", out])[::2], "sparse.mat", "'joints'", "sparse")
        _one_error(*_run(["convert", fmt, empty, "--out", out])[::2], "empty.mat", "empty file")
        for f in (hdf5, bare):
            _one_error(*_run(["convert", fmt, f, "--out", out])[::2], f.name, "v7.3 (HDF5)", "-v7")
    assert not out.exists()


def test_convert_images_folder_is_checked_before_the_people(tmp_path):
    mat = tmp_path / "j.mat"
    savemat(mat, {"joints": _lsp()})
    out = tmp_path / "o.json"
    (tmp_path / "afile").write_text("x")
    rc, _, err = _run(["convert", "lsp", mat, "--images", tmp_path / "afile", "--out", out])
    _one_error(rc, err, "afile", "'--images'", "not a folder")
    rc, _, err = _run(["convert", "lspet", mat, "--images", tmp_path / "nodir", "--out", out])
    _one_error(rc, err, "nodir", "'--images'", "not found")
    assert not out.exists()


def test_convert_warns_on_flat_people_and_people_off_their_image(tmp_path):
    j = _lsp()
    j[:2, :, 1] = 7.0  # person 2: every joint on one point -> a 0 x 0 box that extract cannot crop
    mat = tmp_path / "j.mat"
    savemat(mat, {"joints": j})
    img = tmp_path / "img"
    for i in (1, 2, 3):
        _image(img / f"im{i:04d}.jpg", (200, 200) if i != 3 else (4, 4))  # person 3 lies off its 4x4 image
    out = tmp_path / "o.json"
    rc, _, err = _run(["convert", "lsp", mat, "--images", img, "--out", out])
    assert rc == 0, err
    assert "warning:" in err and "zero-width or zero-height box (first: record 2, field 'joints')" in err
    assert "1 person(s) lie entirely outside their image (first: record 3" in err
    d = json.loads(out.read_text())
    assert d["annotations"][1]["bbox"] == [7.0, 7.0, 0.0, 0.0]  # written as it is, not squashed


def test_convert_keypoint_set_is_checked_first_and_named_plainly(tmp_path):
    mat = tmp_path / "j.mat"
    savemat(mat, {"joints": _lsp()})
    out = tmp_path / "o.json"
    line = _one_error(*_run(["convert", "lsp", mat, "--keypoint-set", "bogus", "--out", out])[::2],
                      "'--keypoint-set'", "unknown keypoint set 'bogus'")
    assert '"' not in line  # the KeyError's repr quotes are gone
    # an empty name silently meant "no remap" before
    _one_error(*_run(["convert", "lsp", mat, "--keypoint-set", "", "--out", out])[::2], "'--keypoint-set'", "empty")
    # checked before the source is read
    _one_error(*_run(["convert", "lsp", tmp_path / "none.mat", "--keypoint-set", "nope", "--out", out])[::2],
               "'--keypoint-set'")
    assert not out.exists()


def test_convert_mpii_names_the_record_of_an_overflowing_box_and_warns_on_repeats(tmp_path):
    rec = {"image": "a.jpg", "joints": [[5.0, 6.0]] * 16, "joints_vis": [1] * 16, "center": [30.0, 20.0],
           "scale": 0.2}
    out = tmp_path / "o.json"
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps([rec, {**rec, "scale": 1e306}]))
    # was "record 2: field 'bbox'" (the annotation id, not the record index the other errors use)
    _one_error(*_run(["convert", "mpii", huge, "--out", out])[::2], "record 1", "'scale'", "overflows")
    assert not out.exists()
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps([rec, {**rec, "scale": 0.3}, rec]))
    rc, _, err = _run(["convert", "mpii", dup, "--out", out])
    assert rc == 0 and "1 record(s) repeat an earlier one exactly (first: record 2 = record 0)" in err
    assert len(json.loads(out.read_text())["annotations"]) == 3  # kept, not deduplicated silently


# --- images and detect (no detector needed) --------------------------------------------------------------
def test_float_image_error_is_not_wrapped_twice(tmp_path):
    from posecal.models.crop import load_image

    p = _image(tmp_path / "f.tif", mode="F")
    with pytest.raises(PosecalInputError) as e:
        load_image(p, record=4)
    assert str(e.value).count("f.tif") == 1 and "PosecalInputError" not in str(e.value)
    assert e.value.record == 4 and e.value.field == "file_name"


def test_detect_image_listing_and_data_checks(tmp_path):
    from posecal.models.detect import detect_folder, image_ids

    img = tmp_path / "img"
    _image(img / "1.jpg")
    os.symlink(tmp_path / "gone.jpg", img / "2.jpg")  # a broken link was left out silently
    with pytest.warns(PosecalWarning, match="1 link\\(s\\) named like images lead to no file.*2.jpg"):
        assert image_ids(img, None) == [(1, "1.jpg")]
    with pytest.raises(PosecalInputError, match="not a folder"):
        image_ids(img / "1.jpg", None)
    with pytest.raises(PosecalInputError, match="'images': no image records"):  # wrote an empty file before
        image_ids(img, {"images": []}, data_file="d.json")
    data = {"images": [{"id": 5, "file_name": "1.jpg", "width": 600, "height": 1000}]}
    with pytest.warns(PosecalWarning, match="1.jpg is 60x100, the data says 600x1000"):
        assert image_ids(img, data, data_file="d.json") == [(5, "1.jpg")]
    (img / "3.jpg").write_text("not an image")
    with pytest.raises(PosecalInputError, match="record image_id 9: field 'file_name'"):
        detect_folder(lambda *a, **k: None, [(9, "3.jpg")], img, show_progress=False)


# --- extract (no model needed) ---------------------------------------------------------------------------
def _data(**ann) -> dict:
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 60, "height": 100}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 900.0,
                             "bbox": [10, 10, 30, 30], "num_keypoints": 17, "keypoints": [20.0, 20.0, 2] * 17,
                             **ann}],
            "categories": [{"id": 1, "name": "person"}]}


def test_vanishing_and_huge_boxes_are_refused_before_the_model(tmp_path):
    from posecal.datasets.coco import instances

    det = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 5e-324, 5e-324], "score": 0.9}]
    # was: "the model produced non-finite outputs" naming the model
    with pytest.raises(PosecalInputError, match="det.json: record 0: field 'bbox': .*too small to crop"):
        instances(_data(), boxes=det, boxes_file="det.json")
    with pytest.raises(PosecalInputError, match="d.json: record 0: field 'bbox': .*too small to crop"):
        instances(_data(bbox=[1, 1, 1e-310, 1e-310]), file="d.json")
    assert len(instances(_data(bbox=[1, 1, 1e-310, 20]), file="d.json")) == 1  # one real side is enough
    # gt boxes are checked against the image as detection boxes are
    with pytest.raises(PosecalInputError, match="record 0: field 'bbox': box 1e\\+300"):
        instances(_data(bbox=[1, 1, 1e300, 1e300]), file="d.json")
    with pytest.warns(PosecalWarning, match="1 annotation box\\(es\\) lie entirely outside their image"):
        assert len(instances(_data(bbox=[1e6, 1e6, 30, 30]), file="d.json")) == 1


def test_extract_inputs_warn_on_resized_images_and_name_an_empty_boxes_file(tmp_path):
    from posecal.models.extract import _read_inputs

    img = tmp_path / "img"
    _image(img / "a.jpg", (30, 50))
    with pytest.warns(PosecalWarning, match="a.jpg is 30x50, the data says 60x100"):
        _read_inputs(_data(), "d.json", None, img, False, False)
    (tmp_path / "det.json").write_text("[]")  # was blamed on the data's annotations
    with pytest.raises(PosecalInputError, match="det.json: field '--boxes': no detections"):
        _read_inputs(_data(), "d.json", str(tmp_path / "det.json"), img, False, False)


@pytest.mark.parametrize("env, needle", [({"WORLD_SIZE": "abc"}, "'WORLD_SIZE': expected an integer"),
                                         ({"WORLD_SIZE": "2", "RANK": "x"}, "'RANK': expected an integer"),
                                         ({"WORLD_SIZE": "9" * 30}, "'WORLD_SIZE'")])
def test_shard_from_env_is_checked(monkeypatch, env, needle):
    from posecal.models.extract import parse_shard

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(PosecalInputError, match=needle):  # was a ValueError traceback
        parse_shard(None)


def test_extract_shard_count_beyond_64_bits_is_refused(tmp_path):
    rc, _, err = _run(["extract", "--model", tmp_path / "m.onnx", "--data", tmp_path / "d.json", "--images",
                       tmp_path, "--out", tmp_path / "st", "--shard", "1/" + "9" * 20])
    _one_error(rc, err, "'--shard'", "at most")  # was an orjson TypeError traceback after the model ran
    assert not list(tmp_path.glob("st*"))


def test_extract_out_without_a_name_is_refused_or_resolved(tmp_path, monkeypatch):
    from posecal.cli.extract import _named_out

    rc, _, err = _run(["extract", "--model", tmp_path / "m.onnx", "--data", tmp_path / "d.json", "--images",
                       tmp_path, "--out", "/"])
    _one_error(rc, err, "'--out'", "filesystem root")
    monkeypatch.chdir(tmp_path)
    assert _named_out(".") == str(tmp_path)
    assert _named_out("x/..") == str(tmp_path)
    assert _named_out("st") == "st"


def test_extract_into_the_current_folder_runs(shared, tmp_path, monkeypatch):
    """``--out .`` was a ValueError traceback ("PosixPath('.') has an empty name")."""
    model = shared("models", "efficientpose", "EfficientPoseRT.tflite")
    lsp = shared("data", "lsp")
    data = tmp_path / "d.json"
    rc, _, err = _run(["convert", "lsp", lsp / "joints.mat", "--images", lsp / "images", "--split", "train",
                       "--out", data])
    assert rc == 0, err
    g = json.loads(data.read_text())
    g["images"], g["annotations"] = g["images"][:2], g["annotations"][:2]
    data.write_text(json.dumps(g))
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    rc, out, err = _run(["extract", "--model", model, "--data", data, "--images", lsp / "images", "--out", ".",
                         "--threads", "1"])
    assert rc == 0, err
    assert (here / "meta.json").is_file() and "instances     2" in out
