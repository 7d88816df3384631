"""Evaluator audit (session 24): inputs where ``posecal evaluate`` refused files (or in-memory results) that
the reference evaluators accept, each checked against the reference run on the same input.

* results (and gt) ``bbox`` lists longer than four numbers (``[x, y, w, h, score]``): pycocotools reads
  ``bb[0:4]`` only;
* results built in memory with numpy scalars / arrays / tuples, given to ``evaluate_dataset``: pycocotools'
  ``loadRes`` takes them;
* a COCO body model's results (17 ``keypoints``, no part fields) against COCO-WholeBody ground truth:
  pycocotools evaluates the body from such files; posecal now gives the body and refuses only what needs
  the parts.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from _cocogen import make_coco_set, perturb_gt
from _cocoref import posecal_evaluate_json, reference_stats_from_files, run_pycocotools
from posecal.cli import main
from posecal.errors import PosecalInputError
from posecal.io.coco import load_gt, load_results
from posecal.metrics.cocoeval import STAT_NAMES, evaluate, evaluate_dataset, evaluate_wholebody

pytest.importorskip("pycocotools")


def _files(tmp_path: Path, name: str, gt, res) -> tuple[Path, Path]:
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "gt.json").write_text(json.dumps(gt))
    (d / "res.json").write_text(json.dumps(res))
    return d / "gt.json", d / "res.json"


def _stats(doc: dict) -> np.ndarray:
    return np.array([doc["coco"][k] for k in STAT_NAMES])


# ---- bbox with more than four numbers ------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bbox_with_score_column_matches_pycocotools(tmp_path, seed):
    """``bbox: [x, y, w, h, score]`` in results (it decides the detection area) and in gt: pycocotools uses
    the first four values; posecal refused the file ("expected 4 numbers")."""
    gt, res = make_coco_set(seed, n_images=5, max_gts=5, max_dets=10, result_bbox=True, p_crowd=0.2,
                            p_zero_kpts=0.3)
    assert res
    for r in res:
        r["bbox"] = r["bbox"] + [r["score"]]
    if seed % 2:
        for a in gt["annotations"]:
            a["bbox"] = a["bbox"] + [1.0, "extra"]
    gp, rp = _files(tmp_path, "b5", gt, res)
    rc, doc, err = posecal_evaluate_json(gp, rp)
    assert rc == 0, err
    np.testing.assert_array_equal(_stats(doc), reference_stats_from_files("pycocotools", gp, rp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = load_results(rp, load_gt(gp))
    np.testing.assert_array_equal(r.bbox, [b["bbox"][:4] for b in res])


def test_short_or_bad_bbox_still_refused(tmp_path):
    gt, res = make_coco_set(4, n_images=4, max_dets=6, result_bbox=True)
    assert len(res) > 2
    bad = copy.deepcopy(res)
    bad[2]["bbox"] = bad[2]["bbox"][:3]  # pycocotools: IndexError
    with pytest.raises(PosecalInputError) as ei:
        load_results(bad, load_gt(gt))
    assert (ei.value.record, ei.value.field) == (2, "bbox")
    bad = copy.deepcopy(res)
    bad[1]["bbox"] = ["a", 0, 1, 1, 0.5]
    with pytest.raises(PosecalInputError) as ei:
        load_results(bad, load_gt(gt))
    assert (ei.value.record, ei.value.field) == (1, "bbox")


# ---- numpy values in memory -----------------------------------------------------------------------------
def _numpy_results(res: list) -> list:
    out = copy.deepcopy(res)
    for i, r in enumerate(out):
        r["image_id"] = np.int64(r["image_id"])
        r["category_id"] = np.int32(r["category_id"])
        r["score"] = np.float32(r["score"]) if i % 2 else np.float64(r["score"])
        r["keypoints"] = (np.asarray(r["keypoints"], dtype=np.float32) if i % 3 == 0 else
                          tuple(r["keypoints"]) if i % 3 == 1 else [np.float64(v) for v in r["keypoints"]])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_numpy_values_in_memory_match_pycocotools(seed):
    """``evaluate_dataset(gt_dict, results)`` with numpy scalars, arrays and tuples (results made in memory):
    pycocotools' loadRes takes them; posecal refused them ("expected a number, got np.float32(...)")."""
    gt, res = make_coco_set(seed, n_images=5, p_tie=0.5)
    assert res
    nres = _numpy_results(res)
    ngt = copy.deepcopy(gt)
    for a in ngt["annotations"]:
        a["keypoints"] = np.asarray(a["keypoints"])
        a["bbox"] = tuple(a["bbox"])
        a["area"] = np.float64(a["area"])
        a["id"] = np.int64(a["id"])
    for im in ngt["images"]:
        im["id"] = np.int32(im["id"])
    want = run_pycocotools(copy.deepcopy(ngt), copy.deepcopy(nres))["stats"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = evaluate_dataset(ngt, nres).result.stats_array()
    np.testing.assert_array_equal(got, want)
    # the same values as plain Python give the same numbers, and the numpy input was not modified
    plain = [{k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, np.generic, tuple, list)) else v)
              for k, v in r.items()} for r in nres]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(evaluate_dataset(gt, plain).result.stats_array(), got)
    assert type(nres[0]["keypoints"]) is np.ndarray and type(ngt["images"][0]["id"]) is np.int32


def test_numpy_values_refused_as_in_a_file():
    """What a file may not hold is refused in numpy form too (one PosecalInputError naming record and field)."""
    gt, res = make_coco_set(5, n_images=4, max_dets=6)
    assert len(res) > 1
    g = load_gt(gt)
    for value, field in ((np.bool_(True), "score"), (np.float64("nan"), "score")):
        bad = copy.deepcopy(res)
        bad[1][field] = value
        with pytest.raises(PosecalInputError) as ei:
            load_results(bad, g)
        assert (ei.value.record, ei.value.field) == (1, field)
    bad = _numpy_results(res)
    bad[0]["image_id"] = np.int64(10**6)
    with pytest.raises(PosecalInputError) as ei:
        load_results(bad, g)
    assert (ei.value.record, ei.value.field) == (0, "image_id") and "unknown image_id" in str(ei.value)


# ---- COCO-WholeBody gt, body-only results ---------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_wholebody_gt_with_body_only_results(shared, tmp_path, seed):
    """A COCO body model's results on COCO-WholeBody gt: pycocotools (and xtcocotools' 'keypoints')
    evaluate the body from the files; posecal refused them ("expected 399 numbers"). Now: the body, a
    note, no WholeBody parts."""
    gt_path = shared("data", "mmpose-fixtures", "coco", "test_coco_wholebody.json")
    gt = json.loads(gt_path.read_text())
    res = perturb_gt(gt, seed, copies=3)  # 17 body keypoints, no part fields
    assert res and len(res[0]["keypoints"]) == 51
    gp, rp = _files(tmp_path, "wb", gt, res)
    rc, doc, err = posecal_evaluate_json(gp, rp)
    assert rc == 0, err
    np.testing.assert_array_equal(_stats(doc), reference_stats_from_files("pycocotools", gp, rp))
    assert "wholebody" not in doc and "body keypoints" in err
    pytest.importorskip("xtcocotools")
    rc, doc, err = posecal_evaluate_json(gp, rp, "--flavor", "xtcocotools")
    assert rc == 0, err
    np.testing.assert_array_equal(_stats(doc), reference_stats_from_files("xtcocotools", gp, rp))


def test_wholebody_body_only_results_refused_for_the_parts(shared, tmp_path):
    gt_path = shared("data", "mmpose-fixtures", "coco", "test_coco_wholebody.json")
    gt = json.loads(gt_path.read_text())
    res = perturb_gt(gt, 2)
    gp, rp = _files(tmp_path, "wb", gt, res)
    g = load_gt(gp)
    r = load_results(rp, g)
    assert r.body_only and r.keypoints.shape[1] == 133 and not r.keypoints[:, 17:].any()
    for call in (lambda: evaluate_wholebody(g, r), lambda: evaluate(g, r, keypoints="foot"),
                 lambda: evaluate(g, r)):
        with pytest.raises(PosecalInputError) as ei:
            call()
        assert ei.value.field == "keypoints" and "only the 17 body keypoints" in str(ei.value)
    assert evaluate(g, r, keypoints="body", sigmas=np.asarray(g.keypoint_set.sigmas)[:17]).stats["AP"] >= 0
    # explicit sigmas for all 133 keypoints: one error line, exit 2
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = main(["evaluate", "--gt", str(gp), "--pred", str(rp), "--sigmas", *["0.05"] * 133])
    lines = e.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "field 'keypoints'" in lines[0] and str(rp) in lines[0]
    # full WholeBody results are still read with their parts
    full = perturb_gt(gt, 2, parts=True)
    assert not load_results(full, g).body_only
