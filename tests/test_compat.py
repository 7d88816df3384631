"""``posecal.compat``: pycocotools' and xtcocotools' usage patterns through both, every attribute equal."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _cocogen import make_coco_set
from posecal import compat
from posecal.keypoints import CROWDPOSE14


def _run(mod_coco, mod_eval, gt_path, res, iou_type="keypoints", setup=None, **kw):
    """The canonical script: COCO(path) -> loadRes -> COCOeval -> params -> evaluate/accumulate/summarize."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cg = mod_coco.COCO(str(gt_path))
        cd = cg.loadRes(copy.deepcopy(res))
        ev = mod_eval.COCOeval(cg, cd, iou_type, **kw)
        if setup is not None:
            setup(ev.params, cg)
        ev.evaluate()
        ev.accumulate()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev.summarize()
    return ev, out.getvalue().splitlines(), cd


def _assert_same(ours, ref, lines_o, lines_r, eval_imgs=True):
    assert lines_o == lines_r
    np.testing.assert_array_equal(np.asarray(ours.stats), np.asarray(ref.stats))
    for k in ("precision", "recall", "scores"):
        assert ours.eval[k].shape == ref.eval[k].shape, k
        np.testing.assert_array_equal(ours.eval[k], ref.eval[k], err_msg=k)
    assert ours.eval["counts"] == ref.eval["counts"]
    for k in ("imgIds", "catIds", "maxDets", "useCats"):
        assert list(np.atleast_1d(getattr(ours.params, k))) == list(np.atleast_1d(getattr(ref.params, k))), k
    if not eval_imgs:
        return
    assert len(ours.evalImgs) == len(ref.evalImgs)
    for a, b in zip(ours.evalImgs, ref.evalImgs, strict=True):
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert set(a) == set(b)
        for k in b:
            va, vb = a[k], b[k]
            if isinstance(vb, np.ndarray):
                assert va.dtype == vb.dtype and va.shape == vb.shape, k
                np.testing.assert_array_equal(va, vb, err_msg=k)
            else:
                assert list(np.atleast_1d(va)) == list(np.atleast_1d(vb)), k


SETUPS = {
    "default": None,
    "img_subset": lambda p, cg: setattr(p, "imgIds", sorted(cg.getImgIds())[::2]),
    "max_dets": lambda p, cg: setattr(p, "maxDets", [20, 5]),
    "max_dets_no20": lambda p, cg: setattr(p, "maxDets", [10]),
    "cat_subset": lambda p, cg: setattr(p, "catIds", [3]),
    "sigmas": lambda p, cg: setattr(p, "kpt_oks_sigmas", np.linspace(0.03, 0.1, 17)),
    "area_rng": lambda p, cg: (setattr(p, "areaRng", [[0, 1e10], [0, 50**2], [50**2, 1e10]]),
                               setattr(p, "areaRngLbl", ["all", "medium", "large"])),
    "no_cats": lambda p, cg: setattr(p, "useCats", 0),
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), box=st.booleans())
def test_matches_pycocotools(setup, seed, box, tmp_path_factory):
    from pycocotools import coco as pc
    from pycocotools import cocoeval as pe

    gt, res = make_coco_set(seed, n_images=5, max_gts=4, max_dets=22, two_categories=True, result_bbox=box)
    if not res:
        return
    p = tmp_path_factory.mktemp("c") / "gt.json"
    p.write_text(json.dumps(gt))
    ref, lr, _ = _run(pc, pe, p, res, setup=SETUPS[setup])
    ours, lo, _ = _run(compat, compat, p, res, setup=SETUPS[setup])
    _assert_same(ours, ref, lo, lr)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), use_area=st.booleans())
def test_matches_xtcocotools(seed, use_area, tmp_path_factory):
    from xtcocotools import coco as xc
    from xtcocotools import cocoeval as xe

    gt, res = make_coco_set(seed, n_images=6, max_gts=5, max_dets=24)
    if not res:
        return
    p = tmp_path_factory.mktemp("x") / "gt.json"
    p.write_text(json.dumps(gt))
    sig = np.linspace(0.03, 0.1, 17)
    ref, lr, _ = _run(xc, xe, p, res, sigmas=sig, use_area=use_area)
    ours, lo, _ = _run(compat, compat, p, res, sigmas=sig, use_area=use_area)
    _assert_same(ours, ref, lo, lr)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_matches_xtcocotools_keypoints_crowd(seed, tmp_path_factory):
    from xtcocotools import coco as xc
    from xtcocotools import cocoeval as xe

    gt, res = make_coco_set(seed, n_images=8, max_gts=5, max_dets=12, K=14, with_area=False)
    if not res:
        return
    gt["categories"][0]["keypoints"] = list(CROWDPOSE14.names)
    rng = np.random.default_rng(seed)
    for im in gt["images"]:
        im["crowdIndex"] = float(rng.choice([0.0, 0.3, 0.9]))
    p = tmp_path_factory.mktemp("k") / "gt.json"
    p.write_text(json.dumps(gt))
    kw = {"sigmas": CROWDPOSE14.sigmas, "use_area": False}
    ref, lr, _ = _run(xc, xe, p, res, "keypoints_crowd", **kw)
    ours, lo, _ = _run(compat, compat, p, res, "keypoints_crowd", **kw)
    # after summarize() xtcocotools has re-evaluated the last crowd level in place: compare the stats,
    # the printed lines and the arrays of the full evaluation (taken before summarize)
    assert lo == lr
    np.testing.assert_array_equal(np.asarray(ours.stats), np.asarray(ref.stats))


def test_loadres_fields_and_index(shared):
    from pycocotools import coco as pc

    path = shared("data", "mmpose-fixtures", "coco", "test_coco.json")
    gt = json.loads(path.read_text())
    res = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 0.5}
           for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        ours, ref = compat.COCO(str(path)), pc.COCO(str(path))
        dr, do = ref.loadRes(copy.deepcopy(res)), ours.loadRes(copy.deepcopy(res))
    assert ours.getImgIds() == ref.getImgIds() and ours.getCatIds() == ref.getCatIds()
    assert ours.getAnnIds(imgIds=ref.getImgIds()[:2]) == ref.getAnnIds(imgIds=ref.getImgIds()[:2])
    assert ours.loadImgs(ref.getImgIds()[0]) == ref.loadImgs(ref.getImgIds()[0])
    for a, b in zip(do.dataset["annotations"], dr.dataset["annotations"], strict=True):
        assert a["id"] == b["id"] and a["area"] == b["area"]
        assert [float(v) for v in a["bbox"]] == [float(v) for v in b["bbox"]]


def test_other_iou_types_are_refused():
    with pytest.raises(ValueError, match="keypoints only"):
        compat.COCOeval(None, None, "bbox")
