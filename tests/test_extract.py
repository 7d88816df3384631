"""``posecal extract`` end to end on real images: accuracy, store contract, resume, shards, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from posecal.cli import main
from posecal.keypoints import LSP14, MPII16
from posecal.models.store import FeatureStore
from posecal.rescore.aggregate import instance_score


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lsp40(shared_dir, tmp_path_factory):
    """LSP test images 1001–1040 as COCO JSON (via posecal convert)."""
    d = tmp_path_factory.mktemp("lsp")
    full = d / "lsp_test.json"
    assert main(["convert", "lsp", str(shared_dir / "data/lsp/joints.mat"), "--images",
                 str(shared_dir / "data/lsp/images"), "--split", "test", "--out", str(full)]) == 0
    g = json.loads(full.read_text())
    g["images"] = g["images"][:40]
    g["annotations"] = g["annotations"][:40]
    out = d / "lsp40.json"
    out.write_text(json.dumps(g))
    return out


@pytest.fixture(scope="module")
def shared_dir():
    from conftest import shared_path

    return shared_path()


def _gt_rows(store: FeatureStore, K: int):
    gt = json.loads(store.gt_path.read_text())
    by_id = {a["id"]: a for a in gt["annotations"]}
    ann = store.read("ann_id")
    G = np.array([by_id[int(a)]["keypoints"] for a in ann], dtype=float).reshape(-1, K, 3)
    area = np.array([by_id[int(a)]["area"] for a in ann], dtype=float)
    return G, area


def _mean_kpt_oks(kp, G, area, sigmas):
    from posecal.metrics.oks import keypoint_oks

    return float(np.nanmean(keypoint_oks(kp, G, area, sigmas)))


def test_efficientpose_on_lsp_lands_on_bodies(shared_dir, lsp40, tmp_path):
    model = shared_dir / "models/efficientpose/EfficientPoseI.tflite"
    out = tmp_path / "st"
    assert main(["extract", "--model", str(model), "--data", str(lsp40), "--images",
                 str(shared_dir / "data/lsp/images"), "--out", str(out), "--threads", "2"]) == 0
    fs = FeatureStore.open(out)
    assert fs.num_instances == 40 and fs.meta["keypoint_set"] == "lsp14"
    assert fs.meta["tensor"] == "pass3_block1_mbconv3_detection2_dense/concat"
    import hashlib

    assert fs.meta["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    kp, sc = fs.read("keypoints"), fs.read("scores")
    # the default pooling is the one fit's default recipe reads: heatmap-weighted, per keypoint
    assert kp.shape == (40, 14, 2) and fs.meta["pooling"] == "heatmap"
    assert fs.read("features_kpt").shape == (40, 14, 144)
    assert fs.read("crop_transform").shape == (40, 2, 3)
    G, area = _gt_rows(fs, 14)
    assert _mean_kpt_oks(kp, G, area, LSP14.sigmas) >= 0.5
    # predictions.json: row i = instance i, bbox_keypoint instance score with box score 1
    preds = fs.predictions
    assert len(preds) == 40
    np.testing.assert_allclose([p["score"] for p in preds], instance_score(sc, "bbox_keypoint", np.ones(40)))
    np.testing.assert_allclose(np.array(preds[5]["keypoints"]).reshape(14, 3)[:, :2], kp[5])
    assert [p["image_id"] for p in preds] == fs.read("image_id").tolist()
    sig = fs.read("sigma_hat")
    if isinstance(fs.meta["sigma_hat"], dict):  # posecal.theory.heatmap present: finite, non-negative image px
        assert np.isfinite(sig).all() and (sig >= 0).all()
    else:
        assert np.isnan(sig).all()


def test_mpii_fixtures_pckh(shared_dir, tmp_path):
    mp = tmp_path / "mpii.json"
    imgs = shared_dir / "data/mmpose-fixtures/mpii"
    rc = main(["convert", "mpii", str(imgs / "test_mpii.json"), "--images", str(imgs), "--out", str(mp)])
    assert rc == 0
    out = tmp_path / "st"
    assert main(["extract", "--model", str(shared_dir / "models/efficientpose/EfficientPoseI.tflite"),
                 "--data", str(mp), "--images", str(imgs), "--out", str(out), "--pooling", "heatmap"]) == 0
    fs = FeatureStore.open(out)
    G, _ = _gt_rows(fs, 16)
    # PCKh@0.5 with the head segment (head_top – upper_neck) as head size (no MPII head boxes here)
    from posecal.metrics.oks import pck

    head = np.linalg.norm(G[:, MPII16.index("head_top"), :2] - G[:, MPII16.index("upper_neck"), :2], axis=1)
    assert pck(fs.read("keypoints"), G, head, alpha=0.5) >= 0.9
    assert fs.read("features_kpt").shape == (5, 16, 144)


def _extract(shared_dir, data, out, *extra):
    return main(["extract", "--model", str(shared_dir / "models/efficientpose/EfficientPoseRT.tflite"),
                 "--data", str(data), "--images", str(shared_dir / "data/lsp/images"), "--out", str(out),
                 "--chunk-size", "8", "--threads", "1", *extra])


def test_resume_after_interruption_and_shards_are_bit_identical(shared_dir, lsp40, tmp_path, monkeypatch):
    import posecal.models.store as store_mod

    data = tmp_path / "d.json"
    g = json.loads(lsp40.read_text())
    g["images"], g["annotations"] = g["images"][:20], g["annotations"][:20]
    data.write_text(json.dumps(g))
    extra = ["--pooling", "spatial", "--augment", "2", "--seed", "3"]
    ref = tmp_path / "ref"
    assert _extract(shared_dir, data, ref, *extra) == 0
    # interrupted after 2 chunks (of 5) ...
    orig = store_mod.StoreWriter.write_chunk
    calls = []

    def dying(self, j, arrays):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(j)
        return orig(self, j, arrays)

    monkeypatch.setattr(store_mod.StoreWriter, "write_chunk", dying)
    part = tmp_path / "part"
    assert _extract(shared_dir, data, part, *extra) == 130
    assert not (part / "meta.json").exists()
    monkeypatch.setattr(store_mod.StoreWriter, "write_chunk", orig)
    # ... resumes and ends bit-identical
    assert _extract(shared_dir, data, part, *extra) == 0
    assert _tree(part) == _tree(ref)
    # a different setting never mixes into the partial store
    assert _extract(shared_dir, data, part, "--pooling", "gap") == 2
    # shards (one via torchrun's env vars) merge to the same bytes
    assert _extract(shared_dir, data, tmp_path / "m", *extra, "--shard", "0/2") == 0
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _extract(shared_dir, data, tmp_path / "m", *extra) == 0
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["extract", "--merge", "--out", str(tmp_path / "m")]) == 0
    assert _tree(tmp_path / "m") == _tree(ref)
    fs = FeatureStore.open(ref)
    assert fs.num_instances == 40 and fs.read("features_spatial").dtype == np.float16
    gk = fs.read("gt_keypoints")
    # augmented crops are mapped back to image pixels: predictions still land on the bodies
    G, area = _gt_rows(fs, 14)
    np.testing.assert_array_equal(gk[..., :2], G[..., :2])  # gt stays in image px
    assert (gk[..., 2] <= G[..., 2]).all() and (gk[..., 2] < G[..., 2]).any()  # occluded -> v = 1
    assert set(np.unique(gk[..., 2][gk[..., 2] < G[..., 2]])) == {1}
    assert _mean_kpt_oks(fs.read("keypoints"), G, area, LSP14.sigmas) >= 0.5


def test_bad_input_one_line_exit_2(shared_dir, lsp40, tmp_path, capsys):
    g = json.loads(lsp40.read_text())
    g["images"], g["annotations"] = g["images"][:6], g["annotations"][:6]
    g["images"][2]["file_name"] = "does_not_exist.jpg"
    data = tmp_path / "d.json"
    data.write_text(json.dumps(g))
    assert _extract(shared_dir, data, tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "1 image(s) missing: does_not_exist.jpg" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
    assert _extract(shared_dir, data, tmp_path / "b", "--skip-missing") == 0
    fs = FeatureStore.open(tmp_path / "b")
    assert fs.num_instances == 5 and fs.meta["skipped_missing_images"] == ["does_not_exist.jpg"]
    assert len(json.loads(fs.gt_path.read_text())["images"]) == 5
    capsys.readouterr()
    assert _extract(shared_dir, data, tmp_path / "c", "--skip-missing", "--tensor", "nope") == 2
    err = capsys.readouterr().err
    assert "unknown tensor 'nope'; candidates:" in err and len(err.strip().splitlines()) == 1
    notmodel = tmp_path / "m.tflite"
    notmodel.write_text("not a model")
    assert main(["extract", "--model", str(notmodel), "--data", str(data), "--images", ".", "--out",
                 str(tmp_path / "d")]) == 2
    assert "not a model" in capsys.readouterr().err


def test_blazepose_on_detector_boxes_evaluates(shared_dir, tmp_path):
    """BlazePose-lite -> COCO-17 on detector boxes; predictions.json goes straight into the COCO evaluator."""
    from posecal.io.coco import load_gt, load_results
    from posecal.metrics.cocoeval import evaluate

    coco = shared_dir / "data/mmpose-fixtures/coco"
    det = json.loads((coco / "test_coco_det_AP_H_56.json").read_text())
    out = tmp_path / "st"
    assert main(["extract", "--model", str(shared_dir / "models/mediapipe/pose_landmark_lite.tflite"),
                 "--data", str(coco / "test_coco.json"), "--images", str(coco), "--out", str(out),
                 "--boxes", str(coco / "test_coco_det_AP_H_56.json"), "--pooling", "heatmap",
                 "--oks-nms", "1", "--max-per-image", "0"]) == 0  # every box kept (OKS-NMS: test_coco17.py)
    fs = FeatureStore.open(out)
    assert fs.meta["model_kind"] == "blazepose" and fs.meta["keypoint_set"] == "coco17"
    assert fs.num_instances == len(det) and (fs.read("ann_id") == -1).all()
    np.testing.assert_allclose(fs.read("box_score"), [d["score"] for d in det])
    np.testing.assert_allclose([p["score"] for p in fs.predictions],
                               instance_score(fs.read("scores"), "bbox_keypoint", fs.read("box_score")))
    assert fs.read("features_kpt").shape == (len(det), 17, 32)
    gt = load_gt(fs.gt_path)
    res = load_results(out / "predictions.json", gt)
    r = evaluate(gt, res)
    assert 0.0 < r.stats["AP"] <= 1.0
    # "the model's own score" is MMPose CocoMetric's bbox_keypoint rule on the same predictions, bit for bit:
    # a transcription of its loop, and `posecal rescore --method mmpose-bbox_keypoint` on predictions.json
    from test_rescore import _mmpose_reference

    want = _mmpose_reference(fs.read("scores"), fs.read("box_score"), "bbox_keypoint")
    np.testing.assert_array_equal([p["score"] for p in fs.predictions], want)
    re_out = tmp_path / "re.json"
    assert main(["rescore", "--pred", str(out / "predictions.json"), "--method", "mmpose-bbox_keypoint",
                 "--out", str(re_out)]) == 0
    again = load_results(re_out, gt)
    np.testing.assert_array_equal(again.score, res.score)
    assert evaluate(gt, again).stats == r.stats


class _DotModel:
    """A stand-in pose model with exact, mirror-consistent semantics: 'left_wrist' is the leftmost of two
    white dots in the crop, 'right_wrist' the rightmost (so a mirrored crop swaps them, as for a person)."""

    kind = "dots"
    input_size = (48, 64)
    joint_names = ("left_wrist", "right_wrist")
    tensor_name = "fake"
    preprocessing = {"note": "test"}
    info = {"backend": "test"}

    def predict(self, crops):
        from posecal.models.adapters.base import ModelOutput

        B = crops.shape[0]
        coords = np.zeros((B, 2, 2))
        for b in range(B):
            m = crops[b].astype(float).sum(-1)
            ys, xs = np.nonzero(m > 60)
            w = m[ys, xs]
            split = xs < (xs.min() + xs.max()) / 2
            for j, sel in enumerate((split, ~split)):
                coords[b, j] = [np.average(xs[sel], weights=w[sel]), np.average(ys[sel], weights=w[sel])]
        feats = crops.astype(np.float32).transpose(0, 3, 1, 2)[:, :, ::8, ::8]
        return ModelOutput(coords=coords, scores=np.full((B, 2), 0.9), features=np.ascontiguousarray(feats))


def test_flip_test_and_augmentation_map_back_to_image_pixels(tmp_path, monkeypatch):
    from PIL import Image

    import posecal.models.extract as ex
    from posecal.keypoints import COCO17
    from posecal.models.extract import extract

    rng = np.random.default_rng(0)
    images, anns, truth = [], [], []
    for i in range(6):
        img = np.zeros((120, 160, 3), np.uint8)
        a = rng.uniform([30, 30], [60, 90])
        b = a + [rng.uniform(35, 60), rng.uniform(-15, 15)]
        for p in (a, b):  # smooth blobs so the centroid is sub-pixel accurate after warping
            yy, xx = np.mgrid[0:120, 0:160]
            img = np.maximum(img, (255 * np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / 32.0))[..., None]
                             .astype(np.uint8))
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        kp = np.zeros((17, 3))
        kp[COCO17.index("left_wrist")] = [*a, 2]  # image-left dot is the person's left wrist
        kp[COCO17.index("right_wrist")] = [*b, 2]
        x0, y0 = np.minimum(a, b) - 15
        x1, y1 = np.maximum(a, b) + 15
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 160, "height": 120})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "keypoints": kp.ravel().tolist(),
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0))})
        truth.append(kp[[COCO17.index("left_wrist"), COCO17.index("right_wrist")], :2])
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names)}]}
    truth = np.array(truth)
    # geometry only: keep flip / scale / rotation / shift jitter, drop the occluders (they may hide a dot)
    orig = ex._augment_params
    monkeypatch.setattr(ex, "_augment_params", lambda rng: {**orig(rng), "occluders": []})
    idx = [COCO17.index("left_wrist"), COCO17.index("right_wrist")]
    for name, kw, copies in (("plain", {}, 1), ("flip", {"flip": True}, 1),
                             ("aug", {"augment": 4, "seed": 1}, 4)):
        fs = extract(_DotModel(), data, tmp_path, tmp_path / name, allow_missing_joints=True,
                     model_sha256="0", chunk_size=5, **kw)
        kp = fs.read("keypoints")[:, idx]
        np.testing.assert_allclose(kp, np.repeat(truth, copies, axis=0), atol=1.0)
        sc = fs.read("scores")
        assert (sc[:, idx] == 0.9).all() and (np.delete(sc, idx, axis=1) == 0).all()
        if name == "aug":
            M = fs.read("crop_transform")
            assert (M[:, 0, 0] < 0).any() and (M[:, 0, 0] > 0).any()  # both mirrored and plain copies
            np.testing.assert_array_equal(fs.read("gt_keypoints")[:, idx, :2], np.repeat(truth, 4, axis=0))


def test_model_lacking_joints_the_data_does_not_annotate_extracts_without_the_flag(shared_dir, tmp_path, capsys):
    """Before: EfficientPose (MPII-16, no face points) on LSP converted with ``--keypoint-set coco17`` was refused
    ('has no joint for dataset keypoint(s) nose, …') although the file declares those joints not annotated
    (categories[0].annotated_keypoints); now they are stored like ``--allow-missing-joints`` does (joint map −1,
    score 0) with one warning — and a joint the data does annotate but the model lacks is still refused."""
    full = tmp_path / "lsp17.json"
    assert main(["convert", "lsp", str(shared_dir / "data/lsp/joints.mat"), "--images",
                 str(shared_dir / "data/lsp/images"), "--split", "test", "--keypoint-set", "coco17",
                 "--out", str(full)]) == 0
    g = json.loads(full.read_text())
    g["images"], g["annotations"] = g["images"][:3], g["annotations"][:3]
    data = tmp_path / "lsp17_3.json"
    data.write_text(json.dumps(g))
    capsys.readouterr()
    assert _extract(shared_dir, data, tmp_path / "S") == 0
    err = capsys.readouterr().err
    assert "has no joint for nose, left_eye, right_eye, left_ear, right_ear, which the data file does not " \
           "annotate" in err, err
    fs = FeatureStore.open(tmp_path / "S")
    jm = np.asarray(json.loads((tmp_path / "S" / "meta.json").read_text())["joint_map"])
    assert (jm[:5] == -1).all() and (jm[5:] >= 0).all()
    assert (fs.read("scores")[:, :5] == 0).all() and (fs.read("scores")[:, 5:] > 0).all()
    # the same store as --allow-missing-joints writes
    assert _extract(shared_dir, data, tmp_path / "S2", "--allow-missing-joints") == 0
    np.testing.assert_array_equal(fs.read("keypoints"), FeatureStore.open(tmp_path / "S2").read("keypoints"))
    # a joint the file annotates (nose) that the model lacks: still refused, naming it
    g["categories"][0]["annotated_keypoints"].append("nose")
    data.write_text(json.dumps(g))
    capsys.readouterr()
    assert _extract(shared_dir, data, tmp_path / "S3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no joint for dataset keypoint(s) nose" in err[0], err
    assert not (tmp_path / "S3").exists()


def test_user_card_for_a_tflite_model_says_what_it_does_not_follow(shared_dir, lsp40, tmp_path, capsys):
    """Before: a card given with a TFLite model was silently ignored but for backend_kind (a SimplePose-style
    card on EfficientPose-RT ran as EfficientPose without a word). Now one warning names the card and the
    fields posecal does not read for TFLite where they differ from what it does; a card that agrees says nothing."""
    from posecal.models.cards import BUILTIN_CARDS

    g = json.loads(lsp40.read_text())
    g["images"], g["annotations"] = g["images"][:2], g["annotations"][:2]
    data = tmp_path / "two.json"
    data.write_text(json.dumps(g))
    ref = BUILTIN_CARDS["EfficientPoseRT"]
    card = dict(ref, name="my-card", keypoints="coco17", input=dict(ref["input"], color="BGR"))
    (tmp_path / "card.json").write_text(json.dumps(card))
    capsys.readouterr()
    assert _extract(shared_dir, data, tmp_path / "S", "--model-card", str(tmp_path / "card.json")) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "not read for a TFLite model" in ln]
    assert len(err) == 1 and "card.json: input, keypoints not read" in err[0], err
    assert "efficientpose decoder" in err[0]
    same = dict(BUILTIN_CARDS["EfficientPoseRT"], name="my-copy", target_sigma=1.5)
    (tmp_path / "same.json").write_text(json.dumps(same))
    assert _extract(shared_dir, data, tmp_path / "S2", "--model-card", str(tmp_path / "same.json")) == 0
    assert "not read for a TFLite model" not in capsys.readouterr().err


def test_a_tensor_in_another_layout_than_the_cards_is_read_by_its_shape(shared, mini, tmp_path):
    """MoveNet's graph holds the same map twice: `re_lu_2/Relu:0` channels-last (the card's layout) and, before
    its Transpose, `re_lu_2/Relu_raw_output___6:0` channels-first. Before: `--tensor` of the raw one was read in
    the card's NHWC layout (64 'channels' of a 24 × 64 grid, pooled over the wrong axes); now the axes whose
    ratio is the input's H/W are the spatial ones, and both give the same pooled features, bit for bit."""
    from posecal.models.store import FeatureStore

    model = shared("models", "movenet", "movenet-thunder.onnx")
    base = "StatefulPartitionedCall/center_net_mobile_net_v2fpn_feature_extractor/model_1/re_lu_2/"
    feats = []
    for i, t in enumerate((base + "Relu:0", base + "Relu_raw_output___6:0")):
        assert main(["extract", "--model", str(model), "--data", str(tmp_path / "data.json"), "--images",
                     str(tmp_path / "img"), "--out", str(tmp_path / f"S{i}"), "--tensor", t]) == 0
        fs = FeatureStore.open(tmp_path / f"S{i}")
        feats.append(fs.read(fs.feature_name))
    assert feats[0].shape[-1] == 24
    np.testing.assert_array_equal(feats[0], feats[1])
