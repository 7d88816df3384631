"""``--model-card`` for PyTorch files (TorchScript .pt, torch.export .pt2): the card's keypoints, normalisation,
input size, heatmap decoding and feature tensor are followed (the same store as the ONNX export run with its
card), what the torch adapter cannot follow is refused in one line naming the card and the field, a card-less
torch model warns once, ``study occlusion --input-size`` runs a TorchScript model, a bad ``--tensor`` names
the user's file with useful candidates, and flags a torch model ignores are said to be ignored."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import test_torch_files  # noqa: E402
from _tinynet import tiny_heatmap_net  # noqa: E402
from posecal.errors import PosecalWarning  # noqa: E402
from posecal.keypoints import LSP14  # noqa: E402
from posecal.models.store import FeatureStore  # noqa: E402
from test_torch_files import _extract, _run  # noqa: E402

files = test_torch_files.files  # its module fixture: m.onnx, m.pt, m.pt2 (17 COCO joints, 48×64), data.json, img/

NO_CARD = "no model card matched this model"


def _card(**over):
    card = {"format": "posecal-model-card/1", "task": "pose", "name": "tiny-torch", "sha256": None,
            "input": {"name": "x", "layout": "NCHW", "dtype": "float32", "size": [48, 64], "batch": None,
                      "color": "RGB", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                      "std": [0.229, 0.224, 0.225]},
            "crop": {"padding": 1.25, "aspect": "input"}, "keypoints": "coco17",
            "output": {"type": "heatmaps", "name": "y", "layout": "NCHW", "subpixel": False},
            "heatmaps": None, "features": None, "target_sigma": 2.0}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(card.get(k), dict):
            card[k] = {**card[k], **v}
        else:
            card[k] = v
    return card


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _export_all(net, d, stem, size=(48, 64)):
    """``stem``.onnx / .pt / .pt2 of ``net`` in ``d`` (as tests/test_torch_files.py builds them)."""
    x = torch.zeros(1, 3, size[1], size[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(d / f"{stem}.onnx"), dynamo=False, input_names=["input"],
                          output_names=["heatmaps"], dynamic_axes={"input": {0: "b"}, "heatmaps": {0: "b"}})
        torch.jit.script(net).save(str(d / f"{stem}.pt"))
        torch.export.save(torch.export.export(net, (x,)), str(d / f"{stem}.pt2"))


# --- 1. a 14-joint LSP-order model with its card, on LSP images ----------------------------------------------
@pytest.fixture(scope="module")
def lsp(tmp_path_factory):
    d = tmp_path_factory.mktemp("lsp14")
    net = tiny_heatmap_net()
    torch.manual_seed(1)
    net.final = torch.nn.Conv2d(12, 14, 1).eval()  # 14 heatmaps, in LSP order (lsp14 and crowdpose14 fit)
    _export_all(net, d, "lsp")
    return d


def _lsp_data(shared, d):
    from posecal.datasets import read_lsp

    images = shared("data", "lsp", "images")
    data = read_lsp(shared("data", "lsp", "joints.mat"), images, split="test")
    data["annotations"] = data["annotations"][:2]
    keep = {a["image_id"] for a in data["annotations"]}
    data["images"] = [i for i in data["images"] if i["id"] in keep]
    return _write(d / "lsp2.json", data), images


def test_lsp14_torch_models_follow_their_card_as_the_onnx_export_does(lsp, shared, tmp_path):
    data, images = _lsp_data(shared, tmp_path)
    half = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}  # not ImageNet: the card's must be used

    def extract(model, card, out, *extra):
        c = _write(tmp_path / f"{out}.card.json", card)
        return _run(["extract", "--model", lsp / model, "--model-card", c, "--data", data, "--images", images,
                     "--out", tmp_path / out, "--pooling", "gap", *extra])

    base = _card(keypoints="lsp14", input=half, output={"subpixel": True})
    rc, err = extract("lsp.onnx", {**base, "input": {**base["input"], "name": "input"},
                                   "output": {**base["output"], "name": "heatmaps"},
                                   "features": {"name": "/backbone/backbone.4/Relu_output_0", "layout": "NCHW"}},
                      "onnx")
    assert rc == 0, err
    rc, err = extract("lsp.pt2", {**base, "features": {"name": "final:input", "layout": "NCHW"}}, "pt2")
    assert rc == 0 and NO_CARD not in err, err
    rc, err = extract("lsp.pt", {**base, "features": {"name": "/backbone/4/Relu_output_0", "layout": "NCHW"}},
                      "pt")  # no --input-size: the card's input.size
    assert rc == 0 and NO_CARD not in err, err
    ref = FeatureStore.open(tmp_path / "onnx")
    for name in ("pt2", "pt"):
        st = FeatureStore.open(tmp_path / name)
        m = st.meta
        assert m["keypoint_set"] == "lsp14" and m["model_joints"] == list(LSP14.names)
        assert m["joint_map"] == list(range(14)) and m["model_card"] == "tiny-torch"
        assert m["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and m["preprocessing"]["std"] == [0.5, 0.5, 0.5]
        assert m["input_size"] == [48, 64]
        for arr in ("keypoints", "scores", "features_gap"):
            np.testing.assert_allclose(st.read(arr), ref.read(arr), rtol=1e-5, atol=1e-5)
    # the normalisation is really the card's: ImageNet's gives other features
    rc, err = extract("lsp.pt2", {**base, "input": {**base["input"], "mean": [0.485, 0.456, 0.406],
                                                    "std": [0.229, 0.224, 0.225]}}, "pt2_imagenet")
    assert rc == 0, err
    assert not np.allclose(FeatureStore.open(tmp_path / "pt2_imagenet").read("features_gap"),
                           FeatureStore.open(tmp_path / "pt2").read("features_gap"), atol=1e-4)
    # without a card the joint order cannot be guessed (lsp14 or crowdpose14): one actionable line
    for model in ("lsp.pt2", "lsp.pt"):
        out = tmp_path / f"none_{model}"
        rc, err = _run(["extract", "--model", lsp / model, "--data", data, "--images", images, "--out", out,
                        "--input-size", "48", "64"])
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert str(lsp / model) in err and "--model-card" in err and "'keypoints'" in err
        assert "lsp14" in err and "crowdpose14" in err and "give joint names" not in err
        assert not out.exists()


# --- 1. what the torch adapter cannot follow, or a card that does not fit: one line naming card and field -----
@pytest.mark.parametrize("model", ["m.pt", "m.pt2"])
@pytest.mark.parametrize("over,field,words", [
    ({"output": {"type": "coordinates", "name": "y", "order": "xys", "normalised": True}}, "output.type",
     "heatmap"),
    ({"input": {"layout": "NHWC"}}, "input.layout", "NCHW"),
    ({"heatmaps": {"name": "y", "layout": "NCHW"}}, "heatmaps", "null"),
    ({"keypoints": "lsp14"}, "keypoints", "do not fit"),
    ({"features": {"name": "no_such_tensor", "layout": "NCHW"}}, "features.name", "candidates: "),
    ({"sha256": "a" * 64}, "sha256", "another model file"),
])
def test_card_a_torch_model_cannot_follow_is_refused(files, tmp_path, model, over, field, words):
    card = _write(tmp_path / "bad_card.json", _card(**over))
    rc, err = _extract(files, model, tmp_path / "st", "--model-card", card)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "bad_card.json" in err and f"field '{field}'" in err and words in err, err
    assert "posecal-ts-" not in err
    assert not (tmp_path / "st").exists()


def test_missing_or_invalid_card_is_an_error(files, tmp_path):
    for model in ("m.pt", "m.pt2"):
        rc, err = _extract(files, model, tmp_path / "st", "--model-card", tmp_path / "nonexistent.json")
        assert rc == 2 and "nonexistent.json" in err and "model card not found" in err
        bad = _write(tmp_path / "typo.json", {**_card(), "pading": 1})
        rc, err = _extract(files, model, tmp_path / "st", "--model-card", bad)
        assert rc == 2 and "typo.json" in err and "'pading'" in err
        assert not (tmp_path / "st").exists()


def test_card_input_size_must_fit(files, tmp_path):
    """A torch.export program records its size: the card's must be it. TorchScript records none: the card's is
    used, and --input-size, when given too, must agree."""
    rc, err = _extract(files, "m.pt2", tmp_path / "st", "--model-card",
                       _write(tmp_path / "big.json", _card(input={"size": [96, 128]})))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "big.json" in err and "'input.size'" in err and "[96, 128]" in err and "[48, 64]" in err
    assert not (tmp_path / "st").exists()
    card = _write(tmp_path / "c.json", _card())
    rc, err = _extract(files, "m.pt", tmp_path / "st", "--model-card", card, "--input-size", "96", "128")
    assert rc == 2 and "c.json" in err and "'input.size'" in err and "--input-size 96 128" in err
    rc, err = _extract(files, "m.pt", tmp_path / "ok", "--model-card", card, "--input-size", "48", "64")
    assert rc == 0, err


def test_card_without_features_discovers_the_head_and_matches_the_cardless_run(files, tmp_path):
    card = _write(tmp_path / "c.json", _card())  # the generic adapter's settings, written down
    for model in ("m.pt", "m.pt2"):
        rc, err = _extract(files, model, tmp_path / f"card_{model}", "--model-card", card)
        assert rc == 0 and NO_CARD not in err, err
        rc, err = _extract(files, model, tmp_path / f"none_{model}", "--input-size", "48", "64")
        assert rc == 0, err
        a, b = FeatureStore.open(tmp_path / f"card_{model}"), FeatureStore.open(tmp_path / f"none_{model}")
        assert a.meta["tensor"] == b.meta["tensor"] and a.meta["model_card"] == "tiny-torch"
        for arr in ("keypoints", "scores", "features_gap"):
            np.testing.assert_allclose(a.read(arr), b.read(arr), rtol=1e-6, atol=1e-6)


def test_card_nhwc_heatmaps_and_bgr_input_are_followed_by_a_pt2(tmp_path):
    """A module whose output is channels-last and that expects BGR input: with the card saying so, the
    torch.export adapter gives what the plain module gives on the channel-swapped, re-laid-out input."""
    from posecal.models.adapters.base import load_adapter

    net = tiny_heatmap_net()

    class NHWC(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).permute(0, 2, 3, 1)

    x = torch.zeros(1, 3, 64, 48)
    torch.export.save(torch.export.export(NHWC().eval(), (x,)), str(tmp_path / "nhwc.pt2"))
    card = _write(tmp_path / "c.json", _card(input={"color": "BGR"}, output={"layout": "NHWC"},
                                             features={"name": "net.final:input", "layout": "NCHW"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PosecalWarning)  # a card: nothing is guessed, no warning
        a = load_adapter(tmp_path / "nhwc.pt2", model_card=card)
    from posecal.models.adapters.torch import TorchAdapter

    ref = TorchAdapter(net, (48, 64))
    crops = np.random.default_rng(0).integers(0, 256, (3, 64, 48, 3), dtype=np.uint8)
    got, want = a.predict(crops), ref.predict(crops[..., ::-1].copy())
    np.testing.assert_allclose(got.heatmaps, want.heatmaps, atol=1e-5)
    np.testing.assert_allclose(got.features, want.features, atol=1e-5)
    np.testing.assert_allclose(got.coords, want.coords, atol=1e-6)
    assert a.joint_names == ref.joint_names and a.preprocessing["color"] == "BGR"


# --- 1. a card-less torch model warns once ----------------------------------------------------------------------
@pytest.mark.parametrize("model", ["m.pt", "m.pt2"])
def test_cardless_torch_model_warns_once_naming_file_assumptions_and_flag(files, tmp_path, model):
    from posecal.models.adapters.base import load_adapter

    with pytest.warns(PosecalWarning) as rec:
        a = load_adapter(files / model, input_size=(48, 64) if model == "m.pt" else None)
    msgs = [str(w.message) for w in rec if issubclass(w.category, PosecalWarning)]
    assert len(msgs) == 1, msgs
    msg = msgs[0]
    assert str(files / model) in msg and NO_CARD in msg and "--model-card" in msg and "\n" not in msg
    assert "ImageNet" in msg and "(B, 3, 64, 48)" in msg and "coco17" in msg and a.tensor_name in msg
    size = ("--input-size", "48", "64") if model == "m.pt" else ()
    rc, err = _extract(files, model, tmp_path / "st", *size)
    assert rc == 0 and err.count(NO_CARD) == 1, err
    with warnings.catch_warnings():  # what the caller gives is not a guess
        warnings.simplefilter("error", PosecalWarning)
        load_adapter(files / model, input_size=(48, 64) if model == "m.pt" else None,
                     joint_names=a.joint_names, mean=(0.5,) * 3, std=(0.5,) * 3)


# --- 2. study occlusion runs a TorchScript model: --input-size, or the card's size --------------------------
def test_study_occlusion_torchscript_with_input_size_or_card(files, tmp_path):
    common = ["--data", files / "data.json", "--images", files / "img", "--joint", "left_shoulder",
              "--radii", "0", "8", "--limit", "3", "--json"]

    def study(model, out, *extra):
        return _run(["study", "occlusion", "--model", files / model, "--out", tmp_path / out, *common, *extra])

    rc, err = study("m.pt", "none")
    assert rc == 2 and "--input-size" in err and "m.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()
    rc, err = study("m.pt", "pt", "--input-size", "48", "64")
    assert rc == 0, err
    rc, err = study("m.pt", "pt_card", "--model-card", _write(tmp_path / "c.json", _card()))
    assert rc == 0 and NO_CARD not in err, err
    rc, err = study("m.pt2", "pt2")
    assert rc == 0, err
    res = {n: json.loads((tmp_path / n / "occlusion.json").read_text()) for n in ("pt", "pt_card", "pt2")}
    for n in ("pt", "pt_card"):
        assert res[n]["input_size"] == [48, 64] and res[n]["instances"] == 3
        for mode in ("occluder", "blur"):
            np.testing.assert_allclose(res[n]["curves"][mode]["raw_confidence"],
                                       res["pt2"]["curves"][mode]["raw_confidence"], atol=1e-5)


# --- 3. a bad --tensor for TorchScript names the user's file, with useful candidates ----------------------------
def test_torchscript_unknown_tensor_names_the_model_file_and_candidates(files, tmp_path):
    rc, err = _extract(files, "m.pt", tmp_path / "st", "--input-size", "48", "64", "--tensor", "final:input")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert str(files / "m.pt") in err and "'--tensor'" in err and "posecal-ts-" not in err and ".onnx" not in err
    cands = err.split("candidates: ", 1)[1].split(", ")
    assert len(cands) >= 3 and cands[0] == "/backbone/4/Relu_output_0"  # the head's input first
    # each candidate is a tensor that really works
    rc, err = _extract(files, "m.pt", tmp_path / "ok", "--input-size", "48", "64", "--tensor", cands[1])
    assert rc == 0, err
    assert FeatureStore.open(tmp_path / "ok").meta["tensor"] == cands[1]
    # torch.export: the candidates are module names
    rc, err = _extract(files, "m.pt2", tmp_path / "st", "--tensor", "nope")
    assert rc == 2 and str(files / "m.pt2") in err and "candidates: final:input, " in err
    assert "backbone.4" in err and not (tmp_path / "st").exists()


# --- 4. flags a torch model ignores are said to be ignored ------------------------------------------------------
def test_ignored_flags_warn_for_torch_models(files, tmp_path):
    rc, err = _extract(files, "m.pt2", tmp_path / "a", "--input-size", "96", "128", "--model-kind", "blazepose")
    assert rc == 0, err
    assert "--input-size, --model-kind: ignored for a torch.export program" in err
    assert FeatureStore.open(tmp_path / "a").meta["input_size"] == [48, 64]  # the program's own size
    rc, err = _extract(files, "m.pt", tmp_path / "b", "--input-size", "48", "64", "--model-kind", "blazepose")
    assert rc == 0 and "--model-kind: ignored for a TorchScript model" in err, err
    assert "--input-size" not in err.split("ignored")[0]
    rc, err = _extract(files, "m.pt2", tmp_path / "c")
    assert rc == 0 and "ignored" not in err
