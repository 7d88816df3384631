"""User model cards through ``fit`` / ``apply`` / ``export``: ``export --model-card`` (grafted and head-only)
equals ``posecal apply``; a user card's ``"ccnet": {"evidence": true}`` gives a ``kpt_inst`` head and a
``box_score`` graph input, as the built-in cards do; ``export --out -`` is refused; keypoints the model lacks
(``extract --allow-missing-joints``) get ŝ = v̂ = 0 in apply, export and ``study visibility``.

The model is SimplePose re-saved with another doc_string (so that no built-in card matches its SHA-256),
described by the built-in SimplePose card as JSON with ``sha256: null``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from posecal.keypoints import COCO17  # noqa: E402

SP_MODEL = ("models", "simplepose", "ultralight-nano-simplepose.onnx")
MINI = ("data", "coco-mini", "person_keypoints_train2017.json")
N_IMAGES = 5
MISSING = ("nose", "left_eye", "right_eye")  # renamed in the card: the model "lacks" them


from test_hostile_inputs import _run, _write  # noqa: E402  (the CLI runner and JSON writer)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The SimplePose copy, its cards (evidence / gap pooling without evidence / face joints renamed) and
    N_IMAGES coco-mini images with people."""
    from conftest import shared_path
    from posecal.models.cards import BUILTIN_CARDS
    from posecal.models.store import file_sha256

    d = tmp_path_factory.mktemp("usercard")
    orig = shared_path(*SP_MODEL)
    m = onnx.load_model(str(orig))
    m.doc_string = (m.doc_string or "") + "posecal test copy"
    model = d / "sp_copy.onnx"
    onnx.save_model(m, str(model))
    sha = file_sha256(model)
    assert all(c["sha256"] != sha for c in BUILTIN_CARDS.values())
    card = copy.deepcopy(BUILTIN_CARDS["ultralight-nano-simplepose"])
    card["sha256"] = None
    assert card["ccnet"] == {"pooling": "heatmap", "evidence": True}
    gap = dict(copy.deepcopy(card), ccnet={"pooling": "gap", "evidence": False})
    lacks = copy.deepcopy(card)
    names = list(COCO17.names)
    lacks["keypoints"] = [f"not_{n}" if n in MISSING else n for n in names]
    src = shared_path(*MINI)
    data = json.loads(src.read_text())
    keep = [im for im in data["images"] if any(a["image_id"] == im["id"] and a["num_keypoints"] > 0
                                               and not a["iscrowd"] for a in data["annotations"])][:N_IMAGES]
    ids = {im["id"] for im in keep}
    data = {**data, "images": keep, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    return {"dir": d, "model": model, "card": _write(d / "card.json", card), "gap_card": _write(d / "gap.json", gap),
            "lacks_card": _write(d / "lacks.json", lacks), "data": _write(d / "data.json", data), "data_obj": data,
            "images": src.parent / "train2017", "names": names}


def _extract_fit_apply(world, name: str, card: str, *extra: str) -> tuple[Path, Path, list[dict]]:
    d = world["dir"] / name
    store, head, res = d / "S", d / "H", d / "cal.json"
    rc, _, err = _run(["extract", "--model", world["model"], "--model-card", world[card], "--data", world["data"],
                       "--images", world["images"], "--out", store, *extra])
    assert rc == 0, err
    rc, _, err = _run(["fit", "--store", store, "--out", head, "--steps", "30"])
    assert rc == 0, err
    # --reorder: the graph scores each crop alone, as apply --reorder does
    rc, _, err = _run(["apply", "--store", store, "--head", head, "--out", res, "--reorder"])
    assert rc == 0, err
    return store, head, json.loads(res.read_text())


def _graph_outputs(world, store: Path, onx: Path, card: Path) -> tuple[dict[str, np.ndarray], np.ndarray, list]:
    """The exported graph on the exact crops of ``store``; also the model input and the original model's outputs."""
    from posecal.models.adapters.card import prepare_input
    from posecal.models.cards import load_card
    from posecal.models.crop import load_image, warp
    from posecal.models.store import FeatureStore

    fs = FeatureStore.open(store)
    inp = load_card(card)["input"]
    W, H = inp["size"]
    fname = {im["id"]: im["file_name"] for im in world["data_obj"]["images"]}
    crops = np.stack([warp(load_image(world["images"] / fname[int(i)]), M, (W, H))
                      for M, i in zip(fs.read("crop_transform"), fs.read("image_id"), strict=True)])
    sess = ort.InferenceSession(str(onx), providers=["CPUExecutionProvider"])
    sess0 = ort.InferenceSession(str(world["model"]), providers=["CPUExecutionProvider"])
    box = fs.read("box_score").astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    rows, orig = [], []
    for r in range(len(crops)):  # SimplePose's graph takes one crop at a time
        x = prepare_input(crops[r:r + 1], inp)
        feeds = {inp["name"]: x}
        if any(i.name == "box_score" for i in sess.get_inputs()):
            feeds["box_score"] = box[r:r + 1]
        rows.append(sess.run(None, feeds))
        orig.append(sess0.run(None, {inp["name"]: x})[0])
    out = {n: np.concatenate([o[i] for o in rows]) for i, n in enumerate(names)}
    return out, crops, [np.concatenate(orig)]


def _apply_arrays(records: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([r["keypoints"][2::3] for r in records]), np.array([r["visibility"] for r in records]),
            np.array([r["score"] for r in records]))


def test_user_card_evidence_gives_kpt_inst_and_export_with_model_card_equals_apply(world):
    from posecal.ccnet.targets import CARD_CCNET, default_head, uses_evidence
    from posecal.models.store import FeatureStore

    store, head, recs = _extract_fit_apply(world, "evidence", "card")
    fs = FeatureStore.open(store)
    assert fs.meta[CARD_CCNET] == {"pooling": "heatmap", "evidence": True}  # the user card's block, recorded
    assert uses_evidence(fs.meta) and default_head(fs.meta, fs.feature_name, "kpt") == "kpt_inst"
    hmeta = json.loads((head / "head.json").read_text())
    assert hmeta["head"] == "kpt_inst" and hmeta[CARD_CCNET] == fs.meta[CARD_CCNET]
    assert hmeta["in_channels"] == fs.meta["arrays"]["features_kpt"]["shape"][-1] + 6  # + the instance evidence
    out = world["dir"] / "evidence" / "cal.onnx"
    rc, stdout, err = _run(["export", "--model", world["model"], "--model-card", world["card"], "--head", head,
                            "--out", out, "--json"])
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["inputs"] == ["data", "box_score"] and summary["mode"] == "grafted"
    onnx.checker.check_model(onnx.load_model(str(out)), full_check=True)
    got, _, orig = _graph_outputs(world, store, out, world["card"])
    np.testing.assert_array_equal(got["hybridsequential0_conv7_fwd"], orig[0])  # the model's own output, bit for bit
    s, v, c = _apply_arrays(recs)
    assert len(recs) >= 4 and np.std(c) > 0
    assert np.abs(got["keypoint_confidence"] - s).max() <= 1e-5
    assert np.abs(got["keypoint_visibility"] - v).max() <= 1e-5
    assert np.abs(got["instance_confidence"] - c).max() <= 1e-5
    # the sha256 rule of extract: a card naming another model file is refused, nothing written
    bad = json.loads(world["card"].read_text())
    bad["sha256"] = "a" * 64
    bad_card = _write(world["dir"] / "evidence" / "bad_card.json", bad)
    rc, _, err = _run(["export", "--model", world["model"], "--model-card", bad_card, "--head", head,
                       "--out", world["dir"] / "evidence" / "bad.onnx"])
    assert rc == 2 and "bad_card.json" in err and "'sha256'" in err and len(err.strip().splitlines()) == 1
    assert not (world["dir"] / "evidence" / "bad.onnx").exists()


def test_builtin_card_store_settings_unchanged(world, shared, tmp_path):
    """Stores of a model with a built-in card record no card ccnet block (their fingerprint is as before);
    the built-in card still asks for the evidence by the model's SHA-256."""
    from posecal.ccnet.targets import CARD_CCNET, uses_evidence

    store = tmp_path / "S"
    rc, _, err = _run(["extract", "--model", shared(*SP_MODEL), "--data", world["data"], "--images",
                       world["images"], "--out", store])
    assert rc == 0, err
    meta = json.loads((store / "meta.json").read_text())
    assert CARD_CCNET not in meta and uses_evidence(meta)
    assert not uses_evidence({**meta, CARD_CCNET: {"evidence": False}})  # a user card's block decides


def test_user_card_without_evidence_head_only_export_with_model_card(world):
    """A card with ``"ccnet": {"pooling": "gap", "evidence": false}``: gap pooling, no box_score input; the
    head-only ONNX (written with --model-card) run after the model equals apply too."""
    from posecal.ccnet.export import run_two_stage
    from posecal.ccnet.targets import CARD_CCNET
    from posecal.models.adapters.base import load_adapter

    store, head, recs = _extract_fit_apply(world, "gap", "gap_card")
    assert json.loads((store / "meta.json").read_text())[CARD_CCNET] == {"pooling": "gap", "evidence": False}
    assert json.loads((head / "head.json").read_text())["head"] == "fc"
    s, v, c = _apply_arrays(recs)
    out = world["dir"] / "gap" / "cal.onnx"
    rc, stdout, err = _run(["export", "--model", world["model"], "--model-card", world["gap_card"], "--head", head,
                            "--out", out, "--json"])
    assert rc == 0, err
    assert json.loads(stdout)["inputs"] == ["data"]  # no evidence: no box_score
    got, crops, _ = _graph_outputs(world, store, out, world["gap_card"])
    assert np.abs(got["keypoint_confidence"] - s).max() <= 1e-5 and np.abs(got["instance_confidence"] - c).max() <= 1e-5
    ho = world["dir"] / "gap" / "head_only.onnx"
    rc, stdout, err = _run(["export", "--model", world["model"], "--model-card", world["gap_card"], "--head", head,
                            "--out", ho, "--head-only", "--json"])
    assert rc == 0, err
    assert json.loads(stdout)["mode"] == "head-only"
    two = run_two_stage(load_adapter(world["model"], model_card=world["gap_card"]),
                        ort.InferenceSession(str(ho), providers=["CPUExecutionProvider"]), crops)
    for k, ref in (("keypoint_confidence", s), ("keypoint_visibility", v), ("instance_confidence", c)):
        assert np.abs(two[k] - ref).max() <= 1e-5, k


def test_export_out_dash_is_refused(world, tmp_path, monkeypatch):
    head = world["dir"] / "evidence" / "H"
    if not (head / "head.json").is_file():
        _extract_fit_apply(world, "evidence", "card")
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(["export", "--model", world["model"], "--model-card", world["card"], "--head", head,
                         "--out", "-"])
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "'--out'" in lines[0] and "stdout" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no file named '-'


def test_keypoints_the_model_lacks_are_masked_in_apply_export_and_study(world):
    """A card whose joint list lacks nose and eyes: extract --allow-missing-joints maps them to -1; the head's
    raw output there is not 0, but apply, the exported graph and study visibility give s = v = 0 and leave them
    out of the instance score."""
    from posecal.ccnet.checkpoint import load_head
    from posecal.ccnet.targets import load_store
    from posecal.ccnet.train import predict
    from posecal.rescore.aggregate import instance_score
    from posecal.studies.visibility import visibility_study

    store, head, recs = _extract_fit_apply(world, "lacks", "lacks_card", "--allow-missing-joints")
    miss = [world["names"].index(n) for n in MISSING]
    have = np.ones(len(world["names"]), bool)
    have[miss] = False
    meta = json.loads((store / "meta.json").read_text())
    assert [j < 0 for j in meta["joint_map"]] == list(~have)
    h, _ = load_head(head)
    data = load_store(str(store))
    assert not data.conf_mask[:, miss].any() and not data.vis_mask[:, miss].any()  # out of both losses
    s_raw, v_raw = predict(h, data.features)
    assert (s_raw[:, miss] > 0.01).all() and (v_raw[:, miss] > 0.01).all()  # what the mask removes
    s, v, c = _apply_arrays(recs)
    assert (s[:, miss] == 0).all() and (v[:, miss] == 0).all()
    np.testing.assert_allclose(s[:, have], s_raw[:, have], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(c, instance_score(s_raw[:, have], "visibility", visibility=v_raw[:, have]),
                               rtol=1e-6, atol=1e-7)
    assert np.abs(c - instance_score(s_raw, "visibility", visibility=v_raw)).max() > 1e-4  # the mask matters
    out = world["dir"] / "lacks" / "cal.onnx"
    rc, _, err = _run(["export", "--model", world["model"], "--model-card", world["lacks_card"], "--head", head,
                       "--out", out])
    assert rc == 0, err
    got, _, orig = _graph_outputs(world, store, out, world["lacks_card"])
    np.testing.assert_array_equal(got["hybridsequential0_conv7_fwd"], orig[0])
    assert (got["keypoint_confidence"][:, miss] == 0).all() and (got["keypoint_visibility"][:, miss] == 0).all()
    assert np.abs(got["keypoint_confidence"] - s).max() <= 1e-5
    assert np.abs(got["keypoint_visibility"] - v).max() <= 1e-5
    assert np.abs(got["instance_confidence"] - c).max() <= 1e-5
    st = visibility_study(store, head=head)
    assert (st["_arrays"]["ccnet"][:, miss] == 0).all() and (st["_arrays"]["vhat"][:, miss] == 0).all()
    np.testing.assert_allclose(st["_arrays"]["ccnet"], s, rtol=1e-6, atol=1e-7)


def test_allow_missing_joints_refuses_a_model_with_no_joint_of_the_data(world):
    """Every keypoint of DATA missing from the model: --allow-missing-joints wrote a store whose scores were all 0
    (nothing to calibrate, a silent wrong-model mistake); now one line naming the data file's keypoints, exit 2,
    no store (audit, session 28)."""
    from posecal.models.cards import BUILTIN_CARDS
    from test_hostile_inputs import _one_error

    card = copy.deepcopy(BUILTIN_CARDS["ultralight-nano-simplepose"])
    card["sha256"] = None
    card["keypoints"] = [f"mouse_{i}" for i in range(17)]  # the built-in card names a set ("coco17")
    d = world["dir"] / "nojoint"
    d.mkdir()
    cpath = _write(d / "card.json", card)
    rc, _, err = _run(["extract", "--model", world["model"], "--model-card", cpath, "--data", world["data"],
                       "--images", world["images"], "--out", d / "S", "--allow-missing-joints"])
    _one_error(rc, err, "no joint for any of its 17 keypoints", "categories[0].keypoints")
    assert not (d / "S").exists()
