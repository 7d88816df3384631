"""Hostile inputs found by an audit of the contract commands (2026-12-02): each case gets one error line and
exit code 2 with nothing written, or — where the input is legal — the reference's numbers and a warning."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from _cocogen import make_coco_set
from posecal.cli import main
from posecal.errors import PosecalInputError, PosecalWarning

SP_MODEL = ("models", "simplepose", "ultralight-nano-simplepose.onnx")


def _run(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's own errors (one line: posecal.cli._args)
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _one_error(rc: int, err: str, *needles: str) -> str:
    """Exit 2 and one error line (warnings aside), no traceback, naming each of ``needles``; returns the line."""
    lines = [ln for ln in err.strip().splitlines() if ": warning: " not in ln]
    assert rc == 2 and len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def coco(tmp_path):
    gt, res = make_coco_set(31, n_images=5, max_gts=3, max_dets=4)
    return gt, res, _write(tmp_path / "gt.json", gt), _write(tmp_path / "pred.json", res)


# --- evaluate / compare ---------------------------------------------------------------------------------
def test_partial_area_is_an_error_naming_the_record(coco, tmp_path):
    gt, _, _, pred = coco
    g = copy.deepcopy(gt)
    ann = g["annotations"][1]
    del ann["area"]
    gp = _write(tmp_path / "g.json", g)
    rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred])
    _one_error(rc, err, f"record {ann['id']}", "'area'", "--no-use-area")
    assert _run(["evaluate", "--gt", gp, "--pred", pred, "--no-use-area"])[0] == 0
    for a in g["annotations"]:  # none has an area: the documented box-area fallback, no error
        a.pop("area", None)
    rc, _, err = _run(["evaluate", "--gt", _write(tmp_path / "g0.json", g), "--pred", pred])
    assert rc == 0 and "no 'area'" in err


def test_extreme_sigmas_are_refused_not_crashed(coco):
    _, _, gp, pred = coco
    for s in ("1e200", "1e-320"):
        rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--sigmas", *[s] + ["0.05"] * 16])
        _one_error(rc, err, "sigmas'", "out of range")  # field '--sigmas' (checked with the flag, s28)
    # large but representable sigmas run (the candidate-pair bound no longer overflows a Python float)
    rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--sigmas", *["1e100"] + ["0.05"] * 16])
    assert rc == 0, err


def test_json_inside_report_and_directory_json_are_refused(coco, tmp_path):
    pytest.importorskip("matplotlib")
    _, _, gp, pred = coco
    rep = tmp_path / "rep"
    rep.mkdir()
    rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--report", rep, "--json", rep / "out.json"])
    _one_error(rc, err, "'--json'", "inside --report")
    rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--json", str(tmp_path / "newdir") + "/"])
    _one_error(rc, err, "'--json'", "is a directory")
    assert not (tmp_path / "newdir").exists()


def test_report_survives_scores_near_the_float_limit(coco, tmp_path):
    pytest.importorskip("matplotlib")
    _, res, gp, _ = coco
    r = copy.deepcopy(res)
    r[0]["score"], r[1]["score"] = 1e308, -1e308
    rep = tmp_path / "rep"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no raw numpy overflow warning reaches the user
        rc, out, err = _run(["evaluate", "--gt", gp, "--pred", _write(tmp_path / "p.json", r), "--report", rep])
    assert rc == 0, err
    assert "kept as they are" in err  # legal input: warned about, not squashed
    assert (rep / "index.html").is_file() and (rep / "reliability.png").is_file()
    assert "Traceback" not in err


def test_reliability_edges_stay_finite_and_increasing():
    from posecal.calibration.metrics import calibration_error as reliability

    r = reliability(np.array([-1e308, 0.2, 0.5, 1e308]), np.array([0.1, 0.3, 0.5, 0.9]), n_bins=10)
    assert np.isfinite(r.edges).all() and (np.diff(r.edges) > 0).all()
    assert r.count.sum() == 4
    r0 = reliability(np.array([0.1, 0.6]), np.array([0.0, 1.0]), n_bins=10)  # ordinary range: unchanged
    np.testing.assert_array_equal(r0.edges, np.linspace(0.0, 1.0, 11))


def test_iscrowd_booleans_read_as_pycocotools_reads_them(coco, tmp_path):
    pytest.importorskip("pycocotools")
    from test_cocoeval_cli import _pycocotools_summary

    gt, res, _, pred = coco
    g = copy.deepcopy(gt)
    for a in g["annotations"]:
        a["iscrowd"] = bool(a["iscrowd"])
    g["annotations"][0]["iscrowd"] = True
    _, want = _pycocotools_summary(g, res)
    out = tmp_path / "o.json"
    rc, _, err = _run(["evaluate", "--gt", _write(tmp_path / "g.json", g), "--pred", pred, "--json", out])
    assert rc == 0, err
    got = json.loads(out.read_text())["coco"]
    np.testing.assert_array_equal([got[k] for k in ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75",
                                                    "ARm", "ARl")], want)


def test_compare_refuses_nothing_to_score_and_absurd_resamples(coco, tmp_path):
    gt, res, gp, pred = coco
    rc, _, err = _run(["compare", "--gt", gp, pred, pred, "--resamples", "99999999999999999999"])
    _one_error(rc, err, "--resamples", "1,000,000")
    g = copy.deepcopy(gt)
    for a in g["annotations"]:
        a["keypoints"][2::3] = [0] * (len(a["keypoints"]) // 3)
        a["num_keypoints"] = 0
    rc, out, err = _run(["compare", "--gt", _write(tmp_path / "g.json", g), pred, pred, "--resamples", "5"])
    _one_error(rc, err, "'annotations'", "undefined")
    assert "-1.0" not in out


# --- convert --------------------------------------------------------------------------------------------
def _lsp(tmp_path: Path, n: int, name: str = "j.mat", dtype=np.float64, edit=None) -> Path:
    from scipy.io import savemat

    j = np.zeros((3, 14, n), dtype=np.float64)
    j[0] = np.linspace(10, 60, 14)[:, None]
    j[1] = np.linspace(20, 90, 14)[:, None]
    if edit is not None:
        edit(j)
    p = tmp_path / name
    savemat(p, {"joints": j.astype(dtype)})
    return p


def test_convert_lsp_refuses_unrepresentable_boxes_and_non_real_joints(tmp_path):
    out = tmp_path / "o.json"
    huge = _lsp(tmp_path, 3, "huge.mat", edit=lambda j: j.__setitem__((slice(0, 2), 4, 1), (-1.7e308, 1.7e308)))
    rc, _, err = _run(["convert", "lsp", huge, "--out", out])
    _one_error(rc, err, "record 2", "not finite")
    cplx = _lsp(tmp_path, 3, "c.mat", dtype=np.complex128)
    rc, _, err = _run(["convert", "lsp", cplx, "--out", out])
    _one_error(rc, err, "'joints'", "complex")
    assert not out.exists()


def test_convert_lsp_split_all_keeps_every_person_and_warns_on_odd_sizes(tmp_path):
    from posecal.datasets.lsp import read_lsp

    p = _lsp(tmp_path, 2003)
    assert len(read_lsp(p, split="all")["annotations"]) == 2003
    with pytest.warns(PosecalWarning, match="holds 1200 people, so split 'test' takes people 1001–1200"):
        d = read_lsp(_lsp(tmp_path, 1200, "b.mat"), split="test")
    assert len(d["annotations"]) == 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_lsp(_lsp(tmp_path, 2000, "c.mat"), split="train")["annotations"]) == 1000


def test_convert_mpii_flags_and_images(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "img" / "a.jpg")
    rec = {"image": "a.jpg", "joints": [[5.0, 6.0]] * 16, "joints_vis": [1] * 16, "center": [30.0, 20.0],
           "scale": 0.2}
    out = tmp_path / "o.json"
    ok = _write(tmp_path / "ok.json", [rec])
    assert _run(["convert", "mpii", ok, "--images", tmp_path / "img", "--out", out])[0] == 0
    out.unlink()
    bad = _write(tmp_path / "bad.json", [{**rec, "joints_vis": [2] + [1] * 15}])
    rc, _, err = _run(["convert", "mpii", bad, "--out", out])
    _one_error(rc, err, "record 0", "'joints_vis'")
    rc, _, err = _run(["convert", "mpii", ok, "--images", tmp_path / "nodir", "--out", out])
    _one_error(rc, err, "'--images'")
    missing = _write(tmp_path / "m.json", [{**rec, "image": "b.jpg"}])
    rc, _, err = _run(["convert", "mpii", missing, "--images", tmp_path / "img", "--out", out])
    _one_error(rc, err, "b.jpg", "image missing")
    assert not out.exists()


# --- extract inputs (no model needed) ------------------------------------------------------------------
def _data() -> dict:
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
                       {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 900.0,
                             "bbox": [10, 10, 30, 30], "num_keypoints": 17,
                             "keypoints": [20.0, 20.0, 2] * 17}],
            "categories": [{"id": 1, "name": "person", "keypoints": None}]}


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["images"][1].__setitem__("file_name", "a.jpg"), "also names images[0]"),
    (lambda d: d["annotations"].append({**d["annotations"][0]}), "duplicate annotation id 7"),
    (lambda d: d["annotations"][0].__setitem__("area", -4.0), "negative area"),
    (lambda d: d["annotations"][0].__setitem__("category_id", 2), "unknown category_id 2"),
    (lambda d: d.__setitem__("categories", []), "empty"),
])
def test_extract_data_is_checked_as_evaluate_checks_it(edit, needle):
    from posecal.datasets.coco import read_coco

    d = _data()
    del d["categories"][0]["keypoints"]
    edit(d)
    with pytest.raises(PosecalInputError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        read_coco(d, file="data.json")


def test_detection_boxes_need_a_score_and_a_place_on_the_image():
    from posecal.datasets.coco import instances

    d = _data()
    det = [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 40, 50], "score": 0.9}]
    assert len(instances(d, boxes=det, file="d.json", boxes_file="det.json")) == 1
    with pytest.raises(PosecalInputError, match="missing"):
        instances(d, boxes=[{k: v for k, v in det[0].items() if k != "score"}], boxes_file="det.json")
    with pytest.raises(PosecalInputError, match="1e\\+300"):
        instances(d, boxes=[{**det[0], "bbox": [0, 0, 1e300, 1e300]}], boxes_file="det.json")
    with pytest.warns(PosecalWarning, match="entirely outside their image"):
        got = instances(d, boxes=[{**det[0], "bbox": [5000, 5000, 40, 40]}], boxes_file="det.json")
    assert len(got) == 1  # kept (scored from padding), not dropped


def test_sixteen_bit_grayscale_keeps_its_high_byte(tmp_path):
    from PIL import Image

    from posecal.models.crop import load_image

    g = (np.arange(40 * 30, dtype=np.uint32).reshape(40, 30) * 50).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "g.png")
    a = load_image(tmp_path / "g.png")
    assert a.dtype == np.uint8 and a.shape == (40, 30, 3)
    np.testing.assert_array_equal(a[..., 0], (g >> 8).astype(np.uint8))
    np.testing.assert_array_equal(a[..., 0], a[..., 2])


def test_unknown_keypoint_names_taken_by_count_are_warned_about():
    from posecal.datasets.coco import keypoint_set

    d = _data()
    d["categories"][0]["keypoints"] = [f"p{i}" for i in range(17)]
    with pytest.warns(PosecalWarning, match="match no known keypoint set"):
        assert keypoint_set(d, file="d.json").num_keypoints == 17


# --- extract with the real SimplePose model ---------------------------------------------------------------
def test_card_that_does_not_fit_the_model_fails_before_a_store_exists(shared, mini, tmp_path):
    from posecal.models.cards import BUILTIN_CARDS

    data, img, _ = mini
    model = shared(*SP_MODEL)
    card = copy.deepcopy(next(c for c in BUILTIN_CARDS.values() if c["name"] == "ultralight-nano-simplepose"))
    out = tmp_path / "store"
    for field, value, needle in (("name", "wrong", "does not run as its card describes"),
                                 ("size", [256, 256], "does not run as its card describes")):
        c = copy.deepcopy(card)
        c["input"][field] = value
        cp = _write(tmp_path / f"card_{field}.json", c)
        rc, _, err = _run(["extract", "--model", model, "--model-card", cp, "--data", data, "--images", img,
                           "--out", out])
        _one_error(rc, err, "'--model-card'", needle)
        assert not out.exists() and not (tmp_path / "store.all").exists()
    c = copy.deepcopy(card)
    c["sha256"] = "a" * 64
    rc, _, err = _run(["extract", "--model", model, "--model-card", _write(tmp_path / "c.json", c), "--data",
                       data, "--images", img, "--out", out])
    _one_error(rc, err, "'sha256'", "another model file")
    rc, _, err = _run(["extract", "--model", model, "--tensor", "nope", "--data", data, "--images", img,
                       "--out", out])
    _one_error(rc, err, "'--tensor'", "'nope'")
    assert not out.exists()


def test_detection_store_reruns_and_failures_leave_no_staging_store(shared, mini, tmp_path):
    data, img, det = mini
    model = shared(*SP_MODEL)
    out = tmp_path / "store"
    argv = ["extract", "--model", model, "--data", data, "--images", img, "--boxes", det, "--out", out]
    rc, _, err = _run(argv)
    assert rc == 0, err
    before = (out / "predictions.json").read_bytes()
    rc, _, err = _run(argv)  # finished earlier with the same settings: returned as it is
    assert rc == 0, err
    assert (out / "predictions.json").read_bytes() == before
    # a damaged chunk of the finished store: the re-run (and apply) names it and says to delete the store
    chunk = sorted((out / "arrays" / "sigma_hat").iterdir())[0]
    good = chunk.read_bytes()
    chunk.write_bytes(good[:100])
    for cmd in (argv, ["rescore", "--store", out, "--method", "closed-form", "--out", tmp_path / "r.json"]):
        rc, _, err = _run(cmd)
        _one_error(rc, err, "chunk 0 of array 'sigma_hat'", "delete the store and re-run posecal extract")
    chunk.write_bytes(good)
    first = sorted(img.iterdir())[0]
    first.write_bytes(first.read_bytes()[:200])  # truncated image: one error line, no OUT, no OUT.all
    out2 = tmp_path / "store2"
    rc, _, err = _run(argv[:-1] + [out2])
    _one_error(rc, err, first.name)
    assert not out2.exists() and not (tmp_path / "store2.all").exists()


def test_detections_on_images_without_people_and_reordered_predictions(shared, mini, tmp_path):
    data, img, det = mini
    model = shared(*SP_MODEL)
    d = json.loads(data.read_text())
    d["annotations"] = []
    empty = _write(tmp_path / "empty.json", d)
    st = tmp_path / "st"
    rc, _, err = _run(["extract", "--model", model, "--data", empty, "--images", img, "--boxes", det, "--out", st])
    assert rc == 0, err
    # nothing matches a person: rescoring works (every detection lacks a gt), training is refused
    rc, _, err = _run(["rescore", "--store", st, "--method", "closed-form", "--out", tmp_path / "cf.json"])
    assert rc == 0 and "Traceback" not in err, err
    rc, _, err = _run(["fit", "--store", st, "--out", tmp_path / "head"])
    _one_error(rc, err, "nothing but zeros to learn")
    assert not (tmp_path / "head").exists()
    # predictions.json rows out of the store's row order (checksum dropped, as a hand edit would): refused
    meta = json.loads((st / "meta.json").read_text())
    meta["files"].pop("predictions.json")
    (st / "meta.json").write_text(json.dumps(meta))
    recs = json.loads((st / "predictions.json").read_text())
    ids = [r["image_id"] for r in recs]
    j = next(i for i in range(len(ids)) if ids[i] != ids[0])
    recs[0], recs[j] = recs[j], recs[0]
    (st / "predictions.json").write_text(json.dumps(recs))
    rc, _, err = _run(["rescore", "--store", st, "--method", "closed-form", "--out", tmp_path / "cf2.json"])
    _one_error(rc, err, "predictions.json", "record 0", "'image_id'", "reordered")
    assert not (tmp_path / "cf2.json").exists()


def test_rescore_refuses_a_box_score_that_is_not_a_number(coco, tmp_path):
    _, res, gp, _ = coco
    r = copy.deepcopy(res)
    for x in r:
        x["bbox_score"] = 0.8
    r[2]["bbox_score"] = "x"
    out = tmp_path / "o.json"
    rc, _, err = _run(["rescore", "--pred", _write(tmp_path / "p.json", r), "--gt", gp, "--method", "mmpose-bbox",
                       "--out", out])
    _one_error(rc, err, "record 2", "'bbox_score'")
    assert not out.exists()


def test_non_finite_store_rows_are_named():
    from posecal.ccnet.targets import check_finite_rows

    a = np.zeros((4, 3, 2))
    check_finite_rows(a, "S", "features_kpt")
    a[2, 1, 0] = np.nan
    a[3, 0, 1] = np.inf
    with pytest.raises(PosecalInputError, match=r"2 rows hold NaN or infinite values \(first: row 2\)") as e:
        check_finite_rows(a, "S", "features_kpt")
    assert (e.value.file, e.value.record, e.value.field) == ("S", 2, "features_kpt")


# --- outputs and arguments (second audit round) --------------------------------------------------------------
def test_folder_outputs_are_all_or_nothing_when_a_name_clashes(tmp_path):
    from posecal._outputs import atomic_dir

    out = tmp_path / "rep"
    (out / "b.png").mkdir(parents=True)  # a folder where the run writes a file
    (out / "a.json").write_text("old")
    with pytest.raises(PosecalInputError, match="b.png exists and is not a file") as e:
        with atomic_dir(out) as d:
            (d / "a.json").write_text("new")
            (d / "b.png").write_text("new")
    assert e.value.field == "--out"
    assert (out / "a.json").read_text() == "old"  # untouched: the clash was found before any file moved
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temporary folder left


def test_empty_paths_and_unbounded_counts_are_refused(coco, tmp_path):
    _, _, gp, pred = coco
    for argv, flag in ((["study", "visibility", "--store", tmp_path, "--out", ""], "--out"),
                       (["demo", "--out", ""], "--out"),
                       (["evaluate", "--gt", gp, "--pred", pred, "--report", ""], "--report")):
        rc, _, err = _run(argv)
        _one_error(rc, err, f"'{flag}'", "empty path")
    rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--random-seeds", "5000"])
    _one_error(rc, err, "--random-seeds")
    rc, _, err = _run(["study", "visibility", "--store", tmp_path, "--out", tmp_path / "o", "--tau", "-1"])
    _one_error(rc, err, "--tau")


def test_head_files_are_shareable(tmp_path):
    torch = pytest.importorskip("torch")
    import os

    from posecal._util import current_umask
    from posecal.ccnet.checkpoint import save_head
    from posecal.ccnet.heads import CCNetHead

    del torch
    save_head(tmp_path / "h", CCNetHead("kpt", 5, 17), {"feature_tensor": "features_kpt", "feature_shape": [17, 5],
                                                        "keypoint_set": "coco17"})
    want = 0o666 & ~current_umask()
    for f in ("head.json", "head.safetensors"):
        assert os.stat(tmp_path / "h" / f).st_mode & 0o777 == want, f


def test_demo_with_a_detector_as_pose_model_writes_nothing(shared, tmp_path):
    out = tmp_path / "demo"
    rc, _, err = _run(["demo", "--lsp", shared("data", "lsp"), "--model",
                       shared("models", "nanodet", "nanodet-m-416.onnx"), "--out", out])
    _one_error(rc, err, "'--model'", "detector")
    assert not out.exists()


def test_export_names_the_head_problem_before_touching_the_model(shared, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from posecal.ccnet.checkpoint import save_head
    from posecal.ccnet.export import export_calibrated, export_head_only
    from posecal.ccnet.heads import CCNetHead

    meta = {"feature_tensor": "features_kpt", "keypoint_set": "coco17", "pooling": "heatmap",
            "model_tensor": "hybridsequential0_relu6_fwd", "model_sha256": "a" * 64}
    save_head(tmp_path / "inst", CCNetHead("kpt_inst", 134, 17), {**meta, "feature_shape": [17, 134]})
    with pytest.raises(PosecalInputError, match="head-only ONNX does not take") as e:
        export_head_only(tmp_path / "none.tflite", tmp_path / "inst", tmp_path / "o.onnx")
    assert e.value.file.endswith("head.json") and e.value.field == "head"
    save_head(tmp_path / "kpt", CCNetHead("kpt", 128, 17), {**meta, "feature_shape": [17, 128]})
    with pytest.raises(PosecalInputError, match="fitted on another model") as e:
        export_calibrated(shared(*SP_MODEL), tmp_path / "kpt", tmp_path / "o.onnx")
    assert e.value.field == "model_sha256"
    assert not (tmp_path / "o.onnx").exists()


# --- third audit round ------------------------------------------------------------------------------------
def test_fit_refuses_the_same_store_twice(tmp_path):
    (tmp_path / "S").mkdir()
    rc, _, err = _run(["fit", "--store", tmp_path / "S", "--store", f"{tmp_path / 'S'}/.", "--out", tmp_path / "H"])
    _one_error(rc, err, "'--store'", "given twice")
    assert not (tmp_path / "H").exists()


def test_detect_data_with_one_picture_under_two_ids_is_refused(tmp_path):
    from posecal.models.detect import read_data

    d = _data()
    d["images"][1]["file_name"] = "a.jpg"
    with pytest.raises(PosecalInputError, match=r"also names images\[0\]") as e:
        read_data(_write(tmp_path / "d.json", d))
    assert (e.value.record, e.value.field) == ("images[1]", "file_name")


def test_extract_names_a_boxes_file_without_people(shared, mini, tmp_path):
    data, img, det = mini
    b = json.loads(det.read_text())
    for x in b:
        x["category_id"] = 0  # person = class 0, as Ultralytics numbers it
    rc, _, err = _run(["extract", "--model", shared(*SP_MODEL), "--data", data, "--images", img, "--boxes",
                       _write(tmp_path / "d0.json", b), "--out", tmp_path / "st"])
    _one_error(rc, err, "d0.json", "'category_id'", "keypoint category (category_id 1; found 0)")
    assert not (tmp_path / "st").exists()


def test_extract_crops_the_detections_of_the_datas_own_keypoint_category(shared, mini, tmp_path):
    """A dataset whose keypoint category is not COCO's person id 1 (e.g. an animal set): --boxes crops the
    detections of that category (others are ignored), and the store's results carry it."""
    data, img, det = mini
    d = json.loads(data.read_text())
    d["categories"][0]["id"] = 7
    for a in d["annotations"]:
        a["category_id"] = 7
    b = json.loads(det.read_text())
    mixed = [{**x, "category_id": 7} for x in b] + [{**x, "category_id": 1, "score": 0.99} for x in b]
    rc, _, err = _run(["extract", "--model", shared(*SP_MODEL), "--data", _write(tmp_path / "d7.json", d),
                       "--images", img, "--boxes", _write(tmp_path / "b7.json", mixed), "--out", tmp_path / "st",
                       "--oks-nms", "1"])
    assert rc == 0, err
    pred = json.loads((tmp_path / "st" / "predictions.json").read_text())
    assert len(pred) == len(b) and {p["category_id"] for p in pred} == {7}
    from posecal.models.store import FeatureStore

    assert (FeatureStore.open(tmp_path / "st").read("box_score") == 0.9).all()  # category 7's boxes, not 1's
    only1 = [{**x, "category_id": 1} for x in b]  # e.g. a person detector's file for an animal set
    rc, _, err = _run(["extract", "--model", shared(*SP_MODEL), "--data", tmp_path / "d7.json", "--images", img,
                       "--boxes", _write(tmp_path / "b1.json", only1), "--out", tmp_path / "st1"])
    _one_error(rc, err, "b1.json", "'category_id'", "category_id 7; found 1")
    assert not (tmp_path / "st1").exists()


def test_a_store_whose_keypoint_set_was_edited_is_named(shared, mini, tmp_path):
    data, img, _ = mini
    st = tmp_path / "st"
    assert _run(["extract", "--model", shared(*SP_MODEL), "--data", data, "--images", img, "--out", st])[0] == 0
    meta = json.loads((st / "meta.json").read_text())
    meta["keypoint_set"] = "lsp14"
    (st / "meta.json").write_text(json.dumps(meta))
    rc, _, err = _run(["fit", "--store", st, "--out", tmp_path / "h"])
    _one_error(rc, err, "meta.json", "'keypoint_set'", "edited?")


def test_remap_lsp_to_mpii_keeps_the_neck():
    from posecal.datasets.remap import source_index
    from posecal.keypoints import LSP14, MPII16

    idx = dict(zip(MPII16.names, source_index(LSP14, MPII16).tolist(), strict=True))
    assert idx["upper_neck"] == LSP14.names.index("neck") and idx["head_top"] == LSP14.names.index("head_top")
    assert idx["pelvis"] == idx["thorax"] == -1  # LSP has neither: not annotated by this dataset
    back = dict(zip(LSP14.names, source_index(MPII16, LSP14).tolist(), strict=True))
    assert back["neck"] == MPII16.names.index("upper_neck")


def test_occlusion_study_with_a_simplepose_kpt_inst_head_matches_apply(shared, mini, tmp_path):
    """SimplePose's card asks for the instance evidence: the study appends it as store_features does."""
    data, img, _ = mini
    model = shared(*SP_MODEL)
    st, head, cal = tmp_path / "st", tmp_path / "head", tmp_path / "cal.json"
    assert _run(["extract", "--model", model, "--data", data, "--images", img, "--out", st])[0] == 0
    rc, _, err = _run(["fit", "--store", st, "--out", head, "--steps", "50"])
    assert rc == 0, err
    assert json.loads((head / "head.json").read_text())["head"] == "kpt_inst"
    assert _run(["apply", "--store", st, "--head", head, "--out", cal])[0] == 0
    from posecal.keypoints import COCO17

    anns = [a for a in json.loads(data.read_text())["annotations"] if not a["iscrowd"]]
    vis2 = np.array([np.asarray(a["keypoints"]).reshape(-1, 3)[:, 2] == 2 for a in anns]).sum(0)
    joint = COCO17.names[int(np.argmax(vis2))]  # the joint most people show: more rows to compare
    rc, out, err = _run(["study", "occlusion", "--model", model, "--data", data, "--images", img, "--joint", joint,
                         "--head", head, "--radii", "0", "--out", tmp_path / "occ", "--json"])
    assert rc == 0, err
    res = json.loads(out)
    from posecal.models.store import FeatureStore

    j = COCO17.names.index(joint)
    fs = FeatureStore.open(st)
    ann = list(fs.read("ann_id"))
    recs = json.loads(cal.read_text())
    rows = [ann.index(a) for a in res["ann_ids"]]
    assert len(rows) == int(vis2.max())
    got = res["per_instance"]["occluder"][0]["ccnet_confidence"]
    np.testing.assert_allclose(got, [recs[r]["keypoints"][3 * j + 2] for r in rows], atol=1e-5)


def test_boolean_iscrowd_and_boxes_checked_against_the_image_header_size(tmp_path):
    from posecal.datasets.coco import instances, read_coco
    from posecal.models.detect import read_data

    d = _data()
    d["annotations"][0]["iscrowd"] = False
    del d["categories"][0]["keypoints"]
    read_coco(copy.deepcopy(d), file="d.json")  # JSON true/false read as 1/0, as evaluate and pycocotools do
    read_data(_write(tmp_path / "d.json", d))
    for im in d["images"]:
        del im["width"], im["height"]
    det = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1e300, 1e300], "score": 0.9}]
    assert len(instances(d, boxes=det, boxes_file="det.json")) == 1  # no size known: nothing to check against
    with pytest.raises(PosecalInputError, match="on a 100 × 80 image"):
        instances(d, boxes=det, boxes_file="det.json", image_size=lambda name: (100, 80))


def test_ctrl_c_while_modules_load_is_one_line_exit_130(monkeypatch, capsys):
    """A KeyboardInterrupt raised before main's own handler (e.g. while a subcommand's modules import) is
    still one line and exit 130, not a traceback."""
    import posecal.cli as cli

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    monkeypatch.setattr(cli, "_exit_interrupted", sys.exit)  # in-process: os._exit would end pytest itself
    with pytest.raises(SystemExit) as e:
        cli.console_main()
    assert e.value.code == 130
    assert capsys.readouterr().err == "posecal: interrupted\n"
