"""Audit s27, third-party evaluator cases: every COCO-keypoint ground-truth file of MMPose's test data
(../shared/data/mmpose-fixtures) through ``posecal evaluate`` and ``posecal.metrics.cocoeval.evaluate``,
against the reference MMPose runs for that dataset: xtcocotools' ``COCOeval`` loading the same files with the
dataset's metainfo sigmas (float64 as written, and float32 as MMPose's ``parse_pose_metainfo`` hands them
over), ``use_area`` as MMPose's configs set it, ``keypoints_crowd`` for CrowdPose / ExLPose. Predictions:
the gt keypoints jittered (seeded), random and > 1 scores, dropped and duplicated people, false positives.

Fixed here (the tests fail without the fix):

* MHP (MPII-16 names) was scored with posecal's COCO-borrowed MPII-16 sigmas: MPII-16's sigmas are now MMPose's
  mpii / mhp metainfo sigmas, everywhere (evaluate, fit targets, rescoring);
* AI Challenger (14 named keypoints) and Halpe (136 keypoints, no names) were refused ("match no known keypoint
  set"): now MMPose's aic / halpe sigmas, with a warning;
* CrowdPose-style files (ExLPose) under the default crowdposetools flavor: detections with every keypoint
  score 0 changed the stats against MMPose's keypoints_crowd without a word; now a warning names
  ``--flavor xtcocotools`` (as does the gt-id-0 warning, which ExLPose's fixture triggers).
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

from _cocogen import perturb_gt
from _cocoref import posecal_evaluate_json
from posecal.io.coco import load_gt, load_results
from posecal.metrics.cocoeval import evaluate

pytest.importorskip("xtcocotools")

FIX = ("data", "mmpose-fixtures")
# MMPose configs/_base_/datasets/*.py
COCO = [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087,
        0.089, 0.089]
MHP = [0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026, 0.062, 0.072, 0.179, 0.179, 0.072,
       0.062]
AIC = [0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642, 0.03686941, 0.01981803,
       0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173]
CROWD = [0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089, 0.079, 0.079]
HALPE = COCO + [0.08, 0.08, 0.08] + [0.089] * 6 + [0.015] * 110

# file -> (MMPose sigmas, use_area of MMPose's config, iou_type)
DATASETS = {
    "coco/test_coco.json": (COCO, True, "keypoints"),
    "ochuman/test_ochuman.json": (COCO, True, "keypoints"),
    "humanart/test_humanart.json": (COCO, True, "keypoints"),
    "mhp/test_mhp.json": (MHP, True, "keypoints"),
    "aic/test_aic.json": (AIC, False, "keypoints"),
    "halpe/test_halpe.json": (HALPE, True, "keypoints"),
    "crowdpose/test_crowdpose.json": (CROWD, False, "keypoints_crowd"),
    "exlpose/test_exlpose.json": (CROWD, False, "keypoints_crowd"),
}


def _gt_path(shared, name: str) -> Path:
    return shared(*FIX, *name.split("/"))


def _predictions(gt: dict, seed: int, *, zero_scores: bool = False) -> list:
    """Jittered gts (0–3 copies each: dropped and duplicated people), scores up to 5, false positives on every
    image, one exact duplicate record."""
    res = perturb_gt(gt, seed, copies=3)
    rng = np.random.default_rng(seed + 1000)
    for r in res:
        if rng.uniform() < 0.2:
            r["score"] = float(np.round(r["score"] * rng.uniform(1, 5), 3))
    K = len(gt["annotations"][0]["keypoints"]) // 3
    for im in gt["images"]:
        for _ in range(int(rng.integers(0, 3))):
            w, h = im.get("width", 500), im.get("height", 500)
            kp = np.c_[rng.uniform(0, w, K), rng.uniform(0, h, K), rng.uniform(0, 1, K)].round(2).ravel()
            res.append({"image_id": im["id"], "category_id": 1, "keypoints": kp.tolist(),
                        "score": float(np.round(rng.uniform(0, 1.2), 3))})
    if zero_scores:
        for r in res[::3]:
            r["keypoints"][2::3] = [0] * K
            r["score"] = 0.99
    if res:
        res.append(copy.deepcopy(res[0]))
    return res


def _mmpose_reference(gt_path: Path, res_path: Path, sigmas: list, use_area: bool, iou_type: str,
                      dtype=np.float64) -> np.ndarray:
    from xtcocotools.coco import COCO as XCOCO
    from xtcocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = XCOCO(str(gt_path))
        cd = cg.loadRes(str(res_path))
        ev = COCOeval(cg, cd, iou_type, np.array(sigmas, dtype=dtype), use_area=use_area)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def _write(tmp_path: Path, res: list) -> Path:
    p = tmp_path / "res.json"
    p.write_text(json.dumps(res))
    return p


def _stats(doc: dict) -> np.ndarray:
    return np.array(list(doc["coco"].values()))


def _mmpose_flags(use_area: bool, iou_type: str) -> list[str]:
    return ["--flavor", "xtcocotools"] + ([] if use_area else ["--no-use-area"])


# ---- the fixed cases ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_mhp_default_sigmas_are_mmposes(shared, tmp_path, seed):
    """MHP's gt names MPII's 16 joints; MMPose evaluates it with mhp.py's sigmas (0.179 shoulders...). Before:
    posecal's COCO-borrowed MPII-16 sigmas, silently (AP 0.270 against 0.227 for seed 0)."""
    name = "mhp/test_mhp.json"
    gp = _gt_path(shared, name)
    rp = _write(tmp_path, _predictions(json.loads(gp.read_text()), seed))
    want = _mmpose_reference(gp, rp, MHP, True, "keypoints")
    rc, doc, err = posecal_evaluate_json(gp, rp, "--flavor", "xtcocotools")
    assert rc == 0, err
    np.testing.assert_array_equal(_stats(doc), want)
    assert doc["sigmas"] == "mpii16" and doc["sigma_values"] == MHP
    assert "MMPose's mpii" not in err and "--keypoint-set" not in err, err  # the set's own sigmas: no warning
    rc, doc, _ = posecal_evaluate_json(gp, rp)  # pycocotools flavor: the same numbers on this file
    np.testing.assert_array_equal(_stats(doc), want)
    rc, doc, err = posecal_evaluate_json(gp, rp, "--keypoint-set", "mhp")  # MMPose's dataset name, an alias
    assert rc == 0 and doc["sigmas"] == "mpii16"
    np.testing.assert_array_equal(_stats(doc), want)


@pytest.mark.parametrize("seed", [0, 1])
def test_aic_default_sigmas_are_mmposes(shared, tmp_path, seed):
    """AI Challenger ('Right Shoulder', ..., 'Head top', 'Neck'): refused before ("match no known keypoint
    set"); MMPose: aic.py sigmas, use_area=False (the file has no 'area')."""
    gp = _gt_path(shared, "aic/test_aic.json")
    rp = _write(tmp_path, _predictions(json.loads(gp.read_text()), seed))
    want = _mmpose_reference(gp, rp, AIC, False, "keypoints")
    rc, doc, err = posecal_evaluate_json(gp, rp, "--flavor", "xtcocotools")
    assert rc == 0, err
    np.testing.assert_array_equal(_stats(doc), want)
    assert doc["sigmas"] == "aic14" and not doc["use_area"] and "AI Challenger" in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = load_gt(gp)
        r = evaluate(g, load_results(rp, g), flavor="xtcocotools", use_area=False)
    np.testing.assert_array_equal(r.stats_array(), want)


@pytest.mark.parametrize("seed", [0, 1])
def test_halpe_default_sigmas_are_mmposes(shared, tmp_path, seed):
    """Halpe: 136 keypoints, ``categories[0].keypoints`` empty. Refused before; now halpe.py's sigmas."""
    gp = _gt_path(shared, "halpe/test_halpe.json")
    rp = _write(tmp_path, _predictions(json.loads(gp.read_text()), seed))
    want = _mmpose_reference(gp, rp, HALPE, True, "keypoints")
    rc, doc, err = posecal_evaluate_json(gp, rp, "--flavor", "xtcocotools")
    assert rc == 0, err
    np.testing.assert_array_equal(_stats(doc), want)
    assert doc["sigmas"] == "halpe136" and "Halpe" in err
    rc, doc, _ = posecal_evaluate_json(gp, rp, "--keypoint-set", "halpe")
    np.testing.assert_array_equal(_stats(doc), want)


@pytest.mark.parametrize("name", ["exlpose/test_exlpose.json", "crowdpose/test_crowdpose.json"])
def test_crowd_files_zero_score_detections_are_explained(shared, tmp_path, name):
    """Detections whose keypoint scores are all 0: crowdposetools (posecal's default for crowdIndex files)
    keeps them, MMPose's keypoints_crowd drops them. Before: different stats, no word; now a warning naming
    --flavor xtcocotools, which gives MMPose's numbers."""
    gp = _gt_path(shared, name)
    rp = _write(tmp_path, _predictions(json.loads(gp.read_text()), 3, zero_scores=True))
    want = _mmpose_reference(gp, rp, CROWD, False, "keypoints_crowd")
    rc, doc, err = posecal_evaluate_json(gp, rp)
    assert rc == 0 and doc["flavor"] == "crowdpose", err
    assert not np.array_equal(_stats(doc), want)
    assert "every keypoint score 0" in err and "--flavor xtcocotools" in err
    rc, doc, err = posecal_evaluate_json(gp, rp, "--flavor", "xtcocotools")
    assert rc == 0, err
    np.testing.assert_array_equal(_stats(doc), want)
    assert "every keypoint score 0" not in err


def test_exlpose_gt_id_zero_warning_names_mmposes_flavor(shared, tmp_path):
    """ExLPose's fixture has an annotation with id 0: crowdposetools counts its match as a false positive,
    xtcocotools (MMPose) does not; the warning says so."""
    gp = _gt_path(shared, "exlpose/test_exlpose.json")
    gt = json.loads(gp.read_text())
    assert 0 in [a["id"] for a in gt["annotations"]]
    rp = _write(tmp_path, _predictions(gt, 0))
    rc, doc, err = posecal_evaluate_json(gp, rp)
    assert rc == 0 and "id 0 was matched" in err and "crowdposetools" in err and "--flavor xtcocotools" in err
    rc, doc, _ = posecal_evaluate_json(gp, rp, "--flavor", "xtcocotools")
    np.testing.assert_array_equal(_stats(doc), _mmpose_reference(gp, rp, CROWD, False, "keypoints_crowd"))


# ---- every fixture against MMPose's configuration ---------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_fixture_matches_mmpose_configuration(shared, tmp_path, name, seed):
    """The CLI with MMPose's evaluator (--flavor xtcocotools, use_area as MMPose's config) and the default
    sigmas, then with the metainfo sigmas given as --sigmas: the stats of xtcocotools run as MMPose runs it,
    with float64 and float32 (MMPose's) sigmas alike."""
    sig, use_area, iou = DATASETS[name]
    gp = _gt_path(shared, name)
    rp = _write(tmp_path, _predictions(json.loads(gp.read_text()), seed))
    want = _mmpose_reference(gp, rp, sig, use_area, iou)
    np.testing.assert_array_equal(_mmpose_reference(gp, rp, sig, use_area, iou, np.float32), want)
    for extra in ([], ["--sigmas", *map(str, sig)]):
        rc, doc, err = posecal_evaluate_json(gp, rp, *_mmpose_flags(use_area, iou), *extra)
        assert rc == 0, err
        np.testing.assert_array_equal(_stats(doc), want, err_msg=f"{name} {extra[:1]}")
        assert "RuntimeWarning" not in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["coco/test_coco.json", "ochuman/test_ochuman.json", "humanart/test_humanart.json"])
@pytest.mark.parametrize("seed", [2, 3])
def test_coco_like_fixtures_match_pycocotools(shared, tmp_path, name, seed):
    """COCO-17 files (Human-Art's 'keypoints' are COCO's 17 of its 21 names): the default run equals
    pycocotools loading the files."""
    from _cocoref import reference_stats_from_files

    gp = _gt_path(shared, name)
    rp = _write(tmp_path, _predictions(json.loads(gp.read_text()), seed))
    rc, doc, err = posecal_evaluate_json(gp, rp)
    assert rc == 0, err
    np.testing.assert_array_equal(_stats(doc), reference_stats_from_files("pycocotools", gp, rp))


def test_files_that_are_not_coco_keypoint_gt_are_refused_in_one_line(shared, tmp_path):
    """MPII's own list format, a detection list and MPII-TRB (no 'bbox', no 'area': no reference can evaluate
    it, and MMPose scores it with PCK): one error line, exit 2."""
    rp = _write(tmp_path, [{"image_id": 1, "category_id": 1, "keypoints": [1.0, 2.0, 1.0] * 40, "score": 0.5}])
    for name, field in (("mpii/test_mpii.json", None), ("coco/test_coco_det_AP_H_56.json", None),
                        ("mpii/test_mpii_trb.json", "bbox")):
        gp = _gt_path(shared, name)
        rc, _, err = posecal_evaluate_json(gp, rp)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and str(gp) in lines[0], (name, err)
        if field:
            assert f"field '{field}'" in lines[0]
