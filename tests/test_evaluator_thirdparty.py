"""Third-party evaluator cases: unusual but valid COCO keypoint files, as users have them, through
``posecal evaluate`` and against the reference evaluators loading the same FILES (``COCO(path)`` and
``loadRes(path)``, as MMPose and the cocoapi scripts do; xtcocotools fills a missing ``iscrowd`` only there).

Where pycocotools gives numbers posecal must give the same 10 stats; where only xtcocotools runs (pycocotools
fails with ``KeyError``), xtcocotools'. Invalid input: one error line naming file, record and field, exit
code 2, no output file."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _cocogen import make_coco_set
from _cocoref import posecal_evaluate_json, reference_stats_from_files
from posecal.cli import main
from posecal.metrics.cocoeval import STAT_NAMES

pytest.importorskip("pycocotools")
pytest.importorskip("xtcocotools")

_HSET = settings(max_examples=25, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ---- runners ----------------------------------------------------------------------------------------------
def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _stats(doc: dict) -> np.ndarray:
    return np.array([doc["coco"][k] for k in STAT_NAMES])


def _case(tmp_path: Path, name: str, gt, res) -> tuple[Path, Path]:
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    return _write(d / "gt.json", gt), _write(d / "res.json", res)


def assert_matches(tmp_path: Path, name: str, gt, res, reference: str = "pycocotools") -> str:
    """posecal's stats on the files equal ``reference``'s bit for bit; returns posecal's stderr."""
    gp, rp = _case(tmp_path, name, gt, res)
    want = reference_stats_from_files(reference, gp, rp)
    rc, doc, err = posecal_evaluate_json(gp, rp)
    assert rc == 0, (name, err)
    np.testing.assert_array_equal(_stats(doc), want, err_msg=name)
    return err


def assert_refused(tmp_path: Path, name: str, gt, res, *, file: str, record, field: str) -> str:
    """Exit code 2, one line naming file, record and field, nothing written."""
    gp, rp = _case(tmp_path, name, gt, res)
    out = gp.parent / "out.json"
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = main(["evaluate", "--gt", str(gp), "--pred", str(rp), "--json", str(out)])
    lines = e.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1, (name, e.getvalue())
    line = lines[0]
    path = gp if file == "gt" else rp
    assert line.startswith("posecal evaluate: error: ") and str(path) in line, (name, line)
    if record is not None:
        assert f"record {record}:" in line, (name, line)
    assert f"field '{field}'" in line, (name, line)
    assert not out.exists() and o.getvalue() == "" and not list(gp.parent.glob(".out.json*")), name
    return line


def _set(seed: int, **kw) -> tuple[dict, list]:
    kw = {"n_images": 4, "max_gts": 5, "max_dets": 8, **kw}
    return make_coco_set(seed, **kw)


def _xt_set(seed: int, **kw) -> tuple[dict, list]:
    """A set on which pycocotools and xtcocotools agree (no ``num_keypoints`` disagreeing with the flags, no
    detection whose keypoint scores are all 0, no gt id 0): where pycocotools cannot run, the case itself
    is the only thing that differs."""
    return _set(seed, **{"nk_mismatch": 0.0, "p_zero_score": 0.0, "gt_id_zero": False, **kw})


seeds = st.integers(0, 2**31 - 1)


# ---- iscrowd missing: xtcocotools' COCO(file) reads it as 0 ------------------------------------------------
@_HSET
@given(seed=seeds, frac=st.sampled_from([1.0, 0.5]))
def test_missing_iscrowd_is_zero_as_xtcocotools_reads_it(tmp_path, seed, frac):
    gt, res = _xt_set(seed, p_crowd=0.3)
    rng = np.random.default_rng(seed)
    for a in gt["annotations"]:
        if rng.uniform() < frac:
            del a["iscrowd"]  # crowd regions that keep their flag stay crowd regions
    gp, rp = _case(tmp_path, f"nocrowd{seed}", gt, res)
    if any("iscrowd" not in a for a in gt["annotations"]) and res:
        with pytest.raises(KeyError), contextlib.redirect_stdout(io.StringIO()):
            reference_stats_from_files("pycocotools", gp, rp)  # why xtcocotools is the reference here
    rc, doc, err = posecal_evaluate_json(gp, rp)
    assert rc == 0, err
    np.testing.assert_array_equal(_stats(doc), reference_stats_from_files("xtcocotools", gp, rp))


def test_missing_iscrowd_equals_iscrowd_zero(tmp_path):
    gt, res = _set(5, p_crowd=0.0)
    zero = copy.deepcopy(gt)
    for a in gt["annotations"]:
        del a["iscrowd"]
    gp, rp = _case(tmp_path, "a", gt, res)
    gz, rz = _case(tmp_path, "b", zero, res)
    assert posecal_evaluate_json(gp, rp)[1]["coco"] == posecal_evaluate_json(gz, rz)[1]["coco"]


# ---- string ids: pycocotools sorts them as text ----------------------------------------------------------
_ID_STYLES = {
    "padded": lambda i: f"{i:012d}",
    "file": lambda i: f"img_{i}.jpg",
    "plain": str,  # "10" sorts before "9": the order of images in accumulate is the text order
}


@_HSET
@given(seed=seeds, style=st.sampled_from(sorted(_ID_STYLES)), cats=st.booleans(), tie=st.sampled_from([0.3, 1.0]),
       two=st.booleans())
def test_string_image_and_category_ids_match_pycocotools(tmp_path, seed, style, cats, tie, two):
    gt, res = _set(seed, p_tie=tie, two_categories=two)
    f = _ID_STYLES[style]
    for im in gt["images"]:
        im["id"] = f(im["id"])
    for r in gt["annotations"] + res:
        r["image_id"] = f(r["image_id"])
    if cats:
        cname = {1: "person", 3: "animal"}
        for c in gt["categories"]:
            c["id"] = cname[c["id"]]
        for r in gt["annotations"] + res:
            r["category_id"] = cname[r["category_id"]]
    if not res:
        return  # pycocotools cannot load an empty result list
    assert_matches(tmp_path, f"strid{seed}", gt, res)


def test_string_ids_tie_order_follows_text_order(tmp_path):
    """All scores tied: the global order of detections is the image order, "10" < "9" as text."""
    gt, res = _set(11, n_images=6, p_tie=1.0)
    for r in res:
        r["score"] = 0.5
    for im in gt["images"]:
        im["id"] = str(im["id"])
    for r in gt["annotations"] + res:
        r["image_id"] = str(r["image_id"])
    assert_matches(tmp_path, "ties", gt, res)


def test_results_of_an_unknown_string_category_are_left_out(tmp_path):
    gt, res = _set(12)
    for c in gt["categories"]:
        c["id"] = "person"
    for r in gt["annotations"] + res:
        r["category_id"] = "person"
    for r in res[::3]:
        r["category_id"] = "dog"
    err = assert_matches(tmp_path, "dog", gt, res)
    assert "category_id 'dog'" in err and "not evaluated" in err


@_HSET
@given(seed=seeds)
def test_numeric_string_annotation_ids_match_pycocotools(tmp_path, seed):
    gt, res = _set(seed, gt_id_zero=seed % 2 == 0)
    for a in gt["annotations"]:
        a["id"] = str(a["id"])
    if res:
        assert_matches(tmp_path, f"annid{seed}", gt, res)


# ---- missing or unusual gt fields ---------------------------------------------------------------------------
@_HSET
@given(seed=seeds, frac=st.sampled_from([1.0, 0.5, 0.1]))
def test_missing_num_keypoints_matches_xtcocotools(tmp_path, seed, frac):
    """pycocotools needs the field (KeyError); xtcocotools counts the labelled keypoints of every gt, also
    where a field is present and disagrees with the flags."""
    gt, res = _xt_set(seed, nk_mismatch=0.3)
    rng = np.random.default_rng(seed)
    for a in gt["annotations"]:
        if rng.uniform() < frac:
            del a["num_keypoints"]
    missing = any("num_keypoints" not in a for a in gt["annotations"])
    if res:  # every field present: pycocotools runs, and is the reference
        assert_matches(tmp_path, f"nk{seed}", gt, res, reference="xtcocotools" if missing else "pycocotools")


@_HSET
@given(seed=seeds, p=st.sampled_from([0.2, 0.6]), crowd=st.booleans())
def test_empty_gt_keypoint_lists_match_pycocotools(tmp_path, seed, p, crowd):
    """``"keypoints": []`` (crowd regions, people without keypoints): no labelled keypoint, as the
    references read it."""
    gt, res = _set(seed)
    rng = np.random.default_rng(seed)
    for a in gt["annotations"]:
        if rng.uniform() < p:
            a["keypoints"], a["num_keypoints"] = [], 0
            a["iscrowd"] = int(crowd)
    if res:
        assert_matches(tmp_path, f"empty{seed}", gt, res)


def test_unknown_keypoint_names_with_17_keypoints_use_coco_sigmas(tmp_path):
    gt, res = _set(13)
    gt["categories"][0]["keypoints"] = [f"joint_{i}" for i in range(17)]
    err = assert_matches(tmp_path, "names", gt, res)
    assert "COCO-17 sigmas" in err


def test_permuted_coco_names_use_coco_sigmas_by_position(tmp_path):
    gt, res = _set(14)
    gt["categories"][0]["keypoints"] = gt["categories"][0]["keypoints"][::-1]
    assert_matches(tmp_path, "perm", gt, res)


# ---- a battery of valid variations (each against pycocotools) ---------------------------------------------
def _extra_result_fields(gt, res):
    for i, r in enumerate(res):
        r.update(id=f"x{i}", area=3, extra={"a": [1, None]}, track_id=i)


def _result_boxes(gt, res):
    for r in res:
        k = np.asarray(r["keypoints"]).reshape(-1, 3)
        x0, y0 = k[:, :2].min(0)
        x1, y1 = k[:, :2].max(0)
        r["bbox"] = [float(x0), float(y0), float(x1 - x0) / 2, float(y1 - y0) / 2]


def _int_scores_and_keypoints(gt, res):
    for i, r in enumerate(res):
        r["score"] = i % 4
        r["keypoints"] = [int(round(v)) for v in r["keypoints"]]


def _float_keypoint_flags(gt, res):
    for a in gt["annotations"]:
        a["keypoints"] = [float(v) for v in a["keypoints"]]


def _ignore_field(gt, res):
    for i, a in enumerate(gt["annotations"]):
        a["ignore"] = i % 2  # pycocotools discards it


def _images_without_annotations(gt, res):
    gt["images"] += [{"id": 100001}, {"id": 100002, "file_name": "x.jpg"}]
    if res:
        res.append({**copy.deepcopy(res[0]), "image_id": 100001, "score": 0.999})


def _second_keypoint_category(gt, res):
    gt["categories"].append({"id": 9, "name": "hand", "keypoints": ["a", "b", "c"], "skeleton": []})


def _area_bounds(gt, res):
    vals = [32.0**2, 96.0**2, 0.0, 1e10, 32.0**2 - 1e-9, 96.0**2 + 1e-9]
    for i, a in enumerate(gt["annotations"]):
        a["area"] = vals[i % len(vals)]


def _visible_as_occluded(gt, res):
    for a in gt["annotations"]:
        a["keypoints"][2::3] = [1 if v == 2 else v for v in a["keypoints"][2::3]]


def _unlabelled_with_coordinates(gt, res):
    for a in gt["annotations"]:
        k = a["keypoints"]
        for j in range(0, len(k), 3):
            if k[j + 2] == 0:
                k[j], k[j + 1] = 123.5, 45.25


def _many_detections(gt, res):
    if res:
        first = res[0]
        res += [{**copy.deepcopy(first), "score": round(0.01 * i, 2)} for i in range(30)]


def _huge_and_negative_scores(gt, res):
    for i, r in enumerate(res):
        r["score"] = r["score"] * 1e6 if i % 2 else r["score"] - 0.75


def _all_scores_tied(gt, res):
    for r in res:
        r["score"] = 0.25


VARIATIONS = {f.__name__.lstrip("_"): f for f in (
    _extra_result_fields, _result_boxes, _int_scores_and_keypoints, _float_keypoint_flags, _ignore_field,
    _images_without_annotations, _second_keypoint_category, _area_bounds, _visible_as_occluded,
    _unlabelled_with_coordinates, _many_detections, _huge_and_negative_scores, _all_scores_tied)}


@_HSET
@given(seed=seeds, name=st.sampled_from(sorted(VARIATIONS)))
def test_valid_variations_match_pycocotools(tmp_path, seed, name):
    gt, res = _set(seed, p_crowd=0.2, p_zero_kpts=0.2)
    VARIATIONS[name](gt, res)
    if res:
        assert_matches(tmp_path, f"{name}{seed}", gt, res)


def test_huge_scores_warn_and_are_not_squashed(tmp_path):
    gt, res = _set(15)
    for i, r in enumerate(res):
        r["score"] = 10.0 ** (i % 5) * r["score"]
    err = assert_matches(tmp_path, "huge", gt, res)
    assert "instance scores outside [0, 1]" in err and "kept as they are" in err


def test_empty_results_match_xtcocotools(tmp_path):
    """pycocotools' loadRes fails on ``[]``; xtcocotools evaluates it (all zero, or −1 without gts)."""
    gt, _ = _xt_set(16)
    assert_matches(tmp_path, "empty", gt, [], reference="xtcocotools")


# ---- invalid input: one line, exit 2, nothing written --------------------------------------------------------
def test_invalid_inputs_are_refused_clearly(tmp_path):
    gt, res = _set(17, max_dets=5)
    assert len(res) >= 3
    r = copy.deepcopy(res)
    r[2]["keypoints"] = r[2]["keypoints"][:-3]
    assert_refused(tmp_path, "short", gt, r, file="res", record=2, field="keypoints")
    r = copy.deepcopy(res)
    r[1]["keypoints"] = r[1]["keypoints"] + [1.0, 2.0, 0.5]
    assert_refused(tmp_path, "long", gt, r, file="res", record=1, field="keypoints")
    r = copy.deepcopy(res)
    r[1]["image_id"] = 10**6
    assert_refused(tmp_path, "unknown", gt, r, file="res", record=1, field="image_id")
    g = copy.deepcopy(gt)
    g["images"][0]["id"] = str(g["images"][0]["id"])  # pycocotools cannot sort "3" and 5
    assert_refused(tmp_path, "mixed", g, res, file="gt", record=None, field="id")
    g = copy.deepcopy(gt)
    g["annotations"][1]["id"] = "person-1"  # pycocotools: could not convert string to float
    assert_refused(tmp_path, "annid", g, res, file="gt", record=1, field="id")
    r = copy.deepcopy(res)
    r[0]["score"] = math.nan
    assert_refused(tmp_path, "nan", gt, json.dumps(r), file="res", record=0, field="score")


def test_string_gt_ids_refuse_numeric_result_ids(tmp_path):
    gt, res = _set(18, max_dets=5)
    assert res
    for im in gt["images"]:
        im["id"] = str(im["id"])
    for a in gt["annotations"]:
        a["image_id"] = str(a["image_id"])
    line = assert_refused(tmp_path, "numeric", gt, res, file="res", record=0, field="image_id")
    assert "unknown image_id" in line
