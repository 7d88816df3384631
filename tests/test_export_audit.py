"""Audit of ``posecal export`` on the real SimplePose graph (coco-mini gt boxes): heads whose numbers used to
differ from ``posecal apply --reorder`` or that could not be exported.

* ``fit --filter-rank R``: the factorised graph (r shared maps, then A per keypoint) lost float32 precision on heads
  with large weights (features near-constant in training: σ at its floor), up to 5e-5 off apply;
* ``--head fc`` on a ``gap`` store of a model whose card asks for the instance evidence (SimplePose): the head reads
  [gap features, s_1..s_K, mean, max, fraction, box, bbox_keypoint], which export refused with a bare
  ``in_channels`` mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from posecal.cli import main  # noqa: E402

SP = ("models", "simplepose", "ultralight-nano-simplepose.onnx")
MINI = ("data", "coco-mini", "person_keypoints_train2017.json")


@pytest.fixture(scope="module")
def sp_world(tmp_path_factory):
    """16 gt-box people of coco-mini (the most populated images without crowd regions), extracted by SimplePose
    with heatmap and gap pooling."""
    from conftest import shared_path

    d = json.loads(shared_path(*MINI).read_text())
    crowd = {a["image_id"] for a in d["annotations"] if a["iscrowd"]}
    n = {}
    for a in d["annotations"]:
        if a["num_keypoints"] > 0:
            n[a["image_id"]] = n.get(a["image_id"], 0) + 1
    keep, total = [], 0
    for im in sorted((im for im in d["images"] if im["id"] not in crowd), key=lambda im: -n.get(im["id"], 0)):
        keep.append(im)
        total += n.get(im["id"], 0)
        if total >= 16:
            break
    ids = {im["id"] for im in keep}
    base = tmp_path_factory.mktemp("export_audit")
    data = base / "mini.json"
    data.write_text(json.dumps(dict(d, images=keep, annotations=[a for a in d["annotations"] if a["image_id"] in ids])))
    w = {"dir": base, "model": shared_path(*SP), "images": shared_path("data", "coco-mini", "train2017")}
    for pooling in ("heatmap", "gap"):
        w[pooling] = base / pooling
        assert main(["extract", "--model", str(w["model"]), "--data", str(data), "--images", str(w["images"]),
                     "--out", str(w[pooling]), "--pooling", pooling]) == 0
    return w


def _graph_vs_apply(w, store: Path, head: Path, out: Path, *extra: str) -> tuple[float, float]:
    """Export, then run the graph on the store's own crops under ORT_ENABLE_ALL (the store's own extraction
    setting): max |graph − apply --reorder| over the three outputs, and the spread of apply's ĉ."""
    from posecal.models.adapters.base import load_adapter
    from posecal.models.adapters.card import prepare_input
    from posecal.models.crop import load_image, warp
    from posecal.models.store import FeatureStore

    assert main(["export", "--model", str(w["model"]), "--head", str(head), "--out", str(out), *extra]) == 0
    res = out.with_suffix(".json")
    assert main(["apply", "--store", str(store), "--head", str(head), "--out", str(res), "--reorder"]) == 0
    recs = json.loads(res.read_text())
    want = [np.array([r["keypoints"][2::3] for r in recs]), np.array([r["visibility"] for r in recs]),
            np.array([r["score"] for r in recs])]
    fs = FeatureStore.open(store)
    name = {im["id"]: im["file_name"] for im in json.loads(fs.gt_path.read_text())["images"]}
    ad = load_adapter(w["model"])
    W, H = ad.input_size
    x = prepare_input(np.stack([warp(load_image(w["images"] / name[int(i)]), M, (W, H)) for M, i in
                                zip(fs.read("crop_transform"), fs.read("image_id"), strict=True)]), ad.card["input"])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    names = ["keypoint_confidence", "keypoint_visibility", "instance_confidence"]
    got = [[], [], []]
    for r in range(len(x)):  # SimplePose's batch is fixed at 1
        for acc, v in zip(got, sess.run(names, {"data": x[r:r + 1], "box_score": np.ones(1, np.float32)}),
                          strict=True):
            acc.append(v[0])
    return max(float(np.abs(np.array(g) - e).max()) for g, e in zip(got, want, strict=True)), float(want[2].std())


@pytest.mark.parametrize("head_kind,rank", [("kpt_inst", 3), ("kpt", 4)])
def test_filter_rank_graph_equals_apply(sp_world, head_kind, rank):
    """A rank-r head on a small store (σ at its floor on many channels, weights ~1e5): was 2e-5 .. 5e-5 off."""
    head = sp_world["dir"] / f"{head_kind}_r{rank}"
    assert main(["fit", "--store", str(sp_world["heatmap"]), "--out", str(head), "--head", head_kind, "--steps", "30",
                 "--filter-rank", str(rank)]) == 0
    assert json.loads((head / "head.json").read_text())["train"]["filter_rank"] == rank
    for extra in ((), ("--no-fuse",)):
        diff, spread = _graph_vs_apply(sp_world, sp_world["heatmap"], head, head.with_suffix(f".{len(extra)}.onnx"),
                                       *extra)
        assert diff <= 1e-5 and spread > 1e-3


def test_fc_head_on_gap_store_with_instance_evidence(sp_world, capsys):
    """SimplePose's card appends the instance evidence to gap features too: the fc head grafts (box_score input)
    and equals apply; a head-only ONNX (no keypoint scores) is refused in one line, nothing written."""
    head = sp_world["dir"] / "fc"
    assert main(["fit", "--store", str(sp_world["gap"]), "--out", str(head), "--head", "fc", "--steps", "30"]) == 0
    assert json.loads((head / "head.json").read_text())["in_channels"] == 128 + 17 + 5
    out = sp_world["dir"] / "fc.onnx"
    diff, spread = _graph_vs_apply(sp_world, sp_world["gap"], head, out)
    assert diff <= 1e-5 and spread > 1e-3
    assert "box_score" in [i.name for i in onnx.load_model(str(out)).graph.input]
    capsys.readouterr()
    ho = sp_world["dir"] / "fc_head_only.onnx"
    assert main(["export", "--model", str(sp_world["model"]), "--head", str(head), "--out", str(ho),
                 "--head-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "instance evidence" in err[0] and not ho.exists()
