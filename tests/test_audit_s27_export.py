"""Audit of ``posecal export`` on the real models (SimplePose, MoveNet Thunder; EfficientPose-I for the head-only
path), with stores extracted here from a few coco-mini images.

Regressions (each failed before the fix in ``posecal.ccnet.export``):

* a head fitted on ``extract --flip`` stores exported without the documented warning: the training-store cross-check
  read ``train.store``, which ``fit`` no longer writes (it writes ``train.stores`` and ``train.flip_test``), so it
  never ran; the joint-map cross-check with the training stores never ran either;
* a head whose ``model_tensor`` was edited to another tensor of the same width was grafted there silently (its
  training store says which tensor it read);
* a ``model_tensor`` the model lacks was reported as field ``'--tensor'`` of the model file, a flag export does not
  have, instead of as the head's field;
* a TFLite model with another model's evidence head was told to "graft it onto the ONNX model" instead of that the
  head is of another model; a ``kpt_inst`` head for a TFLite model was told to graft it too (not possible).

Coverage (passing): MoveNet Thunder grafted (channels-last features, coordinates output for the keypoint scores) on a
detection store whose box scores are not 1; SimplePose ``kpt_inst`` with a context stage on a detection store (fused
and ``--no-fuse``), and ``spatial`` pooling with a ``conv_sigmoid_gap`` head: head outputs equal ``predict_store``
within 1e-5, every original output bit-identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from test_hostile_inputs import _one_error, _run  # noqa: E402

SP = ("models", "simplepose", "ultralight-nano-simplepose.onnx")
MN = ("models", "movenet", "movenet-thunder.onnx")
EP = ("models", "efficientpose", "EfficientPoseI.tflite")
MINI = ("data", "coco-mini", "person_keypoints_train2017.json")
N_IMAGES = 3


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """N_IMAGES coco-mini images with people (no crowd regions), a detection file of their gt boxes and shrunken
    copies (box scores 0.05 .. 0.99), and a SimplePose heatmap store with a brief default (kpt_inst) head."""
    from conftest import shared_path

    src = shared_path(*MINI)
    d = json.loads(src.read_text())
    crowd = {a["image_id"] for a in d["annotations"] if a["iscrowd"]}
    keep = [im for im in d["images"] if im["id"] not in crowd and any(
        a["image_id"] == im["id"] and a["num_keypoints"] > 0 for a in d["annotations"])][:N_IMAGES]
    ids = {im["id"] for im in keep}
    d = {**d, "images": keep, "annotations": [a for a in d["annotations"] if a["image_id"] in ids]}
    base = tmp_path_factory.mktemp("s27_export")
    data = base / "data.json"
    data.write_text(json.dumps(d))
    rng = np.random.default_rng(0)
    det = []
    for a in d["annotations"]:
        x, y, bw, bh = a["bbox"]
        det.append({"image_id": a["image_id"], "category_id": 1, "bbox": [x, y, bw, bh],
                    "score": float(rng.uniform(0.3, 0.99))})
        inner = [x + 0.1 * bw, y + 0.05 * bh, 0.9 * bw, 0.9 * bh]
        det.append({"image_id": a["image_id"], "category_id": 1, "bbox": inner, "score": float(rng.uniform(0.05, 0.5))})
    (base / "det.json").write_text(json.dumps(det))
    world = {"dir": base, "data": data, "det": base / "det.json", "images": src.parent / "train2017",
             "sp": shared_path(*SP), "mn": shared_path(*MN)}
    world["sp_store"] = _extract(world, world["sp"], "sp_store")
    world["sp_head"] = _fit(world["sp_store"], base / "sp_head")
    return world


def _extract(w, model: Path, name: str, *extra) -> Path:
    out = w["dir"] / name
    rc, _, err = _run(["extract", "--model", model, "--data", w["data"], "--images", w["images"], "--out", out, *extra])
    assert rc == 0, err
    return out


def _fit(store: Path, out: Path, *extra) -> Path:
    rc, _, err = _run(["fit", "--store", store, "--out", out, "--steps", "10", *extra])
    assert rc == 0, err
    return out


def _edited(head: Path, dst: Path, **changes) -> Path:
    shutil.copytree(head, dst)
    meta = json.loads((dst / "head.json").read_text())
    meta.update(changes)
    (dst / "head.json").write_text(json.dumps(meta))
    return dst


def _graph_vs_library(w, model: Path, store: Path, head: Path, onx: Path) -> float:
    """Run the exported graph on the store's own crops (box_score from the store) and the original model beside it:
    asserts every original output bit-identical; returns max |graph − predict_store| over ŝ, v̂ and ĉ (the head's
    ĉ of one crop: the context stage and the per-image order come after it, outside the graph)."""
    from posecal.ccnet.checkpoint import load_head
    from posecal.ccnet.fit import predict_store
    from posecal.ccnet.targets import load_store
    from posecal.models.adapters.base import load_adapter
    from posecal.models.adapters.card import prepare_input
    from posecal.models.crop import load_image, warp
    from posecal.models.store import FeatureStore

    fs = FeatureStore.open(store)
    name = {im["id"]: im["file_name"] for im in json.loads(fs.gt_path.read_text())["images"]}
    ad = load_adapter(model)
    W, H = ad.input_size
    inp = ad.card["input"]
    s0 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    s1 = ort.InferenceSession(str(onx), providers=["CPUExecutionProvider"])
    names0 = [o.name for o in s0.get_outputs()]
    heads = ["keypoint_confidence", "keypoint_visibility", "instance_confidence"]
    assert [o.name for o in s1.get_outputs()] == names0 + heads
    box = fs.read("box_score").astype(np.float32)
    got = [[], [], []]
    for r, (M, i) in enumerate(zip(fs.read("crop_transform"), fs.read("image_id"), strict=True)):
        x = prepare_input(warp(load_image(w["images"] / name[int(i)]), M, (W, H))[None], inp)
        feeds = {inp["name"]: x}
        if any(t.name == "box_score" for t in s1.get_inputs()):
            feeds["box_score"] = box[r:r + 1]
        a = s0.run(None, {inp["name"]: x})
        b = s1.run(names0 + heads, feeds)
        for u, v in zip(a, b[:len(a)], strict=True):  # the model's own outputs, bit for bit
            assert u.dtype == v.dtype and u.shape == v.shape and u.tobytes() == v.tobytes()
        for acc, v in zip(got, b[len(a):], strict=True):
            acc.append(v)
    h, meta = load_head(head)
    want = predict_store(h, load_store(str(store), need_gt=False), list(meta.get("evidence") or []))
    assert float(np.std(want[2])) > 1e-4  # not a constant head: the comparison can fail
    return max(float(np.abs(np.concatenate(g) - e).max()) for g, e in zip(got, want, strict=True))


# --- regressions ------------------------------------------------------------------------------------------------


def test_head_fitted_on_flip_store_warns_on_export(w):
    """The exported graph computes single-pass features: a head fitted on --flip stores gets the documented warning
    (was: nothing, the cross-check read a head.json key fit no longer writes)."""
    store = _extract(w, w["sp"], "flip_store", "--flip")
    head = _fit(store, w["dir"] / "flip_head")
    assert json.loads((head / "head.json").read_text())["train"]["flip_test"] == [True]
    out = w["dir"] / "flip.onnx"
    rc, _, err = _run(["export", "--model", w["sp"], "--head", head, "--out", out])
    assert rc == 0 and out.is_file()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": warning: " in lines[0] and "flip-test" in lines[0], err
    # a head of single-pass stores: no warning
    rc, _, err = _run(["export", "--model", w["sp"], "--head", w["sp_head"], "--out", w["dir"] / "noflip.onnx"])
    assert rc == 0 and err.strip() == ""


def test_head_with_edited_model_tensor_is_refused(w, tmp_path):
    """model_tensor edited to another 128-channel tensor of SimplePose: its training store read relu6, so the graft
    at relu5 would not compute what apply computes (was: exported silently)."""
    other = "hybridsequential0_relu5_fwd"
    head = _edited(w["sp_head"], tmp_path / "H", model_tensor=other)
    out = tmp_path / "x.onnx"
    rc, _, err = _run(["export", "--model", w["sp"], "--head", head, "--out", out])
    _one_error(rc, err, "head.json", "'model_tensor'", "hybridsequential0_relu6_fwd", other)
    assert not out.exists()


def test_missing_model_tensor_is_named_as_the_heads_field(w, tmp_path, shared):
    """A model_tensor the model lacks: one line naming head.json and its field 'model_tensor' (was: the model file
    and '--tensor', a flag export does not have), for the grafted and the TFLite head-only path."""
    head = _edited(w["sp_head"], tmp_path / "H", model_tensor="no_such_tensor")
    out = tmp_path / "x.onnx"
    rc, _, err = _run(["export", "--model", w["sp"], "--head", head, "--out", out])
    line = _one_error(rc, err, "H/head.json", "'model_tensor'", "no_such_tensor")
    assert "--tensor" not in line and not out.exists()
    from posecal.models.store import file_sha256

    ep = shared(*EP)
    sha = file_sha256(ep)
    kpt = _fit(w["sp_store"], tmp_path / "K", "--head", "kpt")  # a head TFLite export takes (no gate)
    ep_head = _edited(kpt, tmp_path / "EPH", model_tensor="no_such_tensor", model_sha256=sha)
    rc, _, err = _run(["export", "--model", ep, "--head", ep_head, "--out", out])
    line = _one_error(rc, err, "EPH/head.json", "'model_tensor'", "no_such_tensor")
    assert "--tensor" not in line and not out.exists()


def test_tflite_refusals_name_the_real_reason(w, tmp_path, shared):
    """EfficientPose-I (TFLite) with a SimplePose head: 'another model' (was: told to graft the evidence head onto
    'the ONNX model'); a kpt_inst head of EfficientPose-I: refused without advice to graft a TFLite model."""
    from posecal.models.store import file_sha256

    ep = shared(*EP)
    out = tmp_path / "x.onnx"
    rc, _, err = _run(["export", "--model", ep, "--head", w["sp_head"], "--out", out])
    _one_error(rc, err, "head.json", "'model_sha256'", "another model")
    assert not out.exists()
    # the SimplePose head relabelled as EfficientPose-I's (a kpt_inst head of a model whose card asks no evidence)
    head = _edited(w["sp_head"], tmp_path / "H", model_sha256=file_sha256(ep))
    rc, _, err = _run(["export", "--model", ep, "--head", head, "--out", out])
    line = _one_error(rc, err, "head.json", "'head'", "kpt_inst", "cannot be grafted", "--head kpt")
    assert "graft it onto" not in line and not out.exists()


# --- coverage: real models, combinations the other export tests do not reach --------------------------------------


def test_movenet_detection_store_graft_equals_library(w):
    """MoveNet Thunder (int32 NHWC input, NHWC features and heatmaps, keypoint scores from its coordinates output),
    kpt_inst head on a detection store (box scores 0.05 .. 0.99 fed as box_score): ≤ 1e-5, originals bit-identical."""
    store = _extract(w, w["mn"], "mn_det", "--boxes", w["det"])
    head = _fit(store, w["dir"] / "mn_head", "--no-context")
    assert json.loads((head / "head.json").read_text())["head"] == "kpt_inst"
    out = w["dir"] / "mn.onnx"
    rc, stdout, err = _run(["export", "--model", w["mn"], "--head", head, "--out", out, "--json"])
    assert rc == 0 and err.strip() == "", err
    s = json.loads(stdout)
    assert s["inputs"] == ["input:0", "box_score"] and s["fused_into_model_conv"] is False
    assert _graph_vs_library(w, w["mn"], store, head, out) <= 1e-5


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "no-fuse"])
def test_simplepose_detection_store_with_context_stage(w, fuse):
    """SimplePose kpt_inst head with its context stage, on a detection store: the graph gives the head's ĉ of one
    crop (the summary says the context stage stays outside), ≤ 1e-5 of the library, fused or not."""
    store = w["dir"] / "sp_det"
    if not store.exists():
        _extract(w, w["sp"], "sp_det", "--boxes", w["det"])
    head = w["dir"] / "sp_det_head"
    if not head.exists():
        _fit(store, head)
    assert json.loads((head / "head.json").read_text()).get("context") is not None
    out = w["dir"] / f"sp_det_{fuse}.onnx"
    rc, stdout, err = _run(["export", "--model", w["sp"], "--head", head, "--out", out, "--json",
                            *([] if fuse else ["--no-fuse"])])
    assert rc == 0 and err.strip() == "", err
    s = json.loads(stdout)
    assert "context_stage" in s and s["fused_into_model_conv"] is fuse
    assert _graph_vs_library(w, w["sp"], store, head, out) <= 1e-5


def test_simplepose_spatial_conv_sigmoid_gap(w):
    """spatial pooling (float16 round trip in the graph) with a conv_sigmoid_gap head on the real graph."""
    store = _extract(w, w["sp"], "sp_spatial", "--pooling", "spatial")
    head = _fit(store, w["dir"] / "sp_csg", "--head", "conv_sigmoid_gap")
    out = w["dir"] / "csg.onnx"
    rc, stdout, err = _run(["export", "--model", w["sp"], "--head", head, "--out", out, "--json"])
    assert rc == 0 and err.strip() == "", err
    assert json.loads(stdout)["inputs"] == ["data"]
    assert _graph_vs_library(w, w["sp"], store, head, out) <= 1e-5
