"""posecal.io.coco: loading, validation (one clear error naming file/record/field), round trips."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import warnings

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _cocogen import make_coco_set
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.io import coco, fastjson
from posecal.io.coco import load_gt, load_results, save_results
from posecal.keypoints import COCO17, COCO_WHOLEBODY133, CROWDPOSE14
from posecal.metrics.cocoeval import evaluate


@pytest.fixture
def small():
    gt, res = make_coco_set(3, n_images=4, max_gts=4, max_dets=5, p_zero_score=0.0, gt_id_zero=False)
    assert gt["annotations"] and res
    return gt, res


def _err(fn, *a, **kw) -> PosecalInputError:
    with pytest.raises(PosecalInputError) as ei:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(*a, **kw)
    msg = str(ei.value)
    assert "\n" not in msg
    return ei.value


# ---- real fixtures ------------------------------------------------------------------------------
def test_fixtures_load(shared):
    base = shared("data", "mmpose-fixtures")
    g = load_gt(base / "coco" / "test_coco.json")
    raw = json.loads((base / "coco" / "test_coco.json").read_text())
    assert g.keypoints.shape == (len(raw["annotations"]), 17, 3) and g.keypoint_set is COCO17
    np.testing.assert_array_equal(g.ann_id, [a["id"] for a in raw["annotations"]])
    flat = [a["keypoints"] for a in raw["annotations"]]
    np.testing.assert_array_equal(g.keypoints.reshape(len(g), -1), flat)
    np.testing.assert_array_equal(g.num_keypoints, [a["num_keypoints"] for a in raw["annotations"]])
    np.testing.assert_array_equal(g.image_ids, sorted(im["id"] for im in raw["images"]))
    wb = load_gt(base / "coco" / "test_coco_wholebody.json")
    assert wb.keypoint_set is COCO_WHOLEBODY133 and wb.keypoints.shape[1] == 133
    raw = json.loads((base / "coco" / "test_coco_wholebody.json").read_text())
    a = raw["annotations"][0]
    flat = a["keypoints"] + a["foot_kpts"] + a["face_kpts"] + a["lefthand_kpts"] + a["righthand_kpts"]
    np.testing.assert_array_equal(wb.keypoints[0].ravel(), flat)
    cp = load_gt(base / "crowdpose" / "test_crowdpose.json")
    assert cp.keypoint_set is CROWDPOSE14 and not cp.has_area and np.isnan(cp.area).all()


def test_det_area_matches_pycocotools_loadres(small):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    from _cocoref import _quiet

    gt, res = small
    for with_box in (False, True):
        recs = copy.deepcopy(res)
        if with_box:
            for i, r in enumerate(recs):
                r["bbox"] = [1.0, 2.0, 3.0 + i, 4.5]
        ours = load_results(recs, load_gt(gt))
        with _quiet():
            cg = COCO()
            cg.dataset = copy.deepcopy(gt)
            cg.createIndex()
            cd = cg.loadRes(copy.deepcopy(recs))
        ref = [cd.anns[i + 1]["area"] for i in range(len(recs))]
        np.testing.assert_array_equal(ours.det_area, ref)


# ---- validation: one error per bad input, naming file / record / field ---------------------------
def test_bad_json(tmp_path):
    p = tmp_path / "gt.json"
    p.write_text('{"images": [')
    e = _err(load_gt, p)
    assert e.file == str(p) and "invalid JSON" in str(e)
    p.write_text("[1, 2")
    assert "invalid JSON" in str(_err(load_results, p))
    e = _err(load_gt, tmp_path / "missing.json")
    assert "cannot read" in str(e)


def test_nan_and_inf(tmp_path, small):
    gt, res = small
    g = load_gt(gt)
    bad = copy.deepcopy(res)
    bad[2]["keypoints"][4] = math.nan
    p = tmp_path / "res.json"
    p.write_text(json.dumps(bad))  # Python writes NaN: still named precisely
    e = _err(load_results, p, g)
    assert (e.record, e.field) == (2, "keypoints") and "NaN" in str(e)
    bad = copy.deepcopy(res)
    bad[1]["score"] = math.inf
    e = _err(load_results, bad, g)
    assert (e.record, e.field) == (1, "score")
    gbad = copy.deepcopy(gt)
    gbad["annotations"][0]["bbox"][1] = math.inf
    e = _err(load_gt, gbad)
    assert (e.record, e.field) == (gbad["annotations"][0]["id"], "bbox")


def test_wrong_keypoint_count(small):
    gt, res = small
    bad = copy.deepcopy(res)
    bad[3]["keypoints"] = bad[3]["keypoints"][:-3]
    e = _err(load_results, bad, load_gt(gt))
    assert (e.record, e.field) == (3, "keypoints") and "51" in str(e)
    gbad = copy.deepcopy(gt)
    gbad["annotations"][1]["keypoints"].append(1.0)
    e = _err(load_gt, gbad)
    assert (e.record, e.field) == (gbad["annotations"][1]["id"], "keypoints")


def test_unknown_image_and_category(small):
    gt, res = small
    g = load_gt(gt)
    bad = copy.deepcopy(res)
    bad[0]["image_id"] = 10**9
    e = _err(load_results, bad, g)
    assert (e.record, e.field) == (0, "image_id")
    bad = copy.deepcopy(res)
    bad[1]["category_id"] = 99  # legal: left out of the evaluation, as pycocotools does, with a warning
    with pytest.warns(PosecalWarning, match="first: record 1, category_id 99"):
        assert len(load_results(bad, g)) == len(bad)
    gbad = copy.deepcopy(gt)
    gbad["annotations"][0]["image_id"] = 10**9
    assert _err(load_gt, gbad).field == "image_id"
    gbad = copy.deepcopy(gt)
    gbad["annotations"][0]["category_id"] = 42
    assert _err(load_gt, gbad).field == "category_id"


def test_negative_area_and_box(small):
    gt, res = small
    gbad = copy.deepcopy(gt)
    gbad["annotations"][0]["area"] = -1.0
    e = _err(load_gt, gbad)
    assert (e.record, e.field) == (gbad["annotations"][0]["id"], "area")
    gbad = copy.deepcopy(gt)
    gbad["annotations"][1]["bbox"][2] = -3
    assert _err(load_gt, gbad).field == "bbox"
    bad = copy.deepcopy(res)
    for r in bad:
        r["bbox"] = [0, 0, 10, 10]
    bad[2]["bbox"][3] = -1
    e = _err(load_results, bad, load_gt(gt))
    assert (e.record, e.field) == (2, "bbox")


def test_duplicate_ids(small):
    gt, res = small
    gbad = copy.deepcopy(gt)
    gbad["annotations"][1]["id"] = gbad["annotations"][0]["id"]
    e = _err(load_gt, gbad)
    assert e.field == "id" and "duplicate" in str(e)
    gbad = copy.deepcopy(gt)
    gbad["images"][1]["id"] = gbad["images"][0]["id"]
    assert "duplicate image id" in str(_err(load_gt, gbad))
    gbad = copy.deepcopy(gt)
    gbad["categories"].append(dict(gbad["categories"][0]))
    assert "duplicate category id" in str(_err(load_gt, gbad))
    bad = copy.deepcopy(res)
    for i, r in enumerate(bad):
        r["id"] = i
    bad[-1]["id"] = 0  # result ids do not matter: pycocotools' loadRes renumbers them, so duplicates load
    assert len(load_results(bad, load_gt(gt))) == len(bad)


def test_category_id_is_filled_only_when_no_result_names_one(small):
    gt, res = small
    g = load_gt(gt)
    r = copy.deepcopy(res)
    for x in r:
        del x["category_id"]
    assert (load_results(r, g).category_id == g.categories[0]["id"]).all()
    r[3]["category_id"] = 2  # some records name one: the others are not silently given the gt's
    e = _err(load_results, r, g)
    assert (e.record, e.field) == (0, "category_id")


def test_missing_fields_and_types(small):
    gt, res = small
    bad = copy.deepcopy(res)
    del bad[1]["score"]
    assert (_err(load_results, bad).record, _err(load_results, bad).field) == (1, "score")
    assert "JSON list" in str(_err(load_results, {"a": 1}))
    gbad = copy.deepcopy(gt)
    del gbad["annotations"][0]["iscrowd"]  # read as 0, as xtcocotools (MMPose's evaluator) reads it
    assert not load_gt(gbad).iscrowd[0]
    gbad = copy.deepcopy(gt)
    del gbad["images"]
    assert _err(load_gt, gbad).field == "images"
    bad = copy.deepcopy(res)
    bad[0]["image_id"] = "a"
    assert _err(load_results, bad).field == "image_id"


def test_scores_outside_unit_interval_warn_not_clip(small):
    gt, res = small
    recs = copy.deepcopy(res)
    recs[0]["score"] = 3.5
    recs[1]["score"] = -0.25
    recs[2]["keypoints"][2] = 7.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = load_results(recs, load_gt(gt))
    assert r.score[0] == 3.5 and r.score[1] == -0.25 and r.keypoints[2, 0, 2] == 7.0
    msgs = [str(w.message) for w in caught if issubclass(w.category, PosecalWarning)]
    assert any("2 instance scores outside [0, 1] (range -0.25..3.5)" in m for m in msgs), msgs
    assert any("keypoint scores outside [0, 1]" in m and "..7; first: record 2)" in m for m in msgs), msgs


# ---- property tests ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5), box=st.booleans())
def test_roundtrip_arrays(tmp_path, seed, n, box):
    gt, res = make_coco_set(seed, n_images=n, max_gts=4, max_dets=6, result_bbox=box)
    g = load_gt(orjson.dumps(gt))
    assert len(g) == len(gt["annotations"])
    if gt["annotations"]:
        flat = [a["keypoints"] for a in gt["annotations"]]
        np.testing.assert_array_equal(g.keypoints.reshape(len(g), -1), flat)
        np.testing.assert_array_equal(g.area, [a["area"] for a in gt["annotations"]])
        np.testing.assert_array_equal(g.iscrowd, [bool(a["iscrowd"]) for a in gt["annotations"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = load_results(res, g)
        p = tmp_path / f"res_{seed}.json"
        save_results(p, r)
        r2 = load_results(p, g)
    for name in ("image_id", "category_id", "keypoints", "score", "det_area"):
        np.testing.assert_array_equal(getattr(r, name), getattr(r2, name))
    assert (r.bbox is None) == (not box or not res)


_json_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                         st.text(max_size=3), st.lists(st.integers(0, 3), max_size=4))


_fields = ["image_id", "category_id", "keypoints", "score", "bbox", "visibility", "id", "num_keypoints",
           "iscrowd", "area"]


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 1000), field=st.sampled_from(_fields),
       value=_json_values, target=st.sampled_from(["res", "gt"]))
def test_corrupted_records_raise_only_input_errors(seed, field, value, target):
    """Any corrupted field either loads or raises PosecalInputError — never another exception."""
    gt, res = make_coco_set(seed, n_images=2, max_gts=2, max_dets=3)
    if target == "res" and res:
        res[seed % len(res)][field] = value
    elif gt["annotations"]:
        gt["annotations"][seed % len(gt["annotations"])][field] = value
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = load_gt(gt)
            r = load_results(res, g)
            evaluate(g, r)
    except PosecalInputError as e:
        assert "\n" not in str(e)


# ---- the fast keypoint-array path must give exactly what the plain orjson path gives ------------------
@contextlib.contextmanager
def _fast_path(on: bool):
    """Force the fast path on (for any size) or off; yields a list that records, per parse, whether the
    fast path produced the keypoint array."""
    saved = (fastjson.FAST_MIN_BYTES, fastjson._FAST_MIN_RECORDS, os.environ.get("POSECAL_NO_FAST_JSON"),
             fastjson._fast_keypoints)
    fastjson.FAST_MIN_BYTES, fastjson._FAST_MIN_RECORDS = 0, 1
    used: list[bool] = []

    def spy(data):
        out = saved[3](data)
        used.append(out is not None)
        return out

    fastjson._fast_keypoints = spy
    if on:
        os.environ.pop("POSECAL_NO_FAST_JSON", None)
    else:
        os.environ["POSECAL_NO_FAST_JSON"] = "1"
    try:
        yield used
    finally:
        fastjson.FAST_MIN_BYTES, fastjson._FAST_MIN_RECORDS = saved[:2]
        fastjson._fast_keypoints = saved[3]
        if saved[2] is None:
            os.environ.pop("POSECAL_NO_FAST_JSON", None)
        else:
            os.environ["POSECAL_NO_FAST_JSON"] = saved[2]


def _dump(obj, style: str) -> bytes:
    if style == "orjson":
        return orjson.dumps(obj)
    if style == "indent":
        return json.dumps(obj, indent=2).encode()
    return json.dumps(obj).encode()  # ", " separators as MMPose writes


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), style=st.sampled_from(["orjson", "indent", "spaces"]),
       exotic=st.booleans())
def test_fast_json_path_equals_plain_path(seed, style, exotic):
    gt, res = make_coco_set(seed, n_images=6, max_gts=4, max_dets=6)
    rng = np.random.default_rng(seed)
    if exotic and res:  # numbers in every JSON spelling: ints, exponents, many digits, negative zero
        for r in res:
            k = np.asarray(r["keypoints"])
            vals = [float(v) * 10.0 ** int(rng.integers(-8, 9)) for v in k]
            vals[0] = -0.0
            vals[1] = int(rng.integers(-1000, 1000))
            r["keypoints"] = vals
    gbytes, rbytes = _dump(gt, style), _dump(res, style)
    with warnings.catch_warnings(), _fast_path(True) as used_fast:
        warnings.simplefilter("ignore")
        g_fast = coco.load_gt(gbytes)
        r_fast = coco.load_results(rbytes, g_fast)
    with warnings.catch_warnings(), _fast_path(False) as used_slow:
        warnings.simplefilter("ignore")
        g_slow = coco.load_gt(gbytes)
        r_slow = coco.load_results(rbytes, g_slow)
    if len(res) and len(gt["annotations"]):
        assert used_fast == [True, True] and not any(used_slow)
    np.testing.assert_array_equal(g_fast.keypoints, g_slow.keypoints)
    np.testing.assert_array_equal(r_fast.keypoints, r_slow.keypoints)
    np.testing.assert_array_equal(r_fast.det_area, r_slow.det_area)
    assert np.array_equal(np.signbit(r_fast.keypoints), np.signbit(r_slow.keypoints))
    # the record dicts get their keypoints back
    slow_kp = [list(map(float, r["keypoints"])) for r in r_slow.records]
    assert [r["keypoints"] for r in r_fast.records] == slow_kp


def test_fast_json_path_falls_back_for_errors(tmp_path, small):
    """Bad input on the fast path is reported exactly like on the plain path."""
    gt, res = small
    g = coco.load_gt(gt)
    for mutate, field in [(lambda r: r[2]["keypoints"].pop(), "keypoints"),
                          (lambda r: r[1]["keypoints"].__setitem__(3, math.nan), "keypoints"),
                          (lambda r: r[0].__setitem__("keypoints", []), "keypoints"),
                          (lambda r: r[1].__setitem__("extra", {"keypoints": [1, 2, 3]}), None)]:
        bad = copy.deepcopy(res)
        mutate(bad)
        p = tmp_path / "r.json"
        p.write_text(json.dumps(bad))
        with _fast_path(True):
            _check_bad(coco, p, g, bad, field)


def _check_bad(coco, p, g, bad, field):
    if field is None:  # legal: a nested "keypoints" elsewhere must not confuse the fast path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = coco.load_results(p, g)
        assert r.records[1]["extra"] == {"keypoints": [1, 2, 3]}
        np.testing.assert_array_equal(r.keypoints.reshape(len(r), -1)[0], bad[0]["keypoints"])
        return
    e = _err(coco.load_results, p, g)
    assert e.field == field and e.file == str(p)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(0, 40), k=st.integers(1, 20), block=st.sampled_from([1, 3, 7, 4096]))
def test_keypoint_extent_is_the_box_of_the_points(seed, n, k, block):
    """Block-wise (transposed) boxes equal the plain per-row min / max, with and without a labelled mask."""
    rng = np.random.default_rng(seed)
    kps = rng.normal(0, 100, (n, k, 3)).round(rng.integers(0, 4))
    lab = rng.uniform(size=(n, k)) < 0.6
    got = coco.keypoint_extent(kps, block=block)
    want = np.stack([kps[:, :, 0].min(1, initial=np.inf), kps[:, :, 0].max(1, initial=-np.inf),
                     kps[:, :, 1].min(1, initial=np.inf), kps[:, :, 1].max(1, initial=-np.inf)])
    np.testing.assert_array_equal(got, want)
    got = coco.keypoint_extent(kps, lab, block=block)
    want = np.stack([np.where(lab, kps[:, :, 0], np.inf).min(1, initial=np.inf),
                     np.where(lab, kps[:, :, 0], -np.inf).max(1, initial=-np.inf),
                     np.where(lab, kps[:, :, 1], np.inf).min(1, initial=np.inf),
                     np.where(lab, kps[:, :, 1], -np.inf).max(1, initial=-np.inf)])
    np.testing.assert_array_equal(got, want)


def test_zero_area_on_labelled_people_warned(small):
    """A labelled, non-crowd person with area 0 can never be matched (OKS scales by the area; pycocotools
    scores it so): load_gt warns once, naming the first such record; crowd regions and unlabelled people
    with area 0 are not warned about. The evaluation is unchanged (still pycocotools')."""
    gt, res = copy.deepcopy(small[0]), small[1]
    labelled = [a for a in gt["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    for a in labelled[:2]:
        a["area"] = 0.0
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        g = load_gt(gt)
    msgs = [str(x.message) for x in w if issubclass(x.category, PosecalWarning) and "area 0" in str(x.message)]
    assert len(msgs) == 1 and "2 labelled people have area 0" in msgs[0], msgs
    assert f"record {labelled[0]['id']}" in msgs[0]
    ok = copy.deepcopy(small[0])
    for a in ok["annotations"]:
        if a["num_keypoints"] == 0 or a["iscrowd"]:
            a["area"] = 0.0
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_gt(ok)
    assert not [x for x in w if "area 0" in str(x.message)]
    assert g.area[np.isin(g.ann_id, [a["id"] for a in labelled[:2]])].tolist() == [0.0, 0.0]
    from _cocoref import run_pycocotools

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = evaluate(g, load_results(res, g)).stats
    ref = run_pycocotools(gt, res)["stats"]
    np.testing.assert_allclose([got[k] for k in ("AP", "AP50", "AP75", "APm", "APl", "AR")],
                               ref[[0, 1, 2, 3, 4, 5]], atol=1e-12)
