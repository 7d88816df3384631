"""Files whose category names more keypoints than the annotations carry (MMPose's KeypointPartitionMetric
writes them: 17 COCO names, 6 / 68 / 21 / 133 values per annotation): K from the annotations, sigmas matched
by count, numbers equal to pycocotools / xtcocotools given those sigmas."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from _cocogen import make_coco_set, perturb_gt
from _cocoref import run_xtcocotools
from posecal.errors import PosecalInputError, PosecalWarning
from posecal.io.coco import load_gt, load_results
from posecal.keypoints import COCO_WHOLEBODY133
from posecal.metrics.cocoeval import evaluate, evaluate_dataset

PARTS = {"foot": ["foot_kpts"], "face": ["face_kpts"], "left_hand": ["lefthand_kpts"],
         "right_hand": ["righthand_kpts"],
         "all": ["keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts"]}
WB_PART = {"foot": "foot", "face": "face", "left_hand": "lefthand", "right_hand": "righthand",
           "all": "wholebody"}


def _partition_file(wb: dict, part: str) -> dict:
    """One partition as KeypointPartitionMetric writes it: the part's keypoints in ``keypoints``, the
    category (17 COCO names) and every other field as they were."""
    gt = json.loads(json.dumps(wb))
    for a in gt["annotations"]:
        a["keypoints"] = [v for f in PARTS[part] for v in a[f]]
        for f in ("foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts"):
            a.pop(f)
    return gt


@pytest.mark.parametrize("part", sorted(PARTS))
def test_partition_files_match_references(shared, part):
    wb = json.loads(shared("data", "mmpose-fixtures", "coco", "test_coco_wholebody.json").read_text())
    gt = _partition_file(wb, part)
    res = perturb_gt(gt, 7)
    sig = COCO_WHOLEBODY133.part_sigmas(WB_PART[part])
    with pytest.warns(PosecalWarning, match="keypoint set matched by that count"):
        g = load_gt(gt)
    assert g.num_joints == len(sig) and not g.wholebody
    np.testing.assert_array_equal(g.keypoint_set.sigmas, sig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = load_results(res, g)
        ours_x = evaluate(g, r, flavor="xtcocotools").stats_array()
        ours_p = evaluate(g, r).stats_array()
        dataset = evaluate_dataset(g, r).result.stats_array()
    np.testing.assert_array_equal(ours_x, run_xtcocotools(gt, res, sigmas=sig)["stats"])
    ref_p = _pycocotools_with_sigmas(gt, res, sig)
    np.testing.assert_array_equal(ours_p, ref_p)
    np.testing.assert_array_equal(dataset, ref_p)


def _pycocotools_with_sigmas(gt, res, sig):
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(copy.deepcopy(res)), "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sig)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def test_disagreeing_lengths_still_refused():
    gt, _ = make_coco_set(2, n_images=3, max_gts=3, max_dets=3)
    gt["annotations"][1]["keypoints"] = gt["annotations"][1]["keypoints"][:-3]  # 16 x 3 among 17 x 3
    with pytest.raises(PosecalInputError) as e:
        load_gt(gt)
    assert e.value.field == "keypoints"
    gt2, _ = make_coco_set(2, n_images=3, max_gts=3, max_dets=3)
    for a in gt2["annotations"]:  # all 6 x 3 (a foot partition) except one of 5 x 3
        a["keypoints"] = a["keypoints"][:18]
    gt2["annotations"][-1]["keypoints"] = gt2["annotations"][-1]["keypoints"][:15]
    with pytest.raises(PosecalInputError) as e:
        load_gt(gt2)
    assert e.value.field == "keypoints"


def test_warned_once(shared):
    wb = json.loads(shared("data", "mmpose-fixtures", "coco", "test_coco_wholebody.json").read_text())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_gt(_partition_file(wb, "foot"))
    assert len([x for x in w if issubclass(x.category, PosecalWarning)]) == 1
