"""``posecal compare``'s keypoint thresholds: each resample equals ``threshold_at_precision`` on the resampled
pairs, the full-data values equal ``posecal evaluate --report``'s, A/B swap symmetry, and the AP/AR bootstrap
is untouched by the added work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calib_helpers import COCO_MINI, perturb_gt
from conftest import shared_path
from posecal.calibration.compare import _KeypointPlan, compare
from posecal.calibration.metrics import MetricUndefined, threshold_at_precision

TARGETS = (0.5, 0.8, 0.9, 1.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.integers(0, 4)), min_size=0, max_size=30),
       st.lists(st.integers(0, 3), min_size=5, max_size=5))
def test_a_resample_is_the_threshold_of_the_replicated_pairs(pairs, counts):
    c = np.array([p[0] for p in pairs], float) / 4.0
    ok = np.array([p[1] for p in pairs], bool)
    img = np.array([p[2] for p in pairs], np.int64)
    kept, thr = _KeypointPlan.build(c, ok, img).kept(np.array(counts), TARGETS)
    rep = np.repeat(np.arange(c.size), np.array(counts)[img]) if c.size else np.zeros(0, np.int64)
    if rep.size == 0:  # nothing drawn: no share to speak of
        assert np.isnan(kept).all() and np.isnan(thr).all()
        return
    for i, t in enumerate(TARGETS):
        try:
            r = threshold_at_precision(c[rep], ok[rep], t)
        except MetricUndefined:
            assert kept[i] == 0 and np.isnan(thr[i])
            continue
        assert kept[i] == pytest.approx(r.kept) and thr[i] == r.threshold


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kt")
    gt = json.loads(shared_path(*COCO_MINI).read_text())
    a = perturb_gt(gt, seed=11, max_level=0.4)
    b = json.loads(json.dumps(a))
    for r in b:  # B: keypoint scores from the true error (a better keypoint confidence), same poses
        r["keypoints"][2::3] = [min(1.0, s + 0.3) if s > 0.5 else s / 2 for s in r["keypoints"][2::3]]
    pa, pb = d / "a.json", d / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    return shared_path(*COCO_MINI), pa, pb


def test_full_data_values_are_evaluate_reports(files, tmp_path):
    from posecal.cli import main

    gt, pa, pb = files
    res = compare(str(gt), str(pa), str(pb), resamples=50, seed=1).to_dict()["keypoint_thresholds"]
    for w, path in (("a", pa), ("b", pb)):
        js = tmp_path / f"{w}.json"
        assert main(["evaluate", "--gt", str(gt), "--pred", str(path), "--report", str(tmp_path / w),
                     "--json", str(js), "--random-seeds", "0"]) == 0
        ev = json.loads(js.read_text())["calibration"]["keypoint_thresholds"]["targets"]
        for row, e in zip(res["targets"], ev, strict=True):
            assert row["target"] == e["target"]
            if e["threshold"] is None:
                assert row[w]["kept"] == 0 and row[w]["threshold"] is None
            else:
                assert row[w]["kept"] == pytest.approx(e["kept"]) and row[w]["threshold"] == e["threshold"]
    assert any(r["delta"] for r in res["targets"])  # the files differ somewhere


def test_swapping_the_files_mirrors_the_thresholds_and_keeps_ap(files):
    gt, pa, pb = files
    ab = compare(str(gt), str(pa), str(pb), resamples=60, seed=3)
    ba = compare(str(gt), str(pb), str(pa), resamples=60, seed=3)
    for x, y in zip(ab.keypoint_thresholds["targets"], ba.keypoint_thresholds["targets"], strict=True):
        assert x["a"] == y["b"] and x["b"] == y["a"]
        assert x["delta"] == pytest.approx(-y["delta"])
        assert x["p_better"] + y["p_better"] == pytest.approx(1.0)
        assert x["interval"][0] == pytest.approx(-y["interval"][1])
    np.testing.assert_array_equal(ab.keypoint_thresholds["samples"], -ba.keypoint_thresholds["samples"])
    for m in ("AP", "AR"):  # the AP/AR bootstrap draws are those of a compare without the thresholds
        np.testing.assert_array_equal(ab.samples[m], -ba.samples[m])


def test_cli_prints_and_writes_the_thresholds(files, tmp_path, capsys):
    from posecal.cli import main

    gt, pa, pb = files
    rep = tmp_path / "rep"
    assert main(["compare", "--gt", str(gt), str(pa), str(pb), "--resamples", "40", "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    assert "share of keypoints one threshold keeps" in out and "thresholds A, B" in out
    doc = json.loads((rep / "compare.json").read_text())
    assert [r["target"] for r in doc["keypoint_thresholds"]["targets"]] == [0.9, 0.95, 0.98]
    assert "samples" not in doc["keypoint_thresholds"]
    assert "Keypoint thresholds" in (rep / "index.html").read_text()


def test_a_threshold_near_the_float_limit_prints_short(files, tmp_path, capsys):
    from posecal.cli import main

    gt, pa, _ = files
    d = perturb_gt(json.loads(gt.read_text()), seed=5)  # mostly well localised people
    for r in d:  # 1e308 on the best keypoints (legal: warned, kept as it is), 0 elsewhere: the threshold is 1e308
        r["keypoints"][2::3] = [1e308 if s > 0.9 else 0.0 for s in r["keypoints"][2::3]]
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps(d))
    rep = tmp_path / "rep"
    assert main(["compare", "--gt", str(gt), str(pa), str(huge), "--resamples", "20", "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    assert "1e+308" in out and max(len(line) for line in out.splitlines()) < 200
    page = (rep / "index.html").read_text()
    assert "1e+308" in page and "0" * 300 not in page
