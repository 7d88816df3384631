"""Audit of ``posecal convert lsp / lspet / mpii`` (session 25): damaged joints files and image folders are one
error line naming the file, the record (person), the field and the joint; legal-but-odd input is converted and
warned about; random valid joints round-trip to COCO keypoints exactly (property tests)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.io import savemat

from posecal.datasets.lsp import read_lsp, read_lspet
from posecal.datasets.mpii import read_mpii
from posecal.datasets.remap import remap_keypoint_set
from posecal.errors import PosecalWarning
from posecal.keypoints import MPII16
from test_hostile_inputs import _one_error, _run


def _lsp(n: int = 3) -> np.ndarray:
    j = np.zeros((3, 14, n))
    j[0] = np.linspace(10, 50, 14)[:, None]
    j[1] = np.linspace(10, 90, 14)[:, None]
    return j


def _mat(path: Path, joints: np.ndarray, **more) -> Path:
    savemat(path, {"joints": joints, **more})
    return path


def _images(folder: Path, names: list[str], size=(60, 100)) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", size).save(folder / n)
    return folder


# --- damaged joints files ----------------------------------------------------------------------------------
def test_a_folder_given_as_the_joints_file_is_called_a_folder(tmp_path):
    out = tmp_path / "o.json"
    (tmp_path / "d.mat").mkdir()
    for fmt in ("lsp", "lspet"):
        _one_error(*_run(["convert", fmt, tmp_path / "d.mat", "--out", out])[::2], "d.mat", "is a folder")
    assert not out.exists()


def test_a_truncated_joints_mat_is_called_truncated_not_foreign(shared, tmp_path):
    out = tmp_path / "o.json"
    for ds in ("lsp", "lspet"):
        raw = shared("data", ds, "joints.mat").read_bytes()
        for cut in (200, len(raw) // 2, len(raw) - 1):
            bad = tmp_path / f"{ds}{cut}.mat"
            bad.write_bytes(raw[:cut])
            _one_error(*_run(["convert", ds, bad, "--out", out])[::2], bad.name, "truncated or corrupt MATLAB file")
        head = tmp_path / f"{ds}-header.mat"  # MATLAB's 128-byte header and nothing after it
        head.write_bytes(raw[:128])
        _one_error(*_run(["convert", ds, head, "--out", out])[::2], "'joints'", "holds none (truncated?)")
    assert not out.exists()


def test_a_file_without_joints_names_what_it_holds(tmp_path):
    p = tmp_path / "other.mat"
    savemat(p, {"pose": _lsp(), "names": np.zeros(3)})
    _one_error(*_run(["convert", "lsp", p, "--out", tmp_path / "o.json"])[::2], "'joints'", "'pose'", "'names'")


def test_a_file_of_no_people_is_a_joints_error_not_a_split_error(tmp_path):
    p = _mat(tmp_path / "none.mat", np.zeros((3, 14, 0)))
    line = _one_error(*_run(["convert", "lsp", p, "--out", tmp_path / "o.json"])[::2], "none.mat", "'joints'",
                      "no people")
    assert "'split'" not in line and "2000" not in line


@pytest.mark.parametrize("fmt, shape", [("lsp", (5, 14, 3)), ("lsp", (5, 3, 14)), ("lspet", (5, 14, 3)),
                                        ("lspet", (3, 5, 14))])
def test_axes_in_another_order_are_named_as_such(tmp_path, fmt, shape):
    p = _mat(tmp_path / "perm.mat", np.zeros(shape))
    _one_error(*_run(["convert", fmt, p, "--out", tmp_path / "o.json"])[::2], "'joints'", str(shape),
               "axes in another order")


@pytest.mark.parametrize("fmt", ["lsp", "lspet"])
@pytest.mark.parametrize("what", ["x", "y", "flag"])
def test_bad_values_name_the_person_the_joint_by_name_and_the_axis(tmp_path, fmt, what):
    j = _lsp(4)
    if fmt == "lspet":
        j[2] = 1
    j[{"x": 0, "y": 1, "flag": 2}[what], 9, 2] = np.inf if what == "y" else np.nan if what == "x" else 3
    p = _mat(tmp_path / "bad.mat", j if fmt == "lsp" else np.transpose(j, (1, 0, 2)).copy())
    line = _one_error(*_run(["convert", fmt, p, "--out", tmp_path / "o.json"])[::2], "bad.mat", "record 3",
                      "'joints'", "joint 10", "left_shoulder")
    assert ("unknown flag 3 at joint 10" if what == "flag" else
            f"non-finite coordinate at joint 10 (left_shoulder): {what} = {'inf' if what == 'y' else 'nan'}") in line
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("row, bad", [(2, 7.0), (0, np.nan)])
def test_the_first_bad_person_is_named_not_the_first_bad_joint(tmp_path, row, bad):
    j = _lsp(4)
    j[row, 11, 1] = bad  # person 2, joint 12
    j[row, 0, 2] = bad  # person 3, joint 1
    line = _one_error(*_run(["convert", "lsp", _mat(tmp_path / "b.mat", j), "--out", tmp_path / "o.json"])[::2],
                      "record 2", "joint 12", "left_wrist")
    assert "record 3" not in line


def test_lspet_joints_in_lsp_axis_order_warn_and_lsp_in_lspet_order_say_why(tmp_path):
    et = _lsp(4)
    et[2] = 1  # LSPET: flag 1 = annotated, here read by the LSP reader as "occluded"
    et[2, 0, 0] = 0
    with pytest.warns(PosecalWarning, match=r"98% of the joints carry flag 1.*LSP Extended file"):
        d = read_lsp(_mat(tmp_path / "et.mat", et))
    assert {v for a in d["annotations"] for v in a["keypoints"][2::3]} == {1, 2}  # converted as LSP says
    lsp = _lsp(4)  # flag 0 = visible everywhere, read by the LSPET reader as "not annotated"
    lsp[2, :3, 1:] = 1
    line = _one_error(*_run(["convert", "lspet", _mat(tmp_path / "l.mat", np.transpose(lsp, (1, 0, 2)).copy()),
                             "--out", tmp_path / "o.json"])[::2], "record 1", "no annotated joint",
                      "LSP file (flag 0 = visible) in LSPET's axis order")
    assert "16%" in line
    lsp[2, :3, 0] = 1  # every person has an annotated joint: converted, and warned about
    with pytest.warns(PosecalWarning, match=r"only 21% of the joints carry flag 1"):
        read_lspet(_mat(tmp_path / "l2.mat", np.transpose(lsp, (1, 0, 2)).copy()))


# --- image folders ------------------------------------------------------------------------------------------
def test_more_images_than_people_warns(tmp_path):
    p = _mat(tmp_path / "j.mat", _lsp(3))
    img = _images(tmp_path / "img", [f"im{k:04d}.jpg" for k in range(1, 6)] + ["im7.jpg", "im00009.jpg"])
    (img / "notes.txt").write_text("not one of the dataset's images")
    out = tmp_path / "o.json"
    rc, _, err = _run(["convert", "lsp", p, "--images", img, "--out", out])
    assert rc == 0 and out.exists()
    assert "warning" in err and "2 image(s) beyond the 3 people" in err and "im0004.jpg" in err
    et = np.transpose(_lsp(2), (1, 0, 2)).copy()
    et[:, 2] = 1
    img5 = _images(tmp_path / "img5", [f"im{k:05d}.jpg" for k in range(1, 4)])
    with pytest.warns(PosecalWarning, match=r"1 image\(s\) beyond the 2 people .*im00003.jpg"):
        read_lspet(_mat(tmp_path / "e.mat", et), img5)
    with warnings.catch_warnings():  # the split takes fewer people than the file has: no warning
        warnings.simplefilter("error")
        _images(tmp_path / "img3", [f"im{k:04d}.jpg" for k in range(1, 4)])
        read_lsp(p, tmp_path / "img3")


def test_missing_images_say_how_many_the_folder_holds(tmp_path):
    p = _mat(tmp_path / "j.mat", _lsp(5))
    out = tmp_path / "o.json"
    (tmp_path / "empty").mkdir()
    _one_error(*_run(["convert", "lsp", p, "--images", tmp_path / "empty", "--out", out])[::2], "im0001.jpg",
               "record 1", "'file_name'", "image missing", "the wrong --images folder?")
    img = _images(tmp_path / "img", [f"im{k:04d}.jpg" for k in range(1, 4)])
    _one_error(*_run(["convert", "lsp", p, "--images", img, "--out", out])[::2], "im0004.jpg", "record 4",
               "holds 3 of the dataset's images; the joints file has 5 people")
    (img / "im0004.jpg").mkdir()
    _one_error(*_run(["convert", "lsp", p, "--images", img, "--out", out])[::2], "im0004.jpg", "record 4",
               "not an image file (a folder?)")
    assert not out.exists()


# --- MPII: the fields it names are its own --------------------------------------------------------------
def _mpii_rec(**kw) -> dict:
    return {"image": "a.jpg", "joints": [[5.0, 6.0]] * 16, "joints_vis": [1] * 16, "center": [30.0, 20.0],
            "scale": 0.2, **kw}


def test_mpii_errors_name_mpii_fields(tmp_path):
    out = tmp_path / "o.json"
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    line = _one_error(*_run(["convert", "mpii", empty, "--out", out])[::2], "empty.json", "no person")
    assert "'split'" not in line
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps([_mpii_rec(), _mpii_rec(image="../up.jpg")]))
    _one_error(*_run(["convert", "mpii", bad, "--out", out])[::2], "record 1", "field 'image'", "inside the image")
    ok = tmp_path / "ok.json"
    ok.write_bytes(orjson.dumps([_mpii_rec()]))
    _one_error(*_run(["convert", "mpii", ok, "--images", tmp_path / "nodir", "--out", out])[::2], "nodir",
               "'--images'", "image folder not found")
    assert not out.exists()


# --- property tests: random valid joints round-trip exactly -------------------------------------------------
COORD = st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False)
PROP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# LSP-14 -> COCO-17 body joints (COCO order: shoulders, elbows, wrists, hips, knees, ankles; left first)
LSP_OF_COCO_BODY = [9, 8, 10, 7, 11, 6, 3, 2, 4, 1, 5, 0]


def _through_json(d: dict) -> dict:
    from posecal._util import dumps_json

    return orjson.loads(dumps_json(d, indent=False))  # what write_json_atomic writes


@PROP
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(
    arrays(np.float64, (2, 14, n), elements=COORD), arrays(np.int8, (14, n), elements=st.integers(0, 1)))),
    st.sampled_from([np.float64, np.float32, np.int32]))
def test_property_lsp_joints_round_trip_exactly(xy_flag, dtype):
    xy, flag = xy_flag
    j = np.concatenate([xy, flag[None].astype(np.float64)]).astype(dtype)
    stored = j.astype(np.float64)  # what MATLAB's array holds, as float64
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", PosecalWarning)  # flat boxes / mostly-occluded draws are legal
        d = _through_json(read_lsp(_mat(Path(tmp) / "j.mat", j)))
    n = j.shape[2]
    assert [im["id"] for im in d["images"]] == [a["image_id"] for a in d["annotations"]] == list(range(1, n + 1))
    assert [im["file_name"] for im in d["images"]] == [f"im{k:04d}.jpg" for k in range(1, n + 1)]
    kp = np.array([a["keypoints"] for a in d["annotations"]]).reshape(n, 14, 3)
    assert np.array_equal(kp[..., 0], stored[0].T) and np.array_equal(kp[..., 1], stored[1].T)  # no shift
    assert np.array_equal(kp[..., 2], np.where(stored[2].T == 0, 2, 1))  # visible 2, occluded 1
    for a, x, y in zip(d["annotations"], stored[0].T, stored[1].T, strict=True):
        assert a["bbox"] == [x.min(), y.min(), x.max() - x.min(), y.max() - y.min()]
        assert a["area"] == (x.max() - x.min()) * (y.max() - y.min()) and a["num_keypoints"] == 14


@PROP
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(
    arrays(np.float64, (14, 2, n), elements=COORD | st.just(np.nan)),
    arrays(np.bool_, (14, n)).filter(lambda m: m.any(axis=0).all()))))
def test_property_lspet_annotated_joints_round_trip_exactly_and_the_rest_is_zero(xy_lab):
    xy, lab = xy_lab
    xy = np.where(lab[:, None], np.nan_to_num(xy, nan=1.5), xy)  # NaN only where not annotated (legal there)
    j = np.concatenate([xy, lab[:, None].astype(np.float64)], axis=1)  # (14, 3, N)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", PosecalWarning)
        d = _through_json(read_lspet(_mat(Path(tmp) / "j.mat", j)))
    n = j.shape[2]
    kp = np.array([a["keypoints"] for a in d["annotations"]]).reshape(n, 14, 3)
    L = lab.T
    assert np.array_equal(kp[..., 0][L], j[:, 0].T[L]) and np.array_equal(kp[..., 1][L], j[:, 1].T[L])
    assert (kp[L][:, 2] == 2).all() and (kp[~L] == 0).all()
    for a, x, y, m in zip(d["annotations"], j[:, 0].T, j[:, 1].T, L, strict=True):
        assert a["bbox"] == [x[m].min(), y[m].min(), x[m].max() - x[m].min(), y[m].max() - y[m].min()]
        assert a["num_keypoints"] == m.sum()
    d17 = remap_keypoint_set(d, "coco17")  # the 12 body joints copied exactly; the face not annotated
    k17 = np.array([a["keypoints"] for a in d17["annotations"]]).reshape(n, 17, 3)
    assert np.array_equal(k17[:, 5:], kp[:, LSP_OF_COCO_BODY]) and (k17[:, :5] == 0).all()
    assert d17["categories"][0]["annotated_keypoints"] == d17["categories"][0]["keypoints"][5:]
    assert [a["bbox"] for a in d17["annotations"]] == [a["bbox"] for a in d["annotations"]]


@PROP
@given(st.lists(st.tuples(arrays(np.float64, (16, 2), elements=st.floats(-1e4, 1e4)),
                          arrays(np.int8, 16, elements=st.integers(0, 1)),
                          st.floats(0.01, 10.0)), min_size=1, max_size=4))
def test_property_mpii_joints_are_shifted_by_exactly_one_pixel(recs):
    data = [{"image": f"{i}.jpg", "joints": xy.tolist(), "joints_vis": vis.tolist(), "center": [50.0, 60.0],
             "scale": s} for i, (xy, vis, s) in enumerate(recs)]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "m.json"
        p.write_bytes(orjson.dumps(data))
        d = _through_json(read_mpii(p))
    assert d["categories"][0]["keypoints"] == list(MPII16.names)
    for a, (xy, vis, s) in zip(d["annotations"], recs, strict=True):
        kp = np.array(a["keypoints"]).reshape(16, 3)
        lab = vis > 0
        assert np.array_equal(kp[lab, :2], xy[lab] - 1.0) and (kp[~lab] == 0).all()  # MATLAB 1-based -> 0-based
        assert np.array_equal(kp[:, 2], np.where(lab, 2, 0)) and a["area"] == (s * 200.0) ** 2

