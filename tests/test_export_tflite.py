"""TFLite source model → head-only ONNX: run after EfficientPose-I in two stages, it equals posecal apply."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

from _epworld import ep_world  # noqa: E402
from posecal.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import shared_path

    return ep_world(tmp_path_factory, lambda *p: shared_path(*p))


def test_head_only_onnx_two_stage_equals_apply(world, tmp_path):
    from posecal.ccnet.export import OUTPUTS, run_two_stage
    from posecal.datasets.coco import instances, read_coco
    from posecal.models.adapters.base import load_adapter
    from posecal.studies._common import crop_instances

    out = tmp_path / "head.onnx"
    assert main(["export", "--model", str(world["model"]), "--head", str(world["head"]),
                 "--out", str(out)]) == 0
    m = onnx.load_model(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["features", "heatmaps"]  # kpt head: heatmap-weighted pooling
    assert [o.name for o in m.graph.output] == list(OUTPUTS)
    adapter = load_adapter(world["model"])
    insts = instances(read_coco(world["test_json"]))
    crops, _ = crop_instances(insts, world["images"], adapter.input_size)
    res = run_two_stage(adapter, ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]), crops)
    recs = json.loads(world["records"].read_text())  # posecal apply on the store of the same crops
    s = np.array([r["keypoints"][2::3] for r in recs])
    v = np.array([r["visibility"] for r in recs])
    c = np.array([r["score"] for r in recs])
    assert np.abs(res["keypoint_confidence"] - s).max() <= 1e-5
    assert np.abs(res["keypoint_visibility"] - v).max() <= 1e-5
    assert np.abs(res["instance_confidence"] - c).max() <= 1e-5
    assert s.std() > 0


def test_export_tflite_head_mismatch(world, tmp_path, shared, capsys):
    """A head fitted on EfficientPose-I features refused for EfficientPose-RT (different file and shape)."""
    other = shared("models", "efficientpose", "EfficientPoseRT.tflite")
    out = tmp_path / "x.onnx"
    assert main(["export", "--model", str(other), "--head", str(world["head"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_sha256" in err[0] and not out.exists()


def test_export_refuses_a_head_reading_store_evidence(world, tmp_path, capsys):
    """The default EfficientPose recipe (kpt_pose on the pose evidence) reads store columns that a model graph
    does not compute: export says so in one line and names the exportable recipe."""
    head = tmp_path / "pose_head"
    assert main(["fit", "--store", str(world["train_store"]), "--out", str(head), "--steps", "5"]) == 0
    assert json.loads((head / "head.json").read_text())["evidence"] == ["pose"]
    capsys.readouterr()
    out = tmp_path / "x.onnx"
    assert main(["export", "--model", str(world["model"]), "--head", str(head), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--head kpt --evidence none" in err[0] and not out.exists()
