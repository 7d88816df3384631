"""Occlusion and visibility studies on a few real LSP crops with EfficientPose-I."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("ai_edge_litert")

from _epworld import ep_world  # noqa: E402
from posecal.cli import main  # noqa: E402
from posecal.keypoints import LSP14  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import shared_path

    return ep_world(tmp_path_factory, lambda *p: shared_path(*p))


def test_paste_occluder_and_blur_touch_only_the_disc():
    from posecal.studies.occlusion import paste_blur, paste_occluder

    crop = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    c = np.array([20.0, 30.0])
    yy, xx = np.mgrid[0:64, 0:48]
    inside = (xx - 20) ** 2 + (yy - 30) ** 2 <= 10**2
    occ = paste_occluder(crop, c, 10, (1, 2, 3))
    assert (occ[inside] == [1, 2, 3]).all() and (occ[~inside] == crop[~inside]).all()
    bl = paste_blur(crop, c, 10, 3.0)
    assert (bl[~inside] == crop[~inside]).all() and (bl[inside] != crop[inside]).any()
    assert (paste_occluder(crop, c, 0) == crop).all() and (paste_blur(crop, c, 0) == crop).all()


def test_occlusion_study_on_lsp(world, tmp_path, capsys):
    from posecal.models.store import FeatureStore

    joint = "head_top"
    j = LSP14.names.index(joint)
    out = tmp_path / "occ"
    assert main(["study", "occlusion", "--model", str(world["model"]), "--data", str(world["test_json"]),
                 "--images", str(world["images"]), "--joint", joint, "--head", str(world["head"]),
                 "--out", str(out), "--radii", "0", "40", "90", "--limit", "6", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads((out / "occlusion.json").read_text())
    assert (out / "occlusion.png").stat().st_size > 5000
    n = res["instances"]
    assert 0 < n <= 6
    # radius 0 is the untouched crop: the same raw scores as the extracted store, the same CCNet scores as
    # posecal apply (store rows of the studied images, in file order)
    fs = FeatureStore.open(world["test_store"])
    rows = [list(fs.read("image_id")).index(i) for i in res["image_ids"]]
    applied = json.loads(world["records"].read_text())
    for mode in ("occluder", "blur"):
        r0 = res["per_instance"][mode][0]
        np.testing.assert_allclose(r0["raw_confidence"], fs.read("scores")[rows, j], atol=1e-6)
        np.testing.assert_allclose(r0["ccnet_confidence"], [applied[r]["keypoints"][3 * j + 2] for r in rows],
                                   atol=1e-5)
    # a large grey disc over the head moves the prediction away: the joint's OKS drops
    c = res["curves"]["occluder"]
    assert c["joint_oks"][-1] < c["joint_oks"][0]
    assert len(c["raw_confidence"]) == 3 and all(v is not None for v in c["ccnet_confidence"])


def test_occlusion_study_with_the_default_head_matches_apply(world, tmp_path, capsys):
    """The default EfficientPose head (kpt_pose) reads the pose evidence; the study computes it per crop as
    extract stores it, so at radius 0 its ŝ equals posecal apply's on the store."""
    from posecal.models.store import FeatureStore

    head, applied = tmp_path / "head", tmp_path / "applied.json"
    assert main(["fit", "--store", str(world["train_store"]), "--out", str(head)]) == 0
    assert json.loads((head / "head.json").read_text())["evidence"] == ["pose"]
    assert main(["apply", "--store", str(world["test_store"]), "--head", str(head), "--out", str(applied)]) == 0
    capsys.readouterr()
    j = LSP14.names.index("head_top")
    assert main(["study", "occlusion", "--model", str(world["model"]), "--data", str(world["test_json"]),
                 "--images", str(world["images"]), "--joint", "head_top", "--head", str(head),
                 "--out", str(tmp_path / "occ"), "--radii", "0", "60", "--limit", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    fs = FeatureStore.open(world["test_store"])
    rows = [list(fs.read("image_id")).index(i) for i in res["image_ids"]]
    recs = json.loads(applied.read_text())
    r0 = res["per_instance"]["occluder"][0]
    np.testing.assert_allclose(r0["ccnet_confidence"], [recs[r]["keypoints"][3 * j + 2] for r in rows], atol=1e-5)


def test_occlusion_study_bad_joint_exit_2(world, tmp_path, capsys):
    assert main(["study", "occlusion", "--model", str(world["model"]), "--data", str(world["test_json"]),
                 "--images", str(world["images"]), "--joint", "tail", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tail" in err[0] and not (tmp_path / "o" / "occlusion.json").exists()


def test_visibility_study_on_lsp(world, tmp_path, capsys):
    from posecal.io.coco import load_gt, load_results
    from posecal.metrics.cocoeval import evaluate
    from posecal.models.store import FeatureStore

    out = tmp_path / "vis"
    assert main(["study", "visibility", "--store", str(world["test_store"]), "--head", str(world["head"]),
                 "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (out / "visibility.png").stat().st_size > 5000
    fs = FeatureStore.open(world["test_store"])
    gt = load_gt(fs.gt_path)
    recs = fs.predictions
    pred = load_results(recs, gt)
    raw = np.array([r["keypoints"][2::3] for r in recs])
    # recompute two aggregation variants independently
    ev_all = evaluate(gt, pred, scores=raw.mean(1), warn=False)
    assert res["AP"]["raw"]["all"] == pytest.approx(ev_all.stats["AP"], abs=1e-12)
    applied = json.loads(world["records"].read_text())
    ev_pv = evaluate(gt, load_results(applied, gt), warn=False)  # apply's score = Σ v̂ŝ / Σ v̂
    assert res["AP"]["ccnet"]["predicted_visibility"] == pytest.approx(ev_pv.stats["AP"], abs=1e-9)
    # LSP labels every joint: the gt-visibility (v > 0) variant is the plain mean
    assert res["AP"]["raw"]["gt_visibility"] == res["AP"]["raw"]["all"]
    # visible vs occluded raw means, recomputed from the store's scores and the gt flags by ann_id
    by_ann = {int(a): k for a, k in zip(gt.ann_id, gt.keypoints, strict=True)}
    v = np.stack([by_ann[int(a)][:, 2] for a in fs.read("ann_id")])
    sc = fs.read("scores")
    for g, m in (("visible", v == 2), ("occluded", v == 1)):
        got = res["confidence_by_visibility"][g]["raw"]
        assert got["n"] == int(m.sum())
        if m.any():
            assert got["mean"] == pytest.approx(sc[m].mean(), abs=1e-12)
    # without a head: raw only, no predicted-visibility variant
    assert main(["study", "visibility", "--store", str(world["test_store"]), "--out", str(tmp_path / "v2"),
                 "--json"]) == 0
    res2 = json.loads(capsys.readouterr().out)
    assert set(res2["AP"]) == {"raw"} and res2["AP"]["raw"]["predicted_visibility"] is None
