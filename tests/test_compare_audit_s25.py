"""Audit of ``posecal compare`` (session 25): every test here failed before its fix.

* A and B are evaluated as ``posecal evaluate`` evaluates them: a gt without ``area`` (0.53·w·h of the box),
  CrowdPose (crowdposetools), COCO-WholeBody (the 17 body keypoints, as pycocotools reads the file); the
  flags ``--use-area`` / ``--no-use-area`` / ``--flavor`` that compare's own error messages point to exist.
  Each resample is still exact (brute force on the rebuilt image multiset; xtcocotools itself).
* Legal but odd inputs give the numbers and a warning, also in the JSON (``warnings``) and on the page: a
  single image (degenerate bootstrap), an empty results file, all scores equal, images with people that only
  one file has results on.
* The JSON says how the interval is made (``interval_method``) and with which evaluator; the page states
  the percentile interval and the resample count; ``--level 0.999`` is shown as 99.9 %, not 100 %.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from _cocogen import make_coco_set, perturb_gt
from _cocoref import posecal_evaluate_json, reference_stats_from_files, run_xtcocotools
from test_hostile_inputs import _one_error, _run, _write


def _strict(text: str):
    def bad(c):
        raise AssertionError(f"non-standard JSON token {c}")

    return json.loads(text, parse_constant=bad)


def _rebuild(gt: dict, res: list, draw: np.ndarray, ids: list) -> tuple[dict, list]:
    """The resampled dataset: drawn images in draw order as new images 1..n (a duplicate is a separate image,
    its gts and detections copied with it), image fields (crowdIndex) kept, fresh annotation ids."""
    images = {im["id"]: im for im in gt["images"]}
    g2 = {k: v for k, v in gt.items() if k not in ("images", "annotations")}
    g2["images"], g2["annotations"], r2 = [], [], []
    aid = 1
    for new, i in enumerate(draw, start=1):
        old = ids[int(i)]
        g2["images"].append(dict(images[old], id=new))
        for a in gt["annotations"]:
            if a["image_id"] == old:
                g2["annotations"].append(dict(copy.deepcopy(a), image_id=new, id=aid))
                aid += 1
        r2 += [dict(copy.deepcopy(r), image_id=new) for r in res if r["image_id"] == old]
    return g2, r2


def _rescored(res: list, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [dict(r, score=float(np.round(rng.uniform(), 1))) for r in res]


def _compare_json(*argv) -> tuple[dict, str]:
    rc, out, err = _run(["compare", *argv, "--json"])
    assert rc == 0, err
    return _strict(out), err


# --- evaluated as posecal evaluate evaluates the files ------------------------------------------------------
def test_gt_without_area_is_compared_on_the_box_area_as_evaluate_does(tmp_path):
    from posecal.calibration.compare import compare

    gt, ra = make_coco_set(7, n_images=6, max_dets=6, p_crowd=0.1, with_area=False)
    rb = _rescored(ra, 7)
    g, a, b = _write(tmp_path / "g.json", gt), _write(tmp_path / "a.json", ra), _write(tmp_path / "b.json", rb)
    doc, _ = _compare_json("--gt", g, a, b, "--resamples", "8")  # before: exit 2, "--no-use-area" (no such flag)
    for w, f in (("a", a), ("b", b)):
        rc, ev, err = posecal_evaluate_json(g, f)
        assert rc == 0, err
        assert doc["metrics"]["AP"][w] == ev["coco"]["AP"] and doc["metrics"]["AR"][w] == ev["coco"]["AR"]
    assert doc["use_area"] is False and doc["flavor"] == "pycocotools"
    # every resample is the evaluation of the rebuilt image multiset (duplicates counted twice)
    out = compare(str(g), str(a), str(b), resamples=8, seed=4)
    for r, (sa, sb) in enumerate(_resample_stats(gt, ra, rb, 8, 4)):
        want = sb["AP"] - sa["AP"] if sa["AP"] >= 0 else np.nan
        np.testing.assert_equal(out.samples["AP"][r], want)


def _resample_stats(gt, ra, rb, n, seed):
    """(A stats, B stats) of each of the ``n`` resamples ``compare(seed=seed)`` draws, evaluated from scratch
    on the rebuilt image multiset (duplicates as separate images)."""
    from posecal.metrics.cocoeval import evaluate_dataset

    ids = sorted(im["id"] for im in gt["images"])
    rng = np.random.default_rng(seed)
    for _ in range(n):
        draw = rng.integers(0, len(ids), size=len(ids))
        g2, a2 = _rebuild(gt, ra, draw, ids)
        _, b2 = _rebuild(gt, rb, draw, ids)
        yield evaluate_dataset(g2, a2).result.stats, evaluate_dataset(g2, b2).result.stats


def test_crowdpose_file_is_compared_as_crowdposetools(shared, tmp_path):
    from posecal.calibration.compare import compare

    p = shared("data", "mmpose-fixtures", "crowdpose", "test_crowdpose.json")
    gt = json.loads(p.read_text())
    ra, rb = perturb_gt(gt, 1), perturb_gt(gt, 2)
    a, b = _write(tmp_path / "a.json", ra), _write(tmp_path / "b.json", rb)
    doc, err = _compare_json("--gt", p, a, b, "--resamples", "10")  # before: exit 2 ('area' missing)
    assert doc["flavor"] == "crowdpose" and doc["use_area"] is False
    for w, f in (("a", a), ("b", b)):
        rc, ev, e = posecal_evaluate_json(p, f)
        assert rc == 0, e
        assert ev["flavor"] == "crowdpose" and doc["metrics"]["AP"][w] == ev["coco"]["AP"]
    out = compare(str(p), str(a), str(b), resamples=10, seed=2)
    for r, (sa, sb) in enumerate(_resample_stats(gt, ra, rb, 10, 2)):
        assert out.samples["AP"][r] == sb["AP"] - sa["AP"] and out.samples["AR"][r] == sb["AR"] - sa["AR"]
    # crowdposetools never scales by 'area': asking for it is one error line, as in posecal evaluate
    rc, _, err = _run(["compare", "--gt", p, a, b, "--resamples", "5", "--use-area"])
    _one_error(rc, err, "--use-area", "crowdposetools")


def test_wholebody_gt_is_compared_on_the_body_as_pycocotools_reads_the_file(shared, tmp_path):
    p = shared("data", "mmpose-fixtures", "coco", "test_coco_wholebody.json")
    gt = json.loads(p.read_text())
    a = _write(tmp_path / "a.json", perturb_gt(gt, 1, parts=True))
    b = _write(tmp_path / "b.json", perturb_gt(gt, 2, parts=True))
    doc, _ = _compare_json("--gt", p, a, b, "--resamples", "5")
    for w, f in (("a", a), ("b", b)):  # before: all 133 keypoints with WholeBody sigmas (another number)
        ref = reference_stats_from_files("pycocotools", p, f)
        assert doc["metrics"]["AP"][w] == ref[0] and doc["metrics"]["AR"][w] == ref[5]
    assert doc["keypoints"] == "body"
    # body-only results (17 keypoints, no part fields) on that gt: what pycocotools evaluates, not refused
    body = [{k: v for k, v in r.items() if not k.endswith(("_kpts", "_score")) or k == "score"}
            for r in perturb_gt(gt, 3, parts=True)]
    c = _write(tmp_path / "c.json", body)
    doc, _ = _compare_json("--gt", p, a, c, "--resamples", "5")
    assert doc["metrics"]["AP"]["b"] == reference_stats_from_files("pycocotools", p, c)[0]


def test_flavor_and_use_area_flags_as_evaluate(tmp_path):
    gt, ra = make_coco_set(12, n_images=6, max_dets=6, p_tie=0.5)
    rb = _rescored(ra, 12)
    g, a, b = _write(tmp_path / "g.json", gt), _write(tmp_path / "a.json", ra), _write(tmp_path / "b.json", rb)
    doc, _ = _compare_json("--gt", g, a, b, "--resamples", "5", "--no-use-area")
    for w, f in (("a", a), ("b", b)):
        rc, ev, err = posecal_evaluate_json(g, f, "--no-use-area")
        assert rc == 0, err
        assert doc["metrics"]["AP"][w] == ev["coco"]["AP"] and doc["use_area"] is False
    doc, _ = _compare_json("--gt", g, a, b, "--resamples", "6", "--seed", "1", "--flavor", "xtcocotools")
    assert doc["flavor"] == "xtcocotools"
    sa, sb = run_xtcocotools(gt, ra)["stats"], run_xtcocotools(gt, rb)["stats"]
    assert doc["metrics"]["AP"]["a"] == pytest.approx(sa[0], abs=1e-12)
    assert doc["metrics"]["AP"]["delta"] == pytest.approx(sb[0] - sa[0], abs=1e-12)
    rc, _, err = _run(["compare", "--gt", g, a, b, "--flavor", "cocoapi"])
    assert rc == 2 and "--flavor" in err and "Traceback" not in err


# --- legal but odd inputs: numbers and a warning, kept in the JSON and on the page -------------------------
def _one_image(tmp_path: Path) -> tuple[Path, Path, Path]:
    gt, ra = make_coco_set(0, n_images=1, max_dets=6, p_crowd=0.0)
    rb = [dict(r, score=float(s)) for r, s in zip(ra, np.random.default_rng(0).uniform(size=len(ra)), strict=True)]
    return _write(tmp_path / "g.json", gt), _write(tmp_path / "a.json", ra), _write(tmp_path / "b.json", rb)


def test_single_image_bootstrap_is_flagged_as_degenerate(tmp_path):
    pytest.importorskip("matplotlib")
    g, a, b = _one_image(tmp_path)
    rep = tmp_path / "rep"
    doc, err = _compare_json("--gt", g, a, b, "--resamples", "20", "--report", rep)
    ap = doc["metrics"]["AP"]
    assert ap["delta"] != 0 and ap["interval"] == [ap["delta"], ap["delta"]]  # zero width: says nothing
    warn = [ln for ln in err.splitlines() if ": warning: " in ln and "no uncertainty" in ln]
    assert len(warn) == 1 and "only 1 of the 1 images" in warn[0]
    assert any("no uncertainty" in w for w in doc["warnings"])
    assert "no uncertainty" in (rep / "index.html").read_text()
    assert _strict((rep / "compare.json").read_text())["warnings"] == doc["warnings"]


def test_empty_and_constant_score_files_warn(tmp_path):
    gt, ra = make_coco_set(3, n_images=8, max_dets=6)
    g, a = _write(tmp_path / "g.json", gt), _write(tmp_path / "a.json", ra)
    e = _write(tmp_path / "empty.json", [])
    doc, err = _compare_json("--gt", g, a, e, "--resamples", "10")
    assert doc["metrics"]["AP"]["b"] == 0.0 and doc["metrics"]["pearson"]["b"] is None
    assert "empty.json: no results to score" in err and any("no results" in w for w in doc["warnings"])
    flat = _write(tmp_path / "flat.json", [dict(r, score=0.5) for r in ra])
    doc, err = _compare_json("--gt", g, a, flat, "--resamples", "10")
    assert doc["metrics"]["AP"]["b"] == reference_stats_from_files("pycocotools", g, flat)[0]
    assert "flat.json: all" in err and "same score (0.5)" in err


def test_images_covered_by_one_file_only_warn_with_the_image_id(tmp_path):
    gt, ra = make_coco_set(3, n_images=8, max_dets=6, p_crowd=0.0)
    names = {im["id"]: f"img-{im['id']}" for im in gt["images"]}  # string ids, as posecal evaluate takes
    for im in gt["images"]:
        im["id"] = names[im["id"]]
    for x in gt["annotations"] + ra:
        x["image_id"] = names[x["image_id"]]
    with_people = sorted({x["image_id"] for x in gt["annotations"] if x["num_keypoints"] > 0}
                         & {r["image_id"] for r in ra})
    assert len(with_people) >= 2
    drop = with_people[0]
    rb = [r for r in ra if r["image_id"] != drop]
    g, a, b = _write(tmp_path / "g.json", gt), _write(tmp_path / "a.json", ra), _write(tmp_path / "b.json", rb)
    doc, err = _compare_json("--gt", g, a, b, "--resamples", "10")
    line = next(ln for ln in err.splitlines() if "only one file" in ln)
    assert "1 in " + str(a) + " only" in line and repr(drop) in line
    assert doc["metrics"]["AP"]["b"] == reference_stats_from_files("pycocotools", g, b)[0]
    # the same images in both files: no such warning
    _, err = _compare_json("--gt", g, a, _write(tmp_path / "c.json", _rescored(ra, 1)), "--resamples", "5")
    assert "only one file" not in err


# --- the JSON and the page say how the interval is made ------------------------------------------------------
def test_json_names_the_interval_method_and_evaluator_with_stable_keys(tmp_path):
    gt, ra = make_coco_set(6, n_images=8, max_dets=5)
    g, a = _write(tmp_path / "g.json", gt), _write(tmp_path / "a.json", ra)
    b = _write(tmp_path / "b.json", _rescored(ra, 2))
    e = _write(tmp_path / "e.json", [])
    keys = None
    for f in (b, e):  # with and without undefined values: the same top-level keys, strict JSON
        doc, _ = _compare_json("--gt", g, a, f, "--resamples", "7")
        assert doc["interval_method"] == "percentile" and doc["flavor"] == "pycocotools"
        assert doc["use_area"] is True and doc["keypoints"] == "all" and isinstance(doc["warnings"], list)
        keys = keys or set(doc)
        assert set(doc) == keys
        for m in doc["metrics"].values():
            assert {"a", "b", "delta", "interval", "p_better", "p_tied", "resamples_used"} <= set(m)


def test_level_label_and_page_state_the_percentile_interval(tmp_path):
    pytest.importorskip("matplotlib")
    gt, ra = make_coco_set(6, n_images=8, max_dets=5)
    g, a = _write(tmp_path / "g.json", gt), _write(tmp_path / "a.json", ra)
    b = _write(tmp_path / "b.json", _rescored(ra, 2))
    rep = tmp_path / "rep"
    rc, out, err = _run(["compare", "--gt", g, a, b, "--resamples", "9", "--level", "0.999", "--report", rep])
    assert rc == 0, err
    assert "99.9 % interval" in out and "100 % interval" not in out  # before: 100 % (rounded)
    page = (rep / "index.html").read_text()
    assert "99.9 % interval" in page and "99 % interval" not in page  # before: 99 % (truncated)
    assert "percentile" in page and "9 resamples" in page
    assert "http://" not in page and "https://" not in page
