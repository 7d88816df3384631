"""Audit of ``posecal evaluate --report/--json`` (session 27): output paths that clash or cannot be renamed are
refused before any work with one line naming the flag; nothing is left behind when writing fails; scores at
the float limit keep finite means (no numpy chatter, no null without a reason); the whole-body audit says
what its mAP is."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from _cocogen import make_coco_set
from conftest import shared_path
from posecal.cli import main
from test_hostile_inputs import _one_error


def _run(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _strict(path: Path) -> dict:
    def bad(c):
        raise AssertionError(f"{c} in {path}")

    return json.loads(Path(path).read_text(), parse_constant=bad)


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def coco(tmp_path):
    gt, res = make_coco_set(5, n_images=6, max_gts=4, max_dets=6)
    return gt, res, _write(tmp_path / "gt.json", gt), _write(tmp_path / "pred.json", res)


def test_json_and_report_on_one_path_are_refused_before_work(coco, tmp_path):
    pytest.importorskip("matplotlib")
    _, _, gp, pred = coco
    # the same new path: the JSON was written, then replaced by the report folder (exit 0, JSON lost)
    same = tmp_path / "same"
    rc, out, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--report", same, "--json", same])
    _one_error(rc, err, "'--json'", "--report")
    assert not same.exists() and out == ""
    # --json above --report: failed after all the work, without the flag, leaving the folder 'o1' behind
    o1 = tmp_path / "o1"
    rc, out, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--json", o1, "--report", o1 / "rep"])
    _one_error(rc, err, "'--json'")
    assert not o1.exists() and out == ""


def test_json_to_a_device_or_pipe_is_refused_before_work(coco, tmp_path):
    _, _, gp, pred = coco
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in ("/dev/null", fifo):
        rc, out, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--json", target])
        _one_error(rc, err, "'--json'", "not a regular file")
        assert out == ""  # refused before the evaluation printed anything


def test_report_named_through_dot_dot_or_the_current_folder(coco, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    _, _, gp, pred = coco
    # a/b/..: the temporary folder was made inside the folder it replaces; the rename failed ("Device or
    # resource busy") after all the work, leaving a stray '....old.*' folder
    rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--report", tmp_path / "a" / "b" / "..",
                       "--random-seeds", "0"])
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        ["index.html", "metrics.json", "pr_curves.png", "reliability.png", "sparsification.png",
         "visibility_scores.png"])
    # the current (empty) folder: the same late failure, the JSON already written; now refused before work
    cwd = tmp_path / "here"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--report", ".", "--json", tmp_path / "o.json"])
    _one_error(rc, err, "'--report'", "current folder")
    assert list(cwd.iterdir()) == [] and not (tmp_path / "o.json").exists()


def test_interrupted_report_removes_the_folders_it_created(coco, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import posecal.calibration.report as report

    _, _, gp, pred = coco

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", interrupted)
    rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--report", tmp_path / "n1" / "n2" / "rep",
                       "--json", tmp_path / "j1" / "o.json", "--random-seeds", "0"])
    assert rc == 130, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.json", "pred.json"]  # no empty n1/n2 left


def test_scores_at_the_float_limit_keep_finite_means(coco, tmp_path):
    pytest.importorskip("matplotlib")
    _, res, gp, _ = coco
    r = copy.deepcopy(res)
    for i, d in enumerate(r):
        d["score"] = 1.7e308 if i % 3 else -1.7e308
        d["keypoints"] = [1.7e308 if j % 3 == 2 else x for j, x in enumerate(d["keypoints"])]
    pred = _write(tmp_path / "p.json", r)
    rep, js = tmp_path / "rep", tmp_path / "o.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--report", rep, "--json", js,
                           "--random-seeds", "1"])
    assert rc == 0, err
    assert "encountered" not in err  # numpy's "overflow encountered in reduce" reached the user
    cal = _strict(js)["calibration"]
    assert _strict(rep / "metrics.json")["calibration"] == cal
    # were null without a reason (the sums overflowed to inf, written as null)
    assert cal["mean_confidence_instance"] is not None and abs(cal["mean_confidence_instance"]) < 1.7e308
    for k in ("ece", "mce", "ece_mass", "ece_keypoint"):
        assert cal[k] is not None and cal[k] > 1e307, (k, cal[k], cal.get(k + "_reason"))
    for key in ("ece", "ece_mass"):
        rel = cal["reliability"][key]
        for n, mc in zip(rel["count"], rel["mean_confidence"], strict=True):
            assert (mc is None) == (n == 0), rel
    page = (rep / "index.html").read_text()
    assert "1.7e+308" in page and "17000000000" not in page  # the page wrote huge values with 309 digits
    for g in cal["keypoint_score_by_visibility"].values():
        if g["count"]:
            assert g["mean"] == pytest.approx(1.7e308) and g["median"] == pytest.approx(1.7e308), g


def test_finite_mean_median_and_bins_of_extreme_scores():
    from posecal.calibration.metrics import calibration_error, finite_mean, finite_median

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        x = np.full(7, 1.7e308)
        assert finite_mean(x) == pytest.approx(1.7e308) and finite_median(x[:6]) == 1.7e308
        assert finite_mean(np.array([0.2, 0.4])) == np.mean([0.2, 0.4])
        tiny = np.full(4, 5e-324)  # scaling these up would overflow
        assert finite_mean(tiny) == 5e-324
        r = calibration_error(tiny, np.full(4, 0.5))
        assert r.ece == 0.5
        c = np.array([-1.7e308, -1.7e308, 1.7e308, 1.7e308])
        for binning in ("width", "mass"):
            r = calibration_error(c, np.array([0.1, 0.2, 0.3, 0.4]), n_bins=4, binning=binning)
            assert np.isfinite(r.edges).all() and (np.diff(r.edges) > 0).all()
            ok = r.count > 0
            np.testing.assert_allclose(r.mean_confidence[ok], [-1.7e308, 1.7e308])
            assert np.isfinite(r.ece) and r.ece == pytest.approx(1.7e308)
        # ordinary scores: bit-identical to the plain sums
        c, t = np.array([0.1, 0.15, 0.7, 0.72, 0.9]), np.array([0.0, 0.3, 0.6, 0.9, 1.0])
        r = calibration_error(c, t, n_bins=2)
        assert list(r.mean_confidence) == [(0.1 + 0.15) / 2, (0.7 + 0.72 + 0.9) / 3]


def test_empty_keypoint_set_is_refused(coco):
    _, _, gp, pred = coco
    rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--keypoint-set", ""])
    _one_error(rc, err, "'--keypoint-set'", "empty")


def test_wholebody_report_says_its_map_is_over_the_whole_body(tmp_path):
    pytest.importorskip("matplotlib")
    gp = shared_path("data", "mmpose-fixtures", "coco", "test_coco_wholebody.json")
    g = json.loads(gp.read_text())
    rng = np.random.default_rng(0)
    res = []
    for a in g["annotations"]:
        if not a.get("num_keypoints"):
            continue
        d = {"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.uniform())}
        for k, v in a.items():
            if k == "keypoints" or k.endswith("_kpts"):
                kp = np.asarray(v, float).reshape(-1, 3)
                kp[:, :2] += rng.normal(0, 3, kp[:, :2].shape)
                kp[:, 2] = rng.uniform(size=len(kp))
                d[k] = kp.ravel().tolist()
        res.append(d)
    pred = _write(tmp_path / "p.json", res)
    rep, js = tmp_path / "rep", tmp_path / "o.json"
    rc, _, err = _run(["evaluate", "--gt", gp, "--pred", pred, "--report", rep, "--json", js, "--random-seeds", "0"])
    assert rc == 0, err
    doc = _strict(js)
    assert doc["calibration"]["mAP"] != doc["coco"]["AP"]  # whole body vs body: the report must say so
    assert any("whole body" in n for n in doc["calibration"]["notes"])
    assert "whole body" in (rep / "index.html").read_text()
