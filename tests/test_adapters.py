"""Adapters: TFLite features checked by recomputing the final 1×1 conv; ONNX == PyTorch on a built model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from _tinynet import tiny_heatmap_net
from posecal.errors import PosecalInputError
from posecal.keypoints import COCO17, LSP14, MPII16
from posecal.models.adapters.joints import BLAZEPOSE33, EFFICIENTPOSE16, joint_map


def _lsp_crops(shared, size, n=2):
    from posecal.datasets import read_lsp
    from posecal.models.crop import crop_matrix, load_image, warp
    from posecal.theory.heatmap import topdown_crop_box

    d = read_lsp(shared("data", "lsp", "joints.mat"), split="test")
    out = []
    for a in d["annotations"][:n]:
        img = load_image(shared("data", "lsp", "images") / f"im{a['image_id']:04d}.jpg")
        b = topdown_crop_box(a["bbox"], size)[0]
        out.append(warp(img, crop_matrix(b[:2], b[2:], size), size))
    return np.stack(out)


@pytest.mark.parametrize("model", [("efficientpose", "EfficientPoseI.tflite"),
                                   ("mediapipe", "pose_landmark_lite.tflite")])
def test_tflite_feature_recomputes_the_head(shared, model):
    from posecal.models.adapters.tflite import TFLiteAdapter

    a = TFLiteAdapter(shared("models", *model), num_threads=2)
    # the XNNPACK trap: the feature must come back as a graph output, never as a preserved intermediate
    assert a.delegate == "xnnpack"
    assert a.tensor_name in [d["name"] for d in a.interp.get_output_details()]
    crops = _lsp_crops(shared, a.input_size)
    out = a.predict(crops)
    w, b = a.head_weights()
    C = w.shape[1]
    assert out.features.shape[1] == C
    rec = np.einsum("oc,bchw->bohw", w.astype(np.float64), out.features) + b[None, :, None, None]
    J = out.heatmaps.shape[1]
    np.testing.assert_allclose(rec[:, :J], out.heatmaps, atol=1e-4, rtol=0)
    # same feature as the slow delegate-free preserved-tensor read (XNNPACK arithmetic differs slightly)
    ref = TFLiteAdapter(shared("models", *model), num_threads=2, delegate="none").predict(crops)
    scale = np.abs(ref.features).max()
    np.testing.assert_allclose(out.features, ref.features, atol=1e-4 * scale, rtol=0)
    assert out.coords.shape == (2, J, 2) and np.all(np.isfinite(out.coords))


def test_tflite_kinds_and_bad_input(shared, tmp_path):
    from posecal.models.adapters.base import load_adapter

    a = load_adapter(shared("models", "efficientpose", "EfficientPoseI.tflite"))
    assert a.kind == "efficientpose" and a.tensor_name == "pass3_block1_mbconv3_detection2_dense/concat"
    assert a.input_size == (256, 256) and a.joint_names == EFFICIENTPOSE16
    b = load_adapter(shared("models", "mediapipe", "pose_landmark_full.tflite"))
    assert b.kind == "blazepose" and b.tensor_name == "model_1/model/add_11/add"
    assert b.joint_names == BLAZEPOSE33
    with pytest.raises(PosecalInputError, match="candidates: .*pass3_block1_mbconv3_detection2_dense/concat"):
        load_adapter(shared("models", "efficientpose", "EfficientPoseI.tflite"), tensor="no/such/tensor")
    junk = tmp_path / "model.tflite"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(PosecalInputError, match="not a model"):
        load_adapter(junk)
    with pytest.raises(PosecalInputError, match="unrecognised TFLite pose model"):
        load_adapter(shared("models", "mediapipe", "pose_detection.tflite"))


def test_joint_maps():
    np.testing.assert_array_equal(joint_map(BLAZEPOSE33, COCO17.names),
                                  [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28])
    m = joint_map(EFFICIENTPOSE16, LSP14.names)
    assert EFFICIENTPOSE16[m[LSP14.index("neck")]] == "upper_neck"
    assert all(EFFICIENTPOSE16[m[k]] == n for k, n in enumerate(LSP14.names) if n != "neck")
    m2 = joint_map(EFFICIENTPOSE16, MPII16.names)
    assert [EFFICIENTPOSE16[i] for i in m2] == list(MPII16.names)
    with pytest.raises(PosecalInputError, match="neck, head_top"):
        joint_map(BLAZEPOSE33, LSP14.names)
    assert (joint_map(BLAZEPOSE33, LSP14.names, allow_missing=True)[-2:] == -1).all()


def test_onnx_and_torch_adapters_agree(tmp_path):
    import torch

    from posecal.models.adapters.onnx import OnnxAdapter
    from posecal.models.adapters.torch import TorchAdapter

    net = tiny_heatmap_net()
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 64, 48),), str(path), dynamo=False, input_names=["input"],
                          output_names=["heatmaps"], dynamic_axes={"input": {0: "b"}, "heatmaps": {0: "b"}})
    ta = TorchAdapter(net, (48, 64))
    oa = OnnxAdapter(path)
    assert ta.tensor_name == "final:input" and ta.joint_names == COCO17.names
    crops = np.random.default_rng(1).integers(0, 256, (3, 64, 48, 3), dtype=np.uint8)
    pt, po = ta.predict(crops), oa.predict(crops)
    assert pt.features.shape == (3, 12, 16, 12)
    np.testing.assert_allclose(po.features, pt.features, atol=1e-5)
    np.testing.assert_allclose(po.heatmaps, pt.heatmaps, atol=1e-5)
    # the discovered feature really feeds the head: recompute the 1×1 conv
    w = net.final.weight.detach().numpy()[:, :, 0, 0]
    rec = np.einsum("oc,bchw->bohw", w, pt.features) + net.final.bias.detach().numpy()[None, :, None, None]
    np.testing.assert_allclose(rec, pt.heatmaps, atol=1e-5)
    # named override and its errors
    tb = TorchAdapter(net, (48, 64), tensor="backbone.4")
    np.testing.assert_allclose(tb.predict(crops).features, pt.features, atol=1e-6)
    with pytest.raises(PosecalInputError, match="candidates: final:input"):
        TorchAdapter(net, (48, 64), tensor="nope")
    with pytest.raises(PosecalInputError, match="candidates: "):
        OnnxAdapter(path, tensor="nope")
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello")
    with pytest.raises(PosecalInputError):
        OnnxAdapter(junk)


def test_decode_nhwc_matches_nchw():
    from posecal.models.adapters.base import decode_heatmaps

    hm = np.random.default_rng(3).normal(size=(2, 8, 6, 5))
    c1, s1 = decode_heatmaps(hm, (24, 32))
    c2, s2 = decode_heatmaps(np.transpose(hm, (0, 2, 3, 1)), (24, 32), channels_last=True)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(s1, s2)
    # a peak at heatmap pixel (x=3, y=1) maps to the centre of that cell in input px
    one = np.zeros((1, 1, 8, 6))
    one[0, 0, 1, 3] = 1
    np.testing.assert_allclose(decode_heatmaps(one, (24, 32))[0][0, 0], [3.5 * 4 - 0.5, 1.5 * 4 - 0.5])
