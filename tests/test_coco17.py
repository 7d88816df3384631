"""COCO-17 top-down behind a detector: model cards, detection, OKS-NMS, detection-matched CCNet targets,
partial skeletons, kpt_inst heads and export onto the real SimplePose / MoveNet graphs."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _mmpose_nms import oks_nms as mmpose_oks_nms
from posecal.errors import PosecalInputError
from posecal.keypoints import COCO17
from posecal.models.nms import keypoint_extent_area, oks_nms, oks_nms_per_image

SP = ("models", "simplepose", "ultralight-nano-simplepose.onnx")
MN = ("models", "movenet", "movenet-thunder.onnx")
ND = ("models", "nanodet", "nanodet-m-416.onnx")
MINI = ("data", "coco-mini", "person_keypoints_train2017.json")


# ---- OKS-NMS against MMPose's --------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(0, 10_000), st.sampled_from([0.3, 0.5, 0.9]))
def test_oks_nms_matches_mmpose(n, seed, thr):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 200, (3, 17, 2))
    kp = base[rng.integers(0, 3, n)] + rng.normal(0, rng.choice([0.5, 5, 30]), (n, 17, 2))
    sc = rng.uniform(0, 1, (n, 17))
    score = np.round(rng.uniform(0, 1, n), 1)  # ties included
    kp3 = np.concatenate([kp, sc[..., None]], -1)
    area = keypoint_extent_area(kp)
    ref = mmpose_oks_nms([{"keypoints": kp3[i], "score": score[i], "area": area[i]} for i in range(n)], thr,
                         sigmas=COCO17.sigmas)
    np.testing.assert_array_equal(oks_nms(kp3, score, area, thr, COCO17.sigmas), ref)


def test_oks_nms_per_image_keeps_images_apart():
    kp = np.tile(np.linspace(10, 100, 34).reshape(1, 17, 2), (4, 1, 1))
    keep = oks_nms_per_image(np.array([1, 1, 2, 2]), kp, np.ones((4, 17)), np.array([0.9, 0.8, 0.7, 0.95]),
                             COCO17.sigmas, 0.9)
    np.testing.assert_array_equal(keep, [0, 3])  # one survivor per image, the best of each


def _mmpose_bbox_scale_area(bbox_xywh: np.ndarray, input_size=(192, 256), padding=1.25) -> np.ndarray:
    """MMPose 1.x top-down, transcribed: GetBBoxCenterScale (bbox_xyxy2cs: scale = (x2 - x1, y2 - y1) ×
    padding), then TopdownAffine._fix_aspect_ratio to w / h of the input; CocoMetric.process keeps
    ``np.prod(bbox_scales)`` as the prediction's area."""
    out = []
    for x, y, w, h in np.asarray(bbox_xywh, np.float64):
        x1, y1, x2, y2 = x, y, x + w, y + h
        sw, sh = (x2 - x1) * padding, (y2 - y1) * padding
        aspect = input_size[0] / input_size[1]
        sw, sh = (sw, sw / aspect) if sw > sh * aspect else (sh * aspect, sh)
        out.append(sw * sh)
    return np.array(out)


def test_store_oks_nms_keeps_what_mmpose_cocometric_keeps(det_store, tmp_path):
    """Extraction's OKS-NMS on detector boxes is MMPose's CocoMetric step: bbox_keypoint scores, the verbatim
    MMPose oks_nms at 0.9, and each prediction's area = prod(bbox_scales) of its crop (not the keypoint
    extent, MMPose's fallback for predictions without an area, which keeps another set)."""
    from conftest import shared_path
    from posecal.models.adapters.base import load_adapter
    from posecal.models.extract import extract, oks_nms_store
    from posecal.models.nms import crop_box_area
    from posecal.rescore.aggregate import instance_score

    _, small, dets = det_store
    img = shared_path("data", "coco-mini", "train2017")
    allrows = extract(load_adapter(shared_path(*SP)), small, img, tmp_path / "ALL", boxes=dets,
                      oks_nms_thr=None, max_per_image=None, show_progress=False)  # every box, no NMS
    iid, kp, sc = allrows.read("image_id"), allrows.read("keypoints"), allrows.read("scores")
    score = instance_score(sc, "bbox_keypoint", allrows.read("box_score"))
    area = _mmpose_bbox_scale_area(allrows.read("bbox"))
    np.testing.assert_allclose(crop_box_area(allrows.read("bbox"), (192, 256)), area, rtol=1e-12)
    want, extent_keep = [], []
    kp3 = np.concatenate([kp, sc[..., None]], -1)
    for i in np.unique(iid):
        rows = np.flatnonzero(iid == i)
        inst = [{"keypoints": kp3[r], "score": score[r], "area": area[r]} for r in rows]
        want += rows[mmpose_oks_nms(inst, 0.9, sigmas=COCO17.sigmas)].tolist()
        ext = [dict(d, area=a) for d, a in zip(inst, keypoint_extent_area(kp[rows]), strict=True)]
        extent_keep += rows[mmpose_oks_nms(ext, 0.9, sigmas=COCO17.sigmas)].tolist()
    kept = oks_nms_store(allrows, tmp_path / "NMS", thr=0.9, max_per_image=None)
    got = sorted(zip(kept.read("image_id").tolist(), kept.read("bbox")[:, 0].tolist(), strict=True))
    ref = sorted(zip(iid[want].tolist(), allrows.read("bbox")[want, 0].tolist(), strict=True))
    assert got == ref and kept.num_instances == len(want) < allrows.num_instances
    assert sorted(want) != sorted(extent_keep)  # the area rule matters on these real boxes


# ---- partial skeletons ------------------------------------------------------------------------------------
def test_lsp_as_coco17_marks_face_not_annotated(shared, tmp_path):
    from posecal.cli import main
    from posecal.datasets.lsp import read_lsp
    from posecal.datasets.remap import annotated_mask

    out = tmp_path / "lsp17.json"
    assert main(["convert", "lsp", str(shared("data", "lsp", "joints.mat")), "--split", "train",
                 "--keypoint-set", "coco17", "--out", str(out)]) == 0
    d17, d14 = json.loads(out.read_text()), read_lsp(shared("data", "lsp", "joints.mat"), split="train")
    mask = annotated_mask(d17, COCO17)
    assert mask.tolist() == [False] * 5 + [True] * 12
    a17, a14 = np.array(d17["annotations"][3]["keypoints"]).reshape(17, 3), \
        np.array(d14["annotations"][3]["keypoints"]).reshape(14, 3)
    assert (a17[:5] == 0).all()
    names14 = d14["categories"][0]["keypoints"]
    for k, name in enumerate(COCO17.names[5:], start=5):
        np.testing.assert_array_equal(a17[k], a14[names14.index(name)])
    assert d17["annotations"][3]["num_keypoints"] == int((a17[:, 2] > 0).sum())


def test_remap_refuses_disjoint_sets():
    from posecal.datasets.remap import remap_keypoint_set

    d = {"images": [], "annotations": [], "categories": [{"id": 1, "keypoints": list(COCO17.names)}]}
    with pytest.raises(PosecalInputError):
        remap_keypoint_set(d, "no-such-set")


def test_loss_masks_exclude_keypoints_from_both_terms():
    torch = pytest.importorskip("torch")
    from posecal.ccnet.loss import ccnet_loss

    s = torch.full((2, 3), 0.5, requires_grad=True)
    v = torch.full((2, 3), 0.5, requires_grad=True)
    oks = torch.tensor([[0.9, 0.0, 0.1], [0.0, 0.0, 0.0]])
    vis = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    cm = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # row 1: an unmatched detection (target 0)
    vm = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ccnet_loss(s, v, oks, vis, conf_mask=cm, vis_mask=vm).backward()
    assert s.grad[0, 1] == 0 and s.grad[0, 2] == 0 and (s.grad[1] > 0).all()  # pushed towards 0
    assert v.grad[0, 0] != 0 and (v.grad[0, 1:] == 0).all() and (v.grad[1] == 0).all()
    # without masks: Eq. 19–21 unchanged
    a = ccnet_loss(s.detach(), v.detach(), oks, vis)
    b = ccnet_loss(s.detach(), v.detach(), oks, vis, conf_mask=vis, vis_mask=torch.ones_like(vis))
    assert torch.equal(a, b)


# ---- model cards ------------------------------------------------------------------------------------------
def test_builtin_cards_found_by_content_hash(shared, tmp_path):
    from posecal.models.cards import BUILTIN_CARDS, card_for_model, load_card, validate_card

    for c in BUILTIN_CARDS.values():
        validate_card(c)
    assert card_for_model(shared(*SP))["name"] == "ultralight-nano-simplepose"
    assert card_for_model(shared(*ND), task="detector")["name"] == "nanodet-m-416"
    with pytest.raises(PosecalInputError, match="detector"):
        card_for_model(shared(*ND), task="pose")
    bad = dict(BUILTIN_CARDS["movenet-thunder"], input=dict(BUILTIN_CARDS["movenet-thunder"]["input"],
                                                             layout="HWC"))
    p = tmp_path / "card.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(PosecalInputError, match="input.layout"):
        load_card(p)
    # a misspelt key is refused (its default would otherwise be used silently), naming the card and the key
    for where, key, hint in ((None, "target_sgima", "target_sigma"), ("crop", "pading", "padding"),
                             ("input", "colour", "color")):
        card = json.loads(json.dumps(BUILTIN_CARDS["ultralight-nano-simplepose"]))
        (card if where is None else card[where])[key] = 1
        p.write_text(json.dumps(card))
        with pytest.raises(PosecalInputError, match=f"did you mean '{hint}'") as e:
            load_card(p)
        assert e.value.file == str(p) and e.value.field == (key if where is None else f"{where}.{key}")
    card = dict(BUILTIN_CARDS["ultralight-nano-simplepose"], description="my copy", licence="none stated")
    assert validate_card(card)["description"] == "my copy"  # free text is allowed


@pytest.mark.parametrize("model", [SP, MN])
def test_card_adapters_on_real_crops(shared, model):
    """Batch of 2 through a batch-1 graph; keypoints of a clear COCO person land on the gt (OKS > 0.5)."""
    from posecal.metrics.oks import keypoint_oks
    from posecal.models.adapters.base import load_adapter
    from posecal.models.crop import apply_affine, crop_matrix, invert_affine, load_image, warp
    from posecal.theory.heatmap import topdown_crop_box

    d = json.loads(shared(*MINI).read_text())
    a = max((a for a in d["annotations"] if not a["iscrowd"]), key=lambda a: a["num_keypoints"] * a["area"])
    im = next(i for i in d["images"] if i["id"] == a["image_id"])
    ad = load_adapter(shared(*model))
    W, H = ad.input_size
    box = topdown_crop_box(a["bbox"], (W, H))[0]
    M = crop_matrix(box[:2], box[2:], (W, H))
    crop = warp(load_image(shared("data", "coco-mini", "train2017") / im["file_name"]), M, (W, H))
    out = ad.predict(np.stack([crop, crop[:, ::-1].copy()]))
    assert out.coords.shape == (2, 17, 2) and out.heatmaps.shape[:2] == (2, 17) and out.features.ndim == 4
    gt = np.array(a["keypoints"], float).reshape(1, 17, 3)
    k = keypoint_oks(apply_affine(invert_affine(M), out.coords[:1]), gt, np.array([a["area"]]), COCO17.sigmas)
    assert k[0][gt[0, :, 2] > 0].mean() > 0.5


# ---- detection ----------------------------------------------------------------------------------------
def test_detect_cli_on_real_images(shared, tmp_path, capsys):
    from posecal.cli import main

    d = json.loads(shared(*MINI).read_text())
    keep = [im for im in d["images"] if any(a["image_id"] == im["id"] and a["num_keypoints"] > 5
                                            for a in d["annotations"])][:2]
    ids = {im["id"] for im in keep}
    small = dict(d, images=keep, annotations=[a for a in d["annotations"] if a["image_id"] in ids])

    def detect(doc: dict, name: str) -> tuple[dict, list]:
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        out = tmp_path / f"det_{name}.json"
        assert main(["detect", "--model", str(shared(*ND)), "--images", str(shared("data", "coco-mini", "train2017")),
                     "--data", str(tmp_path / f"{name}.json"), "--out", str(out), "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1]), json.loads(out.read_text())

    summary, dets = detect(small, "two")
    assert dets and {r["image_id"] for r in dets} <= ids and all(r["category_id"] == 1 for r in dets)
    assert all(0.05 < r["score"] <= 1 and r["bbox"][2] > 0 for r in dets)
    assert summary["recall_iou50"] > 0.5  # the labelled people are found
    # a dataset whose keypoint category has another id: the boxes carry it (what extract --boxes crops),
    # and the recall counts that category's gt boxes
    summary7, dets7 = detect(dict(small, categories=[dict(small["categories"][0], id=7)],
                                  annotations=[dict(a, category_id=7) for a in small["annotations"]]), "seven")
    assert [dict(r, category_id=1) for r in dets7] == dets and {r["category_id"] for r in dets7} == {7}
    assert summary7["recall_iou50"] == summary["recall_iou50"]


def test_detect_bad_image_stops_or_is_skipped(shared, tmp_path, capsys):
    """A corrupt or truncated image stops `detect` with one error line naming it and nothing written; with
    --skip-bad-images it gets no detection, one warning counts the skipped images, and the others are as
    without them."""
    import shutil

    from posecal.cli import main

    d = json.loads(shared(*MINI).read_text())
    keep = d["images"][:3]
    img = tmp_path / "img"
    img.mkdir()
    for im in keep:
        shutil.copy(shared("data", "coco-mini", "train2017", im["file_name"]), img / im["file_name"])
    raw = (img / keep[1]["file_name"]).read_bytes()
    (img / keep[1]["file_name"]).write_bytes(raw[: len(raw) // 3])  # truncated JPEG
    (img / keep[2]["file_name"]).write_bytes(b"not an image")
    data = tmp_path / "three.json"
    data.write_text(json.dumps(dict(d, images=keep, annotations=[])))
    out = tmp_path / "det.json"
    base = ["detect", "--model", str(shared(*ND)), "--images", str(img), "--data", str(data), "--out", str(out)]
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and keep[1]["file_name"] in err[0] and not out.exists()
    assert main([*base, "--skip-bad-images"]) == 0
    err = capsys.readouterr().err
    assert "2 image(s) could not be decoded" in err and keep[1]["file_name"] in err
    dets = json.loads(out.read_text())
    ref = tmp_path / "ref.json"
    (tmp_path / "one.json").write_text(json.dumps(dict(d, images=keep[:1], annotations=[])))
    assert main(["detect", "--model", str(shared(*ND)), "--images", str(img), "--data", str(tmp_path / "one.json"),
                 "--out", str(ref)]) == 0
    assert dets == json.loads(ref.read_text()) and dets


def test_image_id_rule_without_data(tmp_path):
    from posecal.models.detect import image_ids

    for n in ("000000000785.jpg", "000000000012.jpg"):
        (tmp_path / n).write_bytes(b"")
    assert image_ids(tmp_path, None) == [(12, "000000000012.jpg"), (785, "000000000785.jpg")]
    (tmp_path / "cat.png").write_bytes(b"")
    assert [i for i, _ in image_ids(tmp_path, None)] == [1, 2, 3]


# ---- extraction on detections, matching and targets -----------------------------------------------------
@pytest.fixture(scope="module")
def det_store(tmp_path_factory):
    """SimplePose on NanoDet boxes of 2 coco-mini images (OKS-NMS 0.9, top 20 per image)."""
    from conftest import shared_path
    from posecal.models.adapters.base import load_adapter
    from posecal.models.cards import card_for_model
    from posecal.models.detect import NanoDetDetector, detect_folder
    from posecal.models.extract import extract

    d = json.loads(shared_path(*MINI).read_text())
    crowd = {a["image_id"] for a in d["annotations"] if a["iscrowd"]}
    people = sorted((im for im in d["images"] if im["id"] not in crowd),
                    key=lambda im: -sum(a["image_id"] == im["id"] and a["num_keypoints"] > 0 for a in d["annotations"]))
    keep = people[:2]  # the two most populated images without crowd regions
    ids = {im["id"] for im in keep}
    small = dict(d, images=keep, annotations=[a for a in d["annotations"] if a["image_id"] in ids])
    img = shared_path("data", "coco-mini", "train2017")
    det = NanoDetDetector(shared_path(*ND), card_for_model(shared_path(*ND)))
    dets = detect_folder(det, [(im["id"], im["file_name"]) for im in keep], img, score_thr=0.1,
                         show_progress=False)
    out = tmp_path_factory.mktemp("det") / "S"
    store = extract(load_adapter(shared_path(*SP)), small, img, out, boxes=dets, show_progress=False)
    return store, small, dets


def test_extract_on_detections_applies_oks_nms_once(det_store):
    from posecal.rescore.aggregate import instance_score

    store, small, dets = det_store
    n = store.meta["oks_nms"]
    assert store.num_instances == n["kept"] <= n["of"] == len(dets) and n["thr"] == 0.9
    iid = store.read("image_id")
    assert max(np.bincount(iid)) <= 20
    kp, sc, box = store.read("keypoints"), store.read("scores"), store.read("box_score")
    score = instance_score(sc, "bbox_keypoint", box)
    np.testing.assert_array_equal([r["score"] for r in store.predictions], score)
    assert oks_nms_per_image(iid, kp, sc, score, COCO17.sigmas, 0.9).size == store.num_instances  # stable


def test_detection_targets_match_pycocotools(det_store):
    """match_detections == COCOeval's dtMatches / dtIgnore at OKS 0.5 (all detections, area 'all')."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from posecal.ccnet.targets import load_store

    store, small, _ = det_store
    data = load_store(str(store.path), features=False)
    coco = COCO()
    coco.dataset = json.loads(store.gt_path.read_text())
    coco.createIndex()
    recs = [dict(r, score=float(r["score"])) for r in store.predictions]
    dt = coco.loadRes(recs)  # ids 1..N in record order
    ev = COCOeval(coco, dt, "keypoints")
    ev.params.maxDets = [10_000]
    ev.params.areaRng, ev.params.areaRngLbl = [ev.params.areaRng[0]], ["all"]
    ev.evaluate()
    row_of_ann = {int(a): i for i, a in enumerate(data.gt.ann_id)}
    checked = 0
    for e in ev.evalImgs:
        if e is None:
            continue
        for j, did in enumerate(e["dtIds"]):
            r = did - 1
            gid, ig = int(e["dtMatches"][0, j]), bool(e["dtIgnore"][0, j])
            want = -2 if ig else (row_of_ann[gid] if gid else -1)
            assert data.match[r] == want, (r, gid, ig)
            checked += 1
    assert checked == store.num_instances and (data.match >= 0).any() and (data.match == -1).any()
    un = data.match == -1
    assert (data.oks[un] == 0).all() and data.conf_mask[un].all() and not data.vis_mask[un].any()
    assert not data.has_target[data.match == -2].any()


@pytest.mark.parametrize("rank", [None, 4], ids=["full", "rank4"])
def test_kpt_inst_fit_apply_export_agree(det_store, tmp_path, shared, rank, capsys):
    """fit (kpt_inst by default for the card) -> apply -> export on the real graph: outputs equal apply
    within 1e-5 and the original SimplePose output bit-identical. The head's 2K filters (or, with
    ``fit --filter-rank 4``, its 4 shared ones) are computed by SimplePose's own last Conv (widened, then
    split)."""
    import onnxruntime as ort

    from posecal.ccnet.export import export_calibrated
    from posecal.ccnet.targets import load_store
    from posecal.ccnet.train import predict
    from posecal.cli import main
    from posecal.models.adapters.base import load_adapter
    from posecal.models.adapters.card import prepare_input
    from posecal.models.crop import load_image, warp

    store, small, _ = det_store
    head = tmp_path / "H"  # the head alone: the context stage is outside the graph (test below)
    extra = ["--filter-rank", str(rank)] if rank else []
    assert main(["fit", "--store", str(store.path), "--out", str(head), "--steps", "30", "--no-context", *extra]) == 0
    meta = json.loads((head / "head.json").read_text())
    assert meta["train"]["filter_rank"] == (rank or 0)
    assert meta["head"] == "kpt_inst" and "context" not in meta and not (head / "context.safetensors").exists()
    # the gate reads the instance evidence as the last channels: extra evidence columns would shift it
    assert main(["fit", "--store", str(store.path), "--out", str(tmp_path / "H2"), "--steps", "3",
                 "--evidence", "score"]) == 2
    assert not (tmp_path / "H2").exists()
    res = tmp_path / "cal.json"  # the graph scores one crop: compare with apply's unconstrained scores
    assert main(["apply", "--store", str(store.path), "--head", str(head), "--out", str(res), "--reorder"]) == 0
    cal = json.loads(res.read_text())
    assert [r["keypoints"][0::3] for r in cal] == [r["keypoints"][0::3] for r in store.predictions]
    if rank is None:
        from posecal.models.extract import extract
        from posecal.studies.visibility import visibility_study

        # study visibility (gt boxes) builds the head's input as apply does (the features + the card's
        # instance evidence): the same keypoint confidences
        gts = extract(load_adapter(shared(*SP)), small, shared("data", "coco-mini", "train2017"), tmp_path / "G",
                      show_progress=False)
        assert main(["apply", "--store", str(gts.path), "--head", str(head), "--out", str(tmp_path / "g.json")]) == 0
        st = visibility_study(gts.path, head=head)
        np.testing.assert_allclose(st["_arrays"]["ccnet"],
                                   [r["keypoints"][2::3] for r in json.loads((tmp_path / "g.json").read_text())],
                                   rtol=1e-5, atol=1e-7)
        # a head-only graph does not take the instance evidence: refused, nothing written
        assert main(["export", "--model", str(shared(*SP)), "--head", str(head), "--out", str(tmp_path / "ho.onnx"),
                     "--head-only"]) == 2
        assert not (tmp_path / "ho.onnx").exists()
    onx = tmp_path / "sp_cal.onnx"
    summary = export_calibrated(shared(*SP), head, onx)
    # the filters go into SimplePose's own last Conv unless this machine's onnxruntime then changes the
    # model's own outputs (export checks the bytes; the same check on a widened copy says which to expect)
    import onnx

    from posecal.ccnet.export import PREFIX, _fuse_into_conv, _same_outputs, _to_opset13

    orig = _to_opset13(onnx.load_model(str(shared(*SP))), shared(*SP))
    wide = onnx.ModelProto()
    wide.CopyFrom(orig)
    assert _fuse_into_conv(wide, "hybridsequential0_relu6_fwd", "hybridsequential0_conv7_fwd",
                           np.random.default_rng(0).normal(0, 1, (rank or 34, 128)).astype(np.float32), PREFIX)
    assert summary["filter_rank"] == (rank or 0)
    assert summary["fused_into_model_conv"] == _same_outputs(orig, wide)
    # --no-fuse: every node of the model as it was (the heatmap Conv reads its original weights)
    plain = tmp_path / "sp_plain.onnx"
    assert main(["export", "--model", str(shared(*SP)), "--head", str(head), "--out", str(plain), "--no-fuse"]) == 0
    conv = [n for n in onnx.load_model(str(plain)).graph.node if "hybridsequential0_conv7_fwd" in n.output]
    assert [(n.op_type, list(n.input)) for n in conv] == [
        ("Conv", ["hybridsequential0_relu6_fwd", "hybridsequential0_conv7_weight"])]
    ad = load_adapter(shared(*SP))
    W, H = ad.input_size
    rows = np.arange(min(3, store.num_instances))
    M, iid, box = store.read("crop_transform", rows), store.read("image_id", rows), store.read("box_score", rows)
    fname = {im["id"]: im["file_name"] for im in small["images"]}
    so = ort.InferenceSession(str(onx), providers=["CPUExecutionProvider"])
    s0 = ort.InferenceSession(str(shared(*SP)), providers=["CPUExecutionProvider"])
    from posecal.ccnet.checkpoint import load_head

    h, _ = load_head(head)
    s_ref, v_ref = predict(h, load_store(str(store.path), need_gt=False).features[rows])
    for r in rows:
        crop = warp(load_image(shared("data", "coco-mini", "train2017") / fname[int(iid[r])]), M[r], (W, H))
        x = prepare_input(crop[None], ad.card["input"])
        o = dict(zip([t.name for t in so.get_outputs()],
                     so.run(None, {"data": x, "box_score": np.array([box[r]], np.float32)}), strict=True))
        np.testing.assert_array_equal(o["hybridsequential0_conv7_fwd"], s0.run(None, {"data": x})[0])
        np.testing.assert_allclose(o["keypoint_confidence"][0], s_ref[r], atol=1e-5)
        np.testing.assert_allclose(o["keypoint_visibility"][0], v_ref[r], atol=1e-5)
        np.testing.assert_allclose(o["keypoint_confidence"][0], [cal[r]["keypoints"][3 * k + 2] for k in range(17)],
                                   atol=1e-5)
        np.testing.assert_allclose(o["instance_confidence"][0], cal[r]["score"], atol=1e-5)
    if rank:  # head.json edited to claim a rank its weights do not have: refused naming head.json, nothing written
        meta["train"]["filter_rank"] = rank - 1
        (head / "head.json").write_text(json.dumps(meta))
        bad = tmp_path / "bad.onnx"
        capsys.readouterr()
        assert main(["export", "--model", str(shared(*SP)), "--head", str(head), "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "head.json" in err and f"not of rank {rank - 1}" in err and len(err.strip().splitlines()) == 1, err
        assert not bad.exists()


def test_context_stage_fit_apply_export(det_store, tmp_path, shared, capsys):
    """fit on a detection store also fits the learned-NMS stage (out-of-fold scores); apply on a detection
    store replaces the instance score by the stage's, keypoint scores and visibilities stay the head's; on a
    gt-box store of the same model the stage is not used; export says the stage is outside the graph."""
    from posecal.ccnet.checkpoint import load_head
    from posecal.ccnet.context import store_context
    from posecal.ccnet.export import export_calibrated
    from posecal.ccnet.targets import load_store
    from posecal.ccnet.train import predict
    from posecal.cli import main
    from posecal.rescore.aggregate import instance_score

    store, small, _ = det_store
    head = tmp_path / "H"
    assert main(["fit", "--store", str(store.path), "--out", str(head), "--steps", "30"]) == 0
    meta = json.loads((head / "head.json").read_text())
    assert meta["context"]["folds"] == 2 and meta["context"]["rows"] > 0  # 2 images: 2 folds
    h, _ = load_head(head)
    data = load_store(str(store.path), need_gt=False)
    s, v = predict(h, data.features)
    c = instance_score(s, "visibility", visibility=v)
    want = h.context_stage.transform(c, store_context(str(store.path), data.records, data.sigmas))
    res = tmp_path / "cal.json"
    capsys.readouterr()
    assert main(["apply", "--store", str(store.path), "--head", str(head), "--out", str(res), "--reorder"]) == 0
    assert "context stage" in capsys.readouterr().out
    cal = json.loads(res.read_text())
    np.testing.assert_allclose([r["score"] for r in cal], want, rtol=1e-12)
    # by default each image keeps the own score's detection order (AR identical by construction)
    from posecal.rescore.order import keep_image_order

    assert main(["apply", "--store", str(store.path), "--head", str(head), "--out", str(tmp_path / "k.json")]) == 0
    capsys.readouterr()
    own = np.array([r["score"] for r in store.predictions])
    kept = [r["score"] for r in json.loads((tmp_path / "k.json").read_text())]
    np.testing.assert_allclose(kept, keep_image_order(store.read("image_id"), own, want), rtol=1e-12)
    # fit records, per training store, the AP / AR of what apply writes on it (context stage, order kept)
    from posecal.io.coco import load_gt, load_results
    from posecal.metrics.cocoeval import evaluate

    ev = evaluate(load_gt(str(store.path / "gt.json")), load_results(str(tmp_path / "k.json")))
    base = evaluate(load_gt(str(store.path / "gt.json")), load_results(str(store.path / "predictions.json")))
    assert meta["metrics"]["applied"][str(store.path)] == pytest.approx(
        {"AP": ev.stats["AP"], "AR": ev.stats["AR"], "own_AP": base.stats["AP"]}, abs=1e-12)
    np.testing.assert_allclose([r["keypoints"][2::3] for r in cal], s, rtol=1e-6)
    np.testing.assert_allclose([r["visibility"] for r in cal], v, rtol=1e-6)
    assert not np.allclose(want, c)
    from posecal.models.adapters.base import load_adapter
    from posecal.models.extract import extract

    gt_store = extract(load_adapter(shared(*SP)), small, shared("data", "coco-mini", "train2017"), tmp_path / "G",
                       show_progress=False)
    assert main(["apply", "--store", str(gt_store.path), "--head", str(head), "--out", str(tmp_path / "g.json"),
                 "--reorder"]) == 0
    assert "context stage" not in capsys.readouterr().out
    g = load_store(str(gt_store.path), need_gt=False)
    sg, vg = predict(h, g.features)
    np.testing.assert_allclose([r["score"] for r in json.loads((tmp_path / "g.json").read_text())],
                               instance_score(sg, "visibility", visibility=vg), rtol=1e-6)
    summary = export_calibrated(shared(*SP), head, tmp_path / "sp.onnx")
    assert "not in the graph" in summary["context_stage"]


@pytest.mark.parametrize("tensor,channels", [("backbone_features", 24), ("kpt_heatmap_head_features", 96)])
def test_export_onto_movenet_matches_the_head(shared, tmp_path, tensor, channels):
    """A kpt_inst head (random weights and normalisation) grafted onto MoveNet (int32 NHWC input, NHWC
    features and heatmaps, in-graph coordinate decoding): its outputs equal the head run on what posecal
    extract computes (pooled features + instance evidence) within 1e-5; MoveNet's own outputs bit-identical.
    Also for another tensor than the card's (``extract --tensor``): it is read in the graph's layout (NHWC, its
    channels on the last axis), not as channels-first."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from posecal.ccnet.checkpoint import save_head
    from posecal.ccnet.export import export_calibrated
    from posecal.ccnet.heads import build_head
    from posecal.ccnet.targets import instance_evidence
    from posecal.ccnet.train import predict
    from posecal.models.adapters.base import load_adapter
    from posecal.models.adapters.card import prepare_input
    from posecal.models.adapters.pooling import pool_features
    from posecal.models.crop import crop_matrix, load_image, warp
    from posecal.models.store import file_sha256
    from posecal.rescore.aggregate import instance_score
    from posecal.theory.heatmap import topdown_crop_box

    d = json.loads(shared(*MINI).read_text())
    a = max((a for a in d["annotations"] if not a["iscrowd"]), key=lambda a: a["num_keypoints"] * a["area"])
    im = next(i for i in d["images"] if i["id"] == a["image_id"])
    ad = load_adapter(shared(*MN), tensor=tensor)
    W, H = ad.input_size
    b = topdown_crop_box(a["bbox"], (W, H))[0]
    crop = warp(load_image(shared("data", "coco-mini", "train2017") / im["file_name"]),
                crop_matrix(b[:2], b[2:], (W, H)), (W, H))
    out = ad.predict(crop[None])
    assert out.features.shape == (1, channels, 64, 64)  # NCHW after the adapter
    box = np.array([0.7])
    x = np.concatenate([pool_features(out.features, out.heatmaps, "heatmap", np.arange(17)),
                        instance_evidence(out.scores, box, per_keypoint=True)], -1)
    torch.manual_seed(0)
    head = build_head("kpt_inst", x.shape[1:], 17)
    head.set_normalisation(torch.rand(17, x.shape[2]), 0.5 + torch.rand(17, x.shape[2]))
    save_head(tmp_path / "H", head, {"keypoint_set": "coco17", "feature_tensor": "features_kpt",
                                     "feature_shape": list(x.shape[1:]), "pooling": "heatmap",
                                     "model_tensor": tensor, "model_sha256": file_sha256(shared(*MN))})
    export_calibrated(shared(*MN), tmp_path / "H", tmp_path / "mn.onnx")
    s_ref, v_ref = predict(head, x)
    feed = prepare_input(crop[None], ad.card["input"])
    cal = ort.InferenceSession(str(tmp_path / "mn.onnx"), providers=["CPUExecutionProvider"])
    o = dict(zip([t.name for t in cal.get_outputs()],
                 cal.run(None, {"input:0": feed, "box_score": box.astype(np.float32)}), strict=True))
    ref = ort.InferenceSession(str(shared(*MN)), providers=["CPUExecutionProvider"])
    for t, v in zip([t.name for t in ref.get_outputs()], ref.run(None, {"input:0": feed}), strict=True):
        np.testing.assert_array_equal(o[t], v)
    np.testing.assert_allclose(o["keypoint_confidence"], s_ref, atol=1e-5)
    np.testing.assert_allclose(o["keypoint_visibility"], v_ref, atol=1e-5)
    np.testing.assert_allclose(o["instance_confidence"], instance_score(s_ref, "visibility", visibility=v_ref),
                               atol=1e-5)
    assert np.std(s_ref) > 1e-3  # not a constant head: the comparison can fail
