"""Audit s29 of ``posecal export`` as a robotics user runs it (an ONNX file, or a TFLite model plus a head-only ONNX,
read without posecal):

* the head-only summary said ``inputs features, heatmaps from <feature tensor>``: the heatmaps come from another
  tensor, which neither the summary nor the ONNX metadata named, so a user wiring the TFLite interpreter by hand
  could not tell which output to feed; now both name it (``posecal_heatmap_tensor``) and the README's recipe works;
* neither export named the K output keypoints (only the set's name): ``posecal_keypoint_names`` now does;
* a head fitted with ``--box-score``: ``posecal apply`` multiplies ĉ by the box score, the graph does not, and the
  export said nothing (the README promised ``apply --reorder`` gives the graph's score): now a note, a summary key
  and a metadata entry say so.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from posecal.cli import main  # noqa: E402

SP = ("models", "simplepose", "ultralight-nano-simplepose.onnx")
MINI = ("data", "coco-mini", "person_keypoints_train2017.json")


def _meta(path) -> dict[str, str]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map


def test_head_only_names_the_heatmap_tensor_and_raw_tflite_wiring_equals_two_stage(tmp_path_factory, tmp_path,
                                                                                     capsys):
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from _epworld import ep_world
    from conftest import shared_path
    from posecal.ccnet.export import run_two_stage
    from posecal.keypoints import LSP14
    from posecal.models.adapters.base import load_adapter
    from posecal.models.crop import load_image, warp
    from posecal.models.store import FeatureStore

    w = ep_world(tmp_path_factory, lambda *p: shared_path(*p))
    out = tmp_path / "head.onnx"
    capsys.readouterr()
    assert main(["export", "--model", str(w["model"]), "--head", str(w["head"]), "--out", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "features from pass3_block1_mbconv3_detection2_dense/concat" in line
    assert "heatmaps from pass3_detection2_confs/BiasAdd" in line
    meta = _meta(out)
    assert meta["posecal_heatmap_tensor"] == "pass3_detection2_confs/BiasAdd"
    assert meta["posecal_keypoint_names"].split(",") == list(LSP14.names)
    assert [float(v) for v in meta["posecal_keypoint_sigmas"].split(",")] == LSP14.sigmas.tolist()

    # the README's recipe without posecal: the tensors the metadata names, NHWC -> NCHW, first J heatmap channels
    it = Interpreter(model_path=str(w["model"]),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                     experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    idx = {d["name"]: d["index"] for d in it.get_tensor_details()}
    J = len(meta["posecal_joint_order"].split(","))
    fs = FeatureStore.open(w["test_store"])
    name = {im["id"]: im["file_name"] for im in json.loads(fs.gt_path.read_text())["images"]}
    adapter = load_adapter(w["model"])
    W, H = adapter.input_size
    crops = np.stack([warp(load_image(w["images"] / name[int(i)]), M, (W, H))
                      for M, i in zip(fs.read("crop_transform")[:3], fs.read("image_id")[:3], strict=True)])
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    want = run_two_stage(adapter, sess, crops)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    for r in range(len(crops)):
        it.set_tensor(it.get_input_details()[0]["index"], ((crops[r:r + 1] / np.float32(255) - mean) / std)
                      .astype(np.float32))
        it.invoke()
        f = it.get_tensor(idx[meta["posecal_model_tensor"]]).transpose(0, 3, 1, 2)
        h = it.get_tensor(idx[meta["posecal_heatmap_tensor"]])[..., :J].transpose(0, 3, 1, 2)
        s, v, c = sess.run(None, {"features": np.ascontiguousarray(f), "heatmaps": np.ascontiguousarray(h)})
        assert np.abs(s[0] - want["keypoint_confidence"][r]).max() <= 1e-4
        assert np.abs(v[0] - want["keypoint_visibility"][r]).max() <= 1e-4
        assert abs(c[0] - want["instance_confidence"][r]) <= 1e-4
    assert want["keypoint_confidence"].std() > 0


def test_box_score_head_export_says_apply_multiplies_by_the_box_score(tmp_path, capsys):
    """Four coco-mini people as detections with scores 0.5 .. 0.9: the graph's ĉ × box_score is apply --reorder's
    score, and the export says so (stdout note, --json key, ONNX metadata)."""
    from conftest import shared_path
    from posecal.models.adapters.base import load_adapter
    from posecal.models.adapters.card import prepare_input
    from posecal.models.crop import load_image, warp
    from posecal.models.store import FeatureStore

    d = json.loads(shared_path(*MINI).read_text())
    anns = [a for a in d["annotations"] if a["num_keypoints"] >= 8 and not a["iscrowd"]][:4]
    ids = {a["image_id"] for a in anns}
    data = tmp_path / "mini.json"
    data.write_text(json.dumps(dict(d, images=[im for im in d["images"] if im["id"] in ids],
                                    annotations=[a for a in d["annotations"] if a["image_id"] in ids])))
    det = tmp_path / "det.json"
    det.write_text(json.dumps([{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.5 + 0.1 * i}
                               for i, a in enumerate(anns)]))
    model, images = shared_path(*SP), shared_path("data", "coco-mini", "train2017")
    store, head = tmp_path / "store", tmp_path / "head"
    assert main(["extract", "--model", str(model), "--data", str(data), "--images", str(images), "--out", str(store),
                 "--boxes", str(det)]) == 0
    assert main(["fit", "--store", str(store), "--out", str(head), "--steps", "5", "--box-score", "--no-context"]) == 0
    capsys.readouterr()
    out = tmp_path / "cal.onnx"
    assert main(["export", "--model", str(model), "--head", str(head), "--out", str(out)]) == 0
    assert "--box-score" in capsys.readouterr().out
    assert main(["export", "--model", str(model), "--head", str(head), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "box score" in summary["box_score_note"] and summary["keypoint_names"][0] == "nose"
    meta = _meta(out)
    assert "box score" in meta["posecal_box_score"] and meta["posecal_keypoint_names"].startswith("nose,left_eye")

    res = tmp_path / "applied.json"
    assert main(["apply", "--store", str(store), "--head", str(head), "--out", str(res), "--reorder"]) == 0
    recs = json.loads(res.read_text())
    fs = FeatureStore.open(store)
    name = {im["id"]: im["file_name"] for im in json.loads(fs.gt_path.read_text())["images"]}
    ad = load_adapter(model)
    W, H = ad.input_size
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    box = fs.read("box_score")
    assert len(recs) == len(box) and np.ptp(box) > 0.1
    for r, (M, i) in enumerate(zip(fs.read("crop_transform"), fs.read("image_id"), strict=True)):
        x = prepare_input(warp(load_image(images / name[int(i)]), M, (W, H))[None], ad.card["input"])
        c = sess.run(["instance_confidence"], {"data": x, "box_score": np.array([box[r]], np.float32)})[0][0]
        rec = next(q for q in recs if q["image_id"] == int(i) and np.allclose(q["bbox"], fs.read("bbox")[r]))
        assert abs(c * box[r] - rec["score"]) <= 1e-5
