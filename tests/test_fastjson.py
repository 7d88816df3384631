"""The fast keypoint-array JSON path accepts exactly what the strict (orjson) path accepts, with the same
numbers; numbers must be JSON numbers (differential property test over valid and invalid documents)."""

from __future__ import annotations

import contextlib
import json
import os
import warnings

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _cocogen import make_coco_set
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.io import fastjson
from posecal.io.coco import load_gt, load_results

# spellings of one number inside a "keypoints" array: (text, is valid JSON)
SPELLINGS = [
    ("1.5", True), ("-0.25", True), ("0", True), ("-0", True), ("10", True), ("1e5", True), ("1E+05", True),
    ("2.5e-3", True), ("0.0", True), ("123456789012", True),
    ("+1.0", False), (".5", False), ("1.", False), ("01", False), ("-01", False), ("00.5", False),
    ("1.e5", False), ("-.5", False), ("NaN", False), ("Infinity", False), ("-Infinity", False),
    ('"1.0"', False), ("true", False), ("null", False), ("1e", False), ("--1", False), ("1-2", False),
    ("0x10", False), ("1 2", False), ("", False), ("[1]", False), ("1_0", False), ("1e400", False),
    ("-1E400", False), ("1e-400", True), ("false", False), ("{}", False), ("99999999999999999999999", True),
    ("-9223372036854775809", True), ("1.7976931348623157e308", True), ("5e-324", True),
]


@contextlib.contextmanager
def _path(fast: bool):
    saved = fastjson.FAST_MIN_BYTES, fastjson._FAST_MIN_RECORDS, os.environ.get("POSECAL_NO_FAST_JSON")
    fastjson.FAST_MIN_BYTES, fastjson._FAST_MIN_RECORDS = 0, 1
    if fast:
        os.environ.pop("POSECAL_NO_FAST_JSON", None)
    else:
        os.environ["POSECAL_NO_FAST_JSON"] = "1"
    try:
        yield
    finally:
        fastjson.FAST_MIN_BYTES, fastjson._FAST_MIN_RECORDS = saved[:2]
        if saved[2] is None:
            os.environ.pop("POSECAL_NO_FAST_JSON", None)
        else:
            os.environ["POSECAL_NO_FAST_JSON"] = saved[2]


def _load(gt, src, fast: bool):
    """load_results of ``src`` (bytes or a path) on the fast or the strict path: ("ok", arrays...) or
    ("error", field, message)."""
    with _path(fast), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            r = load_results(src, gt)
        except PosecalInputError as e:
            assert "\n" not in str(e)
            return ("error", e.field, str(e))
        return ("ok", r.keypoints.copy(), r.score.copy(), [x["keypoints"] for x in r.records])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**20), spell=st.sampled_from(SPELLINGS), where=st.integers(0, 10**6),
       sep=st.sampled_from([", ", ",", " , ", ",\n  "]))
def test_fast_path_equals_strict_path(seed, spell, where, sep, tmp_path):
    gt_d, res = make_coco_set(seed, n_images=3, max_gts=3, max_dets=4)
    if not res:
        return
    gt = load_gt(gt_d)
    text, valid = spell
    # the records' keypoint arrays written by hand with the separator, one number replaced by the spelling
    i = where % len(res)
    j = (where // len(res)) % len(res[i]["keypoints"])
    parts = []
    for k, r in enumerate(res):
        nums = [json.dumps(float(v)) for v in r["keypoints"]]
        if k == i:
            nums[j] = text
        rest = json.dumps({kk: vv for kk, vv in r.items() if kk != "keypoints"})[1:-1]
        parts.append('{"keypoints": [' + sep.join(nums) + "], " + rest + "}")
    doc = ("[" + ",\n".join(parts) + "]").encode()
    path = tmp_path / "pred.json"
    path.write_bytes(doc)
    strict = _load(gt, doc, False)
    # bytes and the file (memory-mapped) on the fast path
    for fast, strict_same_src in ((_load(gt, doc, True), strict),
                                  (_load(gt, str(path), True), _load(gt, str(path), False))):
        assert fast[0] == strict[0], (text, fast[0], strict[0])
        if strict[0] == "ok":
            assert valid, f"{text!r} accepted"
            np.testing.assert_array_equal(fast[1], strict[1])
            assert np.array_equal(np.signbit(fast[1]), np.signbit(strict[1]))
            assert fast[3] == strict[3]
        else:
            assert fast[1] == strict[1]  # the same field named
            assert fast[2] == strict_same_src[2]  # the same message (file, record, field, reason)
            if text not in ("NaN", "Infinity", "-Infinity"):
                assert not valid or text == "", text


@pytest.mark.parametrize("value", ['"1.5"', '"1"', "true", "false", "null", "[1]", "{}"])
@pytest.mark.parametrize("fld", ["image_id", "category_id", "score", "bbox", "keypoints"])
def test_numbers_must_be_numbers(value, fld):
    gt_d, res = make_coco_set(3, n_images=3, max_gts=3, max_dets=4, result_bbox=True)
    gt = load_gt(gt_d)
    bad = json.loads(json.dumps(res))
    if fld in ("bbox", "keypoints"):
        bad[0][fld][1] = json.loads(value)
    else:
        bad[0][fld] = json.loads(value)
    if fld == "category_id" and value.startswith('"'):
        # a string id against integer ids names no category: left out with a warning, as pycocotools leaves it
        # out (compared with pycocotools in tests/test_audit_s27_evaluate.py)
        for src in (bad, json.dumps(bad).encode()):
            with pytest.warns(PosecalWarning, match="not in the ground truth"):
                r = load_results(src, gt)
            assert r.category_id[0] not in set(gt.category_ids.tolist())
        return
    for src in (bad, json.dumps(bad).encode()):
        with pytest.raises(PosecalInputError) as e:
            load_results(src, gt)
        assert e.value.field == fld and e.value.record == 0


@pytest.mark.parametrize("value", ["true", '"2"', "2.5"])
def test_gt_integer_fields_refuse_non_integers(value):
    gt_d, _ = make_coco_set(4, n_images=3, max_gts=3, max_dets=4)
    for fld in ("iscrowd", "num_keypoints", "image_id"):
        if fld == "iscrowd" and value == "true":
            continue  # a JSON boolean iscrowd is read as pycocotools reads it (tests/test_hostile_inputs.py)
        if fld == "num_keypoints" and value == "2.5":
            continue  # pycocotools only asks num_keypoints == 0: 2.5 is "some" (tests/test_audit_s27_evaluate.py)
        g = json.loads(json.dumps(gt_d))
        g["annotations"][0][fld] = json.loads(value)
        with pytest.raises(PosecalInputError) as e:
            load_gt(g)
        assert e.value.field == fld


def test_nan_outside_checked_fields_is_refused():
    gt_d, res = make_coco_set(5, n_images=3, max_gts=3, max_dets=4)
    gt = load_gt(gt_d)
    img, kps = gt_d["images"][0]["id"], json.dumps([1.0] * 51)
    extra = f'{{"image_id": {img}, "category_id": 1, "keypoints": {kps}, "score": 0.5, "extra": NaN}}'
    text = json.dumps(res)[:-1] + ", " + extra + "]"
    with pytest.raises(PosecalInputError, match="NaN"):
        load_results(text.encode(), gt)


def _strict_rows(rows: list[bytes]):
    """What the strict parser makes of the arrays: an (N, K) array when every one is a JSON array of K > 0
    numbers (not booleans), else None."""
    try:
        vals = [orjson.loads(b"[" + r + b"]") for r in rows]
    except orjson.JSONDecodeError:
        return None
    if len({len(v) for v in vals}) != 1 or not vals[0]:
        return None
    if any(type(x) not in (int, float) for v in vals for x in v):
        return None
    try:
        return np.array(vals, dtype=np.float64)
    except OverflowError:
        return None


@settings(max_examples=400, deadline=None)
@given(rows=st.lists(st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr),
                                        st.integers(-10**20, 10**20).map(str),
                                        st.sampled_from(["-0", "1e400", "+1", ".5", "01", "1E+05", "true", "null",
                                                         '"1"', "NaN", "1_0", "0x1", "", "2.5e-3", "-0.0"])),
                              min_size=1, max_size=4), min_size=1, max_size=7),
       seps=st.sampled_from([", ", ",", " ,\n ", ",\t"]), chunk=st.sampled_from([1, 2, 3, 1024]))
def test_rows_read_exactly_as_the_strict_parser(rows, seps, chunk):
    """The chunked orjson reader gives the strict parser's numbers (bit for bit, -0.0 included) or
    None, at any chunk size."""
    texts = [seps.join(r).encode() for r in rows]
    saved = fastjson._CHUNK_ROWS
    fastjson._CHUNK_ROWS = chunk
    try:
        fast = fastjson._read_rows(texts)
    finally:
        fastjson._CHUNK_ROWS = saved
    strict = _strict_rows(texts)
    if strict is None:
        assert fast is None, texts
    else:
        assert fast is not None, texts
        np.testing.assert_array_equal(fast, strict)
        assert np.array_equal(np.signbit(fast), np.signbit(strict))


def test_arrays_that_are_not_numbers_stay_in_the_text():
    """A category's keypoint names anywhere (not only first or last) are left to orjson; the numeric arrays
    are still read at once."""
    names = b'"a", "b", "c"'
    arrays = [b"1, 2, 3"] * 70 + [names] + [b"4.5, -0.0, 6"] * 70
    doc = b"[" + b", ".join(b'{"keypoints": [' + a + b"]}" for a in arrays) + b"]"
    rest, arr = fastjson._fast_keypoints(doc)
    assert arr.shape == (140, 3) and np.signbit(arr[-1, 1])
    assert orjson.loads(rest)[70] == {"keypoints": ["a", "b", "c"]}
