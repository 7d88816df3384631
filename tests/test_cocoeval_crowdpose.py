"""CrowdPose evaluation: AP(E)/AP(M)/AP(H) from each image's crowdIndex, as crowdposetools computes them.

References: xtcocotools' ``iouType='keypoints_crowd'`` (the code MMPose's CrowdPose metric runs, adapted
from crowdposetools) run on the same files; crowdposetools itself (not installable) is pycocotools with the
CrowdPose sigmas, 0.53·w·h areas and the crowd-level re-evaluation, which is emulated below with pycocotools
(imgIds subsets, ``round(mean(precision[:, :, :, 0, :]), 4)``); MMPose's CocoMetric test expectation on its
CrowdPose fixture; hand-built cases.
"""

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
from posecal.errors import PosecalInputError
from posecal.io.coco import load_gt, load_results
from posecal.keypoints import CROWDPOSE14
from posecal.metrics.cocoeval import CROWD_STAT_NAMES, crowd_level_image_ids, evaluate, evaluate_dataset

CROWD_LEVELS = [0.0, 0.05, 0.1, 0.19, 0.2, 0.21, 0.5, 0.79, 0.8, 0.81, 1.0]


def _crowd_set(seed: int, *, zero_scores: bool, gt_id_zero: bool = False, n_images: int = 8):
    gt, res = make_coco_set(seed, n_images=n_images, max_gts=6, max_dets=25, K=14, with_area=False,
                            p_zero_score=0.05 if zero_scores else 0.0, gt_id_zero=gt_id_zero)
    gt["categories"][0]["keypoints"] = list(CROWDPOSE14.names)
    rng = np.random.default_rng(seed + 7)
    for im in gt["images"]:
        im["crowdIndex"] = float(rng.choice(CROWD_LEVELS))
    for r in res:  # no boxes in CrowdPose results (keypoint-extent detection area)
        r.pop("bbox", None)
    return gt, res


def _xtcocotools_crowd(gt: dict, res: list, tmp_path) -> np.ndarray:
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    gp = tmp_path / "gt.json"
    gp.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(str(gp))
        cd = cg.loadRes(copy.deepcopy(res))
        ev = COCOeval(cg, cd, "keypoints_crowd", sigmas=CROWDPOSE14.sigmas, use_area=False)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def _crowdposetools_emulated(gt: dict, res: list) -> np.ndarray:
    """crowdposetools' COCOeval written as pycocotools + its three changes: CrowdPose sigmas, OKS and area
    ranges on 0.53·w·h (the gt 'area' replaced), and the crowd levels re-evaluated on imgIds subsets."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    g = copy.deepcopy(gt)
    for a in g["annotations"]:
        a["area"] = a["bbox"][2] * a["bbox"][3] * 0.53
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = g
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(res))

        def run(img_ids=None):
            ev = COCOeval(cg, cd, "keypoints")
            ev.params.kpt_oks_sigmas = CROWDPOSE14.sigmas
            if img_ids is not None:
                ev.params.imgIds = img_ids
            ev.evaluate()
            ev.accumulate()
            return ev

        ev = run()
        ev.summarize()
        stats = [ev.stats[i] for i in (0, 1, 2, 5, 6, 7)]
        first, second = 0.2, 0.8
        levels = [[], [], []]
        for im in g["images"]:
            ci = im["crowdIndex"]
            levels[0 if ci < first else 1 if ci < second else 2].append(im["id"])
        for ids in levels:
            if ids:
                p = run(ids).eval["precision"]
            else:  # crowdposetools: evaluate() over no image leaves precision at -1
                p = -np.ones((10, 101, 1, 3, 1))
            stats.append(round(np.mean(p[:, :, :, 0, :]), 4))
    return np.asarray(stats)


def _ours(gt: dict, res: list, **kw) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = load_gt(copy.deepcopy(gt))
        r = evaluate(g, load_results(copy.deepcopy(res), g), **kw)
    assert tuple(r.stats) == CROWD_STAT_NAMES
    return r.stats_array()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_crowdpose_equals_xtcocotools_keypoints_crowd(seed, tmp_path_factory):
    """xtcocotools' keypoints_crowd (MMPose) drops all-zero-score detections; without any, it equals
    crowdposetools."""
    gt, res = _crowd_set(seed, zero_scores=False)
    ref = _xtcocotools_crowd(gt, res, tmp_path_factory.mktemp("x"))
    np.testing.assert_array_equal(_ours(gt, res, flavor="crowdpose"), ref)
    ours = _ours(gt, res, flavor="xtcocotools", crowd_levels=True, use_area=False)
    np.testing.assert_array_equal(ours, ref)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_xtcocotools_crowd_with_zero_score_detections(seed, tmp_path_factory):
    gt, res = _crowd_set(seed, zero_scores=True)
    ref = _xtcocotools_crowd(gt, res, tmp_path_factory.mktemp("x"))
    ours = _ours(gt, res, flavor="xtcocotools", crowd_levels=True, use_area=False)
    np.testing.assert_array_equal(ours, ref)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), gt_id_zero=st.booleans())
def test_crowdpose_equals_crowdposetools_emulation(seed, gt_id_zero):
    """crowdposetools keeps all-zero-score detections and pycocotools' id-0 quirk."""
    gt, res = _crowd_set(seed, zero_scores=True, gt_id_zero=gt_id_zero)
    np.testing.assert_array_equal(_ours(gt, res, flavor="crowdpose"), _crowdposetools_emulated(gt, res))


def test_mmpose_crowdpose_fixture(shared):
    """MMPose tests/test_evaluation/test_metrics/test_coco_metric.py (CocoMetric, iou_type='keypoints_crowd',
    use_area=False) expects AP = AR = 1, AP(E) = -1, AP(M) = 1, AP(H) = -1 for the gt keypoints as
    predictions (both images have crowdIndex 0.33 / 0.39: medium)."""
    gt = json.loads(shared("data", "mmpose-fixtures", "crowdpose", "test_crowdpose.json").read_text())
    res = []
    for a in gt["annotations"]:  # MMPose's score_mode 'bbox_keypoint': box score 1 x mean of scores > 0.2
        ks = np.asarray(a["keypoints"], dtype=float)[2::3]
        valid = ks[ks > 0.2]
        res.append({"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"],
                    "score": float(valid.mean()) if valid.size else 0.0})
    expected = {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR": 1.0, "AR50": 1.0, "AR75": 1.0, "AP(E)": -1.0,
                "AP(M)": 1.0, "AP(H)": -1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = evaluate_dataset(gt, res)  # auto: crowdIndex on every image -> crowdpose
    assert ev.flavor == "crowdpose" and ev.result.stats == expected


def test_hand_built_levels():
    """Three images, one per level; the easy image's detection is perfect, the medium one's misses, the hard
    image has no detection: AP(E) = 1, AP(M) = 0, AP(H) = 0; the level thresholds are crowdposetools'."""
    kp = [10.0, 10.0, 2] * 14
    far = [500.0, 400.0, 1.0] * 14
    gt = {"images": [{"id": i, "crowdIndex": c} for i, c in ((1, 0.19), (2, 0.2), (3, 0.8))],
          "categories": [{"id": 1, "name": "person", "keypoints": list(CROWDPOSE14.names)}],
          "annotations": [{"id": 10 + i, "image_id": i, "category_id": 1, "keypoints": kp,
                           "num_keypoints": 14, "bbox": [0, 0, 40, 80], "iscrowd": 0} for i in (1, 2, 3)]}
    res = [{"image_id": 1, "category_id": 1, "keypoints": kp, "score": 0.9},
           {"image_id": 2, "category_id": 1, "keypoints": far, "score": 0.8}]
    g = load_gt(gt)
    assert [x.tolist() for x in crowd_level_image_ids(g)] == [[1], [2], [3]]
    s = evaluate(g, load_results(res, g), flavor="crowdpose").stats
    assert (s["AP(E)"], s["AP(M)"], s["AP(H)"]) == (1.0, 0.0, 0.0)
    assert s["AR"] == pytest.approx(1 / 3)


def test_missing_crowd_index_is_refused():
    gt = {"images": [{"id": 1, "crowdIndex": 0.5}, {"id": 2}],
          "categories": [{"id": 1, "name": "person", "keypoints": list(CROWDPOSE14.names)}],
          "annotations": []}
    with pytest.raises(PosecalInputError) as e:
        evaluate(load_gt(gt), [], flavor="crowdpose")
    assert e.value.field == "crowdIndex"
