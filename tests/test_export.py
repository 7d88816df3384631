"""Calibrated ONNX export: the grafted graph equals ``posecal apply`` on the same crops (≤ 1e-5), keeps the
original outputs bit for bit and passes ``onnx.checker``. The pose model is a small torch net exported to
ONNX here; its heads are fitted briefly on features extracted from it by ``posecal extract``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from _tinynet import tiny_heatmap_net  # noqa: E402
from posecal.cli import main  # noqa: E402
from posecal.keypoints import COCO17  # noqa: E402

N_IMG = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """tiny.onnx (48×64 input, COCO-17 heatmaps), N_IMG images with one annotated person each."""
    from PIL import Image

    d = tmp_path_factory.mktemp("export")
    model = d / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_heatmap_net(), (torch.zeros(1, 3, 64, 48),), str(model), dynamo=False,
                          input_names=["input"], output_names=["heatmaps"],
                          dynamic_axes={"input": {0: "b"}, "heatmaps": {0: "b"}})
    rng = np.random.default_rng(0)
    images, anns = [], []
    (d / "img").mkdir()
    for i in range(N_IMG):
        img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / "img" / f"{i}.png")
        x0, y0 = rng.uniform(5, 40), rng.uniform(5, 20)
        w, h = rng.uniform(40, 70), rng.uniform(50, 65)
        kp = np.zeros((17, 3))
        kp[:, 0] = rng.uniform(x0, x0 + w, 17)
        kp[:, 1] = rng.uniform(y0, y0 + h, 17)
        kp[:, 2] = np.where(rng.random(17) < 0.2, 1, 2)
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 120, "height": 90})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": w * h * 0.6,
                     "bbox": [x0, y0, w, h], "keypoints": kp.ravel().tolist(), "num_keypoints": 17})
    data = d / "data.json"
    data.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}]}))
    return {"dir": d, "model": model, "data": data, "images": d / "img"}


def _first_relu_output(model: Path) -> str:
    g = onnx.load_model(str(model)).graph
    return next(n.output[0] for n in g.node if n.op_type == "Relu")


def _fit_apply(world, name: str, pooling: str, head_kind: str, tensor: str | None):
    d = world["dir"] / name
    store, head, res = d / "store", d / "head", d / "res.json"
    extra = ["--tensor", tensor] if tensor else []
    assert main(["extract", "--model", str(world["model"]), "--data", str(world["data"]), "--images",
                 str(world["images"]), "--out", str(store), "--pooling", pooling, *extra]) == 0
    assert main(["fit", "--store", str(store), "--out", str(head), "--head", head_kind, "--steps", "60",
                 "--batch-size", "16"]) == 0
    # --reorder: the graph scores each crop alone (no per-image order projection), as apply --reorder does
    assert main(["apply", "--store", str(store), "--head", str(head), "--out", str(res), "--reorder"]) == 0
    return store, head, json.loads(res.read_text())


def _crops(store: Path, images: Path) -> np.ndarray:
    """The exact crops posecal extract fed the model (from the stored crop transforms)."""
    from posecal.models.adapters.generic import IMAGENET_MEAN, IMAGENET_STD, preprocess_nchw
    from posecal.models.crop import load_image, warp
    from posecal.models.store import FeatureStore

    fs = FeatureStore.open(store)
    gt = json.loads(fs.gt_path.read_text())
    name = {im["id"]: im["file_name"] for im in gt["images"]}
    Ms, ids = fs.read("crop_transform"), fs.read("image_id")
    crops = np.stack([warp(load_image(images / name[int(i)]), M, (48, 64))
                      for M, i in zip(Ms, ids, strict=True)])
    return crops, preprocess_nchw(crops, IMAGENET_MEAN, IMAGENET_STD)


def _expected(records):
    s = np.array([r["keypoints"][2::3] for r in records])
    v = np.array([r["visibility"] for r in records])
    c = np.array([r["score"] for r in records])
    return s, v, c


CASES = [("gap", "fc", None), ("heatmap", "kpt", None), ("spatial", "conv_sigmoid_gap", None),
         ("spatial", "conv_gap", None), ("heatmap", "kpt", "first_relu")]


@pytest.mark.parametrize("pooling,head_kind,tensor", CASES,
                         ids=[f"{p}-{h}-{t or 'default'}" for p, h, t in CASES])
def test_grafted_model_equals_posecal_apply(world, pooling, head_kind, tensor):
    from posecal.ccnet.export import OUTPUTS

    if tensor == "first_relu":  # a 32×24 feature grid under 16×12 heatmaps: the resampling path
        tensor = _first_relu_output(world["model"])
    name = f"{pooling}-{head_kind}-{bool(tensor)}"
    store, head, records = _fit_apply(world, name, pooling, head_kind, tensor)
    out = world["dir"] / name / "calibrated.onnx"
    assert main(["export", "--model", str(world["model"]), "--head", str(head), "--out", str(out)]) == 0
    m = onnx.load_model(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert [o.name for o in m.graph.output] == ["heatmaps", *OUTPUTS]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's 0600
    crops, x = _crops(store, world["images"])
    orig = ort.InferenceSession(str(world["model"]), providers=["CPUExecutionProvider"])
    cal = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    hm0 = orig.run(None, {"input": x})[0]
    hm1, s, v, c = cal.run(None, {"input": x})
    np.testing.assert_array_equal(hm1, hm0)  # original output bit for bit
    assert s.shape == v.shape == (N_IMG, 17) and c.shape == (N_IMG,)
    es, ev, ec = _expected(records)
    assert np.abs(s - es).max() <= 1e-5 and np.abs(v - ev).max() <= 1e-5 and np.abs(c - ec).max() <= 1e-5
    assert np.std(ec) > 0  # the head is not constant: the comparison can fail
    # head-only export of the same head, run in two stages after the model, agrees too
    from posecal.ccnet.export import run_two_stage
    from posecal.models.adapters.onnx import OnnxAdapter

    ho = world["dir"] / name / "head_only.onnx"
    assert main(["export", "--model", str(world["model"]), "--head", str(head), "--out", str(ho),
                 "--head-only"]) == 0
    onnx.checker.check_model(onnx.load_model(str(ho)), full_check=True)
    two = run_two_stage(OnnxAdapter(world["model"], tensor=tensor),
                        ort.InferenceSession(str(ho), providers=["CPUExecutionProvider"]), crops)
    for k, ref in zip(OUTPUTS, (es, ev, ec), strict=True):
        assert np.abs(two[k] - ref).max() <= 1e-5


def test_export_refuses_a_head_of_another_model(world, tmp_path, capsys):
    _, head, _ = _fit_apply(world, "other", "gap", "fc", None)
    net = tiny_heatmap_net()
    with torch.no_grad():
        net.final.bias.add_(1.0)  # a different model file
    other = tmp_path / "other.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 64, 48),), str(other), dynamo=False,
                          input_names=["input"], output_names=["heatmaps"])
    out = tmp_path / "x.onnx"
    capsys.readouterr()  # the fit/apply above print their warnings on success; only export's output counts
    assert main(["export", "--model", str(other), "--head", str(head), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_sha256" in err[0] and not out.exists()
    assert main(["export", "--model", str(other), "--head", str(tmp_path / "nohead"), "--out", str(out)]) == 2
    assert not out.exists()


FUSED = [  # feature layout, heatmap layout, feature grid, heatmap grid, dataset keypoint set, head, scores, opset
    ("NCHW", "NCHW", (6, 5), (6, 5), "coco17", "kpt_inst", "heatmap", 13),
    ("NCHW", "NCHW", (6, 5), (6, 5), "coco17", "kpt", "heatmap", 18),
    ("NCHW", "NCHW", (4, 3), (9, 7), "lsp14", "kpt_inst", "heatmap", 18),
    ("NHWC", "NHWC", (6, 5), (6, 5), "coco17", "kpt_inst", "coords", 13),
    ("NHWC", "NHWC", (8, 6), (4, 3), "lsp14", "kpt", "heatmap", 17),
    ("NCHW", "NHWC", (8, 6), (4, 3), "lsp14", "kpt_inst", "coords", 13),
    ("NHWC", "NCHW", (4, 3), (9, 7), "coco17", "kpt_inst", "heatmap", 18),
    ("NCHW", "NCHW", (6, 5), (6, 5), "lsp14", "kpt_inst", "heatmap", 13),
    ("NHWC", "NHWC", (6, 5), (6, 5), "lsp14", "kpt_inst", "coords", 18),
    ("NCHW", "NHWC", (6, 5), (6, 5), "lsp14", "kpt", "heatmap", 13),
]


@pytest.mark.parametrize("rank", [0, 3], ids=["full", "rank3"])
@pytest.mark.parametrize("feat_layout,hm_layout,feat_hw,hm_hw,kset,kind,scores_from,opset", FUSED,
                         ids=[f"{a}-{b}-{c[0]}x{c[1]}-{d[0]}x{d[1]}-{e}-{f}-{g}-op{h}"
                              for a, b, c, d, e, f, g, h in FUSED])
def test_fused_heatmap_kpt_graph_matches_store_pooling_and_head(feat_layout, hm_layout, feat_hw, hm_hw, kset, kind,
                                                                 scores_from, opset, rank):
    """The fused heatmap-pooling + kpt head subgraph (1×1 Conv / channels-last MatMul, no copy of the feature
    map) equals the store's pooling (:func:`pool_features`, float64) followed by the torch head, within 1e-5:
    both layouts, resampling up and down, dataset keypoints the model lacks (LSP-14's neck and head top on a
    COCO-17 model), heatmaps with no positive value (all negative, all zero, and a single positive pixel that
    the downsampling drops), instance evidence from heatmap maxima or a coordinates output; and a head projected
    to filter rank 3 (``fit --filter-rank``), read through its factorisation on channels-first maps."""
    from posecal.ccnet.export import OUTPUTS, PREFIX, _Builder, _evidence, _graft, _keypoint_scores, _output_infos
    from posecal.ccnet.heads import build_head, project_filter_rank
    from posecal.ccnet.targets import instance_evidence
    from posecal.ccnet.train import predict
    from posecal.keypoints import get_keypoint_set
    from posecal.models.adapters.joints import joint_map
    from posecal.models.adapters.pooling import pool_features, resample_to
    from posecal.rescore.aggregate import instance_score

    rng = np.random.default_rng(sum(map(ord, f"{feat_layout}{hm_layout}{feat_hw}{hm_hw}{kset}{kind}")))
    B, C, J = 6, 7, 17
    jmap = joint_map(COCO17.names, get_keypoint_set(kset).names, allow_missing=True)
    K, have = len(jmap), jmap >= 0
    assert kset == "coco17" or not have.all()
    feats = rng.uniform(0, 2, (B, C, *feat_hw)).astype(np.float32)
    hms = rng.normal(0, 0.3, (B, J, *hm_hw)).astype(np.float32)
    hms[0, 5] = -np.abs(hms[0, 5]) - 0.01  # no positive value: uniform weights
    hms[1, 11] = 0.0
    hms[2, 12] = -1.0  # one positive pixel, dropped by a downsampling: uniform weights on the feature grid
    yi = resample_to(np.arange(hm_hw[0] * hm_hw[1], dtype=np.float32).reshape(1, 1, *hm_hw), *feat_hw).ravel()
    free = [p for p in range(hm_hw[0] * hm_hw[1]) if p not in set(yi.astype(int))]
    hms[2, 12].flat[free[0] if free else 0] = 0.8
    coords = rng.uniform(0, 1, (B, J, 3)).astype(np.float32)
    box = rng.uniform(0.1, 1, B).astype(np.float32)
    pooled = pool_features(feats, hms, "heatmap", jmap)
    assert np.allclose(pooled[2, list(jmap).index(12)], feats[2].mean((1, 2)), atol=1e-6) == bool(free)
    raw = coords[..., 2] if scores_from == "coords" else hms.max((2, 3))
    x = pooled
    if kind == "kpt_inst":
        sc = np.where(have[None], raw[:, np.where(have, jmap, 0)], 0.0)
        x = np.concatenate([pooled, instance_evidence(sc, box, per_keypoint=True)], -1)
    torch.manual_seed(1)
    head = build_head(kind, x.shape[1:], K)
    head.set_normalisation(torch.rand(K, x.shape[2]), 0.5 + torch.rand(K, x.shape[2]))
    if rank:
        project_filter_rank(head, rank)
    arrs = {k: v.detach().float().numpy() for k, v in head.state_dict().items()}
    s_ref, v_ref = predict(head, x)
    c_ref = instance_score(s_ref, "visibility", visibility=v_ref)

    TP = onnx.TensorProto
    nhwc = (0, 2, 3, 1)
    f_in = feats if feat_layout == "NCHW" else feats.transpose(nhwc)
    h_in = hms if hm_layout == "NCHW" else hms.transpose(nhwc)
    inputs = [onnx.helper.make_tensor_value_info("features", TP.FLOAT, ["b", *f_in.shape[1:]]),
              onnx.helper.make_tensor_value_info("heatmaps", TP.FLOAT, ["b", *h_in.shape[1:]])]
    feeds = {"features": np.ascontiguousarray(f_in), "heatmaps": np.ascontiguousarray(h_in)}
    b = _Builder(PREFIX)
    ev = None
    if kind == "kpt_inst":
        inputs += [onnx.helper.make_tensor_value_info("coords", TP.FLOAT, ["b", 1, J, 3]),
                   onnx.helper.make_tensor_value_info("box", TP.FLOAT, ["b"])]
        feeds.update(coords=coords[:, None], box=box)
        src = {"coords": {"name": "coords"} if scores_from == "coords" else None, "hm_layout": hm_layout}
        ev = _evidence(b, _keypoint_scores(b, src, "heatmaps", jmap, J, opset), "box", opset)
    _graft(b, kind, arrs, K, "heatmap", jmap, "features", feat_layout, feat_hw, 4, C, "heatmaps", hm_layout, hm_hw,
           J, ev, opset, rank)
    m = onnx.helper.make_model(onnx.helper.make_graph(b.nodes, "g", inputs, _output_infos(K), b.inits),
                               opset_imports=[onnx.helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    # the feature map is read once, by the Conv (channels-first) or a Reshape to (B, P, C) (channels-last)
    readers = [n for n in m.graph.node if "features" in n.input]
    assert [n.op_type for n in readers] == ["Conv" if feat_layout == "NCHW" else "Reshape"]
    if feat_layout == "NCHW":  # 2K filters, or the rank's
        w = next(t for t in m.graph.initializer if t.name == readers[0].input[1])
        assert w.dims[0] == (rank or 2 * K)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    s, v, c = sess.run(list(OUTPUTS), feeds)
    np.testing.assert_allclose(s, s_ref, atol=1e-5)
    np.testing.assert_allclose(v, v_ref, atol=1e-5)
    np.testing.assert_allclose(c, c_ref, atol=1e-5)
    assert np.std(s_ref) > 1e-3 and np.std(v_ref) > 1e-3  # not a constant head: the comparison can fail


def _conv_model(C: int, J: int, kernel: int = 1, bias: bool = False, seed: int = 0):
    """A tiny ONNX model: input x (1, 3, 6, 5) → 3×3 Conv + Relu = features (1, C, 6, 5) → Conv (kernel) =
    heatmaps (1, J, ·, ·), the only output."""
    rng = np.random.default_rng(seed)
    H = onnx.helper
    inits = [onnx.numpy_helper.from_array(rng.normal(0, 0.3, (C, 3, 3, 3)).astype(np.float32), "w1"),
             onnx.numpy_helper.from_array(rng.normal(0, 0.3, (J, C, kernel, kernel)).astype(np.float32), "w2")]
    ins = ["features", "w2"]
    if bias:
        inits.append(onnx.numpy_helper.from_array(rng.normal(0, 0.1, J).astype(np.float32), "b2"))
        ins.append("b2")
    nodes = [H.make_node("Conv", ["x", "w1"], ["pre"], pads=[1, 1, 1, 1], name="c1"),
             H.make_node("Relu", ["pre"], ["features"], name="r1"),
             H.make_node("Conv", ins, ["heatmaps"], name="c2")]
    g = H.make_graph(nodes, "m", [H.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 6, 5])],
                     [H.make_tensor_value_info("heatmaps", onnx.TensorProto.FLOAT, [1, J, 7 - kernel, 6 - kernel])],
                     inits)
    m = H.make_model(g, opset_imports=[H.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("bias", [False, True])
def test_fuse_into_conv_keeps_heatmaps_and_adds_the_projection(bias):
    """The r filters appended to a 1×1 heatmap Conv: the model's heatmaps stay bit-identical (checked as
    export_calibrated checks them), the new maps equal B · features; a layer that is not a 1×1 Conv of the
    feature tensor is left alone (None, model unchanged)."""
    from posecal.ccnet.export import PREFIX, _fuse_into_conv, _same_outputs

    C, J, r = 8, 17, 3
    orig = _conv_model(C, J, bias=bias)
    m = onnx.ModelProto()
    m.CopyFrom(orig)
    Bm = np.random.default_rng(1).normal(0, 1, (r, C)).astype(np.float32)
    proj = _fuse_into_conv(m, "features", "heatmaps", Bm, PREFIX)
    assert proj is not None
    m.graph.output.extend([onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, [1, c, 6, 5])
                           for t, c in ((proj, r), ("features", C))])
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.initializer].count("w2") == 0  # the replaced weights are gone
    assert _same_outputs(orig, m)
    x = np.random.default_rng(2).normal(0, 1, (1, 3, 6, 5)).astype(np.float32)
    hm, g, f = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    ref = ort.InferenceSession(orig.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert hm.tobytes() == ref.tobytes()
    np.testing.assert_allclose(g, np.einsum("rc,bchw->brhw", Bm, f), rtol=1e-5, atol=1e-5)
    for kernel, feat in ((3, "features"), (1, "pre")):  # not a 1×1 Conv / not read from the feature tensor
        other = _conv_model(C, J, kernel=kernel, bias=bias)
        before = other.SerializeToString()
        assert _fuse_into_conv(other, feat, "heatmaps", Bm, PREFIX) is None
        assert other.SerializeToString() == before


def test_filter_rank_from_head_metadata(tmp_path):
    """The rank export reads: train.filter_rank (else recipe's, else 0); a bad value is one error naming
    head.json and the field."""
    from posecal.ccnet.export import filter_rank
    from posecal.errors import PosecalInputError

    assert filter_rank({}) == 0 and filter_rank({"recipe": {"filter_rank": 3}}) == 3
    assert filter_rank({"train": {"filter_rank": 4}, "recipe": {"filter_rank": 3}}) == 4
    for bad in ("4", -1, 2.5, True, None):
        with pytest.raises(PosecalInputError) as e:
            filter_rank({"train": {"filter_rank": bad}}, tmp_path)
        assert "head.json" in str(e.value) and "train.filter_rank" in str(e.value)


def test_rank_path_refuses_a_full_rank_head():
    """A head whose metadata claims filter rank 3 but whose weights are full rank (an edited head.json) is
    refused: the factorised graph would not compute what apply computes."""
    from posecal.ccnet.export import PREFIX, _Builder, _heatmap_kpt
    from posecal.errors import PosecalInputError

    W = np.random.default_rng(0).normal(0, 1, (4, 2, 7)).astype(np.float32)
    with pytest.raises(PosecalInputError, match="not of rank 3"):
        _heatmap_kpt(_Builder(PREFIX), "f", "NCHW", "h", "NCHW", (5, 4), (5, 4), np.arange(4), 4, W,
                     np.zeros((4, 2), np.float32), 13, rank=3)
