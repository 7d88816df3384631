"""Keypoint thresholds for practitioners: ``metrics.threshold_at_precision`` against a brute force,
``pairs.person_keypoint_pairs`` (every person's detection, poorly localised ones included) and the
``"keypoint_thresholds"`` block of ``posecal evaluate --report`` against an independent computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calib_helpers import COCO_MINI, check_report, perturb_gt
from conftest import shared_path
from posecal.calibration.metrics import MetricUndefined, threshold_at_precision


def _brute(c: np.ndarray, ok: np.ndarray, target: float):
    """Every distinct confidence as a threshold (keep c >= t); the one keeping most pairs at >= target."""
    best = None
    for t in np.unique(c):
        k = c >= t
        prec = ok[k].mean()
        if prec >= target - 1e-12 and (best is None or k.sum() > best[1]):
            best = (float(t), int(k.sum()), float(prec))
    return best


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=1, max_size=40),
       st.sampled_from([0.5, 0.75, 0.9, 0.95, 1.0]), st.randoms(use_true_random=False))
def test_threshold_at_precision_is_the_brute_force_and_order_free(pairs, target, rnd):
    c = np.array([p[0] for p in pairs], float) / 4.0  # many ties; values above 1 too (legal scores)
    ok = np.array([p[1] for p in pairs], bool)
    want = _brute(c, ok, target)
    perm = list(range(c.size))
    rnd.shuffle(perm)
    for cc, oo in ((c, ok), (c[perm], ok[perm])):
        if want is None:
            with pytest.raises(MetricUndefined):
                threshold_at_precision(cc, oo, target)
            continue
        r = threshold_at_precision(cc, oo, target)
        assert (r.threshold, r.n_kept) == want[:2]
        assert r.precision == pytest.approx(want[2])
        assert r.kept == pytest.approx(want[1] / c.size) and r.n == c.size


def test_threshold_at_precision_refuses_what_it_cannot_judge():
    with pytest.raises(MetricUndefined):
        threshold_at_precision(np.zeros(0), np.zeros(0, bool), 0.9)
    with pytest.raises(MetricUndefined):  # a NaN confidence is named, not ranked somewhere
        threshold_at_precision(np.array([0.5, np.nan]), np.array([True, False]), 0.9)
    with pytest.raises(ValueError):
        threshold_at_precision(np.array([0.5]), np.array([True]), 0.0)
    with pytest.raises(ValueError):
        threshold_at_precision(np.array([0.5]), np.array([0.3]), 0.9)


def _gt_two_people():
    from posecal.io.coco import load_gt
    from posecal.keypoints import COCO17

    K = 17
    rng = np.random.default_rng(0)
    anns = []
    for i, (cx, cy) in enumerate([(100.0, 100.0), (400.0, 300.0)]):
        kp = np.zeros((K, 3))
        kp[:, 0], kp[:, 1], kp[:, 2] = cx + rng.normal(0, 20, K), cy + rng.normal(0, 40, K), 2
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 8000.0,
                     "bbox": [cx - 50, cy - 100, 100, 200], "num_keypoints": K,
                     "keypoints": kp.ravel().tolist()})
    d = {"images": [{"id": 1, "width": 640, "height": 480, "file_name": "1.jpg"}], "annotations": anns,
         "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}]}
    return d, load_gt(d)


def test_person_pairs_keep_a_poorly_localised_person_and_drop_its_duplicate():
    from posecal.calibration.pairs import best_match, best_oks, person_keypoint_pairs
    from posecal.io.coco import load_results
    from posecal.keypoints import COCO17
    from posecal.metrics.oks import oks_matrix

    d, gt = _gt_two_people()
    a, b = (np.array(x["keypoints"], float).reshape(17, 3) for x in d["annotations"])
    off = np.zeros((17, 3))
    off[:, 0] = 25.0  # person B predicted 25 px off: OKS well below 0.5
    dets = [a + np.r_[0, 0, 0] * 0, b + off, a + off / 10]  # A well, B poorly, then a duplicate of A
    res = load_results([{"image_id": 1, "category_id": 1, "score": s,
                         "keypoints": np.c_[k[:, :2], np.full(17, 0.5)].ravel().tolist()}
                        for s, k in zip((0.9, 0.8, 0.7), dets, strict=True)], gt)
    O = oks_matrix(res.keypoints, gt.keypoints, gt.area, COCO17.sigmas)
    assert O[1, 1] < 0.5 < O[0, 0] and O[2, 0] > 0.5  # the set-up
    oks, g = best_match(gt, res, COCO17.sigmas, one_to_one=True)
    np.testing.assert_array_equal(g, [0, 1, -1])
    np.testing.assert_array_equal(oks, best_oks(gt, res, COCO17.sigmas, one_to_one=True))
    many, g_many = best_match(gt, res, COCO17.sigmas)
    np.testing.assert_array_equal(g_many, [0, 1, 0])  # many-to-one: the duplicate keeps its person
    np.testing.assert_array_equal(many, O.max(1))
    kp = person_keypoint_pairs(gt, res, COCO17.sigmas)
    np.testing.assert_array_equal(kp.det_index, [0, 1])
    np.testing.assert_allclose(kp.oks[1].mean(), O[1, 1], rtol=1e-9)


def _independent_thresholds(gt: dict, dets: list, targets, keypoint: int | None = None) -> list:
    """Greedy one-to-one by OKS per image, OKS from its textbook formula, then the brute-force threshold (of one
    ``keypoint`` type's pairs only, if given)."""
    from posecal.keypoints import COCO17

    var = (2 * COCO17.sigmas) ** 2
    conf, ok = [], []
    for img in {a["image_id"] for a in gt["annotations"]} | {d["image_id"] for d in dets}:
        G = [a for a in gt["annotations"] if a["image_id"] == img and not a["iscrowd"]
             and any(v > 0 for v in a["keypoints"][2::3])]
        D = [d for d in dets if d["image_id"] == img]
        if not G or not D:
            continue
        g = np.array([a["keypoints"] for a in G], float).reshape(len(G), 17, 3)
        p = np.array([d["keypoints"] for d in D], float).reshape(len(D), 17, 3)
        area = np.array([a["area"] for a in G], float)
        lab = g[..., 2] > 0
        e = ((p[:, None, :, :2] - g[None, :, :, :2]) ** 2).sum(-1) / var / (area[None, :, None] + np.spacing(1)) / 2
        kpt = np.exp(-e)  # (D, G, K)
        O = (kpt * lab[None]).sum(-1) / lab.sum(-1)[None]
        used_d, used_g = set(), set()
        for flat in np.argsort(-O, axis=None, kind="stable"):
            i, j = divmod(int(flat), len(G))
            if i in used_d or j in used_g or O[i, j] <= 0:
                continue
            used_d.add(i)
            used_g.add(j)
            sel = lab[j] & (np.arange(17) == keypoint) if keypoint is not None else lab[j]
            conf.extend(p[i, sel, 2])
            ok.extend(kpt[i, j, sel] >= 0.5)
    c, o = np.array(conf), np.array(ok, bool)
    return [_brute(c, o, t) for t in targets]


def test_evaluate_report_has_the_keypoint_thresholds(tmp_path, capsys):
    from posecal.cli import main

    gt_path = shared_path(*COCO_MINI)
    gt = json.loads(gt_path.read_text())
    dets = perturb_gt(gt, seed=11, max_level=0.4)  # some people predicted poorly (OKS < 0.5)
    dets[0]["keypoints"][2] = 1.5  # keypoint scores fall with the error (perturb_gt); one above 1 (legal)
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(dets))
    rep, js = tmp_path / "rep", tmp_path / "out.json"
    rc = main(["evaluate", "--gt", str(gt_path), "--pred", str(pred), "--report", str(rep), "--json", str(js),
               "--random-seeds", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    cal = json.loads(js.read_text())["calibration"]
    kt = cal["keypoint_thresholds"]
    # the poorly localised people count here, unlike in the evaluator's matches at OKS 0.50
    assert kt["n_keypoints"] > cal["n_keypoint_pairs"]
    assert check_report(rep)["calibration"]["keypoint_thresholds"] == kt
    want = _independent_thresholds(gt, dets, (0.90, 0.95, 0.98))
    for row, w in zip(kt["targets"], want, strict=True):
        if w is None:
            assert row["threshold"] is None and row["threshold_reason"]
        else:
            assert (row["threshold"], row["n_kept"]) == (pytest.approx(w[0]), w[1])
            assert row["precision"] == pytest.approx(w[2])
    assert any(w is not None for w in want)  # the check compared at least one threshold
    per = kt["per_keypoint"]
    assert [p["keypoint"] for p in per] == gt["categories"][0]["keypoints"]
    compared = 0
    for k in (0, 9, 16):  # nose, left wrist, right ankle: each keypoint type's own threshold
        for row, w in zip(per[k]["targets"], _independent_thresholds(gt, dets, (0.90, 0.95, 0.98), k), strict=True):
            if w is None:
                assert row["threshold"] is None
            else:
                assert (row["threshold"], row["n_kept"]) == (pytest.approx(w[0]), w[1])
                compared += 1
    assert compared
    assert "kpt threshold 95 %" in out
    assert "Keypoint thresholds" in (rep / "index.html").read_text()
