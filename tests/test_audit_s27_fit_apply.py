"""Audit (session 27) of ``posecal fit`` / ``posecal apply`` / ``posecal export`` on hostile stores and heads:
store metadata edited to other types than ``extract`` writes (``feature_array``, ``files``, ``model_sha256`` /
``tensor`` / ``pooling``), evidence columns that overflow although every stored number is finite, and a
head whose recorded training store has since been damaged. Synthetic stores only (tests/test_ccnet_cli.py's
builder)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from posecal.cli import main  # noqa: E402
from test_ccnet_cli import make_store  # noqa: E402


def _one_error(rc: int, err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for p in parts:
        assert p in lines[0], lines[0]


def _edit_meta(store: Path, **kw: object) -> None:
    f = store / "meta.json"
    m = json.loads(f.read_text())
    m.update(kw)
    f.write_text(json.dumps(m))


def _set_chunk(store: Path, name: str, row: int, value: float, j: int = 0) -> None:
    """Set row ``row`` of chunk j of array ``name`` to ``value`` and update its checksum (an edit the store's
    integrity checks cannot see)."""
    f = store / "arrays" / name / f"{j:06d}.npy"
    a = np.load(f).copy()
    a[row] = value
    buf = io.BytesIO()
    np.save(buf, a)
    f.write_bytes(buf.getvalue())
    idx = json.loads((store / "index.json").read_text())
    idx["checksums"][f"{j:06d}"][name] = hashlib.sha256(buf.getvalue()).hexdigest()
    (store / "index.json").write_text(json.dumps(idx))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("s27") / "S", N=48)


@pytest.fixture
def store(base, tmp_path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "S"))


@pytest.fixture(scope="module")
def head(base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s27_head") / "H"
    assert main(["fit", "--store", str(base), "--out", str(out), "--steps", "5", "--batch-size", "16"]) == 0
    return out


@pytest.fixture(scope="module")
def pose_head(base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s27_pose") / "H"
    assert main(["fit", "--store", str(base), "--out", str(out), "--steps", "5", "--head", "kpt_pose",
                 "--evidence", "cf,score,pose"]) == 0
    return out


def _fit(store: Path, out: Path, *extra: str) -> int:
    return main(["fit", "--store", str(store), "--out", str(out), "--steps", "2", "--batch-size", "16", *extra])


def _apply(store: Path, head: Path, out: Path) -> int:
    return main(["apply", "--store", str(store), "--head", str(head), "--out", str(out)])


# --------------------------------------------------------------------------------------------------------------
# store metadata of the wrong type


@pytest.mark.parametrize("value", [["features_kpt"], "scores", 5, "features_gap"])
def test_feature_array_that_names_no_feature_array(store, head, tmp_path, capsys, value):
    """Before: a list gave a TypeError traceback (fit and apply); 'scores' a KeyError traceback in fit."""
    _edit_meta(store, feature_array=value)
    for run in (lambda: _fit(store, tmp_path / "h"), lambda: _apply(store, head, tmp_path / "o.json")):
        _one_error(run(), capsys.readouterr().err, f"{store / 'meta.json'}: field 'feature_array'", "features_kpt")
    assert not (tmp_path / "h").exists() and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("value", [["x"], "x", {"predictions.json": 5}])
def test_files_checksums_not_an_object(store, head, tmp_path, capsys, value):
    """Before: AttributeError traceback ('list' object has no attribute 'get') in fit and apply."""
    _edit_meta(store, files=value)
    for run in (lambda: _fit(store, tmp_path / "h"), lambda: _apply(store, head, tmp_path / "o.json")):
        _one_error(run(), capsys.readouterr().err, f"{store / 'meta.json'}: field 'files'")
    assert not (tmp_path / "h").exists() and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("key, value", [("model_sha256", 7), ("tensor", ["feat"]), ("pooling", 3)])
def test_fit_refuses_store_metadata_that_would_make_an_unloadable_head(store, tmp_path, capsys, key, value):
    """Before: fit exited 0 and wrote a head whose head.json every later apply / export refused
    ('expected a string')."""
    _edit_meta(store, **{key: value})
    _one_error(_fit(store, tmp_path / "h"), capsys.readouterr().err, f"{store / 'meta.json'}: field '{key}'",
               "expected a string")
    assert not (tmp_path / "h").exists()


def test_a_fitted_head_loads_after_fit(store, tmp_path, capsys):
    """The contract the check above keeps: whatever fit writes, apply accepts on the same store."""
    assert _fit(store, tmp_path / "h") == 0
    assert _apply(store, tmp_path / "h", tmp_path / "o.json") == 0


# --------------------------------------------------------------------------------------------------------------
# evidence columns computed from finite but huge stored numbers


@pytest.mark.parametrize("array, value, evidence", [
    ("keypoints", 1e300, "pose"),
    ("crop_transform", 1e300, "pose"),
    ("scores", 1e300, "score"),  # finite float64, inf as a float32 column
    ("bbox", 1e300, "cf"),
])
def test_overflowing_evidence_names_store_row_and_evidence(store, pose_head, tmp_path, capsys, array, value,
                                                           evidence):
    """Before: fit said "field 'kpt_pose': features contain NaN or infinite values" (no file, no row), and apply
    blamed the head ('the head produced non-finite scores on this store')."""
    _set_chunk(store, array, 3, value)
    rc = _fit(store, tmp_path / "h", "--head", "kpt_pose", "--evidence", "cf,score,pose")
    _one_error(rc, capsys.readouterr().err, f"{store}: record 3: field '", "evidence")
    rc = _apply(store, pose_head, tmp_path / "o.json")
    _one_error(rc, capsys.readouterr().err, f"{store}: record 3: field '{evidence}'")
    assert not (tmp_path / "h").exists() and not (tmp_path / "o.json").exists()


def test_huge_sigma_hat_gives_no_numpy_overflow_chatter(store, pose_head, tmp_path, capsys):
    """A (finite) huge heatmap spread means a closed-form OKS of 0; before, fit and apply printed numpy's
    'overflow encountered in square' on stderr."""
    _set_chunk(store, "sigma_hat", 3, 1e300)
    assert _fit(store, tmp_path / "h", "--head", "kpt_pose", "--evidence", "cf,log_sigma,pose") == 0
    assert capsys.readouterr().err == ""
    assert _apply(store, pose_head, tmp_path / "o.json") == 0
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------------------------
# export: the head's recorded training store is only a cross-check


@pytest.mark.parametrize("content", [b"garbage", b"[1, 2]", b'{"joint_map": 5}', b'{"flip_test": false}'])
def test_export_check_ignores_a_damaged_training_store(tmp_path, content):
    """Before: ``check_head_against_model`` (posecal export) raised orjson.JSONDecodeError / AttributeError /
    TypeError tracebacks when the head's ``train.store`` folder held a damaged meta.json."""
    from posecal.ccnet.export import check_head_against_model
    from posecal.keypoints import COCO17

    train = tmp_path / "old_store"
    train.mkdir()
    (train / "meta.json").write_bytes(content)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    meta = {"pooling": "heatmap", "in_channels": 5, "num_keypoints": 17, "keypoint_set": "coco17",
            "train": {"store": str(train)}}
    adapter = SimpleNamespace(tensor_name="t", joint_names=list(COCO17.names))
    pooling, jmap = check_head_against_model(meta, tmp_path / "H", adapter, model, np.zeros((1, 5, 4, 4)))
    assert pooling == "heatmap" and jmap.tolist() == list(range(17))


def test_export_check_still_refuses_a_training_store_of_other_joints(tmp_path):
    from posecal.ccnet.export import check_head_against_model
    from posecal.errors import PosecalInputError
    from posecal.keypoints import COCO17

    train = tmp_path / "old_store"
    train.mkdir()
    (train / "meta.json").write_text(json.dumps({"joint_map": [0, 1]}))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    meta = {"pooling": "heatmap", "in_channels": 5, "num_keypoints": 17, "keypoint_set": "coco17",
            "train": {"store": str(train)}}
    adapter = SimpleNamespace(tensor_name="t", joint_names=list(COCO17.names))
    with pytest.raises(PosecalInputError, match="joint map of the training store"):
        check_head_against_model(meta, tmp_path / "H", adapter, model, np.zeros((1, 5, 4, 4)))


# --------------------------------------------------------------------------------------------------------------
# fit --cv on stores where few images hold a labelled person


def _unlabel_all_but(store: Path, keep: int) -> None:
    """Blank the keypoints of every gt annotation but the first ``keep`` (checksum updated)."""
    from posecal.models.store import file_sha256

    f = store / "gt.json"
    g = json.loads(f.read_text())
    for a in g["annotations"][keep:]:
        a["keypoints"] = [0] * len(a["keypoints"])
        a["num_keypoints"] = 0
    f.write_text(json.dumps(g))
    m = json.loads((store / "meta.json").read_text())
    m["files"]["gt.json"] = file_sha256(f)
    (store / "meta.json").write_text(json.dumps(m))


def test_cv_fold_without_a_labelled_training_image_is_named(tmp_path, capsys):
    """One labelled image among six: a plain fit works; --cv 2 puts it in one fold, whose training part is
    empty. Before: "no row of the store has a gt with a labelled keypoint" after the CV table's header — a
    store that plain fit accepts."""
    st = make_store(tmp_path / "S", N=6)
    _unlabel_all_but(st, 1)
    assert _fit(st, tmp_path / "h0") == 0
    capsys.readouterr()
    rc = main(["fit", "--store", str(st), "--out", str(tmp_path / "h"), "--cv", "2", "--steps", "2"])
    _one_error(rc, capsys.readouterr().err, f"{st}: field '--cv'", "fold", "labelled")
    assert not (tmp_path / "h").exists()


def test_cv_ap_leaves_out_folds_without_labelled_people(tmp_path, capsys):
    """Two labelled images among six, --cv 6: four folds hold out no labelled person (COCO AP -1, 'no gt').
    Before: the CV AP averaged those -1s in (about -0.4 for a recipe whose scored folds have AP 0.8)."""
    st = make_store(tmp_path / "S", N=6)
    _unlabel_all_but(st, 2)
    assert main(["fit", "--store", str(st), "--out", str(tmp_path / "h"), "--cv", "6", "--steps", "2",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for row in doc["cv"]["rows"]:
        scored = [a for a, b in zip(row["fold_ap"], row["fold_base_ap"], strict=True) if b >= 0]
        assert len(scored) == 2 and row["fold_ap"].count(-1.0) == 4
        assert row["cv_ap"] == pytest.approx(sum(scored) / 2) and row["cv_ap"] >= 0


# --------------------------------------------------------------------------------------------------------------
# apply --out - with stdout closed


def test_apply_to_closed_stdout_is_one_line(base, head, tmp_path, capsys, monkeypatch):
    """``posecal apply --out - >&-``: Python sets sys.stdout to None. Before: AttributeError traceback after
    all the work."""
    import sys

    monkeypatch.setattr(sys, "stdout", None)
    rc = _apply(base, head, Path("-"))
    _one_error(rc, capsys.readouterr().err, "field '--out'", "stdout is closed")


# --------------------------------------------------------------------------------------------------------------
# the context stage's parameters (context.safetensors)


@pytest.mark.parametrize("key, value, match", [("coef", 1e300, "above the bound"), ("mean", -1e31, "above the bound"),
                                               ("std", 1e-300, "std")])
def test_context_stage_with_absurd_parameters_is_refused(tmp_path, key, value, match):
    """Before: coef 1e300 loaded, and apply printed numpy's 'overflow encountered in exp' and exited 0."""
    from safetensors.numpy import load_file, save_file

    from posecal.ccnet.checkpoint import load_head
    from posecal.errors import PosecalInputError
    from test_head_hostile import _head

    d = _head(tmp_path / "h", context=True)
    arrs = {k: v.copy() for k, v in load_file(str(d / "context.safetensors")).items()}
    arrs[key][:] = value
    save_file(arrs, str(d / "context.safetensors"))
    with pytest.raises(PosecalInputError, match=match) as e:
        load_head(d)
    assert e.value.file == str(d / "context.safetensors")


def test_context_stage_saturates_without_numpy_warnings():
    """A large (in-bound) negative logit saturates the sigmoid at 0 without numpy's overflow warning."""
    import warnings

    from posecal.ccnet.context import CONTEXT_NAMES, ContextStage

    D = 1 + len(CONTEXT_NAMES)
    st = ContextStage.from_arrays({"mean": np.zeros(D), "std": np.ones(D), "coef": np.full(D + 1, -1e25)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = st.transform(np.array([0.5, 0.9]), np.ones((2, len(CONTEXT_NAMES))))
    assert np.array_equal(out, [0.0, 0.0])


def test_kpt_inst_head_on_a_store_without_instance_evidence_is_refused(tmp_path, capsys):
    """Before: `fit --head kpt_inst` on a store whose model card asks for no instance evidence (EfficientPose;
    here a synthetic store) trained its instance gate on the last 6 *feature* channels as if they were the box
    score and keypoint-score statistics, rc 0. Now one line naming --head; with the card's evidence it fits."""
    s = make_store(tmp_path / "S", N=48, C=8)
    rc = main(["fit", "--store", str(s), "--out", str(tmp_path / "h"), "--head", "kpt_inst", "--steps", "2"])
    _one_error(rc, capsys.readouterr().err, "field '--head'", "head 'kpt_inst' reads the instance evidence")
    assert not (tmp_path / "h").exists()
    _edit_meta(s, model_card_ccnet={"evidence": True, "pooling": "heatmap"})
    assert main(["fit", "--store", str(s), "--out", str(tmp_path / "h2"), "--head", "kpt_inst", "--steps", "2"]) == 0
