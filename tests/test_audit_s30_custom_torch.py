"""Audit: an animal lab's own PyTorch model (torch.export ``.pt2``, TorchScript ``.pt``) of its own 8-keypoint mouse
skeleton, described by a model card as docs/model-cards.md says, through extract → fit → apply → export.

Regression (failed before the fix):

* ``posecal export --model M.pt2 --model-card CARD.json`` (the head-only ONNX of a torch.export program with a
  card) crashed with ``AttributeError: 'TorchAdapter' object has no attribute 'feature_layout'`` while naming the
  heatmap source for the summary and metadata (the card's ``output.name``, which the torch adapter does not read);
* a module whose ``forward`` returns a dict: the ``.pt2`` said "'dict' object has no attribute 'ndim'", the ``.pt``
  failed in torch.onnx's TorchScript exporter ("prim::DictConstruct ... not supported"), which also printed its
  whole IR graph on posecal's stdout (file descriptor 1, from C++), before the one error line. Now: one error
  saying what posecal reads, and any conversion failure leaves stdout clean.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_audit_s28_custom_skeleton import _dataset
from test_hostile_inputs import _run

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

NAMES = ["nose", "left_ear", "right_ear", "neck", "left_forepaw", "right_forepaw", "tail_base", "tail_tip"]
SIGMAS = ["0.026", "0.035", "0.035", "0.079", "0.072", "0.072", "0.107", "0.107"]
W, H = 48, 64


class _Mouse(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 12, 3, 2, 1), torch.nn.ReLU())
        self.neck = torch.nn.Sequential(torch.nn.Conv2d(12, 16, 3, 1, 1), torch.nn.ReLU())
        self.final = torch.nn.Conv2d(16, len(NAMES), 1)

    def forward(self, x):
        return self.final(self.neck(self.backbone(x)))


def _card(features: str) -> dict:
    return {"format": "posecal-model-card/1", "task": "pose", "name": "mouse-net", "sha256": None,
            "input": {"name": "x", "layout": "NCHW", "dtype": "float32", "size": [W, H], "batch": None,
                      "color": "RGB", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "crop": {"padding": 1.25, "aspect": "input"}, "keypoints": NAMES,
            "output": {"type": "heatmaps", "name": "out", "layout": "NCHW", "subpixel": True},
            "heatmaps": None, "features": {"name": features, "layout": "NCHW"}, "target_sigma": 2.0,
            "ccnet": {"pooling": "heatmap", "evidence": False}}


@pytest.fixture(scope="module")
def mouse(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("s30_custom_torch")
    data = _dataset(base, NAMES, n_images=3)
    torch.manual_seed(0)
    net, x = _Mouse().eval(), torch.zeros(1, 3, H, W)
    torch.export.save(torch.export.export(net, (x,)), str(base / "mouse.pt2"))
    torch.jit.save(torch.jit.trace(net, x), str(base / "mouse.pt"))
    (base / "pt2.json").write_text(json.dumps(_card("neck.1")))
    (base / "pt.json").write_text(json.dumps(_card("/neck/1/Relu_output_0")))
    return {"base": base, "data": data}


def _chain(mouse: dict, ext: str) -> tuple[Path, Path, Path, Path]:
    base = mouse["base"]
    model, card = base / f"mouse.{ext}", base / f"{ext}.json"
    store, head, cal = base / f"S_{ext}", base / f"H_{ext}", base / f"cal_{ext}.json"
    for argv in (["extract", "--model", model, "--model-card", card, "--data", mouse["data"], "--images",
                  base / "images", "--out", store, "--sigmas", *SIGMAS],
                 ["fit", "--store", store, "--out", head, "--steps", "5"],
                 ["apply", "--store", store, "--head", head, "--out", cal, "--reorder"]):
        rc, _, err = _run(argv)
        assert rc == 0, err
    return model, card, head, cal


@pytest.mark.parametrize("ext", ["pt2", "pt"])
def test_export_of_a_carded_torch_model_is_a_head_only_onnx_equal_to_apply(mouse, ext):
    from posecal.ccnet.export import run_two_stage
    from posecal.models.adapters.base import load_adapter
    from posecal.models.crop import load_image, warp
    from posecal.models.store import FeatureStore

    model, card, head, cal = _chain(mouse, ext)
    out = mouse["base"] / f"{ext}.onnx"
    rc, stdout, err = _run(["export", "--model", model, "--model-card", card, "--head", head, "--out", out, "--json"])
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["mode"] == "head-only" and summary["keypoint_names"] == NAMES
    # the torch adapter reads the module's (first) output, not the card's output.name ("out")
    assert summary["heatmap_tensor"] == "the model's (first) output"
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["posecal_keypoint_names"] == ",".join(NAMES) and meta["posecal_keypoint_set"] == "custom"
    # the skeleton's OKS sigmas travel with it (ŝ is an expected OKS under them)
    assert [float(v) for v in meta["posecal_keypoint_sigmas"].split(",")] == [float(v) for v in SIGMAS]
    assert meta["posecal_heatmap_tensor"] == "the model's (first) output"

    # the head-only ONNX on the model's features gives what apply --reorder wrote
    store = FeatureStore.open(mouse["base"] / f"S_{ext}")
    gt = json.loads(Path(mouse["data"]).read_text())
    files = {im["id"]: im["file_name"] for im in gt["images"]}
    crops = np.stack([warp(load_image(mouse["base"] / "images" / files[int(i)]), m, (W, H))
                      for i, m in zip(store.read("image_id"), store.read("crop_transform"), strict=True)])
    res = run_two_stage(load_adapter(model, model_card=card), ort.InferenceSession(str(out)), crops)
    recs = json.loads(cal.read_text())
    np.testing.assert_allclose(res["keypoint_confidence"], [r["keypoints"][2::3] for r in recs], atol=1e-5)
    np.testing.assert_allclose(res["instance_confidence"], [r["score"] for r in recs], atol=1e-5)


class _DictOut(torch.nn.Module):
    """A lab's module that returns a dict of outputs (as many training codebases do)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Conv2d(3, 8, 3, 4, 1)
        self.final = torch.nn.Conv2d(8, len(NAMES), 1)

    def forward(self, x):
        return {"heatmaps": self.final(torch.relu(self.body(x)))}


@pytest.mark.parametrize("ext", ["pt", "pt2"])
def test_a_module_returning_a_dict_is_one_error_line_and_stdout_stays_clean(mouse, ext, tmp_path, capfd):
    """Before: the .pt2 said "'dict' object has no attribute 'ndim'"; the .pt failed in the ONNX exporter
    ("prim::DictConstruct ... not supported"), which also printed its whole IR graph on posecal's stdout."""
    from test_hostile_inputs import _one_error

    net, x = _DictOut().eval(), torch.zeros(1, 3, H, W)
    model = tmp_path / f"dict.{ext}"
    if ext == "pt2":
        torch.export.save(torch.export.export(net, (x,)), str(model))
    else:
        torch.jit.save(torch.jit.trace(net, x, strict=False), str(model))
    card = tmp_path / "card.json"
    card.write_text(json.dumps({**_card("x"), "features": None}))
    capfd.readouterr()
    rc, out, err = _run(["extract", "--model", model, "--model-card", card, "--data", mouse["data"], "--images",
                         mouse["base"] / "images", "--out", tmp_path / "S", "--sigmas", *SIGMAS])
    _one_error(rc, err, model.name, "--model", "returns a dict (keys: heatmaps)")
    assert out == "" and capfd.readouterr().out == ""
    assert not (tmp_path / "S").exists()


def test_in_memory_module_returning_a_dict_is_a_posecal_error():
    from posecal.errors import PosecalInputError
    from posecal.models.adapters.torch import TorchAdapter

    with pytest.raises(PosecalInputError, match="returns a dict"):
        TorchAdapter(_DictOut(), (W, H), joint_names=NAMES)


def test_torchscript_conversion_output_on_fd1_is_silenced(capfd):
    """torch.onnx's TorchScript exporter writes its IR graph to file descriptor 1 (C++) on a failed conversion."""
    import os

    from posecal.models.adapters.torch import _stdout_fd_silenced

    capfd.readouterr()
    with _stdout_fd_silenced():
        os.write(1, b"Torch IR graph at exception: ...\n")
    os.write(1, b"after\n")
    assert capfd.readouterr().out == "after\n"
